"""Your own model by import path: model.name = "package.module:function"."""

import sys

import pytest
import torch

import fed8
from fed8.errors import ConfigError
from fed8.models import build_model

from conftest import interrupted_run

NET = '''
import torch
from torch import nn

BUILT = []


def build(in_channels, height, width, num_classes):
    BUILT.append((in_channels, height, width, num_classes))
    return nn.Sequential(nn.Conv2d(in_channels, 4, 5, stride=2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * ((height - 5) // 2 + 1) * ((width - 5) // 2 + 1), num_classes))


def wrong_shape(in_channels, height, width, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * height * width, num_classes + 1))


def no_keywords():
    return nn.Linear(1, 1)


def not_a_module(**kw):
    return 3


def double(**kw):
    return build(**kw).double()


NOT_CALLABLE = 5


class Unexportable(nn.Module):
    def __init__(self, c, h, w, k):
        super().__init__()
        self.fc = nn.Linear(c * h * w, k)

    def forward(self, x):
        y = self.fc(x.flatten(1))
        return y + 0 * torch.linalg.svdvals(y.reshape(-1, 2, y.shape[1] // 2)).sum()  # no ONNX op for svdvals


def unexportable(in_channels, height, width, num_classes):
    return Unexportable(in_channels, height, width, num_classes)
'''


@pytest.fixture
def net(user_module):
    """A module of the user's in the current folder (not on sys.path)."""
    return user_module(NET)


def _small(small, model):
    return small + [f"model.name={model}", "train.rounds=2"]


def test_a_model_from_the_current_folder_trains_and_deploys(tmp_path, small, net):
    cfg = fed8.load_config(None, _small(small, f"{net}:build") + ["quantize.enabled=true", "quantize.formats=int8"])
    result = fed8.run(cfg, report=False)
    assert sys.modules[net].BUILT[0] == (1, 28, 28, 10)  # shape and classes from the data
    assert ":" not in result.run_dir.name and f"{net}.build" in result.run_dir.name
    assert result.summary["model"] == f"{net}:build"
    assert result.summary["parameters"] == 4 * 25 + 4 + 4 * 12 * 12 * 10 + 10
    first, last = result.metrics[0], result.metrics[-1]
    assert last["eval_loss"] < first["eval_loss"]  # it learned
    assert (result.run_dir / "deploy" / "int8.onnx").exists()


def test_the_same_seed_builds_the_same_weights_and_resume_is_bit_identical(tmp_path, small, net):
    make = dict(in_channels=1, height=28, width=28, num_classes=10, allow_import=True)
    a, b, c = (build_model(f"{net}:build", seed=s, **make).state_dict() for s in (7, 7, 8))
    assert all(torch.equal(a[k], b[k]) for k in a) and not all(torch.equal(a[k], c[k]) for k in a)

    cfg = fed8.load_config(None, _small(small, f"{net}:build") + ["train.rounds=3"])
    fed8.run(cfg, out=tmp_path / "full", report=False)
    interrupted_run(cfg, tmp_path / "cut", 1)
    fed8.run(resume=tmp_path / "cut", report=False)
    assert (tmp_path / "cut/model.safetensors").read_bytes() == (tmp_path / "full/model.safetensors").read_bytes()


@pytest.mark.parametrize(("attr", "match"), [
    ("wrong_shape", r"logits of shape \[B, 10\].*got \(2, 11\)"),
    ("no_keywords", "must accept those four keywords"),
    ("not_a_module", "returned a int; it must return a torch.nn.Module"),
    ("double", "float32 parameters"),
    ("NOT_CALLABLE", "is a int, not a function"),
    ("missing", "has no attribute 'missing'"),
])
def test_a_factory_that_does_not_give_a_model_is_refused_with_its_fix(net, attr, match):
    with pytest.raises(ConfigError, match=match):
        build_model(f"{net}:{attr}", in_channels=1, height=28, width=28, num_classes=10, allow_import=True)


def test_an_unimportable_module_and_a_malformed_name_are_config_errors(small, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="cannot import module 'no_such_net_x'.*PYTHONPATH"):
        fed8.run(fed8.load_config(None, _small(small, "no_such_net_x:build")), report=False)
    for bad in ("a:b:c", "1net:build", "net:", "resnet"):
        with pytest.raises(ConfigError, match="model.name"):
            fed8.load_config(None, [f"model.name={bad}"])
    assert not [p for p in tmp_path.rglob("*") if p.name != "runs"]  # no run directory was left behind


def test_a_files_metadata_never_imports_code(net, tmp_path):
    """A model file names its model; fed8 rebuilds only built-in ones from it and imports nothing."""
    from fed8.deploy.fp8_linear import load_fp8_model, save_fp8_model

    with pytest.raises(ConfigError, match="imports code only from a config you run"):
        build_model(f"{net}:build", in_channels=1, height=28, width=28, num_classes=10)
    assert net not in sys.modules
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    save_fp8_model(model, tmp_path / "m.safetensors",
                   metadata={"model": f"{net}:build", "input_shape": [1, 28, 28], "classes": list(range(10))})
    with pytest.raises(ConfigError, match="custom model"):
        load_fp8_model(tmp_path / "m.safetensors")
    assert net not in sys.modules


