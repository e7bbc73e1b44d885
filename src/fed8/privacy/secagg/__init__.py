"""Secure aggregation (Bonawitz et al. 2017) on int8 updates summed in Z_(2^k)."""

from .protocol import SecAggClient, SecAggServer, threshold_for
from .ring import ring_bits
from .summer import SecureSum, SumResult

__all__ = ["SecAggClient", "SecAggServer", "SecureSum", "SumResult", "ring_bits", "threshold_for"]
