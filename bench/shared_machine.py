"""Workload SHARED: a training step on a machine another process is also using.

Times ``--steps`` SGD steps of the ``cnn`` on a batch of 10 MNIST-shaped images with
``--threads`` torch threads, in a fresh process per setting (OpenMP reads its wait policy
once, at start), for OpenMP's default wait policy and ``OMP_WAIT_POLICY=PASSIVE``, next to
each competitor: none, a pure-Python spin loop (one core busy), and another 2-thread torch
job with the default policy (a second run or a test suite). The competitor is started by
this script and stopped after each setting. Prints the median milliseconds per step of each
setting and, last, a JSON line with the default / PASSIVE ratios.

    python bench/shared_machine.py
    python bench/shared_machine.py --threads 2 --steps 60
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

STEP = r"""
import statistics, sys, time, torch
import torch.nn.functional as F
from fed8.models import build_model
torch.set_num_threads(int(sys.argv[1]))
m = build_model("cnn", in_channels=1, height=28, width=28, num_classes=10, seed=0)
opt = torch.optim.SGD(m.parameters(), lr=0.05)
x, y = torch.randn(10, 1, 28, 28), torch.randint(0, 10, (10,))
times = []
for i in range(int(sys.argv[2]) + 5):
    t0 = time.perf_counter()
    loss = F.cross_entropy(m(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    if i >= 5:
        times.append(time.perf_counter() - t0)
print(1000 * statistics.median(times))
"""


COMPETITORS = {
    # one core busy with a pure-Python loop
    "python": "while True: pass",
    # another 2-thread torch job (a second fed8 run, a test suite): default OpenMP policy, like most
    "torch": "import torch\ntorch.set_num_threads(2)\na = torch.randn(256, 256)\nwhile True:\n    a @ a",
}


def step_ms(threads: int, steps: int, policy: str | None, competitor: str | None) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    clean = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    spinner = (subprocess.Popen([sys.executable, "-c", COMPETITORS[competitor]], env=clean)
               if competitor else None)
    try:
        out = subprocess.run([sys.executable, "-c", STEP, str(threads), str(steps)], env=env, check=True,
                             capture_output=True, text=True, timeout=600).stdout
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    return float(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=60)
    a = ap.parse_args()
    rows = {}
    for competitor in (None, "python", "torch"):
        for policy in (None, "PASSIVE"):
            name = f"{competitor or 'quiet'} / {policy or 'default'}"
            rows[name] = step_ms(a.threads, a.steps, policy, competitor)
            print(f"competitor {competitor or 'none':7} wait policy {policy or 'default':8} {rows[name]:8.2f} ms/step",
                  flush=True)
    ratios = {c: rows[f"{c} / default"] / rows[f"{c} / PASSIVE"] for c in ("quiet", "python", "torch")}
    print(json.dumps({"threads": a.threads, "steps": a.steps, "ms_per_step": rows, "default_over_passive": ratios}))


if __name__ == "__main__":
    main()
