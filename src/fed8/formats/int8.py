"""INT8 quantization: symmetric and affine, any granularity, round half to even, saturating.

Affine (asymmetric) quantization (Jacob et al. 2018, arXiv:1712.05877)::

    q = clamp(round(x / s) + z, -128, 127),    x_hat = s * (q - z)
    s = (max(x_max, 0) - min(x_min, 0)) / 255,  z = round(-128 - min(x_min, 0) / s)

Symmetric quantization uses ``z = 0``, ``s = amax / 127`` and the restricted range
[-127, 127], so that +a and -a quantize alike. ``round`` is round-half-to-even
(``torch.round``); stochastic rounding ``floor(x / s + u)``, ``u ~ U[0, 1)``, is unbiased:
``E[x_hat] = x`` inside the range. A group whose values are all zero gets scale 1.
"""

from __future__ import annotations

import torch

from ..errors import ParameterError
from .granularity import Granularity, PerBlock, PerTensor, blocked, reduce_amax, reduce_minmax, unblocked

__all__ = ["INT8_MAX", "INT8_MIN", "choose_qparams_int8", "dequantize_int8", "fake_quantize_int8", "quantize_int8"]

INT8_MIN, INT8_MAX = -128, 127


def _view(x: torch.Tensor, g: Granularity) -> torch.Tensor:
    return blocked(x, g.size) if isinstance(g, PerBlock) else x


@torch.no_grad()
def choose_qparams_int8(x: torch.Tensor, *, symmetric: bool = True,
                        granularity: Granularity = PerTensor()) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (float32) and zero point (int32), shaped to broadcast against ``x`` (or its blocks)."""
    x = x.to(torch.float32)
    if symmetric:
        amax = reduce_amax(x, granularity)
        scale = amax / 127.0
        zero = torch.zeros_like(scale, dtype=torch.int32)
    else:
        lo, hi = reduce_minmax(x, granularity)
        lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)  # the range must hold 0 exactly
        scale = (hi - lo) / 255.0
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.round(INT8_MIN - lo / safe).clamp(INT8_MIN, INT8_MAX).to(torch.int32)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale, zero


@torch.no_grad()
def quantize_int8(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None, *,
                  granularity: Granularity = PerTensor(), symmetric: bool | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """``x`` -> int8 codes (same shape as ``x``; PerBlock returns ``[num_blocks, size]``).

    Parameters
    ----------
    generator
        If given, stochastic rounding with uniform noise from this generator;
        otherwise round half to even.
    symmetric
        Use the restricted range [-127, 127]; default: ``zero_point`` is None or all zero.
    """
    xv = _view(x.to(torch.float32), granularity)
    z = zero_point if zero_point is not None else torch.zeros_like(scale, dtype=torch.int32)
    if symmetric is None:
        symmetric = bool((z == 0).all())
    y = xv / scale
    if generator is None:
        r = torch.round(y)
    else:
        r = torch.floor(y + torch.rand(y.shape, generator=generator, dtype=y.dtype))
    lo = -127 if symmetric else INT8_MIN
    return (r + z).clamp(lo, INT8_MAX).to(torch.int8)


@torch.no_grad()
def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None, *,
                    granularity: Granularity = PerTensor(), shape: torch.Size | None = None) -> torch.Tensor:
    """int8 codes -> float32; for PerBlock pass the original ``shape``."""
    z = zero_point if zero_point is not None else 0
    out = (q.to(torch.float32) - z) * scale
    if isinstance(granularity, PerBlock):
        if shape is None:
            raise ParameterError("dequantize_int8 with PerBlock needs the original shape")
        return unblocked(out, shape)
    return out


def fake_quantize_int8(x: torch.Tensor, *, symmetric: bool = True, granularity: Granularity = PerTensor(),
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """dequantize(quantize(x)) with parameters chosen from ``x`` itself."""
    s, z = choose_qparams_int8(x, symmetric=symmetric, granularity=granularity)
    q = quantize_int8(x, s, z, granularity=granularity, symmetric=symmetric, generator=generator)
    return dequantize_int8(q, s, z, granularity=granularity, shape=x.shape)
