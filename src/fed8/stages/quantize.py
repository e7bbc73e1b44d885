"""The quantize stage of ``fed8 run`` / ``fed8 quantize``: FP32 ONNX in, INT8 / FP8 ONNX models and measurements out.

For a run directory: FP32 export (parity-checked against PyTorch), federated
calibration (each client computes activation statistics on its own images; only the
statistics leave it), INT8 and FP8 QDQ models with the accuracy gate, and per format:
eval accuracy, change against FP32, top-1 agreement with FP32, per-client on-device
accuracy, file bytes and ORT CPU latency at batch 1 and 256 -> ``deploy/quantization.json``.
For a standalone ONNX model the same, calibrated and evaluated on user-supplied images.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .._io import atomic_write_json, staged_dir
from ..config import DEPLOY_FORMATS, QuantizeConfig

__all__ = ["DeployData", "deploy_formats", "quantize_model", "quantize_run"]

NOTE_FP8_CPU = ("ONNX Runtime's CPU has FP8 QuantizeLinear/DequantizeLinear kernels but no FP8 arithmetic: "
                "FP8 models store 8-bit weights and round activations to FP8, and compute in float32 between. "
                "Their latency on CPU is not what FP8 hardware (e.g. NVIDIA Hopper) gives. The models recommend "
                "(metadata fed8.ort_session_config) session.disable_quant_qdq=1, which dequantizes the FP8 weights "
                "once at load; they also run in a default session, slower.")

NOTE_LITERT_SKIPPED = ("LiteRT (.tflite) formats were listed in quantize.formats but skipped: litert-torch is not "
                       "installed. Install it with: pip install 'fed8[litert]'")
NOTE_LITERT_NO_MODEL = ("LiteRT (.tflite) formats were skipped: they are converted from the PyTorch model, which a "
                        "standalone ONNX file does not carry. Quantize the run directory instead (fed8 quantize RUN_DIR).")
NOTE_LITERT = ("LiteRT rows: full-integer .tflite files run by LiteRT's interpreter (XNNPACK, same thread count), "
               "calibrated with the same federated activation ranges as the ONNX models; speedups are against ONNX "
               "Runtime float32 on this x86 CPU (phones, ARM, were not measured). litert-torch exports batch 1 only, "
               "so there is no batch-256 latency for them.")

NOTE_TORCH_FP8_NO_MODEL = ("torch_float8_e4m3fn was skipped: it is built from the PyTorch model, which a standalone "
                           "ONNX file does not carry. Quantize the run directory instead (fed8 quantize RUN_DIR).")

NOTE_OPENVINO = ("OpenVINO rows: the same ONNX files run by OpenVINO's CPU runtime (float32 inference precision, "
                 "same thread count); speedups are against ONNX Runtime float32. INT8 there uses the untuned QDQ "
                 "graph (int8_openvino.onnx when int8.onnx carries ONNX Runtime graph rewrites). Its integer "
                 "rounding differs slightly from ONNX Runtime's; top1_agreement_with_onnxruntime says how much.")


def _same_device(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


def _formats(q: QuantizeConfig) -> list[str]:
    return [f.strip() for f in q.formats.split(",") if f.strip()]


def _gate_info(q: QuantizeConfig, res) -> dict[str, Any]:
    """What the accuracy gate did for one format: its threshold, whether it passed, every build it scored."""
    return {"max_accuracy_drop": q.max_accuracy_drop, "passed": res.passed,
            "builds": [{"layers_kept_float": k, "score": a} for k, a in res.tried]}


def _use_openvino(q: QuantizeConfig) -> bool:
    """Whether to measure on OpenVINO too; ``quantize.openvino = "on"`` without it installed is an error."""
    from ..deploy import runtime

    if q.openvino == "on" and not runtime.openvino_available():
        from ..errors import MissingExtraError

        raise MissingExtraError("openvino", "openvino")
    return q.openvino == "on" or (q.openvino == "auto" and runtime.openvino_available())


@dataclass
class DeployData:
    """What the stage calibrates and evaluates on.

    ``statistics`` is where the clients' side runs (calibration statistics, the gate's
    sums, on-device accuracy): in this process over ``calib_sets`` by default, or on
    SuperNodes (:class:`fed8.flower.deploy.FlowerStatistics`).
    """

    calib_sets: list[np.ndarray]  # one array per client (one in total if centralized)
    eval_x: np.ndarray
    eval_y: np.ndarray | None  # None: score is top-1 agreement with float32
    input_shape: tuple[int, ...]
    statistics: Any = None  # a fed8.deploy.clients.ClientStatistics; default LocalStatistics(calib_sets)
    model: Any = None  # the trained torch.nn.Module (LiteRT is converted from it); None for a standalone ONNX file

    def __post_init__(self) -> None:
        if self.statistics is None:
            from ..deploy.clients import LocalStatistics

            self.statistics = LocalStatistics(self.calib_sets)


def deploy_formats(fp32: Path, out: Path, q: QuantizeConfig, data: DeployData, meta: dict, calibration: dict,
                   say: Callable[[str], None], extra: dict | None = None, final: Path | None = None) -> dict[str, Any]:
    """Calibrate, quantize (with the accuracy gate) and measure every format of ``q``; writes quantization.json.

    ``out`` is the staging folder (see :func:`fed8._io.staged_dir`); ``final`` the folder it
    will replace: model files there of formats not rebuilt now are carried over (linked)
    and named in a note.
    """
    from ..deploy.calibrate import merge_histograms, merge_ranges, thresholds
    from ..deploy.export import graph_key, read_metadata, stamp_metadata
    from ..deploy.gate import gate, layer_sqnr_from_sums
    from ..federated.evaluate import client_accuracy_from_counts
    from ..deploy.quantize import fp8_activation_scales, quantize_fp8_model, quantize_int8_model
    from ..deploy.measure import Measure, add_ratios
    from ..deploy.runtime import FP8_CPU_SESSION_CONFIG, int8_pair_saturation, run_logits, session
    from ..deploy.litert import LITERT_FORMATS, litert_available
    from ..deploy.fp8_linear import TORCH_FP8_FORMAT

    fmts = [f for f in _formats(q) if f not in (*LITERT_FORMATS, TORCH_FP8_FORMAT)]  # the ONNX formats
    lite_fmts = [f for f in _formats(q) if f in LITERT_FORMATS]
    torch_fp8 = TORCH_FP8_FORMAT in _formats(q)
    use_openvino = _use_openvino(q)
    saturation = int8_pair_saturation()
    reduce_range = q.int8_reduce_range == "on" or (q.int8_reduce_range == "auto" and saturation is not None)
    stats = data.statistics
    say("calibrating" + (" on the clients" if len(data.calib_sets) != 1 else ""))
    ranges = merge_ranges(stats.ranges(fp32))
    if getattr(stats, "samples", None) is not None:  # remote clients say how many images they used
        calibration["samples"] = stats.samples
    hists = None
    if q.calibration != "minmax" or (q.fp8_activation_scale != "amax" and any(f.startswith("float8") for f in fmts)):
        bounds = {k: max(abs(lo), abs(hi)) for k, (lo, hi) in ranges.items()}
        hists = merge_histograms(stats.histograms(fp32, bounds))
    act_ranges = thresholds(q.calibration, ranges, hists or {}, percentile=q.calibration_percentile)
    calibration.update(method=q.calibration, statistics="min/max per tensor" + (
        ", 2048-bin histogram and moments per tensor" if hists else ""))

    fp32_sess = session(fp32, threads=q.threads)
    fp32_logits = run_logits(fp32_sess, data.eval_x)
    ref = data.eval_y if data.eval_y is not None else fp32_logits.argmax(1)

    def score(logits: np.ndarray) -> float:
        return float((logits.argmax(1) == ref).mean())

    base = score(fp32_logits)

    # A model is evaluated once: the FP8 scale selection, the gate and the measurement often meet the same
    # one again (its file rewritten, or its metadata stamped). Keyed by what the file computes (graph_key).
    memo: dict[tuple[str, str], Any] = {}

    def eval_logits(path: Path, sess=None) -> np.ndarray:
        key = ("eval", graph_key(path))
        if key not in memo:
            memo[key] = run_logits(sess or session(path, threads=q.threads), data.eval_x)
        return memo[key]

    def client_counts(path: Path) -> list[tuple[int, int]] | None:
        key = ("clients", graph_key(path))
        if key not in memo:
            memo[key] = stats.correct(path)
        return memo[key]

    def on_device(path: Path) -> dict | None:
        counts = client_counts(path)
        return client_accuracy_from_counts(counts) if counts is not None else None

    def select(path: Path) -> float:
        """The clients' accuracy on their local test splits (counts summed); else the eval split's score."""
        counts = client_counts(path) or []
        n = sum(c for _, c in counts)
        return sum(h for h, _ in counts) / n if n else score(eval_logits(path))

    measurer = Measure(data.eval_x, data.eval_y, fp32_logits, tuple(data.input_shape), q.threads, on_device, say)
    measure = measurer.row

    def measure_openvino(path: Path, ort_logits: np.ndarray) -> dict[str, Any]:
        return measurer.other_runtime(path, "openvino", ort_logits)

    rows = [measure("float32", fp32, fp32_sess, fp32_logits)]
    if use_openvino:
        rows[0]["openvino"] = measure_openvino(fp32, fp32_logits)
    for fmt in fmts:
        path = out / f"{fmt}.onnx"
        info: dict[str, Any] = {}
        if fmt == "int8":
            def make(keep: Sequence[str] = ()) -> None:
                quantize_int8_model(fp32, path, act_ranges, nodes_to_exclude=list(keep),
                                    tune_graph=q.int8_graph_tuning, reduce_range=reduce_range)
            fp8_scales = None
        else:
            candidates = ["amax", "std"] if q.fp8_activation_scale == "auto" else [q.fp8_activation_scale]
            scales = {m: fp8_activation_scales(fmt, act_ranges, method=m, hists=hists) for m in candidates}
            choice = candidates[0]
            if len(candidates) > 1:  # keep the activation scale that is more accurate on the clients' data
                tried = {}
                for m in candidates:
                    say(f"{fmt}: trying {m} activation scales")
                    quantize_fp8_model(fp32, path, scales[m], fmt, scale_method=q.fp8_weight_scale)
                    tried[m] = select(path)
                choice = max(candidates, key=lambda m: tried[m])  # ties keep the first (amax)
                info["activation_scale_candidates"] = tried
            info["activation_scale"] = choice
            fp8_scales = scales[choice]

            def make(keep: Sequence[str] = (), _f=fmt, _s=fp8_scales) -> None:
                quantize_fp8_model(fp32, path, _s, _f, scale_method=q.fp8_weight_scale, keep_float=keep)

        def build(keep: Sequence[str]) -> float:
            say(f"quantizing {fmt}" + (f" ({len(keep)} layer(s) kept in float)" if keep else ""))
            make(keep)
            return score(eval_logits(path))

        def ranking(_f=fmt, _s=fp8_scales):
            say(f"{_f}: ranking layers by SQNR")
            return layer_sqnr_from_sums(fp32, _f, stats.sqnr_sums(fp32, _f, act_ranges, _s),
                                        weight_scale=q.fp8_weight_scale)

        res = gate(build, ranking, float_accuracy=base, max_drop_points=q.max_accuracy_drop)
        if not res.passed:  # report the fully quantized model, marked failed
            make(())
        rewrites = read_metadata(path).get("int8_graph_rewrites", []) if fmt == "int8" else []
        bits = {"int8_weight_bits": 7 if reduce_range else 8} if fmt == "int8" else {}
        stamp_metadata(path, {**meta, "format": fmt, **bits, **({"int8_graph_rewrites": rewrites} if rewrites else {}),
                              **({"ort_session_config": FP8_CPU_SESSION_CONFIG} if fmt != "int8" else {})})
        sess = session(path, threads=q.threads)
        logits = eval_logits(path, sess)
        row = measure(fmt, path, sess, logits)
        row.update(info)
        if use_openvino:
            ov_path = path
            if fmt == "int8" and rewrites:  # the rewrites are for ORT's kernels; OpenVINO runs the plain graph
                ov_path = out / "int8_openvino.onnx"
                keep = [r.node for r in res.kept_float] if res.passed else []
                quantize_int8_model(fp32, ov_path, act_ranges, nodes_to_exclude=keep, tune_graph=False,
                                    reduce_range=reduce_range)
                stamp_metadata(ov_path, {**meta, "format": fmt, "runtime": "openvino"})
            row["openvino"] = measure_openvino(ov_path, logits)
        if fmt == "int8":
            row["graph_rewrites"] = rewrites
            row["weight_bits"] = 7 if reduce_range else 8
        row["status"] = "ok" if res.passed else "failed"
        row["layers_kept_float"] = [
            {"node": r.node, "op": r.op, "sqnr_db": r.sqnr_db, "weight_sqnr_db": r.weight_db,
             "input_sqnr_db": r.input_db,
             "why": f"accuracy drop above max_accuracy_drop = {q.max_accuracy_drop} points with this layer "
                    f"quantized; lowest local SQNR ({r.sqnr_db:.1f} dB) among the remaining layers"}
            for r in (res.kept_float if res.passed else ())]
        row["gate"] = _gate_info(q, res)
        rows.append(row)
    notes = [NOTE_FP8_CPU] if any(f.startswith("float8") for f in fmts) else []
    if "int8" in fmts and reduce_range and q.int8_reduce_range == "auto":
        notes.append(f"int8: weights in 7 bits ([-64, 64]) because {saturation}: ONNX Runtime's uint8 x int8 kernels "
                     "would saturate their 16-bit pair sums with 8-bit weights. For a model that will run only on "
                     "VNNI x86 or ARM CPUs, set quantize.int8_reduce_range = off.")
    if lite_fmts and data.model is None:
        notes.append(NOTE_LITERT_NO_MODEL)
    elif lite_fmts and not litert_available():
        notes.append(NOTE_LITERT_SKIPPED)
    elif lite_fmts:
        from ..deploy.litert import build_litert

        notes.append(NOTE_LITERT)
        for fmt in lite_fmts:
            path = out / ("int8.tflite" if fmt == "litert_int8" else "fp32.tflite")

            def build_lite(keep: Sequence[str], _f=fmt, _p=path) -> float:
                say(f"converting {_f} (LiteRT)")
                build_litert(data.model, data.input_shape, _p, fmt=_f, metadata=meta, ranges=act_ranges,
                             onnx_fp32=fp32)
                return score(eval_logits(_p))

            # Full-integer or nothing: no layer can stay float in a model that must run integer kernels only,
            # so the gate passes or fails the whole model.
            res = gate(build_lite, lambda: [], float_accuracy=base, max_drop_points=q.max_accuracy_drop) \
                if fmt == "litert_int8" else None
            if res is None:
                build_lite(())
            sess = session(path, threads=q.threads)
            row = measure(fmt, path, sess, eval_logits(path, sess), runtime="litert")
            row["batch_sizes"] = [sess.batch]
            if res is not None:
                row["status"] = "ok" if res.passed else "failed"
                row["gate"] = _gate_info(q, res)
            rows.append(row)
    if torch_fp8 and data.model is None:
        notes.append(NOTE_TORCH_FP8_NO_MODEL)
    elif torch_fp8:
        from ..deploy.fp8_linear import TorchSession, fp8_compute_available, save_fp8_model

        path = out / f"{TORCH_FP8_FORMAT}.safetensors"
        holder: dict[str, Any] = {}

        def build_torch_fp8(keep: Sequence[str]) -> float:
            say(f"building {TORCH_FP8_FORMAT} (Linear layers in FP8)")
            holder["model"] = save_fp8_model(data.model, path, metadata=meta)
            return score(eval_logits(path, TorchSession(holder["model"], q.threads)))

        res = gate(build_torch_fp8, lambda: [], float_accuracy=base, max_drop_points=q.max_accuracy_drop)
        ok, why = fp8_compute_available()
        sess = TorchSession(holder["model"], q.threads)
        row = measure(TORCH_FP8_FORMAT, path, sess, eval_logits(path, sess), runtime="torch", timed=ok)
        row["status"] = "ok" if res.passed else "failed"
        row["gate"] = _gate_info(q, res)
        row["fp8_compute"] = why
        if not ok:
            notes.append(f"{TORCH_FP8_FORMAT}: latency not measured: {why}. Its accuracy is exact (the same FP8 "
                         "products, computed in float32 here).")
        rows.append(row)
    add_ratios(rows)
    if use_openvino:
        notes.append(NOTE_OPENVINO)
    written = {r["file"] for r in rows} | {r["openvino"]["file"] for r in rows if "openvino" in r}
    final = final or out
    stale = [f for f in [*(f"{x}.onnx" for x in DEPLOY_FORMATS if not x.startswith("litert")), "int8_openvino.onnx",
                         "int8.tflite", "fp32.tflite", "torch_float8_e4m3fn.safetensors"]
             if f not in written and (final / f).exists() and not (out / f).exists()]
    for f in stale:  # kept (nothing is lost), but this quantization.json does not describe them
        os.link(final / f, out / f) if _same_device(final, out) else shutil.copy2(final / f, out / f)
    if stale:
        covered = ["float32", *fmts, *lite_fmts, *([TORCH_FP8_FORMAT] if torch_fp8 else [])]
        notes.append(f"{', '.join(stale)} in {final} {'is' if len(stale) == 1 else 'are'} from an earlier quantize "
                     "and not described here (this quantization.json covers " + ", ".join(covered) + ").")
    result = {**(extra or {}), "calibration": calibration, "threads": q.threads, "formats": rows,
              "failed": [r["format"] for r in rows if r["status"] == "failed"], "notes": notes}
    atomic_write_json(out / "quantization.json", result)
    return result


def quantize_run(run_dir: str | Path, q: QuantizeConfig | None = None, *, calibration_data: Sequence[str] = (),
                 out: str | Path | None = None, progress: Callable[[str], None] | None = None,
                 devices=None) -> dict[str, Any]:
    """Build and measure the deployable models of a finished run; returns quantization.json's content.

    ``calibration_data`` (files / folders / .npz) replaces federated calibration with
    centralized calibration on those images. ``out`` is the output folder (default:
    ``RUN_DIR/deploy``). ``devices``: a :class:`fed8.deploy.clients.ClientStatistics` with a
    ``where`` description whose clients are elsewhere (SuperNodes): they calibrate and
    evaluate the 8-bit models on their own data; default, the clients' shards in this process.
    """

    from .._io import load_tensors
    from ..data import PIXEL_MEAN, PIXEL_STD
    from ..errors import CheckpointError
    from ..rundir import RunDir
    from .aggregation import client_reports_on
    from .federation import load_federation

    say = progress or (lambda s: None)
    rd = RunDir.open(run_dir)
    cfg = rd.load_config()
    q = q or cfg.quantize
    _use_openvino(q)  # fail before the work, not after it
    if not rd.model.exists():
        raise CheckpointError(f"{rd.model} does not exist: the run has not finished. Finish it with "
                              f"'fed8 run --resume {rd.path}'.")
    say("preparing data")
    fed = load_federation(cfg)  # the clients' data and the model; no aggregator, wire or secure aggregation
    model = fed.model
    model.load_state_dict(load_tensors(rd.model))
    model.eval()
    final = Path(out) if out else rd.path / "deploy"
    meta = {"model": cfg.model.name, "model_options": {"norm": cfg.model.norm, "hidden": cfg.model.hidden},
            "input_shape": list(fed.input_shape), "classes": list(fed.classes),
            "preprocess": {"divisor": 255, "mean": PIXEL_MEAN, "std": PIXEL_STD,
                           "formula": "x = (pixel / divisor - mean) / std", "layout": "NCHW",
                           "resize": list(fed.input_shape[1:]), "resample": "bilinear"}}
    with staged_dir(final) as out:
        result = _quantize_run_into(out, final, fed, q, meta, calibration_data, say, devices, run_dir=rd.path,
                                    client_reports=client_reports_on(cfg))
    if final.resolve() == (rd.path / "deploy").resolve():
        _publish(rd, result)
    return result


def _publish(rd, result: dict[str, Any]) -> None:
    """A run's summary and report follow its deploy folder."""
    import json

    if rd.summary.exists():
        summary = json.loads(rd.summary.read_text())
        summary["deploy"] = result["formats"]
        rd.write_json(rd.summary, summary)
    if rd.report.exists():
        from ..report import write_report

        write_report(rd.path)


