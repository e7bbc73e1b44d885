"""The federated round loop, simulated in one process.

Round r (1-based): sample clients with the generator of (seed, SAMPLE, r); each
sampled client k runs :func:`~fed8.federated.client.train_client` from the current
global model with the generator of (seed, TRAIN, r, k); its update streams into the
strategy; the strategy returns the next global model; every ``eval.every`` rounds the
model is evaluated on the eval split and on every client's local test split.

Because each round depends only on (global model, server state, seed, r), a run
resumed from the checkpoint of round r replays rounds r+1.. bit for bit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from .._rng import SAMPLE, TRAIN, torch_generator
from ..config import EvalConfig, TrainConfig
from .client import ClientData, train_client, trainable_keys
from .evaluate import client_accuracy_stats, evaluate, predict_correct
from .sampling import sample_clients
from .strategy import Strategy

__all__ = ["RoundCallback", "Simulation", "payload_bytes"]

Tensors = dict[str, torch.Tensor]
RoundCallback = Callable[[int, Tensors, Strategy, dict], None]


def payload_bytes(tensors: Mapping[str, torch.Tensor]) -> int:
    """Bytes of ``tensors`` serialized as safetensors (header + raw data), as sent over the wire."""
    from safetensors.torch import save

    return len(save({k: v.contiguous() for k, v in tensors.items()}))


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
    """

    model: nn.Module
    clients: Sequence[ClientData]
    eval_x: torch.Tensor
    eval_y: torch.Tensor
    strategy: Strategy
    train: TrainConfig
    eval: EvalConfig
    seed: int

    def __post_init__(self) -> None:
        # All clients' local test splits in one tensor; owner[i] = the client holding sample i.
        tests = [c.x_test for c in self.clients]
        self.local_x = torch.cat(tests) if tests else torch.zeros(0)
        self.local_y = torch.cat([c.y_test for c in self.clients])
        self.owner = torch.cat([torch.full((c.y_test.shape[0],), k, dtype=torch.long)
                                 for k, c in enumerate(self.clients)])
        self._sizes: tuple[int, int] | None = None  # (uplink, downlink) bytes per client

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
        sampled = sample_clients(len(self.clients), self.train.fraction,
                                 generator=torch_generator(self.seed, SAMPLE, rnd))
        self.strategy.begin_round(rnd)
        loss_sum, n_sum = 0.0, 0
        for k in sampled:
            update = train_client(self.model, state, self.clients[k], self.train,
                                  generator=torch_generator(self.seed, TRAIN, rnd, k), client=k)
            loss_sum += update.train_loss * update.num_samples
            n_sum += update.num_samples
            self.strategy.accumulate(update)
            del update  # streaming: at most one update alive at a time
        new_state = self.strategy.finish_round(state)
        if self._sizes is None:  # shapes never change, so the payload sizes do not either
            self._sizes = (payload_bytes({k: state[k] for k in trainable_keys(state)}), payload_bytes(state))
        up, down = self._sizes
        row: dict = {
            "round": rnd,
            "num_clients": len(sampled),
            "train_loss": loss_sum / max(n_sum, 1),
            "eval_loss": None, "eval_accuracy": None,
            "client_accuracy_mean": None, "client_accuracy_p10": None, "client_accuracy_min": None,
            "uplink_bytes": up * len(sampled),
            "downlink_bytes": down * len(sampled),
        }
        if self.is_eval_round(rnd):
            row.update(self.evaluate(new_state))
        row["seconds"] = time.perf_counter() - t0
        return new_state, row

    def run(self, state: Tensors, *, start_round: int = 0, on_round: RoundCallback | None = None) -> Tensors:
        """Run rounds ``start_round + 1 .. train.rounds``; call ``on_round`` after each."""
        for rnd in range(start_round + 1, self.train.rounds + 1):
            state, row = self.run_round(rnd, state)
            if on_round is not None:
                on_round(rnd, state, self.strategy, row)
        return state
