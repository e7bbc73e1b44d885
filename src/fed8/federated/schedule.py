"""The clients' learning rate round by round: constant, exponential decay, or cosine annealing.

Federated papers commonly decay the client learning rate across rounds (for example
``lr * 0.99^(t-1)`` in round ``t``: Acar et al. 2021, FedDyn, arXiv:2111.04263; Li et al.
2020 show FedAvg on non-IID data needs a decaying rate to converge to the optimum,
arXiv:1907.02189). Within a round each client runs plain SGD at the round's rate.

    constant      lr_t = lr
    exponential   lr_t = lr * decay^(t - 1)
    cosine        lr_t = lr * (1 + cos(pi * (t - 1) / T)) / 2     (Loshchilov & Hutter 2017, without restarts)

with ``t`` the round (1-based) and ``T`` the planned rounds; cosine's last round keeps a
rate above 0. A pure function of the round, so a resumed run and a Flower node get the
same rate as the simulation.
"""

from __future__ import annotations

import math

from ..errors import ParameterError

__all__ = ["LR_SCHEDULES", "client_lr"]

LR_SCHEDULES = ("constant", "exponential", "cosine")


def client_lr(lr: float, schedule: str, rnd: int, *, rounds: int, decay: float) -> float:
    """The clients' learning rate in round ``rnd`` (1-based) of ``rounds`` (module docstring)."""
    if schedule == "constant":
        return lr
    if rnd < 1:
        raise ParameterError(f"client_lr: rounds count from 1; got rnd = {rnd}.")
    if schedule == "exponential":
        return lr * decay ** (rnd - 1)
    if schedule == "cosine":
        if rounds < 1:
            raise ParameterError(f"client_lr: cosine needs the planned rounds (>= 1); got rounds = {rounds}.")
        return lr * 0.5 * (1.0 + math.cos(math.pi * min(rnd - 1, rounds) / rounds))
    raise ParameterError(f"client_lr: schedule must be one of {LR_SCHEDULES}; got {schedule!r}.")
