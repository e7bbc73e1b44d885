"""Conditional randomized rounding, the integer step of the distributed discrete Gaussian (Kairouz, Liu, Steinke 2021).

Kairouz, Liu, Steinke, "The Distributed Discrete Gaussian Mechanism for Federated Learning
with Secure Aggregation" (ICML 2021, arXiv:2102.06387), Algorithm 1. A client's clipped update
is rotated (the secure sum's public real-FFT rotation, :func:`fed8.privacy.secagg.ring.rotate`:
orthonormal for any even length, so norms are kept without padding to a power of two) and
scaled by ``1 / gamma``; then each coordinate is rounded up with probability equal to its
fractional part (unbiased), and the whole vector is drawn again until
``||x_int||_2^2 <= bound``, with

    bound = min(c^2 + d/4 + sqrt(2 log(1/beta)) (c + sqrt(d)/2), (c + sqrt(d))^2)

for ``c`` the scaled clip norm: the paper's norm bound, the L2 sensitivity its privacy
analysis uses (:mod:`.ddg_accounting`). The rounding draws are privacy randomness (they hide
the low bits of the update), so they come from a :class:`fed8.privacy.randomness.Draws` (the
OS CSPRNG in real runs).
"""

from __future__ import annotations

import math

import torch

from ..errors import ParameterError

__all__ = ["conditional_round", "norm_bound"]


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
