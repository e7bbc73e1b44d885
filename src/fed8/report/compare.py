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
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

__all__ = ["RunView", "comparison", "differing_keys", "legend", "legend_of", "load_run", "seed_groups", "table",
           "write_comparison"]

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
    return _shorten(f"#{index}" + (": " + ", ".join(f"{k}={run.settings.get(k)}" for k in keys) if keys else ""),
                    width)


def legend_of(group: dict, keys: Sequence[str], width: int = 60) -> str:
    """A seed group's legend: ``#1,#3 (2 seeds): key=value, ...``."""
    text = f"{group['run']} ({len(group['runs'])} seed{'s' if len(group['runs']) > 1 else ''})"
    return _shorten(text + (": " + ", ".join(f"{k}={group['settings'].get(k)}" for k in keys) if keys else ""), width)


def _shorten(text: str, width: int) -> str:
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
            "client_accuracy_finetuned_mean": last.get("client_accuracy_finetuned_mean"),
            "worst_class_accuracy": (run.summary.get("eval_per_class") or {}).get("worst_class_accuracy"),
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


def _curves(runs: Sequence[RunView]) -> tuple[list[int], list[float], list[float], list[float], list[float]]:
    """Rounds evaluated in every one of ``runs``; there, the mean cumulative MB sent, and the mean, min and max eval
    accuracy (one run: its own curve)."""
    per_run = []
    for run in runs:
        sent, points = 0, {}
        for r in run.rows:
            sent += (r.get("uplink_bytes") or 0) + (r.get("downlink_bytes") or 0)
            if r.get("eval_accuracy") is not None:
                points[r["round"]] = (sent / 1e6, r["eval_accuracy"])
        per_run.append(points)
    rounds = sorted(set.intersection(*(set(p) for p in per_run))) if per_run else []
    mb = [statistics.fmean(p[t][0] for p in per_run) for t in rounds]
    accs = [[p[t][1] for p in per_run] for t in rounds]
    return rounds, mb, [statistics.fmean(a) for a in accs], [min(a) for a in accs], [max(a) for a in accs]


def _plots(series: Sequence[tuple[str, Sequence[RunView]]], out: Path) -> list[Path]:
    """``accuracy.png`` and ``accuracy_vs_bytes.png``: one curve per ``(legend, runs)``, the runs' mean with their
    range shaded where there are several (seeds)."""
    from .plots import _pyplot, _round_axis, _save

    plt = _pyplot()
    curves = [(name, _curves(runs), len(runs)) for name, runs in series]
    paths: list[Path] = []
    for x_of, fname, title, xlabel in ((0, "accuracy.png", "Global model, eval split", "round"),
                                       (1, "accuracy_vs_bytes.png", "Accuracy against bytes sent",
                                        "cumulative MB sent (uplink + downlink)")):
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, (rounds, mb, mean, low, high), n in curves:
            x = rounds if x_of == 0 else mb
            (line,) = ax.plot(x, mean, marker="o", ms=3, label=name)
            if n > 1:
                ax.fill_between(x, low, high, color=line.get_color(), alpha=0.15, lw=0)
        ax.set(xlabel=xlabel, ylabel="eval accuracy", title=title)
        if x_of == 0:
            _round_axis(ax)
        else:
            ax.set_xscale("log")
            ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        _save(fig, out / fname, paths)
    return paths


