"""Workload DEFAULT: one default ``fed8 run`` (training + quantize stage), before and after a change.

Runs the ``fed8`` command of this checkout and of ``--before REV`` (a ``git archive`` of that
revision, imported through ``PYTHONPATH`` with this environment's packages), alternating,
``--repeats`` times each, with the built-in defaults (``fed8 run`` with no config; the report
is skipped). Prints per run: wall seconds, training seconds (the rounds' ``seconds`` in
metrics.jsonl, evaluation included), the rest (start-up, quantize stage, summary), final eval
accuracy, the mean client accuracy, peak RSS and minor page faults; the last line is JSON.

    python bench/default_run.py --before 77a8196 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one(src: Path, out: Path, extra: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "fed8.cli", "run", "--out", str(out), "--no-report", *extra], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"fed8 run failed: {p.stderr.read().decode()[-2000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = sum(r["seconds"] for r in rows)
    return {"wall_s": round(wall, 1), "train_s": round(train, 1), "rest_s": round(wall - train, 1),
            "eval_accuracy": rows[-1]["eval_accuracy"], "client_accuracy_mean": rows[-1]["client_accuracy_mean"],
            "peak_rss_mb": round(ru.ru_maxrss / 1024), "minor_faults": ru.ru_minflt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, help="git revision to compare against")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    a = ap.parse_args()
    extra = [x for s in a.overrides for x in ("--set", s)]
    results: dict[str, list[dict]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "before.tar"
        subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), a.before, "src"], check=True)
        with tarfile.open(archive) as tf:
            tf.extractall(Path(tmp) / "before", filter="data")
        srcs = {"before": Path(tmp) / "before" / "src", "after": ROOT / "src"}
        for i in range(a.repeats):
            for name in ("before", "after"):
                r = one(srcs[name], Path(tmp) / f"{name}{i}", extra)
                results[name].append(r)
                print(f"{name:6} ({a.before if name == 'before' else 'this checkout'}): {r}", flush=True)
    print(json.dumps({"before": a.before, **results}))


if __name__ == "__main__":
    main()
