"""Float codecs: ``float32`` (identity), ``float16`` and ``bfloat16`` (round to nearest even, saturating)."""

from __future__ import annotations

import torch

from ..errors import ParameterError
from .codec import TensorCodec

__all__ = ["FloatCodec"]

_TORCH = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_VIEW = {"float32": torch.int32, "float16": torch.int16, "bfloat16": torch.int16}


class FloatCodec(TensorCodec):
    """Raw IEEE floats. float16 saturates at +-65504 (a finite update never becomes inf).

    Error bound (round to nearest): relative ``2^-11`` for float16 normals, ``2^-8`` for
    bfloat16, exact for float32.
    """

    def __init__(self, name: str = "float32") -> None:
        if name not in _TORCH:
            raise ParameterError(f"float codec must be one of {', '.join(_TORCH)}; got {name!r}.")
        self.name = name

    def layout(self, shape: tuple[int, ...]) -> tuple[int, dict]:
        n = 1
        for d in shape:
            n *= d
        return n * _TORCH[self.name].itemsize, {}

    def encode_tensor(self, x, generator=None) -> bytes:
        if self.name == "float16":
            x = x.clamp(-65504.0, 65504.0)
        return x.to(_TORCH[self.name]).reshape(-1).view(_VIEW[self.name]).numpy().tobytes()

    def decode_tensor(self, data: bytes, entry: dict, shape: tuple[int, ...]) -> torch.Tensor:
        t = torch.frombuffer(bytearray(data), dtype=_VIEW[self.name]).view(_TORCH[self.name])
        return t.to(torch.float32).reshape(shape)
