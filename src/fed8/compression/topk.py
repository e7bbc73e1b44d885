"""Top-k sparsification: keep the ``fraction`` of entries largest in magnitude, values in int8.

Per tensor: ``k = max(1, ceil(fraction * n))`` entries by ``|x|`` (Aji & Heafield 2017;
with error feedback it converges like dense SGD, Stich et al. 2018). Data section: the
float32 int8 scale, ``k`` int8 values (symmetric, ``s = max|kept| / 127``), and the
sorted indices in chunks of ``2^b`` positions: per chunk its count in ``b + 1`` bits, per
index its offset in the chunk in ``b`` bits, all bit-packed. ``b`` minimizes
``ceil(n / 2^b) (b + 1) + k b`` bits, so the size depends only on ``n`` and ``k``
(``b = 0`` is a bitmap, ``b = ceil(log2 n)`` plain packed indices). At 10% density
this is 0.69 bits per entry, against 1 for a bitmap and 21 for packed indices of a
1.6M-entry tensor.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import ParameterError, PayloadError
from ..formats import PerTensor, choose_qparams_int8, dequantize_int8, quantize_int8
from .codec import TensorCodec

__all__ = ["TopKCodec"]


def _k(n: int, fraction: float) -> int:
    return 0 if n == 0 else min(n, max(1, math.ceil(fraction * n)))


def _index_layout(n: int, k: int) -> tuple[int, int]:
    """(b, bytes): the chunk exponent with the fewest bits for ``k`` of ``n`` indices, and their byte size."""
    top = max(1, math.ceil(math.log2(n))) if n > 1 else 1
    best = min(range(top + 1), key=lambda b: (-(-n >> b) * (b + 1) + k * b, b))
    return best, -(-(-(-n >> best) * (best + 1) + k * best) // 8)


def _pack(values: np.ndarray, bits: int) -> np.ndarray:
    if bits == 0 or values.size == 0:
        return np.zeros(0, np.uint8)
    return np.packbits(((values.astype(np.int64)[:, None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(-1))


def _unpack(raw: np.ndarray, count: int, bits: int) -> np.ndarray:
    if bits == 0 or count == 0:
        return np.zeros(count, np.int64)
    b = np.unpackbits(raw)[: count * bits]
    if b.size != count * bits:
        raise PayloadError("index section too short")
    return (b.reshape(count, bits).astype(np.int64) << np.arange(bits)).sum(1)


class TopKCodec(TensorCodec):
    """Sparse updates: top-``fraction`` entries, int8 values, compact indices."""

    name = "topk"

    def __init__(self, fraction: float = 0.1, *, rounding: str = "nearest") -> None:
        if not 0.0 < fraction <= 1.0:
            raise ParameterError(f"topk fraction must be in (0, 1]; got {fraction}.")
        if rounding not in ("nearest", "stochastic"):
            raise ParameterError(f"rounding must be 'nearest' or 'stochastic'; got {rounding!r}.")
        self.fraction, self.rounding = float(fraction), rounding

    def params(self) -> dict:
        return {"fraction": self.fraction, "rounding": self.rounding}

    def layout(self, shape: tuple[int, ...]) -> tuple[int, dict]:
        n = math.prod(shape)
        k = _k(n, self.fraction)
        return 4 + k + _index_layout(n, k)[1], {}

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
        b, nbytes = _index_layout(n, k)
        ii = idx.numpy().astype(np.int64)
        counts = np.bincount(ii >> b, minlength=-(-n >> b))
        bits = np.concatenate([np.unpackbits(_pack(counts, b + 1))[: counts.size * (b + 1)],
                               np.unpackbits(_pack(ii & ((1 << b) - 1), b))[: k * b]])
        packed = np.packbits(bits)
        if packed.size != nbytes:  # pragma: no cover - the layout arithmetic guarantees it
            raise PayloadError(f"topk index section has {packed.size} bytes, the layout says {nbytes}.")
        return scale.reshape(1).numpy().astype(np.float32).tobytes() + q.numpy().tobytes() + packed.tobytes()

    def decode_tensor(self, data: bytes, entry: dict, shape: tuple[int, ...]) -> torch.Tensor:
        n = math.prod(shape)
        k = _k(n, self.fraction)
        b, nbytes = _index_layout(n, k) if k else (0, 0)
        if len(data) != 4 + k + nbytes:
            raise PayloadError(f"{len(data)} data bytes, expected {4 + k + nbytes}")
        out = torch.zeros(n, dtype=torch.float32)
        if k == 0:
            return out.reshape(shape)
        buf = np.frombuffer(data, dtype=np.uint8)
        scale = torch.from_numpy(buf[:4].copy().view(np.float32))
        q = torch.from_numpy(buf[4 : 4 + k].copy().view(np.int8))
        bits = np.unpackbits(buf[4 + k :])
        chunks = -(-n >> b)
        counts = _unpack(np.packbits(bits[: chunks * (b + 1)]), chunks, b + 1)
        offsets = _unpack(np.packbits(bits[chunks * (b + 1) : chunks * (b + 1) + k * b]), k, b)
        if counts.sum() != k:
            raise PayloadError("index section is inconsistent (chunk counts do not add up to k)")
        idx = (np.repeat(np.arange(chunks), counts) << b) + offsets
        if idx.max() >= n or np.any(np.diff(idx) <= 0) or np.any(counts > (1 << b)):
            raise PayloadError("index section is inconsistent")
        out[torch.from_numpy(idx)] = dequantize_int8(q, scale)
        return out.reshape(shape)
