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


def interrupted_run(cfg, out, at_round: int) -> None:
    """``fed8.run`` stopped by a KeyboardInterrupt right after round ``at_round`` finished."""
    import fed8

    def stop(rnd, row):
        if rnd == at_round:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fed8.run(cfg, out=out, on_round=stop, report=False)
