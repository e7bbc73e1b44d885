"""Where privacy randomness comes from: the operating system's CSPRNG, never a seed.

The noise of a DP mechanism (central, local, distributed shares, the adaptive-clipping
count) and the client sampling that its analysis amplifies over must be unknown to
the party the guarantee is stated against. ``run.seed`` is written to ``config.toml``
and anything derived from it can be recomputed from a run's files, subtracted from the
release and the clipped sum recovered exactly. So privacy draws come from
:func:`os.urandom` (``getrandom(2)`` on Linux), read fresh for every draw:

* uniform ``[0, 1)`` values from 24 random bits (float32) or 53 bits (float64),
* normal values by the Box-Muller transform of two 53-bit uniforms in ``(0, 1]``,
* permutations by sorting 64-bit random keys (ties: probability ``< n^2 / 2^65``).

:class:`SeededDraws` gives the same interface over a seeded ``torch.Generator``: it is
what runs without DP use (sampling, secure-aggregation rounding) and what
``privacy.insecure_reproducible_noise = true`` selects for tests and benchmarks, a mode
the privacy statement calls "no privacy".

Known limit (Mironov 2012, "On significance of the least significant bits for
differential privacy"): floating-point Gaussian noise is not exactly a Gaussian
mechanism; fed8 shares this with every DP library that adds float noise.
"""

from __future__ import annotations

import math
import os
from typing import Protocol

import numpy as np
import torch

from .._rng import torch_generator

__all__ = ["Draws", "PrivacyRandomness", "SeededDraws", "SystemDraws", "privacy_randomness"]


class Draws(Protocol):
    """Random tensors for one use (one round, one client): the three draws fed8 needs."""

    def rand(self, shape: tuple[int, ...]) -> torch.Tensor:
        """float32 uniform in ``[0, 1)``."""

    def randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        """float32 standard normal."""

    def randperm(self, n: int) -> torch.Tensor:
        """A uniform permutation of ``0..n-1`` (int64)."""

    def words(self, n: int) -> np.ndarray:
        """``n`` uniform 64-bit words (uint64): the input of the exact discrete Gaussian sampler."""


class SeededDraws:
    """:class:`Draws` over a seeded ``torch.Generator`` (reproducible, so not private)."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def rand(self, shape):
        return torch.rand(shape, generator=self.generator, dtype=torch.float32)

    def randn(self, shape):
        return torch.randn(shape, generator=self.generator, dtype=torch.float32)

    def randperm(self, n):
        return torch.randperm(n, generator=self.generator)

    def words(self, n):
        if not hasattr(self, "_np"):  # drawn on first use only: runs without words keep their other draws
            self._np = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=self.generator)))
        return self._np.integers(0, 2**64, size=n, dtype=np.uint64, endpoint=False)


def _words(n: int) -> np.ndarray:
    return np.frombuffer(os.urandom(8 * n), dtype=np.uint64)


class SystemDraws:
    """:class:`Draws` from ``os.urandom``; nothing is kept between calls."""

    def rand(self, shape):
        n = math.prod(shape)
        u = (_words(n) >> np.uint64(40)).astype(np.float32) * np.float32(2.0 ** -24)
        return torch.from_numpy(u).reshape(shape)

    def randn(self, shape):
        n = math.prod(shape)
        m = (n + 1) // 2
        w = _words(2 * m) >> np.uint64(11)  # 53 random bits each
        u = (w.astype(np.float64) + 1.0) * 2.0 ** -53  # (0, 1]: log(u1) is finite
        r = np.sqrt(-2.0 * np.log(u[:m]))
        theta = 2.0 * math.pi * u[m:]
        z = np.concatenate([r * np.cos(theta), r * np.sin(theta)])[:n]
        return torch.from_numpy(z.astype(np.float32)).reshape(shape)

    def randperm(self, n):
        return torch.from_numpy(np.argsort(_words(n), kind="stable").astype(np.int64))

    def words(self, n):
        return _words(n).copy()


class PrivacyRandomness:
    """Hands out :class:`Draws` for privacy uses.

    Parameters
    ----------
    seed
        None: every draw from the OS CSPRNG (the default under DP). An int: draws from
        ``(seed, stream, *keys)``, reproducible by anyone who knows the seed.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self._system = SystemDraws()

    @property
    def secure(self) -> bool:
        return self.seed is None

    def draws(self, stream: int, *keys: int) -> Draws:
        """The draws of one use; ``stream`` and ``keys`` only matter when seeded."""
        if self.seed is None:
            return self._system
        return SeededDraws(torch_generator(self.seed, stream, *keys))

    def __repr__(self) -> str:
        return "PrivacyRandomness(os.urandom)" if self.seed is None else f"PrivacyRandomness(seed={self.seed})"


def privacy_randomness(*, dp: bool, insecure_reproducible: bool, seed: int) -> PrivacyRandomness:
    """The OS CSPRNG under DP; the run seed without DP or with the insecure opt-in."""
    return PrivacyRandomness(None if dp and not insecure_reproducible else seed)
