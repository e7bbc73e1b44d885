"""Server strategies: FedAvg, FedAvgM, FedAdam, over a streaming weighted sum.

A round on the server is ``begin_round()``, one ``accumulate(update)`` per client as
updates arrive, then ``finish_round(global_state)`` which returns the next global
model. Only the running sum is held, never all updates (FedJAX ``fed_avg``).
Privacy, secure summation and robust aggregation wrap a strategy (see
:class:`StrategyWrapper`); the round loop never branches on them.

All strategies first form the sample-weighted mean update (McMahan et al. 2017,
arXiv:1602.05629)::

    Delta = sum_k (n_k / n) * delta_k,    n = sum_k n_k

and then apply a server optimizer to it (Reddi et al. 2021, arXiv:2003.00295,
Algorithm 2). Floating-point buffers (BatchNorm running statistics) are always set to
``w + Delta`` (plain averaging): an optimizer on statistics is meaningless.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

import torch

from ..config import ServerConfig
from ..errors import CheckpointError, ConfigError, EmptyRoundError, ParameterError
from .client import ClientUpdate

__all__ = ["FedAdam", "FedAvg", "FedAvgM", "Reweighted", "Strategy", "StrategyWrapper", "WeightedSum", "make_strategy"]

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


class Strategy:
    """Base strategy: the sample-weighted mean update, applied as ``w + lr * Delta``.

    Subclasses override :meth:`server_step`. ``buffers`` names float entries that are
    statistics, not parameters.
    """

    def __init__(self, *, lr: float = 1.0, buffers: Iterable[str] = ()) -> None:
        self.lr = lr
        self.buffers = frozenset(buffers)
        self._sum = WeightedSum()
        self.num_updates = 0

    # -- round protocol ---------------------------------------------------------
    def begin_round(self, rnd: int, clients: Sequence[int] = ()) -> None:
        """Start round ``rnd`` with the sampled ``clients`` (secure aggregation needs them up front)."""
        self._sum = WeightedSum()
        self.num_updates = 0

    def accumulate(self, update: ClientUpdate) -> None:
        self._sum.add(update.delta, float(update.num_samples))
        self.num_updates += 1

    def finish_round(self, global_state: Mapping[str, torch.Tensor]) -> Tensors:
        mean = self._sum.mean()
        self._sum = WeightedSum()  # free the running sum
        step = self.server_step({k: v for k, v in mean.items() if k not in self.buffers})
        new = dict(global_state)
        for k, d in mean.items():
            new[k] = global_state[k] + (d if k in self.buffers else step[k])
        return new

    def round_metrics(self) -> dict:
        """Extra entries for this round's metrics row (e.g. ``rejected_updates``, ``clip_norm``)."""
        return {}

    # -- server optimizer -------------------------------------------------------
    def server_step(self, mean_delta: Tensors) -> Tensors:
        """The change applied to the parameters, given the weighted mean update."""
        return {k: self.lr * d for k, d in mean_delta.items()}

    def state_dict(self) -> Tensors:
        """Server optimizer state, for checkpoints (tensors only)."""
        return {}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        if state:
            raise CheckpointError(f"{type(self).__name__} has no state; the checkpoint holds keys {sorted(state)[:3]}: "
                                  "it was written with another server.strategy.")


class FedAvg(Strategy):
    """FedAvg (McMahan et al. 2017): ``w <- w + lr * Delta``; with ``lr = 1``, ``w <- sum_k n_k/n w_k``."""


