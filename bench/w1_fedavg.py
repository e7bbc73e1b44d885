"""Workloads W1 and S8: fed8 FedAvg vs a plain PyTorch loop doing the same training work.

W1: MNIST-10k train split (8000 images), 100 IID clients of 80 images, every client every
round, E=1, B=10, plain SGD lr 0.05, model `cnn`, 5 rounds. S8: the same with 800 train
images (8 per client), where per-client overhead dominates. fed8 runs in each client
mode asked for (``--modes default,one-by-one,batched,vmap``: ``default`` is fed8's defaults,
``run.client_batching = off`` with ``run.parallel_clients`` automatic (clients trained several at
a time on threads, one torch thread each, where there are several threads); ``one-by-one`` the
same with ``run.parallel_clients = 1``; ``batched`` / ``vmap``: ``run.client_batching = auto`` /
``on``; ``bfloat16``: the default with ``train.precision = bfloat16``), each against its own
interleaved plain loop (float32). Both implementations run
in this one process, alternating round by round (fed8 round r, then plain round r),
so machine noise hits both alike. fed8's time per round is everything `fed8.run`
does between rounds: sampling, client training, aggregation, metrics and checkpoint
writes (and evaluation on the last round, which the plain loop also does). The quantize stage
that ends a `fed8 run` is off: the plain loop and the peers have none (it is measured in Q1
and DEFAULT RUN), and it would put ONNX Runtime's and LiteRT's memory in fed8's peak RSS.

Prints seconds per round (median of rounds 2..R) and the ratio fed8 / plain; the
last line of each thread setting is JSON.

    python bench/w1_fedavg.py                 # W1, threads 1 and 2, fed8's defaults
    python bench/w1_fedavg.py --workload S8 --threads 2 --modes default,one-by-one,batched
    python bench/w1_fedavg.py --threads 2 --modes default,one-by-one --peers flower,pfl,pfl-2proc
    python bench/w1_fedavg.py --threads 16 --modes default,batched --devices cpu,cuda   # on a GPU machine

Peers (``--peers``): each runs in its own venv (``bash bench/peers/make_venvs.sh``) and
process(es), after fed8's columns, on the same shards, initial weights and
hyperparameters, and interleaves its own plain-loop round after each of its rounds in the
same process (bench/peers/); its ratio is to that plain loop. Peers run with libgomp's default
wait policy (as their users run them) even when this process has ``OMP_WAIT_POLICY`` set, e.g.
``OMP_WAIT_POLICY=PASSIVE python bench/w1_fedavg.py ...`` for fed8 as the ``fed8`` command runs
it; compare seconds per round across columns then. ``--command-malloc`` also applies the other
process setting the ``fed8`` command makes before it runs (``fed8._process.tune_malloc``: glibc's
mmap and trim thresholds at 1 GiB, so freed buffers are reused instead of re-faulted) to this
process, i.e. to fed8 and the plain loop alike; the peers' processes never get it. Peak RSS: the
fed8 rows give this process's peak so far (fed8 and the plain loop); a peer row the peak of its process
tree (Ray's or torchrun's workers included).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import fed8
from fed8._process import MALLOC, tune_malloc
from fed8._rng import INIT, derive_seed
from fed8.config import DataConfig
from fed8.data import load_splits, to_float
from fed8.models import build_model

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))
from _common import plain_round, save_workload  # noqa: E402

#: peer column -> (venv, command after the venv's bin/): bench/peers/make_venvs.sh makes the venvs
PEERS = {
    "flower": (".venv-flower", ["python", str(HERE / "peers" / "flower_sim.py")]),
    "pfl": (".venv-pfl", ["python", str(HERE / "peers" / "pfl_sim.py")]),
    "fed8-2proc": ("../../.venv", ["torchrun", "--nnodes", "1", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                                   "--master-port", "29614", str(HERE / "peers" / "fed8_dist.py")]),
    "pfl-2proc": (".venv-pfl", ["torchrun", "--nnodes", "1", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                                "--master-port", "29613", str(HERE / "peers" / "pfl_sim.py")]),
}


def plain_data(clients: int, workload: str):
    """The plain loop's (and the peers') data: the same train images dealt to the same number of clients."""
    train = load_splits(DataConfig(subset=800 if workload == "S8" else 0)).train
    ev = load_splits(DataConfig()).eval
    x, y = to_float(train.images), train.labels
    parts = torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).chunk(clients)
    model = build_model("cnn", in_channels=1, height=28, width=28, num_classes=10, seed=derive_seed(0, INIT))
    return ([x[p].clone() for p in parts], [y[p].clone() for p in parts], to_float(ev.images), ev.labels.clone(),
            {k: v.clone() for k, v in model.state_dict().items()})


def run_peer(name: str, threads: int, rounds: int, clients: int, workload: str) -> dict:
    """One peer column in its own venv and process(es); it interleaves its own plain loop (bench/peers/_common)."""
    venv, cmd = PEERS[name]
    bin_dir = HERE / "peers" / venv / "bin"
    if not (bin_dir / "python").exists():
        return {"workload": workload, "column": name, "threads": threads,
                "skipped": f"no {bin_dir.parent}: run bash bench/peers/make_venvs.sh"}
    xs, ys, ex, ey, state = plain_data(clients, workload)
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/workload.pt"
        save_workload(path, xs=xs, ys=ys, ex=ex, ey=ey, state=state, lr=0.05, bs=10, rounds=rounds, workload=workload)
        # a peer runs as its users run it: libgomp's default wait policy, whatever this process was given
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", *MALLOC)}
        env["OMP_NUM_THREADS"] = str(threads)
        proc = subprocess.run([str(bin_dir / cmd[0]), *cmd[1:], "--workload", path, "--threads", str(threads)],
                              capture_output=True, text=True, env=env, timeout=3600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"workload": workload, "column": name, "threads": threads,
                "failed": f"exit {proc.returncode}: {proc.stderr[-800:]}"}
    row = {"workload": workload, **json.loads(lines[-1])}
    for r, (f, p) in enumerate(zip(row["rounds_s"], row["plain_rounds_s"])):
        print(f"{workload} {name} threads={threads} round {r + 1}: {name} {f:.3f} s, plain {p:.3f} s")
    print(f"{workload} {name} threads={threads}: {row['s_per_round']:.3f} s/round, plain {row['plain_s_per_round']:.3f} "
          f"s/round, ratio {row['ratio']:.3f}, peak RSS {row['peak_rss_mb']:.0f} MB "
          f"(final eval accuracy {row['eval_accuracy']:.4f})", flush=True)
    return row


# --modes: the config of each fed8 column
MODES = {"default": ["run.client_batching=off"], "one-by-one": ["run.client_batching=off", "run.parallel_clients=1"],
         "batched": ["run.client_batching=auto"], "vmap": ["run.client_batching=on"],
         "bfloat16": ["run.client_batching=off", "train.precision=bfloat16"]}


def bench(threads: int, rounds: int, clients: int, workload: str = "W1", mode: str = "default",
          device: str = "cpu") -> dict:
    torch.set_num_threads(threads)
    subset = 800 if workload == "S8" else 0
    cfg = fed8.load_config(None, [f"data.subset={subset}", f"run.device={device}", *MODES[mode],
        "data.partition=iid", f"data.num_clients={clients}", "data.test_fraction=0.0",
        f"train.rounds={rounds}", "train.fraction=1.0", "train.local_epochs=1", "train.batch_size=10",
        "train.lr=0.05", "train.momentum=0.0", "eval.every=0", f"run.threads={threads}", "quantize.enabled=false",
    ])
    xs, ys, ex, _, state = plain_data(clients, workload)
    model = build_model("cnn", in_channels=1, height=28, width=28, num_classes=10, seed=derive_seed(0, INIT))
    gen = torch.Generator().manual_seed(1)

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
        print(f"{workload} {mode} {device} threads={threads} round {r + 1}: fed8 {fed8_s[r]:.3f} s, "
              f"plain (cpu) {plain_s[r]:.3f} s")
    print(f"{workload} {mode} {device} threads={threads}: fed8 {f:.3f} s/round, plain {p:.3f} s/round, ratio {f / p:.3f} "
          f"(final fed8 eval accuracy {res.final['eval_accuracy']:.4f})")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # this process so far: fed8 + its plain loop
    return {"workload": workload, "mode": mode, "device": device, "threads": threads, "fed8_s_per_round": round(f, 4),
            "plain_s_per_round": round(p, 4), "ratio": round(f / p, 4),
            "eval_accuracy": res.final["eval_accuracy"], "peak_rss_mb": round(rss, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--workload", choices=("W1", "S8"), default="W1")
    ap.add_argument("--modes", default="default", help=f"comma-separated: {', '.join(MODES)}")
    ap.add_argument("--devices", default="cpu", help="comma-separated run.device values for fed8 (cpu, cuda); the "
                    "plain loop stays on the cpu. With cpu and cuda: fed8's cuda / cpu seconds per round")
    ap.add_argument("--peers", default="", help=f"comma-separated peer columns: {', '.join(PEERS)} "
                    "(their venvs: bash bench/peers/make_venvs.sh)")
    ap.add_argument("--command-malloc", action="store_true", help="this process (fed8 and the plain loop) gets the "
                    "malloc thresholds the fed8 command sets (fed8._process.tune_malloc); peers do not")
    a = ap.parse_args()
    if a.command_malloc:
        print(f"malloc thresholds set in this process: {tune_malloc() or 'none (not glibc, or set by the user)'}")
    peers = [p.strip() for p in a.peers.split(",") if p.strip()]
    if unknown := [p for p in peers if p not in PEERS]:
        ap.error(f"--peers: unknown {', '.join(unknown)}; choose from {', '.join(PEERS)}")
    if a.rounds < 2:
        ap.error("--rounds must be >= 2 (round 1 is warm-up)")
    modes = [m.strip() for m in a.modes.split(",")]
    if unknown := [m for m in modes if m not in MODES]:
        ap.error(f"--modes: unknown {', '.join(unknown)}; choose from {', '.join(MODES)}")
    devices = [d.strip() for d in a.devices.split(",")]
    if devices != ["cpu"]:  # the device comparison: fed8 on each device, each mode; no peers
        for t in (int(s) for s in a.threads.split(",")):
            rows = {(m, d): bench(t, a.rounds, a.clients, a.workload, m, d) for m in modes for d in devices}
            for r in rows.values():
                print(json.dumps(r), flush=True)
            if "cpu" in devices:
                print(json.dumps({"threads": t, "s_per_round_vs_cpu": {
                    f"{m} {d}": round(r["fed8_s_per_round"] / rows[(m, "cpu")]["fed8_s_per_round"], 4)
                    for (m, d), r in rows.items()}}), flush=True)
        return
    for t in (int(s) for s in a.threads.split(",")):
        results = {m: bench(t, a.rounds, a.clients, a.workload, m) for m in modes}
        for r in results.values():
            print(json.dumps(r), flush=True)
        peer_rows = {p: run_peer(p, t, a.rounds, a.clients, a.workload) for p in peers}
        for r in peer_rows.values():
            print(json.dumps(r), flush=True)
        default = results.get("default", next(iter(results.values())))  # fed8's defaults
        print(json.dumps({**default, "ratio": default["ratio"], "modes": {m: r["ratio"] for m, r in results.items()},
                          "peers": {p: r.get("ratio") for p, r in peer_rows.items()}}), flush=True)


if __name__ == "__main__":
    main()
