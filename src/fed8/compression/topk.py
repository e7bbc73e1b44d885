"""Top-k sparsification: keep the ``fraction`` of entries largest in magnitude, values in int8.

Per tensor: ``k = max(1, ceil(fraction * n))`` entries by ``|x|`` (Aji & Heafield 2017;
with error feedback it converges like dense SGD, Stich et al. 2018). Data section: the
float32 int8 scale, ``k`` int8 values (symmetric, ``s = max|kept| / 127``), and the
indices, sorted, either bit-packed with ``ceil(log2 n)`` bits each or as an ``n``-bit
bitmap, whichever is smaller (the choice depends only on ``n`` and ``k``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..formats import PerTensor, choose_qparams_int8, dequantize_int8, quantize_int8
from .codec import TensorCodec

__all__ = ["TopKCodec"]


def _k(n: int, fraction: float) -> int:
    return 0 if n == 0 else min(n, max(1, math.ceil(fraction * n)))


def _index_layout(n: int, k: int) -> tuple[str, int, int]:
    bits = max(1, math.ceil(math.log2(n))) if n > 1 else 1
    packed, bitmap = -(-k * bits // 8), -(-n // 8)
    return ("bitmap", bitmap, bits) if bitmap < packed else ("packed", packed, bits)


class TopKCodec(TensorCodec):
    """Sparse updates: top-``fraction`` entries, int8 values, compact indices."""

    name = "topk"

    def __init__(self, fraction: float = 0.1, *, rounding: str = "nearest") -> None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"topk fraction must be in (0, 1]; got {fraction}.")
        if rounding not in ("nearest", "stochastic"):
            raise ValueError(f"rounding must be 'nearest' or 'stochastic'; got {rounding!r}.")
        self.fraction, self.rounding = float(fraction), rounding

    def params(self) -> dict:
        return {"fraction": self.fraction, "rounding": self.rounding}

    def layout(self, shape: tuple[int, ...]) -> tuple[int, dict]:
        n = math.prod(shape)
        k = _k(n, self.fraction)
        _, idx_bytes, _ = _index_layout(n, k)
        return 4 + k + idx_bytes, {}

    def encode_tensor(self, x: torch.Tensor, generator=None) -> bytes:
        flat = x.reshape(-1)
        n = flat.numel()
        k = _k(n, self.fraction)
        if k == 0:
            return np.float32(1.0).tobytes()
        idx = torch.topk(flat.abs(), k, sorted=False).indices.sort().values
        vals = flat[idx]
        scale, _ = choose_qparams_int8(vals, symmetric=True, granularity=PerTensor())
        q = quantize_int8(vals, scale, symmetric=True, generator=generator if self.rounding == "stochastic" else None)
        mode, nbytes, bits = _index_layout(n, k)
        ii = idx.numpy().astype(np.int64)
        if mode == "bitmap":
            mask = np.zeros(n, dtype=np.uint8)
            mask[ii] = 1
            packed = np.packbits(mask)
        else:
            packed = np.packbits(((ii[:, None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(-1))
        assert packed.size == nbytes
        return scale.reshape(1).numpy().astype(np.float32).tobytes() + q.numpy().tobytes() + packed.tobytes()

    def decode_tensor(self, data: bytes, entry: dict, shape: tuple[int, ...]) -> torch.Tensor:
        n = math.prod(shape)
        k = _k(n, self.fraction)
        mode, nbytes, bits = _index_layout(n, k) if k else ("packed", 0, 1)
        if len(data) != 4 + k + nbytes:
            raise ValueError(f"{len(data)} data bytes, expected {4 + k + nbytes}")
        out = torch.zeros(n, dtype=torch.float32)
        if k == 0:
            return out.reshape(shape)
        buf = np.frombuffer(data, dtype=np.uint8)
        scale = torch.from_numpy(buf[:4].copy().view(np.float32))
        q = torch.from_numpy(buf[4 : 4 + k].copy().view(np.int8))
        raw = buf[4 + k :]
        if mode == "bitmap":
            idx = np.flatnonzero(np.unpackbits(raw)[:n])
        else:
            b = np.unpackbits(raw)[: k * bits].reshape(k, bits).astype(np.int64)
            idx = (b << np.arange(bits)).sum(1)
        if idx.size != k or (idx.size and (idx.max() >= n or np.any(np.diff(idx) <= 0))):
            raise ValueError("index section is inconsistent")
        out[torch.from_numpy(idx)] = dequantize_int8(q, scale)
        return out.reshape(shape)
