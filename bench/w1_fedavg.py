"""Workloads W1 and S8: fed8 FedAvg vs a plain PyTorch loop doing the same training work.

W1: MNIST-10k train split (8000 images), 100 IID clients of 80 images, every client every
round, E=1, B=10, plain SGD lr 0.05, model `cnn`, 5 rounds. S8: the same with 800 train
images (8 per client), where per-client overhead dominates. fed8 runs in each client
mode asked for (``--modes sequential,batched``: ``run.client_batching = off`` / ``auto``),
each against its own interleaved plain loop. Both implementations run
in this one process, alternating round by round (fed8 round r, then plain round r),
so machine noise hits both alike. fed8's time per round is everything `fed8.run`
does between rounds: sampling, client training, aggregation, metrics and checkpoint
writes (and evaluation on the last round, which the plain loop also does).

Prints seconds per round (median of rounds 2..R) and the ratio fed8 / plain; the
last line of each thread setting is JSON.

    python bench/w1_fedavg.py                 # W1, threads 1 and 2, sequential clients
    python bench/w1_fedavg.py --workload S8 --threads 2 --modes sequential,batched
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

import fed8
from fed8._rng import INIT, derive_seed
from fed8.config import DataConfig
from fed8.data import load_splits, to_float
from fed8.models import build_model


def plain_round(model, global_state, xs, ys, gen, *, lr, bs):
    """One FedAvg round without any framework: sequential clients, weighted average."""
    total = {k: torch.zeros_like(v) for k, v in global_state.items()}
    n = 0
    for x, y in zip(xs, ys):
        model.load_state_dict(global_state)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        perm = torch.randperm(x.shape[0], generator=gen)
        for i in range(0, x.shape[0], bs):
            idx = perm[i : i + bs]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            for k, v in model.state_dict().items():
                total[k].add_(v, alpha=x.shape[0])
        n += x.shape[0]
    return {k: v / n for k, v in total.items()}


def bench(threads: int, rounds: int, clients: int, workload: str = "W1", mode: str = "sequential") -> dict:
    torch.set_num_threads(threads)
    subset = 800 if workload == "S8" else 0
    cfg = fed8.load_config(None, [f"data.subset={subset}",
        "run.client_batching=" + ("auto" if mode == "batched" else "off"),
        "data.partition=iid", f"data.num_clients={clients}", "data.test_fraction=0.0",
        f"train.rounds={rounds}", "train.fraction=1.0", "train.local_epochs=1", "train.batch_size=10",
        "train.lr=0.05", "train.momentum=0.0", "eval.every=0", f"run.threads={threads}",
    ])
    # plain loop's data: the same 8000 images dealt to the same number of clients
    train = load_splits(DataConfig(subset=subset)).train
    ev = load_splits(DataConfig()).eval
    x, y = to_float(train.images), train.labels
    parts = torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).chunk(clients)
    xs, ys = [x[p].clone() for p in parts], [y[p].clone() for p in parts]
    model = build_model("cnn", in_channels=1, height=28, width=28, num_classes=10,
                        seed=derive_seed(0, INIT))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    ex = to_float(ev.images)

    fed8_s, plain_s = [], []
    mark = [time.perf_counter()]

    def after_fed8_round(rnd, row):
        nonlocal state
        fed8_s.append(time.perf_counter() - mark[0])
        t0 = time.perf_counter()
        state = plain_round(model, state, xs, ys, gen, lr=0.05, bs=10)
        if rnd == rounds:  # same final evaluation as fed8 does
            model.load_state_dict(state)
            model.eval()
            with torch.no_grad():
                for i in range(0, ex.shape[0], 500):
                    model(ex[i : i + 500])
        plain_s.append(time.perf_counter() - t0)
        mark[0] = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        t_start = time.perf_counter()
        mark[0] = t_start
        res = fed8.run(cfg, out=f"{tmp}/run", on_round=after_fed8_round, report=False)
    f, p = statistics.median(fed8_s[1:]), statistics.median(plain_s[1:])
    for r in range(rounds):
        print(f"{workload} {mode} threads={threads} round {r + 1}: fed8 {fed8_s[r]:.3f} s, plain {plain_s[r]:.3f} s")
    print(f"{workload} {mode} threads={threads}: fed8 {f:.3f} s/round, plain {p:.3f} s/round, ratio {f / p:.3f} "
          f"(final fed8 eval accuracy {res.final['eval_accuracy']:.4f})")
    return {"workload": workload, "mode": mode, "threads": threads, "fed8_s_per_round": round(f, 4),
            "plain_s_per_round": round(p, 4), "ratio": round(f / p, 4),
            "eval_accuracy": res.final["eval_accuracy"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--workload", choices=("W1", "S8"), default="W1")
    ap.add_argument("--modes", default="sequential", help="comma-separated: sequential, batched")
    a = ap.parse_args()
    if a.rounds < 2:
        ap.error("--rounds must be >= 2 (round 1 is warm-up)")
    modes = [m.strip() for m in a.modes.split(",")]
    for t in (int(s) for s in a.threads.split(",")):
        results = {m: bench(t, a.rounds, a.clients, a.workload, m) for m in modes}
        for r in results.values():
            print(json.dumps(r), flush=True)
        default = results.get("sequential", next(iter(results.values())))  # the default mode: client_batching off
        print(json.dumps({**default, "ratio": default["ratio"], "modes": {m: r["ratio"] for m, r in results.items()}}),
              flush=True)


if __name__ == "__main__":
    main()
