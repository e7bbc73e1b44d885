"""FedDyn: federated learning with dynamic regularization (Acar et al. 2021, arXiv:2111.04263, Algorithm 1).

Each client ``k`` keeps ``g_k``, its estimate of the gradient of its own loss at its last local
model (zero at the start), and minimizes a local objective whose stationary points agree with
the global one's::

    theta_k = argmin  L_k(theta) - <g_k, theta> + (alpha / 2) ||theta - theta^{t-1}||^2
    g_k    <- g_k - alpha (theta_k - theta^{t-1})                  (the first-order condition)
    h      <- h - (alpha / N) sum_{k in P_t} (theta_k - theta^{t-1})
    theta^t = mean_{k in P_t} theta_k - h / alpha

In fed8's terms: the client's local SGD adds ``-g_k`` to every gradient (the correction
SCAFFOLD uses, :func:`fed8.federated.client.train_client`) and trains with a proximal term
``mu = alpha`` (FedProx's); the server's mean update becomes ``Delta - h / alpha`` before the
server optimizer (with FedAvg at lr 1, exactly the paper's ``theta^t``). ``h`` is a function
of the updates the server receives, so clients upload the update alone and nothing extra goes
down. Clients keep ``g_k`` where SCAFFOLD keeps its controls (the run directory in simulation,
the node on Flower), committed and rolled back with the rounds. The mean is fed8's weighted
one (sample counts by default; the paper's is uniform over the round's clients:
``privacy.weighting = uniform``). Only the model's parameters carry ``g_k`` and ``h``.

**Under secure aggregation** the server never sees an update, only the round's sum. With uniform
weights the released mean is that sum over the number of inputs ``m_t``, so ``h`` moves by
``-(alpha / N) m_t mean`` (:class:`FedDynAggregate` with ``from_sum=True``): a function of the
sums alone, so the promise that the server learns only the sum holds. The sum is of the clipped,
ring-encoded updates the protocol adds, so ``h`` follows them as it follows a lossy codec's.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import torch

from .client import ClientUpdate
from .scaffold import ClientStateAggregate

__all__ = ["FedDynAggregate", "feddyn_client", "next_gradient"]

Tensors = dict[str, torch.Tensor]
PREFIX = "feddyn.h."


def next_gradient(g: Mapping[str, torch.Tensor] | None, delta: Mapping[str, torch.Tensor], keys: Sequence[str], *,
                  alpha: float) -> Tensors | None:
    """``g_k - alpha * delta`` over ``keys``, or None where the client keeps ``g_k`` (its update is not finite: the
    server rejects it, so ``h`` does not move with it either)."""
    if not all(bool(torch.isfinite(delta[k]).all()) for k in keys):
        return None
    return {k: (g[k] if g else 0.0) - alpha * delta[k].to("cpu", torch.float32) for k in keys}


def feddyn_client(train: Callable[[Tensors | None], ClientUpdate], store, client: int, rnd: int,
                  keys: Sequence[str], *, alpha: float) -> ClientUpdate:
    """A client's FedDyn round: ``train(-g_k)`` (with ``prox_mu = alpha`` in its values), then ``g_k`` into ``store``.

    ``store``: the client's state (:class:`~fed8.compression.ResidualStore`), written as round ``rnd``'s.
    Runs where the client runs, in both runtimes.
    """
    g = store.get(client)
    update = train({k: -v for k, v in g.items()} if g else None)
    if update.num_samples > 0:
        new = next_gradient(g, update.delta, keys, alpha=alpha)
        if new is not None:
            store.put(client, rnd, new)
    return update


class FedDynAggregate(ClientStateAggregate):
    """The server's side of FedDyn around any weighted mean: ``h`` from the updates the inner one accepts.

    Parameters
    ----------
    inner
        The aggregator of the mean update (FedAvg's weighted mean, norm-bounded or not).
    keys
        The model's parameter names.
    num_clients
        ``N``: ``h`` moves by ``alpha / N`` of the sum of the round's updates.
    alpha
        FedDyn's regularization ``alpha`` (``train.feddyn_alpha``).
    from_sum
        Secure aggregation (uniform weights): ``h`` from the released mean times the round's number
        of inputs (the inner chain's ``secagg_inputs`` metric), never from an update (module docstring).

    ``h`` moves only when the round's update is applied; checkpointed as ``feddyn.h.<name>``.
    Metric ``feddyn_h_norm``.
    """

    def __init__(self, inner, *, keys: Sequence[str], num_clients: int, alpha: float, from_sum: bool = False) -> None:
        super().__init__(inner)
        self.keys, self.num_clients, self.alpha, self.from_sum = list(keys), num_clients, alpha, from_sum
        self.c: Tensors = {}  # FedDyn sends nothing besides the model
        self.h: Tensors = {}
        self._sum: Tensors = {}

    def client_round(self, train, store, client: int, rnd: int, c, local) -> ClientUpdate:
        return feddyn_client(train, store, client, rnd, self.keys, alpha=self.alpha)

    def begin(self, rnd: int, clients: Sequence[int] = ()) -> None:
        super().begin(rnd, clients)
        self._sum = {}

    def add(self, update: ClientUpdate) -> None:
        self.inner.add(update)  # first: an update the inner aggregator refuses moves nothing
        if self.from_sum:  # a masked input, or an update the secure sum is about to mask: h waits for the sum
            return
        for k in self.keys:
            d = update.delta[k].to(torch.float32)
            if k in self._sum:
                self._sum[k].add_(d)
            else:
                self._sum[k] = d.clone()

    def result(self, params: Mapping[str, torch.Tensor]) -> Tensors:
        mean = self.inner.result(params)  # EmptyRoundError: the round is abandoned, h stays
        if self.from_sum:
            inputs = self.inner.metrics().get("secagg_inputs", 0)
            self._sum = {k: mean[k] * float(inputs) for k in self.keys} if inputs else {}
        if self._sum:
            scale = self.alpha / self.num_clients
            self.h = {k: (self.h[k] if self.h else 0.0) - scale * self._sum[k] for k in self.keys}
        self._sum = {}
        if not self.h:
            return mean
        return {k: mean[k] - self.h[k] / self.alpha if k in self.h else v for k, v in mean.items()}

    def metrics(self) -> dict:
        norm = math.sqrt(sum(float(v.double().square().sum()) for v in self.h.values())) if self.h else 0.0
        return {**self.inner.metrics(), "feddyn_h_norm": norm}

    def state_dict(self) -> Tensors:
        return {**self.inner.state_dict(), **{PREFIX + k: v for k, v in self.h.items()}}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.h = {k[len(PREFIX):]: v.clone() for k, v in state.items() if k.startswith(PREFIX)}
        self.inner.load_state_dict({k: v for k, v in state.items() if not k.startswith(PREFIX)})
