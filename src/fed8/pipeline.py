"""``fed8 run``: data -> partition -> federated training -> report, over one run directory."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import __version__
from ._rng import INIT, derive_seed
from .config import Config, load_config
from .errors import CheckpointError, ConfigError
from .rundir import RunDir

__all__ = ["RESUMABLE_KEYS", "RunResult", "default_run_dir", "make_wire", "prepare", "run"]

# Keys that may change when a run is resumed; anything else would make it another run.
RESUMABLE_KEYS = ("train.rounds", "eval.every", "eval.batch_size", "run.threads", "quantize.enabled",
                  "quantize.formats", "quantize.calibration", "quantize.calibration_percentile",
                  "quantize.calibration_samples_per_client", "quantize.centralized_calibration",
                  "quantize.fp8_weight_scale", "quantize.fp8_activation_scale", "quantize.max_accuracy_drop",
                  "quantize.threads")


@dataclass(frozen=True)
class RunResult:
    """What :func:`run` returns: the run directory, every metrics row, and the summary."""

    run_dir: Path
    metrics: list[dict[str, Any]]
    summary: dict[str, Any]

    @property
    def final(self) -> dict[str, Any]:
        return self.summary["final"]


@dataclass
class Prepared:
    """Everything a run needs before round 1: data, clients, model, strategy, partition summary."""

    config: Config
    simulation: Any
    state: dict[str, torch.Tensor]
    partition: dict
    classes: tuple[str, ...]
    input_shape: tuple[int, int, int]
    num_parameters: int
    plan: Any = None


def default_run_dir(cfg: Config) -> Path:
    """``<run.out>/<YYYYmmdd-HHMMSS>-<model>-<dataset>``, made unique."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.run.out) / f"{stamp}-{cfg.model.name}-{cfg.data.source}"
    out, i = base, 1
    while out.exists():
        i += 1
        out = base.with_name(f"{base.name}-{i}")
    return out


def make_wire(cfg: Config, num_clients: int, residuals: Path | None = None):
    """The uplink / downlink codecs of ``cfg.compression``; error-feedback residuals under ``residuals``."""
    from .compression import ResidualStore, make_codec
    from .compression.wire import Wire

    c = cfg.compression
    opts = dict(granularity=c.granularity, block_size=c.block_size, rounding=c.rounding,
                topk_fraction=c.topk_fraction)
    store = ResidualStore(residuals) if c.error_feedback else None
    return Wire(make_codec(c.uplink, **opts), make_codec(c.downlink, **opts), seed=cfg.run.seed,
                num_clients=num_clients, downlink_mode=c.downlink_mode, residuals=store)


