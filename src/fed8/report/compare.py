"""``fed8 compare``: run directories side by side.

A sweep (codecs, privacy budgets, partitions, augmentation, seeds) leaves one run directory
per setting. This reads them (nothing is trained or recomputed) and shows:

* the config keys whose values differ between the runs, as each run's label;
* per run: rounds done, final and best eval accuracy, client accuracy (mean and 10th
  percentile), uplink and downlink bytes (and the uplink against float32), epsilon,
  training seconds, and the eval accuracy of every 8-bit format its quantize stage built
  (marked where it lost more than ``quantize.max_accuracy_drop``);
* two plots: eval accuracy per round, and eval accuracy against the cumulative bytes sent
  (uplink + downlink), the trade-off 8-bit wire formats are for.

A run still in progress, or stopped, is read as far as it got (its rounds column says so).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

__all__ = ["RunView", "comparison", "differing_keys", "legend", "load_run", "table", "write_comparison"]

_NOT_SETTINGS = frozenset({"run.out"})  # where the run directory went, not what the run did


@dataclass(frozen=True)
class RunView:
    """What ``fed8 compare`` reads of one run directory."""

    path: Path
    settings: dict[str, Any]  # "section.key" -> value of the run's resolved config
    rows: list[dict]  # metrics.jsonl
    summary: dict  # summary.json ({} before the run finished once)
    deploy: dict | None  # deploy/quantization.json


def load_run(path: str | Path) -> RunView:
    """Read one run directory (:class:`~fed8.errors.CheckpointError` if it is none, or has no round yet)."""
    from ..errors import CheckpointError
    from ..rundir import RunDir

    rd = RunDir.open(path)
    rows = rd.read_metrics()
    if not rows:
        raise CheckpointError(f"{rd.path}: metrics.jsonl has no rounds yet; nothing to compare. Leave it out, or wait "
                              "for its first round.")
    nested = dataclasses.asdict(rd.load_config())
    settings = {f"{section}.{key}": value for section, keys in nested.items() for key, value in keys.items()}
    summary = json.loads(rd.summary.read_text()) if rd.summary.exists() else {}
    qpath = rd.path / "deploy" / "quantization.json"
    deploy = json.loads(qpath.read_text()) if qpath.exists() else None
    return RunView(rd.path, settings, rows, summary, deploy)


def differing_keys(runs: Sequence[RunView]) -> list[str]:
    """The config keys (``section.key``) whose values are not the same in every run, in config order."""
    keys = list(runs[0].settings) if runs else []
    return [k for k in keys if k not in _NOT_SETTINGS and len({repr(r.settings.get(k)) for r in runs}) > 1]


def legend(run: RunView, index: int, keys: Sequence[str], width: int = 60) -> str:
    """``#i: key=value, ...`` (the run's differing settings), shortened to ``width`` characters."""
    text = f"#{index}" + (": " + ", ".join(f"{k}={run.settings.get(k)}" for k in keys) if keys else "")
    return text if len(text) <= width else text[: width - 3] + "..."


def _formats(runs: Sequence[RunView]) -> list[str]:
    """The 8-bit formats any run built (float32 left out: it is the trained model), in first-seen order."""
    seen: list[str] = []
    for r in runs:
        for f in (r.deploy or {}).get("formats", []):
            if f.get("format") != "float32" and f.get("format") not in seen:
                seen.append(f["format"])
    return seen


def comparison(runs: Sequence[RunView]) -> list[dict[str, Any]]:
    """One row per run: its label, path and the numbers of the module docstring (None where a run has none)."""
    keys, fmts, out = differing_keys(runs), _formats(runs), []
    for i, run in enumerate(runs, 1):
        rows = run.rows
        evaluated = [r for r in rows if r.get("eval_accuracy") is not None]
        last = evaluated[-1] if evaluated else {}
        up = sum(r.get("uplink_bytes") or 0 for r in rows)
        up32 = sum(r.get("uplink_bytes_float32") or r.get("uplink_bytes") or 0 for r in rows)
        eps = [r["epsilon"] for r in rows if r.get("epsilon") is not None]
        row = {
            "run": f"#{i}", "path": str(run.path), "settings": {k: run.settings.get(k) for k in keys},
            "rounds": len(rows), "rounds_planned": run.settings.get("train.rounds"),
            "eval_accuracy": last.get("eval_accuracy"),
            "best_eval_accuracy": max((r["eval_accuracy"] for r in evaluated), default=None),
            "client_accuracy_mean": last.get("client_accuracy_mean"),
            "client_accuracy_p10": last.get("client_accuracy_p10"),
            "uplink_bytes": up, "uplink_vs_float32": up / up32 if up32 else None,
            "downlink_bytes": sum(r.get("downlink_bytes") or 0 for r in rows),
            "epsilon": eps[-1] if eps else None,
            "train_seconds": run.summary.get("train_seconds", sum(r.get("seconds") or 0.0 for r in rows)),
        }
        built = {f["format"]: f for f in (run.deploy or {}).get("formats", [])}
        for fmt in fmts:
            row[f"{fmt}_accuracy"] = (built.get(fmt) or {}).get("eval_accuracy")
        row["formats_over_max_drop"] = [f for f in fmts if (built.get(f) or {}).get("status") == "failed"]
        out.append(row)
    return out


