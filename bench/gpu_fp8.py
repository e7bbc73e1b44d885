"""Workload FP8 (issue 17, prepared for a GPU with FP8 tensor cores): FP8 vs BF16 inference of vit_tiny and the cnn.

Trains each model centrally on MNIST-10k's train split (plain PyTorch, ``--epochs``, SGD
momentum 0.9; fed8's models and data), then on the eval split (2,000 images) measures
accuracy and throughput at ``--batch`` (default 1024) of:

* ``bf16``: the trained model under ``torch.autocast(dtype=torch.bfloat16)``;
* ``fp8``: the same model with every ``nn.Linear`` replaced by
  :class:`fed8.deploy.fp8_linear.Float8Linear` (``float8_e4m3fn`` weights and activations,
  ``torch._scaled_mm``), the rest under the same autocast.

Throughput is images per second over ``--repeats`` timed passes after warm-up, with
``torch.cuda.synchronize()``; the last line is JSON with ``fp8_over_bf16`` per model (target
>= 1.5 for vit_tiny) and the accuracy delta in points. Refuses to time FP8 on a machine
without FP8 tensor cores (``fed8.deploy.fp8_linear.fp8_compute_available``); ``--dry-run``
runs the whole script on CPU with tiny settings to check it end to end (its numbers mean
nothing).

    python bench/gpu_fp8.py                      # on the H200
    python bench/gpu_fp8.py --dry-run            # anywhere, a few seconds
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from q1_ptq import train_central  # the same plain SGD loop as the Q1 benchmark

from fed8.config import DataConfig
from fed8.data import load_splits, to_float
from fed8.deploy.fp8_linear import fp8_compute_available, swap_linears_fp8
from fed8.models import build_model


def train(name: str, x, y, *, epochs: int, lr: float, device: str):
    m = build_model(name, in_channels=1, height=28, width=28, num_classes=10, seed=0).to(device)
    return train_central(m, x, y, epochs=epochs, lr=lr, batch=64)


def run(model, x, *, batch: int, repeats: int, device: str):
    """(logits on x, images per second at ``batch``)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with torch.no_grad(), torch.autocast(device_type=device, dtype=torch.bfloat16):
        logits = torch.cat([model(x[i : i + batch]).float() for i in range(0, len(x), batch)])
        xb = x[:batch] if len(x) >= batch else x.repeat(-(-batch // len(x)), 1, 1, 1)[:batch]
        for _ in range(3):
            model(xb)
        sync()
        t0 = time.perf_counter()
        for _ in range(repeats):
            model(xb)
        sync()
    return logits, repeats * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="vit_tiny,cnn")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny settings: checks the script, not the speed")
    a = ap.parse_args()
    ok, why = fp8_compute_available()
    if a.dry_run:
        device, a.batch, a.repeats, a.epochs, limit = "cpu", 32, 2, 1, 256
    elif not ok:
        raise SystemExit(f"FP8 compute is not available here: {why}. Use --dry-run to check the script.")
    else:
        device, limit = "cuda", None
    print(f"device {device}: {why}", flush=True)
    sp = load_splits(DataConfig())
    x, y = to_float(sp.train.images[:limit]).to(device), sp.train.labels[:limit].to(device)
    ex, ey = to_float(sp.eval.images[:limit]).to(device), sp.eval.labels[:limit].to(device)
    out = {}
    for name in a.models.split(","):
        lr = 0.01 if name == "vit_tiny" else 0.05
        m = train(name, x, y, epochs=a.epochs, lr=lr, device=device)
        lb, tb = run(m, ex, batch=a.batch, repeats=a.repeats, device=device)
        swapped = swap_linears_fp8(m)
        lf, tf = run(m, ex, batch=a.batch, repeats=a.repeats, device=device)
        acc_b, acc_f = float((lb.argmax(1) == ey).float().mean()), float((lf.argmax(1) == ey).float().mean())
        out[name] = {"bf16_images_per_s": tb, "fp8_images_per_s": tf, "fp8_over_bf16": tf / tb,
                     "bf16_accuracy": acc_b, "fp8_accuracy": acc_f, "accuracy_delta_points": 100 * (acc_f - acc_b),
                     "fp8_linears": len(swapped)}
        print(f"{name}: bf16 {tb:.0f} img/s acc {acc_b:.4f}; fp8 {tf:.0f} img/s acc {acc_f:.4f}; "
              f"fp8/bf16 {tf / tb:.2f}x", flush=True)
    print(json.dumps({"device": device, "why": why, "batch": a.batch, "dry_run": a.dry_run, "models": out}))


if __name__ == "__main__":
    main()
