"""Privacy accounting over Google's ``dp-accounting`` library (RDP and PLD).

fed8 does not hand-write any privacy analysis: this module only maps a run's
mechanism to ``dp_accounting`` events and asks the library for epsilon.

The mechanism of one round of DP-FedAvg (McMahan et al. 2018, arXiv:1710.06963) is a
subsampled Gaussian at *client level* (neighbouring datasets differ in one client's
entire data):

* ``sampling = "poisson"``: each client joins a round independently with probability
  ``q``; add/remove-one adjacency; event ``PoissonSampled(q, Gaussian(z))``, because
  adding or removing one client moves the clipped sum by at most ``C``.
* ``sampling = "fixed"``: ``m`` of ``N`` clients uniformly without replacement;
  replace-one adjacency (``N`` is public), under which one client's clipped update can
  move the sum by ``2 C``; event ``SampledWithoutReplacement(N, m, Gaussian(z / 2))``
  (Wang, Balle, Kasiviswanathan 2019, arXiv:1808.00087). Only the RDP accountant
  analyses it; PLD with fixed-size sampling is refused.
* ``mode = "local"``: each client's released update is a Gaussian mechanism on its own
  data with replace-one sensitivity ``2 C`` and noise ``z C``: ``Gaussian(z / 2)`` per
  round it takes part in, composed over rounds (no amplification: the server knows
  who took part).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["ACCOUNTANTS", "Accountant", "PrivacySpec", "calibrate_noise_multiplier", "epsilon",
           "max_rounds_within", "rounds_within"]

ACCOUNTANTS = ("rdp", "pld")


def _dp():
    try:
        import dp_accounting
    except ImportError:  # pragma: no cover - a hard dependency
        from ..errors import MissingExtraError

        raise MissingExtraError("dp_accounting", "privacy") from None
    return dp_accounting


@contextlib.contextmanager
def _quiet():
    """Silence dp-accounting's absl warnings about RDP orders it skips (the bound stays valid)."""
    log = logging.getLogger("absl")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


@dataclass(frozen=True)
class PrivacySpec:
    """What the accountant needs to know about a run's privacy mechanism.

    Parameters
    ----------
    mode
        ``"central"`` (server adds noise to the sum) or ``"local"`` (each client adds noise).
    sampling
        ``"poisson"`` (rate ``q`` = ``clients_per_round / num_clients``) or ``"fixed"``.
    num_clients, clients_per_round
        ``N`` and ``m`` (for Poisson, ``m = qN`` may be fractional).
    delta
        Target delta of the reported epsilon.
    accountant
        ``"rdp"`` (Renyi DP, Mironov 2017) or ``"pld"`` (privacy loss distributions,
        tighter, slower).
    """

    mode: str
    sampling: str
    num_clients: int
    clients_per_round: float
    delta: float
    accountant: str = "rdp"

    def __post_init__(self) -> None:
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(f"privacy.accountant must be one of {ACCOUNTANTS}; got {self.accountant!r}.")
        if not 0 < self.delta < 1:
            raise ConfigError(f"privacy.delta must be in (0, 1); got {self.delta!r}. Use e.g. 1e-5 "
                              "(smaller than 1 / number of clients).")
        if (self.mode == "central" and self.sampling == "fixed" and self.accountant == "pld"
                and self.clients_per_round < self.num_clients):
            raise ConfigError(
                "privacy.accountant = 'pld' cannot analyse fixed-size client sampling (dp-accounting's PLD "
                "accountant has no sampled-without-replacement Gaussian). Use privacy.accountant = 'rdp', or "
                "train.sampling = 'poisson'.")

    @property
    def sampling_rate(self) -> float:
        return self.clients_per_round / self.num_clients

    def round_event(self, noise_multiplier: float):
        """The ``dp_accounting`` event of one round with the accountant's multiplier ``z``."""
        dp = _dp()
        if self.mode == "local":
            return dp.GaussianDpEvent(noise_multiplier / 2)
        if self.sampling == "poisson":
            if self.sampling_rate >= 1:
                return dp.GaussianDpEvent(noise_multiplier)
            return dp.PoissonSampledDpEvent(self.sampling_rate, dp.GaussianDpEvent(noise_multiplier))
        m = int(round(self.clients_per_round))
        if m >= self.num_clients:
            return dp.GaussianDpEvent(noise_multiplier / 2)
        return dp.SampledWithoutReplacementDpEvent(self.num_clients, m, dp.GaussianDpEvent(noise_multiplier / 2))

    def fresh_accountant(self):
        dp = _dp()
        rel = dp.NeighboringRelation
        if self.accountant == "pld":
            return dp.pld.PLDAccountant(rel.ADD_OR_REMOVE_ONE)
        fixed = self.mode == "central" and self.sampling == "fixed" and self.clients_per_round < self.num_clients
        return dp.rdp.RdpAccountant(neighboring_relation=rel.REPLACE_ONE if fixed else rel.ADD_OR_REMOVE_ONE)


