import os
import sys
import uuid

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_collection_modifyitems(config, items):
    """Run the tests marked ``slow`` first (stable order otherwise).

    Under ``pytest -n auto`` (pytest-xdist, the README's test command) the long end-to-end runs
    then start at once on the workers and the short tests fill in around them, instead of one
    long test starting last and running alone.
    """
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)

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


def wait_for_round(run_dir, proc, timeout_s: float = 240.0) -> None:
    """Wait until the ``fed8`` process ``proc`` has committed a round to ``run_dir`` (fails if it ended first)."""
    import time
    from pathlib import Path

    metrics = Path(run_dir) / "metrics.jsonl"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and metrics.read_text().strip():
            return
        time.sleep(0.05)
    out = proc.communicate()[0] if proc.poll() is not None else "still running"
    pytest.fail(f"no round committed to {run_dir} within {timeout_s:.0f} s (exit {proc.poll()}): {out}")


def server_round(aggregator, updates, state, optimizer=None, optimizer_state=None, rnd=1):
    """One server round by hand: aggregate ``updates`` and apply the optimizer (FedAvg by default).

    Returns ``(new_state, new_optimizer_state)``.
    """
    from fed8.federated.optimizer import FedAvg

    optimizer = optimizer or FedAvg()
    aggregator.begin(rnd, [u.client for u in updates])
    for u in updates:
        aggregator.add(u)
    delta = aggregator.result(state)
    return optimizer.apply(optimizer_state if optimizer_state is not None else optimizer.init(), state, delta)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """``write(source) -> name``: a fresh module of your own in the current folder (``tmp_path``), as a user's
    ``mynets.py`` beside their config; forgotten by ``sys.modules`` after the test."""
    names = []

    def write(source: str) -> str:
        name = f"user_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(source)
        names.append(name)
        return name

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # fed8 puts the current folder on it: undone after the test
    yield write
    for name in names:
        sys.modules.pop(name, None)


def assert_run_matches_reference(cfg, reference, server_state: str, *, atol_state: float = 1e-7) -> None:
    """Run ``cfg`` (SCAFFOLD or FedDyn) and compare it with ``reference(prepare(cfg), 3)``'s ``{"x", server_state,
    "clients"}``: the model, the server's state (``sim.transport.scaffold.<server_state>``) and every client's state in
    the store (a never-sampled client has none, and its reference state is zero)."""
    import torch

    from fed8.stages.federation import prepare

    ref = reference(prepare(cfg), 3)
    prep = prepare(cfg)
    sim = prep.simulation
    state = sim.run(prep.state)
    for k, v in ref["x"].items():
        torch.testing.assert_close(state[k], v, rtol=1e-4, atol=1e-6)
    for k, v in ref[server_state].items():  # the server derived its state from the updates alone
        torch.testing.assert_close(getattr(sim.transport.scaffold, server_state)[k], v, rtol=1e-4, atol=atol_state)
    store = sim.transport.controls
    for i, want in enumerate(ref["clients"]):
        got = store.get(i)
        if got is None:  # never sampled: still zero
            assert all(bool((v == 0).all()) for v in want.values())
            continue
        for k, v in want.items():
            torch.testing.assert_close(got[k], v, rtol=1e-4, atol=atol_state)
