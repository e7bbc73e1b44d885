"""Client sampling per round: a seeded uniform draw without replacement, or Poisson.

The privacy accountant must match the sampling (see :mod:`fed8.privacy.accounting`):
``fixed`` draws exactly ``m = round(q K)`` clients; ``poisson`` includes every client
independently with probability ``q``, so the number per round varies (and may be 0).
"""

from __future__ import annotations

import math

import torch

from ..errors import ParameterError
from ..privacy.randomness import Draws, SeededDraws

__all__ = ["SAMPLING", "num_sampled", "sample_clients"]

SAMPLING = ("fixed", "poisson")


def num_sampled(num_clients: int, fraction: float) -> int:
    """``max(1, round(fraction * K))`` clients per round (McMahan et al.: C * K, at least one)."""
    return max(1, min(num_clients, int(math.floor(fraction * num_clients + 0.5))))


def sample_clients(num_clients: int, fraction: float, *, generator: torch.Generator | Draws,
                   sampling: str = "fixed") -> list[int]:
    """Sorted ids of the clients that train this round.

    ``fixed``: all clients when ``fraction == 1``, else ``num_sampled`` of them uniformly
    without replacement. ``poisson``: each client with probability ``fraction``.
    ``generator``: a seeded ``torch.Generator``, or :class:`fed8.privacy.randomness.Draws`
    (under DP the sample must be secret: the OS CSPRNG).
    """
    draws = SeededDraws(generator) if isinstance(generator, torch.Generator) else generator
    if sampling == "poisson":
        keep = draws.rand((num_clients,)) < fraction
        return torch.nonzero(keep).flatten().tolist()
    if sampling != "fixed":
        raise ParameterError(f"sampling must be one of {SAMPLING}; got {sampling!r}.")
    m = num_sampled(num_clients, fraction)
    if m == num_clients:
        return list(range(num_clients))
    return sorted(draws.randperm(num_clients)[:m].tolist())