def epsilon(spec: PrivacySpec, noise_multiplier: float, rounds: int) -> float:
    """Epsilon at ``spec.delta`` after ``rounds`` rounds; ``inf`` without noise, 0 for 0 rounds."""
    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    acc = spec.fresh_accountant()
    with _quiet():
        acc.compose(spec.round_event(noise_multiplier), rounds)
        return float(acc.get_epsilon(spec.delta))


def calibrate_noise_multiplier(spec: PrivacySpec, target_epsilon: float, rounds: int) -> float:
    """The smallest noise multiplier ``z`` with ``epsilon(spec, z, rounds) <= target_epsilon``.

    Uses ``dp_accounting.calibrate_dp_mechanism`` (Brent's method over fresh accountants);
    the result is rounded up to 4 significant digits and re-checked, so it never exceeds
    the budget.
    """
    if not target_epsilon > 0:
        raise ConfigError(f"privacy.target_epsilon must be > 0; got {target_epsilon!r}.")
    dp = _dp()
    # RDP: search above z = 0.01 (z = 0 divides by zero in the sampled-without-replacement analysis);
    # the check runs on RDP even for PLD, whose epsilon is never larger, because PLD at tiny z is slow.
    lower = 0.01
    rdp = dataclasses.replace(spec, accountant="rdp")
    if epsilon(rdp, lower, rounds) <= target_epsilon:
        raise ConfigError(
            f"privacy.target_epsilon = {target_epsilon} is so large that even noise_multiplier = {lower} stays within "
            f"it over {rounds} rounds; such a guarantee means little. Set privacy.noise_multiplier directly, or a "
            "smaller target_epsilon.")
    with _quiet():
        z = dp.calibrate_dp_mechanism(
            spec.fresh_accountant, lambda z: dp.SelfComposedDpEvent(spec.round_event(z), rounds),
            target_epsilon, spec.delta, tol=1e-5,
            bracket_interval=None if spec.accountant == "pld" else dp.LowerEndpointAndGuess(lower, 1.0))
    digits = 3 - int(math.floor(math.log10(z)))
    z = math.ceil(z * 10**digits) / 10**digits
    while epsilon(spec, z, rounds) > target_epsilon:  # pragma: no cover - guard against tolerance
        z *= 1.001
    return z


def max_rounds_within(spec: PrivacySpec, noise_multiplier: float, target_epsilon: float, upper: int) -> int:
    """The largest ``r <= upper`` with ``epsilon(spec, z, r) <= target_epsilon`` (0 if none)."""
    return rounds_within(lambda r: epsilon(spec, noise_multiplier, r), target_epsilon, upper)


def rounds_within(eps_of, target_epsilon: float, upper: int) -> int:
    """The largest ``r <= upper`` with ``eps_of(r) <= target_epsilon`` (0 if none); ``eps_of`` non-decreasing."""
    lo, hi = 0, upper
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if eps_of(mid) <= target_epsilon:
            lo = mid
        else:
            hi = mid - 1
    return lo


class Accountant:
    """A running ledger: one event composed per round, epsilon read after each.

    Thin state over :func:`epsilon`: the only state is the number of rounds, so resuming
    at round ``r`` is ``Accountant(spec, z, rounds=r)``.
    """

    def __init__(self, spec: PrivacySpec, noise_multiplier: float, *, rounds: int = 0) -> None:
        self.spec, self.noise_multiplier = spec, noise_multiplier
        self.rounds = 0
        self._acc = spec.fresh_accountant() if noise_multiplier > 0 else None
        if rounds:
            self.step(rounds)

    def step(self, rounds: int = 1) -> float:
        """Compose ``rounds`` more rounds and return epsilon after them."""
        self.rounds += rounds
        if self._acc is not None:
            with _quiet():
                self._acc.compose(self.spec.round_event(self.noise_multiplier), rounds)
        return self.epsilon

    @property
    def epsilon(self) -> float:
        if self.rounds == 0:
            return 0.0
        if self._acc is None:
            return math.inf
        with _quiet():
            return float(self._acc.get_epsilon(self.spec.delta))
