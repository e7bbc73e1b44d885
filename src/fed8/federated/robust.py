"""Robust aggregation and update validation, as aggregators and aggregator wrappers.

* :class:`ValidateUpdates` rejects updates with missing or extra tensors, wrong shapes,
  NaN or Inf, logs each with the client id and the reason, and counts them in the
  round's ``rejected_updates``. It is always the outermost wrapper.
* :class:`NormBound` clips every update to an L2 norm bound before the weighted mean
  (Sun et al. 2019, "Can You Really Backdoor Federated Learning?", arXiv:1911.07963).
* :class:`CoordinateMedian` and :class:`TrimmedMean` (Yin et al. 2018, "Byzantine-Robust
  Distributed Learning", arXiv:1803.01498): per coordinate, the median of the client
  updates, or the mean after dropping the ``beta`` fraction largest and smallest values.
  Both are unweighted and need every update of the round in memory (``m`` x model size),
  the price of robustness; they cannot run over a secure sum.
"""

from __future__ import annotations

import logging
import math
from typing import Mapping, Sequence

import torch

from ..errors import EmptyRoundError, ParameterError
from ..privacy.dp import clip_by_norm
from .aggregator import Aggregator, AggregatorWrapper, Tensors
from .client import ClientUpdate
from .secure import MaskedInput

__all__ = ["CoordinateMedian", "NormBound", "TrimmedMean", "ValidateUpdates"]

log = logging.getLogger("fed8")


class ValidateUpdates(AggregatorWrapper):
    """Reject malformed updates before they reach the aggregate.

    Parameters
    ----------
    expected
        ``{name: shape}`` of the tensors every update must carry.
    """

    def __init__(self, inner: Aggregator, expected: Mapping[str, Sequence[int]]) -> None:
        super().__init__(inner)
        self.expected = {k: tuple(v) for k, v in expected.items()}
        self.rejected: list[dict] = []

    def begin(self, rnd: int, clients: Sequence[int] = ()) -> None:
        self.rnd, self.rejected = rnd, []
        self.inner.begin(rnd, clients)

    def problem(self, update: ClientUpdate) -> str | None:
        """Why ``update`` must be rejected, or None."""
        keys = set(update.delta)
        if keys != set(self.expected):
            missing, extra = sorted(set(self.expected) - keys), sorted(keys - set(self.expected))
            return f"tensors differ from the model's (missing {missing[:3]}, unexpected {extra[:3]})"
        for k in sorted(self.expected):
            v = update.delta[k]
            if tuple(v.shape) != self.expected[k]:
                return f"tensor {k!r} has shape {tuple(v.shape)}, expected {self.expected[k]}"
            # A NaN or Inf element makes the sum non-finite, so a finite sum (one fast reduction) proves the
            # tensor finite; only a non-finite sum (a bad element, or a finite overflow) takes the exact check.
            if v.is_floating_point() and not bool(torch.isfinite(v.sum())) and not bool(torch.isfinite(v).all()):
                bad = "NaN" if bool(torch.isnan(v).any()) else "Inf"
                return f"tensor {k!r} contains {bad}"
        if update.num_samples < 0:
            return f"negative sample count {update.num_samples}"
        return None

    def cohort_weight(self):
        return self.inner.cohort_weight()

    def add_cohort(self, cohort) -> None:
        """Clients already averaged (:mod:`fed8.federated.cohort`); the transport sends one only when it is finite."""
        why = self.problem(ClientUpdate(-1, cohort.mean, sum(cohort.num_samples), 0.0))
        if why is not None:
            raise ParameterError(f"round {self.rnd}: a cohort of {len(cohort.clients)} clients reached validation "
                                 f"with a bad mean ({why}); a transport must send such a round client by client.")
        self.inner.add_cohort(cohort)

    def add(self, update: ClientUpdate) -> None:
        if isinstance(update, MaskedInput):  # only its client can see it; the client validated it
            self.inner.add(update)
            return
        why = self.problem(update)
        if why is None:
            self.inner.add(update)
            return
        log.warning("round %d: rejected the update of client %d: %s", self.rnd, update.client, why)
        self.rejected.append({"client": update.client, "reason": why})

    def metrics(self) -> dict:
        return {**self.inner.metrics(), "rejected_updates": len(self.rejected), "rejected": list(self.rejected)}


class NormBound(AggregatorWrapper):
    """Clip each update to ``||delta|| <= bound``, then aggregate as the inner aggregator does."""

    def __init__(self, inner: Aggregator, bound: float) -> None:
        super().__init__(inner)
        self.bound = bound

    def add(self, update: ClientUpdate) -> None:
        clipped, _ = clip_by_norm(update.delta, self.bound)
        self.inner.add(ClientUpdate(update.client, clipped, update.num_samples, update.train_loss))


class _Buffered(Aggregator):
    """Holds the round's updates (``m`` x model size) and reduces them per coordinate."""

    def begin(self, rnd: int, clients: Sequence[int] = ()) -> None:
        self.rnd, self.updates = rnd, []

    def add(self, update: ClientUpdate) -> None:
        self.updates.append(update.delta)

    @property
    def num_updates(self) -> int:  # type: ignore[override]
        return len(getattr(self, "updates", []))

    def reduce(self, stacked: torch.Tensor) -> torch.Tensor:  # [m, ...] -> [...]
        raise NotImplementedError

    def result(self, params: Mapping[str, torch.Tensor]) -> Tensors:
        if not self.updates:
            raise EmptyRoundError("no updates were accumulated this round.")
        agg = {k: self.reduce(torch.stack([u[k].to(torch.float32) for u in self.updates]))
               for k in self.updates[0]}
        self.updates = []
        return agg


class CoordinateMedian(_Buffered):
    """Coordinate-wise median of the updates (the mean of the two middle values for even ``m``)."""

    def reduce(self, stacked: torch.Tensor) -> torch.Tensor:
        m = stacked.shape[0]
        s, _ = torch.sort(stacked, dim=0)
        return s[m // 2] if m % 2 else (s[m // 2 - 1] + s[m // 2]) / 2


class TrimmedMean(_Buffered):
    """Coordinate-wise mean after dropping the ``floor(beta m)`` largest and smallest values."""

    def __init__(self, trim_fraction: float) -> None:
        self.trim_fraction = trim_fraction

    def reduce(self, stacked: torch.Tensor) -> torch.Tensor:
        m = stacked.shape[0]
        b = min(int(math.floor(self.trim_fraction * m)), (m - 1) // 2)
        s, _ = torch.sort(stacked, dim=0)
        return s[b : m - b].mean(dim=0)
