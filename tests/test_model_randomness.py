"""Models that draw random numbers in training (dropout) stay reproducible; models vmap cannot trace fall back."""

import logging

import pytest
import torch

import fed8
from fed8.federated.model_rng import random_layers

from conftest import interrupted_run

NETS = '''
import torch
from torch import nn


class Dropper(nn.Module):
    def __init__(self, c, h, w, k):
        super().__init__()
        self.fc1, self.drop, self.fc2 = nn.Linear(c * h * w, 32), nn.Dropout(0.5), nn.Linear(32, k)

    def forward(self, x):
        return self.fc2(self.drop(torch.relu(self.fc1(x.flatten(1)))))


class Branchy(nn.Module):
    def __init__(self, c, h, w, k):
        super().__init__()
        self.fc = nn.Linear(c * h * w, k)

    def forward(self, x):
        y = self.fc(x.flatten(1))
        return y * 0 if y.abs().sum().item() > 1e12 else y   # .item(): vmap cannot trace it


class Noisy(nn.Module):  # functional dropout and noise: no layer says so, the build-time probe finds it
    def __init__(self, c, h, w, k):
        super().__init__()
        self.fc = nn.Linear(c * h * w, k)

    def forward(self, x):
        x = x.flatten(1)
        if self.training:
            x = torch.nn.functional.dropout(x + 0.1 * torch.randn_like(x), 0.2)
        return self.fc(x)


def noisy(in_channels, height, width, num_classes):
    return Noisy(in_channels, height, width, num_classes)


def dropper(in_channels, height, width, num_classes):
    return Dropper(in_channels, height, width, num_classes)


def branchy(in_channels, height, width, num_classes):
    return Branchy(in_channels, height, width, num_classes)
'''


@pytest.fixture
def nets(user_module):
    return user_module(NETS)


def _bytes(path):
    return (path / "model.safetensors").read_bytes()


def test_random_layers_are_found():
    from torch import nn

    assert random_layers(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1), nn.ReLU())) == ("1",)
    assert random_layers(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.0))) == ()
    assert random_layers(nn.TransformerEncoderLayer(8, 2, dropout=0.1, batch_first=True))
    assert random_layers(nn.MultiheadAttention(8, 2, dropout=0.1)) == ("MultiheadAttention",)
    from fed8.models import MODELS, build_model

    for name in MODELS:  # the built-in models draw nothing: their bytes do not change
        assert random_layers(build_model(name, in_channels=1, height=28, width=28, num_classes=10)) == ()


def test_a_forward_that_draws_is_found_by_the_build_probe(nets):
    from fed8.models import build_model

    make = dict(in_channels=1, height=28, width=28, num_classes=10, allow_import=True, seed=0)
    assert random_layers(build_model(f"{nets}:noisy", **make)) == ("its forward",)
    assert random_layers(build_model(f"{nets}:branchy", **make)) == ()
    import sys

    state = torch.get_rng_state()
    build_model(f"{nets}:noisy", **{**make, "seed": None})  # unseeded: draws its init from the global generator
    after_build = torch.get_rng_state()
    torch.set_rng_state(state)
    sys.modules[nets].noisy(1, 28, 28, 10)
    assert torch.equal(torch.get_rng_state(), after_build)  # the same draws as the init alone: the probe's are undone


@pytest.mark.parametrize("model", ["dropper", "noisy"])
def test_dropout_runs_repeat_and_resume_bit_for_bit_on_parallel_settings(tmp_path, small, nets, caplog, model):
    sets = small + [f"model.name={nets}:{model}", "train.rounds=3", "run.threads=2", "run.parallel_clients=2"]
    cfg = fed8.load_config(None, sets)
    torch.manual_seed(123)  # the global generator's state before a run must not matter
    with caplog.at_level(logging.INFO, logger="fed8"):
        a = fed8.run(cfg, out=tmp_path / "a", report=False)
    said = [r for r in caplog.records if "clients train one at a time" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "WARNING"  # run.parallel_clients = 2 was asked for
    assert "on 2 thread(s): the model draws random numbers" in said[0].getMessage()
    torch.manual_seed(456)
    state = torch.get_rng_state()
    fed8.run(cfg, out=tmp_path / "b", report=False)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator is left as it was
    assert _bytes(tmp_path / "a") == _bytes(tmp_path / "b")
    interrupted_run(cfg, tmp_path / "cut", 1)
    fed8.run(resume=tmp_path / "cut", report=False)
    assert _bytes(tmp_path / "cut") == _bytes(tmp_path / "a")
    fed8.run(cfg.replace(["run.seed=1"]), out=tmp_path / "c", report=False)
    assert _bytes(tmp_path / "c") != _bytes(tmp_path / "a")
    assert a.final["eval_accuracy"] > 0.2  # it trains


@pytest.mark.parametrize("batching", ["auto", "on"])
def test_models_that_cannot_be_batched_train_one_by_one_with_the_reason_said(tmp_path, small, nets, caplog, batching):
    base = small + ["train.rounds=2", "run.parallel_clients=1"]
    for model, why in (("dropper", "the model draws random numbers"), ("branchy", "torch.func could not batch it")):
        sets = base + [f"model.name={nets}:{model}"]
        off = fed8.run(fed8.load_config(None, sets + ["run.client_batching=off"]), out=tmp_path / f"{model}-off",
                       report=False)
        with caplog.at_level(logging.INFO, logger="fed8"):
            batched = fed8.run(fed8.load_config(None, sets + [f"run.client_batching={batching}"]),
                               out=tmp_path / f"{model}-{batching}", report=False)
        said = [r for r in caplog.records if "client batching is off" in r.getMessage()]
        assert len(said) == 1 and f"client batching is off for this model: {why}" in said[0].getMessage()
        assert said[0].levelname == ("WARNING" if batching == "on" else "INFO")  # forced: a warning; auto: a note
        caplog.clear()
        assert _bytes(off.run_dir) == _bytes(batched.run_dir)


def test_one_step_clients_with_dropout_are_not_one_pass(tmp_path, small, nets):
    """S8-like clients (one step each) would take the one-pass path under auto; dropout keeps them per client."""
    sets = small + [f"model.name={nets}:dropper", "train.rounds=2", "train.batch_size=512"]
    off = fed8.run(fed8.load_config(None, sets + ["run.client_batching=off"]), out=tmp_path / "off", report=False)
    auto = fed8.run(fed8.load_config(None, sets + ["run.client_batching=auto"]), out=tmp_path / "auto", report=False)
    assert _bytes(off.run_dir) == _bytes(auto.run_dir)