def prepare(cfg: Config, residuals: Path | None = None):
    """Load data, partition it, build the clients, the model, the strategy and the wire.

    ``residuals``: folder for error-feedback residuals (the run directory's); in memory if None.
    """
    import dataclasses

    from .data import load_splits, local_split, partition, partition_summary, to_float
    from .federated import ClientData, Simulation
    from .federated.build import check_combination, expected_clients, make_aggregator
    from .models import build_model, count_parameters
    from .privacy import check_model_for_dp, make_plan
    from .privacy.randomness import privacy_randomness

    check_combination(cfg)
    plan = make_plan(cfg.privacy, num_clients=cfg.data.num_clients, clients_per_round=expected_clients(cfg),
                     sampling=cfg.train.sampling, rounds=cfg.train.rounds)
    splits = load_splits(cfg.data)
    train, ev = splits.train, splits.eval
    labels = train.labels.numpy()
    parts = partition(labels, cfg.data.num_clients, cfg.data.partition, alpha=cfg.data.alpha,
                      shards_per_client=cfg.data.shards_per_client, seed=cfg.run.seed)
    client_splits = [local_split(p, test_fraction=cfg.data.test_fraction, seed=cfg.run.seed, client=k)
                     for k, p in enumerate(parts)]
    # Lay the clients out contiguously so each client's tensors are views, not copies.
    order = np.concatenate([np.concatenate([s.train, s.test]) for s in client_splits])
    x_all, y_all = to_float(train.images[torch.from_numpy(order)]), train.labels[torch.from_numpy(order)]
    clients, at = [], 0
    for s in client_splits:
        a, b, c = at, at + len(s.train), at + len(s.train) + len(s.test)
        clients.append(ClientData(x_all[a:b], y_all[a:b], x_all[b:c], y_all[b:c]))
        at = c
    c_, h, w = train.shape
    model = build_model(cfg.model.name, in_channels=c_, height=h, width=w, num_classes=train.num_classes,
                        norm=cfg.model.norm, hidden=cfg.model.hidden, seed=derive_seed(cfg.run.seed, INIT))
    if cfg.privacy.dp != "none":
        check_model_for_dp(model, model_name=cfg.model.name)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    param_names = {k for k, _ in model.named_parameters()}
    buffers = [k for k, v in state.items() if v.is_floating_point() and k not in param_names]
    strategy, hooks = make_aggregator(
        cfg, plan, client_sizes=[c.num_train for c in clients], buffers=buffers,
        expected={k: tuple(v.shape) for k, v in state.items() if v.is_floating_point()})
    # A privacy budget may cut the rounds (privacy.budget = "stop"); the saved config keeps the plan's input.
    train_cfg = dataclasses.replace(cfg.train, rounds=plan.rounds)
    sim = Simulation(model=model, clients=clients, eval_x=to_float(ev.images), eval_y=ev.labels,
                     strategy=strategy, train=train_cfg, eval=cfg.eval, seed=cfg.run.seed,
                     wire=make_wire(cfg, len(clients), residuals), client_hooks=hooks,
                     sampling_randomness=privacy_randomness(
                         dp=cfg.privacy.dp != "none", insecure_reproducible=cfg.privacy.insecure_reproducible_noise,
                         seed=cfg.run.seed))
    return Prepared(cfg, sim, state, partition_summary(client_splits, labels, train.num_classes),
                    train.classes, train.shape, count_parameters(model), plan)


def _resume_config(rd: RunDir, overrides: Sequence[str]) -> Config:
    saved = rd.load_config()
    cfg = saved.replace(overrides)
    a, b = saved.to_dict(), cfg.to_dict()
    changed = [f"{s}.{k}" for s in a for k in a[s] if a[s][k] != b[s][k]]
    bad = [k for k in changed if k not in RESUMABLE_KEYS]
    if "train.rounds" in changed and saved.privacy.dp != "none" and saved.privacy.target_epsilon > 0:
        bad.append("train.rounds (the privacy budget was planned for the configured rounds)")
    if bad:
        raise ConfigError(
            f"cannot change {', '.join(bad)} when resuming {rd.path}: the run would no longer be the "
            f"same run. Resumable keys: {', '.join(RESUMABLE_KEYS)}. Start a new run instead."
        )
    return cfg


def _summary(prep: Prepared, rows: list[dict], wall_s: float) -> dict:
    cfg = prep.config
    evals = [r for r in rows if r.get("eval_accuracy") is not None]
    final = evals[-1] if evals else {}
    return {
        "fed8_version": __version__, "torch_version": torch.__version__,
        "dataset": cfg.data.source, "model": cfg.model.name, "parameters": prep.num_parameters,
        "input_shape": list(prep.input_shape), "classes": list(prep.classes),
        "num_clients": cfg.data.num_clients, "rounds": rows[-1]["round"] if rows else 0,
        "final": {k: final.get(k) for k in ("round", "eval_accuracy", "eval_loss", "client_accuracy_mean",
                                             "client_accuracy_p10", "client_accuracy_min")},
        "best_eval_accuracy": max((r["eval_accuracy"] for r in evals), default=None),
        "total_uplink_bytes": sum(r["uplink_bytes"] for r in rows),
        "total_downlink_bytes": sum(r["downlink_bytes"] for r in rows),
        "uplink_ratio_to_float32": (sum(r["uplink_bytes"] for r in rows)
                                    / max(sum(r.get("uplink_bytes_float32", 0) for r in rows), 1)),
        "downlink_ratio_to_float32": (sum(r["downlink_bytes"] for r in rows)
                                      / max(sum(r.get("downlink_bytes_float32", 0) for r in rows), 1)),
        "uplink_codec": cfg.compression.uplink + ("+error_feedback" if cfg.compression.error_feedback else ""),
        "downlink_codec": f"{cfg.compression.downlink} ({cfg.compression.downlink_mode})",
        "privacy": _privacy_summary(prep, rows),
        "rejected_updates": sum(r.get("rejected_updates", 0) for r in rows),
        "train_seconds": sum(r["seconds"] for r in rows),
        "wall_seconds_this_invocation": wall_s,
    }


