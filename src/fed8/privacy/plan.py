"""From ``[privacy]`` to the numbers of a run: noise multipliers, rounds, epsilon per round.

The plan is fixed before round 1, from public quantities only (number of clients,
sampling, rounds, delta, budget), so a user can state the guarantee before training:
``(epsilon, delta) at client level after R rounds``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

from ..errors import ConfigError
from .accounting import PrivacySpec, calibrate_noise_multiplier, epsilon, rounds_within
from .ddg import DDG, calibrate_ddg, ddg_for_noise_multiplier
from .dp import split_noise_multiplier

__all__ = ["NOISE_RATIO_WARN", "PrivacyPlan", "make_plan", "noise_to_clip_ratio"]

# Above this noise-to-clip ratio (:func:`noise_to_clip_ratio`) fed8's MNIST runs of the cnn lost much or all of their
# accuracy: 32 (epsilon 2, 1,000 clients, adaptive clipping): chance; 38 and 65 (the DP benchmark's 100 clients, epsilon
# 8 and 4): 0.63 and 0.17 against 0.88 without DP; while it learned at 13 and 19 (epsilon 8 and 4 with 1,000 clients:
# 0.94 both); docs/BENCHMARKS.md, "PRIVACY AT SCALE" and "DP-FedAvg".
NOISE_RATIO_WARN = 30.0

# Every round row, the summary and the statement ask for epsilon; compute each (spec, z, rounds) once.
_epsilon = functools.lru_cache(maxsize=4096)(epsilon)


@dataclass(frozen=True)
class PrivacyPlan:
    """Resolved privacy parameters of a run.

    Attributes
    ----------
    mode
        ``none``, ``central`` or ``local``.
    noise_multiplier
        ``z`` the accountant uses (for adaptive clipping: of update and count together).
    update_noise_multiplier
        ``z_u`` of the noise on the updates (``> z`` with adaptive clipping).
    count_stddev
        ``sigma_b`` of the clipped-count noise (adaptive clipping), else 0. Under the
        distributed discrete Gaussian the clients add it (``t`` shares); the server only
        for a round without inputs.
    rounds
        Rounds to train (fewer than configured when ``budget = "stop"`` cut them).
    stop_reason
        Why ``rounds`` is below the configured number, else None.
    distributed
        Central DP whose noise the clients add under secure aggregation.
    ddg
        The distributed discrete Gaussian of a distributed run (its parameters and its
        accounting, :mod:`fed8.privacy.ddg`), else None.
    extra_releases
        Attempts of rounds that were interrupted after their clients' messages reached
        the server (local and distributed DP, where the server is the adversary): each is
        one more release the accountant composes. See :meth:`after_interruptions`.
    """

    mode: str
    spec: PrivacySpec | None
    noise_multiplier: float
    update_noise_multiplier: float
    count_stddev: float
    rounds: int
    stop_reason: str | None = None
    calibrated: bool = False
    extra_releases: int = 0
    distributed: bool = False
    ddg: DDG | None = None

    @property
    def server_sees_releases(self) -> bool:
        """True where what clients send is the released mechanism (local DP, distributed noise)."""
        return self.mode == "local" or self.distributed

    def epsilon(self, rnd: int) -> float | None:
        """Epsilon at ``spec.delta`` after ``rnd`` rounds (plus :attr:`extra_releases`); None without DP."""
        if self.spec is None:
            return None
        return self._eps(rnd + self.extra_releases)

    def _eps(self, rounds: int) -> float:
        if self.ddg is not None:
            return self.ddg.epsilon(rounds, self.spec.delta)
        return _epsilon(self.spec, self.noise_multiplier, rounds)

    def after_interruptions(self, extra_releases: int, *, target_epsilon: float) -> "PrivacyPlan":
        """The plan once ``extra_releases`` interrupted attempts are counted.

        With a budget (``target_epsilon > 0``) the rounds are cut so that the run never
        goes past it: an interrupted attempt spends budget like a round.
        """
        if self.spec is None or extra_releases == self.extra_releases:
            return self
        rounds, reason = self.rounds, self.stop_reason
        if target_epsilon > 0:
            r_max = rounds_within(self._eps, target_epsilon, self.rounds + extra_releases) - extra_releases
            if r_max < rounds:
                rounds = max(r_max, 0)
                reason = (f"stopped after round {rounds}: {extra_releases} interrupted round attempt(s) already "
                          f"reached the server and spent privacy budget (target_epsilon = {target_epsilon})")
        return dataclasses.replace(self, extra_releases=extra_releases, rounds=rounds, stop_reason=reason)

    def ddg_guarantees(self, rnd: int) -> dict | None:
        """Distributed DP: epsilon after ``rnd`` rounds against each party, and ``k*``; else None.

        The server knows each round's participants, so sampling does not amplify against it
        (:meth:`fed8.privacy.ddg.DDG.epsilon_server`); anyone who sees only the models gets
        the amplified bound. :meth:`epsilon` is the larger.
        """
        if self.ddg is None:
            return None
        r, delta = rnd + self.extra_releases, self.spec.delta
        return {"epsilon_against_server": self.ddg.epsilon_server(r, delta),
                "epsilon_against_model_observers": self.ddg.epsilon_observers(r, delta),
                "rounds_joined_bound": self.ddg.rounds_joined_bound(r, delta)}

    def epsilon_per_round(self) -> float | None:
        """Local DP: the guarantee of one round's release of one client."""
        return self.epsilon(1) if self.mode == "local" else None

    def statement(self, rounds: int, *, secure: bool = False, threshold: float = 0.0, min_clients: int = 3,
                  insecure_noise: bool = False, client_reports: bool = False, rejected: int = 0) -> str:
        """The sentence a user can quote about the run.

        ``insecure_noise``: the run drew its noise from the seed in config.toml; the
        statement then says it has no privacy, whatever epsilon the mechanism would have.
        ``client_reports``: the clients also sent numbers from their data outside training
        (``privacy.client_reports``); where the run promises more than "the server saw every
        update", the statement says that those are not covered. ``rejected``: client updates
        that were not finite; the server learned which clients sent one, which no noise covers.
        """
        text = self._statement(rounds, secure=secure, threshold=threshold, min_clients=min_clients,
                               insecure_noise=insecure_noise)
        if client_reports and (self.spec is not None or secure) and not insecure_noise:
            text += (" Not covered: each client also sent the server, alone and without noise, its training loss and "
                     "sample count every round, its correct-prediction count on its local test split in every "
                     "evaluated round (with eval.finetune_epochs > 0 also after fine-tuning), and the quantize "
                     "stage's calibration statistics and on-device accuracies "
                     "(privacy.client_reports = on; auto keeps them on the clients).")
        if rejected and (self.spec is not None or secure) and not insecure_noise:
            text += (f" Not covered either: {rejected} client update(s) were not finite and were rejected, and the "
                     "server learned which clients sent them.")
        return text

    def _statement(self, rounds: int, *, secure: bool, threshold: float, min_clients: int,
                   insecure_noise: bool) -> str:
        sees = (f"the server only saw sums of at least {min_clients} clients' updates (secure aggregation, "
                f"t = {threshold:.0%} of each round's clients)" if secure else "the server saw each client's update")
        if self.spec is None:
            return f"No differential privacy; {sees}."
        if insecure_noise:
            return ("NO PRIVACY: privacy.insecure_reproducible_noise = true drew the noise and the client sample "
                    "from run.seed, which config.toml records, so anyone with the run's files can remove the noise. "
                    f"The mechanism would give epsilon = {self.epsilon(rounds):.3g} with secret noise; this run "
                    "gives none. For tests and benchmarks only.")
        eps = self.epsilon(rounds)
        s = self.spec
        samp = (f"Poisson sampling q = {s.sampling_rate:.3g}" if s.sampling == "poisson"
                else f"{int(round(s.clients_per_round))} of {s.num_clients} clients per round")
        if self.ddg is not None:
            m, g = self.ddg, self.ddg_guarantees(rounds)
            count = (f"; adaptive clipping steps the clip norm with the count of unclipped updates, each client's "
                     f"clip bit sent with its own noise N_Z(0, {m.count_sigma2}) in the same sum, accounted with the "
                     f"updates" if m.count_sigma2 else "")
            scaled = f" (at clip norm {m.clip_norm:.3g}; it scales with the round's clip norm)" if m.count_sigma2 else ""
            return (f"(epsilon, delta) = ({eps:.3g}, {s.delta:g}) at client level after {rounds} rounds, against the "
                    f"server (honest but curious: it follows the protocol) and any clients colluding with it, as long as "
                    f"every unmasked sum holds at least t = {m.shares} honest clients' inputs (secure aggregation "
                    f"unmasks no sum of fewer). The server knows who takes part in each round, so client sampling "
                    f"does not amplify against it: epsilon {g['epsilon_against_server']:.3g} for a client that joins "
                    f"up to {g['rounds_joined_bound']} of the rounds (more only with probability below delta / 2, "
                    f"counted in delta); against anyone who sees only the models, sampling {samp} amplifies: "
                    f"epsilon {g['epsilon_against_model_observers']:.3g}. Mechanism: "
                    f"the distributed discrete Gaussian (Kairouz, Liu, Steinke 2021): each client rounds its "
                    f"rotated, clipped update to a grid of step {m.gamma:.3g}{scaled} and adds exact integer noise "
                    f"N_Z(0, {m.sigma2}) from its OS CSPRNG, and only the sum modulo 2^{m.bits} is unmasked "
                    f"({m.bits} bits per value sent){count}; RDP analysis of that paper under replace-one "
                    f"adjacency, noise multiplier {self.noise_multiplier:.4g}.")
        if self.mode == "local":
            return (f"Local DP: each update a client sends is ({self.epsilon(1):.3g}, {s.delta:g})-DP for that "
                    f"client's data; a client that took part in all {rounds} rounds has ({eps:.3g}, {s.delta:g}) "
                    f"({s.accountant.upper()} composition, noise multiplier {self.noise_multiplier:.4g}); {sees}.")
        return (f"(epsilon, delta) = ({eps:.3g}, {s.delta:g}) at client level after {rounds} rounds "
                f"({s.accountant.upper()} accountant, {samp}, noise multiplier {self.noise_multiplier:.4g}); {sees}.")


