"""Workload SHARED: training on a machine another process is also using (OpenMP wait policy).

Part ``step``: times ``--steps`` SGD steps of the ``cnn`` on a batch of 10 MNIST-shaped
images with ``--threads`` torch threads, in a fresh process per setting (OpenMP reads its
wait policy once, when torch loads it), with libgomp's default policy and with
``OMP_WAIT_POLICY=PASSIVE`` (what the ``fed8`` command sets), next to each competitor:
none; a pure-Python spin loop (one core busy); a 2-thread torch matmul loop (always busy);
another 2-thread training loop with the default policy; the same with ``PASSIVE`` (e.g.
another ``fed8`` run). Part ``run``: a short ``fed8.run`` (S8-sized: 100 clients of 8
images, 3 rounds, no quantize stage; the same launcher for both policies, ``PASSIVE`` being
what the ``fed8`` command sets and the default what fed8 ran with before; ``--parallel``: the
``run.parallel_clients`` values to run, default 1, one client after another) next to nothing
and next to each training loop. Competitors are started by this script and stopped after
each setting. The last line is JSON.

    python bench/shared_machine.py                       # both parts
    python bench/shared_machine.py --part step --threads 2 --steps 60
    python bench/shared_machine.py --part step --policies default,PASSIVE,spin=10000
    python bench/shared_machine.py --part run --parallel 0,1   # parallel clients against one by one
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

STEP = r"""
import statistics, sys, time, torch
import torch.nn.functional as F
from fed8.models import build_model
torch.set_num_threads(int(sys.argv[1]))
m = build_model("cnn", in_channels=1, height=28, width=28, num_classes=10, seed=0)
opt = torch.optim.SGD(m.parameters(), lr=0.05)
x, y = torch.randn(10, 1, 28, 28), torch.randint(0, 10, (10,))
times = []
steps = int(sys.argv[2])
i = 0
while steps == 0 or i < steps + 5:
    t0 = time.perf_counter()
    loss = F.cross_entropy(m(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    if i >= 5:
        times.append(time.perf_counter() - t0)
    i += 1
print(1000 * statistics.median(times))
"""

COMPETITORS = {
    "python spin loop": ([sys.executable, "-c", "while True: pass"], None),
    "torch matmul loop": ([sys.executable, "-c", "import torch\ntorch.set_num_threads(2)\na = torch.randn(256, 256)\n"
                           "while True:\n    a @ a"], None),
    "training loop, default policy": ([sys.executable, "-c", STEP, "2", "0"], None),
    "training loop, PASSIVE": ([sys.executable, "-c", STEP, "2", "0"], "PASSIVE"),
}

RUN_SETS = ["data.subset=800", "data.partition=iid", "data.num_clients=100", "data.test_fraction=0.0",
            "train.rounds=3", "train.fraction=1.0", "train.batch_size=10", "eval.every=0", "run.threads=2",
            "quantize.enabled=false", "run.client_batching=off"]


def _env(policy: str | None) -> dict[str, str]:
    """``None``: libgomp's default; ``"PASSIVE"`` / ``"ACTIVE"``: OMP_WAIT_POLICY; ``"spin=N"``: GOMP_SPINCOUNT=N."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if policy and policy.startswith("spin="):
        env["GOMP_SPINCOUNT"] = policy[5:]
    elif policy:
        env["OMP_WAIT_POLICY"] = policy
    return env


def _next_to(competitor: str | None, cmd: list[str], env: dict[str, str]) -> str:
    spinner = None
    if competitor:
        argv, policy = COMPETITORS[competitor]
        spinner = subprocess.Popen(argv, env=_env(policy), stdout=subprocess.DEVNULL)
    try:
        return subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=1200).stdout
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()


def part_step(threads: int, steps: int, policies: list[str | None]) -> dict:
    rows = {}
    for competitor in (None, *COMPETITORS):
        for policy in policies:
            out = _next_to(competitor, [sys.executable, "-c", STEP, str(threads), str(steps)], _env(policy))
            ms = float(out.strip().splitlines()[-1])
            rows[f"{competitor or 'none'} / {policy or 'default'}"] = round(ms, 2)
            print(f"competitor {competitor or 'none':30} our policy {policy or 'default':8} {ms:8.2f} ms/step",
                  flush=True)
    return rows


def part_run(policies: list[str | None], parallel: list[int]) -> dict:
    rows = {}
    code = "import sys, fed8; fed8.run(fed8.load_config(None, sys.argv[1:]), report=False)"
    with tempfile.TemporaryDirectory() as tmp:
        for competitor in (None, "training loop, PASSIVE", "training loop, default policy"):
            for policy in policies:
                for p in parallel:
                    t0 = time.perf_counter()
                    _next_to(competitor, [sys.executable, "-c", code, *RUN_SETS, f"run.parallel_clients={p}",
                                          f"run.out={tmp}/{len(rows)}"], _env(policy))
                    s = time.perf_counter() - t0
                    rows[f"{competitor or 'none'} / {policy or 'default'} / parallel_clients={p}"] = round(s, 1)
                    print(f"fed8 run next to {competitor or 'nothing':30} our policy {policy or 'default':8} "
                          f"parallel_clients={p} {s:7.1f} s", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=("step", "run", "all"), default="all")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--policies", default="default,PASSIVE",
                    help="comma-separated: default, PASSIVE, ACTIVE, spin=N (GOMP_SPINCOUNT)")
    ap.add_argument("--parallel", default="1",
                    help="part run: comma-separated run.parallel_clients values (0 = auto: 2 clients at a time of 1 "
                         "torch thread each; 1 = one by one)")
    a = ap.parse_args()
    policies = [None if p == "default" else p for p in a.policies.split(",")]
    result = {"threads": a.threads, "steps": a.steps}
    if a.part in ("step", "all"):
        result["ms_per_step"] = part_step(a.threads, a.steps, policies)
    if a.part in ("run", "all"):
        result["run_seconds"] = part_run(policies, [int(p) for p in a.parallel.split(",")])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
