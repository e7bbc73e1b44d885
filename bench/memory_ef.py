"""Memory of error feedback with many clients: peak RSS of a 1000-client run, with and without it.

MNIST-10k, `cnn` (6.65 MB of float32 per residual), 1000 clients (8 images each), 10%
sampled per round, `--rounds` rounds, int8 uplink. Each setting runs in a fresh
subprocess; the peak resident set size (ru_maxrss) is reported. Residuals live on disk
in the run directory, so RAM should not grow with clients x model size (which would be
6.65 GB here); disk holds one residual file per client that has been sampled.

    python bench/memory_ef.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

CHILD = r"""
import json, resource, sys, pathlib
import fed8
ef, rounds, out = sys.argv[1] == "1", int(sys.argv[2]), sys.argv[3]
cfg = fed8.load_config(None, ["data.num_clients=1000", "data.partition=iid", "train.fraction=0.1",
                              f"train.rounds={rounds}", "train.local_epochs=1", "eval.every=0",
                              "quantize.enabled=false", "compression.uplink=int8", "run.threads=2",
                              f"compression.error_feedback={'true' if ef else 'false'}"])
res = fed8.run(cfg, out=out, report=False)
files = list(pathlib.Path(out, "residuals").glob("*.safetensors"))
print(json.dumps({"error_feedback": ef, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "residual_files": len(files), "residual_disk_mb": sum(f.stat().st_size for f in files) / 2**20,
                  "accuracy": res.final["eval_accuracy"]}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    out = {}
    for ef in ("0", "1"):
        with tempfile.TemporaryDirectory(prefix="fed8-mem-") as tmp:
            r = subprocess.run([sys.executable, "-c", CHILD, ef, str(args.rounds), f"{tmp}/run"],
                               capture_output=True, text=True, check=True)
            out[ef] = json.loads(r.stdout.strip().splitlines()[-1])
            print(out[ef], flush=True)
    print(f"peak RSS with error feedback - without: {out['1']['peak_rss_mb'] - out['0']['peak_rss_mb']:.0f} MB "
          f"(all residuals in RAM would be {out['1']['residual_disk_mb']:.0f} MB after {args.rounds} rounds, "
          f"{1000 * 6.65:.0f} MB once every client has one)")


if __name__ == "__main__":
    main()
