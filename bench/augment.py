"""Workload AUGMENT: what client-side data augmentation (``train.augment``) does to accuracy and time.

The default ``fed8 run`` (MNIST-10k bundled, ``cnn``, 20 clients, Dirichlet(0.5), 20 rounds of
2 local epochs) and the same on 2,000 training images (100 per client: fewer images, where
augmentation is meant to help), each without augmentation and with random crops (``crop``:
padding 3 by default on 28x28 images, and 2). Flips are left out: a mirrored digit is another
digit. Per setting and seed: final eval accuracy, the mean client accuracy, training seconds.
The quantize stage is off (augmentation does not touch it). Runs are interleaved by seed so
that a busy moment of the machine hits every setting alike.

    python bench/augment.py                      # seeds 0 and 1
    python bench/augment.py --seeds 0 --data full
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import fed8  # noqa: E402

DATA = {"full": [], "2k": ["data.subset=2000"]}
AUGMENTS = {"none": ["train.augment=none"], "crop": ["train.augment=crop"],
            "crop pad 2": ["train.augment=crop", "train.augment_pad=2"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--data", nargs="+", choices=sorted(DATA), default=["full", "2k"])
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for data in args.data:
            for seed in args.seeds:
                for name, sets in AUGMENTS.items():
                    cfg = fed8.load_config(None, DATA[data] + sets + [
                        f"run.seed={seed}", f"train.rounds={args.rounds}", "quantize.enabled=false"])
                    t0 = time.perf_counter()
                    r = fed8.run(cfg, out=Path(tmp) / f"{data}-{seed}-{name}", report=False)
                    row = dict(data=data, seed=seed, augment=name, eval_accuracy=r.final["eval_accuracy"],
                               client_accuracy=r.final.get("client_accuracy_mean"),
                               seconds=round(time.perf_counter() - t0, 1))
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print(f"\n{'data':<5} {'augment':<11} {'eval acc (mean over seeds)':>27} {'seconds':>8}")
    for data in args.data:
        for name in AUGMENTS:
            sel = [r for r in rows if r["data"] == data and r["augment"] == name]
            accs = [r["eval_accuracy"] for r in sel]
            print(f"{data:<5} {name:<11} {statistics.mean(accs):>20.4f} ({', '.join(f'{a:.4f}' for a in accs)})"
                  f" {statistics.mean(r['seconds'] for r in sel):>8.1f}")


if __name__ == "__main__":
    main()