def _quantize_run_into(out: Path, final: Path, fed, q: QuantizeConfig, meta: dict,
                       calibration_data: Sequence[str], say, devices=None, *, run_dir: Path,
                       client_reports: bool = True) -> dict[str, Any]:
    """``client_reports`` False (``privacy.client_reports``): nothing from the clients' data; calibration and every
    accuracy on the server's eval split (or the user's calibration data)."""

    from ..deploy.export import export_onnx, parity, read_metadata
    from ..deploy.images import load_images
    from ..deploy.runtime import run_logits, session
    from ..deploy.clients import CalibrateHere, LocalStatistics
    from ..errors import CheckpointError, DeployError

    say("exporting ONNX")
    model, clients = fed.model, fed.clients
    try:
        fp32 = export_onnx(model, fed.input_shape, out / "fp32.onnx", metadata={**meta, "format": "float32"})
    except DeployError as e:  # the trained model is safe: say where, and how to come back to this stage
        raise DeployError(f"{e} The trained model is kept in {run_dir / 'model.safetensors'}; after a fix, "
                          f"'fed8 quantize {run_dir}' builds the 8-bit models from it.") from e
    ex, ey = fed.eval_x.numpy(), fed.eval_y.numpy()
    local_x, local_y, owner = fed.local_test
    local_x, local_y = local_x.numpy(), local_y.numpy()

    par = parity(model, run_logits(session(fp32, threads=q.threads), ex), fed.eval_x)
    if par["top1_agreement"] < 1.0:
        raise CheckpointError(f"ONNX export disagrees with PyTorch on {1 - par['top1_agreement']:.2%} of the eval "
                              f"split (max logit error {par['max_abs_logit_error']:.3g}); refusing to quantize.")
    n = q.calibration_samples_per_client
    if calibration_data:
        imgs = load_images(calibration_data, read_metadata(fp32))
        sets = [imgs.x]
        calibration = {"where": f"user data (centralized): {', '.join(map(str, calibration_data))}",
                       "samples": len(imgs.x)}
    elif q.centralized_calibration or not client_reports:
        sets = [ex[: n * len(clients)]]
        calibration = {"where": "server eval split (centralized)" + (
            "" if client_reports else "; privacy.client_reports = off: no statistics left the clients"),
            "samples": len(sets[0])}
    else:
        sets = [c.x_train[:n].numpy() for c in clients]
        calibration = {"where": "clients (federated: only per-tensor statistics left each client)",
                       "clients": len(clients), "samples": int(sum(len(s) for s in sets))}

    if not client_reports:  # no client is asked anything: no on-device accuracy either
        statistics = LocalStatistics(sets, threads=q.threads)
    elif devices is None:
        statistics = LocalStatistics(sets, local_x, local_y, owner.numpy(), len(clients), q.threads)
    elif calibration_data or q.centralized_calibration:  # calibrate here, evaluate on the devices
        statistics = CalibrateHere(LocalStatistics(sets, threads=q.threads), devices)
    else:  # the clients are elsewhere (SuperNodes): they calibrate on their own images
        statistics = devices
        calibration = {"where": devices.where, "clients": len(clients)}
    data = DeployData(sets, ex, ey, tuple(fed.input_shape), statistics, model=model)
    return deploy_formats(fp32, out, q, data, meta, calibration, say, extra={"float32_parity": par}, final=final)


