"""Client-side transforms of an update before it leaves the client.

* :class:`LocalDP`: clip to ``C`` and add ``N(0, (z C)^2 I)`` on the client, so the
  server (and anyone on the wire) only ever sees a noised update. Per round the client's
  release is a Gaussian mechanism with replace-one sensitivity ``2 C``; see
  :mod:`fed8.privacy.accounting` for the epsilon it gets.
* :class:`Attack`: simulated malicious clients for robustness experiments.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .._rng import ATTACK, LOCAL_NOISE, torch_generator
from ..privacy.dp import add_gaussian_noise, clip_by_norm
from ..privacy.randomness import PrivacyRandomness
from .client import ClientUpdate

__all__ = ["Attack", "LocalDP", "malicious_clients"]


@dataclass(frozen=True)
class LocalDP:
    """Clip and noise each update on its client, with noise from ``randomness`` (default: the OS CSPRNG)."""

    clip_norm: float
    noise_multiplier: float
    randomness: PrivacyRandomness = field(default_factory=PrivacyRandomness)

    def __call__(self, rnd: int, update: ClientUpdate) -> ClientUpdate:
        clipped, _ = clip_by_norm(update.delta, self.clip_norm)
        noisy = add_gaussian_noise(clipped, self.noise_multiplier * self.clip_norm,
                                   draws=self.randomness.draws(LOCAL_NOISE, rnd, update.client))
        return ClientUpdate(update.client, noisy, update.num_samples, update.train_loss)


def malicious_clients(num_clients: int, fraction: float, seed: int) -> frozenset[int]:
    """``round(fraction * K)`` client ids drawn once from (seed, ATTACK)."""
    m = int(round(fraction * num_clients))
    perm = torch.randperm(num_clients, generator=torch_generator(seed, ATTACK))
    return frozenset(perm[:m].tolist())


@dataclass(frozen=True)
class Attack:
    """Malicious clients send ``-scale * delta`` (sign flip) or NaN values (non_finite) instead of their update."""

    clients: frozenset[int]
    kind: str = "sign_flip"
    scale: float = 10.0

    def __call__(self, rnd: int, update: ClientUpdate) -> ClientUpdate:
        if update.client not in self.clients:
            return update
        if self.kind == "non_finite":
            bad = {k: torch.full_like(v, float("nan")) for k, v in update.delta.items()}
        else:
            bad = {k: -self.scale * v for k, v in update.delta.items()}
        return ClientUpdate(update.client, bad, update.num_samples, update.train_loss)
