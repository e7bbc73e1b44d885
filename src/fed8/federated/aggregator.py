"""Aggregators: a round's client updates, streamed in as they arrive, out as one mean update.

A round on the server is ``begin(rnd, clients)``, one ``add(update)`` per client, then
``result(params)``, the mean update ``Delta`` that a server optimizer
(:mod:`fed8.federated.optimizer`) applies. The base rule is FedAvg's sample-weighted
mean (McMahan et al. 2017, arXiv:1602.05629)::

    Delta = sum_k w_k delta_k / sum_k w_k,    w_k = n_k (or uniform, or capped)

kept as a running sum, never all updates at once (FedJAX ``fed_avg``). Validation,
norm bounds, differential privacy and secure summation wrap an aggregator
(:class:`AggregatorWrapper`); robust rules that need every update say so. The round loop
never branches on them, and no wrapper fakes a round for the one it wraps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import torch

from ..errors import EmptyRoundError, ParameterError
from .client import ClientUpdate

if TYPE_CHECKING:
    from .cohort import CohortUpdate

__all__ = ["Aggregator", "AggregatorWrapper", "Total", "WeightedMean", "WeightedSum", "samples_weight"]

Tensors = dict[str, torch.Tensor]


class WeightedSum:
    """Streaming ``sum_k w_k * x_k`` and ``sum_k w_k`` over dicts of tensors."""

    def __init__(self) -> None:
        self.total: Tensors | None = None
        self.weight = 0.0

    def add(self, tensors: Mapping[str, torch.Tensor], weight: float) -> None:
        if self.total is None:
            self.total = {k: v.to(torch.float32) * weight for k, v in tensors.items()}
        else:
            if tensors.keys() != self.total.keys():
                raise ParameterError(f"update has keys {sorted(tensors)[:3]}..., expected the model's keys "
                                     f"{sorted(self.total)[:3]}...; every update must carry the same tensors.")
            for k, v in tensors.items():
                self.total[k].add_(v, alpha=weight)
        self.weight += weight

    def mean(self) -> Tensors:
        if self.total is None or self.weight <= 0:
            raise EmptyRoundError("no updates were accumulated this round (total weight 0).")
        return {k: v / self.weight for k, v in self.total.items()}


@dataclass
class Total:
    """A round's weighted sum, as a sum-capable aggregator hands it to a wrapper (DP)."""

    total: Tensors | None  # None: nothing was added
    weight: float | None  # None: not sent (distributed DP)
    bits: int | None  # clients whose update norm was within the clip bound (adaptive clipping); None: not sent
    inputs: int  # updates in the sum
    metrics: dict


def samples_weight(num_samples: int) -> float:
    """FedAvg's weight: the client's sample count."""
    return float(num_samples)


class Aggregator:
    """The weighted mean of a round's updates (base class and FedAvg's rule)."""

    num_updates = 0

    def begin(self, rnd: int, clients: Sequence[int] = ()) -> None:
        """Start round ``rnd`` with the sampled ``clients`` (secure aggregation needs them up front)."""
        self.rnd = rnd

    def add(self, update: ClientUpdate) -> None:
        raise NotImplementedError

    def cohort_weight(self) -> Callable[[int], float] | None:
        """``w_k`` of a client with ``n_k`` samples if this aggregator takes clients already averaged
        (:meth:`add_cohort`, :mod:`fed8.federated.cohort`), else None: it needs every update."""
        return None

    def add_cohort(self, cohort: "CohortUpdate") -> None:
        raise NotImplementedError(f"{type(self).__name__} needs every client's update; it takes no cohort.")

    def result(self, params: Mapping[str, torch.Tensor]) -> Tensors:
        """The round's mean update; :class:`EmptyRoundError` if there is nothing to aggregate."""
        raise NotImplementedError

    def metrics(self) -> dict:
        """Extra entries for the round's metrics row (``rejected_updates``, ``clip_norm``, ...)."""
        return {}

    def state_dict(self) -> Tensors:
        """State carried across rounds (e.g. an adaptive clip norm), for checkpoints."""
        return {}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        pass


class WeightedMean(Aggregator):
    """``sum_k w_k delta_k / sum_k w_k`` with ``w_k = weight(n_k)`` (default ``n_k``: FedAvg).

    Also a *sum* for wrappers: :meth:`add_weighted` and :meth:`total` (DP adds noise to the
    sum and divides by its own fixed denominator).
    """

    def __init__(self, weight: Callable[[int], float] = samples_weight) -> None:
        self.weight = weight
        self._sum, self._bits, self.num_updates = WeightedSum(), 0, 0

    def begin(self, rnd: int, clients: Sequence[int] = ()) -> None:
        self.rnd, self._sum, self._bits, self.num_updates = rnd, WeightedSum(), 0, 0

    def add(self, update: ClientUpdate) -> None:
        self.add_weighted(update.client, update.delta, self.weight(update.num_samples))

    def cohort_weight(self) -> Callable[[int], float]:
        return self.weight

    def add_cohort(self, cohort: "CohortUpdate") -> None:
        """Clients already averaged with :meth:`cohort_weight`: their mean enters with their total weight."""
        self._sum.add(cohort.mean, cohort.weight)
        self.num_updates += len(cohort.clients)

    def add_weighted(self, client: int, tensors: Mapping[str, torch.Tensor], weight: float, bit: int = 0) -> None:
        self._sum.add(tensors, weight)
        self._bits += bit
        self.num_updates += 1

    def total(self) -> Total:
        return Total(self._sum.total, self._sum.weight, self._bits, self.num_updates, {})

    def result(self, params: Mapping[str, torch.Tensor]) -> Tensors:
        mean = self._sum.mean()
        self._sum = WeightedSum()  # free the running sum
        return mean


class AggregatorWrapper(Aggregator):
    """Delegates everything to an inner aggregator; validation, bounds and DP subclass it."""

    def __init__(self, inner: Aggregator) -> None:
        self.inner = inner

    def begin(self, rnd: int, clients: Sequence[int] = ()) -> None:
        self.rnd = rnd
        self.inner.begin(rnd, clients)

    def add(self, update: ClientUpdate) -> None:
        self.inner.add(update)

    def result(self, params: Mapping[str, torch.Tensor]) -> Tensors:
        return self.inner.result(params)

    def metrics(self) -> dict:
        return self.inner.metrics()

    def state_dict(self) -> Tensors:
        return self.inner.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.inner.load_state_dict(state)

    @property
    def num_updates(self) -> int:  # type: ignore[override]
        return self.inner.num_updates
