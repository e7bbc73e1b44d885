"""The round logic's transport over Flower's Grid: one message per sampled client per round.

:class:`FlowerTransport` implements :class:`fed8.federated.round.Transport`. The server
keeps fed8's client ids and maps them to Flower node ids itself (a node reports its
``partition-id`` when asked; node ids change when a SuperNode restarts). A ``train``
message carries the round, the fed8 client id, the run's config and the model; the reply
carries the uplink codec's payload, the sample count and the training loss. Replies are
aggregated in client-id order, as in simulation, so both runtimes sum the same floats in
the same order. A client whose reply does not come within ``round_timeout_s`` is a dropout.
"""

from __future__ import annotations

import logging
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch

from ..compression import decode
from ..errors import Fed8Error
from ..federated.client import ClientUpdate
from ..federated.evaluate import client_accuracy_stats
from ..federated.round import Reply
from .messages import from_bytes_array, state_to_record

__all__ = ["FlowerTransport", "discover_nodes"]

log = logging.getLogger("fed8")


def discover_nodes(grid, num_clients: int, *, timeout_s: float) -> dict[int, int]:
    """``{fed8 client id: Flower node id}`` from each node's ``partition-id`` (waits for all of them)."""
    import time

    from flwr.app import ConfigRecord, Message, RecordDict

    deadline = time.monotonic() + timeout_s
    mapping: dict[int, int] = {}
    while time.monotonic() < deadline:
        nodes = [n for n in grid.get_node_ids() if n not in mapping.values()]
        if nodes:
            msgs = [Message(content=RecordDict({"q": ConfigRecord({"what": "partition-id"})}), dst_node_id=n,
                            message_type="query") for n in nodes]
            for r in grid.send_and_receive(msgs, timeout=max(1.0, deadline - time.monotonic())):
                if not r.has_error():
                    mapping[int(r.content["a"]["partition-id"])] = r.metadata.src_node_id
        if len(mapping) >= num_clients:
            return mapping
        time.sleep(0.5)
    raise Fed8Error(f"only {len(mapping)} of {num_clients} SuperNodes answered within {timeout_s:.0f} s "
                    f"(partition ids {sorted(mapping)}).")


class FlowerTransport:
    """fed8's rounds over a Flower ``Grid``.

    Parameters
    ----------
    grid
        The ServerApp's Grid.
    nodes
        ``{fed8 client id: node id}`` (:func:`discover_nodes`).
    config_toml
        The run's resolved config, sent with every message (the ClientApp builds its data,
        model and codecs from it).
    wire
        The run's :class:`fed8.compression.wire.Wire` (byte counts of the float32 reference).
    round_timeout_s
        How long a round waits for replies.
    """

    def __init__(self, grid, nodes: Mapping[int, int], config_toml: str, wire, *, round_timeout_s: float) -> None:
        self.grid, self.nodes, self.config_toml, self.wire = grid, dict(nodes), config_toml, wire
        self.round_timeout_s = round_timeout_s
        self._model = None

    def broadcast(self, rnd: int, state: Mapping[str, torch.Tensor], clients: Sequence[int]) -> int:
        self._model, nbytes = state_to_record(state)
        raw = sum(v.numel() * v.element_size() for v in state.values() if not v.is_floating_point())
        return (nbytes + raw) * len(clients)

    def _messages(self, kind: str, rnd: int, clients: Sequence[int]):
        from flwr.app import ConfigRecord, Message, RecordDict

        return [Message(content=RecordDict({"model": self._model, "job": ConfigRecord(
            {"round": rnd, "client": int(k), "config": self.config_toml})}), dst_node_id=self.nodes[k],
            message_type=kind, ttl=self.round_timeout_s) for k in clients]

    def _send(self, kind: str, rnd: int, clients: Sequence[int]) -> dict[int, object]:
        replies = {}
        for r in self.grid.send_and_receive(self._messages(kind, rnd, clients), timeout=self.round_timeout_s):
            if r.has_error():
                log.warning("round %d: a %s reply is an error (%s); counted as a dropout", rnd, kind, r.error.reason)
                continue
            replies[int(r.content["job"]["client"])] = r.content
        missing = sorted(set(clients) - set(replies))
        if missing:
            log.warning("round %d: no %s reply from clients %s within %.0f s; counted as dropouts", rnd, kind,
                        missing[:10], self.round_timeout_s)
        return replies

    def collect(self, rnd: int, clients: Sequence[int]) -> Iterator[Reply]:
        replies = self._send("train", rnd, clients)
        for k in sorted(replies):  # the order simulation adds them in
            c = replies[k]
            payload = from_bytes_array(c["update"]["payload"])
            job = c["job"]
            yield Reply(ClientUpdate(k, decode(payload), int(job["num_samples"]), float(job["train_loss"])),
                        len(payload))

    def evaluate_clients(self, state: Mapping[str, torch.Tensor]) -> dict:
        self._model, _ = state_to_record(state)
        clients = sorted(self.nodes)
        replies = self._send("evaluate", 0, clients)
        correct, owner = [], []
        for k in sorted(replies):
            hits, n = int(replies[k]["job"]["correct"]), int(replies[k]["job"]["count"])
            correct += [True] * hits + [False] * (n - hits)
            owner += [k] * n
        return client_accuracy_stats(torch.tensor(correct, dtype=torch.bool),
                                     torch.tensor(np.array(owner, dtype=np.int64)), len(self.nodes))

    def float32_bytes(self, state: Mapping[str, torch.Tensor]) -> tuple[int, int]:
        return self.wire.float32_bytes(state)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.wire.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.wire.load_state_dict(state)
