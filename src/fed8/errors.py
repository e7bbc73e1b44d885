"""The fed8 exception tree.

Every error subclasses :class:`Fed8Error` and also the builtin exception a caller
would naturally catch, so ``except ValueError`` keeps working for callers that do
not know about fed8. Messages name the parameter, the value received, what is
allowed, and how to fix it.
"""

from __future__ import annotations

__all__ = ["CheckpointError", "ConfigError", "DataError", "DeployError", "EmptyRoundError", "Fed8Error",
           "MissingExtraError", "ParameterError", "PayloadError", "RoundFailedError", "SecAggError"]


class Fed8Error(Exception):
    """Base class of every error raised by fed8."""


class ConfigError(Fed8Error, ValueError):
    """A configuration key is unknown or its value is not allowed."""


class ParameterError(Fed8Error, ValueError):
    """An argument of a fed8 function is out of its allowed range (lower layers; no config key named)."""


class DataError(Fed8Error, ValueError):
    """A dataset file or folder is missing, malformed or inconsistent."""


class CheckpointError(Fed8Error, RuntimeError):
    """A run directory or checkpoint cannot be read or resumed."""


class DeployError(Fed8Error, ValueError):
    """A model cannot be exported, quantized or run (bad ONNX file, format, calibration data)."""


class PayloadError(Fed8Error, ValueError):
    """A wire payload is truncated, corrupted, foreign or of an unknown version or codec."""


class SecAggError(Fed8Error, RuntimeError):
    """A secure-aggregation round cannot complete (too few clients left, a bad share or message)."""


class EmptyRoundError(Fed8Error, RuntimeError):
    """A round has nothing to aggregate (no client sampled, every update rejected); the model is kept."""


class RoundFailedError(Fed8Error, RuntimeError):
    """A round over real machines got too few replies, even after retrying; the run stops, resumable."""


class MissingExtraError(Fed8Error, ImportError):
    """An optional dependency is not installed."""

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(
            f"{module!r} is not installed; it is needed for this feature. "
            f"Install it with: pip install 'fed8[{extra}]'"
        )
