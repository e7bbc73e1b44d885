"""Scaled 8-bit codecs: ``int8`` and ``float8_e4m3fn`` / ``float8_e5m2``, using :mod:`fed8.formats`.

Per tensor, per channel (axis 0 of tensors with two or more dimensions; 1-D tensors get
one scale) or per block of ``block_size`` consecutive elements. Data section per tensor:
the float32 scales, then one byte per element.

* ``int8``: symmetric, ``s = amax / 127``, codes ``clamp(round(x / s), -127, 127)``;
  round half to even (``|x - x_hat| <= s / 2``) or stochastic (``floor(x / s + u)``,
  ``u ~ U[0, 1)``: unbiased, ``|x - x_hat| < s``).
* FP8: ``s = amax / max`` (448 for e4m3fn, 57344 for e5m2), codes are the format's
  bytes of ``x / s`` rounded to nearest even, saturating: relative error ``<= 2^-4``
  (e4m3fn) or ``2^-3`` (e5m2) for normals, absolute ``<= s * 2^-10`` / ``s * 2^-17`` below.
"""

from __future__ import annotations

import math

import torch

from ..errors import ParameterError, PayloadError
from ..formats import FORMATS_8BIT, PerBlock, PerChannel, PerTensor, QParams, choose_qparams, dequantize, quantize
from .codec import TensorCodec

__all__ = ["GRANULARITIES", "ScaledCodec"]

GRANULARITIES = ("tensor", "channel", "block")
ROUNDINGS = ("nearest", "stochastic")


class ScaledCodec(TensorCodec):
    """8-bit codes with float32 scales; ``name`` is ``int8``, ``float8_e4m3fn`` or ``float8_e5m2``."""

    def __init__(self, name: str = "int8", *, granularity: str = "channel", block_size: int = 256,
                 rounding: str = "nearest") -> None:
        if name not in FORMATS_8BIT:
            raise ParameterError(f"codec format must be one of {', '.join(FORMATS_8BIT)}; got {name!r}.")
        if granularity not in GRANULARITIES:
            raise ParameterError(f"granularity must be one of {', '.join(GRANULARITIES)}; got {granularity!r}.")
        if rounding not in ROUNDINGS:
            raise ParameterError(f"rounding must be one of {', '.join(ROUNDINGS)}; got {rounding!r}.")
        if rounding == "stochastic" and name != "int8":
            raise ParameterError(f"stochastic rounding is implemented for int8 only; got it for {name}.")
        if block_size < 1:
            raise ParameterError(f"block_size must be >= 1; got {block_size}.")
        self.name, self.granularity, self.block_size, self.rounding = name, granularity, int(block_size), rounding

    def params(self) -> dict:
        return {"granularity": self.granularity, "block_size": self.block_size, "rounding": self.rounding}

    def _g(self, shape: tuple[int, ...]):
        if self.granularity == "channel" and len(shape) >= 2:
            return PerChannel(0)
        if self.granularity == "block":
            return PerBlock(self.block_size)
        return PerTensor()

    def _num_scales(self, shape: tuple[int, ...]) -> int:
        g, n = self._g(shape), math.prod(shape)
        if isinstance(g, PerChannel):
            return shape[0]
        if isinstance(g, PerBlock):
            return -(-n // self.block_size)
        return 1

    def layout(self, shape: tuple[int, ...]) -> tuple[int, dict]:
        return 4 * self._num_scales(shape) + math.prod(shape), {}

    def encode_tensor(self, x: torch.Tensor, generator=None) -> bytes:
        g = self._g(tuple(x.shape))
        qp = choose_qparams(x, self.name, granularity=g, method="amax")  # symmetric int8, amax FP8
        codes = quantize(x, qp, self.name, granularity=g,
                         generator=generator if self.rounding == "stochastic" else None).view(torch.uint8)
        n = math.prod(x.shape)
        return (qp.scale.reshape(-1).to(torch.float32).numpy().tobytes()
                + codes.reshape(-1)[:n].contiguous().numpy().tobytes())

    def decode_tensor(self, data: bytes, entry: dict, shape: tuple[int, ...]) -> torch.Tensor:
        ns, n = self._num_scales(shape), math.prod(shape)
        if len(data) != 4 * ns + n:
            raise PayloadError(f"{len(data)} data bytes, expected {4 * ns + n}")
        buf = bytearray(data)
        scale = torch.frombuffer(buf, dtype=torch.float32, count=ns)
        codes = torch.frombuffer(buf, dtype=torch.uint8, offset=4 * ns, count=n)
        if not torch.isfinite(scale).all():
            raise PayloadError("non-finite scale")
        g = self._g(shape)
        if isinstance(g, PerBlock):
            pad = (-n) % self.block_size
            codes = torch.cat([codes, codes.new_zeros(pad)]).reshape(-1, self.block_size)
            scale = scale.reshape(-1, 1)
        else:
            codes = codes.reshape(shape) if shape else codes.reshape(())
            if isinstance(g, PerChannel):
                scale = scale.reshape([shape[0]] + [1] * (len(shape) - 1))
            else:
                scale = scale.reshape([1] * len(shape))
        return dequantize(codes, QParams(scale), self.name, granularity=g, shape=torch.Size(shape)).reshape(shape)
