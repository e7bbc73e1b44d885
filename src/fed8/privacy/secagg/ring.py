"""Integer updates for secure aggregation: rotation, a shared int8 scale, the ring Z_(2^k).

A client's update (all tensors flattened in sorted key order) is

1. rotated by ``R = F D``: random signs ``D`` (one public draw per round, the same for
   every client) then an orthonormal real FFT ``F``. ``R`` is orthogonal, so norms and
   sums are kept, and it spreads any vector evenly: each coordinate of ``R x`` is about
   ``N(0, ||x||^2 / d)`` (the randomized-Hadamard idea of Suresh et al. 2017,
   arXiv:1611.00429, and Kairouz et al. 2021, arXiv:2102.06387, with an FFT so that any
   length works without padding to a power of two);
2. quantized to int8 codes in [-127, 127] with one scale ``s`` shared by all clients
   (stochastic rounding ``floor(y / s + u)``: unbiased), where ``s`` is fixed
   before the round from public numbers only (the clip norm and the dimension);
3. read as elements of Z_(2^k). The sum of ``n`` such codes lies in ``[-127 n, 127 n]``,
   so ``k = ceil(log2(254 n + 2))`` bits hold it exactly (at most ``8 + ceil(log2 n)``):
   the masked sum is lifted back to a signed integer without any wrap-around error.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch

from .bits import pack_bits, unpack_bits  # re-exported: the ring's wire format

__all__ = ["flatten", "from_ring", "pack_bits", "ring_bits", "rotate", "shared_scale", "to_ring",
           "unflatten", "unpack_bits", "unrotate"]

Layout = list[tuple[str, tuple[int, ...]]]


def ring_bits(n: int) -> int:
    """Smallest ``k`` with ``2^(k-1) > 127 n``: the signed sum of ``n`` int8 codes fits Z_(2^k)."""
    return max(8, math.ceil(math.log2(254 * max(n, 1) + 2)))


def flatten(tensors: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, Layout]:
    """One float32 vector of every tensor in sorted key order, and the layout to undo it."""
    keys = sorted(tensors)
    layout = [(k, tuple(tensors[k].shape)) for k in keys]
    return torch.cat([tensors[k].reshape(-1).to(torch.float32) for k in keys]), layout


def unflatten(vec: torch.Tensor, layout: Layout) -> dict[str, torch.Tensor]:
    out, at = {}, 0
    for k, shape in layout:
        n = math.prod(shape)
        out[k] = vec[at : at + n].reshape(shape)
        at += n
    return out


def rotate(x: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """``F (signs * x)`` for a 1-D ``x`` of even length ``d``; orthonormal, length ``d``."""
    d = x.shape[0]
    z = torch.fft.rfft((x * signs).to(torch.float64), norm="ortho")  # [d/2 + 1] complex
    r2 = math.sqrt(2.0)
    return torch.cat([z[:1].real, r2 * z[1:-1].real, r2 * z[1:-1].imag, z[-1:].real]).to(torch.float32)[:d]


def unrotate(y: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rotate`."""
    d = y.shape[0]
    h = d // 2
    y = y.to(torch.float64)
    r2 = math.sqrt(2.0)
    re = torch.cat([y[:1], y[1:h] / r2, y[-1:]])
    im = torch.cat([torch.zeros(1, dtype=torch.float64), y[h : d - 1] / r2, torch.zeros(1, dtype=torch.float64)])
    x = torch.fft.irfft(torch.complex(re, im), n=d, norm="ortho")
    return (x * signs).to(torch.float32)


def shared_scale(*, clip_norm: float, dim: int, bound_sigmas: float = 4.0) -> float:
    """The int8 scale all clients use: ``bound_sigmas`` standard deviations map to code 127.

    After rotation a coordinate of a vector of norm at most ``C`` has standard deviation
    at most ``C / sqrt(d)``. Beyond ``bound_sigmas`` (4: ~6e-5 of coordinates) codes
    saturate at +-127. (Distributed DP does not use int8 codes: see :mod:`fed8.privacy.ddg`.)
    """
    return bound_sigmas * math.sqrt(clip_norm**2 / dim) / 127.0


def to_ring(y: torch.Tensor, scale: float, k: int, *, draws) -> np.ndarray:
    """int8 codes ``clamp(floor(y / scale + u), -127, 127)``, ``u ~ U[0, 1)`` from ``draws``, as uint32 mod 2^k.

    ``draws``: a :class:`fed8.privacy.randomness.Draws`.
    """
    u = draws.rand(tuple(y.shape))
    q = torch.floor(y.to(torch.float32) / torch.tensor(scale, dtype=torch.float32) + u).clamp(-127, 127)
    return (q.to(torch.int64).numpy() & ((1 << k) - 1)).astype(np.uint32)


def from_ring(v: np.ndarray, k: int) -> np.ndarray:
    """Centered lift Z_(2^k) -> [-2^(k-1), 2^(k-1)) as int64."""
    v = v.astype(np.int64) & ((1 << k) - 1)
    return np.where(v >= 1 << (k - 1), v - (1 << k), v)
