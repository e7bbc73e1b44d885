"""Secure aggregation (Bonawitz et al. 2017) on int8 updates summed in Z_(2^k).

The protocol (:mod:`.protocol`: keys, shares, unmasking) needs no torch; the ring encoding
and the simulation's :class:`SecureSum` do, and load on first use, so a SuperNode's key and
unmasking stages start without importing torch.
"""

from __future__ import annotations

from ..._lazy import lazy_exports
from .protocol import SecAggClient, SecAggServer, threshold_for

__all__ = ["SecAggClient", "SecAggServer", "SecureSum", "SumResult", "ring_bits", "threshold_for"]

# the ring encoding and the sum need torch: loaded on first use
__getattr__ = lazy_exports(__name__, {"ring_bits": ".ring", "SecureSum": ".summer", "SumResult": ".summer"})
