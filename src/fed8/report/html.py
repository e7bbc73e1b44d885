"""``report.html``: a self-contained page of a run's summary, metrics and plots."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

__all__ = ["render_html"]

_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f4f4f4}img{max-width:100%;margin:0.5em 0}code{background:#f4f4f4;padding:1px 4px}"""


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 100 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _table(rows: list[dict], keys: list[str]) -> str:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(r.get(k)))}</td>" for k in keys) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _deploy_section(deploy: dict | None) -> str:
    if not deploy:
        return ""
    rows = []
    for r in deploy["formats"]:
        od = r.get("on_device") or {}
        rows.append({
            "format": r["format"] + ("" if r.get("status", "ok") == "ok" else " (FAILED the accuracy gate)"), "eval accuracy": r["eval_accuracy"], "delta (points)": r["accuracy_delta_points"],
            "top-1 agreement": r["top1_agreement_with_float32"],
            "clients mean / p10 / min": " / ".join(fmt(od.get(k)) for k in ("client_accuracy_mean", "client_accuracy_p10",
                                                                          "client_accuracy_min")),
            "bytes": r["bytes"], "x float32": r["bytes_ratio_to_float32"],
            "latency b1 (ms)": r["latency_ms_batch1"], "latency b256 (ms)": r["latency_ms_batch256"],
            "speedup b1": r["speedup_batch1"], "speedup b256": r["speedup_batch256"],
            "kept in float": ", ".join(f"{k['node']} ({k['sqnr_db']:.1f} dB)" for k in r["layers_kept_float"]) or "-",
        })
    ov = [{"format": r["format"], "file": r["openvino"]["file"], "bytes": r["openvino"]["bytes"],
           "top-1 agreement with ONNX Runtime": r["openvino"]["top1_agreement_with_onnxruntime"],
           "latency b1 (ms)": r["openvino"]["latency_ms_batch1"], "latency b256 (ms)": r["openvino"]["latency_ms_batch256"],
           "speedup b1": r["openvino"]["speedup_batch1"], "speedup b256": r["openvino"]["speedup_batch256"]}
          for r in deploy["formats"] if "openvino" in r]
    ov_table = (f"<h3>Same models on the OpenVINO CPU runtime ({deploy.get('threads')} threads; speedups against ONNX "
                f"Runtime float32)</h3>{_table(ov, list(ov[0]))}" if ov else "")
    notes = "".join(f"<p>{html.escape(n)}</p>" for n in deploy.get("notes", []))
    cal = html.escape(json.dumps(deploy.get("calibration", {})))
    return (f"<h2>8-bit deployment (ONNX Runtime CPU, {deploy.get('threads')} threads)</h2>"
            f"{_table(rows, list(rows[0]))}{ov_table}<p>Calibration: <code>{cal}</code></p>{notes}")


def _privacy_section(privacy: dict | None, rows: list[dict]) -> str:
    """The guarantee in one sentence, and accuracy against the epsilon spent so far."""
    if not privacy:
        return ""
    out = f"<h2>Privacy</h2><p>{html.escape(privacy.get('statement', ''))}</p>"
    if privacy.get("stopped_for_budget"):
        out += f"<p><b>{html.escape(privacy['stopped_for_budget'])}</b></p>"
    ev = [r for r in rows if r.get("eval_accuracy") is not None and r.get("epsilon") is not None]
    if ev:
        out += "<h3>Accuracy vs epsilon</h3>" + _table(
            [{"round": r["round"], "epsilon": r["epsilon"], "eval_accuracy": r["eval_accuracy"],
              "client_accuracy_p10": r.get("client_accuracy_p10"), "clip_norm": r.get("clip_norm")} for r in ev],
            ["round", "epsilon", "eval_accuracy", "client_accuracy_p10", "clip_norm"])
    return out


def render_html(run_dir: Path, summary: dict, rows: list[dict], config_text: str, plots: list[Path],
                deploy: dict | None = None) -> str:
    final = summary.get("final", {})
    facts = [
        ("dataset", summary.get("dataset")), ("model", summary.get("model")),
        ("parameters", summary.get("parameters")), ("clients", summary.get("num_clients")),
        ("rounds", summary.get("rounds")), ("final eval accuracy", final.get("eval_accuracy")),
        ("client accuracy mean / p10 / min", " / ".join(fmt(final.get(k)) for k in
            ("client_accuracy_mean", "client_accuracy_p10", "client_accuracy_min"))),
        ("total uplink bytes", summary.get("total_uplink_bytes")),
        ("total downlink bytes", summary.get("total_downlink_bytes")),
        ("uplink / downlink vs float32", " / ".join(fmt(summary.get(k)) for k in
            ("uplink_ratio_to_float32", "downlink_ratio_to_float32"))),
        ("codecs (uplink / downlink)", f"{summary.get('uplink_codec')} / {summary.get('downlink_codec')}"),
        ("training seconds", summary.get("train_seconds")),
        ("rejected updates", summary.get("rejected_updates")),
    ]
    imgs = "".join(
        f'<img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">' for p in plots
    )
    keys = ["round", "num_clients", "train_loss", "eval_loss", "eval_accuracy", "client_accuracy_mean",
            "client_accuracy_p10", "client_accuracy_min", "uplink_bytes", "downlink_bytes", "epsilon",
            "rejected_updates", "seconds"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>fed8 report: {html.escape(run_dir.name)}</title>
<style>{_CSS}</style></head><body>
<h1>fed8 report</h1><p><code>{html.escape(str(run_dir))}</code></p>
<h2>Summary</h2>{_table([dict(facts)], [k for k, _ in facts])}
<h2>Plots</h2>{imgs}
{_privacy_section(summary.get("privacy"), rows)}
{_deploy_section(deploy)}
<h2>Metrics per round</h2>{_table(rows, keys)}
<h2>Configuration</h2><pre>{html.escape(config_text)}</pre>
<h2>summary.json</h2><pre>{html.escape(json.dumps(summary, indent=2))}</pre>
</body></html>
"""
