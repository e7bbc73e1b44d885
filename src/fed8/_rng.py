"""Explicit random generators derived from (seed, stream, round, client).

Every random choice in fed8 draws from a generator built here, never from global
state, so a round can be replayed alone (resume) and clients can run in any order or
in parallel with the same result. Seeds are mixed with NumPy's ``SeedSequence``.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["ATTACK", "COMPRESS", "DOWNLINK", "DP_NOISE", "FINETUNE", "INIT", "LOCAL_NOISE", "LOCAL_WORK", "SAMPLE",
           "SECAGG", "TRAIN", "derive_seed",
           "numpy_rng", "torch_generator"]

# Stream tags keep the streams of different purposes independent.
INIT, SAMPLE, TRAIN, COMPRESS, DOWNLINK = 1, 2, 3, 4, 5
DP_NOISE, LOCAL_NOISE, SECAGG, ATTACK = 6, 7, 8, 9
LOCAL_WORK = 10  # how many epochs each client trains in a round (train.local_epochs_min)
FINETUNE = 11  # the shuffles of a client's fine-tuning after the last round (eval.finetune_epochs)


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed that depends on ``seed`` and every key (e.g. stream, round, client)."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def torch_generator(seed: int, *keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, *keys))


def numpy_rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, *keys))