def _privacy_summary(prep: Prepared, rows: list[dict]) -> dict:
    cfg, plan = prep.config, prep.plan
    p = cfg.privacy
    done = rows[-1]["round"] if rows else 0
    spec = plan.spec
    insecure = p.insecure_reproducible_noise and p.dp != "none"
    return {
        "dp": p.dp, "secure_aggregation": p.secure_aggregation,
        "statement": plan.statement(done, secure=p.secure_aggregation, threshold=p.secagg_threshold,
                                    min_clients=p.secagg_min_clients, insecure_noise=insecure),
        "insecure_reproducible_noise": insecure,
        "noise_source": None if spec is None else ("run.seed (insecure)" if insecure else "os.urandom"),
        "epsilon": plan.epsilon(done), "delta": spec.delta if spec else None,
        "epsilon_per_round": plan.epsilon_per_round(),
        "accountant": spec.accountant if spec else None, "sampling": cfg.train.sampling,
        "noise_multiplier": plan.noise_multiplier if spec else None,
        "noise_multiplier_calibrated": plan.calibrated,
        "update_noise_multiplier": plan.update_noise_multiplier if spec else None,
        "clip_norm": p.clip_norm if (spec or p.secure_aggregation) else None,
        "adaptive_clipping": p.adaptive_clipping,
        "noise_placement": p.noise_placement if (p.dp == "central" and p.secure_aggregation) else None,
        "stopped_for_budget": plan.stop_reason,
    }


def run(
    config: Config | None = None,
    *,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    overrides: Sequence[str] = (),
    progress: Callable[[dict], None] | None = None,
    on_round: Callable[[int, dict], None] | None = None,
    report: bool = True,
) -> RunResult:
    """Train a global model federatedly and write the run directory.

    Parameters
    ----------
    config
        The run's configuration (defaults if None). Ignored with ``resume``, where the
        run directory's own config.toml is used (plus ``overrides`` of resumable keys).
    out
        Run directory; default ``<run.out>/<time>-<model>-<dataset>``.
    resume
        An existing run directory to continue after its last completed round.
    progress
        Called with each round's metrics row (for live displays).
    on_round
        Called as ``on_round(round, row)`` after the round's checkpoint is committed.

    Returns
    -------
    RunResult
    """
    t0 = time.perf_counter()
    ck = None
    if resume is not None:
        rd = RunDir.open(resume)
        cfg = _resume_config(rd, overrides)
        ck = rd.load_checkpoint()
        if ck is not None and cfg.train.rounds < ck["round"]:
            raise ConfigError(
                f"train.rounds = {cfg.train.rounds} is below the {ck['round']} rounds {rd.path} has already done; "
                f"a resumed run can only go on. Use train.rounds >= {ck['round']}, or start a new run.")
        if ck is None and rd.read_metrics():
            raise CheckpointError(
                f"{rd.path} has rounds in metrics.jsonl but no committed checkpoint ({rd.checkpoints / 'state.json'} "
                "is missing), so it cannot be resumed; nothing was changed. Restore the checkpoints folder, or "
                "start a new run with another --out.")
        rd.write_config(cfg)
    else:
        cfg = config if config is not None else load_config()
        if overrides:
            cfg = cfg.replace(overrides)
        rd = RunDir.create(out if out is not None else default_run_dir(cfg), cfg)
    try:
        return _train(cfg, rd, ck, resume is not None, progress, on_round, report, t0)
    except BaseException:
        if resume is None:
            rd.discard_if_no_round()  # a run that failed before round 1 leaves no folder behind
        raise


