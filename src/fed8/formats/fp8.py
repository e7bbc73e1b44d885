"""The 8-bit float formats ``float8_e4m3fn`` and ``float8_e5m2`` (Micikevicius et al. 2022, arXiv:2209.05433).

=================  ========  ========  ====  ===========  ============  ===========  ====
format             exponent  mantissa  bias  max          min normal    min subnorm  Inf
=================  ========  ========  ====  ===========  ============  ===========  ====
float8_e4m3fn      4         3         7     448          2^-6          2^-9         no
float8_e5m2        5         2         15    57344        2^-14         2^-16        yes
=================  ========  ========  ====  ===========  ============  ===========  ====

Rounding is written out here (not delegated to a cast) so the math exists once and is
checked bit for bit against ``torch`` and ``ml_dtypes``: with ``e = max(floor(log2|x|),
e_min)`` the grid spacing is ``2^(e - mantissa_bits)`` and

    round(x) = sign(x) * round_half_even(|x| / 2^(e - m)) * 2^(e - m).

Saturating (the default) clamps to +-max: a finite input never becomes NaN or Inf,
+-Inf becomes +-max, NaN stays NaN (this equals torch 2.13's own ``float8_e4m3fn`` cast,
which saturates). Non-saturating matches ``ml_dtypes`` and ONNX ``saturate=0``: overflow
is NaN for ``float8_e4m3fn`` (no Inf) and Inf for ``float8_e5m2``.

Scaled quantization stores ``q = round(x / s)`` with a scale ``s`` per group, chosen so
that the group's clipping value maps to the format's max: ``s = c / max``, where ``c``
is the amax, a percentile of ``|x|``, or the MSE-optimal clip found by grid search.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ParameterError
from .granularity import (Granularity, PerBlock, PerTensor, blocked, reduce_amax, reduce_mean_sq, reduce_percentile,
                          unblocked)

__all__ = ["E4M3FN", "E5M2", "FORMATS", "FP8Format", "choose_scale_fp8", "dequantize_fp8", "fp8_format",
           "from_bits", "quantize_fp8", "round_to_fp8", "to_bits"]


@dataclass(frozen=True)
class FP8Format:
    """Parameters of one 8-bit float format."""

    name: str
    exponent_bits: int
    mantissa_bits: int
    bias: int
    max: float
    has_inf: bool

    @property
    def min_exponent(self) -> int:
        """Exponent of the smallest normal number, 1 - bias."""
        return 1 - self.bias

    @property
    def min_normal(self) -> float:
        return 2.0**self.min_exponent

    @property
    def min_subnormal(self) -> float:
        return 2.0 ** (self.min_exponent - self.mantissa_bits)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.name)


E4M3FN = FP8Format("float8_e4m3fn", exponent_bits=4, mantissa_bits=3, bias=7, max=448.0, has_inf=False)
E5M2 = FP8Format("float8_e5m2", exponent_bits=5, mantissa_bits=2, bias=15, max=57344.0, has_inf=True)
FORMATS = {f.name: f for f in (E4M3FN, E5M2)}


def fp8_format(name: str | FP8Format) -> FP8Format:
    """Look up a format by its exact name."""
    if isinstance(name, FP8Format):
        return name
    if name not in FORMATS:
        raise ParameterError(f"FP8 format must be one of {', '.join(FORMATS)}; got {name!r}. "
                         "('fp8' alone is ambiguous: name the format.)")
    return FORMATS[name]


@torch.no_grad()
def round_to_fp8(x: torch.Tensor, fmt: str | FP8Format, *, saturate: bool = True) -> torch.Tensor:
    """Round float values to the nearest ``fmt`` value (ties to even); returns float32.

    Saturating (the default): torch's own cast after clamping to ``±max`` (4-6x faster than
    the formula below, and equal to it bit for bit, signed zeros and NaN included: tested on a
    sweep of float32 bit patterns). Otherwise the formula: with ``e = max(floor(log2 |x|),
    e_min)`` the spacing is ``q = 2^(e - m)``, ``r = round(|x| / q) q``, overflow to Inf (E5M2)
    or NaN (E4M3FN).
    """
    f = fp8_format(fmt)
    x = x.to(torch.float32)
    if saturate:
        return x.clamp(-f.max, f.max).to(f.torch_dtype).to(torch.float32)  # clamp maps ±Inf to ±max, keeps NaN
    a = x.abs()
    _, e = torch.frexp(a)  # a = m * 2^e with m in [0.5, 1)
    e = (e - 1).clamp(min=f.min_exponent)  # floor(log2 a); subnormals share the lowest binade
    quantum = torch.ldexp(torch.ones_like(a), e - f.mantissa_bits)
    r = torch.round(a / quantum) * quantum
    r = torch.where(r > f.max, torch.full_like(r, float("inf") if f.has_inf else float("nan")), r)
    return torch.copysign(r, x)


def to_bits(x: torch.Tensor, fmt: str | FP8Format, *, saturate: bool = True) -> torch.Tensor:
    """Encode to the format's bytes (uint8). The value is rounded here, so the final cast is exact."""
    f = fp8_format(fmt)
    return round_to_fp8(x, f, saturate=saturate).to(f.torch_dtype).view(torch.uint8)


