"""Process settings the ``fed8`` command makes before torch loads: OpenMP's wait policy and malloc's thresholds.

**Wait policy.** fed8 sets ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose one. With the
default policy, torch's OpenMP threads (GNU libgomp in the CPU wheels) spin for a while at
every barrier; on a shared machine they spin on cores another process needs, and two such
processes can slow each other down by an order of magnitude: on a 2-core VM a batch-10
``cnn`` step took 291 ms next to another training process instead of 10-28 ms, and a short
run 151.7 s instead of 23.7 s with ``PASSIVE`` (threads sleep at barriers), which costs
10-15% on a quiet machine (``bench/shared_machine.py``; docs/BENCHMARKS.md "SHARED").
libgomp reads the variable once, when torch loads it, so it must be set before ``import
torch``: the ``fed8`` command does it first thing, and the processes fed8 starts (Flower
SuperLink, SuperNodes, ClientApps) inherit it. Library users who import torch themselves set
it in their shell (``export OMP_WAIT_POLICY=PASSIVE``).

**malloc.** glibc serves allocations above its mmap threshold (dynamic, at most 32 MiB) with
fresh ``mmap`` pages and unmaps them on free, and trims the heap top, so an evaluation
batch's activations (a 500-image batch of the ``cnn``: 50 MB after its first convolution) are
re-faulted page by page at every batch. fed8 sets ``M_MMAP_THRESHOLD`` and
``M_TRIM_THRESHOLD`` to 1 GiB, so freed buffers are reused: on the default run's first three
rounds minor page faults fell from 900 k to 119 k, system time from 4.4 s to 1.2 s and wall
time from 27.4 s to 21.6 s (docs/BENCHMARKS.md "DEFAULT RUN").
Memory freed stays with the process until it exits (its peak stays its footprint). A user's
own ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` are kept; other C libraries
(musl, macOS) are left alone.

**Termination.** Python ends on ``SIGTERM`` and ``SIGHUP`` without running ``finally``
blocks, so ``timeout``, a batch scheduler, ``docker stop`` or a closed SSH session would leave
``fed8 federation``'s SuperLink, SuperNodes and app processes running (they sit in sessions of
their own, out of reach of the terminal's signals) and a run without its resume hint. The
``fed8`` command turns both signals into :class:`Terminated`, a ``KeyboardInterrupt``, so they
stop a run the way Ctrl-C does: the Flower processes are stopped, the last committed round is
kept, and the exit status is ``128 + signal`` (143, 129). A signal the user set to be ignored
(``nohup``) stays ignored; a second one ends the process at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import select
import signal
import sys
import threading
from typing import Iterator, MutableMapping

__all__ = ["MALLOC", "Terminated", "WAIT_POLICY", "exit_status", "output_closed", "quiet_after_broken_pipe", "set_process_env",
           "stop_on_signals", "tune_malloc", "wait_policy"]

WAIT_POLICY = "PASSIVE"
# glibc mallopt parameters (malloc.h) and the values fed8 sets; the env names are glibc's tunables.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MALLOC = {"MALLOC_MMAP_THRESHOLD_": (_M_MMAP_THRESHOLD, 1 << 30), "MALLOC_TRIM_THRESHOLD_": (_M_TRIM_THRESHOLD, 1 << 30)}


def set_process_env(environ: MutableMapping[str, str] | None = None) -> None:
    """Put fed8's wait policy and malloc thresholds into ``environ`` (default: this process's) where unset.

    For processes fed8 starts; glibc reads the ``MALLOC_*`` variables when a process starts.
    """
    env = os.environ if environ is None else environ
    if "GOMP_SPINCOUNT" not in env:  # libgomp's own spin count, if the user set one, wins over any policy
        env.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)
    for name, (_, value) in MALLOC.items():
        env.setdefault(name, str(value))


def tune_malloc() -> dict[str, int]:
    """Set this process's malloc thresholds (glibc ``mallopt``) unless the user set them; the values applied."""
    path = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(path).mallopt if path else None
    except (OSError, AttributeError):  # not glibc
        mallopt = None
    if mallopt is None:
        return {}
    applied = {}
    for name, (param, value) in MALLOC.items():
        if name not in os.environ and mallopt(param, value) == 1:
            applied[name] = value
    return applied


def wait_policy() -> str:
    """The wait policy asked of torch's OpenMP in this process, in words (for ``fed8 info``)."""
    if "GOMP_SPINCOUNT" in os.environ:
        return f"GOMP_SPINCOUNT={os.environ['GOMP_SPINCOUNT']}"
    value = os.environ.get("OMP_WAIT_POLICY")
    if value is None:
        return "default (threads spin at barriers; on a shared machine set OMP_WAIT_POLICY=PASSIVE before torch loads)"
    return value


class Terminated(KeyboardInterrupt):
    """``SIGTERM`` or ``SIGHUP`` received: an interrupt, so cleanup runs as for Ctrl-C (module docstring)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.signame = signal.Signals(signum).name


def _terminate(signum: int, frame) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second one ends the process at once, cleanup or not
    raise Terminated(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[list[str]]:
    """Within the block, ``SIGTERM`` and ``SIGHUP`` raise :class:`Terminated`; yields the signals so handled.

    Only in the main thread (the only one Python delivers signals to); a signal whose handler is
    not the default (ignored under ``nohup``, or set by the caller) is left alone. The previous
    handlers come back at the end, so a caller of ``fed8.cli.main`` keeps its own.
    """
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if sig is not None and signal.getsignal(sig) is signal.SIG_DFL:
                previous[sig] = signal.signal(sig, _terminate)
    try:
        yield [signal.Signals(sig).name for sig in previous]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def exit_status(interrupt: KeyboardInterrupt) -> int:
    """The shell's status for a run stopped by ``interrupt``: ``128 + signal`` (Ctrl-C: 130, SIGTERM: 143)."""
    return 128 + getattr(interrupt, "signum", signal.SIGINT)


def output_closed() -> bool:
    """Whether nobody reads this process's standard output or error any more (a pipe whose reader exited).

    Told apart from other broken pipes (a child process's, a socket's) by ``poll``: the write end
    of a pipe without a reader reports ``POLLERR``.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            fd = stream.fileno()
        except (OSError, ValueError, AttributeError):
            continue
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        if any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0)):
            return True
    return False


def quiet_after_broken_pipe() -> int:
    """End a command whose reader went away (``fed8 predict ... --json | head``) quietly; its exit status, 1.

    Python ignores ``SIGPIPE``, so a write to a closed pipe raises ``BrokenPipeError`` instead of
    ending the process. Standard output and error are pointed at ``/dev/null`` (the interpreter
    flushes them on exit and would raise again) and the status is 1, what Python's documentation
    recommends and what ``rich`` does for the tables fed8 prints with it. Nothing of a run is lost:
    a run directory's files are committed before anything about them is printed.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            os.dup2(devnull, stream.fileno())
        except (OSError, ValueError, AttributeError):  # replaced or closed streams (pytest's capture): nothing to mute
            pass
    os.close(devnull)
    return 1
