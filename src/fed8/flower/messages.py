"""Tensors and fed8 payloads as Flower records: bytes travel as one ``uint8`` Array each.

A model goes as the fed8 float32 payload of its float tensors (the bytes the wire counts)
plus a safetensors blob of its integer buffers; an update as the uplink codec's payload;
a round's broadcast as the downlink codec's payload (:func:`broadcast_records`), decoded on
the node exactly as the simulation's wire decodes it (:func:`received_state`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:  # imported where a state is read or written (safetensors.torch): a query needs no torch
    import torch

__all__ = ["broadcast_records", "bytes_array", "from_bytes_array", "received_state", "state_from_record",
           "state_to_record"]


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


def broadcast_records(b):
    """A round's downlink (:class:`fed8.compression.wire.Broadcast`) as ``(record, record with base)``.

    ``record`` holds ``floats`` (plain float32) or ``down`` (the downlink codec's payload)
    and ``rest``; the second adds ``base`` (delta mode: the float32 reference a stale client
    lacks), or is None when no delta is sent.
    """
    from flwr.app import ArrayRecord
    from safetensors.torch import save

    from ..compression import make_codec

    rec = {}
    if b.payload is None:
        rec["floats"] = bytes_array(make_codec("float32").encode(
            {k: v for k, v in b.received.items() if k not in b.rest}))
    else:
        rec["down"] = bytes_array(b.payload)
    if b.rest:
        rec["rest"] = bytes_array(save({k: v.contiguous() for k, v in b.rest.items()}))
    with_base = None
    if b.base is not None:
        with_base = ArrayRecord({**rec, "base": bytes_array(make_codec("float32").encode(b.base))})
    return ArrayRecord(rec), with_base


def received_state(record, *, rnd: int, is_delta: bool, keep: bool, node) -> dict[str, torch.Tensor] | None:
    """The model a client starts round ``rnd`` from, decoded from ``record`` as the simulation's wire does.

    ``is_delta``: the payload is ``C(w - w_ref)``, added to ``base`` or, without one, to the
    node's reference of round ``rnd - 1``. ``keep``: the run's downlink sends deltas, so
    the node stores what it decoded (:class:`fed8.flower.node.NodeState`). Returns None
    when a delta needs a reference the node does not have (it missed that broadcast).
    """
    from safetensors.torch import load

    from ..compression import decode

    if "floats" in record:
        floats = dict(decode(from_bytes_array(record["floats"])))
    else:
        d = decode(from_bytes_array(record["down"]))
        base = None
        if is_delta:
            base = decode(from_bytes_array(record["base"])) if "base" in record else node.reference(rnd - 1)
            if base is None:
                return None
        floats = dict(d) if base is None else {k: base[k] + d[k] for k in d}
    if keep:
        node.keep_reference(rnd, floats)
    state = dict(floats)
    if "rest" in record:
        state.update(load(from_bytes_array(record["rest"])))
    return state
