"""Workload DIST: W1 and S8 with 2 torchrun ranks x 1 thread against 1 process x 2 threads.

The same configs as ``bench/w1_fedavg.py`` (100 IID clients, E=1, B=10, plain SGD lr 0.05, the
``cnn``, every client every round; W1 80 images per client, S8 8), run as the ``fed8``
command: one process with ``run.threads=2``, and ``torchrun --nproc-per-node 2`` with
``run.threads=1`` (rank 0 is the run, rank 1 trains every other sampled client; see
``fed8/federated/distributed.py``). Alternating, ``--repeats`` times. Seconds per round are
the median of rounds 2..R of ``metrics.jsonl``; the last line is JSON.

    python bench/distributed.py --workloads W1,S8 --rounds 5 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def sets(workload: str, rounds: int, threads: int) -> list[str]:
    return [f"data.subset={800 if workload == 'S8' else 0}", "data.partition=iid", "data.num_clients=100",
            "data.test_fraction=0.0", f"train.rounds={rounds}", "train.fraction=1.0", "train.local_epochs=1",
            "train.batch_size=10", "train.lr=0.05", "train.momentum=0.0", "eval.every=0", f"run.threads={threads}",
            "quantize.enabled=false"]


def port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one(mode: str, workload: str, rounds: int, out: Path) -> dict:
    threads = 2 if mode == "1x2" else 1
    args = ["-m", "fed8.cli", "run", "--out", str(out), "--no-report",
            *[a for s in sets(workload, rounds, threads) for a in ("--set", s)]]
    cmd = [sys.executable, *args] if mode == "1x2" else [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
        "--master-port", str(port()), *args]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"mode": mode, "workload": workload, "s_per_round": round(statistics.median(r["seconds"] for r in rows[1:]), 3),
            "eval_accuracy": rows[-1]["eval_accuracy"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default="W1,S8")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for w in a.workloads.split(","):
            for i in range(a.repeats):
                for mode in ("1x2", "2x1"):
                    rows.append(one(mode, w, a.rounds, Path(tmp) / f"{w}-{mode}-{i}"))
                    print(json.dumps(rows[-1]), flush=True)
    summary = {}
    for w in a.workloads.split(","):
        s = {m: statistics.median(r["s_per_round"] for r in rows if r["workload"] == w and r["mode"] == m)
             for m in ("1x2", "2x1")}
        summary[w] = {**s, "ratio_2x1_over_1x2": round(s["2x1"] / s["1x2"], 3)}
    print(json.dumps({"rounds": a.rounds, "repeats": a.repeats, "rows": rows, "summary": summary}))


if __name__ == "__main__":
    main()
