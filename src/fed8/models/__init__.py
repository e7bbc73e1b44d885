"""Reference vision models."""

from .registry import MODELS, build_model, count_parameters

__all__ = ["MODELS", "build_model", "count_parameters"]