def quantize_model(model_path: str | Path, q: QuantizeConfig, calibration_data: Sequence[str], *,
                   out: str | Path | None = None, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Quantize a standalone FP32 ONNX model, calibrated on user images.

    A fed8 model takes image files, folders or an ``.npz`` of uint8 pixels, preprocessed from its
    metadata; another tool's model an ``.npz`` of its own float inputs
    (:func:`fed8.deploy.images.load_model_inputs`). The images are shuffled (seed 0); half (at most 1,000) calibrate, the rest (at
    most 5,000) evaluate: accuracy if the source has labels, otherwise top-1 agreement
    with the FP32 model.
    """
    from ..deploy.export import read_metadata
    from ..deploy.images import load_inputs
    from ..errors import DeployError

    say = progress or (lambda s: None)
    _use_openvino(q)
    model_path = Path(model_path)
    meta = read_metadata(model_path)
    if not calibration_data:
        raise DeployError(f"quantizing {model_path.name} needs images to calibrate on: pass --calibration-data "
                          "FILE.npz | DIR | IMAGE... (a run directory calibrates on its clients instead).")
    imgs = load_inputs(calibration_data, model_path, meta)  # another tool's model: its own float inputs (.npz)
    if len(imgs.x) < 2:
        raise DeployError(f"--calibration-data has {len(imgs.x)} image(s); give at least 2 (one to calibrate, one "
                          "to evaluate), ideally hundreds.")
    perm = np.random.default_rng(0).permutation(len(imgs.x))
    k = min(len(perm) // 2, 1000)
    cal, ev = perm[:k], perm[k : k + 5000]
    final = Path(out) if out else model_path.parent / f"{model_path.stem}-deploy"
    data = DeployData([imgs.x[cal]], imgs.x[ev], imgs.y[ev] if imgs.y is not None else None, tuple(imgs.x.shape[1:]))
    calibration = {"where": f"user data (centralized): {', '.join(map(str, calibration_data))}",
                   "samples": len(cal), "evaluated_on": f"{len(ev)} other images of the same data"}
    with staged_dir(final) as staging:
        return deploy_formats(model_path, staging, q, data, {**meta}, calibration, say,
                              extra={"model": str(model_path)}, final=final)
