"""fed8: federated training of vision models, shipped as 8-bit (INT8 / FP8) models.

Importing fed8 is cheap: heavy modules load on first use.

>>> import fed8
>>> cfg = fed8.load_config(None, ["train.rounds=2"])      # doctest: +SKIP
>>> result = fed8.run(cfg)                                 # doctest: +SKIP
>>> result.final["eval_accuracy"]                          # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["Config", "Fed8Error", "RunResult", "__version__", "load_config", "run"]

_LAZY = {
    "Config": ("fed8.config", "Config"),
    "load_config": ("fed8.config", "load_config"),
    "Fed8Error": ("fed8.errors", "Fed8Error"),
    "run": ("fed8.stages.train", "run"),
    "RunResult": ("fed8.stages.train", "RunResult"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'fed8' has no attribute {name!r}")
