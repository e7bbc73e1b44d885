"""The federated round loop, simulated in one process.

Round r (1-based): sample clients with the generator of (seed, SAMPLE, r) (under DP:
the OS CSPRNG); each
sampled client k runs :func:`~fed8.federated.client.train_client` from the current
global model with the generator of (seed, TRAIN, r, k); its update streams into the
strategy; the strategy returns the next global model; every ``eval.every`` rounds the
model is evaluated on the eval split and on every client's local test split.

Because each round depends only on (global model, server state, seed, r), a run
resumed from the checkpoint of round r replays rounds r+1.. bit for bit. Under DP
the privacy draws (sample, noise) are fresh on every attempt: a resumed run keeps its
committed rounds and redraws the rest.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import torch
from torch import nn

from .._rng import SAMPLE, TRAIN, torch_generator
from ..config import EvalConfig, TrainConfig
from ..errors import EmptyRoundError, SecAggError
from ..privacy.randomness import PrivacyRandomness
from .client import ClientData, ClientUpdate, train_client
from .evaluate import client_accuracy_stats, evaluate, predict_correct
from .sampling import sample_clients
from .strategy import Strategy

if TYPE_CHECKING:
    from ..compression.wire import Wire

__all__ = ["ClientHook", "RoundCallback", "Simulation"]

log = logging.getLogger("fed8")

Tensors = dict[str, torch.Tensor]
RoundCallback = Callable[[int, Tensors, Strategy, dict], None]
# A client-side transform of an update before it is sent: (round, update) -> update.
ClientHook = Callable[[int, ClientUpdate], ClientUpdate]


@dataclass
class Simulation:
    """All clients of a federation in one process.

    Parameters
    ----------
    model
        Working copy of the architecture, reused by every client and for evaluation.
    clients
        One :class:`ClientData` per client.
    eval_x, eval_y
        The server's eval split.
    strategy
        Aggregation rule (possibly wrapped by DP / secure sum / robust rules).
    train, eval
        The ``[train]`` and ``[eval]`` config sections.
    seed
        Root seed of sampling and client shuffling.
    wire
        Uplink / downlink codecs (:class:`fed8.compression.wire.Wire`); None = float32 both ways.
    client_hooks
        Client-side transforms applied in order to each update before it is encoded and
        sent (local DP noise, simulated attacks): ``hook(round, update) -> update``.
    sampling_randomness
        Where the client sample comes from: default (seed, SAMPLE, round); under DP the
        OS CSPRNG (:func:`fed8.privacy.randomness.privacy_randomness`), since the
        accountant's amplification by sampling assumes the sample is secret.
    """

    model: nn.Module
    clients: Sequence[ClientData]
    eval_x: torch.Tensor
    eval_y: torch.Tensor
    strategy: Strategy
    train: TrainConfig
    eval: EvalConfig
    seed: int
    wire: "Wire | None" = None
    client_hooks: Sequence[ClientHook] = ()
    sampling_randomness: "PrivacyRandomness | None" = None

    def __post_init__(self) -> None:
        # All clients' local test splits in one tensor; owner[i] = the client holding sample i.
        tests = [c.x_test for c in self.clients]
        self.local_x = torch.cat(tests) if tests else torch.zeros(0)
        self.local_y = torch.cat([c.y_test for c in self.clients])
        self.owner = torch.cat([torch.full((c.y_test.shape[0],), k, dtype=torch.long)
                                 for k, c in enumerate(self.clients)])
        if self.sampling_randomness is None:
            self.sampling_randomness = PrivacyRandomness(self.seed)
        if self.wire is None:
            from ..compression import make_codec
            from ..compression.wire import Wire

            self.wire = Wire(make_codec("float32"), make_codec("float32"), seed=self.seed,
                             num_clients=len(self.clients))

    def is_eval_round(self, rnd: int) -> bool:
        every = self.eval.every
        return rnd == self.train.rounds or (every > 0 and rnd % every == 0)

    def evaluate(self, state: Mapping[str, torch.Tensor]) -> dict:
        """Global accuracy/loss on the eval split and the per-client accuracy statistics."""
        self.model.load_state_dict(state)
        loss, acc = evaluate(self.model, self.eval_x, self.eval_y, batch_size=self.eval.batch_size)
        _, correct = predict_correct(self.model, self.local_x, self.local_y, batch_size=self.eval.batch_size)
        return {"eval_loss": loss, "eval_accuracy": acc,
                **client_accuracy_stats(correct, self.owner, len(self.clients))}

    def run_round(self, rnd: int, state: Tensors) -> tuple[Tensors, dict]:
        """Train, aggregate and (if due) evaluate round ``rnd``; returns the new state and its metrics row."""
        t0 = time.perf_counter()
        sampled = sample_clients(len(self.clients), self.train.fraction, sampling=self.train.sampling,
                                 generator=self.sampling_randomness.draws(SAMPLE, rnd))
        self.strategy.begin_round(rnd, sampled)
        client_state, down = self.wire.broadcast(rnd, state, sampled)
        loss_sum, n_sum, up = 0.0, 0, 0
        for k in sampled:
            update = train_client(self.model, client_state, self.clients[k], self.train,
                                  generator=torch_generator(self.seed, TRAIN, rnd, k), client=k)
            for hook in self.client_hooks:
                update = hook(rnd, update)
            delta, nbytes = self.wire.upload(rnd, k, update.delta)
            up += nbytes
            loss_sum += update.train_loss * update.num_samples
            n_sum += update.num_samples
            self.strategy.accumulate(ClientUpdate(k, delta, update.num_samples, update.train_loss))
            del update, delta  # streaming: at most one update alive at a time
        # A Poisson round may sample nobody, every update may be rejected, a secure-aggregation
        # round may lose too many clients: then the round is abandoned and the model kept
        # (under DP the strategy releases the noised zero sum instead of raising).
        aborted = None
        try:
            new_state = self.strategy.finish_round(state)
        except (SecAggError, EmptyRoundError) as e:
            log.warning("round %d abandoned, model unchanged: %s", rnd, e)
            new_state, aborted = dict(state), str(e)
        extra = self.strategy.round_metrics()
        up = extra.pop("uplink_bytes", up)  # secure aggregation sends its own messages
        down += extra.pop("secagg_downlink_bytes", 0)
        up32, down32 = self.wire.float32_bytes(state)
        row: dict = {
            "round": rnd,
            "num_clients": len(sampled),
            "train_loss": loss_sum / max(n_sum, 1),
            "eval_loss": None, "eval_accuracy": None,
            "client_accuracy_mean": None, "client_accuracy_p10": None, "client_accuracy_min": None,
            "uplink_bytes": up,
            "downlink_bytes": down,
            "uplink_bytes_float32": up32 * len(sampled),
            "downlink_bytes_float32": down32 * len(sampled),
            "rejected_updates": 0,
            **extra,
        }
        if aborted is not None:
            row["aborted"] = aborted
        if self.is_eval_round(rnd):
            row.update(self.evaluate(new_state))
        row["seconds"] = time.perf_counter() - t0
        return new_state, row

    def server_state(self) -> Tensors:
        """Everything the server must checkpoint besides the model: optimizer and wire state."""
        return {**self.strategy.state_dict(), **self.wire.state_dict()}

    def load_server_state(self, state: Mapping[str, torch.Tensor]) -> None:
        self.strategy.load_state_dict({k: v for k, v in state.items() if not k.startswith("wire.")})
        self.wire.load_state_dict({k: v for k, v in state.items() if k.startswith("wire.")})

    def run(self, state: Tensors, *, start_round: int = 0, on_round: RoundCallback | None = None,
            before_round: Callable[[int], None] | None = None) -> Tensors:
        """Run rounds ``start_round + 1 .. train.rounds``; call ``before_round`` before and ``on_round`` after each."""
        for rnd in range(start_round + 1, self.train.rounds + 1):
            if before_round is not None:
                before_round(rnd)
            state, row = self.run_round(rnd, state)
            if on_round is not None:
                on_round(rnd, state, self.strategy, row)
        return state
