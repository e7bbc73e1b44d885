"""``report.html``: a self-contained page of a run's summary, metrics and plots.

Laid out for a 1280 px screen: the summary is a key/value list, wide tables are split
and scroll inside their own box, numbers use the same conventions as the terminal
(accuracy 4 decimals, deltas in signed points, latency as a ratio to float32: ``0.41x``
means 41% of float32's time).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any, Sequence

__all__ = ["fmt", "fmt_bytes", "latency_ratio", "render_html"]

_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;
white-space:nowrap}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.kv td:first-child{font-weight:600}.scroll{overflow-x:auto;max-width:100%}img{max-width:100%;margin:0.5em 0}
code,pre{background:#f4f4f4;padding:1px 4px}pre{padding:0.6em;overflow-x:auto}.warn{color:#a00;font-weight:600}
.note{color:#555;font-size:0.92em}"""


def fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) < 100 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def fmt_bytes(n: float | None) -> str:
    """``1.2 MB`` (decimal units, as the terminal prints them)."""
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000:
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


RUNTIME_NAMES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", "litert": "LiteRT", "torch": "PyTorch"}


def ms_or_untimed(latency_ms: float | None) -> str:
    """A batch-1 latency, or "n/a" (a format this machine cannot run at its real speed: FP8 without FP8 cores)."""
    return "n/a" if latency_ms is None else f"{latency_ms:.3f}"


def ms_or_batch1(latency_ms: float | None, batch1_ms: float | None = 0.0) -> str:
    """A batch-256 latency, or why there is none (a LiteRT file exported at batch 1; a format not timed here)."""
    if latency_ms is None:
        return "n/a" if batch1_ms is None else "batch 1 only"
    return f"{latency_ms:.1f}"


def latency_ratio(latency_ms: float | None, float32_ms: float | None) -> str:
    """Latency as a fraction of float32's: ``0.41x`` (lower is faster)."""
    if not latency_ms or not float32_ms:
        return "-"
    return f"{latency_ms / float32_ms:.2f}x"


def _table(rows: Sequence[dict], keys: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(r.get(k) if isinstance(r.get(k), str) else fmt(r.get(k)))}</td>"
                                    for k in keys) + "</tr>" for r in rows)
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def _kv(pairs: Sequence[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v if isinstance(v, str) else fmt(v))}</td></tr>"
                   for k, v in pairs)
    return f'<table class="kv">{body}</table>'


def _points(v: float | None) -> str:
    return "-" if v is None else f"{v:+.2f}"


def _clients(od: dict | None) -> tuple[str, str, str]:
    od = od or {}
    return tuple(fmt(od.get(k)) for k in ("client_accuracy_mean", "client_accuracy_p10", "client_accuracy_min"))


def _deploy_section(deploy: dict | None) -> str:
    if not deploy:
        return ""
    fmts = deploy["formats"]
    f32 = fmts[0]
    acc, speed = [], []
    for r in fmts:
        name = r["format"] + ("" if r.get("status", "ok") == "ok" else " (FAILED the accuracy gate)")
        mean, p10, low = _clients(r.get("on_device"))
        acc.append({"format": name, "eval accuracy": r["eval_accuracy"],
                    "delta (points)": _points(r["accuracy_delta_points"]),
                    "top-1 agreement": r["top1_agreement_with_float32"], "clients mean": mean, "clients p10": p10,
                    "clients min": low,
                    "kept in float": ", ".join(f"{k['node']} ({k['sqnr_db']:.1f} dB)" for k in r["layers_kept_float"])
                    or "-"})
        runs = [(RUNTIME_NAMES[r.get("runtime", "onnxruntime")], r)] + ([("OpenVINO", r["openvino"])]
                                                                         if "openvino" in r else [])
        for runtime, m in runs:
            speed.append({"format": r["format"], "runtime": runtime, "file": m["file"], "size": fmt_bytes(m["bytes"]),
                          "size vs fp32": f"{m['bytes'] / f32['bytes']:.3f}x",
                          "b1 (ms)": ms_or_untimed(m["latency_ms_batch1"]),
                          "b1 vs fp32": latency_ratio(m["latency_ms_batch1"], f32["latency_ms_batch1"]),
                          "b256 (ms)": ms_or_batch1(m["latency_ms_batch256"], m["latency_ms_batch1"]),
                          "b256 vs fp32": latency_ratio(m["latency_ms_batch256"], f32["latency_ms_batch256"])})
    cal = deploy.get("calibration", {})
    cal_pairs = [(k.replace("_", " "), v if isinstance(v, (str, int, float)) else json.dumps(v)) for k, v in cal.items()]
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in deploy.get("notes", []))
    return (f"<h2>8-bit deployment</h2><h3>Accuracy (on the server's eval split; clients: each client's own test "
            f"images)</h3>{_table(acc, list(acc[0]))}"
            f"<h3>Size and CPU latency</h3><p class=\"note\">{deploy.get('threads')} threads; batch 1 and 256; "
            "vs fp32 = time (or size) / float32's on ONNX Runtime: 0.41x is 41% of its time, lower is faster.</p>"
            f"{_table(speed, list(speed[0]))}"
            f"<h3>Calibration</h3>{_kv(cal_pairs)}{notes}")


