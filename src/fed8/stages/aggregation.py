"""Assemble the server's aggregator, its optimizer and the clients' hooks from a config.

    ValidateUpdates( [NormBound]( [ScaffoldAggregate]( WeightedMean | CoordinateMedian | TrimmedMean
                                  | PrivateAggregate( WeightedMean | SecureWeightedSum ) ) ) )

The round loop only ever sees an :class:`~fed8.federated.aggregator.Aggregator` and a
:class:`~fed8.federated.optimizer.ServerOptimizer`; every privacy and robustness feature
is a wrapper or a client hook chosen here, and every combination that would silently
break a guarantee is refused with the reason.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from .._config_sections import ADAPTIVE_AUTO_MIN_CLIENTS
from ..config import Config
from ..errors import ConfigError
from ..privacy.randomness import privacy_randomness
from ..federated.hooks import Attack, LocalDP, WithholdNonFinite, malicious_clients
from ..federated.aggregator import Aggregator, WeightedMean, samples_weight
from ..federated.optimizer import ServerOptimizer, make_optimizer
from ..federated.private import AdaptiveClipping, PrivateAggregate, capped_weight, uniform_weight
from ..federated.robust import CoordinateMedian, NormBound, TrimmedMean, ValidateUpdates
from ..federated.sampling import num_sampled

__all__ = ["SECAGG_CLIP_LR", "SECAGG_CLIP_QUANTILE", "adaptive_clipping_on", "check_combination", "expected_clients",
           "make_aggregator", "make_client_hooks", "make_server_optimizer", "privacy_plan",
           "weight_cap"]

# Secure aggregation without DP clips only to fix the shared int8 scale; the bound follows
# the 0.9 quantile of the update norms (noise-free: the clip-bit sum is exact), fast enough
# (x2.5 per round while everyone is clipped) to catch up from clip_norm within a few rounds.
SECAGG_CLIP_QUANTILE, SECAGG_CLIP_LR = 0.9, 1.0


def expected_clients(cfg: Config) -> float:
    """Clients per round: exactly ``round(qN)`` for fixed sampling, ``qN`` on average for Poisson."""
    n, q = cfg.data.num_clients, cfg.train.fraction
    return q * n if cfg.train.sampling == "poisson" else float(num_sampled(n, q))


def client_reports_on(cfg: Config) -> bool:
    """Whether clients report numbers from their data outside training (``privacy.client_reports``).

    Evaluation counts, calibration statistics and on-device accuracies are functions of a
    client's data that no DP noise covers and that secure aggregation does not hide (each
    client's come alone). ``auto`` keeps them on the clients where the run promises the server
    less than every update (DP of any kind, or secure aggregation), so that promise covers all
    the server receives; ``on`` / ``off`` as set.
    """
    p = cfg.privacy
    if p.client_reports != "auto":
        return p.client_reports == "on"
    return p.dp == "none" and not p.secure_aggregation


def server_weights_by_samples(cfg: Config) -> bool:
    """Whether the server computes aggregation weights from the clients' sample counts (so a train reply must carry
    the count): without secure aggregation (which weights on the client) and with a weighting that reads it."""
    return not cfg.privacy.secure_aggregation and _weighting(cfg) != "uniform"


def adaptive_clipping_on(cfg: Config) -> bool:
    """Whether adaptive clipping (Andrew et al. 2021) runs for ``privacy.adaptive_clipping``.

    ``on`` / ``off`` as set. ``auto`` turns it on only where it was measured to help: central
    DP with the noise on the server (under the distributed discrete Gaussian, ``on`` only:
    measured, it raised the clip and hurt accuracy; docs/BENCHMARKS.md) and at least ``ADAPTIVE_AUTO_MIN_CLIENTS`` expected
    clients per round, where the noised count of unclipped clients (std >= m / 20) is fine
    enough to steer the clip norm.
    """
    p = cfg.privacy
    if p.adaptive_clipping != "auto":
        return p.adaptive_clipping == "on"
    distributed = p.secure_aggregation and p.noise_placement == "distributed"
    return p.dp == "central" and not distributed and expected_clients(cfg) >= ADAPTIVE_AUTO_MIN_CLIENTS


def privacy_plan(cfg: Config, *, dim: int | None = None):
    """The run's :class:`~fed8.privacy.PrivacyPlan`: noise, rounds and adaptive clipping resolved from the config.

    ``dim``: the number of values in an update (the model's float tensors), which the
    distributed discrete Gaussian's parameters depend on; needed for ``noise_placement =
    distributed``.
    """
    from ..privacy import make_plan

    return make_plan(cfg.privacy, num_clients=cfg.data.num_clients, clients_per_round=expected_clients(cfg),
                     sampling=cfg.train.sampling, rounds=cfg.train.rounds, adaptive=adaptive_clipping_on(cfg),
                     dim=dim)


def check_combination(cfg: Config) -> None:
    """Refuse combinations of privacy, secure aggregation, robustness and compression that cannot hold."""
    p, robust = cfg.privacy, cfg.server.robust
    weighting = _weighting(cfg)
    if p.dp != "none" and weighting == "samples":
        raise ConfigError(
            "privacy.weighting = 'samples' cannot be used with privacy.dp: a client's weight n_k / n grows with "
            "its own data, so one client can move the average by more than clip_norm / denominator and the "
            "noise no longer covers it. Use privacy.weighting = 'uniform' or 'capped' (weights min(1, n_k / "
            "weight_cap) with a fixed denominator).")
    if p.secure_aggregation and cfg.compression.uplink != "float32":
        raise ConfigError(
            f"compression.uplink = {cfg.compression.uplink!r} cannot be combined with privacy.secure_aggregation: "
            "secure aggregation quantizes each update itself (int8 codes with a scale shared by all clients, "
            "summed in Z_(2^k): about 2 bytes per value). Set compression.uplink = 'float32'.")
    if p.secure_aggregation and robust != "none":
        raise ConfigError(
            f"server.robust = {robust!r} cannot run with privacy.secure_aggregation: the server only learns the sum, "
            "so it cannot see, bound or rank individual updates. Choose one of them.")
    if p.dp == "central" and robust in ("median", "trimmed_mean"):
        raise ConfigError(
            f"server.robust = {robust!r} with privacy.dp = 'central' is not supported: the Gaussian noise is "
            "calibrated to the sensitivity of a clipped sum, not of a median or trimmed mean. Use "
            "server.robust = 'norm_bound' or 'none' (DP clipping already bounds every update).")
    if p.adaptive_clipping == "on" and p.dp != "central":
        raise ConfigError(
            f"privacy.adaptive_clipping needs privacy.dp = 'central' (got {p.dp!r}): the clip norm is learned from "
            "a noised count of clipped clients that is part of the central mechanism.")
    if p.noise_placement == "distributed" and not (p.secure_aggregation and p.dp == "central"):
        raise ConfigError(
            "privacy.noise_placement = 'distributed' needs privacy.dp = 'central' and secure_aggregation = true: "
            "without secure aggregation the server would see each client's small share of the noise.")
    if p.noise_placement == "distributed" and p.dp == "central":
        from ..privacy.ddg import sampling_refusal

        if (why := sampling_refusal(cfg.train.sampling)) is not None:
            raise ConfigError(why)
    if p.noise_placement == "distributed" and p.accountant != "rdp":
        raise ConfigError(
            f"privacy.accountant = {p.accountant!r} cannot analyse noise_placement = 'distributed': the distributed "
            "discrete Gaussian's privacy is the RDP bound of Kairouz et al. 2021. Set privacy.accountant = 'rdp'.")
    if weighting == "capped" and p.dp == "local":
        raise ConfigError(
            "privacy.weighting = 'capped' with privacy.dp = 'local': the server would weight each update by "
            "min(1, n_k / weight_cap), so it would learn each client's sample count up to the cap, which local DP "
            "does not cover. Use privacy.weighting = 'uniform'.")
    if weighting == "capped" and p.weight_cap <= 0:
        raise ConfigError(
            "privacy.weighting = 'capped' needs privacy.weight_cap > 0: the cap sets each client's weight "
            "min(1, n_k / weight_cap) and must be a public number, not one taken from the clients' data. Set it to "
            "a typical client's sample count (e.g. --set privacy.weight_cap=400), or use weighting = 'uniform'.")
    if cfg.eval.finetune_epochs > 0 and not client_reports_on(cfg):
        raise ConfigError(
            f"eval.finetune_epochs = {cfg.eval.finetune_epochs} needs client reports: each client's fine-tuned "
            "accuracy is a count from its own data sent outside training, which DP and secure aggregation do not "
            "cover, and privacy.client_reports is off here. Set privacy.client_reports = 'on' (the privacy statement "
            "then names these reports as not covered), or eval.finetune_epochs = 0.")
    if cfg.train.local_epochs_min > cfg.train.local_epochs:
        raise ConfigError(
            f"train.local_epochs_min = {cfg.train.local_epochs_min} is more than train.local_epochs = "
            f"{cfg.train.local_epochs}: each client draws its epochs from local_epochs_min..local_epochs. Lower "
            "local_epochs_min, raise local_epochs, or set local_epochs_min = 0 for equal work.")
    if cfg.train.scaffold:
        _check_scaffold(cfg)
    if cfg.server.fednova:
        _check_fednova(cfg)
    if cfg.train.feddyn_alpha > 0:
        _check_feddyn(cfg)
    if p.secure_aggregation:
        m = expected_clients(cfg)
        if m < p.secagg_min_clients:
            raise ConfigError(
                f"privacy.secagg_min_clients = {p.secagg_min_clients} is more than the {m:g} clients per round "
                f"(data.num_clients x train.fraction): every secure-aggregation round would be abandoned. Sample "
                f"more clients per round, or lower secagg_min_clients (>= 2; a sum of one input reveals it).")


def _refuse_per_update_server_side(cfg: Config, setting: str, *, private: str, robust: str,
                                   sums_suffice: bool = False) -> None:
    """Refuse ``setting`` (``"train.scaffold = true"``), whose server side reads each update, under DP or secure
    aggregation (``private``: why; ``sums_suffice``: its server side can work from the secure sum, so secure
    aggregation without DP is allowed) and under a median or trimmed mean (``robust``: why)."""
    p, rule = cfg.privacy, cfg.server.robust
    if p.dp != "none" or (p.secure_aggregation and not sums_suffice):
        what = f"privacy.dp = {p.dp!r}" if p.dp != "none" else "privacy.secure_aggregation = true"
        raise ConfigError(f"{setting} cannot run with {what}: {private} Turn one of them off.")
    if rule in ("median", "trimmed_mean"):
        raise ConfigError(f"{setting} with server.robust = {rule!r}: {robust} Use server.robust = 'norm_bound' or "
                          "'none'.")


def _check_scaffold(cfg: Config) -> None:
    """Refuse SCAFFOLD where its server side would break a promise or a rule."""
    _refuse_per_update_server_side(
        cfg, "train.scaffold = true",
        private="SCAFFOLD's server control c is computed from each client's own update and step count and sent back "
                "to every client, a release that the DP noise does not cover and that secure aggregation (the server "
                "sees only the sum) cannot compute.",
        robust="c is a mean over every accepted update, so one client's update would move it without the robust "
               "rule's bound.")


def _check_fednova(cfg: Config) -> None:
    """Refuse FedNova where the server cannot or must not normalize each update."""
    _refuse_per_update_server_side(
        cfg, "server.fednova = true",
        private="FedNova divides each client's update by its local step count, a function of the client's sample "
                "count, which the server must not learn there (and, under secure aggregation, never sees an update "
                "to divide).",
        robust="FedNova rescales a weighted mean; a coordinate-wise median or trimmed mean has no weights to "
               "normalize.")


def _check_feddyn(cfg: Config) -> None:
    """Refuse FedDyn where its server side would break a promise or where it would stack with another correction."""
    t = cfg.train
    for key, on in (("train.prox_mu", t.prox_mu > 0), ("train.scaffold", t.scaffold), ("server.fednova", cfg.server.fednova)):
        if on:
            raise ConfigError(
                f"train.feddyn_alpha = {t.feddyn_alpha} cannot be combined with {key}: FedDyn's alpha is its own "
                "proximal term and its client state its own drift correction, and its server state h assumes the "
                f"plain weighted mean. Turn {key} off, or set train.feddyn_alpha = 0.")
    p = cfg.privacy
    if p.secure_aggregation and p.dp == "none" and _weighting(cfg) != "uniform":
        raise ConfigError(
            f"train.feddyn_alpha = {t.feddyn_alpha} with privacy.secure_aggregation needs privacy.weighting = "
            f"'uniform' (got {p.weighting!r}, which weights by sample count): the server learns only the weighted sum, "
            "and FedDyn's h needs the plain sum of the updates (the paper's uniform mean). Set privacy.weighting = "
            "'uniform'.")
    _refuse_per_update_server_side(
        cfg, f"train.feddyn_alpha = {cfg.train.feddyn_alpha}", sums_suffice=True,  # h from the sums (feddyn.py)
        private="each client's gradient estimate g_k and the server's h are functions of each client's own update "
                "(h is sent back into every later model), a release that the DP noise does not cover. Secure "
                "aggregation alone works (privacy.dp = 'none', privacy.weighting = 'uniform').",
        robust="h is a sum over every accepted update, so one client's update would move it without the robust "
               "rule's bound.")


def _adaptive(cfg: Config, plan) -> AdaptiveClipping | None:
    p = cfg.privacy
    if adaptive_clipping_on(cfg):
        return AdaptiveClipping(target_quantile=p.adaptive_quantile, lr=p.adaptive_lr, count_stddev=plan.count_stddev)
    if p.dp == "none" and p.secure_aggregation and p.secagg_adaptive_clip:
        return AdaptiveClipping(target_quantile=SECAGG_CLIP_QUANTILE, lr=SECAGG_CLIP_LR, count_stddev=0.0)
    return None


def _weighting(cfg: Config) -> str:
    w = cfg.privacy.weighting
    if w == "auto":
        return "samples" if cfg.privacy.dp == "none" else "uniform"
    return w


def server_lr(cfg: Config) -> float:
    """``server.lr``, with 0 (auto) resolved: 1 for fedavg and fedavgm, 0.1 for fedadagrad, 0.01 for fedadam and fedyogi.

    An adaptive step ``lr * m / (sqrt(v) + tau)`` moves every weight by about ``lr`` a round whatever the
    size of the update, so the weighted average's ``lr = 1`` diverges. Measured on the default run
    (``bench/recipes.py --part server``, two seeds; docs/BENCHMARKS.md, "RECIPES: server optimizers"):
    FedAdam and FedYogi were best at 0.01 of 1, 0.1, 0.01, 0.001 (Reddi et al.'s and Flower's default
    ``eta``) and failed at 0.1; FedAdagrad, whose ``v`` only grows, was best at 0.1 of 0.3, 0.1, 0.03, 0.01.
    """
    s = cfg.server
    if s.lr > 0:
        return s.lr
    return SERVER_LR_AUTO.get(s.strategy, 1.0)


#: server.lr = 0's choice per adaptive strategy (measured; server_lr)
SERVER_LR_AUTO = {"fedadagrad": 0.1, "fedadam": 0.01, "fedyogi": 0.01}


def make_server_optimizer(cfg: Config, *, buffers: Sequence[str] = (),
                          tied: Mapping[str, str] | None = None) -> ServerOptimizer:
    """The server optimizer of ``[server]`` (``tied``: the model's tied parameters, alias -> name)."""
    s = cfg.server
    return make_optimizer(s.strategy, lr=server_lr(cfg), momentum=s.momentum, beta1=s.beta1, beta2=s.beta2,
                          tau=s.tau, buffers=buffers, tied=tied)


def make_client_hooks(cfg: Config, plan, num_clients: int) -> list:
    """What each client does to its update before encoding it: its own check (a non-finite update becomes zeros where
    clients report nothing outside the mechanism: :class:`~fed8.federated.hooks.WithholdNonFinite`), simulated attacks,
    then local DP.

    Runs where the client runs (this process in simulation, the SuperNode on Flower); local
    DP's noise comes from that machine's OS CSPRNG.
    """
    p, hooks = cfg.privacy, []
    if not client_reports_on(cfg):
        hooks.append(WithholdNonFinite())
    if cfg.attack.fraction > 0:
        hooks.append(Attack(malicious_clients(num_clients, cfg.attack.fraction, cfg.run.seed), cfg.attack.kind,
                            cfg.attack.scale))
    if p.dp == "local":
        hooks.append(LocalDP(p.clip_norm, plan.noise_multiplier, privacy_randomness(
            dp=True, insecure_reproducible=p.insecure_reproducible_noise, seed=cfg.run.seed)))
    return hooks


def weight_cap(cfg: Config, client_sizes: Sequence[int]) -> float:
    """Aggregation weights under DP or secure aggregation: ``min(1, n_k / cap)``; 0 means uniform (w_k = 1).

    ``samples`` weighting under secure aggregation without DP caps at the largest client
    (w = n_k / max n), so weights fit the int8 weight code.
    """
    weighting = _weighting(cfg)
    if weighting == "uniform":
        return 0.0
    if weighting == "capped":
        return float(cfg.privacy.weight_cap)
    return float(max(client_sizes, default=1))


def _need_local(local, key: str):
    """``local`` (the clients' LocalTraining), which ``key = true``'s server side needs."""
    if local is None:
        from ..errors import ParameterError

        raise ParameterError(f"make_aggregator(local=None) with {key} = true: pass the clients' LocalTraining values "
                             "(fed8.stages.federation.local_training(cfg.train, seed=cfg.run.seed)).")
    return local


def make_aggregator(cfg: Config, plan, *, client_sizes: Sequence[int], expected: Mapping[str, Sequence[int]],
                    params: Sequence[str] = (), local=None) -> tuple[Aggregator, list]:
    """The aggregator chain and the client hooks for ``cfg`` and its privacy ``plan``.

    ``params``, ``local``: the model's parameter names and the clients' LocalTraining values, for
    ``train.scaffold`` and ``server.fednova`` (their server sides cover those parameters and need
    each round's rate and the clients' step counts).
    """
    check_combination(cfg)
    p, seed = cfg.privacy, cfg.run.seed
    weighting = _weighting(cfg)
    randomness = privacy_randomness(dp=p.dp != "none", insecure_reproducible=p.insecure_reproducible_noise,
                                    seed=seed)
    m = expected_clients(cfg)
    hooks = make_client_hooks(cfg, plan, len(client_sizes))

    central = p.dp == "central"
    if central or p.secure_aggregation:
        cap = weight_cap(cfg, client_sizes)
        weight = uniform_weight if cap == 0 else capped_weight(cap)
        # DP: a fixed denominator from public numbers only (w_k <= 1, so each client moves Delta by <= C / m).
        denominator = m if central else None
        inner: Aggregator = WeightedMean()
        if p.secure_aggregation:
            from ..privacy.secagg import SecureSum
            from ..federated.secure import SecureWeightedSum

            inner = SecureWeightedSum(SecureSum(
                seed=seed, threshold=p.secagg_threshold, min_clients=p.secagg_min_clients, dropout=p.secagg_dropout,
                dropout_phase=p.secagg_dropout_phase, randomness=randomness))
        z_u = plan.update_noise_multiplier if central else 0.0
        agg: Aggregator = PrivateAggregate(
            inner, clip_norm=p.clip_norm, weight=weight, denominator=denominator, noise_multiplier=z_u,
            ddg=plan.ddg,
            adaptive=_adaptive(cfg, plan), expected_clients=m, randomness=randomness)
    elif cfg.server.robust == "median":
        agg = CoordinateMedian()
    elif cfg.server.robust == "trimmed_mean":
        agg = TrimmedMean(cfg.server.trim_fraction)
    else:
        if weighting == "uniform":
            weight = uniform_weight
        elif weighting == "capped":
            weight = capped_weight(float(p.weight_cap))
        else:
            weight = samples_weight
        agg = WeightedMean(weight)
        if cfg.server.fednova:  # innermost: it normalizes what the weighted mean averages
            from ..federated.fednova import FedNovaAggregate

            agg = FedNovaAggregate(agg, keys=params, local=_need_local(local, "server.fednova"), weight=weight)
    if cfg.train.feddyn_alpha > 0:  # inside the bounds, like SCAFFOLD: h follows what is aggregated
        from ..federated.feddyn import FedDynAggregate

        agg = FedDynAggregate(agg, keys=params, num_clients=len(client_sizes), alpha=cfg.train.feddyn_alpha,
                              from_sum=p.secure_aggregation)
    if cfg.train.scaffold:  # inside the bounds: c follows what is aggregated
        from ..federated.scaffold import ScaffoldAggregate

        agg = ScaffoldAggregate(agg, keys=params, num_clients=len(client_sizes),
                                local=_need_local(local, "train.scaffold"))
    if cfg.server.robust == "norm_bound":
        agg = NormBound(agg, cfg.server.norm_bound)
    return ValidateUpdates(agg, expected), hooks
