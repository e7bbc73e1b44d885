"""OpenMP's wait policy: fed8 sets ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose one.

With the default policy, torch's OpenMP threads (GNU libgomp in the CPU wheels) spin for a
while at every barrier. On a shared machine they spin on cores another process needs, and
two spinning processes can slow each other down by an order of magnitude: on a 2-core VM a
batch-10 ``cnn`` step with 2 threads took 288 ms next to another training process instead
of 13 ms alone, and 27 ms with ``PASSIVE`` (threads sleep at barriers). ``PASSIVE`` costs
about 10% on a quiet machine for such small steps (``bench/shared_machine.py``,
docs/BENCHMARKS.md "SHARED").

libgomp reads the variable once, when torch loads it, so it must be set before
``import torch``: the ``fed8`` command does it first thing, and the processes fed8 starts
(Flower SuperLink, SuperNodes, ClientApps) inherit it. Library users who import torch
themselves set it in their shell (``export OMP_WAIT_POLICY=PASSIVE``).
"""

from __future__ import annotations

import os
from typing import MutableMapping

__all__ = ["WAIT_POLICY", "set_wait_policy", "wait_policy"]

WAIT_POLICY = "PASSIVE"


def set_wait_policy(environ: MutableMapping[str, str] | None = None) -> None:
    """Put ``OMP_WAIT_POLICY=PASSIVE`` into ``environ`` (default: this process's) unless it is already set."""
    (os.environ if environ is None else environ).setdefault("OMP_WAIT_POLICY", WAIT_POLICY)


def wait_policy() -> str:
    """The wait policy asked of torch's OpenMP in this process, in words (for ``fed8 info``)."""
    value = os.environ.get("OMP_WAIT_POLICY")
    if value is None:
        return "default (threads spin at barriers; on a shared machine set OMP_WAIT_POLICY=PASSIVE before torch loads)"
    return value
