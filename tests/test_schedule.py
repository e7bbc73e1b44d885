"""The clients' learning rate round by round (train.lr_schedule) in every training path."""

import math

import pytest

import fed8
from fed8._io import load_tensors
from fed8.errors import ParameterError
from fed8.federated.client import LocalTraining
from fed8.federated.schedule import client_lr

from conftest import interrupted_run


def test_the_rates_follow_the_formulas():
    assert [client_lr(0.1, "constant", r, rounds=5, decay=0.5) for r in (1, 5)] == [0.1, 0.1]
    assert [client_lr(0.1, "exponential", r, rounds=5, decay=0.5) for r in (1, 2, 4)] == [0.1, 0.05, 0.0125]
    cos = [client_lr(0.1, "cosine", r, rounds=4, decay=1.0) for r in (1, 2, 3, 4)]
    assert cos[0] == 0.1 and cos[2] == pytest.approx(0.05) and cos[-1] == pytest.approx(0.05 * (1 + math.cos(0.75 * math.pi)))
    assert all(a > b > 0 for a, b in zip(cos, cos[1:]))
    local = LocalTraining(lr=0.1, lr_schedule="exponential", lr_decay=0.5)
    assert local.at_round(3).lr == 0.025 and local.at_round(3).at_round(5).lr == 0.025  # a round's values are final
    assert LocalTraining(lr=0.1).at_round(7).lr == 0.1
    with pytest.raises(ParameterError, match="lr_schedule must be one of"):
        LocalTraining(lr_schedule="step")


def _bytes(run_dir):
    return (run_dir / "model.safetensors").read_bytes()


def test_the_schedule_sets_each_round_s_rate_and_runs_repeat_and_resume(tmp_path, small):
    sets = small + ["model.name=mlp", "train.rounds=3", "train.local_epochs=2"]
    const = fed8.run(fed8.load_config(None, sets), out=tmp_path / "const", report=False)
    expo = fed8.load_config(None, sets + ["train.lr_schedule=exponential", "train.lr_decay=0.5"])
    a = fed8.run(expo, out=tmp_path / "a", report=False)
    assert a.metrics[0]["train_loss"] == const.metrics[0]["train_loss"]  # round 1 trains at lr in both
    assert a.metrics[1]["train_loss"] != const.metrics[1]["train_loss"]
    interrupted_run(expo, tmp_path / "cut", 1)
    fed8.run(resume=tmp_path / "cut", report=False)
    assert _bytes(tmp_path / "cut") == _bytes(a.run_dir)


def test_each_client_trains_at_its_round_s_rate(tmp_path, small, monkeypatch):
    import fed8.federated.simulation as simulation

    seen, train = [], simulation.train_client

    def spy(model, state, data, local, **kw):
        seen.append(local.lr)
        return train(model, state, data, local, **kw)

    monkeypatch.setattr(simulation, "train_client", spy)
    fed8.run(fed8.load_config(None, small + ["model.name=mlp", "train.rounds=3", "train.lr=0.08",
                                             "train.lr_schedule=exponential", "train.lr_decay=0.5"]),
             out=tmp_path / "r", report=False)
    assert seen == [0.08] * 4 + [0.04] * 4 + [0.02] * 4  # 4 clients a round


@pytest.mark.parametrize("batching", ["on", "auto"])
def test_batched_and_one_pass_clients_train_at_the_round_s_rate(tmp_path, small, batching):
    """``on``: vmap chunks; ``auto`` with one-step clients: the one-pass cohort; each against one by one."""
    sets = small + ["model.name=mlp", "train.rounds=3", "train.lr_schedule=cosine", "train.lr=0.2"]
    if batching == "auto":
        sets += ["train.batch_size=512"]  # every client takes one step
    off = fed8.run(fed8.load_config(None, sets), out=tmp_path / "off", report=False)
    on = fed8.run(fed8.load_config(None, sets + [f"run.client_batching={batching}"]), out=tmp_path / "on",
                  report=False)
    const = fed8.run(fed8.load_config(None, sets + ["train.lr_schedule=constant"]), out=tmp_path / "c", report=False)
    w, v, c = (load_tensors(r.run_dir / "model.safetensors") for r in (off, on, const))
    diff = max(float((w[k] - v[k]).abs().max()) for k in w)
    moved = max(float((w[k] - c[k]).abs().max()) for k in w)
    assert diff <= 1e-5 * max(float(t.abs().max()) for t in w.values()) and moved > 1000 * max(diff, 1e-9)

