import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

# Small, fast settings for end-to-end runs: 600 MNIST images, 4 clients, 2 rounds.
SMALL = [
    "data.subset=600", "data.num_clients=4", "train.rounds=2", "train.local_epochs=1",
    "train.fraction=1.0", "run.threads=1", "quantize.enabled=false",
]


@pytest.fixture
def small():
    return list(SMALL)
