"""Clients trained at the same time on threads of this process, each client on its own torch threads.

A small client's training step does not keep two torch threads busy: OpenMP forks and joins
around every operator, and under ``OMP_WAIT_POLICY=PASSIVE`` (which the ``fed8`` command sets,
so that a shared machine does not collapse: :mod:`fed8._process`) the threads sleep and wake
at each of those barriers. Two clients trained at the same time, one torch thread each, have
no barriers at all and keep both cores busy. On the project's 2-core VM (docs/BENCHMARKS.md,
"Parallel clients"), under ``PASSIVE``: W1 (100 clients x 80 images, B=10) 3.86 s per round
against 6.94 s one by one, S8 (one 8-image step per client) 0.68 s against 1.09 s, the whole
default ``fed8 run`` 78-80 s against 112 s. With OpenMP's spinning default the one-by-one
steps are fast again (W1 4.31 s) and parallel clients gain nothing there (W1 4.53 s); S8 got
slower (1.06 s against 0.68 s), since the caller's idle OpenMP thread spins on a core the
clients need (:func:`spinning_openmp`; a warning says so). Clients are independent until the
server sums them, so this is the data parallelism of federated learning itself.

How: ``P`` Python threads (torch operators release the GIL), each with its own copy of the
model and ``threads_per_client`` intra-op threads (OpenMP's thread count is per thread; a
new thread takes torch's global count on its first operator, so each worker sets its own
count after that first initialisation, and the caller's count is put back). The updates are
yielded in the order of the clients, so the server adds them in the same order as one by
one, and the updates alive at a time stay bounded (streaming aggregation): ``2 P`` in the
clients' order, about two windows longest first (below).

Longest first: clients of unequal size (non-IID partitions, the default run's Dirichlet
split) started in their order leave a core idle while the last big one finishes. On the
default partition (20 clients of 92-701 images, 2,000 sampled rounds, work = steps) rounds
ran 5.9% / 20.6% / 29.8% over perfect balance in that order with 2 / 4 / 8 workers (10, 10,
20 clients per round), and 1.7% / 9.4% / 14.3% in the order of decreasing size (longest
processing time first, Graham 1969). Measured on 2 cores, the default run's rounds took
about 2% less, within that VM's run-to-run spread (docs/BENCHMARKS.md, "Longest first").
With ``cost``, :meth:`ClientThreads.map` starts each window of up to
:attr:`ClientThreads.window` clients in decreasing cost and still yields them in their
order, so the sum and the bytes are unchanged. A finished client that waits for its
turn holds its update, so the window comes from a memory budget (``REORDER_BUDGET_BYTES`` for
``2 window`` updates) and is 1 (no reordering) for models too large for it.

Same answers: a client's update depends on its inputs and on the number of threads it was
computed with (it changes the summation order inside convolutions), not on what else runs.
So a run is deterministic and resumes bit for bit for a given ``threads_per_client``, and
``fed8 federation``'s nodes in local trials train with the same count as the simulation
(:func:`client_parallelism`), so the two still give identical models.
"""

from __future__ import annotations

import collections
import copy
import itertools
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

import torch
from torch import nn

__all__ = ["ClientThreads", "MEMORY_BUDGET_BYTES", "REORDER_BUDGET_BYTES", "client_parallelism", "spinning_openmp"]

log = logging.getLogger("fed8")

T = TypeVar("T")
R = TypeVar("R")

# Per-client training state the automatic choice allows in all (model copy, gradients, momentum, update: ~4x weights).
MEMORY_BUDGET_BYTES = 1 << 30
# Finished updates held back for their turn when clients start longest first (at most 2 windows of them).
REORDER_BUDGET_BYTES = 256 << 20
MAX_WINDOW = 32


