"""The in-process transport: every client is a data shard in this process.

:class:`InProcessTransport` implements :class:`fed8.federated.round.Transport`: the
broadcast goes through the downlink codec, each sampled client k runs
:func:`~fed8.federated.client.train_client` from the decoded model with the generator of
(seed, TRAIN, r, k), its client hooks (local DP, simulated attacks), then the uplink
codec. :class:`Simulation` puts it under the round logic of
:class:`fed8.federated.round.RoundLoop` with the server's eval split.

Because each round depends only on (global model, server state, seed, r), a run
resumed from the checkpoint of round r replays rounds r+1.. bit for bit. Under DP
the privacy draws (sample, noise) are fresh on every attempt: a resumed run keeps its
committed rounds and redraws the rest.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, Sequence, TypeVar

import torch
from torch import nn

from .._rng import TRAIN, torch_generator
from ..privacy.randomness import PrivacyRandomness
from .aggregator import Aggregator
from .client import ClientData, ClientUpdate, LocalTraining, local_test_split, to_device, train_client
from .evaluate import client_accuracy_stats, loss_and_accuracy, predict, predict_correct
from .optimizer import ServerOptimizer
from .round import Reply, RoundLoop

if TYPE_CHECKING:
    from ..compression.feedback import ResidualStore
    from ..compression.wire import Wire
    from .distributed import Workers
    from .parallel import ClientThreads
    from .scaffold import ClientStateAggregate

__all__ = ["ClientHook", "InProcessTransport", "Simulation"]

log = logging.getLogger("fed8")

Tensors = dict[str, torch.Tensor]
# A client-side transform of an update before it is sent: (round, update) -> update.
ClientHook = Callable[[int, ClientUpdate], ClientUpdate]

T = TypeVar("T")


@dataclass
class InProcessTransport:
    """All clients in this process: trained one after another, several at a time on threads, or batched.

    Parameters
    ----------
    model
        Working copy of the architecture, reused by every client and for evaluation.
    clients
        One :class:`ClientData` per client.
    local
        The clients' local SGD values.
    seed
        Root seed of the clients' minibatch shuffling.
    wire
        Uplink / downlink codecs; None = float32 both ways.
    client_hooks
        Client-side transforms applied in order to each update before it is encoded.
    eval_batch_size
        Batch size of the clients' evaluation.
    client_batch_size
        1: clients one after another (:func:`~fed8.federated.client.train_client`); > 1, or
        0 for an automatic size: chunks of clients trained together
        (:func:`~fed8.federated.batched.train_clients_batched`), falling back to one by one
        (reason logged once) for models it cannot batch, and for models that train slower
        batched on ``device`` (:func:`~fed8.federated.batched.batching_slower`) unless
        ``batch_when_slower``.
    batch_when_slower
        Batch those too (``run.client_batching = "on"``).
    workers
        :class:`~fed8.federated.distributed.Workers`: the clients' training sharded over the
        ranks of a ``torch.distributed`` group (this process is rank 0); None: all here.
    device
        Where the clients train and the model is evaluated (``fed8._device``): the model
        and every client's images move there once; each update comes back to the CPU before
        its client hooks and the uplink codec, so the server side is the CPU's.
    parallel_clients, client_threads
        Clients trained one by one are trained ``parallel_clients`` at a time, each on
        ``client_threads`` torch threads (:mod:`fed8.federated.parallel`; from
        :func:`~fed8.federated.parallel.client_parallelism`); 1: one after another on this
        thread's torch threads.
    scaffold, controls
        SCAFFOLD or FedDyn (a :class:`~fed8.federated.scaffold.ClientStateAggregate`): the server's
        side, whose ``c`` (SCAFFOLD's) goes out with each broadcast, and the store of the clients'
        own state (``c_i``, FedDyn's ``g_k``); clients then train one by one (each has its own
        correction). None: plain local SGD.
    """

    model: nn.Module
    clients: Sequence[ClientData]
    local: LocalTraining
    seed: int
    wire: "Wire | None" = None
    client_hooks: Sequence[ClientHook] = ()
    eval_batch_size: int = 500
    client_batch_size: int = 1  # > 1 or 0 (auto): train chunks of clients together (fed8.federated.batched)
    batch_when_slower: bool = False  # batch models that batching_blocker allows but batching_slower flags
    workers: "Workers | None" = None  # worker ranks of a torch.distributed group (fed8.federated.distributed)
    device: torch.device = torch.device("cpu")
    parallel_clients: int = 1
    client_threads: int = 1
    scaffold: "ClientStateAggregate | None" = None
    controls: "ResidualStore | None" = None

    def __post_init__(self) -> None:
        if self.device.type != "cpu":  # once: the model and every client's images
            self.model.to(self.device)
            self.clients = [to_device(c, self.device) for c in self.clients]
        self.local_x, self.local_y, self.owner = local_test_split(self.clients)  # owner: on the CPU
        if self.wire is None:
            from ..compression import make_codec
            from ..compression.wire import Wire

            self.wire = Wire(make_codec("float32"), make_codec("float32"), seed=self.seed,
                             num_clients=len(self.clients))
        self._received: Tensors = {}

    def broadcast(self, rnd: int, state: Mapping[str, torch.Tensor], clients: Sequence[int]) -> int:
        self._received, down = self.wire.broadcast(rnd, state, clients)
        if self.scaffold is not None:  # SCAFFOLD's c goes with the model (a float32 payload; nothing while it is zero)
            self._control = dict(self.scaffold.c)
            down += self.wire.float32_bytes(self._control)[0] * len(clients) if self._control else 0
        return down

    def _updates(self, rnd: int, clients: Sequence[int]) -> Iterator[ClientUpdate]:
        """The clients' trained updates, in order; sharded over the worker ranks when there are some."""
        if self.workers is not None:
            yield from self.workers.updates(rnd, self._received, clients,
                                            lambda ks: self.local_updates(rnd, self._received, ks))
        else:
            yield from self.local_updates(rnd, self._received, clients)

    def local_updates(self, rnd: int, received: Mapping[str, torch.Tensor],
                      clients: Sequence[int]) -> Iterator[ClientUpdate]:
        """``clients``' updates trained here from ``received``: one by one, or chunk by chunk when batching applies."""
        received = self._on_device(received)  # the round's model moves once, not per client
        chunk = self.client_batch_size
        if chunk != 1:
            from .batched import auto_chunk, batching_blocker, batching_slower

            why = getattr(self, "_unbatchable", None) or batching_blocker(self.model) or (
                "each client's steps are corrected by its own state (SCAFFOLD, FedDyn)" if self.scaffold is not None
                else None)
            if why is None and not self.batch_when_slower:
                why = batching_slower(self.model, self.device)
            if why is not None:
                self._tell_unbatched(why)
                chunk = 1
            elif chunk == 0:
                chunk = auto_chunk(self.model, len(clients))
        if chunk == 1:
            yield from self._one_by_one(rnd, received, clients)
            return
        from .batched import train_clients_batched

        for i in range(0, len(clients), chunk):
            ks = list(clients[i : i + chunk])
            try:
                local = self.local.at_round(rnd)
                updates = train_clients_batched(
                    self.model, received, [self.clients[k] for k in ks], local,
                    generators=[torch_generator(self.seed, TRAIN, rnd, k) for k in ks], clients=ks,
                    epochs=[local.for_client(rnd, k).epochs for k in ks])
            except Exception as e:  # noqa: BLE001 - torch.func could not trace this model: one by one, said once
                if getattr(self, "_batched_once", False):
                    raise  # it traced before: a real error, not a model vmap cannot batch
                first = (str(e).splitlines() or [""])[0]
                self._unbatchable = (f"torch.func could not batch it ({type(e).__name__}: "
                                     f"{first[:200] + ('...' if len(first) > 200 else '')})")
                self._tell_unbatched(self._unbatchable)
                yield from self._one_by_one(rnd, received, clients[i:])
                return
            self._batched_once = True
            yield from updates

    def _tell_unbatched(self, why: str) -> None:
        """Say once why the clients train one after another: a warning where batching was forced (``on``), a note
        under ``auto``, where falling back is what it means."""
        if not getattr(self, "_told", False):
            (log.warning if self.batch_when_slower else log.info)(
                "client batching is off for this model: %s; clients train one after another", why)
            self._told = True

    def _one_by_one(self, rnd: int, received: Mapping[str, torch.Tensor],
                    clients: Sequence[int]) -> Iterator[ClientUpdate]:
        """``clients``' updates, each trained on its own (several at a time on client threads, if so configured)."""
        local = self.local.at_round(rnd)

        def plain(model: nn.Module, k: int, correction: Mapping[str, torch.Tensor] | None = None) -> ClientUpdate:
            return train_client(model, received, self.clients[k], local.for_client(rnd, k),
                                generator=torch_generator(self.seed, TRAIN, rnd, k), client=k, correction=correction)

        def with_controls(model: nn.Module, k: int) -> ClientUpdate:  # SCAFFOLD, FedDyn: corrected, then state stored
            return self.scaffold.client_round(lambda corr: plain(model, k, corr), self.controls, k, rnd,
                                              self._control, local.for_client(rnd, k))

        yield from self._each_client(plain if self.scaffold is None else with_controls, clients)

    def _each_client(self, one: Callable[[nn.Module, int], T], clients: Sequence[int]) -> Iterator[T]:
        """``one(model, k)`` for each client in order: on the client threads (largest first, each on its own
        model copy and thread count) where parallel clients are on, else one after another on the main model."""
        if self.parallel_clients > 1 and len(clients) > 1:
            yield from self._threads().map(one, clients, cost=lambda k: self.clients[k].num_train)
        else:
            yield from (one(self.model, k) for k in clients)

    def _threads(self) -> "ClientThreads":
        """The worker threads of parallel clients, started on first use."""
        if getattr(self, "_pool", None) is None:
            from .parallel import ClientThreads

            self._pool = ClientThreads(self.model, workers=self.parallel_clients, threads_per_client=self.client_threads)
            log.info("clients train %d at a time, %d torch thread(s) each", self.parallel_clients, self.client_threads)
        return self._pool

    def close(self) -> None:
        """The rounds are over: worker ranks, if any, stop serving; client threads, if any, stop."""
        if self.workers is not None:
            self.workers.stop()
            self.workers = None
        if getattr(self, "_pool", None) is not None:
            self._pool.close()
            self._pool = None

    def collect(self, rnd: int, clients: Sequence[int]) -> Iterator[Reply]:
        for update in self._updates(rnd, clients):
            k = update.client
            if self.device.type != "cpu":  # what leaves the client, and the whole server side, is on the CPU
                update = ClientUpdate(k, {n: v.cpu() for n, v in update.delta.items()}, update.num_samples,
                                      update.train_loss)
            for hook in self.client_hooks:
                update = hook(rnd, update)
            delta, nbytes = self.wire.upload(rnd, k, update.delta)
            yield Reply(ClientUpdate(k, delta, update.num_samples, update.train_loss), nbytes)
            del update, delta

    def _on_device(self, state: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        """``state`` on the training device (itself on the CPU)."""
        return state if self.device.type == "cpu" else {k: v.to(self.device) for k, v in state.items()}

    def collect_cohort(self, rnd: int, clients: Sequence[int], weight: Callable[[int], float]) -> Reply | None:
        """The round's clients in one pass (:mod:`fed8.federated.cohort`), or None where that does not apply.

        Only with client batching on, no worker ranks, no client hooks and float32 uploads without
        error feedback; None too when the pass is not finite (then each client's update is
        trained and validated on its own, so a bad client is rejected, not the round).
        """
        from .cohort import cohort_blocker, train_cohort

        from .hooks import WithholdNonFinite  # a finite mean has no non-finite client in it: nothing to withhold

        hooks = [h for h in self.client_hooks if not isinstance(h, WithholdNonFinite)]
        if (self.client_batch_size == 1 or self.workers is not None or hooks or self.scaffold is not None
                or self.wire.uplink.name != "float32" or self.wire.feedback is not None):
            return None
        data = [self.clients[k] for k in clients]
        local = self.local.at_round(rnd)
        why = cohort_blocker(self.model, data, local)
        if why is not None or sum(weight(d.num_train) for d in data) <= 0:
            return None
        c = train_cohort(self.model, self._on_device(self._received), data, local, weight=weight, clients=clients,
                         generators=[torch_generator(self.seed, TRAIN, rnd, k) for k in clients]
                         if self.local.augment.active else None)
        if not all(bool(torch.isfinite(v.sum())) for v in c.mean.values()):
            log.info("round %d: the one-pass mean is not finite; training the clients one by one", rnd)
            return None
        if self.device.type != "cpu":
            c = dataclasses.replace(c, mean={k: v.cpu() for k, v in c.mean.items()})
        if not getattr(self, "_told_cohort", False):
            log.info("every client takes one local step: each round's clients train as one pass (FedSGD's identity)")
            self._told_cohort = True
        return Reply(c, self.wire.uplink.size(c.mean) * len(clients))

    def evaluate_clients(self, state: Mapping[str, torch.Tensor]) -> dict:
        self.model.load_state_dict(state)
        _, correct = predict_correct(self.model, self.local_x, self.local_y, batch_size=self.eval_batch_size)
        return client_accuracy_stats(correct, self.owner, len(self.clients))

    def evaluate_finetuned(self, state: Mapping[str, torch.Tensor], rnd: int, epochs: int) -> dict:
        """``client_accuracy_finetuned_*``: every client fine-tunes ``state`` for ``epochs`` epochs, then evaluates
        (:mod:`fed8.federated.finetune`)."""
        from .finetune import finetune_correct, finetuned_stats, finetuning

        local, state = finetuning(self.local, rnd, epochs), self._on_device(state)

        def one(model: nn.Module, k: int) -> tuple[int, int]:
            return finetune_correct(model, state, self.clients[k], local, seed=self.seed, client=k,
                                    batch_size=self.eval_batch_size)

        # the thread count each client trains with in the rounds
        return finetuned_stats(list(self._each_client(one, range(len(self.clients)))))

    def float32_bytes(self, state: Mapping[str, torch.Tensor]) -> tuple[int, int]:
        return self.wire.float32_bytes(state)

    def state_dict(self) -> Tensors:
        return self.wire.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.wire.load_state_dict(state)


class Simulation(RoundLoop):
    """A federation in one process: :class:`RoundLoop` over :class:`InProcessTransport`.

    Parameters
    ----------
    model, clients, local, wire, client_hooks, client_batch_size, batch_when_slower, parallel_clients, client_threads
        As for :class:`InProcessTransport`.
    eval_x, eval_y
        The server's eval split.
    aggregator, optimizer, rounds, fraction, sampling, eval_every, seed, sampling_randomness, client_reports,
    finetune_epochs
        As for :class:`RoundLoop`. An aggregator with a
        :class:`~fed8.federated.scaffold.ScaffoldAggregate` in its chain trains with SCAFFOLD.
    controls
        Where SCAFFOLD's clients keep their controls (the run directory's ``controls/``); in memory if None.
    eval_batch_size
        Batch size of every evaluation.
    device
        As for :class:`InProcessTransport`; the eval split moves there too.
    """

    def __init__(self, *, model: nn.Module, clients: Sequence[ClientData], eval_x: torch.Tensor,
                 eval_y: torch.Tensor, aggregator: Aggregator, optimizer: ServerOptimizer, local: LocalTraining,
                 rounds: int, fraction: float, sampling: str = "fixed", eval_every: int = 1,
                 eval_batch_size: int = 500, seed: int = 0, wire: "Wire | None" = None,
                 client_hooks: Sequence[ClientHook] = (),
                 sampling_randomness: PrivacyRandomness | None = None, client_batch_size: int = 1,
                 batch_when_slower: bool = False, device: torch.device | None = None, parallel_clients: int = 1,
                 client_threads: int = 1, client_reports: bool = True,
                 controls: "ResidualStore | None" = None, finetune_epochs: int = 0) -> None:
        device = device if device is not None else torch.device("cpu")
        from .scaffold import find_scaffold

        scaffold = find_scaffold(aggregator)
        if scaffold is not None and controls is None:
            from ..compression.feedback import ResidualStore

            controls = ResidualStore()  # in memory
        transport = InProcessTransport(model, clients, local, seed, wire, client_hooks, eval_batch_size,
                                       client_batch_size, batch_when_slower, device=device,
                                       parallel_clients=parallel_clients, client_threads=client_threads,
                                       scaffold=scaffold, controls=controls)
        eval_x, eval_y = eval_x.to(device), eval_y.to(device)
        self.model, self.clients, self.eval_x, self.eval_y = model, clients, eval_x, eval_y
        self.eval_batch_size = eval_batch_size
        self._last_eval: tuple | None = None  # (state, (loss, predictions)) of the last eval-split pass
        super().__init__(aggregator=aggregator, optimizer=optimizer, transport=transport,
                         num_clients=len(clients), fraction=fraction, rounds=rounds, sampling=sampling,
                         eval_every=eval_every, seed=seed, evaluate_server=self._evaluate_server,
                         sampling_randomness=sampling_randomness, client_reports=client_reports,
                         finetune_epochs=finetune_epochs)

    # the in-process transport's pieces, for the quantize stage and tests
    wire = property(lambda self: self.transport.wire)
    local_x = property(lambda self: self.transport.local_x)
    local_y = property(lambda self: self.transport.local_y)
    owner = property(lambda self: self.transport.owner)

    def eval_confusion(self, state: Mapping[str, torch.Tensor], num_classes: int) -> torch.Tensor:
        """The confusion matrix of ``state`` on the server's eval split (:func:`~fed8.federated.evaluate.confusion_matrix`).

        When ``state`` is the model the last round evaluated (the last round always is), its
        predictions are reused: the same numbers without a second pass over the eval split.
        """
        from .evaluate import confusion_from_predictions

        return confusion_from_predictions(self.eval_y, self._eval_predictions(state)[1], num_classes)

    def _eval_predictions(self, state: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image loss and predicted label of ``state`` on the eval split (kept for the last state evaluated)."""
        memo = self._last_eval
        if memo is not None and memo[0].keys() == state.keys() and all(
                torch.equal(memo[0][k], v) for k, v in state.items()):
            return memo[1]
        self.model.load_state_dict(state)
        out = predict(self.model, self.eval_x, self.eval_y, batch_size=self.eval_batch_size)
        self._last_eval = ({k: v.detach().clone() for k, v in state.items()}, out)
        return out

    def _evaluate_server(self, state: Mapping[str, torch.Tensor]) -> dict:
        loss, pred = self._eval_predictions(state)
        loss, acc = loss_and_accuracy(loss, pred == self.eval_y.cpu())
        return {"eval_loss": loss, "eval_accuracy": acc}
