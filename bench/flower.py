"""Workload FLOWER: seconds per round of fed8 on Flower vs a bare Flower app, same nodes, same bytes, same training.

Both run on a local federation started by fed8's launcher (one SuperLink, N SuperNodes,
127.0.0.1, ``flwr==1.42``):

* **fed8**: ``fed8 federation``'s ServerApp and ClientApp (round logic, codecs, run
  directory, checkpoints, evaluation on the server and on every node each round).
* **bare**: a minimal Flower app written the way a Flower user would (``bench/_flower_bare.py``,
  copied into its app folder): the ServerApp sends the float32 model to every node, each
  ClientApp loads its partition (the same ``load_federation`` data), runs the same local
  SGD with a plain PyTorch loop, and replies with its float32 delta (the same byte count as
  fed8's float32 uplink); the server averages with numpy and, on the same rounds as fed8
  (``--eval-every``), asks every node for its local test accuracy.

Seconds per round: median of rounds 2..R (round 1 includes warm-up); startup: from the
launcher's start until round 1 begins. Runs alternate fed8, bare, fed8, bare, ... so both
see the same machine load. The last line is JSON with ``overhead`` = fed8 / bare - 1.

    python bench/flower.py                       # 3 nodes, 4 rounds, 2 repeats, evaluation every round
    python bench/flower.py --eval-every 0        # evaluation after the last round only
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent



def _sets(args) -> list[str]:
    return [f"data.num_clients={args.nodes}", f"train.rounds={args.rounds}", "train.fraction=1.0",
            f"data.subset={args.subset}", f"train.local_epochs={args.epochs}", "run.threads=1",
            "quantize.enabled=false", "compression.uplink=float32", f"model.name={args.model}",
            f"eval.every={args.eval_every}"]


def run_fed8(args, work: Path) -> dict:
    import fed8
    from fed8.flower.launcher import run_federation
    from fed8.rundir import RunDir

    rd = RunDir.create(work / "fed8", fed8.load_config(None, _sets(args)))
    t0 = time.perf_counter()
    run_federation(rd.path, args.nodes, timeout_s=1800)
    total = time.perf_counter() - t0
    secs = [json.loads(x)["seconds"] for x in (rd.path / "metrics.jsonl").read_text().splitlines()]
    return {"per_round": secs, "total": total}


def run_bare(args, work: Path) -> dict:
    import fed8
    from fed8.config import to_toml
    from fed8.flower.launcher import _bin, _stop, app_pyproject, local_federation

    app = work / "bare-app"
    app.mkdir(parents=True)
    (app / "pyproject.toml").write_text(app_pyproject(
        "fed8bare", "a bare Flower app with fed8's training, for bench/flower.py", "_flower_bare:server",
        "_flower_bare:client", ("config", "out")))
    shutil.copy(HERE / "_flower_bare.py", app / "_flower_bare.py")
    cfg_file = work / "bare-config.toml"
    cfg_file.write_text(to_toml(fed8.load_config(None, _sets(args))))
    out = work / "bare-rounds.json"
    t0 = time.perf_counter()
    with local_federation(work / "bare-flwr", args.nodes) as fed:
        p = subprocess.Popen([_bin("flwr"), "run", str(app), "fed8", "--stream", "--run-config",
                              f"config='{cfg_file}' out='{out}'"], env=fed["env"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.STDOUT, start_new_session=True)
        try:
            p.wait(timeout=1800)
        finally:
            _stop([p])
    total = time.perf_counter() - t0
    return {"per_round": json.loads(out.read_text())["seconds"], "total": total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--subset", type=int, default=600, help="training images over all nodes")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--eval-every", type=int, default=1,
                    help="rounds between evaluations on every node (both apps); 0 = the last round only")
    args = ap.parse_args()
    results: dict[str, list[dict]] = {"fed8": [], "bare": []}
    for rep in range(args.repeats):
        for name, fn in (("fed8", run_fed8), ("bare", run_bare)):
            with tempfile.TemporaryDirectory(prefix=f"fed8-bench-{name}-") as d:
                r = fn(args, Path(d))
            r["startup"] = r["total"] - sum(r["per_round"])
            results[name].append(r)
            print(f"repeat {rep + 1} {name}: seconds per round {[round(s, 2) for s in r['per_round']]}, "
                  f"total {r['total']:.1f} s (startup + teardown {r['startup']:.1f} s)", flush=True)

    def med(name: str) -> float:
        return statistics.median(s for r in results[name] for s in r["per_round"][1:])

    summary = {"nodes": args.nodes, "rounds": args.rounds, "repeats": args.repeats, "model": args.model,
               "eval_every": args.eval_every,
               "fed8_s_per_round": med("fed8"), "bare_s_per_round": med("bare"),
               "overhead": med("fed8") / med("bare") - 1,
               "fed8_startup_s": statistics.median(r["startup"] for r in results["fed8"]),
               "bare_startup_s": statistics.median(r["startup"] for r in results["bare"])}
    print(json.dumps(summary))


if __name__ == "__main__":
    sys.exit(main())
