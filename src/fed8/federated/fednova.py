"""FedNova: normalized averaging against objective inconsistency (Wang et al. 2020, arXiv:2007.07481).

A client that takes more local steps moves further. With a fixed number of local epochs a
client's steps grow with its data (and under unequal local work, ``train.local_epochs_min``,
with the epochs it drew that round, as in the paper's experiments), so FedAvg's mean of updates, ``sum_i p_i delta_i`` with
``delta_i ~ -lr a_i g_i``, follows ``sum_i p_i a_i F_i`` instead of ``sum_i p_i F_i``: it
weights a client by about ``n_i^2``, not ``n_i``, and converges to the optimum of another
objective. FedNova divides each update by its client's ``a_i`` and gives the mean the size of
an average client's::

    Delta = tau_eff * sum_i p_i delta_i / a_i,        tau_eff = sum_i p_i a_i

``a_i`` is the paper's ``||a_i||_1``: the coefficient of a constant gradient in the client's
displacement after its ``K_i = E_i * ceil(n_i / batch_size)`` steps (``E_i``: its epochs this round,
:meth:`~fed8.federated.client.LocalTraining.for_client`). ``K_i`` for plain SGD,
``sum_t (1 - beta^t) / (1 - beta)`` under heavy-ball momentum, ``(1 - (1 - lr mu)^K) / (lr mu)``
under FedProx's proximal term (the paper's Section 4). :func:`steps_reach` runs the local
optimizer's own recurrence on one number, so momentum, weight decay and the proximal term
combine. The server has every input (each update's sample count, the round's local values and the
client's epochs, a public function of the seed),
so clients and the bytes they send do not change, in either runtime.

With equal ``a_i`` (every client the same size, or one step each) FedNova is FedAvg. Only the
model's parameters are normalized; buffers (BatchNorm statistics) are averaged as usual.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import torch

from .aggregator import Aggregator, AggregatorWrapper
from .client import ClientUpdate, LocalTraining
from .scaffold import effective_steps, local_steps

if TYPE_CHECKING:
    from .cohort import CohortUpdate

__all__ = ["FedNovaAggregate", "client_reach", "steps_reach"]

Tensors = dict[str, torch.Tensor]


@lru_cache(maxsize=4096)
def steps_reach(steps: int, *, lr: float, momentum: float = 0.0, prox_mu: float = 0.0,
                weight_decay: float = 0.0) -> float:
    """``a``: how far ``steps`` local steps move the weights per unit of a constant gradient, in units of ``lr``.

    Torch's SGD on the scalar model ``f'(x) = 1 + (prox_mu + weight_decay) x`` from ``x = 0``
    (``buf <- momentum * buf + f'(x)``, ``x <- x - lr * buf``), returning ``-x / lr``. Closed forms:
    ``steps`` for plain SGD, :func:`~fed8.federated.scaffold.effective_steps` under momentum,
    ``(1 - (1 - lr mu)^steps) / (lr mu)`` under a proximal term ``mu`` (Wang et al. 2020, Section 4).
    """
    if steps <= 0:
        return 0.0
    pull = prox_mu + weight_decay
    if pull == 0:
        return effective_steps(steps, momentum)
    x = buf = 0.0
    for _ in range(steps):
        buf = momentum * buf + 1.0 + pull * x
        x -= lr * buf
    return -x / lr


def client_reach(num_samples: int, local: LocalTraining) -> float:
    """``a_i`` of a client with ``num_samples`` images under the round's values ``local`` (``at_round``)."""
    return steps_reach(local_steps(num_samples, local.epochs, local.batch_size), lr=local.lr, momentum=local.momentum,
                       prox_mu=local.prox_mu, weight_decay=local.weight_decay)


class FedNovaAggregate(AggregatorWrapper):
    """FedNova's normalized averaging around a weighted mean (``server.fednova``).

    Parameters
    ----------
    inner
        The weighted mean (FedAvg's, or uniform or capped weights) that averages ``delta_i / a_i``.
    keys
        The model's parameter names: the entries normalized (buffers pass through).
    local
        The clients' local SGD values (the round's rate from ``at_round``).
    weight
        ``p_i``'s numerator: the same weight function as ``inner``'s, for ``tau_eff``.

    Metric ``fednova_tau_eff``: the round's ``tau_eff`` (the mean update's size in local steps).
    """

    def __init__(self, inner: Aggregator, *, keys: Sequence[str], local: LocalTraining,
                 weight: Callable[[int], float]) -> None:
        super().__init__(inner)
        self.keys, self.local, self.weight = frozenset(keys), local, weight
        self._tau = self._weight = 0.0
        self._last_tau: float | None = None  # the last applied round's tau_eff

    def begin(self, rnd: int, clients: Sequence[int] = ()) -> None:
        super().begin(rnd, clients)
        self._rnd, self._round_local = rnd, self.local.at_round(rnd)
        self._tau = self._weight = 0.0
        self._last_tau = None

    def add(self, update: ClientUpdate) -> None:
        a = client_reach(update.num_samples, self._round_local.for_client(self._rnd, update.client))
        if a > 0 and a != 1.0:
            update = dataclasses.replace(update, delta={k: v / a if k in self.keys else v for k, v in update.delta.items()})
        self.inner.add(update)  # first: an update the inner aggregator refuses counts nowhere
        w = self.weight(update.num_samples)
        self._tau += w * a
        self._weight += w

    def cohort_weight(self) -> Callable[[int], float] | None:
        return self.inner.cohort_weight()

    def add_cohort(self, cohort: "CohortUpdate") -> None:
        """One-step clients (the only ones a cohort holds): ``a_i = 1``, so their mean enters unchanged."""
        self.inner.add_cohort(cohort)
        self._tau += cohort.weight
        self._weight += cohort.weight

    def result(self, params: Mapping[str, torch.Tensor]) -> Tensors:
        mean = self.inner.result(params)  # EmptyRoundError when nothing (or only weight 0) was added
        tau = self._tau / self._weight if self._weight > 0 else 1.0
        self._last_tau = tau
        return {k: v * tau if k in self.keys else v for k, v in mean.items()}

    def metrics(self) -> dict:
        tau = self._last_tau
        return {**self.inner.metrics(), **({"fednova_tau_eff": round(tau, 4)} if tau is not None else {})}
