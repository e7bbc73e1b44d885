"""Server optimizers: FedAvg, FedAvgM, FedAdagrad, FedAdam, FedYogi as pure steps over an explicit server state.

The aggregator (:mod:`fed8.federated.aggregator`) turns a round's updates into one mean
update ``Delta``; a server optimizer turns ``Delta`` into the next global model (Reddi et
al. 2021, "Adaptive Federated Optimization", arXiv:2003.00295, Algorithm 2)::

    new_params, new_state = optimizer.apply(state, params, Delta)

The state is a flat dict of tensors (the momentum of FedAvgM, the moments of the adaptive ones),
held by the round loop and checkpointed with the model, as FedJAX's ``ServerState``.
Floating-point buffers (BatchNorm running statistics) are always set to ``w + Delta``
(plain averaging): an optimizer on statistics is meaningless. A tied parameter (one tensor under
two names in the state dict, ``tied``: alias -> name) is stepped once, under its name, and its
aliases are set to the result, so the copies that travel stay equal.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch

from ..errors import CheckpointError, ConfigError

__all__ = ["ADAPTIVE", "FedAdagrad", "FedAdam", "FedAvg", "FedAvgM", "FedYogi", "OPTIMIZERS", "ServerOptimizer",
           "make_optimizer", "tied_aliases"]

Tensors = dict[str, torch.Tensor]
OPTIMIZERS = ("fedavg", "fedavgm", "fedadagrad", "fedadam", "fedyogi")
#: the adaptive optimizers of Reddi et al. 2021: their server learning rate is a step size, not a mixing weight
ADAPTIVE = ("fedadagrad", "fedadam", "fedyogi")


class ServerOptimizer:
    """``w <- w + lr * Delta`` (FedAvg); subclasses change :meth:`step` and the state it keeps.

    Parameters
    ----------
    lr
        Server learning rate; FedAvg with ``lr = 1`` is exactly the weighted average.
    buffers
        Float entries that are statistics, not parameters: always ``w + Delta``.
    tied
        ``alias -> name`` for parameters the model ties (:func:`tied_aliases`): each alias gets its
        name's new value, not a step of its own.
    """

    state_prefixes: tuple[str, ...] = ()

    def __init__(self, *, lr: float = 1.0, buffers: Iterable[str] = (), tied: Mapping[str, str] | None = None) -> None:
        self.lr = lr
        self.tied = dict(tied or {})
        self.buffers = frozenset(buffers) - self.tied.keys()

    def init(self) -> Tensors:
        """The server state before round 1 (moments are created lazily, shaped like ``Delta``)."""
        return {}

    def step(self, state: Tensors, delta: Tensors) -> tuple[Tensors, Tensors]:
        """``(change of the parameters, new state)`` for the parameter part of ``Delta``."""
        return {k: self.lr * d for k, d in delta.items()}, state

    def apply(self, state: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor],
              delta: Mapping[str, torch.Tensor]) -> tuple[Tensors, Tensors]:
        """The next global model and server state for the mean update ``delta``."""
        change, new_state = self.step(dict(state), {k: d for k, d in delta.items()
                                                    if k not in self.buffers and k not in self.tied})
        new = dict(params)
        for k, d in delta.items():
            if k not in self.tied:
                new[k] = params[k] + (d if k in self.buffers else change[k])
        for alias, name in self.tied.items():
            if alias in delta:
                new[alias] = new[name].clone()
        return new, new_state

    def check_state(self, state: Mapping[str, torch.Tensor]) -> Tensors:
        """The entries of a checkpoint's server state that are this optimizer's (refuses foreign ones)."""
        mine = {k: v for k, v in state.items() if k.startswith(self.state_prefixes)} if self.state_prefixes else {}
        foreign = [k for k in state if k.split(".", 1)[0] + "." in ("v.", "m.") and k not in mine]
        if foreign:
            raise CheckpointError(f"{type(self).__name__} has no state {sorted(foreign)[:3]}: the checkpoint was "
                                  "written with another server.strategy.")
        return mine


class FedAvg(ServerOptimizer):
    """FedAvg (McMahan et al. 2017): ``w <- w + lr * Delta``; with ``lr = 1``, ``w <- sum_k n_k/n w_k``."""


class FedAvgM(ServerOptimizer):
    """FedAvg with server momentum (Hsu et al. 2019, arXiv:1909.06335).

    ``v <- beta * v + Delta``;  ``w <- w + lr * v``. State: ``v.<name>``.
    """

    state_prefixes = ("v.",)

    def __init__(self, *, lr: float = 1.0, momentum: float = 0.9, buffers: Iterable[str] = (),
                 tied: Mapping[str, str] | None = None) -> None:
        super().__init__(lr=lr, buffers=buffers, tied=tied)
        self.momentum = momentum

    def step(self, state: Tensors, delta: Tensors) -> tuple[Tensors, Tensors]:
        for k, d in delta.items():
            v = state.get(f"v.{k}")
            state[f"v.{k}"] = d.clone() if v is None else v.clone().mul_(self.momentum).add_(d)
        return {k: self.lr * state[f"v.{k}"] for k in delta}, state


class FedAdam(ServerOptimizer):
    """FedAdam (Reddi et al. 2021, arXiv:2003.00295, Algorithm 2).

    ``m <- b1 m + (1 - b1) Delta``;  ``v <- b2 v + (1 - b2) Delta^2``;
    ``w <- w + lr * m / (sqrt(v) + tau)``. No bias correction, as in the paper. State:
    ``m.<name>``, ``v.<name>`` (``v`` starts at ``tau^2``, the paper's ``v_{-1} >= tau^2``).
    :class:`FedAdagrad` and :class:`FedYogi` change only the update of ``v``
    (:meth:`second_moment`).
    """

    state_prefixes = ("m.", "v.")

    def __init__(self, *, lr: float = 1e-2, beta1: float = 0.9, beta2: float = 0.99,
                 tau: float = 1e-3, buffers: Iterable[str] = (), tied: Mapping[str, str] | None = None) -> None:
        super().__init__(lr=lr, buffers=buffers, tied=tied)
        self.beta1, self.beta2, self.tau = beta1, beta2, tau

    def second_moment(self, v: torch.Tensor, d: torch.Tensor) -> None:
        """Adam: ``v <- b2 v + (1 - b2) Delta^2``, in place."""
        v.mul_(self.beta2).addcmul_(d, d, value=1 - self.beta2)

    def step(self, state: Tensors, delta: Tensors) -> tuple[Tensors, Tensors]:
        out = {}
        for k, d in delta.items():
            m = state[f"m.{k}"].clone() if f"m.{k}" in state else torch.zeros_like(d)
            v = state[f"v.{k}"].clone() if f"v.{k}" in state else torch.full_like(d, self.tau**2)
            m.mul_(self.beta1).add_(d, alpha=1 - self.beta1)
            self.second_moment(v, d)
            state[f"m.{k}"], state[f"v.{k}"] = m, v
            out[k] = self.lr * m / (v.sqrt() + self.tau)
        return out, state


class FedAdagrad(FedAdam):
    """FedAdagrad (Reddi et al. 2021, Algorithm 2): ``v <- v + Delta^2``; ``m`` and the step as in :class:`FedAdam`.

    ``beta2`` is unused. The paper keeps ``m`` with ``beta1`` for all three optimizers; ``beta1 = 0``
    gives the plain Adagrad step ``w <- w + lr * Delta / (sqrt(v) + tau)`` (Flower's default).
    """

    def second_moment(self, v: torch.Tensor, d: torch.Tensor) -> None:
        v.addcmul_(d, d)


class FedYogi(FedAdam):
    """FedYogi (Reddi et al. 2021, Algorithm 2; Yogi: Zaheer et al. 2018).

    ``v <- v - (1 - b2) Delta^2 sign(v - Delta^2)``: ``v`` moves towards ``Delta^2`` by at most
    ``(1 - b2) Delta^2`` a round, so one large round cannot shrink the step of the next ones the way
    Adam's ``v`` does. ``m`` and the step as in :class:`FedAdam`.
    """

    def second_moment(self, v: torch.Tensor, d: torch.Tensor) -> None:
        d2 = d * d
        v.addcmul_(d2, torch.sign(v - d2), value=-(1 - self.beta2))


def make_optimizer(name: str, *, lr: float, momentum: float = 0.9, beta1: float = 0.9, beta2: float = 0.99,
                   tau: float = 1e-3, buffers: Iterable[str] = (), tied: Mapping[str, str] | None = None) -> ServerOptimizer:
    """The server optimizer called ``name`` (``server.strategy``)."""
    if name == "fedavg":
        return FedAvg(lr=lr, buffers=buffers, tied=tied)
    if name == "fedavgm":
        return FedAvgM(lr=lr, momentum=momentum, buffers=buffers, tied=tied)
    adaptive = {"fedadagrad": FedAdagrad, "fedadam": FedAdam, "fedyogi": FedYogi}
    if name in adaptive:
        return adaptive[name](lr=lr, beta1=beta1, beta2=beta2, tau=tau, buffers=buffers, tied=tied)
    raise ConfigError(f"server.strategy must be one of {', '.join(OPTIMIZERS)}; got {name!r}.")


def tied_aliases(model: torch.nn.Module) -> dict[str, str]:
    """``alias -> name`` for every parameter ``model`` holds under several names (weight tying), ``name`` the first.

    ``state_dict()`` lists a tied tensor once per name, so it travels and is averaged once per
    name; ``named_parameters()`` lists it once, under ``name``.
    """
    groups: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(n)
    return {alias: names[0] for names in groups.values() for alias in names[1:]}