def _plots(runs: Sequence[RunView], out: Path) -> list[Path]:
    from .plots import _pyplot, _round_axis, _save

    plt = _pyplot()
    keys = differing_keys(runs)
    names = [legend(r, i, keys) for i, r in enumerate(runs, 1)]
    paths: list[Path] = []
    fig, ax = plt.subplots(figsize=(7, 4))
    for run, name in zip(runs, names):
        ev = [r for r in run.rows if r.get("eval_accuracy") is not None]
        ax.plot([r["round"] for r in ev], [r["eval_accuracy"] for r in ev], marker="o", ms=3, label=name)
    ax.set(xlabel="round", ylabel="eval accuracy", title="Global model, eval split")
    _round_axis(ax)
    ax.legend(fontsize=8)
    _save(fig, out / "accuracy.png", paths)

    fig, ax = plt.subplots(figsize=(7, 4))
    for run, name in zip(runs, names):
        sent, x, acc = 0, [], []
        for r in run.rows:
            sent += (r.get("uplink_bytes") or 0) + (r.get("downlink_bytes") or 0)
            if r.get("eval_accuracy") is not None:
                x.append(sent / 1e6)
                acc.append(r["eval_accuracy"])
        ax.plot(x, acc, marker="o", ms=3, label=name)
    ax.set(xscale="log", xlabel="cumulative MB sent (uplink + downlink)", ylabel="eval accuracy",
           title="Accuracy against bytes sent")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    _save(fig, out / "accuracy_vs_bytes.png", paths)
    return paths


COLUMNS = [  # (heading, row key, format: "acc" | "bytes" | "ratio" | "eps" | "s")
    ("eval acc", "eval_accuracy", "acc"), ("best eval acc", "best_eval_accuracy", "acc"),
    ("client acc mean", "client_accuracy_mean", "acc"), ("client acc p10", "client_accuracy_p10", "acc"),
    ("uplink", "uplink_bytes", "bytes"), ("uplink vs float32", "uplink_vs_float32", "ratio"),
    ("downlink", "downlink_bytes", "bytes"), ("epsilon", "epsilon", "eps"), ("train s", "train_seconds", "s"),
]


def table(rows: Sequence[dict]) -> list[tuple[str, list[str]]]:
    """The comparison as the terminal and the page print it: one line per differing key, then per number that some
    run has, then per 8-bit format's accuracy; one cell per run (runs as columns: a sweep has few runs, many keys)."""
    lines = [(k, [str(r["settings"].get(k)) for r in rows]) for k in (rows[0]["settings"] if rows else {})]
    lines.append(("rounds", [cell(r, "rounds", "rounds") for r in rows]))
    lines += [(head, [cell(r, k, kind) for r in rows]) for head, k, kind in COLUMNS
              if any(r.get(k) is not None for r in rows)]
    fmts = [k.removesuffix("_accuracy") for k in (rows[0] if rows else {})
            if k.endswith("_accuracy") and k not in _NOT_FORMATS]
    lines += [(f"{f} acc", [cell(r, f"{f}_accuracy", "acc") + (" (over max drop)" if f in r["formats_over_max_drop"]
                                                                else "") for r in rows]) for f in fmts]
    return lines


_NOT_FORMATS = {"eval_accuracy", "best_eval_accuracy", "client_accuracy_mean", "client_accuracy_p10"}


def cell(row: dict, key: str, kind: str) -> str:
    """``row[key]`` as the terminal and the page print it."""
    from .html import fmt_bytes

    v = row.get(key)
    if kind == "rounds":
        planned = row.get("rounds_planned")
        return f"{v}" if planned in (None, v) else f"{v} of {planned}"
    if v is None:
        return "-"
    return {"acc": f"{v:.4f}", "bytes": fmt_bytes(v), "ratio": f"{v:.3f}x", "eps": f"{v:.3g}",
            "s": f"{v:.1f}"}[kind]


def _html(rows: list[dict], plots: list[Path]) -> str:
    import base64
    import html

    from .html import _CSS

    head = "<tr><th></th>" + "".join(f"<th>{html.escape(r['run'])}</th>" for r in rows) + "</tr>"
    body = "".join(f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells)
                   + "</tr>" for name, cells in table(rows))
    paths = "".join(f"<li>{html.escape(r['run'])}: <code>{html.escape(r['path'])}</code></li>" for r in rows)
    same = "" if rows and rows[0]["settings"] else "<p>The runs' configs are the same (repeats).</p>"
    imgs = "".join(f'<img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
                   for p in plots)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>fed8 compare: {len(rows)} runs</title>
<style>{_CSS}</style></head><body>
<h1>fed8 compare</h1><ul>{paths}</ul>{same}
<div class="scroll"><table>{head}{body}</table></div>
<h2>Plots</h2>{imgs}
</body></html>
"""


def write_comparison(runs: Sequence[RunView], out: str | Path) -> list[Path]:
    """Write ``compare.json`` (the rows), ``accuracy.png``, ``accuracy_vs_bytes.png`` and ``compare.html`` into
    ``out`` (made if missing); return the paths written."""
    from .._io import atomic_write_json, atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = comparison(runs)
    plots = _plots(runs, out)
    atomic_write_json(out / "compare.json", {"differing_keys": differing_keys(runs), "runs": rows})
    atomic_write_text(out / "compare.html", _html(rows, plots))
    return [out / "compare.json", *plots, out / "compare.html"]
