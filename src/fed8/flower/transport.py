"""The round logic's transport over Flower's Grid: one message per sampled client per round.

:class:`FlowerTransport` implements :class:`fed8.federated.round.Transport`. The server
keeps fed8's client ids and maps them to Flower node ids itself (a node reports its
``partition-id`` when asked; node ids change when a SuperNode restarts). A ``train``
message carries the round, the fed8 client id, the run's config and the model; the reply
carries the uplink codec's payload, the sample count and the training loss. Replies are
aggregated in client-id order, as in simulation, so both runtimes sum the same floats in
the same order.

Faults: a client whose reply does not come within ``round_timeout_s`` is a dropout, and
the message expires then (its ``ttl``), so a node that comes back late never trains on
it; a reply is only taken for the round and client it was asked for. A round with fewer
than ``min_replies`` replies asks the missing clients again (``round_retries`` times),
looking up restarted nodes by partition id, then stops the run with
:class:`~fed8.errors.RoundFailedError`: the last committed round stays, and
``fed8 federation --resume`` continues from it.
"""

from __future__ import annotations

import logging
from typing import Iterator, Mapping, Sequence

import torch

from ..compression import decode
from ..errors import Fed8Error, RoundFailedError
from ..federated.client import ClientUpdate
from ..federated.evaluate import client_accuracy_from_counts
from ..federated.round import Reply
from ..federated.secure import MaskedInput
from .exchange import send_and_receive
from .messages import broadcast_records, from_bytes_array, state_to_record

__all__ = ["FlowerTransport", "discover_nodes"]

log = logging.getLogger("fed8")


def _partitions(grid, node_ids, timeout_s: float) -> dict[int, int]:
    """``{partition id: node id}`` of the nodes in ``node_ids`` that answer a ``query`` within ``timeout_s``."""
    from flwr.app import ConfigRecord, Message, RecordDict

    msgs = [Message(content=RecordDict({"q": ConfigRecord({"what": "partition-id"})}), dst_node_id=n,
                    message_type="query", ttl=max(1.0, timeout_s)) for n in node_ids]
    return {int(r.content["a"]["partition-id"]): r.metadata.src_node_id
            for r in send_and_receive(grid, msgs, timeout=max(1.0, timeout_s)) if not r.has_error()}