def _within_budget(eps_of, p, rounds: int, noise: str, fix) -> tuple[int, str | None]:
    """The rounds a fixed noise level fits in ``target_epsilon`` (``privacy.budget``: refuse, or stop early).

    ``eps_of(r)``: epsilon after ``r`` rounds; ``noise`` names the noise in the error, ``fix()`` the remedy.
    """
    if p.target_epsilon <= 0:
        return rounds, None
    eps = eps_of(rounds)
    if eps <= p.target_epsilon:
        return rounds, None
    r_max = rounds_within(eps_of, p.target_epsilon, rounds)
    if p.budget == "refuse" or r_max == 0:
        within = f"at most {r_max} rounds (set privacy.budget = 'stop' to train those)" if r_max else "not even one round"
        raise ConfigError(
            f"privacy budget exceeded before starting: {rounds} rounds {noise} reach epsilon = {eps:.3g} > "
            f"target_epsilon = {p.target_epsilon} (delta = {p.delta:g}). Within budget: {within}; or {fix()}.")
    return r_max, (f"stopped after round {r_max} of {rounds}: round {r_max + 1} would raise epsilon above "
                   f"target_epsilon = {p.target_epsilon} (privacy.budget = 'stop')")


def _ddg_plan(p, spec: PrivacySpec, rounds: int, dim: int | None, adaptive: bool) -> PrivacyPlan:
    """The plan of ``noise_placement = distributed``: the distributed discrete Gaussian's parameters and budget.

    ``adaptive``: the clients also send their noised clip bits (:mod:`fed8.privacy.ddg`).
    """
    if dim is None:  # pragma: no cover - callers pass the model's size
        raise ConfigError("privacy.noise_placement = 'distributed' needs the update's dimension to plan its noise.")
    shares = max(1, math.ceil(p.secagg_threshold * spec.clients_per_round - 1e-9))
    kw = dict(dim=dim, bits=p.ddg_bits, beta=p.ddg_beta, gamma=p.ddg_gamma, shares=shares, clip_norm=p.clip_norm,
              sampling=spec.sampling, num_clients=spec.num_clients, clients_per_round=spec.clients_per_round,
              count_stddev=p.adaptive_count_stddev if adaptive else None)
    calibrated, stop_reason = p.noise_multiplier <= 0, None
    if calibrated:
        m = _calibrate_ddg(p.target_epsilon, rounds, p.delta, tuple(sorted(kw.items())))
    else:
        m = ddg_for_noise_multiplier(p.noise_multiplier, **kw)
        rounds, stop_reason = _within_budget(
            lambda r: m.epsilon(r, p.delta), p, rounds, f"of the distributed discrete Gaussian at noise_multiplier = "
            f"{p.noise_multiplier}", lambda: "leave noise_multiplier at 0 so the noise is computed from the budget")
    z = m.noise_multiplier
    return PrivacyPlan(p.dp, spec, z, z, m.count_noise_std, rounds, stop_reason, calibrated, distributed=True, ddg=m)


