"""The client-side encoding of the distributed discrete Gaussian mechanism, before noise (Kairouz, Liu, Steinke 2021).

Kairouz, Liu, Steinke, "The Distributed Discrete Gaussian Mechanism for Federated Learning
with Secure Aggregation" (ICML 2021, arXiv:2102.06387), Algorithm 1, steps that map a clipped
real vector to integers whose norm is bounded, so that integer noise can be added and the
sum taken modulo ``m`` without loss:

1. **Flatten and rotate**: ``x -> H D x / sqrt(d)`` with ``D`` random signs and ``H`` the
   Walsh-Hadamard matrix (``d`` padded to a power of two). The rotation is orthonormal, so
   norms are kept; it spreads the mass over all coordinates, which bounds each of them and
   makes the modular wrap-around unlikely. ``D`` is public (the same on every client, from
   the round's shared seed): the rotation needs no secrecy, only independence from the data.
2. **Scale** by ``1 / gamma`` (the granularity).
3. **Conditional randomized rounding**: round each coordinate up with probability equal to
   its fractional part (unbiased), and draw again until ``||x_int||_2^2 <= bound``, with
   ``bound = min(c^2 + d/4 + sqrt(2 log(1/beta)) (c + sqrt(d)/2), (c + sqrt(d))^2)`` for
   ``c = ||x|| / gamma``: the paper's norm bound, which the sensitivity analysis uses.

The rounding draws are privacy randomness (they hide the low bits of the update), so they come
from a :class:`fed8.privacy.randomness.Draws` (the OS CSPRNG in real runs). The server undoes
1 and 2 on the decoded sum (:func:`decode_sum`).
"""

from __future__ import annotations

import math

import torch

from ..errors import ParameterError

__all__ = ["conditional_round", "decode_sum", "fwht", "norm_bound", "rotate", "rotation_signs", "unrotate"]


def _pow2(d: int) -> int:
    return 1 << max(0, (d - 1).bit_length())


def rotation_signs(d: int, seed: int) -> torch.Tensor:
    """The public diagonal ``D``: ``±1`` for the padded dimension, from the round's shared ``seed``."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randint(0, 2, (_pow2(d),), generator=g, dtype=torch.int64).mul(2).sub(1).to(torch.float64)


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalized fast Walsh-Hadamard transform over the last dimension (a power of two): ``H x``."""
    n = x.shape[-1]
    if n & (n - 1):
        raise ParameterError(f"fwht needs a power-of-two length; got {n}.")
    y = x.clone()
    h = 1
    while h < n:
        y = y.reshape(*x.shape[:-1], n // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        y = torch.stack((a + b, a - b), dim=-2).reshape(*x.shape[:-1], n)
        h *= 2
    return y


def rotate(x: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """``H D x / sqrt(n)`` of the flattened ``x`` zero-padded to ``n = len(signs)`` (float64, orthonormal)."""
    v = torch.zeros(signs.numel(), dtype=torch.float64)
    flat = x.reshape(-1).to(torch.float64)
    v[: flat.numel()] = flat
    return fwht(v * signs) / math.sqrt(signs.numel())


def unrotate(y: torch.Tensor, signs: torch.Tensor, d: int) -> torch.Tensor:
    """The inverse of :func:`rotate` (``D H y / sqrt(n)``, since ``H H = n I``), first ``d`` values."""
    return (fwht(y.to(torch.float64)) / math.sqrt(signs.numel()) * signs)[:d]


def norm_bound(c: float, d: int, beta: float) -> float:
    """The paper's bound on ``||x_int||_2^2`` after conditional rounding of a vector of norm ``c`` in ``d`` dims."""
    if not 0 < beta < 1:
        raise ParameterError(f"beta (the rounding bias bound) must be in (0, 1); got {beta}.")
    return min(c * c + d / 4 + math.sqrt(2 * math.log(1 / beta)) * (c + math.sqrt(d) / 2), (c + math.sqrt(d)) ** 2)


def conditional_round(x: torch.Tensor, bound: float, draws, *, max_tries: int = 1000) -> torch.Tensor:
    """Unbiased randomized rounding of ``x`` (float64) to int64, redrawn until ``||x_int||^2 <= bound``."""
    floor = torch.floor(x)
    frac = (x - floor).to(torch.float32)
    for _ in range(max_tries):
        up = draws.rand(tuple(x.shape)) < frac
        r = (floor + up.to(torch.float64)).to(torch.int64)
        if float((r.to(torch.float64) ** 2).sum()) <= bound:
            return r
    raise ParameterError(f"conditional rounding did not meet the norm bound {bound:.4g} in {max_tries} tries; the "
                         "bound is too tight for this vector (raise beta or the granularity).")


def decode_sum(total: torch.Tensor, *, gamma: float, signs: torch.Tensor, d: int) -> torch.Tensor:
    """The server's real-valued sum from the integer sum (already centered): unscale by ``gamma``, unrotate."""
    return unrotate(total.to(torch.float64) * gamma, signs, d)