def from_bits(bits: torch.Tensor, fmt: str | FP8Format) -> torch.Tensor:
    """Decode uint8 bytes of the format to float32."""
    return bits.view(fp8_format(fmt).torch_dtype).to(torch.float32)


@torch.no_grad()
def choose_scale_fp8(x: torch.Tensor, fmt: str | FP8Format, *, method: str = "amax",
                     granularity: Granularity = PerTensor(), percentile: float = 99.99,
                     grid: int = 32) -> torch.Tensor:
    """Scale ``s`` per group so that the clipping value ``c`` lands on the format's max: ``s = c / max``.

    Parameters
    ----------
    method
        ``"amax"``: ``c = max |x|``; ``"percentile"``: ``c`` = that percentile of ``|x|``
        (clips outliers); ``"mse"``: ``c`` in ``amax * {1/grid, ..., 1}`` minimizing
        ``mean((x - x_hat)^2)`` per group.

    A group that is all zeros gets scale 1.
    """
    f = fp8_format(fmt)
    x = x.to(torch.float32)
    amax = reduce_amax(x, granularity)
    if method == "amax":
        clip = amax
    elif method == "percentile":
        clip = reduce_percentile(x, granularity, percentile)
    elif method == "mse":
        xv = blocked(x, granularity.size) if isinstance(granularity, PerBlock) else x
        best_err, clip = None, amax
        for i in range(grid, 0, -1):
            c = amax * (i / grid)
            s = torch.where(c > 0, c / f.max, torch.ones_like(c))
            err = _group_mse(xv - round_to_fp8(xv / s, f) * s, granularity)
            if best_err is None:
                best_err = err
                continue
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            clip = torch.where(better, c, clip)
    else:
        raise ParameterError(f"FP8 scale method must be 'amax', 'percentile' or 'mse'; got {method!r}.")
    return torch.where(clip > 0, clip / f.max, torch.ones_like(clip))


def _group_mse(err: torch.Tensor, g: Granularity) -> torch.Tensor:
    if isinstance(g, PerBlock):
        return (err * err).mean(1, keepdim=True)
    return reduce_mean_sq(err, g)


@torch.no_grad()
def quantize_fp8(x: torch.Tensor, scale: torch.Tensor, fmt: str | FP8Format, *,
                 granularity: Granularity = PerTensor()) -> torch.Tensor:
    """``x`` -> uint8 codes of ``round(x / scale)`` (saturating). PerBlock returns ``[num_blocks, size]``."""
    xv = blocked(x.to(torch.float32), granularity.size) if isinstance(granularity, PerBlock) else x
    return to_bits(xv / scale, fmt)


@torch.no_grad()
def dequantize_fp8(bits: torch.Tensor, scale: torch.Tensor, fmt: str | FP8Format, *,
                   granularity: Granularity = PerTensor(), shape: torch.Size | None = None) -> torch.Tensor:
    """uint8 codes -> float32 ``value * scale``; for PerBlock pass the original ``shape``."""
    out = from_bits(bits, fmt) * scale
    if isinstance(granularity, PerBlock):
        if shape is None:
            raise ParameterError("dequantize_fp8 with PerBlock needs the original shape")
        return unblocked(out, shape)
    return out