def client_parallelism(*, threads: int, parallel_clients: int, clients_per_round: int, device_type: str,
                       state_bytes: int) -> tuple[int, int]:
    """``(clients trained at once, torch threads per client)`` for a run.

    Parameters
    ----------
    threads
        The process's torch threads (``run.threads``, 0 already resolved to the cores).
    parallel_clients
        ``run.parallel_clients``: 0 = automatic; ``P >= 1``: ``P`` clients at once.
    clients_per_round
        Clients a round samples (the expected number under Poisson sampling).
    device_type
        ``"cpu"`` or an accelerator's type: on an accelerator the automatic choice is 1 (one
        client at a time keeps the device busy; nothing else has been measured).
    state_bytes
        Bytes of the model's floating-point state.

    Returns
    -------
    (P, T)
        Automatic: ``P = min(threads, clients_per_round, MEMORY_BUDGET_BYTES // (4 state_bytes))``
        on the CPU, at least 1. ``T = max(1, threads // P)``. With ``P = 1`` a client trains
        on every thread, one after another (fed8's behaviour before this module).
    """
    if parallel_clients > 0:
        p = parallel_clients
    elif device_type != "cpu":
        p = 1
    else:
        p = min(threads, max(1, clients_per_round), MEMORY_BUDGET_BYTES // max(4 * state_bytes, 1))
    p = max(1, p)
    return p, max(1, threads // p)


def spinning_openmp() -> bool:
    """True where torch's idle OpenMP threads spin (libgomp's default): neither ``OMP_WAIT_POLICY=PASSIVE`` nor
    ``GOMP_SPINCOUNT=0`` in the environment."""
    return (os.environ.get("OMP_WAIT_POLICY", "").strip().upper() != "PASSIVE"
            and os.environ.get("GOMP_SPINCOUNT", "").strip() != "0")


class ClientThreads:
    """``workers`` threads, each with its own copy of ``model`` and ``threads_per_client`` torch threads.

    Parameters
    ----------
    model
        The architecture; each worker trains on a deep copy (its weights are overwritten by
        every client anyway).
    workers
        Clients trained at the same time (>= 2; one is simply a loop).
    threads_per_client
        Torch intra-op threads of each worker.

    Attributes
    ----------
    window
        Clients started longest first as a group by :meth:`map` with ``cost``:
        ``min(MAX_WINDOW, REORDER_BUDGET_BYTES // (2 update_bytes))``, at least 1, where
        ``update_bytes`` are the model's floating-point bytes.
    """

    def __init__(self, model: nn.Module, *, workers: int, threads_per_client: int) -> None:
        self.workers, self.threads_per_client = workers, threads_per_client
        update_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values() if t.is_floating_point())
        self.window = max(1, min(MAX_WINDOW, REORDER_BUDGET_BYTES // max(2 * update_bytes, 1)))
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="fed8-client")
        caller = torch.get_num_threads()
        ready = threading.Barrier(workers)

        def start() -> None:
            torch.get_num_threads()  # torch's lazy per-thread set-up, which would undo the count set next
            torch.set_num_threads(threads_per_client)  # per thread under OpenMP; also torch's global default
            self._local.model = copy.deepcopy(model)
            ready.wait()  # every worker is started here, before the caller's count is restored

        for f in [self._pool.submit(start) for _ in range(workers)]:
            f.result()
        torch.set_num_threads(caller)
        if spinning_openmp():
            log.warning("OMP_WAIT_POLICY is not PASSIVE: this thread's idle OpenMP threads spin on the cores the "
                        "parallel clients train on (S8's one-step clients took 1.5-1.6x the one-by-one time). Set "
                        "OMP_WAIT_POLICY=PASSIVE before torch is imported (the fed8 command does), or "
                        "run.parallel_clients = 1.")

    def map(self, fn: Callable[[nn.Module, T], R], items: Iterable[T], *,
            cost: Callable[[T], float] | None = None) -> Iterator[R]:
        """``fn(model, item)`` for every item, computed on the workers, yielded in the order of ``items``.

        Without ``cost`` items start in their order and at most ``2 workers`` results are
        pending at a time. With ``cost`` (a client's expected work, e.g. its sample count)
        items are taken ``window`` at a time and each window starts in decreasing cost (ties
        in item order); the next window is queued while the last one runs, so at most
        ``max(2 workers, window + 1) - 1 + window`` results are pending. A worker's exception
        is raised here when its turn comes. Closing the iterator early cancels what has not
        started.
        """
        it = iter(items)
        pending: collections.deque[Future] = collections.deque()
        size = 1 if cost is None else self.window
        limit = max(2 * self.workers, size + 1)  # pending results: at most limit - 1 + size

        def submit() -> bool:
            group = list(itertools.islice(it, size))
            if not group:
                return False
            order = submission_order([cost(i) for i in group]) if cost is not None else range(len(group))
            futures: list[Future | None] = [None] * len(group)
            for j in order:
                futures[j] = self._pool.submit(lambda i=group[j]: fn(self._local.model, i))
            pending.extend(futures)
            return True

        try:
            while len(pending) < limit and submit():
                pass
            while pending:
                result = pending.popleft().result()
                while len(pending) < limit and submit():
                    pass
                yield result
        finally:
            for f in pending:
                f.cancel()
            for f in pending:  # a started client finishes before its worker is reused or the pool closes
                if not f.cancelled():
                    f.exception()

    def close(self) -> None:
        """Stop the worker threads."""
        self._pool.shutdown(wait=True, cancel_futures=True)


def submission_order(costs: list[float]) -> list[int]:
    """Indices of ``costs`` in decreasing cost, ties in index order (longest processing time first)."""
    return sorted(range(len(costs)), key=lambda j: (-costs[j], j))