def seed_groups(rows: Sequence[dict]) -> list[dict]:
    """The runs of :func:`comparison` that differ only in ``run.seed``, one row each: per number, the mean over the
    group's runs and (from two runs) the sample standard deviation as ``<key>_sd``; ``runs`` and ``seeds`` list its
    members."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple((k, repr(v)) for k, v in r["settings"].items() if k != "run.seed"), []).append(r)
    numeric = [k for k in (rows[0] if rows else {}) if k in _NUMBERS or k.endswith("_accuracy")]
    out = []
    for members in groups.values():
        g = {"run": ",".join(m["run"] for m in members), "runs": [m["run"] for m in members],
             "path": [m["path"] for m in members], "seeds": [m["settings"].get("run.seed") for m in members],
             "settings": {k: v for k, v in members[0]["settings"].items() if k != "run.seed"},
             "rounds_planned": members[0]["rounds_planned"],
             "formats_over_max_drop": sorted({f for m in members for f in m["formats_over_max_drop"]})}
        for k in numeric:
            vals = [m[k] for m in members if m.get(k) is not None]
            g[k] = statistics.fmean(vals) if vals else None
            g[f"{k}_sd"] = statistics.stdev(vals) if len(vals) > 1 else None
        rounds = sorted({m["rounds"] for m in members})
        g["rounds"] = rounds[0] if len(rounds) == 1 else f"{rounds[0]}-{rounds[-1]}"
        out.append(g)
    return out


COLUMNS = [  # (heading, row key, format: "acc" | "bytes" | "ratio" | "eps" | "s")
    ("eval acc", "eval_accuracy", "acc"), ("best eval acc", "best_eval_accuracy", "acc"),
    ("client acc mean", "client_accuracy_mean", "acc"), ("client acc p10", "client_accuracy_p10", "acc"),
    ("fine-tuned client acc mean", "client_accuracy_finetuned_mean", "acc"),
    ("worst class acc", "worst_class_accuracy", "acc"),
    ("uplink", "uplink_bytes", "bytes"), ("uplink vs float32", "uplink_vs_float32", "ratio"),
    ("downlink", "downlink_bytes", "bytes"), ("epsilon", "epsilon", "eps"), ("train s", "train_seconds", "s"),
]


def table(rows: Sequence[dict]) -> list[tuple[str, list[str]]]:
    """The comparison as the terminal and the page print it: one line per differing key, then per number that some
    run has, then per 8-bit format's accuracy; one cell per run (runs as columns: a sweep has few runs, many keys),
    or per :func:`seed_groups` group (its mean +- standard deviation, and a line of its seeds)."""
    lines = [(k, [str(r["settings"].get(k)) for r in rows]) for k in (rows[0]["settings"] if rows else {})]
    if rows and "seeds" in rows[0]:
        lines.append(("run.seed", [", ".join(str(s) for s in r["seeds"]) for r in rows]))
    lines.append(("rounds", [cell(r, "rounds", "rounds") for r in rows]))
    lines += [(head, [cell(r, k, kind) for r in rows]) for head, k, kind in COLUMNS
              if any(r.get(k) is not None for r in rows)]
    fmts = [k.removesuffix("_accuracy") for k in (rows[0] if rows else {})
            if k.endswith("_accuracy") and k not in _NOT_FORMATS]
    lines += [(f"{f} acc", [cell(r, f"{f}_accuracy", "acc") + (" (over max drop)" if f in r["formats_over_max_drop"]
                                                                else "") for r in rows]) for f in fmts]
    return lines


_NOT_FORMATS = {"eval_accuracy", "best_eval_accuracy", "client_accuracy_mean", "client_accuracy_p10",
                "worst_class_accuracy"}
_NUMBERS = {k for _, k, _ in COLUMNS}


def cell(row: dict, key: str, kind: str) -> str:
    """``row[key]`` as the terminal and the page print it."""
    from .html import fmt_bytes

    v = row.get(key)
    if kind == "rounds":
        planned = row.get("rounds_planned")
        return f"{v}" if planned in (None, v) else f"{v} of {planned}"
    if v is None:
        return "-"
    show = {"acc": lambda x: f"{x:.4f}", "bytes": fmt_bytes, "ratio": lambda x: f"{x:.3f}x",
            "eps": lambda x: f"{x:.3g}", "s": lambda x: f"{x:.1f}"}[kind]
    sd = row.get(f"{key}_sd")
    return show(v) if sd is None or (sd == 0 and kind in ("bytes", "ratio")) else f"{show(v)} ± {show(sd)}"


def _html(rows: list[dict], plots: list[Path]) -> str:
    import base64
    import html

    from .html import _CSS

    head = "<tr><th></th>" + "".join(f"<th>{html.escape(r['run'])}</th>" for r in rows) + "</tr>"
    body = "".join(f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells)
                   + "</tr>" for name, cells in table(rows))
    paths = "".join(f"<li>{html.escape(r['run'])}: " + ", ".join(
        f"<code>{html.escape(p)}</code>" for p in ([r["path"]] if isinstance(r["path"], str) else r["path"]))
        + "</li>" for r in rows)
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


def write_comparison(runs: Sequence[RunView], out: str | Path, *, over_seeds: bool = False) -> list[Path]:
    """Write ``compare.json`` (the rows, and the seed groups with ``over_seeds``), ``accuracy.png``,
    ``accuracy_vs_bytes.png`` and ``compare.html`` (per run, or per seed group) into ``out`` (made if missing);
    return the paths written."""
    from .._io import atomic_write_json, atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, keys = comparison(runs), differing_keys(runs)
    doc: dict[str, Any] = {"differing_keys": keys, "runs": rows}
    if over_seeds:
        groups = doc["seed_groups"] = seed_groups(rows)
        by_name = {r["run"]: run for r, run in zip(rows, runs)}
        series = [(legend_of(g, [k for k in keys if k != "run.seed"]), [by_name[n] for n in g["runs"]])
                  for g in groups]
        shown = groups
    else:
        series = [(legend(run, i, keys), [run]) for i, run in enumerate(runs, 1)]
        shown = rows
    plots = _plots(series, out)
    atomic_write_json(out / "compare.json", doc)
    atomic_write_text(out / "compare.html", _html(shown, plots))
    return [out / "compare.json", *plots, out / "compare.html"]
