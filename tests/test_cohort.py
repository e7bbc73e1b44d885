"""One-step clients in one pass (FedSGD's identity) against the clients one by one."""

import logging

import pytest
import torch

import fed8
from fed8.federated.aggregator import WeightedMean
from fed8.federated.client import ClientData, LocalTraining, train_client
from fed8.federated.cohort import cohort_blocker, train_cohort
from fed8.models import build_model

SIZES = [8, 1, 5, 0, 8, 3]  # ragged, one client without samples


def _clients(sizes, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [ClientData(torch.randn(n, 1, 28, 28, generator=g).to(dtype), torch.randint(0, 10, (n,), generator=g),
                       torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long)) for n in sizes]


def _sequential_mean(model, state, data, local, weight):
    """``sum_k w_k delta_k / sum_k w_k`` of the clients trained one by one, in their own dtype."""
    ups = [train_client(model, state, d, local, generator=torch.Generator().manual_seed(i), client=i)
           for i, d in enumerate(data)]
    total = sum(weight(u.num_samples) for u in ups)
    return {k: sum(weight(u.num_samples) * u.delta[k] for u in ups) / total for k in ups[0].delta}, ups


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", ["cnn", "mlp", "resnet20"])
@pytest.mark.parametrize("local, weight", [
    (LocalTraining(epochs=1, batch_size=8, lr=0.05), float),
    (LocalTraining(epochs=1, batch_size=10, lr=0.05, momentum=0.9, weight_decay=1e-2, prox_mu=0.1),
     lambda n: 1.0),
], ids=["sgd-samples", "momentum-wd-prox-uniform"])
def test_one_pass_equals_the_weighted_mean_of_the_clients_one_by_one(name, local, weight, dtype):
    model = build_model(name, in_channels=1, height=28, width=28, num_classes=10, seed=0, hidden=32,
                        norm="group").to(dtype)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    data = _clients(SIZES, dtype=dtype)
    assert cohort_blocker(model, data, local) is None
    want, ups = _sequential_mean(model, state, data, local, weight)
    got = train_cohort(model, state, data, local, weight=weight, clients=list(range(len(data))))
    assert got.weight == pytest.approx(sum(weight(n) for n in SIZES)) and got.num_samples == tuple(SIZES)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    scale = max(float(v.abs().max()) for v in want.values())
    assert scale > 0 and want.keys() == got.mean.keys()
    for k in want:
        assert float((want[k] - got.mean[k]).abs().max()) <= tol * scale, k
    for u, loss in zip(ups, got.train_losses):
        assert loss == pytest.approx(u.train_loss, rel=1e-5, abs=1e-9)


def test_what_cannot_be_one_pass_is_refused_with_the_reason():
    cnn = build_model("cnn", in_channels=1, height=28, width=28, num_classes=10, seed=0)
    one = LocalTraining(epochs=1, batch_size=8)
    assert "2 local epochs" in cohort_blocker(cnn, _clients([4]), LocalTraining(epochs=2, batch_size=8))
    assert "more than one minibatch" in cohort_blocker(cnn, _clients([9, 2]), one)
    bn = build_model("resnet20", in_channels=1, height=28, width=28, num_classes=10, seed=0, norm="batch")
    assert "BatchNorm" in cohort_blocker(bn, _clients([4]), one)
    assert "dropout" in cohort_blocker(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5),
                                                           torch.nn.Linear(784, 10)), _clients([4]), one)


ONE_STEP = ["data.subset=400", "data.num_clients=50", "data.partition=iid", "train.rounds=3", "train.local_epochs=1",
            "train.fraction=0.5", "train.batch_size=10", "run.threads=1", "quantize.enabled=false", "eval.every=0"]


def _model(result):
    from fed8._io import load_tensors

    return load_tensors(result.run_dir / "model.safetensors")


def test_a_one_step_run_takes_one_pass_per_round_and_matches_sequential(tmp_path, monkeypatch, caplog):
    seq = fed8.run(fed8.load_config(None, ONE_STEP), out=tmp_path / "seq", report=False)
    from fed8.federated import batched, simulation

    def no(*a, **k):
        raise AssertionError("a client trained on its own")

    monkeypatch.setattr(simulation, "train_client", no)
    monkeypatch.setattr(batched, "train_clients_batched", no)
    with caplog.at_level(logging.INFO, logger="fed8"):
        one = fed8.run(fed8.load_config(None, ONE_STEP + ["run.client_batching=auto"]), out=tmp_path / "one",
                       report=False)
    assert "train as one pass" in caplog.text
    a, b = _model(seq), _model(one)
    w0 = _w0()
    moved = sum(float((a[k] - w0[k]).norm() ** 2) for k in a) ** 0.5
    assert moved > 0 and sum(float((a[k] - b[k]).norm() ** 2) for k in a) ** 0.5 <= 1e-5 * moved
    for r, s in zip(seq.metrics, one.metrics):  # the same bytes and counts, losses to float rounding
        assert (r["num_clients"], r["uplink_bytes"], r["rejected_updates"]) == \
            (s["num_clients"], s["uplink_bytes"], s["rejected_updates"])
        assert s["train_loss"] == pytest.approx(r["train_loss"], rel=1e-5)
    cfg = fed8.load_config(None, ONE_STEP + ["run.client_batching=auto"])
    again = fed8.run(cfg, out=tmp_path / "again", report=False)
    assert (again.run_dir / "model.safetensors").read_bytes() == (one.run_dir / "model.safetensors").read_bytes()
    fed8.run(cfg.replace(["train.rounds=2"]), out=tmp_path / "cut", report=False)  # stopped after round 2
    resumed = fed8.run(resume=tmp_path / "cut", overrides=["train.rounds=3"], report=False)
    assert (resumed.run_dir / "model.safetensors").read_bytes() == (one.run_dir / "model.safetensors").read_bytes()


def _w0():
    from fed8.stages.federation import load_federation

    return load_federation(fed8.load_config(None, ONE_STEP)).model.state_dict()


def test_a_non_finite_pass_falls_back_so_only_the_bad_client_is_rejected(tmp_path):
    from fed8.federated.robust import ValidateUpdates
    from fed8.federated.round import RoundLoop
    from fed8.federated.simulation import InProcessTransport
    from fed8.federated.optimizer import make_optimizer

    model = build_model("mlp", in_channels=1, height=28, width=28, num_classes=10, seed=0, hidden=16)
    data = _clients([4, 4, 4])
    bad = data[1]
    data[1] = ClientData(torch.full_like(bad.x_train, float("nan")), bad.y_train, bad.x_test, bad.y_test)
    local = LocalTraining(epochs=1, batch_size=8)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    loop = RoundLoop(aggregator=ValidateUpdates(WeightedMean(), shapes), optimizer=make_optimizer("fedavg", lr=1.0),
                     transport=InProcessTransport(model, data, local, seed=0, client_batch_size=0),
                     num_clients=3, fraction=1.0, rounds=1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    new, rec = loop.run_round(1, state)
    assert rec.rejected_updates == 1 and rec.aborted is None
    assert all(bool(torch.isfinite(v).all()) for v in new.values())
    assert any(not torch.equal(new[k], state[k]) for k in state)


def test_aggregators_that_need_every_update_take_no_cohort():
    from fed8.federated.robust import CoordinateMedian, NormBound, ValidateUpdates

    assert WeightedMean().cohort_weight() is not None
    assert ValidateUpdates(WeightedMean(), {}).cohort_weight() is not None
    assert NormBound(WeightedMean(), 1.0).cohort_weight() is None
    assert ValidateUpdates(CoordinateMedian(), {}).cohort_weight() is None