def test_the_config_documents_the_import_path_form():
    from fed8.config import to_toml

    assert "package.module:function" in to_toml(None, comments=True)


def test_the_config_and_the_registry_name_the_same_built_in_models():
    from fed8._config_sections import _BUILTIN_MODELS
    from fed8.models import MODELS

    assert set(_BUILTIN_MODELS) == set(MODELS)
    for name in MODELS:
        fed8.load_config(None, [f"model.name={name}"])


def test_a_function_of_the_calling_script_trains_and_its_resume_elsewhere_says_where(tmp_path, small, monkeypatch):
    import __main__

    from torch import nn

    def build(in_channels, height, width, num_classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * height * width, num_classes))

    monkeypatch.setattr(__main__, "fed8_test_build", build, raising=False)
    cfg = fed8.load_config(None, _small(small, "__main__:fed8_test_build"))
    result = fed8.run(cfg, out=tmp_path / "r", report=False)
    assert result.summary["parameters"] == 28 * 28 * 10 + 10
    monkeypatch.delattr(__main__, "fed8_test_build")  # another process: the function is not there
    with pytest.raises(ConfigError, match="exists only while it runs: resume from there"):
        fed8.run(resume=tmp_path / "r", overrides=["train.rounds=3"], report=False)


def test_a_model_onnx_cannot_export_keeps_its_training_and_says_how_to_go_on(tmp_path, small, net):
    from fed8.errors import DeployError

    cfg = fed8.load_config(None, _small(small, f"{net}:unexportable") + ["quantize.enabled=true"])
    with pytest.raises(DeployError, match=r"cannot be exported to ONNX.*svdvals.*quantize.enabled = false.*"
                                          r"kept in .*model.safetensors.*fed8 quantize"):
        fed8.run(cfg, out=tmp_path / "r", report=False)
    assert (tmp_path / "r" / "model.safetensors").exists()
    assert not list((tmp_path / "r").rglob("*.onnx"))


def test_the_readmes_example_model_runs_as_written(tmp_path, small, user_module):
    """The README's "Your own model" code block, as a user would save it, trains with the README's model.name."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("**Your own model.**"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    name = re.search(r"fed8 run --set model.name=(\w+):(\w+)", section)
    module = user_module(code)
    result = fed8.run(fed8.load_config(None, small + [f"model.name={module}:{name.group(2)}", "train.rounds=1"]),
                      out=tmp_path / "r", report=False)
    assert name.group(1) == "mynets" and result.final["eval_accuracy"] > 0.3  # it learns (chance: 0.1)


def test_a_module_in_the_current_folder_can_import_its_neighbours_when_called(tmp_path, small, user_module):
    import sys

    helper = user_module("from torch import nn\n\ndef head(n, k):\n    return nn.Linear(n, k)\n")
    net = user_module(
        "from torch import nn\n\n"
        "def build(in_channels, height, width, num_classes):\n"
        f"    import {helper}  # a neighbour, imported only when the model is built\n"
        f"    return nn.Sequential(nn.Flatten(), {helper}.head(in_channels * height * width, num_classes))\n")
    assert str(tmp_path) not in sys.path
    result = fed8.run(fed8.load_config(None, _small(small, f"{net}:build")), out=tmp_path / "r", report=False)
    assert result.summary["parameters"] == 28 * 28 * 10 + 10 and str(tmp_path) in sys.path


TIED = '''
import torch
from torch import nn


class Tied(nn.Module):
    def __init__(self, d, num_classes):
        super().__init__()
        self.enc, self.a, self.b, self.out = nn.Linear(d, 16), nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, num_classes)
        self.b.weight = self.a.weight  # one tensor, two names in the state dict

    def forward(self, x):
        h = torch.relu(self.enc(x.flatten(1)))
        return self.out(torch.relu(self.b(torch.relu(self.a(h)))))


def tied(in_channels, height, width, num_classes):
    return Tied(in_channels * height * width, num_classes)
'''


@pytest.mark.parametrize("sets", [["server.strategy=fedadam"], ["server.strategy=fedavgm", "server.fednova=true"]])
def test_tied_parameters_stay_one_tensor_under_every_server_optimizer(tmp_path, user_module, caplog, sets):
    import logging

    from fed8._io import load_tensors

    name = user_module(TIED)
    cfg = fed8.load_config(None, [f"model.name={name}:tied", "data.subset=300", "data.num_clients=3", "train.rounds=2",
                                  "quantize.enabled=false", "run.threads=1", *sets])
    with caplog.at_level(logging.WARNING, logger="fed8"):
        fed8.run(cfg, out=tmp_path / "r", report=False)
    assert "the model ties parameters (b.weight is a.weight)" in caplog.text
    w = load_tensors(tmp_path / "r/model.safetensors")
    assert torch.equal(w["a.weight"], w["b.weight"])  # the optimizer's step, not b's plain mean, in both copies
