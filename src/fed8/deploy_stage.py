"""The quantize stage of ``fed8 run`` / ``fed8 quantize``: run directory in, ``deploy/`` out.

FP32 ONNX export (parity-checked against PyTorch), federated calibration (each client
computes activation ranges on its own images; only the ranges leave it), INT8 and FP8
QDQ models, and for each format: eval accuracy, change against FP32, top-1 agreement
with FP32, per-client on-device accuracy, file bytes, and ORT CPU latency at batch 1
and 256. Results go to ``deploy/quantization.json``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ._io import atomic_write_json, load_tensors
from .config import QuantizeConfig
from .rundir import RunDir

__all__ = ["quantize_run"]

NOTE_FP8_CPU = ("ONNX Runtime's CPU has FP8 QuantizeLinear/DequantizeLinear kernels but no FP8 arithmetic: "
                "FP8 models store 8-bit weights and round activations to FP8, and compute in float32 between. "
                "Their latency on CPU is not what FP8 hardware (e.g. NVIDIA Hopper) gives.")


def _formats(q: QuantizeConfig) -> list[str]:
    return [f.strip() for f in q.formats.split(",") if f.strip()]


def quantize_run(run_dir: str | Path, q: QuantizeConfig | None = None, *,
                 progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build and measure the deployable models of a finished run; returns quantization.json's content."""
    from .data import PIXEL_MEAN, PIXEL_STD
    from .deploy.calibrate import client_ranges, merge_ranges
    from .deploy.export import export_onnx, parity, stamp_metadata
    from .deploy.quantize import quantize_fp8_model, quantize_int8_model
    from .deploy.runtime import INTEGER_OPS, kernel_ops, latency_ms, run_logits, session
    from .errors import CheckpointError
    from .federated.evaluate import client_accuracy_stats
    from .pipeline import prepare

    say = progress or (lambda s: None)
    rd = RunDir.open(run_dir)
    cfg = rd.load_config()
    q = q or cfg.quantize
    if not rd.model.exists():
        raise CheckpointError(f"{rd.model} does not exist: the run has not finished. Finish it with "
                              f"'fed8 run --resume {rd.path}'.")
    say("preparing data")
    prep = prepare(cfg)
    model = prep.simulation.model
    model.load_state_dict(load_tensors(rd.model))
    model.eval()
    clients = prep.simulation.clients
    out = rd.path / "deploy"
    out.mkdir(exist_ok=True)
    meta = {"model": cfg.model.name, "input_shape": list(prep.input_shape), "classes": list(prep.classes),
            "preprocess": {"scale": 1 / 255, "mean": PIXEL_MEAN, "std": PIXEL_STD,
                           "formula": "x = (pixel / 255 - mean) / std", "layout": "NCHW",
                           "resize": list(prep.input_shape[1:])}}
    say("exporting ONNX")
    fp32 = export_onnx(model, prep.input_shape, out / "fp32.onnx", metadata={**meta, "format": "float32"})
    ex, ey = prep.simulation.eval_x.numpy(), prep.simulation.eval_y.numpy()
    local_x = prep.simulation.local_x.numpy()
    local_y, owner = prep.simulation.local_y, prep.simulation.owner

    say("calibrating on the clients")
    n = q.calibration_samples_per_client
    if q.centralized_calibration:
        ranges = client_ranges(fp32, ex[: n * len(clients)])
        calibration = {"where": "server eval split (centralized)", "samples": int(min(len(ex), n * len(clients)))}
    else:
        ranges = merge_ranges(client_ranges(fp32, c.x_train[:n].numpy()) for c in clients)
        calibration = {"where": "clients (federated: only per-tensor min/max left each client)",
                       "clients": len(clients), "samples": int(sum(min(n, c.num_train) for c in clients))}
    calibration["method"] = q.calibration

    fp32_sess = session(fp32, threads=q.threads)
    fp32_logits = run_logits(fp32_sess, ex)
    fp32_acc = float((fp32_logits.argmax(1) == ey).mean())
    par = parity(model, fp32_logits, prep.simulation.eval_x)
    if par["top1_agreement"] < 1.0:
        raise CheckpointError(f"ONNX export disagrees with PyTorch on {1 - par['top1_agreement']:.2%} of the eval "
                              f"split (max logit error {par['max_abs_logit_error']:.3g}); refusing to quantize.")

    def measure(name: str, path: Path, sess) -> dict[str, Any]:
        say(f"evaluating {name}")
        logits = fp32_logits if name == "float32" else run_logits(sess, ex)
        acc = float((logits.argmax(1) == ey).mean())
        local = run_logits(sess, local_x) if local_x.shape[0] else np.zeros((0, 1))
        correct = torch.from_numpy(local.argmax(1) == local_y.numpy()) if local_x.shape[0] else torch.zeros(0, dtype=torch.bool)
        shape = tuple(prep.input_shape)
        ops = kernel_ops(path)
        return {
            "format": name, "file": path.name, "bytes": os.path.getsize(path),
            "eval_accuracy": acc, "accuracy_delta_points": 100 * (acc - fp32_acc),
            "top1_agreement_with_float32": float((logits.argmax(1) == fp32_logits.argmax(1)).mean()),
            "on_device": client_accuracy_stats(correct, owner, len(clients)),
            "latency_ms_batch1": latency_ms(sess, shape, batch=1, repeats=30),
            "latency_ms_batch256": latency_ms(sess, shape, batch=256, repeats=5),
            "integer_kernels": sorted(set(ops) & INTEGER_OPS),
            "layers_kept_float": [],
        }

    rows = [measure("float32", fp32, fp32_sess)]
    for fmt in _formats(q):
        say(f"quantizing {fmt}")
        path = out / f"{fmt}.onnx"
        if fmt == "int8":
            quantize_int8_model(fp32, path, ranges)
        else:
            quantize_fp8_model(fp32, path, ranges, fmt, scale_method=q.fp8_weight_scale)
        stamp_metadata(path, {**meta, "format": fmt})
        rows.append(measure(fmt, path, session(path, threads=q.threads)))
    base = rows[0]
    for r in rows:
        r["bytes_ratio_to_float32"] = r["bytes"] / base["bytes"]
        r["speedup_batch1"] = base["latency_ms_batch1"] / r["latency_ms_batch1"]
        r["speedup_batch256"] = base["latency_ms_batch256"] / r["latency_ms_batch256"]
    result = {"float32_parity": par, "calibration": calibration, "threads": q.threads, "formats": rows,
              "notes": [NOTE_FP8_CPU] if any(f.startswith("float8") for f in _formats(q)) else []}
    atomic_write_json(out / "quantization.json", result)
    return result
