"""Granularity of quantization scales: per tensor, per channel, or per block.

A granularity says over which elements one scale is shared. :func:`reduce_amax`
(and friends) return statistics shaped to broadcast against the input, so quantize
and dequantize are plain elementwise expressions for every granularity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ParameterError

__all__ = ["Granularity", "PerBlock", "PerChannel", "PerTensor", "blocked", "reduce_amax", "reduce_mean_sq",
           "reduce_minmax", "reduce_percentile", "unblocked"]


@dataclass(frozen=True)
class PerTensor:
    """One scale for the whole tensor."""


@dataclass(frozen=True)
class PerChannel:
    """One scale per index along ``axis`` (e.g. axis 0 = output channels of a conv weight)."""

    axis: int = 0


@dataclass(frozen=True)
class PerBlock:
    """One scale per ``size`` consecutive elements of the flattened tensor (last block may be short)."""

    size: int = 128

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ParameterError(f"PerBlock.size must be >= 1; got {self.size}.")


Granularity = PerTensor | PerChannel | PerBlock


def blocked(x: torch.Tensor, size: int) -> torch.Tensor:
    """Flatten and zero-pad ``x`` to ``[num_blocks, size]``."""
    flat = x.reshape(-1)
    pad = (-flat.numel()) % size
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return flat.reshape(-1, size)  # [num_blocks, size]


def unblocked(xb: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Inverse of :func:`blocked`."""
    n = 1
    for d in shape:
        n *= d
    return xb.reshape(-1)[:n].reshape(shape)


def _reduce(x: torch.Tensor, g: Granularity, fn) -> torch.Tensor:
    if isinstance(g, PerTensor):
        return fn(x.reshape(-1), 0).reshape([1] * x.ndim) if x.numel() else x.new_zeros([1] * x.ndim)
    if isinstance(g, PerChannel):
        axis = g.axis % x.ndim
        moved = x.movedim(axis, 0).reshape(x.shape[axis], -1)  # [C, rest]
        out = fn(moved, 1) if moved.shape[1] else moved.new_zeros(moved.shape[0])
        shape = [1] * x.ndim
        shape[axis] = x.shape[axis]
        return out.reshape(shape)
    if isinstance(g, PerBlock):
        return fn(blocked(x, g.size), 1).unsqueeze(1)  # [num_blocks, 1]
    raise ParameterError(f"granularity must be PerTensor, PerChannel or PerBlock; got {g!r}")


def reduce_amax(x: torch.Tensor, g: Granularity) -> torch.Tensor:
    """max |x| per group, shaped to broadcast against ``x`` (or its blocked view for PerBlock)."""
    return _reduce(x.abs(), g, lambda t, d: t.amax(d))


def reduce_minmax(x: torch.Tensor, g: Granularity) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, max) per group, shaped like :func:`reduce_amax`."""
    return _reduce(x, g, lambda t, d: t.amin(d)), _reduce(x, g, lambda t, d: t.amax(d))


def reduce_mean_sq(x: torch.Tensor, g: Granularity) -> torch.Tensor:
    """mean of x^2 per group, shaped like :func:`reduce_amax` (blocks include their zero padding)."""
    return _reduce(x * x, g, lambda t, d: t.mean(d))


def reduce_percentile(x: torch.Tensor, g: Granularity, q: float) -> torch.Tensor:
    """The ``q``-th percentile (0..100, nearest rank) of ``|x|`` per group, shaped like :func:`reduce_amax`."""

    def kth(t: torch.Tensor, d: int) -> torch.Tensor:
        n = t.shape[d]
        k = min(n, max(1, int(-(-q * n // 100))))  # ceil(q/100 * n)
        return t.kthvalue(k, d).values

    return _reduce(x.abs(), g, kth)
