"""Workload WIRE: accuracy vs uplink bytes for every codec, with and without error feedback.

MNIST-10k (bundled), `cnn`, 50 clients, Dirichlet(0.5), 20 rounds, otherwise fed8's
defaults (fraction 0.5, 2 local epochs, batch 32, lr 0.05, FedAvg); downlink float32.
Each configuration is one `fed8.run` (same seed: same data, sampling and init). Prints
a table (final eval accuracy, total uplink bytes, ratio to float32) and writes
`accuracy vs cumulative uplink bytes` to --plot.

    python bench/wire.py                                  # all codecs, ~30 min on 2 cores
    python bench/wire.py --only float32 int8 float8_e4m3fn topk+ef
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import fed8

CONFIGS = {
    "float32": [], "float16": ["compression.uplink=float16"], "bfloat16": ["compression.uplink=bfloat16"],
    "int8": ["compression.uplink=int8"], "int8+ef": ["compression.uplink=int8", "compression.error_feedback=true"],
    "int8-sr": ["compression.uplink=int8", "compression.rounding=stochastic"],
    "float8_e4m3fn": ["compression.uplink=float8_e4m3fn"],
    "float8_e4m3fn+ef": ["compression.uplink=float8_e4m3fn", "compression.error_feedback=true"],
    "float8_e5m2": ["compression.uplink=float8_e5m2"],
    "float8_e5m2+ef": ["compression.uplink=float8_e5m2", "compression.error_feedback=true"],
    "topk": ["compression.uplink=topk", "compression.topk_fraction=0.1"],
    "topk+ef": ["compression.uplink=topk", "compression.topk_fraction=0.1", "compression.error_feedback=true"],
}
BASE = ["data.num_clients=50", "data.partition=dirichlet", "data.alpha=0.5", "train.rounds=20",
        "quantize.enabled=false", "eval.every=1"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--plot", default="docs/wire.png")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    results = {}
    for name in args.only:
        t0 = time.time()
        cfg = fed8.load_config(None, BASE + [f"run.threads={args.threads}"] + CONFIGS[name])
        with tempfile.TemporaryDirectory(prefix="fed8-wire-") as tmp:
            res = fed8.run(cfg, out=f"{tmp}/run", report=False)
        rows = res.metrics
        cum, curve = 0, []
        for r in rows:
            cum += r["uplink_bytes"]
            curve.append((cum, r["eval_accuracy"]))
        results[name] = {"final_accuracy": res.final["eval_accuracy"], "uplink_bytes": res.summary["total_uplink_bytes"],
                         "ratio": res.summary["uplink_ratio_to_float32"], "curve": curve, "seconds": time.time() - t0}
        print(f"{name:18} acc {results[name]['final_accuracy']:.4f}  uplink {results[name]['uplink_bytes']:>14,d} B  "
              f"{results[name]['ratio']:.4f}x float32  ({results[name]['seconds']:.0f} s)", flush=True)
    base = results.get("float32", {}).get("final_accuracy")
    print("\n| codec | final accuracy | delta vs float32 (points) | uplink bytes | vs float32 |\n|---|---:|---:|---:|---:|")
    for name, r in results.items():
        delta = f"{100 * (r['final_accuracy'] - base):+.2f}" if base is not None else "-"
        print(f"| {name} | {r['final_accuracy']:.4f} | {delta} | {r['uplink_bytes']:,} | {r['ratio']:.4f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in results.items():
        xs, ys = zip(*r["curve"])
        ax.plot(xs, ys, label=name, linestyle="--" if name.endswith("+ef") else "-")
    ax.set_xscale("log")
    ax.set_xlabel("cumulative uplink bytes (log)")
    ax.set_ylabel("eval accuracy")
    ax.set_title("MNIST-10k, cnn, 50 clients, Dirichlet(0.5), 20 rounds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)
    print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