class FedAvgM(Strategy):
    """FedAvg with server momentum (Hsu et al. 2019, arXiv:1909.06335).

    ``v <- beta * v + Delta``;  ``w <- w + lr * v``.
    """

    def __init__(self, *, lr: float = 1.0, momentum: float = 0.9, buffers: Iterable[str] = ()) -> None:
        super().__init__(lr=lr, buffers=buffers)
        self.momentum = momentum
        self.v: Tensors = {}

    def server_step(self, mean_delta: Tensors) -> Tensors:
        for k, d in mean_delta.items():
            self.v[k] = d.clone() if k not in self.v else self.v[k].mul_(self.momentum).add_(d)
        return {k: self.lr * self.v[k] for k in mean_delta}

    def state_dict(self) -> Tensors:
        return {f"v.{k}": v for k, v in self.v.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.v = {k[2:]: v.clone() for k, v in state.items() if k.startswith("v.")}


class FedAdam(Strategy):
    """FedAdam (Reddi et al. 2021, arXiv:2003.00295, Algorithm 2).

    ``m <- b1 m + (1 - b1) Delta``;  ``v <- b2 v + (1 - b2) Delta^2``;
    ``w <- w + lr * m / (sqrt(v) + tau)``. No bias correction, as in the paper.
    """

    def __init__(self, *, lr: float = 1e-2, beta1: float = 0.9, beta2: float = 0.99,
                 tau: float = 1e-3, buffers: Iterable[str] = ()) -> None:
        super().__init__(lr=lr, buffers=buffers)
        self.beta1, self.beta2, self.tau = beta1, beta2, tau
        self.m: Tensors = {}
        self.v: Tensors = {}

    def server_step(self, mean_delta: Tensors) -> Tensors:
        out = {}
        for k, d in mean_delta.items():
            if k not in self.m:
                self.m[k] = torch.zeros_like(d)
                self.v[k] = torch.full_like(d, self.tau**2)
            self.m[k].mul_(self.beta1).add_(d, alpha=1 - self.beta1)
            self.v[k].mul_(self.beta2).addcmul_(d, d, value=1 - self.beta2)
            out[k] = self.lr * self.m[k] / (self.v[k].sqrt() + self.tau)
        return out

    def state_dict(self) -> Tensors:
        return {**{f"m.{k}": v for k, v in self.m.items()}, **{f"v.{k}": v for k, v in self.v.items()}}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.m = {k[2:]: v.clone() for k, v in state.items() if k.startswith("m.")}
        self.v = {k[2:]: v.clone() for k, v in state.items() if k.startswith("v.")}


class StrategyWrapper(Strategy):
    """Delegates everything to an inner strategy; DP, secure sum and robust rules subclass it."""

    def __init__(self, inner: Strategy) -> None:
        self.inner = inner

    def begin_round(self, rnd: int, clients: Sequence[int] = ()) -> None:
        self.inner.begin_round(rnd, clients)

    def accumulate(self, update: ClientUpdate) -> None:
        self.inner.accumulate(update)

    def finish_round(self, global_state: Mapping[str, torch.Tensor]) -> Tensors:
        return self.inner.finish_round(global_state)

    def state_dict(self) -> Tensors:
        return self.inner.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.inner.load_state_dict(state)

    def round_metrics(self) -> dict:
        return self.inner.round_metrics()

    @property
    def num_updates(self) -> int:  # type: ignore[override]
        return self.inner.num_updates


class Reweighted(StrategyWrapper):
    """Aggregate with ``weight(n_k)`` in place of the sample count ``n_k`` (e.g. uniform weights)."""

    def __init__(self, inner: Strategy, weight: Callable[[int], float]) -> None:
        super().__init__(inner)
        self.weight = weight

    def accumulate(self, update: ClientUpdate) -> None:
        self.inner.accumulate(ClientUpdate(update.client, update.delta, self.weight(update.num_samples),
                                           update.train_loss))


def make_strategy(cfg: ServerConfig, *, buffers: Iterable[str] = ()) -> Strategy:
    """Build the strategy named by ``server.strategy``."""
    if cfg.strategy == "fedavg":
        return FedAvg(lr=cfg.lr, buffers=buffers)
    if cfg.strategy == "fedavgm":
        return FedAvgM(lr=cfg.lr, momentum=cfg.momentum, buffers=buffers)
    if cfg.strategy == "fedadam":
        return FedAdam(lr=cfg.lr, beta1=cfg.beta1, beta2=cfg.beta2, tau=cfg.tau, buffers=buffers)
    raise ConfigError(f"server.strategy must be one of 'fedavg', 'fedavgm', 'fedadam'; got {cfg.strategy!r}.")
