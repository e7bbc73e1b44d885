"""What fed8's commands print: the console, the live round line, the end-of-run and deploy tables.

Plain text through rich with markup off: what fed8 prints holds paths, config values and
install hints such as ``pip install 'fed8[litert]'``, which markup would eat as tags; styles
are passed explicitly. The tables fit 80 columns.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["bold_head", "console", "deploy_table", "fmt_bytes", "print_comparison", "print_deploy", "print_deploy_details",
           "print_summary", "progress_line"]


def console():
    from rich.console import Console

    # markup=False: what fed8 prints holds paths, config values and install hints such as
    # pip install 'fed8[litert]', which rich's markup would eat as tags; styles are passed explicitly.
    return Console(stderr=False, highlight=False, markup=False)


def bold_head(head: str, rest: str):
    """``head`` in bold, then ``rest`` as plain text."""
    from rich.text import Text

    return Text.assemble((head, "bold"), " " + rest)


def fmt_bytes(n: float) -> str:
    """``n`` bytes in decimal units: ``512 B``, ``6.7 MB``, ``1.3 GB``."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000:
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} PB"


def progress_line(row: dict) -> str:
    """One round in a few words: ``loss 0.231 acc 0.9712 clients 0.951/0.812 eps 3.1`` (clients: mean/min).

    With the round counter, a bar of 8 and the elapsed time it fits an 80-column terminal.
    Every metric may be None (no eval this round, no client with local test images).
    """
    from .federated.record import RoundRecord

    r = RoundRecord.from_dict(row)

    def num(v, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    desc = f"loss {num(r.train_loss, '.3f')}"
    if r.evaluated:
        desc += f" acc {num(r.eval_accuracy, '.4f')}"
        if r.client_accuracy_mean is not None:
            desc += f" clients {num(r.client_accuracy_mean, '.3f')}/{num(r.client_accuracy_min, '.3f')}"
    if r.epsilon is not None:
        desc += f" eps {num(r.epsilon, '.3g')}"
    if r.aborted:
        desc += " (round abandoned)"
    return desc


def print_summary(con, run_dir: Path, s: dict, title: str, *, report: bool) -> None:
    """The end-of-run table (and the deploy tables, with their notes) of fed8 run and fed8 federation."""
    import json

    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    f = s["final"]
    for k, v in [
        ("run directory", str(run_dir)),
        ("model / parameters", f"{s['model']} / {s['parameters']:,}"),
        ("rounds", str(s["rounds"])),
        ("eval accuracy (global)", f"{f['eval_accuracy']:.4f}" if f["eval_accuracy"] is not None else "-"),
        ("eval loss", f"{f['eval_loss']:.4f}" if f["eval_loss"] is not None else "-"),
        ("client accuracy mean / p10 / min", " / ".join(
            f"{f[k]:.4f}" if f[k] is not None else "-"
            for k in ("client_accuracy_mean", "client_accuracy_p10", "client_accuracy_min"))),
    ] + ([("  after fine-tuning", " / ".join(
            f"{f[k]:.4f}" if f[k] is not None else "-"
            for k in ("client_accuracy_finetuned_mean", "client_accuracy_finetuned_p10",
                      "client_accuracy_finetuned_min")))] if "client_accuracy_finetuned_mean" in f else []) + (
        [("worst class (eval accuracy)", f"{s['eval_per_class']['worst_class']} "
                                            f"({s['eval_per_class']['worst_class_accuracy']:.4f})")]
         if (s.get("eval_per_class") or {}).get("worst_class") is not None else []) + [
        ("uplink / downlink", f"{fmt_bytes(s['total_uplink_bytes'])} / {fmt_bytes(s['total_downlink_bytes'])}"),
        ("  vs float32", f"{s['uplink_ratio_to_float32']:.3f}x / {s['downlink_ratio_to_float32']:.3f}x"),
        ("  codecs", f"{s['uplink_codec']} / {s['downlink_codec']}"),
        ("training time", f"{s['train_seconds']:.1f} s"),
    ] + ([("epsilon (delta)", f"{s['privacy']['epsilon']:.3g} ({s['privacy']['delta']:g})")]
         if s.get("privacy", {}).get("epsilon") is not None else []) + (
        [("rejected updates", str(s["rejected_updates"]))] if s.get("rejected_updates") else []):
        table.add_row(k, v)
    con.print(table)
    if s.get("privacy"):
        con.print("privacy: " + s["privacy"]["statement"], soft_wrap=False)
        if s["privacy"].get("stopped_for_budget"):
            con.print(s["privacy"]["stopped_for_budget"], style="bold")
    if s.get("deploy"):
        con.print(deploy_table(s["deploy"]))
        qj = run_dir / "deploy" / "quantization.json"
        if qj.is_file():  # the stage's notes (e.g. a format skipped and how to get it), as fed8 quantize prints them
            try:
                print_deploy_details(con, json.loads(qj.read_text()))
            except (OSError, ValueError, KeyError, TypeError):
                pass  # the tables above are complete; the notes are a courtesy
    if report:
        con.print(f"report: {run_dir / 'report.html'}", soft_wrap=True)


def deploy_table(rows: list[dict]):
    """Two tables that fit 80 columns: accuracy, then size and speed."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from .report.html import latency_ratio, ms_or_batch1, ms_or_untimed

    def num(v, f: str) -> str:
        return "-" if v is None else format(v, f)

    def table(title: str, caption: str, cols: list[str]) -> Table:
        t = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, padding=(0, 1), show_edge=False, pad_edge=False)
        t.add_column("format", no_wrap=True)
        for c in cols:
            t.add_column(c, justify="right", no_wrap=True)
        return t

    acc = table("8-bit deployment: accuracy", "agree = top-1 agreement with float32; clients = on-device accuracy "
                "(mean / p10 / min); float = layers the accuracy gate kept in float; delta in points",
                ["eval acc", "delta", "agree", "clients", "float"])
    f32 = rows[0]
    speed = table("8-bit deployment: size and CPU latency",
                  "ms at batch 1 and 256; vs fp32 = time / float32's time on ONNX Runtime (0.41x: 41% of its time)",
                  ["runtime", "MB", "size", "b1 ms", "vs fp32", "b256 ms", "vs fp32"])
    for r in rows:
        od = r.get("on_device") or {}
        name = r["format"] if r.get("status", "ok") == "ok" else Text(f"{r['format']} FAILED", style="red")
        clients = " / ".join(num(od.get(k), ".3f") for k in ("client_accuracy_mean", "client_accuracy_p10",
                                                               "client_accuracy_min")) if od else "-"
        acc.add_row(name, num(r["eval_accuracy"], ".4f"), num(r["accuracy_delta_points"], "+.2f"),
                    num(r["top1_agreement_with_float32"], ".4f"), clients, str(len(r.get("layers_kept_float", []))))
        ort = {"onnxruntime": "ort"}.get(r.get("runtime", "onnxruntime"), r.get("runtime"))
        for runtime, m in [(ort, r)] + ([("openvino", r["openvino"])] if "openvino" in r else []):
            speed.add_row(name, runtime, f"{m['bytes'] / 1e6:.2f}", f"{m['bytes'] / f32['bytes']:.3f}x",
                          ms_or_untimed(m["latency_ms_batch1"]),
                          latency_ratio(m["latency_ms_batch1"], f32["latency_ms_batch1"]),
                          ms_or_batch1(m["latency_ms_batch256"], m["latency_ms_batch1"]),
                          latency_ratio(m["latency_ms_batch256"], f32["latency_ms_batch256"]))
    return Group(acc, speed)


def print_deploy(con, res: dict, where: Path) -> None:
    con.print(deploy_table(res["formats"]))
    print_deploy_details(con, res)
    con.print(f"wrote {where}", soft_wrap=True)


def print_deploy_details(con, res: dict) -> None:
    """What the deploy tables do not show: layers kept in float, formats that failed, and the stage's notes."""
    for r in res["formats"]:
        for k in r.get("layers_kept_float", []):
            con.print(f"{r['format']}: kept {k['node']} in float (local SQNR {k['sqnr_db']:.1f} dB)", soft_wrap=True)
    for f in res.get("failed", []):
        con.print(f"{f}: fails max_accuracy_drop even with every layer in float; reported, not usable.", style="red")
    for note in res.get("notes", []):
        con.print(f"note: {note}", soft_wrap=True)


def print_comparison(con, rows: list[dict], groups: list[dict] | None = None) -> None:
    """``fed8 compare``'s terminal output: each run's number and folder, then one column per run (or per seed group),
    one line per differing key and per number (:func:`fed8.report.compare.table`)."""
    from rich.table import Table

    from .report.compare import table

    for r in rows:
        con.print(f"{r['run']}  {r['path']}", soft_wrap=True)
    shown = rows if groups is None else groups
    what = f"{len(rows)} runs" + ("" if groups is None else
                                  f" in {len(groups)} group{'s' if len(groups) > 1 else ''} of seeds")
    out = Table(title=f"fed8 compare: {what}" + ("" if rows[0]["settings"] else " of the same config"))
    lines = table(shown)
    out.add_column("", no_wrap=True, min_width=min(28, max(len(name) for name, _ in lines)))
    for r in shown:
        out.add_column(r["run"], justify="right", overflow="fold")
    for name, cells in lines:
        out.add_row(name, *cells)
    con.print(out)
