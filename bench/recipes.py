"""Workload RECIPES: training recipes on the default run, accuracy and time (`train.augment`, `train.lr_schedule`).

Part ``augment``: the default ``fed8 run`` (MNIST-10k bundled, ``cnn``, 20 clients,
Dirichlet(0.5), 20 rounds of 2 local epochs) and the same on 2,000 training images (100 per
client: fewer images, where augmentation is meant to help), each without augmentation and
with random crops (``crop``: padding 3 by default on 28x28 images, and 2). Flips are left
out: a mirrored digit is another digit.

Part ``lr``: the default run with the client learning rate constant (0.05), decayed by 0.95
per round (0.019 in round 20), and cosine-annealed over the 20 rounds; and constant and
cosine from twice the rate (0.1).

Part ``scaffold``: FedAvg, SCAFFOLD (``train.scaffold``) and FedProx (mu 0.01) where the
clients drift: 5 local epochs at lr 0.01 (momentum 0.9, the default), on data far from IID:
Dirichlet(0.1) over the labels (``dir0.1``), and two label-sorted shards per client
(``shards2``: most clients hold two digits).

Part ``server``: the default run under each server optimizer (``server.strategy``): FedAvg,
FedAvgM (server momentum 0.9, lr 1), and FedAdam, FedYogi and FedAdagrad (Reddi et al. 2021) at
server learning rates 1, 0.1, 0.01 and 0.001, and FedAdagrad also at 0.3 and 0.03 (the grid
behind ``server.lr = 0``'s choice for the adaptive ones).

Part ``fednova``: FedAvg against FedNova's normalized averaging (``server.fednova``) on the
default run and on Dirichlet(0.1), where client sizes, and so local step counts, differ most.

Part ``feddyn``: FedAvg against FedDyn (``train.feddyn_alpha`` 0.01 and 0.1) where clients drift:
SCAFFOLD's setting (5 local epochs at lr 0.01) on two label shards per client and on Dirichlet(0.1).

Part ``unequal``: unequal local work (``train.local_epochs_min``: each client draws its epochs
every round), as in FedNova's experiments (Wang et al. 2020: 2 to 5 epochs); FedAvg, FedNova,
FedProx (mu 0.01), SCAFFOLD and FedDyn (alpha 0.01), on Dirichlet(0.1) at SCAFFOLD's drift rate
(lr 0.01), 2 to 5 epochs; and FedAvg with 5 epochs for every client (``fedavg, equal``).

Per setting and seed: final eval accuracy, its mean over the last 3 evaluated rounds (``last3``:
non-IID runs swing from round to round), the mean client accuracy, seconds. The quantize
stage is off (neither recipe touches it). Runs are interleaved by seed so that a busy
moment of the machine hits every setting alike.

    python bench/recipes.py                      # part augment, seeds 0 and 1
    python bench/recipes.py --part augment --seeds 2 3 --data full
    python bench/recipes.py --part lr --seeds 0 1
    python bench/recipes.py --part lr --only "cosine lr 0.1" "constant lr 0.1"
    python bench/recipes.py --part scaffold --seeds 0 1 --rounds 12
    python bench/recipes.py --part server --seeds 0
    python bench/recipes.py --part fednova --seeds 0 1
    python bench/recipes.py --part fednova --data dir0.1 --rounds 12 --extra train.local_epochs=5 train.lr=0.01
    python bench/recipes.py --part feddyn --seeds 0 1 --rounds 12
    python bench/recipes.py --part unequal --seeds 0 1 --rounds 12
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import fed8  # noqa: E402

DATA = {"full": [], "2k": ["data.subset=2000"], "dir0.1": ["data.alpha=0.1"],
        "shards2": ["data.partition=shards", "data.shards_per_client=2"]}
PARTS = {
    "augment": {"none": ["train.augment=none"], "crop": ["train.augment=crop"],
                "crop pad 2": ["train.augment=crop", "train.augment_pad=2"]},
    "lr": {"constant": ["train.lr_schedule=constant"],
           "exp 0.95": ["train.lr_schedule=exponential", "train.lr_decay=0.95"],
           "cosine": ["train.lr_schedule=cosine"],
           "constant lr 0.1": ["train.lr_schedule=constant", "train.lr=0.1"],
           "cosine lr 0.1": ["train.lr_schedule=cosine", "train.lr=0.1"]},
    "scaffold": {"fedavg": ["train.scaffold=false"], "scaffold": ["train.scaffold=true"],
                 "fedprox 0.01": ["train.prox_mu=0.01"]},
    "fednova": {"fedavg": ["server.fednova=false"], "fednova": ["server.fednova=true"]},
    "unequal": {"fedavg, equal": ["train.local_epochs_min=0"], "fedavg": [], "fednova": ["server.fednova=true"],
                "fedprox 0.01": ["train.prox_mu=0.01"],
                "scaffold": ["train.scaffold=true"], "feddyn 0.01": ["train.feddyn_alpha=0.01"]},
    "feddyn": {"fedavg": ["train.feddyn_alpha=0"], "feddyn 0.01": ["train.feddyn_alpha=0.01"],
               "feddyn 0.1": ["train.feddyn_alpha=0.1"]},
    "server": {"fedavg": ["server.strategy=fedavg"],
               "fedavgm lr 1": ["server.strategy=fedavgm", "server.lr=1.0"],
               **{f"{s} lr {lr}": [f"server.strategy={s}", f"server.lr={lr}"]
                  for s in ("fedadam", "fedyogi", "fedadagrad") for lr in ("1.0", "0.1", "0.01", "0.001")},
               **{f"fedadagrad lr {lr}": ["server.strategy=fedadagrad", f"server.lr={lr}"] for lr in ("0.3", "0.03")}},
}
# Part scaffold trains where clients drift: 5 local epochs (65 steps of the default 400-image client), lr 0.01.
PART_BASE = {"scaffold": ["train.local_epochs=5", "train.lr=0.01"], "feddyn": ["train.local_epochs=5", "train.lr=0.01"],
             "unequal": ["train.local_epochs=5", "train.local_epochs_min=2", "train.lr=0.01"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=sorted(PARTS), default="augment")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--data", nargs="+", choices=sorted(DATA), default=None,
                    help="default: full and 2k for part augment, full for part lr")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--only", nargs="+", metavar="SETTING", help="run only these settings of the part (by name)")
    ap.add_argument("--extra", nargs="+", default=[], metavar="KEY=VALUE", help="more settings for every run")
    ap.add_argument("--scaffold-steps", choices=("reach", "plain"), default="reach",
                    help="ablation: option II divides by the steps' reach under momentum (fed8's) or by K (plain)")
    args = ap.parse_args()
    if args.scaffold_steps == "plain":  # both sides (client and server) look the function up at call time
        import fed8.federated.scaffold as scaffold

        scaffold.effective_steps = lambda steps, momentum: float(max(steps, 0))
    variants = {k: v for k, v in PARTS[args.part].items() if not args.only or k in args.only}
    data_sets = args.data or {"augment": ["full", "2k"], "scaffold": ["dir0.1", "shards2"],
                                 "fednova": ["full", "dir0.1"], "feddyn": ["shards2", "dir0.1"],
                                 "unequal": ["dir0.1"]}.get(args.part, ["full"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for data in data_sets:
            for seed in args.seeds:
                for name, sets in variants.items():
                    cfg = fed8.load_config(None, PART_BASE.get(args.part, []) + DATA[data] + args.extra + sets + [
                        f"run.seed={seed}", f"train.rounds={args.rounds}", "quantize.enabled=false"])
                    t0 = time.perf_counter()
                    r = fed8.run(cfg, out=Path(tmp) / f"{data}-{seed}-{name}", report=False)
                    evals = [m["eval_accuracy"] for m in r.metrics if m.get("eval_accuracy") is not None]
                    row = dict(data=data, seed=seed, setting=name, eval_accuracy=r.final["eval_accuracy"],
                               last3=round(statistics.mean(evals[-3:]), 4),
                               client_accuracy=r.final.get("client_accuracy_mean"),
                               seconds=round(time.perf_counter() - t0, 1))
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print(f"\n{'data':<7} {args.part:<12} {'eval acc (mean over seeds)':>27} {'last 3 rounds':>14} {'seconds':>8}")
    for data in data_sets:
        for name in variants:
            sel = [r for r in rows if r["data"] == data and r["setting"] == name]
            accs = [r["eval_accuracy"] for r in sel]
            print(f"{data:<7} {name:<12} {statistics.mean(accs):>20.4f} ({', '.join(f'{a:.4f}' for a in accs)})"
                  f" {statistics.mean(r['last3'] for r in sel):>14.4f} {statistics.mean(r['seconds'] for r in sel):>8.1f}")


if __name__ == "__main__":
    main()
