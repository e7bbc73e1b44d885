"""Client sampling per round: a seeded uniform draw without replacement."""

from __future__ import annotations

import math

import torch

__all__ = ["num_sampled", "sample_clients"]


def num_sampled(num_clients: int, fraction: float) -> int:
    """``max(1, round(fraction * K))`` clients per round (McMahan et al.: C * K, at least one)."""
    return max(1, min(num_clients, int(math.floor(fraction * num_clients + 0.5))))


def sample_clients(num_clients: int, fraction: float, *, generator: torch.Generator) -> list[int]:
    """Sorted ids of the clients that train this round; all of them when ``fraction == 1``."""
    m = num_sampled(num_clients, fraction)
    if m == num_clients:
        return list(range(num_clients))
    return sorted(torch.randperm(num_clients, generator=generator)[:m].tolist())
