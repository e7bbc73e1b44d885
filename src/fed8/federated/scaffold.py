"""SCAFFOLD: control variates against client drift (Karimireddy et al. 2020, arXiv:1910.06378).

On non-IID data each client's local steps drift toward its own optimum. SCAFFOLD keeps a
control variate ``c_i`` per client and ``c`` on the server (all zero at the start) and
corrects every local step by the difference (Algorithm 1)::

    y <- y - lr (g_i(y) + c - c_i)                      K_i local steps from the global x
    c_i+ = c_i - c + (x - y_i) / (K_i lr)               option II: no extra gradient pass
                                                        (K_i: effective_steps under momentum)
    x   <- x + lr_g * mean_i (y_i - x)                  the server optimizer, as in FedAvg
    c   <- c + (1 / N) sum_{i in S} (c_i+ - c_i)

``c_i+ - c_i = -(c + delta_i / (K_i lr))`` is a function of the client's update
``delta_i = y_i - x``, its step count ``K_i = E_i * ceil(n_i / batch_size)`` (``E_i``: its epochs that
round, :meth:`~fed8.federated.client.LocalTraining.for_client`), the round's
learning rate and ``c``: all things the server has. So the server computes its side from the
updates it already receives (:class:`ScaffoldAggregate`) and the clients upload ``delta_i``
alone, where the paper's clients also upload ``c_i+ - c_i`` (twice the bytes). The server
sends ``c`` with the model every round (float32, counted in the downlink bytes); each client
keeps its ``c_i`` (a :class:`~fed8.compression.ResidualStore`: the run directory in
simulation, the node's disk on Flower), committed and rolled back with the rounds.

With a lossless uplink the server's ``c`` is the mean of the ``N`` clients' ``c_i`` after every
round (``tests/test_scaffold.py``). With a lossy codec the server's side follows the decoded
updates and each client's its own exact update, so ``c`` is that mean up to the codec's error
(with error feedback, what one round drops arrives in a later one). Controls cover the
model's parameters, not its buffers (BatchNorm statistics are averaged as usual).
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import torch

from .aggregator import AggregatorWrapper
from .client import ClientUpdate, LocalTraining

__all__ = ["ClientStateAggregate", "ScaffoldAggregate", "client_steps", "control_correction", "effective_steps",
           "find_scaffold", "local_steps", "next_control", "scaffold_client"]

Tensors = dict[str, torch.Tensor]
PREFIX = "scaffold.c."


def local_steps(num_samples: int, epochs: int, batch_size: int) -> int:
    """``K_i``: the SGD steps a client with ``num_samples`` images takes (``epochs * ceil(n / batch_size)``)."""
    return epochs * math.ceil(num_samples / batch_size) if num_samples > 0 else 0


def effective_steps(steps: int, momentum: float) -> float:
    """How many plain SGD steps ``steps`` steps with heavy-ball ``momentum`` move the weights, for a constant gradient.

    Option II reads the client's mean gradient off its displacement: ``(x - y_i) / (K lr)``,
    exact for plain SGD on a constant gradient ``g``. With momentum ``beta`` (the buffer starts
    at zero every round, as fed8's clients do) step ``t`` moves by ``lr g (1 - beta^t) / (1 - beta)``,
    so ``K`` steps move by ``lr g K_eff`` with::

        K_eff = sum_{t=1..K} (1 - beta^t) / (1 - beta) = (K - beta (1 - beta^K) / (1 - beta)) / (1 - beta)

    and fed8 divides by ``K_eff lr``; ``K_eff = K`` at ``beta = 0``. Dividing by ``K lr`` instead
    would overstate the gradient, and so the corrections, by up to ``1 / (1 - beta)`` (10x at 0.9).
    """
    if steps <= 0 or momentum == 0:
        return float(max(steps, 0))
    b = momentum
    return (steps - b * (1.0 - b**steps) / (1.0 - b)) / (1.0 - b)


def client_steps(num_samples: int, local: LocalTraining) -> float:
    """The ``K_eff`` a client with ``num_samples`` images divides by under the values ``local`` (client and server alike)."""
    return effective_steps(local_steps(num_samples, local.epochs, local.batch_size), local.momentum)


def control_correction(c: Mapping[str, torch.Tensor], c_i: Mapping[str, torch.Tensor] | None) -> Tensors | None:
    """``c - c_i``, the term added to each of the client's gradients; None while both are zero (round 1)."""
    if not c_i:
        return {k: v.clone() for k, v in c.items()} if c else None
    if not c:
        return {k: -v for k, v in c_i.items()}
    return {k: c[k] - c_i[k] for k in c}


def next_control(c_i: Mapping[str, torch.Tensor] | None, c: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor],
                 keys: Sequence[str], *, steps: float, lr: float) -> Tensors | None:
    """``c_i+ = c_i - c - delta / (steps lr)`` over ``keys`` (option II; ``steps``: :func:`effective_steps`), or None
    where the client keeps ``c_i``: it took no step, or its update is not finite (the server rejects that update, so it
    adds nothing to ``c``)."""
    if steps <= 0 or not all(bool(torch.isfinite(delta[k]).all()) for k in keys):
        return None
    scale = 1.0 / (steps * lr)
    out = {}
    for k in keys:
        v = delta[k].to("cpu", torch.float32) * -scale
        if c:
            v -= c[k]
        if c_i:
            v += c_i[k]
        out[k] = v
    return out


