"""The train stage of ``fed8 run``: data -> partition -> federated rounds -> quantize and report stages."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .. import __version__
from ..config import Config, load_config
from ..errors import CheckpointError, ConfigError
from ..rundir import RunDir
from .federation import Prepared, prepare

__all__ = ["RESUMABLE_KEYS", "RunResult", "default_run_dir", "run"]

# Keys that may change when a run is resumed; anything else would make it another run.
RESUMABLE_KEYS = ("train.rounds", "eval.every", "eval.batch_size", "run.threads", "run.parallel_clients",
                  "quantize.enabled", "quantize.formats", "quantize.calibration", "quantize.calibration_percentile",
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


def default_run_dir(cfg: Config) -> Path:
    """``<run.out>/<YYYYmmdd-HHMMSS>-<model>-<dataset>``, made unique."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    from ..models.custom import slug

    base = Path(cfg.run.out) / f"{stamp}-{slug(cfg.model.name)}-{cfg.data.source}"
    out, i = base, 1
    while out.exists():
        i += 1
        out = base.with_name(f"{base.name}-{i}")
    return out


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
    from ..federated.finetune import FINETUNED_KEYS
    from ..federated.record import CLIENT_ACCURACY_KEYS, RoundRecord

    cfg = prep.config
    recs = [RoundRecord.from_dict(r) for r in rows]
    evals = [r for r in recs if r.evaluated]
    final = evals[-1] if evals else None
    up, down = sum(r.uplink_bytes for r in recs), sum(r.downlink_bytes for r in recs)
    return {
        "fed8_version": __version__, "torch_version": torch.__version__,
        "dataset": cfg.data.source, "model": cfg.model.name, "parameters": prep.num_parameters,
        "input_shape": list(prep.input_shape), "classes": list(prep.classes),
        "num_clients": cfg.data.num_clients, "rounds": recs[-1].round if recs else 0,
        "final": {**{k: getattr(final, k) if final else None
                     for k in ("round", "eval_accuracy", "eval_loss", *CLIENT_ACCURACY_KEYS)},
                  **{k: recs[-1].get(k) for k in FINETUNED_KEYS if recs and k in recs[-1].extra}},
        "best_eval_accuracy": max((r.eval_accuracy for r in evals), default=None),
        "total_uplink_bytes": up,
        "total_downlink_bytes": down,
        "uplink_ratio_to_float32": up / max(sum(r.uplink_bytes_float32 for r in recs), 1),
        "downlink_ratio_to_float32": down / max(sum(r.downlink_bytes_float32 for r in recs), 1),
        "uplink_codec": cfg.compression.uplink + ("+error_feedback" if cfg.compression.error_feedback else ""),
        "downlink_codec": f"{cfg.compression.downlink} ({cfg.compression.downlink_mode})",
        "privacy": _privacy_summary(prep, rows),
        "rejected_updates": sum(r.rejected_updates for r in recs),
        "train_seconds": sum(r.seconds for r in recs),
        "wall_seconds_this_invocation": wall_s,
    }


def _privacy_summary(prep: Prepared, rows: list[dict]) -> dict:
    from ..privacy.plan import noise_to_clip_ratio
    from .aggregation import adaptive_clipping_on, client_reports_on, expected_clients

    cfg, plan = prep.config, prep.plan
    p = cfg.privacy
    done = rows[-1]["round"] if rows else 0
    spec = plan.spec
    insecure = p.insecure_reproducible_noise and p.dp != "none"
    return {
        "dp": p.dp, "secure_aggregation": p.secure_aggregation,
        "statement": plan.statement(done, secure=p.secure_aggregation, threshold=p.secagg_threshold,
                                    min_clients=p.secagg_min_clients, insecure_noise=insecure,
                                    client_reports=client_reports_on(cfg),
                                    rejected=sum(int(r.get("rejected_updates") or 0) for r in rows)),
        "client_reports": client_reports_on(cfg),
        "insecure_reproducible_noise": insecure,
        "noise_source": None if spec is None else ("run.seed (insecure)" if insecure else "os.urandom"),
        "epsilon": plan.epsilon(done), "delta": spec.delta if spec else None,
        "epsilon_per_round": plan.epsilon_per_round(),
        "accountant": spec.accountant if spec else None, "sampling": cfg.train.sampling,
        "noise_multiplier": plan.noise_multiplier if spec else None,
        "noise_multiplier_calibrated": plan.calibrated,
        "update_noise_multiplier": plan.update_noise_multiplier if spec else None,
        "clip_norm": p.clip_norm if (spec or p.secure_aggregation) else None,
        "adaptive_clipping": adaptive_clipping_on(cfg),
        "noise_placement": p.noise_placement if (p.dp == "central" and p.secure_aggregation) else None,
        "mechanism": None if plan.ddg is None else {
            "name": "distributed discrete Gaussian (Kairouz, Liu, Steinke 2021)", "bits_per_value": plan.ddg.bits,
            "gamma": plan.ddg.gamma, "beta": plan.ddg.beta, "sigma2": plan.ddg.sigma2,
            "noise_shares_t": plan.ddg.shares, "noise_std": plan.ddg.noise_std,
            # adaptive clipping: each client's noise variance on its clip bit, and the count's summed noise std
            "count_sigma2": plan.ddg.count_sigma2 or None, "count_noise_std": plan.ddg.count_noise_std or None,
            **plan.ddg_guarantees(done)},
        "stopped_for_budget": plan.stop_reason,
        "noise_to_clip_ratio": noise_to_clip_ratio(  # the noise's norm on a round's mean update over clip_norm
            plan, dim=sum(v.numel() for v in prep.state.values() if v.is_floating_point()),
            clients_per_round=expected_clients(cfg)),
    }


