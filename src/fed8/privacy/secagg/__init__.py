"""Secure aggregation (Bonawitz et al. 2017) on int8 updates summed in Z_(2^k).

The protocol (:mod:`.protocol`: keys, shares, unmasking) needs no torch; the ring encoding
and the simulation's :class:`SecureSum` do, and load on first use, so a SuperNode's key and
unmasking stages start without importing torch.
"""

from __future__ import annotations

from typing import Any

from .protocol import SecAggClient, SecAggServer, threshold_for

__all__ = ["SecAggClient", "SecAggServer", "SecureSum", "SumResult", "ring_bits", "threshold_for"]

_LAZY = {"ring_bits": ".ring", "SecureSum": ".summer", "SumResult": ".summer"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
