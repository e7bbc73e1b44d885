"""The distributed discrete Gaussian mechanism of a run: parameters, privacy, and one client's encoding.

Kairouz, Liu, Steinke 2021 (arXiv:2102.06387), Algorithm 1, over fed8's secure sum. Round
``r``, every participating client ``k`` with clipped, weighted update ``v_k`` (``||v_k|| <= C``):

    y_k   = R(v_k) / gamma                       R: the public rotation of :mod:`.secagg.ring`
    x_k   = conditional_round(y_k, bound)        ||x_k||^2 <= bound  (:mod:`.ddg_encode`)
    z_k   = x_k + N_Z(0, sigma^2)^d              exact, from the OS CSPRNG (:mod:`.discrete_gaussian`)
    send    z_k mod 2^b                          masked by secure aggregation (:mod:`.secagg`)

and the server, from the unmasked sum only: ``sum = gamma R^T(lift(sum_k z_k mod 2^b))``, ``lift``
the centered lift of Z_(2^b) (:func:`.secagg.ring.from_ring`).
The noise is in the integers, so the ring sum is exact; the privacy analysis is the
paper's (:mod:`.ddg_accounting`) for the sum of ``t`` clients' noise, ``t`` the smallest
number of inputs the protocol ever unmasks. Nothing here uses floating-point noise.

Whom the guarantee holds against, and why sampling is fixed-size (replace-one adjacency: one
client's data replaced by any other, so the rounded sum moves by up to ``2 Delta_2``):

* **The server** (and clients colluding with it) runs the client sampling and sees who
  sends a masked input, so sampling does not amplify against it: a client that joined ``k``
  rounds has the ``k``-fold composition of the unsampled mechanism. ``K ~ Binomial(R, m/N)``
  is data-independent, so ``(eps(k*, delta / 2), delta)`` holds, with ``k*`` the fewest rounds
  with ``P[K > k*] <= delta / 2`` (:func:`.ddg_accounting.participation_bound`); epsilon is
  then non-decreasing in ``R``.
* **Anyone who sees only the models** (the sample hidden from them): sampling ``m`` of ``N``
  without replacement amplifies (Wang, Balle, Kasiviswanathan 2019, Thm 9).

The run's epsilon is the larger of the two. Poisson sampling is refused: every participant
adds a noise share, so the unmasked sum's noise variance, measured over ``d`` values to a
relative ``sqrt(2 / d)``, reveals how many clients took part, which the Poisson (add/remove)
analysis assumes hidden. With a fixed size the count is public anyway (``m`` minus dropouts,
which do not depend on the data; noise beyond ``t`` shares is post-processing).

Parameters chosen here, before round 1, from public numbers only:

* ``bits`` ``b``: the modulus ``2^b``, the bits each client sends per value.
* ``gamma`` (the granularity): as small as the modulus allows. With ``n`` clients the
  sum's coordinate is sub-Gaussian with variance proxy ``V = rho n^2 c^2 / d + n / 4 + n sigma^2``
  in integer units (``c = C / gamma``; ``rho = 2`` for the rotation's flatness, the signal
  of ``n`` aligned updates; ``1/4`` the rounding error; ``sigma^2`` the noise). ``gamma``
  is the smallest with ``k sqrt(V) <= 2^(b-1)``, ``k = sqrt(2 log(2 d / p))``, so that
  every coordinate of a round's sum stays inside the ring (no wrap-around) except with
  probability at most ``p = WRAP_PROBABILITY``. Wrap-around would cost accuracy, never
  privacy (the modular sum is a post-processing of the noised values).
* ``beta``: the conditional rounding's bias bound (:func:`.ddg_encode.norm_bound`).
* ``sigma^2`` (an integer): for a budget, the smallest with ``epsilon <= target`` (bisection
  over ``z = sqrt(t) sigma / Delta_2``); otherwise ``z`` as configured.

Adaptive clipping (Andrew et al. 2021, arXiv:1905.03871) over the same sum: each client also
sends ``(b_k + N_Z(0, sigma_b^2)) mod 2^b``, ``b_k = 1[||u_k|| <= C]`` its clip bit, so the server
learns only the noised count of unclipped clients and steps ``C`` with it (:mod:`fed8.federated.private`).
The count is a one-dimensional distributed discrete Gaussian of sensitivity 1, composed with the
update's in every round (:func:`.ddg_accounting.ddg_epsilon`). Its total std ``sqrt(t) sigma_b`` is
by default ``max(m / 20, 1.5 z)``: the paper's ``m / 20``, and at most a tenth of each round's RDP
(the update's replace-one RDP is ``2 alpha / z^2``, the count's ``alpha / (2 t sigma_b^2)``).
Everything above is invariant under scaling ``C`` and ``gamma`` together (the grid holds ``C / gamma``),
so a round whose clip norm moved to ``C_r`` uses ``gamma C_r / C`` (:meth:`DDG.at_clip`) with the same
privacy and the same ring.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError, ParameterError
from .ddg_accounting import ddg_epsilon, participation_bound
from .ddg_encode import conditional_round, norm_bound
from .discrete_gaussian import MAX_SIGMA2, discrete_gaussian

__all__ = ["DDG", "WRAP_PROBABILITY", "calibrate_ddg", "count_sigma2_for", "ddg_for_noise_multiplier",
           "sampling_refusal"]

WRAP_PROBABILITY = 1e-9  # per round, any coordinate: the tail bound that fixes gamma
_RHO = 2.0  # a coordinate of the real-FFT rotation of v has variance proxy <= 2 ||v||^2 / d


@dataclass(frozen=True)
class DDG:
    """The public parameters of the distributed discrete Gaussian for a run.

    Attributes
    ----------
    dim
        ``d``: the rotated length (the update's length, padded to even).
    bits
        ``b``: values are summed in Z_(2^b).
    gamma
        Granularity: the integer grid step in update units.
    beta
        The conditional rounding's bias bound.
    sigma2
        Each client's noise variance, an integer, in grid units.
    shares
        ``t``: the fewest noise shares in any unmasked sum (the analysis's ``n``).
    clip_norm
        ``C`` in update units.
    sampling, num_clients, clients_per_round
        The client sampling: ``fixed`` (``m`` of ``N`` without replacement, the only one
        analysed; see the module docstring for why not ``poisson``).
    count_sigma2
        Each client's noise variance on its clip bit (adaptive clipping), an integer; 0 when
        the run sends no clip bit (a fixed clip norm).
    """

    dim: int
    bits: int
    gamma: float
    beta: float
    sigma2: int
    shares: int
    clip_norm: float
    sampling: str
    num_clients: int
    clients_per_round: float
    count_sigma2: int = 0

    @property
    def bound(self) -> float:
        """The squared-norm bound of a client's rounded vector (its L2 sensitivity squared)."""
        return norm_bound(self.clip_norm / self.gamma, self.dim, self.beta)

    @property
    def l2_sensitivity(self) -> float:
        return math.sqrt(self.bound)

    @property
    def noise_multiplier(self) -> float:
        """``sqrt(t sigma^2) / Delta_2``: the summed noise's std over the rounded sensitivity."""
        return math.sqrt(self.shares * self.sigma2) / self.l2_sensitivity

    @property
    def noise_std(self) -> float:
        """Std of the summed noise (at least ``t`` shares) in update units."""
        return math.sqrt(self.shares * self.sigma2) * self.gamma

    @property
    def count_noise_std(self) -> float:
        """Std of the summed noise on the clipped count (at least ``t`` shares); 0 without adaptive clipping."""
        return math.sqrt(self.shares * self.count_sigma2)

    def at_clip(self, clip_norm: float) -> "DDG":
        """The same mechanism for a round clipped at ``clip_norm``: ``gamma`` scaled with it (same privacy, same ring)."""
        if clip_norm == self.clip_norm:
            return self
        if not clip_norm > 0:
            raise ParameterError(f"clip_norm must be > 0; got {clip_norm}.")
        return dataclasses.replace(self, gamma=self.gamma * clip_norm / self.clip_norm, clip_norm=clip_norm)

    def __post_init__(self) -> None:
        _check_sampling(self.sampling, self.num_clients, self.clients_per_round)

    @property
    def sampling_rate(self) -> float:
        return self.clients_per_round / self.num_clients

    def epsilon(self, rounds: int, delta: float) -> float:
        """The run's epsilon after ``rounds`` rounds: the larger of :meth:`epsilon_server` and :meth:`epsilon_observers`."""
        return max(self.epsilon_server(rounds, delta), self.epsilon_observers(rounds, delta))

    def epsilon_server(self, rounds: int, delta: float) -> float:
        """Against the server, which knows each round's participants: no amplification by sampling."""
        return _epsilon_server(self, rounds, delta)

    def epsilon_observers(self, rounds: int, delta: float) -> float:
        """Against anyone who sees only the models: amplified by sampling ``m`` of ``N``."""
        return _epsilon_observers(self, rounds, delta)

    def rounds_joined_bound(self, rounds: int, delta: float) -> int:
        """``k*``: a client joins at most this many of ``rounds`` rounds except with probability ``<= delta / 2``."""
        return participation_bound(rounds, self.sampling_rate, delta / 2)[0]

    # -- one client's half, and the server's ---------------------------------------------------------------------

    def encode(self, y: torch.Tensor, *, draws, words) -> np.ndarray:
        """``(conditional_round(y / gamma) + noise) mod 2^b`` for a rotated ``y`` (float), as uint32.

        ``draws`` (the rounding) and ``words`` (64-bit words for the noise) are the client's
        private randomness: the OS CSPRNG under DP.
        """
        if y.numel() != self.dim:
            raise ParameterError(f"the rotated update has {y.numel()} values; this run's mechanism has {self.dim}.")
        x = conditional_round(y.to(torch.float64) / self.gamma, self.bound, draws).numpy()
        z = x + discrete_gaussian(self.sigma2, self.dim, words)
        return (z & ((1 << self.bits) - 1)).astype(np.uint32)

    def encode_count(self, bit: int, *, words) -> np.ndarray:
        """``(bit + N_Z(0, count_sigma2)) mod 2^b``: the clip bit's ring element (adaptive clipping)."""
        if not self.count_sigma2:
            raise ParameterError("this mechanism sends no clip bit (count_sigma2 = 0: a fixed clip norm).")
        z = int(bit) + discrete_gaussian(self.count_sigma2, 1, words)
        return (z & ((1 << self.bits) - 1)).astype(np.uint32)


def sampling_refusal(sampling: str) -> str | None:
    """Why the distributed discrete Gaussian cannot run under ``train.sampling = sampling``, or None."""
    if sampling == "fixed":
        return None
    return (f"train.sampling = {sampling!r} cannot run with privacy.noise_placement = 'distributed': every "
            "participant adds a share of the noise, so the unmasked sum's noise reveals how many clients took part "
            "in a round, and the Poisson analysis needs that number hidden. Set train.sampling = 'fixed' (m of N "
            "clients per round, analysed under replace-one adjacency), or use noise_placement = 'server'.")


def _check_sampling(sampling: str, num_clients: int, clients_per_round: float) -> None:
    if (why := sampling_refusal(sampling)) is not None:
        raise ConfigError(why)
    if not 0 < clients_per_round <= num_clients:
        raise ParameterError(f"clients_per_round must be in (0, num_clients = {num_clients}]; got "
                             f"{clients_per_round}.")


def _replace_one(m: DDG, rounds: int, delta: float, **kw) -> float:
    """Epsilon of ``rounds`` rounds under replace-one adjacency: the rounded sum moves by up to ``2 Delta_2``."""
    l2 = 2 * m.l2_sensitivity
    l1 = 2 * min(math.sqrt(m.dim) * m.l2_sensitivity, m.bound)
    count = math.sqrt(m.count_sigma2) if m.count_sigma2 else None
    return ddg_epsilon(l2_sens=l2, l1_sens=l1, sigma=math.sqrt(m.sigma2), n=m.shares, dim=m.dim, rounds=rounds,
                       delta=delta, count_sigma=count, **kw)


@functools.lru_cache(maxsize=4096)
def _epsilon_server(m: DDG, rounds: int, delta: float) -> float:
    if rounds <= 0:
        return 0.0
    if m.sampling_rate >= 1:  # every client joins every round: nothing to bound
        return _replace_one(m, rounds, delta)
    k, _ = participation_bound(rounds, m.sampling_rate, delta / 2)
    return _replace_one(m, k, delta / 2)  # delta / 2 for the rounds a client joins, at most delta / 2 for K > k*


@functools.lru_cache(maxsize=4096)
def _epsilon_observers(m: DDG, rounds: int, delta: float) -> float:
    if rounds <= 0:
        return 0.0
    q = m.sampling_rate
    return _replace_one(m, rounds, delta, **({"wor_fraction": q} if q < 1 else {}))


def _fit(*, z: float, dim: int, bits: int, beta: float, shares: int, clip_norm: float, participants_hi: float,
         gamma: float) -> tuple[float, int]:
    """``(gamma, sigma2)`` for the noise multiplier ``z``: ``gamma`` as given (> 0) or the smallest that fits."""
    half = 2.0 ** (bits - 1)
    k = math.sqrt(2 * math.log(2 * dim / WRAP_PROBABILITY))
    n = participants_hi

    def sigma2_at(g: float) -> int:
        delta2 = math.sqrt(norm_bound(clip_norm / g, dim, beta))
        return max(1, math.ceil((z * delta2) ** 2 / shares))

    def spread(g: float) -> float:  # k sqrt(V) in grid units
        c = clip_norm / g
        return k * math.sqrt(_RHO * n * n * c * c / dim + n / 4 + n * sigma2_at(g))

    if gamma > 0:
        return gamma, sigma2_at(gamma)
    # spread(g) * g grows with g (the d / 4 and n / 4 terms), so spread is decreasing in g: bisect on log g.
    lo, hi = 1e-12, 1.0
    while spread(hi) > half or sigma2_at(hi) > MAX_SIGMA2:
        hi *= 4
        if hi > 1e12:
            raise ConfigError(f"privacy.ddg_bits = {bits} is too few for {n:.0f} clients at noise multiplier {z:.3g}: "
                              "no granularity fits the sum in the ring. Raise privacy.ddg_bits.")
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if spread(mid) <= half and sigma2_at(mid) <= MAX_SIGMA2:
            hi = mid
        else:
            lo = mid
        if hi / lo < 1 + 1e-6:
            break
    return hi, sigma2_at(hi)


def count_sigma2_for(z: float, *, shares: int, clients_per_round: float, count_stddev: float = 0.0) -> int:
    """Each client's noise variance on its clip bit: total std ``count_stddev``, or by default ``max(m / 20, 1.5 z)``."""
    total = count_stddev if count_stddev > 0 else max(clients_per_round / 20, 1.5 * z)
    return max(1, math.ceil(total * total / shares - 1e-9))


def ddg_for_noise_multiplier(z: float, *, dim: int, bits: int, beta: float, gamma: float, shares: int,
                             clip_norm: float, sampling: str, num_clients: int, clients_per_round: float,
                             count_stddev: float | None = None) -> DDG:
    """The mechanism whose summed noise is ``z`` times the rounded sensitivity (``sigma^2`` rounded up).

    ``count_stddev``: adaptive clipping's count noise (total std over ``t`` shares; 0 = the default
    of :func:`count_sigma2_for`), or None for a fixed clip norm (no count sent).
    """
    if not z > 0:
        raise ConfigError(f"the distributed discrete Gaussian needs a noise multiplier > 0; got {z}.")
    d = dim + dim % 2
    _check_sampling(sampling, num_clients, clients_per_round)
    g, s2 = _fit(z=z, dim=d, bits=bits, beta=beta, shares=shares, clip_norm=clip_norm,
                 participants_hi=clients_per_round, gamma=gamma)
    if s2 > MAX_SIGMA2:
        raise ConfigError(f"privacy.ddg_gamma = {gamma} makes each client's noise variance {s2} grid units, above the "
                          f"sampler's {MAX_SIGMA2}. Raise ddg_gamma, or set it to 0 (chosen from ddg_bits).")
    c2 = 0
    if count_stddev is not None:
        c2 = count_sigma2_for(z, shares=shares, clients_per_round=clients_per_round, count_stddev=count_stddev)
        k = math.sqrt(2 * math.log(2 / WRAP_PROBABILITY))
        if c2 > MAX_SIGMA2 or clients_per_round + k * math.sqrt(clients_per_round * c2) > 2.0 ** (bits - 1):
            raise ConfigError(f"privacy.adaptive_count_stddev = {count_stddev} does not fit the ring of "
                              f"privacy.ddg_bits = {bits}. Lower adaptive_count_stddev (0 = the default m / 20).")
    return DDG(d, bits, g, beta, s2, shares, clip_norm, sampling, num_clients, clients_per_round, c2)


def calibrate_ddg(target_epsilon: float, rounds: int, delta: float, **kw) -> DDG:
    """The mechanism with the least noise whose epsilon after ``rounds`` rounds is at most ``target_epsilon``."""

    _check_sampling(kw["sampling"], kw["num_clients"], kw["clients_per_round"])

    def eps(z: float) -> float | None:  # None: this much noise does not fit the ring at these bits
        try:
            return ddg_for_noise_multiplier(z, **kw).epsilon(rounds, delta)
        except ConfigError:
            return None

    lo, hi = 0.05, 1.0
    while True:
        e = eps(hi)
        if e is None:  # the most noise the ring holds lies between lo (fits) and hi (does not)
            a, b = lo, hi
            while b / a > 1.001:
                mid = math.sqrt(a * b)
                a, b = (mid, b) if eps(mid) is not None else (a, mid)
            if eps(a) > target_epsilon:
                count = (" (adaptive clipping's count query spends part of the budget: its noise, "
                         "privacy.adaptive_count_stddev, may be too small)") if kw.get("count_stddev") else ""
                raise ConfigError(
                    f"privacy.target_epsilon = {target_epsilon} over {rounds} rounds needs more noise than "
                    f"privacy.ddg_bits = {kw['bits']} can hold (at most noise multiplier {a:.3g}, epsilon "
                    f"{eps(a):.3g}){count}. Raise privacy.ddg_bits, raise the budget, or train fewer rounds.")
            hi = a
            break
        if e <= target_epsilon:
            break
        lo, hi = hi, hi * 1.5
    if eps(lo) <= target_epsilon:
        raise ConfigError(
            f"privacy.target_epsilon = {target_epsilon} is so large that noise multiplier {lo} stays within it over "
            f"{rounds} rounds; such a guarantee means little. Set a smaller target_epsilon.")
    while hi / lo > 1.0005:
        mid = math.sqrt(lo * hi)
        if eps(mid) <= target_epsilon:
            hi = mid
        else:
            lo = mid
    return ddg_for_noise_multiplier(hi, **kw)
