"""One API for every 8-bit format: ``choose_qparams``, ``quantize``, ``dequantize``.

The same names and argument order for ``int8``, ``float8_e4m3fn`` and ``float8_e5m2``, so
callers (the wire codecs, the accuracy gate, the deploy code) name a format instead of
branching on it:

    qp = choose_qparams(x, fmt, granularity=PerChannel(0))
    codes = quantize(x, qp, fmt, granularity=PerChannel(0))      # 1 byte per element
    x_hat = dequantize(codes, qp, fmt, granularity=PerChannel(0))

* ``int8``: ``method = "amax"`` is symmetric (``s = max|x| / 127``, codes in [-127, 127],
  no zero point); ``"minmax"`` is affine (``s = (max(hi, 0) - min(lo, 0)) / 255``,
  ``z = -128 - round(min(lo, 0) / s)``, codes in [-128, 127]). Codes are ``torch.int8``.
* FP8 (Micikevicius et al. 2022, "FP8 Formats for Deep Learning"): ``s = c / max`` with the
  clipping value ``c`` from ``method`` = ``amax`` | ``percentile`` | ``mse``; codes are the
  format's bytes of ``x / s`` (``torch.uint8``), rounded to nearest even and saturating.

Stochastic rounding (``generator``) is defined for ``int8`` only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ParameterError
from .fp8 import FORMATS as FP8_FORMATS
from .fp8 import choose_scale_fp8, dequantize_fp8, quantize_fp8
from .granularity import Granularity, PerTensor
from .int8 import choose_qparams_int8, dequantize_int8, quantize_int8

__all__ = ["FORMATS_8BIT", "QParams", "choose_qparams", "dequantize", "qparams_for_range", "quantize"]

FORMATS_8BIT = ("int8", *FP8_FORMATS)
_INT8_METHODS = ("amax", "minmax")
_FP8_METHODS = ("amax", "percentile", "mse")


@dataclass(frozen=True)
class QParams:
    """Quantization parameters: ``scale`` (float32, broadcastable to the tensor or its blocks) and, for affine
    int8 only, ``zero_point`` (int32); ``None`` means 0 (symmetric int8, FP8)."""

    scale: torch.Tensor
    zero_point: torch.Tensor | None = None


def _check(fmt: str) -> None:
    if fmt not in FORMATS_8BIT:
        hint = " (name the FP8 format exactly: float8_e4m3fn or float8_e5m2)" if "fp8" in str(fmt).lower() else ""
        raise ParameterError(f"format must be one of {', '.join(FORMATS_8BIT)}; got {fmt!r}{hint}.")


def choose_qparams(x: torch.Tensor, fmt: str, *, granularity: Granularity = PerTensor(), method: str = "amax",
                   percentile: float = 99.99) -> QParams:
    """The parameters that map ``x`` (per ``granularity`` group) onto ``fmt``'s codes; see the module docstring."""
    _check(fmt)
    if fmt == "int8":
        if method not in _INT8_METHODS:
            raise ParameterError(f"int8 scale method must be one of {', '.join(_INT8_METHODS)}; got {method!r}.")
        scale, zero = choose_qparams_int8(x, symmetric=method == "amax", granularity=granularity)
        return QParams(scale, None if method == "amax" else zero)
    if method not in _FP8_METHODS:
        raise ParameterError(f"{fmt} scale method must be one of {', '.join(_FP8_METHODS)}; got {method!r}.")
    return QParams(choose_scale_fp8(x, fmt, method=method, granularity=granularity, percentile=percentile))


def qparams_for_range(lo: float, hi: float, fmt: str) -> QParams:
    """Per-tensor parameters for a calibrated range ``[lo, hi]``: affine for ``int8``, ``max(|lo|, |hi|)`` for FP8."""
    _check(fmt)
    x = torch.tensor([float(lo), float(hi)])
    return choose_qparams(x, fmt, method="minmax" if fmt == "int8" else "amax")


def quantize(x: torch.Tensor, qparams: QParams, fmt: str, *, granularity: Granularity = PerTensor(),
             generator: torch.Generator | None = None) -> torch.Tensor:
    """``x`` -> codes of ``fmt`` (one byte per element; PerBlock returns ``[num_blocks, size]``)."""
    _check(fmt)
    if fmt == "int8":
        return quantize_int8(x, qparams.scale, qparams.zero_point, granularity=granularity,
                             symmetric=qparams.zero_point is None, generator=generator)
    if generator is not None:
        raise ParameterError(f"stochastic rounding is implemented for int8 only; got it for {fmt}.")
    return quantize_fp8(x, qparams.scale, fmt, granularity=granularity)


def dequantize(codes: torch.Tensor, qparams: QParams, fmt: str, *, granularity: Granularity = PerTensor(),
               shape: torch.Size | None = None) -> torch.Tensor:
    """Codes of ``fmt`` -> float32 values; for PerBlock pass the original ``shape``."""
    _check(fmt)
    if fmt == "int8":
        return dequantize_int8(codes.view(torch.int8), qparams.scale, qparams.zero_point, granularity=granularity,
                               shape=shape)
    return dequantize_fp8(codes.view(torch.uint8), qparams.scale, fmt, granularity=granularity, shape=shape)
