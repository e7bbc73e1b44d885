"""``k``-bit packing of ring elements for the wire (numpy only: the protocol's stages need no torch)."""

from __future__ import annotations

import numpy as np

__all__ = ["pack_bits", "unpack_bits"]


def pack_bits(values: np.ndarray, k: int) -> bytes:
    """``k`` bits per value, little-endian bit order: ``ceil(len * k / 8)`` bytes."""
    bits = np.unpackbits(values.astype("<u4").view(np.uint8).reshape(-1, 4), axis=1, bitorder="little")
    return np.packbits(bits[:, :k].reshape(-1), bitorder="little").tobytes()


def unpack_bits(data: bytes, k: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`."""
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")[: count * k].reshape(count, k)
    full = np.zeros((count, 32), dtype=np.uint8)
    full[:, :k] = bits
    return np.packbits(full, axis=1, bitorder="little").reshape(-1).view("<u4").astype(np.uint32)