def discover_nodes(grid, num_clients: int, *, timeout_s: float) -> dict[int, int]:
    """``{fed8 client id: Flower node id}`` from each node's ``partition-id`` (waits for all of them)."""
    import time

    deadline = time.monotonic() + timeout_s
    mapping: dict[int, int] = {}
    while time.monotonic() < deadline:
        nodes = [n for n in grid.get_node_ids() if n not in mapping.values()]
        if nodes:
            mapping.update(_partitions(grid, nodes, deadline - time.monotonic()))
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
        model, codecs and client hooks from it).
    wire
        The run's :class:`fed8.compression.wire.Wire`: the downlink is encoded here as in
        simulation, and its byte counts are the simulation's.
    round_timeout_s
        How long a round waits for replies (and the messages' ttl).
    min_replies, round_retries
        A round with fewer replies than ``min_replies`` (at most the sampled count) asks its
        missing clients again, ``round_retries`` times, then raises :class:`RoundFailedError`.
    run_key
        Names this run's folder on each node (downlink references, error-feedback residuals).
    """

    def __init__(self, grid, nodes: Mapping[int, int], config_toml: str, wire, *, round_timeout_s: float,
                 run_key: str = "run", min_replies: int = 1, round_retries: int = 0) -> None:
        self.grid, self.nodes, self.config_toml, self.wire = grid, dict(nodes), config_toml, wire
        self.round_timeout_s, self.run_key = round_timeout_s, run_key
        self.min_replies, self.round_retries = min_replies, round_retries
        self.secure = None  # a fed8.flower.secagg.FlowerSecureSum when the run uses secure aggregation
        self.scaffold = None  # the server's side of SCAFFOLD (fed8.federated.scaffold) when train.scaffold is on
        self._control = None
        self._asked: set[int] = set()  # node ids already asked for their partition
        self._model = self._with_base = None
        self._is_delta, self._base_bytes = False, 0

    def broadcast(self, rnd: int, state: Mapping[str, torch.Tensor], clients: Sequence[int]) -> int:
        b = self.wire.prepare_broadcast(rnd, state, clients)
        self._model, self._with_base = broadcast_records(b)
        self._is_delta, self._stale = b.base is not None, b.stale
        self._base_bytes = self.wire.float32_bytes(b.base)[0] if b.base is not None else 0
        self._control = None
        if self.scaffold is not None and self.scaffold.c:  # SCAFFOLD's c goes with the model, as in simulation
            self._control, nbytes = state_to_record(self.scaffold.c)
            return b.nbytes + nbytes * len(clients)
        return b.nbytes

    def message(self, kind: str, rnd: int, k: int, model, *, extra: Mapping | None = None, **job):
        """A ``kind`` message to client ``k``: ``model`` (an ArrayRecord), the job, and ``extra`` records."""
        from flwr.app import ConfigRecord, Message, RecordDict

        return Message(content=RecordDict({"model": model, **(extra or {}), "job": ConfigRecord(
            {"round": rnd, "client": int(k), "config": self.config_toml, "run-key": self.run_key, **job})}),
            dst_node_id=self.nodes[k], message_type=kind, ttl=self.round_timeout_s)

    def send(self, kind: str, rnd: int, messages: Mapping[int, object]) -> dict[int, object]:
        replies = {}
        for r in send_and_receive(self.grid, messages.values(), timeout=self.round_timeout_s):
            if r.has_error():
                log.warning("round %d: a %s reply is an error (%s); counted as a dropout", rnd, kind, r.error.reason)
                continue
            job = r.content["job"]
            if int(job["round"]) != rnd or int(job["client"]) not in messages:
                log.warning("round %d: dropped a %s reply for round %s, client %s", rnd, kind, job["round"],
                            job["client"])  # a stale or foreign reply never reaches this round's sum
                continue
            replies[int(job["client"])] = r.content
        missing = sorted(set(messages) - set(replies))
        if missing:
            log.warning("round %d: no %s reply from clients %s within %.0f s; counted as dropouts", rnd, kind,
                        missing[:10], self.round_timeout_s)
        return replies

    def _train_message(self, rnd: int, k: int, base: bool):
        model = self._with_base if base else self._model
        extra = {"control": self._control} if self._control is not None else {}
        if self.secure is not None:  # stage 2 of secure aggregation: the shares addressed to k, the encoding
            inbox, params = self.secure.train_records(k)
            extra.update({"inbox": inbox, "secagg": params})
        return self.message("train", rnd, k, model, extra=extra, **{"is-delta": self._is_delta,
                                                                     "keep-ref": self.wire.mode == "delta"})

    def refresh(self, clients: Sequence[int]) -> None:
        """Map nodes the Grid lists for the first time to their clients (a restarted SuperNode gets a new id).

        Each new node id is asked its partition once; a client whose node came back under a
        new id is sent to the new one from then on, even while the SuperLink still lists the old.
        """
        fresh = sorted(set(self.grid.get_node_ids()) - set(self.nodes.values()) - self._asked)
        if not fresh:
            return
        self._asked.update(fresh)
        for k, n in _partitions(self.grid, fresh, min(30.0, self.round_timeout_s)).items():
            if k in self.nodes and self.nodes[k] != n:
                log.warning("client %d is now on node %d (was %d): its SuperNode restarted", k, n, self.nodes[k])
                self.nodes[k] = n

    def _train(self, rnd: int, clients: Sequence[int], replies: dict, late: dict) -> None:
        """Send round ``rnd``'s train message to ``clients``; collect good replies into ``replies``."""
        if self.secure is not None:  # only clients that shared keys can send masked input
            clients = [k for k in clients if self.secure.ready(k)]
            if not clients:
                return
        got = self.send("train", rnd, {k: self._train_message(rnd, k, k in self._stale) for k in clients})
        lost = sorted(k for k, c in got.items() if "missing-ref" in c["job"])
        if lost:  # the node missed a broadcast the server counted it as having: send the base now
            log.warning("round %d: clients %s lack the downlink reference; sending it in float32", rnd, lost[:10])
            got.update(self.send("train", rnd, {k: self._train_message(rnd, k, True) for k in lost}))
            late.update({k: late.get(k, 0) + self._base_bytes for k in lost})
        for k in sorted(k for k, c in got.items() if "rejected" in c["job"]):
            log.warning("round %d: client %d found its update not finite and sent no input", rnd, k)
        replies.update({k: c for k, c in got.items() if "missing-ref" not in c["job"] and "rejected" not in c["job"]})

    def collect(self, rnd: int, clients: Sequence[int]) -> Iterator[Reply]:
        if self.secure is not None and self.secure.failed:  # abandoned in its key stages: nothing to train for
            log.warning("round %d: %s; no client trains this round", rnd, self.secure.failed)
            return
        self.refresh(clients)
        replies: dict[int, object] = {}
        late: dict[int, int] = {}
        self._train(rnd, clients, replies, late)
        need = min(self.min_replies, len(clients))
        for attempt in range(self.round_retries):
            if len(replies) >= need:
                break
            missing = [k for k in clients if k not in replies]
            log.warning("round %d: %d of %d replies, fewer than federation.min_replies = %d; asking clients %s "
                        "again (retry %d of %d)", rnd, len(replies), len(clients), need, missing[:10], attempt + 1,
                        self.round_retries)
            self.refresh(missing)
            self._train(rnd, missing, replies, late)
        if len(replies) < need:
            raise RoundFailedError(
                f"round {rnd}: {len(replies)} of {len(clients)} sampled clients replied within "
                f"federation.round_timeout_s = {self.round_timeout_s:g} s (after {self.round_retries} retries), fewer "
                f"than federation.min_replies = {need}; the run stops with round {rnd - 1} committed. Bring the "
                "SuperNodes back and continue with fed8 federation --resume RUN_DIR, or lower federation.min_replies.")
        for k in sorted(replies):  # the order simulation adds them in
            c = replies[k]
            payload = from_bytes_array(c["update"]["payload"])
            job = c["job"]
            if self.secure is not None:
                yield Reply(MaskedInput(k, payload, *_reported(job)),
                            len(payload), late.get(k, 0))
                continue
            yield Reply(ClientUpdate(k, decode(payload), *_reported(job)),
                        len(payload), late.get(k, 0))

    def evaluate_clients(self, state: Mapping[str, torch.Tensor]) -> dict:
        model, _ = state_to_record(state)
        replies = self.send("evaluate", 0, {k: self.message("evaluate", 0, k, model) for k in sorted(self.nodes)})
        return client_accuracy_from_counts([(int(replies[k]["job"]["correct"]), int(replies[k]["job"]["count"]))
                                            if k in replies else (0, 0) for k in sorted(self.nodes)])

    def evaluate_finetuned(self, state: Mapping[str, torch.Tensor], rnd: int, epochs: int) -> dict:
        """Every node fine-tunes ``state`` on its own data and sends back its correct count (the ClientApp's
        ``evaluate.finetuned``); a node that does not reply counts as no test images."""
        from ..federated.finetune import finetuned_stats

        model, _ = state_to_record(state)
        replies = self.send("evaluate.finetuned", rnd, {
            k: self.message("evaluate.finetuned", rnd, k, model, epochs=epochs) for k in sorted(self.nodes)})
        return finetuned_stats([(int(replies[k]["job"]["correct"]), int(replies[k]["job"]["count"]))
                                if k in replies else (0, 0) for k in sorted(self.nodes)])

    def float32_bytes(self, state: Mapping[str, torch.Tensor]) -> tuple[int, int]:
        return self.wire.float32_bytes(state)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.wire.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.wire.load_state_dict(state)


def _reported(job) -> tuple[int, float | None]:
    """A train reply's sample count and training loss; 0 and None where the client kept them
    (``privacy.client_reports`` off: the server's side of the mechanism does not use them)."""
    return (int(job["num_samples"]) if "num_samples" in job else 0,
            float(job["train_loss"]) if "train_loss" in job else None)
