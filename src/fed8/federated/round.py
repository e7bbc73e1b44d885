"""The server side of a federated round, written once over a small transport interface.

Round r (1-based)::

    S       = sample(r)                      seeded (seed, SAMPLE, r); the OS CSPRNG under DP
    for each reply of transport.round(r, w, S), as it arrives:
        aggregator.add(update)               streaming: one update alive at a time
    Delta   = aggregator.result(w)           FedAvg mean, robust rule, DP mean (noised), ...
    w, s    = optimizer.apply(s, w, Delta)   FedAvg, FedAvgM, FedAdam over the explicit state s
    metrics = evaluate(w) every eval_every rounds (server eval split + every client's own data)

Where the aggregator is a plain weighted mean and the transport can average the round's
clients itself (one-step clients in one pass, :mod:`fed8.federated.cohort`), a single
:class:`~fed8.federated.cohort.CohortUpdate` reply stands for all of them.

A round with nothing to aggregate (no client sampled, every update rejected, a secure
round that lost too many clients) is abandoned and the model kept, except under DP,
where the aggregator releases the noised zero sum instead. Transports
(:class:`Transport`): :class:`fed8.federated.simulation.InProcessTransport` (clients are
data shards in this process) and the Flower transport (SuperNodes).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Protocol, Sequence

import torch

from .._rng import SAMPLE
from ..errors import EmptyRoundError, SecAggError
from ..privacy.randomness import PrivacyRandomness
from .aggregator import Aggregator
from .client import ClientUpdate
from .cohort import CohortUpdate
from .optimizer import ServerOptimizer
from .record import CLIENT_ACCURACY_KEYS, RoundRecord
from .sampling import sample_clients

__all__ = ["Reply", "RoundLoop", "Transport"]

#: server-state prefixes that belong to the aggregator chain (DP's adaptive clip, SCAFFOLD's c, FedDyn's h)
AGGREGATOR_STATE = ("privacy.", "scaffold.", "feddyn.")

log = logging.getLogger("fed8")

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Reply:
    """One client's decoded update (or a round's clients already averaged, :class:`CohortUpdate`), the bytes
    its upload took, and any downlink bytes sent late.

    ``downlink_bytes``: bytes the transport had to send this client after the broadcast
    (e.g. a catch-up copy of the reference model a SuperNode lost); counted in the round.
    """

    update: ClientUpdate | CohortUpdate
    uplink_bytes: int
    downlink_bytes: int = 0


class Transport(Protocol):
    """How the server reaches the clients: broadcast, local training, upload, evaluation.

    Optional: ``collect_cohort(rnd, clients, weight) -> Reply | None``, the round's clients
    already averaged with the aggregator's ``weight`` (a :class:`CohortUpdate` reply), or None
    to fall back to :meth:`collect` (:class:`RoundLoop` asks only where the aggregator takes one).
    """

    def broadcast(self, rnd: int, state: Mapping[str, torch.Tensor], clients: Sequence[int]) -> int:
        """Send the global model to ``clients``; returns the downlink bytes."""

    def collect(self, rnd: int, clients: Sequence[int]) -> Iterator[Reply]:
        """The clients' updates of round ``rnd``, as they arrive (missing ones are dropouts)."""

    def evaluate_clients(self, state: Mapping[str, torch.Tensor]) -> dict:
        """``client_accuracy_mean / p10 / min`` of ``state`` on every client's local test split."""

    def evaluate_finetuned(self, state: Mapping[str, torch.Tensor], rnd: int, epochs: int) -> dict:
        """``client_accuracy_finetuned_*``: every client's accuracy after fine-tuning ``state`` (the model after
        round ``rnd``) for ``epochs`` local epochs (:mod:`fed8.federated.finetune`)."""

    def float32_bytes(self, state: Mapping[str, torch.Tensor]) -> tuple[int, int]:
        """What one float32 upload / download of ``state`` would cost."""

    def state_dict(self) -> Tensors:
        """Transport state to checkpoint (e.g. what the clients hold for delta downlinks)."""

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None: ...


