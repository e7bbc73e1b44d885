"""train.precision: the default ``fed8 run`` in float32 and in bfloat16 (mixed precision), alternating.

Each run is the ``fed8`` command of this checkout with the built-in defaults (quantize stage
included, report skipped) and ``--set train.precision=P``, in a fresh process
(``bench/default_run.py``'s launcher). Prints per run: wall and training seconds, final eval
and mean client accuracy, and the INT8 model's eval accuracy; the last line is JSON.

    python bench/precision.py --repeats 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from default_run import ROOT, one  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    a = ap.parse_args()
    extra = [x for s in a.overrides for x in ("--set", s)]
    rows: dict[str, list[dict]] = {"float32": [], "bfloat16": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.repeats):
            for p in rows:
                out = Path(tmp) / f"{p}{i}"
                r = one(ROOT / "src", out, [*extra, "--set", f"train.precision={p}"])
                deploy = json.loads((out / "summary.json").read_text()).get("deploy") or []
                r["int8_eval_accuracy"] = next((d.get("eval_accuracy") for d in deploy
                                                if d.get("format") == "int8"), None)
                rows[p].append(r)
                print(f"{p:8}: {r}", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
