"""Column fed8 2 procs: fed8 under ``torchrun --nproc-per-node 2`` (1 thread each), as pfl's multi-process column.

Run by ``bench/w1_fedavg.py --peers fed8-2proc`` with fed8's own venv. Rank 0 is the server
(``fed8.stages.distributed.run_distributed``: each round's clients sharded over the ranks,
their updates summed on rank 0); after each round it runs one plain-loop round with both
threads while rank 1 waits for the next round. The config is W1 / S8 of bench/w1_fedavg.py.
Prints one JSON line from rank 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from _common import PeakTreeRSS, PlainLoop, load_workload, result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", required=True)
    ap.add_argument("--threads", type=int, default=2, help="threads in all (split over the ranks)")
    a = ap.parse_args()
    import fed8
    from fed8.federated.distributed import init_group
    from fed8.stages.distributed import run_distributed, serve_worker

    rank, world = init_group()
    per_rank = max(1, a.threads // world)
    torch.set_num_threads(per_rank)
    if rank != 0:
        serve_worker()
        return
    w = load_workload(a.workload)
    rounds, n = w["rounds"], len(w["xs"])
    cfg = fed8.load_config(None, [
        f"data.subset={800 if w['workload'] == 'S8' else 0}", "run.client_batching=off", "data.partition=iid",
        f"data.num_clients={n}", "data.test_fraction=0.0", f"train.rounds={rounds}", "train.fraction=1.0",
        "train.local_epochs=1", "train.batch_size=10", "train.lr=0.05", "train.momentum=0.0", "eval.every=0",
        f"run.threads={per_rank}", "quantize.enabled=false"])
    plain = PlainLoop(w)
    rss = PeakTreeRSS(root=os.getppid())  # torchrun and its ranks
    seconds, mark = [], [time.perf_counter()]

    def after_round(rnd, row):
        seconds.append(time.perf_counter() - mark[0])
        torch.set_num_threads(a.threads)
        plain.round(rnd)
        torch.set_num_threads(per_rank)
        mark[0] = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        mark[0] = t0
        res = run_distributed(cfg, out=f"{tmp}/run", on_round=after_round, report=False)
        total = time.perf_counter() - t0
    print(json.dumps(result(f"fed8 {world} procs x {per_rank} thread(s)", seconds, plain.seconds,
                            res.final["eval_accuracy"], rss.stop(), total_s=round(total, 1), threads=a.threads)),
          flush=True)


if __name__ == "__main__":
    main()
