"""Reports of a run directory: PNG plots and a self-contained ``report.html``."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["write_report"]


def write_report(run_dir: str | Path) -> Path:
    """Read a run directory and write ``plots/*.png`` and ``report.html``; return the HTML path."""
    from .._io import atomic_write_text
    from ..errors import CheckpointError
    from ..rundir import RunDir
    from .html import render_html
    from .plots import plot_all

    rd = RunDir.open(run_dir)
    rows = rd.read_metrics()
    if not rows:
        raise CheckpointError(f"{rd.path}: metrics.jsonl has no rounds yet; nothing to report.")
    summary = json.loads(rd.summary.read_text()) if rd.summary.exists() else {}
    partition = json.loads(rd.partition.read_text()) if rd.partition.exists() else None
    qpath = rd.path / "deploy" / "quantization.json"
    deploy = json.loads(qpath.read_text()) if qpath.exists() else None
    plots = plot_all(rows, partition, rd.plots, deploy, summary.get("eval_per_class"))
    atomic_write_text(rd.report, render_html(rd.path, summary, rows, rd.config.read_text(), plots, deploy))
    return rd.report
