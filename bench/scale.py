"""Workload SCALE: seconds per round and peak memory as the clients per round grow (cross-device).

FedAvg on MNIST (``cnn``, E=1, B=8, plain SGD lr 0.05, no local test split, evaluation only
after the last round, no quantize stage), ``--rounds`` rounds, each setting in its own
process (its own peak RSS):

* 100, 300 and 1,000 clients of 8 images, every client every round;
* 1,000 clients of 8 images with 10% participation (100 clients per round);
* 10,000 clients of 1 image, every client every round. MNIST-10k has 8,000 training images,
  so this setting trains on all 10,000 bundled images written to an ``npz`` (its eval split,
  the usual 2,000, overlaps the training images: its accuracy means nothing; time and memory
  are what it measures).

Prints per setting: seconds per round (median of rounds 2..R), seconds per client-round, peak
RSS; the last line is JSON.

    python bench/scale.py                    # all settings, 4 rounds, client_batching off
    python bench/scale.py --rounds 3 --settings 100,300 --batching off,auto   # both modes, interleaved
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SETTINGS = {  # name: (clients, images per client, participation)
    "100": (100, 8, 1.0), "300": (300, 8, 1.0), "1000": (1000, 8, 1.0), "1000@10%": (1000, 8, 0.1),
    "10000x1": (10000, 1, 1.0),
}

CHILD = r"""
import json, sys, time, fed8
sets, out = json.loads(sys.argv[1]), sys.argv[2]
marks = []
t = [time.perf_counter()]
def on_round(rnd, row):
    marks.append(time.perf_counter() - t[0]); t[0] = time.perf_counter()
r = fed8.run(fed8.load_config(None, sets), out=out, on_round=on_round, report=False)
print(json.dumps({"seconds": marks, "eval_accuracy": r.final["eval_accuracy"]}))
"""


def npz_all_images(path: Path) -> None:
    """All 10,000 bundled images as an npz training split, and the usual 2,000-image eval split as its test split."""
    import numpy as np
    import torch

    from fed8.config import DataConfig
    from fed8.data import load_splits

    s = load_splits(DataConfig())
    x = torch.cat([s.train.images, s.eval.images]).numpy()
    y = torch.cat([s.train.labels, s.eval.labels]).numpy()
    np.savez(path, x_train=x, y_train=y, x_test=s.eval.images.numpy(), y_test=s.eval.labels.numpy())


def run(name: str, rounds: int, batching: str, tmp: Path) -> dict:
    clients, per, frac = SETTINGS[name]
    sets = [f"data.num_clients={clients}", "data.partition=iid", "data.test_fraction=0.0", f"train.rounds={rounds}",
            f"train.fraction={frac}", "train.local_epochs=1", "train.batch_size=8", "train.lr=0.05",
            "train.momentum=0.0", "eval.every=0", "quantize.enabled=false", f"run.client_batching={batching}"]
    if per == 1:
        npz = tmp / "all10k.npz"
        if not npz.exists():
            npz_all_images(npz)
        sets += ["data.source=npz", f"data.path={npz}"]
    else:
        sets += [f"data.subset={clients * per}"]
    p = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(sets), str(tmp / f"{name}-{batching}")], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    _, status, ru = os.wait4(p.pid, 0)
    out, err = p.stdout.read(), p.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{name}: {err[-2000:]}")
    res = json.loads(out.strip().splitlines()[-1])
    s = statistics.median(res["seconds"][1:])
    per_round = round(clients * frac)
    return {"setting": name, "clients": clients, "images_per_client": per, "clients_per_round": per_round,
            "s_per_round": round(s, 3), "ms_per_client_round": round(1000 * s / per_round, 2),
            "peak_rss_mb": round(ru.ru_maxrss / 1024), "eval_accuracy": res["eval_accuracy"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--batching", default="off",
                    help="comma-separated run.client_batching values (off, auto), run one after the other per setting")
    a = ap.parse_args()
    if a.rounds < 2:
        ap.error("--rounds must be >= 2 (round 1 is warm-up)")
    modes = [m.strip() for m in a.batching.split(",")]
    if not set(modes) <= {"off", "auto"}:
        ap.error(f"--batching takes off and/or auto; got {a.batching!r}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.settings.split(","):
            for mode in modes:  # interleaved: the modes of a setting run back to back, under the same load
                rows.append({**run(name.strip(), a.rounds, mode, Path(tmp)), "batching": mode})
                print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"rounds": a.rounds, "batching": modes, "rows": rows}))


if __name__ == "__main__":
    main()
