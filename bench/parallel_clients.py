"""Parallel clients under both OpenMP wait policies: W1 and S8, fed8's default against one by one.

For each workload and policy, one run of ``bench/w1_fedavg.py --modes default,one-by-one``
(fed8 with ``run.parallel_clients`` automatic, i.e. 2 clients at a time on 1 torch thread each
with 2 threads, and with ``run.parallel_clients = 1``, each against its own interleaved plain
loop) in a fresh process whose environment has the policy, since libgomp reads it once when
torch loads: ``PASSIVE`` (what the ``fed8`` command sets) and libgomp's default (threads spin
at barriers; the plain loop as most users run it). Policies alternate ``--repeats`` times.
Prints each run's seconds per round and ratios; the last line is JSON.

    python bench/parallel_clients.py --workloads W1,S8 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
POLICIES = {"PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"}, "default": {}}


def one(workload: str, policy: str, rounds: int, threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(POLICIES[policy])
    proc = subprocess.run([sys.executable, str(HERE / "w1_fedavg.py"), "--workload", workload, "--threads", str(threads),
                           "--rounds", str(rounds), "--modes", "default,one-by-one"],
                          capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"w1_fedavg.py failed: {proc.stderr[-2000:]}")
    rows = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    by_mode = {r["mode"]: r for r in rows if "mode" in r and "modes" not in r}
    out = {"workload": workload, "policy": policy}
    for mode, r in by_mode.items():
        out[mode] = {k: r[k] for k in ("fed8_s_per_round", "plain_s_per_round", "ratio", "eval_accuracy", "peak_rss_mb")}
    out["default_over_one_by_one"] = round(by_mode["default"]["fed8_s_per_round"]
                                           / by_mode["one-by-one"]["fed8_s_per_round"], 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default="W1,S8")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args()
    rows = []
    for _ in range(a.repeats):
        for workload in a.workloads.split(","):
            for policy in POLICIES:
                r = one(workload.strip(), policy, a.rounds, a.threads)
                rows.append(r)
                print(f"{r['workload']} {policy:8}: default {r['default']['fed8_s_per_round']:.3f} s "
                      f"(ratio {r['default']['ratio']:.3f}), one by one {r['one-by-one']['fed8_s_per_round']:.3f} s "
                      f"(ratio {r['one-by-one']['ratio']:.3f}), default / one by one {r['default_over_one_by_one']:.3f}",
                      flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