def _train(cfg: Config, rd: RunDir, ck, resumed: bool, progress, on_round, report: bool, t0: float) -> RunResult:
    torch.set_num_threads(cfg.run.threads or os.cpu_count() or 1)

    prep = prepare(cfg, residuals=rd.path / "residuals")
    sim, state = prep.simulation, prep.state
    rd.write_json(rd.partition, prep.partition)
    rows: list[dict] = []
    start, extra = 0, 0
    if resumed:
        if ck is not None:
            if ck["model"].keys() != state.keys():
                raise CheckpointError(f"{rd.checkpoints}: checkpoint does not match the model in config.toml.")
            start, state = ck["round"], ck["model"]
            sim.load_server_state(ck["server"])
            extra = int(ck["meta"].get("extra_releases", 0))
        if sim.wire.feedback is not None:
            sim.wire.feedback.store.rollback(start)
        rows = [r for r in rd.read_metrics() if r["round"] <= start]
        if ck is not None and (not rows or rows[-1]["round"] < start) and "row" in ck["meta"]:
            rows.append(ck["meta"]["row"])  # killed between the commit and the metrics write
        if prep.plan.server_sees_releases and rd.attempted_round() > start:
            extra += 1  # the interrupted attempt's noised messages already reached the server
        plan = prep.plan.after_interruptions(extra, target_epsilon=cfg.privacy.target_epsilon)
        if plan is not prep.plan:
            prep.plan = plan
            sim.train = dataclasses.replace(sim.train, rounds=max(plan.rounds, start))
        rd.write_metrics(rows)
    meta = {"seed": cfg.run.seed, "rng": "stateless: generators derive from SeedSequence([seed, stream, round, "
            "client]); privacy draws under DP come from os.urandom and are fresh on every attempt"}

    def before_round(rnd: int) -> None:
        if prep.plan.server_sees_releases:
            rd.mark_attempt(rnd)

    def after_round(rnd: int, new_state: dict, strategy, row: dict) -> None:
        row["epsilon"] = prep.plan.epsilon(rnd)
        # Commit first (the checkpoint carries the row), then publish the row: a round whose
        # checkpoint is not committed was never released, and a committed one is never redrawn.
        rd.save_checkpoint(rnd, new_state, sim.server_state(),
                           {**meta, "extra_releases": prep.plan.extra_releases, "row": row})
        rows.append(row)
        rd.write_metrics(rows)
        if sim.wire.feedback is not None:
            sim.wire.feedback.store.commit(rnd)
        if progress is not None:
            progress(row)
        if on_round is not None:
            on_round(rnd, row)

    state = sim.run(state, start_round=start, on_round=after_round, before_round=before_round)
    from ._io import save_tensors
    from .data import PIXEL_MEAN, PIXEL_STD
    save_tensors(rd.model, state, metadata={
        "model": cfg.model.name, "input_shape": list(prep.input_shape), "classes": list(prep.classes),
        "pixel_mean": PIXEL_MEAN, "pixel_std": PIXEL_STD, "norm": cfg.model.norm, "hidden": cfg.model.hidden})
    summary = _summary(prep, rows, time.perf_counter() - t0)
    rd.write_json(rd.summary, summary)
    if cfg.quantize.enabled:
        from .deploy_stage import quantize_run
        summary["deploy"] = quantize_run(rd.path, cfg.quantize)["formats"]  # it updates summary.json too
    if report:
        from .report import write_report
        write_report(rd.path)
    return RunResult(rd.path, rows, summary)
