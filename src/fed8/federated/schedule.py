"""The clients' local work round by round: the learning rate's schedule and, optionally, unequal epochs.

**Learning rate**: constant, exponential decay, or cosine annealing.

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

**Unequal local work** (systems heterogeneity). Real devices differ in speed and time budget,
so in a round some finish fewer local epochs than others. Wang et al. 2020 (FedNova,
arXiv:2007.07481, experiments) draw each client's epochs uniformly from ``[2, 5]`` every round; Li
et al. 2020 (FedProx, arXiv:1812.06127, experiments) give stragglers a random number of epochs
up to ``E``. fed8 draws client ``k``'s epochs in round ``t`` as::

    E_k,t ~ Uniform{E_min, ..., E}          from (seed, LOCAL_WORK, t, k)

(:func:`client_epochs`), a public function of the seed like the sampling of clients, so the
server (SCAFFOLD's and FedNova's step counts), every runtime and a resumed run agree on it.
"""

from __future__ import annotations

import math

from .._rng import LOCAL_WORK, numpy_rng
from ..errors import ParameterError

__all__ = ["LR_SCHEDULES", "client_epochs", "client_lr"]

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


def client_epochs(seed: int, rnd: int, client: int, *, low: int, high: int) -> int:
    """Client ``client``'s local epochs in round ``rnd``: uniform on ``low..high`` (both included) from
    ``(seed, LOCAL_WORK, rnd, client)`` (module docstring); ``high`` itself when ``low`` is 0 or ``low >= high``."""
    if low <= 0 or low >= high:
        return high
    return int(numpy_rng(seed, LOCAL_WORK, rnd, client).integers(low, high + 1))
