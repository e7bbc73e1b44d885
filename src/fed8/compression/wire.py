"""Both directions of the wire for one simulated federation: encode, count real bytes, decode.

* **Downlink**, once per round (every sampled client receives the same bytes):
  ``full`` sends ``C(w)``; ``delta`` sends ``C(w - w_ref)`` where ``w_ref`` is the
  model the clients already hold, and both sides then hold ``w_ref + D(C(w - w_ref))``
  (the server tracks it, so downlink error does not accumulate). A client that missed
  the previous broadcast gets ``w_ref`` in float32 instead, and is counted at that size.
  Clients train from the decoded model, so a lossy downlink affects accuracy as it would.
* **Uplink**, per client: ``C(delta)`` (or with error feedback), decoded on the server
  before aggregation. Bytes counted are ``len(payload)``.
Non-floating-point state entries (e.g. BatchNorm step counters) travel as safetensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from .._rng import COMPRESS, DOWNLINK, torch_generator
from .codec import TensorCodec
from .registry import decode
from .feedback import ErrorFeedback, ResidualStore
from .floats import FloatCodec

__all__ = ["Broadcast", "Wire"]

Tensors = dict[str, torch.Tensor]


def _raw_bytes(tensors: Mapping[str, torch.Tensor]) -> int:
    if not tensors:
        return 0
    from safetensors.torch import save

    return len(save({k: v.contiguous() for k, v in tensors.items()}))


@dataclass(frozen=True)
class Broadcast:
    """One round's downlink.

    Attributes
    ----------
    received
        The model every sampled client starts from (decoded floats + the raw entries).
    nbytes
        Downlink bytes of the round, all sampled clients together.
    payload
        The downlink codec's bytes (``C(w)``, or ``C(w - w_ref)`` in delta mode); None when
        the floats go as plain float32.
    base
        Delta mode: ``w_ref``, what an up-to-date client already holds (None otherwise).
    stale
        Delta mode: sampled clients that missed the previous broadcast and get ``base`` too.
    rest
        Non-floating-point entries (sent as safetensors).
    """

    received: Tensors
    nbytes: int
    payload: bytes | None
    base: Tensors | None
    stale: frozenset
    rest: Tensors


class Wire:
    """Uplink and downlink codecs of a simulation, their state, and byte counts."""

    def __init__(self, uplink: TensorCodec, downlink: TensorCodec, *, seed: int, num_clients: int,
                 downlink_mode: str = "full", residuals: ResidualStore | None = None) -> None:
        self.uplink, self.downlink, self.mode = uplink, downlink, downlink_mode
        self.seed, self.num_clients = seed, num_clients
        self.feedback = ErrorFeedback(uplink, residuals) if residuals is not None else None
        self.ref: Tensors | None = None  # delta mode: the model every up-to-date client holds
        self.last_seen = torch.full((num_clients,), -1, dtype=torch.int64)  # round of each client's last broadcast
        self._f32 = FloatCodec("float32")

    @property
    def exact(self) -> bool:
        return self.uplink.name == "float32" and self.downlink.name == "float32" and self.feedback is None

    def broadcast(self, rnd: int, state: Mapping[str, torch.Tensor], sampled: Sequence[int]) -> tuple[Tensors, int]:
        """The model the sampled clients start from, and the downlink bytes of sending it to them."""
        b = self.prepare_broadcast(rnd, state, sampled)
        return b.received, b.nbytes

    def prepare_broadcast(self, rnd: int, state: Mapping[str, torch.Tensor],
                          sampled: Sequence[int]) -> "Broadcast":
        """Round ``rnd``'s downlink: what is sent to whom, what each client then holds, the bytes.

        Advances the delta-mode reference (the server's copy of what the clients hold).
        """
        floats = {k: v for k, v in state.items() if v.is_floating_point()}
        rest = {k: v for k, v in state.items() if not v.is_floating_point()}
        raw = _raw_bytes(rest)
        gen = torch_generator(self.seed, DOWNLINK, rnd)
        payload, base, stale = None, None, frozenset()
        if self.mode == "full" or self.ref is None:
            if self.downlink.name == "float32":
                received, size = floats, self.downlink.size(floats)
            else:
                payload = self.downlink.encode(floats, generator=gen)
                received, size = decode(payload), len(payload)
            total = (size + raw) * len(sampled)
        else:
            payload = self.downlink.encode({k: floats[k] - self.ref[k] for k in floats}, generator=gen)
            d = decode(payload)
            base = self.ref
            received = {k: self.ref[k] + d[k] for k in floats}
            stale = frozenset(k for k in sampled if int(self.last_seen[k]) != rnd - 1)
            catch_up = self._f32.size(floats)  # clients that missed the last broadcast get w_ref in float32
            total = sum(len(payload) + (catch_up if k in stale else 0) + raw for k in sampled)
        if self.mode == "delta":
            self.ref = {k: v.clone() for k, v in received.items()}
            # every client could follow along; only those sampled were counted (others catch up later)
            self.last_seen[list(sampled)] = rnd
        return Broadcast({**received, **rest}, total, payload, base, stale, rest)

    def upload(self, rnd: int, client: int, delta: Mapping[str, torch.Tensor]) -> tuple[Tensors, int]:
        """What the server decodes from ``client``'s update, and the payload's length."""
        gen = torch_generator(self.seed, COMPRESS, rnd, client)
        if self.feedback is not None:
            payload, decoded = self.feedback.encode(delta, client=client, round=rnd, generator=gen)
            return decoded, len(payload)
        if self.uplink.name == "float32":  # identity: skip the copy, count the exact size
            return dict(delta), self.uplink.size(delta)
        payload = self.uplink.encode(delta, generator=gen)
        return decode(payload), len(payload)

    def float32_bytes(self, state: Mapping[str, torch.Tensor]) -> tuple[int, int]:
        """(uplink, downlink) bytes per client if everything went as float32 payloads (the reference)."""
        floats = {k: v for k, v in state.items() if v.is_floating_point()}
        return self._f32.size(floats), self._f32.size(floats) + _raw_bytes(
            {k: v for k, v in state.items() if not v.is_floating_point()})

    # -- resume state -------------------------------------------------------------
    def state_dict(self) -> Tensors:
        out = {"wire.last_seen": self.last_seen.clone()}
        if self.ref is not None:
            out.update({f"wire.ref.{k}": v for k, v in self.ref.items()})
        return out

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        if "wire.last_seen" in state:
            self.last_seen = state["wire.last_seen"].clone()
        ref = {k[len("wire.ref."):]: v.clone() for k, v in state.items() if k.startswith("wire.ref.")}
        self.ref = ref or None