def scaffold_client(train: Callable[[Tensors | None], ClientUpdate], store, client: int, rnd: int,
                    c: Mapping[str, torch.Tensor], keys: Sequence[str], local: LocalTraining) -> ClientUpdate:
    """A client's SCAFFOLD round: ``train(c - c_i)`` (corrected local SGD), then ``c_i+`` into ``store``.

    ``store``: the client's controls (:class:`~fed8.compression.ResidualStore`), written as round
    ``rnd``'s; ``c``: the server's control as broadcast this round; ``local``: the round's values
    (``LocalTraining.at_round``). Runs where the client runs, in both runtimes.
    """
    c_i = store.get(client)
    update = train(control_correction(c, c_i))
    new = next_control(c_i, c, update.delta, keys, lr=local.lr, steps=client_steps(update.num_samples, local))
    if new is not None:
        store.put(client, rnd, new)
    return update


class ClientStateAggregate(AggregatorWrapper):
    """The server's side of an algorithm whose clients keep state across rounds (SCAFFOLD, FedDyn).

    The transports look for it in the aggregator chain (:func:`find_scaffold`): its ``c`` goes out
    with the model while it is not empty, each client trains through :meth:`client_round` with its
    own state in a store, and clients train one by one (not batched, not in one pass).
    """

    c: Tensors  # sent to every client with the model; empty: nothing to send (each subclass sets it)

    def client_round(self, train: Callable[[Tensors | None], ClientUpdate], store, client: int, rnd: int,
                     c: Mapping[str, torch.Tensor], local: LocalTraining) -> ClientUpdate:
        """Client ``client``'s round ``rnd``: ``train(correction)`` with its state from ``store``, the state updated."""
        raise NotImplementedError


class ScaffoldAggregate(ClientStateAggregate):
    """The server's side of SCAFFOLD around any aggregator: ``c`` from the updates the inner one accepts.

    Parameters
    ----------
    inner
        The aggregator of the mean update (FedAvg's weighted mean, norm-bounded or not).
    keys
        The model's parameter names (the controls' entries).
    num_clients
        ``N``: ``c`` moves by ``1 / N`` of the sampled clients' control changes.
    local
        The clients' local SGD values: epochs, batch size, and the learning rate of each round.

    ``c`` moves only when the round's update is applied (an abandoned round keeps it), and is
    checkpointed as ``scaffold.c.<name>``.
    """

    def __init__(self, inner, *, keys: Sequence[str], num_clients: int, local: LocalTraining) -> None:
        super().__init__(inner)
        self.keys, self.num_clients, self.local = list(keys), num_clients, local
        self.c: Tensors = {}  # empty: zero (before the first round that had updates)
        self._sum: Tensors = {}
        self._added = 0

    def client_round(self, train, store, client: int, rnd: int, c, local: LocalTraining) -> ClientUpdate:
        return scaffold_client(train, store, client, rnd, c, self.keys, local)

    def begin(self, rnd: int, clients: Sequence[int] = ()) -> None:
        super().begin(rnd, clients)
        self._sum, self._added = {}, 0
        self._rnd, self._lr = rnd, self.local.at_round(rnd).lr

    def add(self, update: ClientUpdate) -> None:
        self.inner.add(update)  # first: an update the inner aggregator refuses adds nothing to c
        steps = client_steps(update.num_samples, self.local.for_client(self._rnd, update.client))
        if steps <= 0:
            return
        scale = 1.0 / (steps * self._lr)
        for k in self.keys:
            d = update.delta[k].to(torch.float32)
            if k in self._sum:
                self._sum[k].add_(d, alpha=scale)
            else:
                self._sum[k] = d * scale
        self._added += 1

    def result(self, params: Mapping[str, torch.Tensor]) -> Tensors:
        mean = self.inner.result(params)  # EmptyRoundError: the round is abandoned, c stays
        if self._added:
            n, m = float(self.num_clients), float(self._added)
            self.c = {k: (self.c[k] * (1.0 - m / n) if self.c else 0.0) - self._sum[k] / n for k in self.keys}
        self._sum, self._added = {}, 0
        return mean

    def metrics(self) -> dict:
        norm = math.sqrt(sum(float(v.double().square().sum()) for v in self.c.values())) if self.c else 0.0
        return {**self.inner.metrics(), "scaffold_c_norm": norm}

    def state_dict(self) -> Tensors:
        return {**self.inner.state_dict(), **{PREFIX + k: v for k, v in self.c.items()}}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.c = {k[len(PREFIX):]: v.clone() for k, v in state.items() if k.startswith(PREFIX)}
        self.inner.load_state_dict({k: v for k, v in state.items() if not k.startswith(PREFIX)})


def find_scaffold(aggregator) -> ClientStateAggregate | None:
    """The :class:`ClientStateAggregate` (SCAFFOLD's or FedDyn's) in ``aggregator``'s chain of wrappers, or None."""
    while aggregator is not None:
        if isinstance(aggregator, ClientStateAggregate):
            return aggregator
        aggregator = getattr(aggregator, "inner", None)
    return None
