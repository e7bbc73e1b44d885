"""Robust aggregation wrappers, update validation, and the attack experiment."""

import logging

import pytest
import torch

import fed8
from conftest import server_round
from fed8.federated.aggregator import WeightedMean
from fed8.federated.client import ClientUpdate
from fed8.federated.robust import CoordinateMedian, NormBound, TrimmedMean, ValidateUpdates


def _round(aggregator, deltas, state=None):
    state = state or {"w": torch.zeros(3)}
    ups = [ClientUpdate(k, {"w": torch.tensor(d, dtype=torch.float32)}, 1, 0.0) for k, d in enumerate(deltas)]
    return server_round(aggregator, ups, state)[0]["w"].tolist()


def test_median_and_trimmed_mean_known_answers():
    deltas = [[1, 10, -3], [2, 20, -1], [3, -100, 0], [4, 30, 5], [100, 40, 2]]
    assert _round(CoordinateMedian(), deltas) == [3, 20, 0]
    assert _round(CoordinateMedian(), deltas[:4]) == [2.5, 15, -0.5]
    # beta = 0.2 of 5: drop one value at each end per coordinate
    assert _round(TrimmedMean(0.2), deltas) == pytest.approx([3, 20, 1 / 3])
    assert _round(TrimmedMean(0.0), deltas) == pytest.approx([22, 0, 0.6])


def test_norm_bound_clips_each_update():
    out = _round(NormBound(WeightedMean(), 1.0), [[3, 4, 0], [0, 0, 0.5]])
    assert out == pytest.approx([0.3, 0.4, 0.25])


def test_validation_rejects_logs_and_counts(caplog):
    v = ValidateUpdates(WeightedMean(), {"w": (3,)})
    v.begin(5, [0, 1, 2, 3, 4])
    with caplog.at_level(logging.WARNING, logger="fed8"):
        v.add(ClientUpdate(0, {"w": torch.tensor([1.0, float("nan"), 0])}, 1, 0.0))
        v.add(ClientUpdate(1, {"w": torch.tensor([1.0, float("inf"), 0])}, 1, 0.0))
        v.add(ClientUpdate(2, {"w": torch.zeros(4)}, 1, 0.0))
        v.add(ClientUpdate(3, {"v": torch.zeros(3)}, 1, 0.0))
        v.add(ClientUpdate(4, {"w": torch.ones(3)}, 1, 0.0))
    m = v.metrics()
    assert m["rejected_updates"] == 4 and v.num_updates == 1
    reasons = {r["client"]: r["reason"] for r in m["rejected"]}
    assert "NaN" in reasons[0] and "Inf" in reasons[1] and "shape (4,)" in reasons[2] and "missing" in reasons[3]
    assert "round 5: rejected the update of client 0" in caplog.text
    assert v.result({"w": torch.zeros(3)})["w"].tolist() == [1, 1, 1]


def test_nan_clients_are_rejected_in_a_run(tmp_path, small):
    cfg = fed8.load_config(None, small + ["attack.fraction=0.25", "attack.kind=non_finite"])
    r = fed8.run(cfg, out=tmp_path / "n", report=False)
    assert [row["rejected_updates"] for row in r.metrics] == [1, 1]
    clean = fed8.run(fed8.load_config(None, small), out=tmp_path / "c", report=False)
    assert r.summary["rejected_updates"] == 2
    assert r.final["eval_accuracy"] > clean.final["eval_accuracy"] - 0.1  # a NaN in the model would give ~0.1


@pytest.mark.slow
def test_trimmed_mean_survives_sign_flipping_where_fedavg_collapses(tmp_path):
    base = ["data.subset=3000", "data.num_clients=10", "data.partition=iid", "train.rounds=8",
            "train.local_epochs=1", "train.fraction=1.0", "model.name=mlp", "quantize.enabled=false",
            "run.threads=1"]
    attack = ["attack.fraction=0.2", "attack.kind=sign_flip", "attack.scale=10"]

    def acc(extra, name):
        return fed8.run(fed8.load_config(None, base + extra), out=tmp_path / name, report=False).final["eval_accuracy"]

    clean = acc([], "clean")
    fedavg = acc(attack, "fedavg")
    trimmed = acc(attack + ["server.robust=trimmed_mean", "server.trim_fraction=0.2"], "trimmed")
    median = acc(attack + ["server.robust=median"], "median")
    assert clean > 0.8
    assert fedavg < 0.5 * clean  # collapses
    assert trimmed > clean - 0.05 and median > clean - 0.1


def test_the_fast_finite_check_is_exact_for_overflowing_sums_and_single_bad_values():
    from fed8.federated.aggregator import WeightedMean
    from fed8.federated.client import ClientUpdate
    from fed8.federated.robust import ValidateUpdates

    v = ValidateUpdates(WeightedMean(), {"w": (4,)})
    big = torch.full((4,), 3e38)  # finite values whose float32 sum overflows to inf: still a valid update
    assert v.problem(ClientUpdate(0, {"w": big}, 1, 0.0)) is None
    for bad in (float("nan"), float("inf"), -float("inf")):
        t = torch.zeros(4)
        t[2] = bad
        assert "contains" in v.problem(ClientUpdate(0, {"w": t}, 1, 0.0))
