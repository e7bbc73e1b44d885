"""fed8: federated training of vision models, shipped as 8-bit (INT8 / FP8) models.

Importing fed8 is cheap: heavy modules load on first use.

>>> import fed8
>>> cfg = fed8.load_config(None, ["train.rounds=2"])      # doctest: +SKIP
>>> result = fed8.run(cfg)                                 # doctest: +SKIP
>>> result.final["eval_accuracy"]                          # doctest: +SKIP
"""

from __future__ import annotations

from ._lazy import lazy_exports

__version__ = "0.1.0"

__all__ = ["Config", "Fed8Error", "RunResult", "__version__", "load_config", "run"]

__getattr__ = lazy_exports(__name__, {
    "Config": "fed8.config",
    "load_config": "fed8.config",
    "Fed8Error": "fed8.errors",
    "run": "fed8.stages.train",
    "RunResult": "fed8.stages.train",
})
