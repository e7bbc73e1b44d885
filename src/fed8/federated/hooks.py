"""Client-side transforms of an update before it leaves the client.

* :class:`LocalDP`: clip to ``C`` and add ``N(0, (z C)^2 I)`` on the client, so the
  server (and anyone on the wire) only ever sees a noised update. Per round the client's
  release is a Gaussian mechanism with replace-one sensitivity ``2 C``; see
  :mod:`fed8.privacy.accounting` for the epsilon it gets.
* :class:`Attack`: simulated malicious clients for robustness experiments.
* :class:`WithholdNonFinite`: an honest client whose update is not finite (its training
  diverged) sends zeros of weight 0 instead, so the server does not learn that fact.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from .._rng import ATTACK, LOCAL_NOISE, torch_generator
from ..privacy.dp import add_gaussian_noise, clip_by_norm
from ..privacy.randomness import PrivacyRandomness
from .client import ClientUpdate

__all__ = ["Attack", "LocalDP", "WithholdNonFinite", "malicious_clients"]

log = logging.getLogger("fed8")


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


@dataclass(frozen=True)
class WithholdNonFinite:
    """A client whose own update is not finite sends zeros with sample count 0 (weight 0 under capped or sample
    weights) instead, and says so in its own log.

    A non-finite update is a fact about the client's data and training. Sent as it is, the server
    rejects it and learns which client sent it, in the clear, outside what DP noise or secure
    aggregation covers. Under ``privacy.client_reports`` off (the default wherever the run has DP
    or secure aggregation) every client runs this first, so what the server receives stays
    within the mechanism: a zero update is a valid input to the clipped, noised or masked sum
    (under uniform weights it still counts as one client with a zero update). Simulated
    attackers (:class:`Attack`) come after it, so their non-finite updates are still rejected.
    """

    def __call__(self, rnd: int, update: ClientUpdate) -> ClientUpdate:
        if all(bool(torch.isfinite(v).all()) for v in update.delta.values()):
            return update
        log.warning("round %d: client %d's update is not finite (its local training diverged); it sends zeros with "
                    "weight 0 instead, so the server does not learn it (lower train.lr if this repeats)", rnd,
                    update.client)
        return ClientUpdate(update.client, {k: torch.zeros_like(v) for k, v in update.delta.items()}, 0, None)