@functools.lru_cache(maxsize=64)
def _calibrate_ddg(target: float, rounds: int, delta: float, kw: tuple) -> DDG:
    return calibrate_ddg(target, rounds, delta, **dict(kw))


def make_plan(privacy, *, num_clients: int, clients_per_round: float, sampling: str, rounds: int,
              adaptive: bool = False, dim: int | None = None) -> PrivacyPlan:
    """Resolve noise and rounds from the ``[privacy]`` section.

    ``adaptive``: adaptive clipping runs (its noised count is then part of the budget).
    ``dim``: values per update; needed for ``noise_placement = distributed`` (its
    discrete Gaussian's parameters depend on it).

    Raises
    ------
    ConfigError
        No noise and no budget; noise without DP; a budget the planned rounds exceed with
        ``budget = "refuse"``; a budget that not even one round fits.
    """
    p = privacy
    if p.dp == "none":
        if p.noise_multiplier > 0 or p.target_epsilon > 0:
            given = [f"privacy.{k} = {v}" for k, v in (("noise_multiplier", p.noise_multiplier),
                                                          ("target_epsilon", p.target_epsilon)) if v > 0]
            raise ConfigError(
                f"{' and '.join(given)} {'has' if len(given) == 1 else 'have'} no effect with privacy.dp = 'none'. "
                f"Set privacy.dp = 'central' or 'local', or remove {'it' if len(given) == 1 else 'them'}.")
        return PrivacyPlan("none", None, 0.0, 0.0, 0.0, rounds)
    spec = PrivacySpec(p.dp, sampling, num_clients, clients_per_round, p.delta, p.accountant)
    if p.noise_multiplier <= 0 and p.target_epsilon <= 0:
        raise ConfigError(
            f"privacy.dp = {p.dp!r} needs noise: set privacy.noise_multiplier (e.g. 1.0) or "
            "privacy.target_epsilon (e.g. 4.0, and the noise is computed for train.rounds).")
    if p.dp == "central" and p.secure_aggregation and p.noise_placement == "distributed":
        return _ddg_plan(p, spec, rounds, dim, adaptive)
    z, calibrated = p.noise_multiplier, False
    if z <= 0:
        z, calibrated = calibrate_noise_multiplier(spec, p.target_epsilon, rounds), True
    stop_reason = None
    if not calibrated:
        rounds, stop_reason = _within_budget(
            lambda r: epsilon(spec, z, r), p, rounds, f"at noise_multiplier = {z}",
            lambda: f"set noise_multiplier >= {calibrate_noise_multiplier(spec, p.target_epsilon, rounds):.4g} "
                    f"for all {rounds} rounds")
    count_std, z_u = 0.0, z
    if adaptive:
        # Default: the paper's m / 20, but never more than 10% of the budget (in 1/z^2 terms) for the count.
        count_std = p.adaptive_count_stddev or max(clients_per_round / 20, math.sqrt(10) / 2 * z)
        z_u = split_noise_multiplier(z, count_std)
    if not math.isfinite(z_u):  # pragma: no cover
        raise ConfigError(f"noise multiplier {z_u} is not finite.")
    return PrivacyPlan(p.dp, spec, z, z_u, count_std, rounds, stop_reason, calibrated)


