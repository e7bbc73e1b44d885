"""Tensors and fed8 payloads as Flower records: bytes travel as one ``uint8`` Array each.

A model goes as the fed8 float32 payload of its float tensors (the bytes the wire counts)
plus a safetensors blob of its integer buffers; an update as the uplink codec's payload.
"""

from __future__ import annotations

from typing import Mapping

import torch

__all__ = ["bytes_array", "from_bytes_array", "state_from_record", "state_to_record"]


def bytes_array(data: bytes):
    from flwr.app import Array

    return Array(dtype="uint8", shape=(len(data),), stype="bytes", data=data)


def from_bytes_array(array) -> bytes:
    return bytes(array.data)


def state_to_record(state: Mapping[str, torch.Tensor]):
    """An ArrayRecord holding a model state; returns ``(record, float payload bytes)``."""
    from flwr.app import ArrayRecord
    from safetensors.torch import save

    from ..compression import make_codec

    floats = {k: v for k, v in state.items() if v.is_floating_point()}
    rest = {k: v.contiguous() for k, v in state.items() if not v.is_floating_point()}
    payload = make_codec("float32").encode(floats)
    rec = {"floats": bytes_array(payload)}
    if rest:
        rec["rest"] = bytes_array(save(rest))
    return ArrayRecord(rec), len(payload)


def state_from_record(record) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    from ..compression import decode

    state = dict(decode(from_bytes_array(record["floats"])))
    if "rest" in record:
        state.update(load(from_bytes_array(record["rest"])))
    return state
