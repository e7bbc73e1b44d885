"""Stages over one run directory: assemble a federation, train, quantize (the report stage is
:func:`fed8.report.write_report`).

``federation`` (config -> clients, model, aggregator, optimizer, wire), ``aggregation`` (the
aggregator chain and client hooks of ``[privacy]`` and ``[server]``), ``train`` (``fed8 run``),
``quantize`` (``fed8 quantize`` and the end of ``fed8 run``).
"""

from .quantize import quantize_model, quantize_run
from .train import RESUMABLE_KEYS, RunResult, default_run_dir, run

__all__ = ["RESUMABLE_KEYS", "RunResult", "default_run_dir", "quantize_model", "quantize_run", "run"]