@dataclass
class RoundLoop:
    """The server's rounds over any :class:`Transport`.

    Parameters
    ----------
    aggregator, optimizer
        How updates become the mean update, and how it becomes the next model.
    transport
        Where the clients are.
    num_clients, fraction, sampling
        Client sampling (``fixed`` or ``poisson``); ``sampling_randomness`` is where the
        sample comes from (the OS CSPRNG under DP).
    rounds, eval_every
        Rounds to run; evaluate every ``eval_every`` rounds (0: the last only).
    evaluate_server
        ``state -> {"eval_loss", "eval_accuracy"}`` on the server's eval split, or None.
    client_reports
        Whether the clients report numbers from their data outside the training protocol: each
        evaluated round's correct counts on their local test splits, and their training loss
        (releases that DP and secure aggregation do not cover); False: the client accuracy
        fields and ``train_loss`` stay None, and no client is asked to evaluate.
    finetune_epochs
        > 0: after the last round, every client fine-tunes the model that many epochs and reports its
        accuracy (``client_accuracy_finetuned_*`` in the last round's record; a client report, so only
        with ``client_reports``).
    """

    aggregator: Aggregator
    optimizer: ServerOptimizer
    transport: Transport
    num_clients: int
    fraction: float
    rounds: int
    sampling: str = "fixed"
    eval_every: int = 1
    seed: int = 0
    evaluate_server: Callable[[Mapping[str, torch.Tensor]], dict] | None = None
    sampling_randomness: PrivacyRandomness | None = None
    optimizer_state: Tensors = field(default_factory=dict)
    client_reports: bool = True
    finetune_epochs: int = 0  # > 0: after the last round, each client's accuracy after that much fine-tuning

    def __post_init__(self) -> None:
        if self.sampling_randomness is None:
            self.sampling_randomness = PrivacyRandomness(self.seed)
        self.optimizer_state = self.optimizer_state or self.optimizer.init()

    def is_eval_round(self, rnd: int) -> bool:
        return rnd == self.rounds or (self.eval_every > 0 and rnd % self.eval_every == 0)

    def evaluate(self, state: Mapping[str, torch.Tensor]) -> dict:
        out = dict(self.evaluate_server(state)) if self.evaluate_server is not None else {}
        if not self.client_reports:
            return {**out, **{k: None for k in CLIENT_ACCURACY_KEYS}}
        return {**out, **self.transport.evaluate_clients(state)}

    def sample(self, rnd: int) -> list[int]:
        return sample_clients(self.num_clients, self.fraction, sampling=self.sampling,
                              generator=self.sampling_randomness.draws(SAMPLE, rnd))

    def run_round(self, rnd: int, state: Tensors) -> tuple[Tensors, RoundRecord]:
        """Train, aggregate and (if due) evaluate round ``rnd``; the new state and the round's record."""
        t0 = time.perf_counter()
        sampled = self.sample(rnd)
        self.aggregator.begin(rnd, sampled)
        down = self.transport.broadcast(rnd, state, sampled)
        loss_sum, n_sum, up = 0.0, 0, 0
        for reply in self._replies(rnd, sampled):
            u = reply.update
            up += reply.uplink_bytes
            down += reply.downlink_bytes
            if isinstance(u, CohortUpdate):  # clients already averaged (fed8.federated.cohort)
                if self.client_reports:
                    loss_sum += sum(loss * n for loss, n in zip(u.train_losses, u.num_samples))
                    n_sum += sum(u.num_samples)
                self.aggregator.add_cohort(u)
            else:
                if self.client_reports and u.train_loss is not None:  # a client's own loss: a client report
                    loss_sum += u.train_loss * u.num_samples
                    n_sum += u.num_samples
                self.aggregator.add(u)
            del reply, u  # streaming: at most one update alive at a time
        aborted = None
        try:
            delta = self.aggregator.result(state)
            new_state, self.optimizer_state = self.optimizer.apply(self.optimizer_state, state, delta)
        except (SecAggError, EmptyRoundError) as e:
            log.warning("round %d abandoned, model unchanged: %s", rnd, e)
            new_state, aborted = dict(state), str(e)
        extra = self.aggregator.metrics()
        up = extra.pop("uplink_bytes", up)  # secure aggregation sends its own messages
        down += extra.pop("secagg_downlink_bytes", 0)
        up32, down32 = self.transport.float32_bytes(state)
        rec = RoundRecord(round=rnd, num_clients=len(sampled), train_loss=loss_sum / n_sum if n_sum else None,
                          uplink_bytes=up, downlink_bytes=down, uplink_bytes_float32=up32 * len(sampled),
                          downlink_bytes_float32=down32 * len(sampled),
                          rejected_updates=extra.pop("rejected_updates", 0), extra=extra, aborted=aborted)
        if self.is_eval_round(rnd):
            rec = rec.with_eval(self.evaluate(new_state))
        if rnd == self.rounds and self.finetune_epochs > 0 and self.client_reports:
            rec.extra.update(self.transport.evaluate_finetuned(new_state, rnd, self.finetune_epochs))
        rec.seconds = time.perf_counter() - t0
        return new_state, rec

    def _replies(self, rnd: int, sampled: Sequence[int]) -> Iterator[Reply]:
        """The round's replies: one cohort where the aggregator takes one and the transport can make it
        (an optional ``collect_cohort(rnd, clients, weight) -> Reply | None``), else one per client."""
        weight = self.aggregator.cohort_weight()
        make = getattr(self.transport, "collect_cohort", None)
        if weight is not None and make is not None and sampled:
            reply = make(rnd, sampled, weight)
            if reply is not None:
                yield reply
                return
        yield from self.transport.collect(rnd, sampled)

    def server_state(self) -> Tensors:
        """Everything the server checkpoints besides the model: aggregator, optimizer and transport state."""
        return {**self.aggregator.state_dict(), **self.optimizer_state, **self.transport.state_dict()}

    def load_server_state(self, state: Mapping[str, torch.Tensor]) -> None:
        self.aggregator.load_state_dict({k: v for k, v in state.items() if k.startswith(AGGREGATOR_STATE)})
        self.optimizer_state = self.optimizer.check_state(
            {k: v for k, v in state.items() if not k.startswith((*AGGREGATOR_STATE, "wire."))})
        self.transport.load_state_dict({k: v for k, v in state.items() if k.startswith("wire.")})

    def run(self, state: Tensors, *, start_round: int = 0,
            on_round: Callable[[int, Tensors, RoundRecord], None] | None = None,
            before_round: Callable[[int], None] | None = None) -> Tensors:
        """Rounds ``start_round + 1 .. rounds``; ``before_round(r)`` before and ``on_round(r, state, rec)`` after each."""
        for rnd in range(start_round + 1, self.rounds + 1):
            if before_round is not None:
                before_round(rnd)
            state, rec = self.run_round(rnd, state)
            if on_round is not None:
                on_round(rnd, state, rec)
        return state
