"""Parallel clients started longest first against in their order, on the default run's rounds.

The default config (20 clients of 92-701 images, Dirichlet 0.5; 10 per round, E=2, B=32,
the ``cnn``) with per-round evaluation and the quantize stage off, ``--rounds`` rounds, in
this process, alternating: "in order" (each client starts in the order sampled, as before)
and "longest first" (``ClientThreads.map`` with ``cost``, fed8's behaviour). Both yield the
updates in the same order, so the models are the same bytes (checked). Prints the seconds
of rounds 1..R-1 (the last round also evaluates) per run; the last line is JSON.

    OMP_WAIT_POLICY=PASSIVE python bench/client_order.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import fed8
from fed8.federated import parallel


def one(in_order: bool, out: Path, rounds: int) -> tuple[list[float], bytes]:
    real = parallel.ClientThreads.map

    def map_(self, fn, items, cost=None):
        return real(self, fn, items, cost=None if in_order else cost)

    parallel.ClientThreads.map = map_
    try:
        cfg = fed8.load_config(None, ["eval.every=0", "quantize.enabled=false", f"train.rounds={rounds}"])
        fed8.run(cfg, out=out, report=False)
    finally:
        parallel.ClientThreads.map = real
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [round(r["seconds"], 3) for r in rows], (out / "model.safetensors").read_bytes()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    res: dict[str, list[float]] = {"in order": [], "longest first": []}
    with tempfile.TemporaryDirectory() as tmp:
        models = set()
        for i in range(a.repeats):
            for name in res:
                secs, model = one(name == "in order", Path(tmp) / f"{i}{name[0]}", a.rounds)
                models.add(model)
                res[name].append(round(sum(secs[:-1]), 2))
                print(f"{name:13} rounds 1..{a.rounds - 1}: {res[name][-1]:7.2f} s  per round {secs}", flush=True)
    print(f"same model bytes in every run: {len(models) == 1}")
    print(json.dumps({"rounds": a.rounds, **res, "same_model": len(models) == 1}))


if __name__ == "__main__":
    main()
