"""Codec names, construction from the config and from a payload header, and decoding any payload."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from ..errors import ParameterError, PayloadError
from .codec import TensorCodec, decode_tensors, unframe
from .floats import FloatCodec
from .scaled import ScaledCodec
from .topk import TopKCodec

__all__ = ["CODECS", "codec_from_header", "decode", "make_codec"]

CODECS = ("float32", "float16", "bfloat16", "int8", "float8_e4m3fn", "float8_e5m2", "topk")


def make_codec(name: str, *, granularity: str = "channel", block_size: int = 256, rounding: str = "nearest",
               topk_fraction: float = 0.1) -> TensorCodec:
    """The codec called ``name`` with its options (unused options are ignored)."""
    if name in ("float32", "float16", "bfloat16"):
        return FloatCodec(name)
    if name in ("int8", "float8_e4m3fn", "float8_e5m2"):
        return ScaledCodec(name, granularity=granularity, block_size=block_size,
                           rounding=rounding if name == "int8" else "nearest")
    if name == "topk":
        return TopKCodec(topk_fraction, rounding=rounding)
    raise ParameterError(f"codec must be one of {', '.join(CODECS)}; got {name!r}.")


def codec_from_header(name: str, params: Mapping[str, Any]) -> TensorCodec:
    try:
        if name == "topk":
            return TopKCodec(float(params["fraction"]), rounding=params.get("rounding", "nearest"))
        if name in ("int8", "float8_e4m3fn", "float8_e5m2"):
            return ScaledCodec(name, granularity=params["granularity"], block_size=int(params["block_size"]),
                               rounding=params.get("rounding", "nearest"))
        return make_codec(name)
    except (ValueError, KeyError, TypeError) as e:
        raise PayloadError(f"payload names codec {name!r} with parameters {dict(params)} that this fed8 cannot "
                           f"decode ({e}).") from None


def decode(payload: bytes) -> dict[str, torch.Tensor]:
    """Decode any fed8 payload (the codec and its parameters are read from its header)."""
    header, chunks = unframe(payload)
    return decode_tensors(codec_from_header(header["codec"], header.get("params", {})), header, chunks)