def run(
    config: Config | None = None,
    *,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    overrides: Sequence[str] = (),
    progress: Callable[[dict], None] | None = None,
    on_round: Callable[[int, dict], None] | None = None,
    stage: Callable[[str], None] | None = None,
    report: bool = True,
    quantize: bool = True,
    transport_factory: Callable[[Prepared], Any] | None = None,
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
    stage
        Called with a few words as the work after the rounds goes on ("quantize: building int8",
        "writing the report"), for live displays.
    quantize
        Run the quantize stage at the end when ``quantize.enabled`` (False: skip it).
    transport_factory
        ``prepared -> transport`` to run the rounds over (e.g. Flower's); default the
        in-process transport of the simulation.

    Returns
    -------
    RunResult
    """
    t0 = time.perf_counter()
    ck = None
    if resume is not None:
        rd = RunDir.open(resume)
    else:
        cfg = config if config is not None else load_config()
        if overrides:
            cfg = cfg.replace(overrides)
        from ..data import refuse_unread_keys

        refuse_unread_keys(cfg.data)
        rd = RunDir.create(out if out is not None else default_run_dir(cfg), cfg)
    with rd.lock():  # one writer at a time: a second process on this folder is refused (RunDir.lock)
        if resume is not None:
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
        try:
            return _train(cfg, rd, ck, resume is not None, progress, on_round, report, t0, quantize, transport_factory,
                          stage)
        except BaseException:
            if resume is None:
                rd.discard_if_no_round()  # a run that failed before round 1 leaves no folder behind
            raise


def _client_stores(sim) -> list:
    """What the simulated clients keep across rounds in the run directory (error-feedback residuals, SCAFFOLD's
    controls): committed with each round's checkpoint, rolled back to it on resume."""
    stores = [sim.wire.feedback.store] if sim.wire.feedback is not None else []
    controls = getattr(sim.transport, "controls", None)
    return stores + ([controls] if controls is not None else [])


def _train(cfg: Config, rd: RunDir, ck, resumed: bool, progress, on_round, report: bool, t0: float,
           quantize: bool = True, transport_factory=None, stage=None) -> RunResult:
    torch.set_num_threads(cfg.run.threads or os.cpu_count() or 1)

    prep = prepare(cfg, residuals=rd.path / "residuals", controls=rd.path / "controls")
    sim, state = prep.simulation, prep.state
    if transport_factory is not None:  # the same round logic over another transport (Flower)
        sim.transport = transport_factory(prep)
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
        for store in _client_stores(sim):
            store.rollback(start)
        rows = [r for r in rd.read_metrics() if r["round"] <= start]
        if ck is not None and (not rows or rows[-1]["round"] < start) and "row" in ck["meta"]:
            rows.append(ck["meta"]["row"])  # killed between the commit and the metrics write
        if prep.plan.server_sees_releases and rd.attempted_round() > start:
            extra += 1  # the interrupted attempt's noised messages already reached the server
        plan = prep.plan.after_interruptions(extra, target_epsilon=cfg.privacy.target_epsilon)
        if plan is not prep.plan:
            prep.plan = plan
            sim.rounds = max(plan.rounds, start)
        rd.write_metrics(rows)
    meta = {"seed": cfg.run.seed, "rng": "stateless: generators derive from SeedSequence([seed, stream, round, "
            "client]); privacy draws under DP come from os.urandom and are fresh on every attempt"}

    def before_round(rnd: int) -> None:
        if prep.plan.server_sees_releases:
            rd.mark_attempt(rnd)

    def after_round(rnd: int, new_state: dict, rec) -> None:
        rec.epsilon = prep.plan.epsilon(rnd)
        row = rec.to_dict()
        # Commit first (the checkpoint carries the row), then publish the row: a round whose
        # checkpoint is not committed was never released, and a committed one is never redrawn.
        rd.save_checkpoint(rnd, new_state, sim.server_state(),
                           {**meta, "extra_releases": prep.plan.extra_releases, "row": row})
        rows.append(row)
        rd.write_metrics(rows)
        for store in _client_stores(sim):
            store.commit(rnd)
        if progress is not None:
            progress(row)
        if on_round is not None:
            on_round(rnd, row)

    state = sim.run(state, start_round=start, on_round=after_round, before_round=before_round)
    if hasattr(sim.transport, "close"):  # the rounds are over (e.g. torchrun workers stop serving)
        sim.transport.close()
    from .._io import save_tensors
    from ..data import PIXEL_MEAN, PIXEL_STD
    save_tensors(rd.model, state, metadata={
        "model": cfg.model.name, "input_shape": list(prep.input_shape), "classes": list(prep.classes),
        "pixel_mean": PIXEL_MEAN, "pixel_std": PIXEL_STD, "norm": cfg.model.norm, "hidden": cfg.model.hidden})
    summary = _summary(prep, rows, time.perf_counter() - t0)
    from ..federated.evaluate import per_class
    summary["eval_per_class"] = per_class(sim.eval_confusion(state, len(prep.classes)), prep.classes)
    rd.write_json(rd.summary, summary)
    if cfg.quantize.enabled and quantize:
        from .quantize import quantize_run
        summary["deploy"] = quantize_run(  # it updates summary.json too
            rd.path, cfg.quantize, progress=None if stage is None else (lambda s: stage(f"quantize: {s}")))["formats"]
    if report:
        from ..report import write_report
        if stage is not None:
            stage("writing the report")
        write_report(rd.path)
    return RunResult(rd.path, rows, summary)
