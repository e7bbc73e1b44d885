"""Parallel clients: several clients trained at once on threads, each on its own torch threads."""

import logging
import threading
import time

import pytest
import torch

import fed8
from fed8.errors import ConfigError
from fed8.federated.parallel import (MAX_WINDOW, MEMORY_BUDGET_BYTES, REORDER_BUDGET_BYTES, ClientThreads,
                                    client_parallelism, submission_order)

from conftest import interrupted_run

CNN = ["data.subset=300", "data.num_clients=4", "train.rounds=2", "train.local_epochs=1", "train.fraction=1.0",
       "train.batch_size=10", "quantize.enabled=false", "eval.every=0"]


def _bytes(result):
    return (result.run_dir / "model.safetensors").read_bytes()


def test_automatic_choice_one_client_per_thread_on_the_cpu_and_one_on_a_gpu():
    auto = dict(parallel_clients=0, state_bytes=6_653_480)
    assert client_parallelism(threads=2, clients_per_round=10, device_type="cpu", **auto) == (2, 1)
    assert client_parallelism(threads=16, clients_per_round=10, device_type="cpu", **auto) == (10, 1)
    assert client_parallelism(threads=16, clients_per_round=3, device_type="cpu", **auto) == (3, 5)
    assert client_parallelism(threads=1, clients_per_round=10, device_type="cpu", **auto) == (1, 1)
    assert client_parallelism(threads=8, clients_per_round=0, device_type="cpu", **auto) == (1, 8)
    assert client_parallelism(threads=16, clients_per_round=10, device_type="cuda", **auto) == (1, 16)
    big = MEMORY_BUDGET_BYTES // 12  # 4x its state fits three times in the budget
    assert client_parallelism(threads=16, clients_per_round=10, device_type="cpu", parallel_clients=0,
                              state_bytes=big) == (3, 5)
    assert client_parallelism(threads=16, clients_per_round=10, device_type="cpu", parallel_clients=0,
                              state_bytes=MEMORY_BUDGET_BYTES) == (1, 16)
    # explicit: as asked, even beyond the threads (each then gets one)
    assert client_parallelism(threads=2, clients_per_round=10, device_type="cpu", parallel_clients=1,
                              state_bytes=1) == (1, 2)
    assert client_parallelism(threads=2, clients_per_round=10, device_type="cuda", parallel_clients=4,
                              state_bytes=1) == (4, 1)


def test_workers_run_on_their_own_thread_count_in_order_and_leave_the_callers_alone():
    caller = torch.get_num_threads()
    pool = ClientThreads(torch.nn.Linear(3, 2), workers=2, threads_per_client=1)
    try:
        assert torch.get_num_threads() == caller

        def work(model, i):
            time.sleep(0.02 * (i % 3 == 0))  # out-of-order completion
            x = torch.randn(64, 32, 16, 16)
            torch.nn.functional.conv2d(x, torch.randn(8, 32, 3, 3)).sum()  # an OpenMP operator on the worker
            return i, torch.get_num_threads(), threading.current_thread().name, id(model)

        out = list(pool.map(work, range(9)))
        assert [o[0] for o in out] == list(range(9))
        assert {o[1] for o in out} == {1}
        assert {o[2].startswith("fed8-client") for o in out} == {True}
        assert len({o[3] for o in out}) == 2  # one model copy per worker
        assert torch.get_num_threads() == caller
    finally:
        pool.close()


def test_at_most_two_per_worker_are_pending_and_an_error_is_raised_in_turn():
    pool = ClientThreads(torch.nn.Linear(3, 2), workers=2, threads_per_client=1)
    started = []
    try:
        def work(model, i):
            started.append(i)
            if i == 2:
                raise ConfigError("client 2 failed")
            return i

        it = pool.map(work, range(100))
        assert next(it) == 0
        time.sleep(0.1)
        assert max(started) <= 4  # items 0..4 at most: 0 was consumed, 4 more in flight
        assert next(it) == 1
        with pytest.raises(ConfigError, match="client 2 failed"):
            next(it)
        assert len(started) < 100
    finally:
        pool.close()


def test_with_costs_each_window_starts_longest_first_and_is_yielded_in_order():
    """One worker takes the queue in submission order, so its start order is the schedule."""
    assert submission_order([3, 1, 4, 1, 5]) == [4, 2, 0, 1, 3]  # decreasing, ties in index order
    costs = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    pool = ClientThreads(torch.nn.Linear(3, 2), workers=1, threads_per_client=1)
    started, lock = [], threading.Lock()
    try:
        pool.window = 4

        def work(model, i):
            with lock:
                started.append(i)
            return i * 10

        it = pool.map(work, range(10), cost=lambda i: costs[i])
        assert next(it) == 0
        time.sleep(0.1)
        assert max(started) < 8  # two windows queued at most while the first is being yielded
        assert list(it) == [10 * i for i in range(1, 10)]
        assert started == [2, 0, 1, 3, 5, 7, 4, 6, 8, 9]
        started.clear()
        assert list(pool.map(work, range(5))) == [0, 10, 20, 30, 40] and started == [0, 1, 2, 3, 4]  # no cost
    finally:
        pool.close()