def noise_to_clip_ratio(plan: PrivacyPlan, *, dim: int, clients_per_round: float) -> float | None:
    """How much noise a round's mean update carries: its expected norm over ``clip_norm``; None without DP.

    A client's clipped update has norm at most ``C``, and so has the mean of ``m`` of them,
    while Gaussian noise of std ``sigma`` per value on ``d`` values has norm about
    ``sigma sqrt(d)``. With uniform weights (the mean divides the sum by ``m``):

    * central, noise on the server: ``z C`` on the sum, ratio ``z sqrt(d) / m``;
    * distributed discrete Gaussian, all ``m`` shares present: ``sqrt(m sigma^2) gamma`` on
      the sum, ratio ``sqrt(m sigma^2) gamma sqrt(d) / (m C)`` (``sqrt(m / t)`` above the
      accounted noise);
    * local: ``z C`` on each update, ratio ``z sqrt(d / m)``.

    Parameters
    ----------
    plan
        The run's plan.
    dim
        Values in an update (the model's float tensors).
    clients_per_round
        ``m``, expected under Poisson sampling.
    """
    if plan.mode == "none":
        return None
    m = max(float(clients_per_round), 1.0)
    if plan.ddg is not None:
        return math.sqrt(m * plan.ddg.sigma2) * plan.ddg.gamma / plan.ddg.clip_norm * math.sqrt(dim) / m
    if plan.mode == "local":
        return plan.update_noise_multiplier * math.sqrt(dim / m)
    return plan.update_noise_multiplier * math.sqrt(dim) / m
