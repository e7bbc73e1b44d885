"""Reference vision models."""

from .layout import fast_layout
from .registry import MODELS, build_model, count_parameters

__all__ = ["MODELS", "build_model", "count_parameters", "fast_layout"]
