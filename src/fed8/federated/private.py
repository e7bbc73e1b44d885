"""DP-FedAvg and secure summation as an aggregator wrapper.

One round, for the sampled clients ``S`` (McMahan et al. 2018, arXiv:1710.06963,
Algorithm 1, with the adaptive clipping of Andrew et al. 2021, arXiv:1905.03871)::

    x_k   = delta_k * min(1, C / ||delta_k||)                 clip (client side)
    b_k   = 1[ ||delta_k|| <= C ]                             for adaptive clipping
    Sum   = sum_{k in S} w_k x_k                              plain sum, or secure sum
    Delta = (Sum + N(0, (z_u C)^2 I)) / D                     D = m (expected clients per round), public
    C    <- C exp(-eta (( sum_k b_k + N(0, sigma_b^2)) / (q N) - gamma))

(distributed mode: the clients add both noises as integer shares inside the secure sum).

then a server optimizer (FedAvg, FedAvgM, FedAdam) steps with ``Delta``. Weights are
``w_k = 1`` (uniform) or ``min(1, n_k / cap)`` (capped, ``cap`` a public config value);
the fixed denominator, computed from public numbers only, keeps the sensitivity of
``Delta`` at ``C / D``. Without DP (secure sum only) ``D = sum_k w_k``.

A round with nothing to add (an empty Poisson sample, every update rejected) still
releases ``(0 + N(0, (z_u C)^2 I)) / D``: the mechanism the accountant analyses adds
noise every round, whatever the sample.

Noise and the noisy count come from ``randomness`` (:mod:`fed8.privacy.randomness`):
the OS CSPRNG unless a run opted into ``privacy.insecure_reproducible_noise``.

What runs where: clipping, weighting and (distributed mode) noise happen on the client
before anything leaves it; the server only sees the sum when secure aggregation is on.
Distributed mode is the distributed discrete Gaussian (:mod:`fed8.privacy.ddg`): the
clients' integer noise replaces the server's Gaussian, and the server adds none.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch

from .._rng import DP_NOISE
from ..errors import EmptyRoundError
from ..privacy.dp import adaptive_clip_step, add_gaussian_noise, clip_by_norm
from ..privacy.randomness import PrivacyRandomness
from .aggregator import AggregatorWrapper, Tensors, Total, WeightedMean, samples_weight
from .client import ClientUpdate
from .secure import MaskedInput

__all__ = ["AdaptiveClipping", "PrivateAggregate", "capped_weight", "uniform_weight"]


class AdaptiveClipping:
    """Parameters of adaptive clipping: target quantile ``gamma``, step ``eta``, count noise ``sigma_b``."""

    def __init__(self, *, target_quantile: float, lr: float, count_stddev: float) -> None:
        self.target_quantile, self.lr, self.count_stddev = target_quantile, lr, count_stddev


class PrivateAggregate(AggregatorWrapper):
    """Clip, weight, sum (plainly or securely), add noise, divide by a fixed denominator.

    Parameters
    ----------
    inner
        The sum: a :class:`~fed8.federated.aggregator.WeightedMean` (plain; its own weight
        is not used) or a :class:`~fed8.federated.secure.SecureWeightedSum`. Default: plain.
    clip_norm
        Initial ``C`` (L2, over the whole update).
    weight
        ``weight(num_samples) -> w`` in [0, 1].
    denominator
        Fixed ``D`` (DP), or None for ``sum_k w_k`` (secure sum without DP).
    noise_multiplier
        ``z_u``: std of the noise on the sum is ``z_u * C``; 0 for none (no DP, local DP).
        The server adds it, except under ``ddg`` when clients sent updates.
    ddg
        Distributed DP: the run's :class:`fed8.privacy.ddg.DDG`; each client adds its
        discrete Gaussian share inside the secure sum (needs a secure sum).
    adaptive
        :class:`AdaptiveClipping` or None.
    expected_clients
        ``q N``: the denominator of the clipped-count fraction.
    randomness
        Source of the noise; default the OS CSPRNG.
    """

    def __init__(self, inner=None, *, clip_norm: float, weight: Callable[[int], float],
                 denominator: float | None, noise_multiplier: float = 0.0, ddg=None,
                 adaptive: AdaptiveClipping | None = None, expected_clients: float = 1.0,
                 randomness: PrivacyRandomness | None = None) -> None:
        super().__init__(inner if inner is not None else WeightedMean(samples_weight))
        self.clip_norm, self.weight, self.denominator = clip_norm, weight, denominator
        self.noise_multiplier, self.ddg = noise_multiplier, ddg
        self.adaptive, self.expected_clients = adaptive, expected_clients
        self.randomness = randomness if randomness is not None else PrivacyRandomness()
        self._metrics: dict = {}

    def begin(self, rnd: int, clients: Sequence[int] = ()) -> None:
        self.rnd, self._metrics = rnd, {}
        configure = getattr(self.inner, "configure", None)
        if configure is not None:
            configure(clip_norm=self.clip_norm, ddg=self.ddg)
        self.inner.begin(rnd, clients)

    def add(self, update: ClientUpdate) -> None:
        if isinstance(update, MaskedInput):  # clipped, weighted and encoded on the client already
            self.inner.add_masked(update)
            return
        clipped, norm = clip_by_norm(update.delta, self.clip_norm)
        self.inner.add_weighted(update.client, clipped, self.weight(update.num_samples), int(norm <= self.clip_norm))

    def _total(self, params: Mapping[str, torch.Tensor]) -> Total:
        """The round's (secure or plain) sum; under DP a zero sum when nothing came."""
        t = self.inner.total() if self.num_updates else Total(None, 0.0, 0, 0, {})
        self._metrics.update(t.metrics)
        if t.total is None:
            if self.denominator is None:  # no DP: nothing to release, the round is abandoned
                raise EmptyRoundError(f"round {self.rnd}: no update to aggregate.")
            t.total = {k: torch.zeros(v.shape, dtype=torch.float32) for k, v in params.items()
                       if v.is_floating_point()}
        return t

    def result(self, params: Mapping[str, torch.Tensor]) -> Tensors:
        t = self._total(params)
        draws = self.randomness.draws(DP_NOISE, self.rnd)
        # Distributed noise: the clients added it; with no client in the sum, the server adds it all.
        distributed = self.ddg is not None and t.inputs > 0
        z = 0.0 if distributed else self.noise_multiplier
        # distributed: every input carries its client's share, so the sum's noise is that of all of them
        # (on the grid of this round's clip norm)
        std = (self.ddg.at_clip(self.clip_norm).gamma * (t.inputs * self.ddg.sigma2) ** 0.5 if distributed
               else z * self.clip_norm)
        noisy = t.total if distributed else add_gaussian_noise(t.total, std, draws=draws)
        denom = self.denominator if self.denominator is not None else t.weight
        if not denom > 0:
            raise EmptyRoundError(f"round {self.rnd}: the aggregation weights sum to {denom}; nothing to average.")
        mean = {k: v / denom for k, v in noisy.items()}
        # under distributed DP a noised count, so only the clip step below sees it, never the metrics
        unclipped = t.bits / t.inputs if (t.inputs and t.bits is not None and not distributed) else None
        self._metrics.update(clip_norm=self.clip_norm, unclipped_fraction=unclipped,
                             clipped_fraction=None if unclipped is None else 1.0 - unclipped,
                             noise_std=std / denom if denom else None)
        if self.adaptive is not None:
            a = self.adaptive
            if distributed:  # the clients' shares of the count noise are in the securely summed bits already
                fraction = t.bits / self.expected_clients
            elif a.count_stddev > 0:  # DP: the noised count over the public expected number of clients
                fraction = (t.bits + a.count_stddev * float(draws.randn(()))) / self.expected_clients
            else:  # noise-free (secure aggregation alone): the exact fraction of this round's inputs
                fraction = unclipped if unclipped is not None else 1.0
            self.clip_norm = adaptive_clip_step(self.clip_norm, fraction, target_quantile=a.target_quantile, lr=a.lr)
        return mean

    def metrics(self) -> dict:
        return dict(self._metrics)

    def state_dict(self) -> Tensors:
        return {"privacy.clip_norm": torch.tensor(self.clip_norm, dtype=torch.float64)}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        if "privacy.clip_norm" in state:
            self.clip_norm = float(state["privacy.clip_norm"])


def capped_weight(cap: float) -> Callable[[int], float]:
    """``w(n) = min(1, n / cap)`` (McMahan et al. 2018, Sec. 2)."""
    return lambda n: min(1.0, n / cap)


def uniform_weight(n: int) -> float:
    return 1.0