def test_the_reordering_window_fits_its_memory_budget():
    cnn = fed8.models.build_model("cnn", in_channels=1, height=28, width=28, num_classes=10)  # 6.65 MB of weights
    for model, window in ((cnn, REORDER_BUDGET_BYTES // (2 * 6_653_480)), (torch.nn.Linear(3, 2), MAX_WINDOW),
                          (torch.nn.Linear(1024, REORDER_BUDGET_BYTES // 4096, device="meta"), 1)):
        pool = ClientThreads(model, workers=2, threads_per_client=1)
        pool.close()
        assert pool.window == window
    assert 2 <= REORDER_BUDGET_BYTES // (2 * 6_653_480) < MAX_WINDOW  # the default run's 10 clients: one window


@pytest.mark.slow
def test_parallel_clients_give_one_threads_bytes_deterministically_and_resume_bit_for_bit(tmp_path, monkeypatch,
                                                                                          caplog):
    """Two threads, two clients at once (auto): every client on one torch thread, so the model is the bytes of a
    one-thread sequential run; again and resumed, the same bytes."""
    from fed8.federated import simulation

    real, seen = simulation.train_client, []

    def spy(*a, **k):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return real(*a, **k)

    monkeypatch.setattr(simulation, "train_client", spy)
    with caplog.at_level(logging.INFO, logger="fed8"):
        par = fed8.run(fed8.load_config(None, CNN + ["run.threads=2"]), out=tmp_path / "par", report=False)
    assert "clients train 2 at a time, 1 torch thread(s) each" in caplog.text
    assert len(seen) == 8 and {n.startswith("fed8-client") for n, _ in seen} == {True} and {t for _, t in seen} == {1}
    seen.clear()
    one = fed8.run(fed8.load_config(None, CNN + ["run.threads=1"]), out=tmp_path / "one", report=False)
    assert {n for n, _ in seen} == {threading.current_thread().name}  # one thread: the sequential path
    assert _bytes(par) == _bytes(one)
    cfg = fed8.load_config(None, CNN + ["run.threads=2", "run.parallel_clients=2", "train.rounds=3"])
    full = fed8.run(cfg, out=tmp_path / "full", report=False)
    interrupted_run(cfg, tmp_path / "cut", at_round=2)
    resumed = fed8.run(resume=tmp_path / "cut", report=False)
    assert _bytes(resumed) == _bytes(full)


@pytest.mark.slow
def test_parallel_clients_under_codecs_secure_aggregation_and_robust_rules(tmp_path):
    """The server side is unchanged: the same model as a one-thread sequential run with each of them."""
    for sets in (["compression.uplink=int8", "compression.error_feedback=true"],
                 ["privacy.secure_aggregation=true", "privacy.secagg_min_clients=2"],
                 ["server.robust=median"]):
        par = fed8.run(fed8.load_config(None, CNN + sets + ["run.threads=2", "run.parallel_clients=2"]),
                       out=tmp_path / f"par{len(sets)}{sets[0]}", report=False)
        one = fed8.run(fed8.load_config(None, CNN + sets + ["run.threads=1"]), out=tmp_path / f"one{sets[0]}",
                       report=False)
        assert _bytes(par) == _bytes(one), sets


def test_parallel_clients_is_a_resumable_run_key_and_validated(tmp_path):
    from fed8.stages.train import RESUMABLE_KEYS

    assert "run.parallel_clients" in RESUMABLE_KEYS
    with pytest.raises(ConfigError, match="parallel_clients"):
        fed8.load_config(None, ["run.parallel_clients=-1"])


def test_a_spinning_openmp_policy_is_warned_about(monkeypatch, caplog):
    from fed8.federated.parallel import spinning_openmp

    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    for policy, spins in (("ACTIVE", True), ("passive", False)):
        monkeypatch.setenv("OMP_WAIT_POLICY", policy)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="fed8"):
            ClientThreads(torch.nn.Linear(3, 2), workers=2, threads_per_client=1).close()
        assert spinning_openmp() is spins
        assert ("OMP_WAIT_POLICY is not PASSIVE" in caplog.text) is spins
    monkeypatch.delenv("OMP_WAIT_POLICY")
    assert spinning_openmp()
    monkeypatch.setenv("GOMP_SPINCOUNT", "0")
    assert not spinning_openmp()