def _per_class_section(pc: dict | None) -> str:
    """The final model's accuracy on each class of the eval split, worst first."""
    if not pc:
        return ""
    order = sorted(range(len(pc["classes"])), key=lambda k: (pc["accuracy"][k] is None, pc["accuracy"][k] or 0.0))
    table = [{"class": pc["classes"][k], "eval images": pc["images"][k], "accuracy": pc["accuracy"][k]} for k in order]
    return (f"<h2>Per class</h2><p class=\"note\">The final model on the server's eval split, worst class first "
            f"(worst: {html.escape(str(pc['worst_class']))}, {fmt(pc['worst_class_accuracy'])}).</p>"
            f"{_table(table, ['class', 'eval images', 'accuracy'])}")


def _privacy_section(privacy: dict | None, rows: list[dict]) -> str:
    """The guarantee in one sentence, and accuracy against the epsilon spent so far."""
    if not privacy:
        return ""
    statement = html.escape(privacy.get("statement", ""))
    cls = ' class="warn"' if privacy.get("insecure_reproducible_noise") else ""
    out = f"<h2>Privacy</h2><p{cls}>{statement}</p>"
    if privacy.get("stopped_for_budget"):
        out += f"<p><b>{html.escape(privacy['stopped_for_budget'])}</b></p>"
    ev = [r for r in rows if r.get("eval_accuracy") is not None and r.get("epsilon") is not None]
    if ev:
        out += "<h3>Accuracy vs epsilon</h3>" + _table(
            [{"round": r["round"], "epsilon": f"{r['epsilon']:.3g}", "eval accuracy": r["eval_accuracy"],
              "clients p10": r.get("client_accuracy_p10"), "clip norm": r.get("clip_norm")} for r in ev],
            ["round", "epsilon", "eval accuracy", "clients p10", "clip norm"])
    return out


# (column header, metrics key, formatter); a column shows only when some round has a value.
_ROUND_COLUMNS = [
    ("round", "round", str), ("clients", "num_clients", str), ("train loss", "train_loss", fmt),
    ("eval loss", "eval_loss", fmt), ("eval acc", "eval_accuracy", fmt), ("clients mean", "client_accuracy_mean", fmt),
    ("p10", "client_accuracy_p10", fmt), ("min", "client_accuracy_min", fmt), ("uplink", "uplink_bytes", fmt_bytes),
    ("downlink", "downlink_bytes", fmt_bytes), ("clipped", "clipped_fraction", lambda v: f"{v:.0%}"),
    ("epsilon", "epsilon", lambda v: f"{v:.3g}"), ("rejected", "rejected_updates", str),
    ("s", "seconds", lambda v: f"{v:.1f}"), ("note", "aborted", lambda v: "abandoned"),
]


def _rounds_table(rows: list[dict]) -> str:
    cols = [c for c in _ROUND_COLUMNS if any(r.get(c[1]) not in (None, 0) or c[1] == "round" for r in rows)]
    table = [{h: ("-" if r.get(k) is None else f(r[k])) for h, k, f in cols} for r in rows]
    return _table(table, [h for h, _, _ in cols])


def render_html(run_dir: Path, summary: dict, rows: list[dict], config_text: str, plots: list[Path],
                deploy: dict | None = None) -> str:
    final = summary.get("final", {})
    mean, p10, low = _clients(final)
    facts = [
        ("dataset / model", f"{summary.get('dataset')} / {summary.get('model')} ({fmt(summary.get('parameters'))} "
                            "parameters)"),
        ("clients / rounds", f"{fmt(summary.get('num_clients'))} / {fmt(summary.get('rounds'))}"),
        ("final eval accuracy", fmt(final.get("eval_accuracy"))),
        ("client accuracy mean / p10 / min", f"{mean} / {p10} / {low}"),
        ("uplink / downlink", f"{fmt_bytes(summary.get('total_uplink_bytes'))} / "
                              f"{fmt_bytes(summary.get('total_downlink_bytes'))}"),
        ("uplink / downlink vs float32", " / ".join(f"{summary[k]:.3f}x" if summary.get(k) is not None else "-"
                                                    for k in ("uplink_ratio_to_float32", "downlink_ratio_to_float32"))),
        ("codecs (uplink / downlink)", f"{summary.get('uplink_codec')} / {summary.get('downlink_codec')}"),
        ("training time", f"{summary.get('train_seconds', 0):.1f} s"),
        ("rejected updates", fmt(summary.get("rejected_updates"))),
    ]
    eps = (summary.get("privacy") or {}).get("epsilon")
    if eps is not None:
        facts.insert(5, ("epsilon (delta)", f"{eps:.3g} ({summary['privacy'].get('delta'):g})"))
    if "client_accuracy_finetuned_mean" in final:
        tuned = " / ".join(fmt(final.get(f"client_accuracy_finetuned_{s}")) for s in ("mean", "p10", "min"))
        facts.insert(4, ("client accuracy after fine-tuning (eval.finetune_epochs)", tuned))
    imgs = "".join(
        f'<img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">' for p in plots
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>fed8 report: {html.escape(run_dir.name)}</title>
<style>{_CSS}</style></head><body>
<h1>fed8 report</h1><p><code>{html.escape(str(run_dir))}</code></p>
<h2>Summary</h2>{_kv(facts)}
<h2>Plots</h2>{imgs}
{_per_class_section(summary.get("eval_per_class"))}
{_privacy_section(summary.get("privacy"), rows)}
{_deploy_section(deploy)}
<h2>Metrics per round</h2>{_rounds_table(rows)}
<h2>Configuration</h2><pre>{html.escape(config_text)}</pre>
<h2>summary.json</h2><pre>{html.escape(json.dumps(summary, indent=2))}</pre>
</body></html>
"""
