"""train.precision = bfloat16: mixed precision in the clients' forward and backward passes, float32 everywhere else."""

import logging

import pytest
import torch

import fed8
from fed8.errors import ConfigError, ParameterError
from fed8.federated.batched import train_clients_batched
from fed8.federated.client import ClientData, LocalTraining, train_client
from fed8.federated.cohort import train_cohort
from fed8.models import build_model


def _clients(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [ClientData(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g),
                       torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long)) for n in sizes]


def _rel(a, b):
    num = sum(float((a[k] - b[k]).norm() ** 2) for k in a) ** 0.5
    return num / sum(float(b[k].norm() ** 2) for k in b) ** 0.5


def _model(name="cnn"):
    return build_model(name, in_channels=1, height=28, width=28, num_classes=10, seed=0, hidden=32)


def test_bfloat16_computes_the_convolutions_in_bfloat16_and_returns_a_float32_update():
    model = _model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    model.conv2.register_forward_hook(lambda m, i, o: seen.append((i[0].dtype, o.dtype)))
    data = _clients([40])[0]
    cfg = LocalTraining(epochs=1, batch_size=10, lr=0.05, momentum=0.9)
    full = train_client(model, state, data, cfg, generator=torch.Generator().manual_seed(1))
    assert set(seen) == {(torch.float32, torch.float32)}
    seen.clear()
    half = train_client(model, state, data, LocalTraining(**{**cfg.__dict__, "precision": "bfloat16"}),
                        generator=torch.Generator().manual_seed(1))
    assert set(seen) == {(torch.bfloat16, torch.bfloat16)}
    assert {v.dtype for v in half.delta.values()} == {torch.float32}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert 1e-4 < _rel(half.delta, full.delta) < 0.1  # bfloat16's rounding, not another computation
    assert half.train_loss == pytest.approx(full.train_loss, rel=0.02)


def test_a_one_step_client_computes_in_bfloat16_too():
    model = _model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    kept = {k: v.clone() for k, v in state.items()}
    seen = []
    model.conv2.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    data = _clients([8])[0]  # one step at batch 10
    cfg = LocalTraining(epochs=1, batch_size=10, lr=0.05, momentum=0.9, weight_decay=1e-3)
    full = train_client(model, state, data, cfg, generator=torch.Generator().manual_seed(1))
    half = train_client(model, state, data, LocalTraining(**{**cfg.__dict__, "precision": "bfloat16"}),
                        generator=torch.Generator().manual_seed(1))
    assert seen == [torch.float32, torch.bfloat16]
    assert {v.dtype for v in half.delta.values()} == {torch.float32}
    assert 1e-4 < _rel(half.delta, full.delta) < 0.1
    assert all(torch.equal(state[k], kept[k]) for k in state)  # the global weights were only read


def test_batched_and_one_pass_clients_follow_the_precision():
    """The vmap path and the one-pass path compute in bfloat16 too, and land near one-by-one bfloat16 training
    (bfloat16 keeps 8 bits of mantissa: on these random images the updates of two summation orders differ by up to
    ~14%, as bfloat16 and float32 do)."""
    cfg = LocalTraining(epochs=2, batch_size=8, lr=0.05, momentum=0.9, precision="bfloat16")
    model, data = _model("mlp"), _clients([12, 20, 7])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    first.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    gens = lambda: [torch.Generator().manual_seed(10 + k) for k in range(3)]  # noqa: E731
    one = [train_client(model, state, d, cfg, generator=g) for d, g in zip(data, gens())]
    seen.clear()
    many = train_clients_batched(model, state, data, cfg, generators=gens(), clients=[0, 1, 2])
    assert seen and set(seen) == {torch.bfloat16}
    for a, b in zip(one, many):
        assert _rel(b.delta, a.delta) < 0.25 and {v.dtype for v in b.delta.values()} == {torch.float32}
    step = LocalTraining(epochs=1, batch_size=64, lr=0.05, precision="bfloat16")
    each = [train_client(model, state, d, step, generator=torch.Generator().manual_seed(0)) for d in data]
    seen.clear()
    cohort = train_cohort(model, state, data, step, weight=float, clients=[0, 1, 2])
    assert seen and set(seen) == {torch.bfloat16}
    total = sum(d.num_train for d in data)
    mean = {k: sum(u.delta[k] * (d.num_train / total) for u, d in zip(each, data)) for k in each[0].delta}
    assert _rel(cohort.mean, mean) < 0.25


@pytest.mark.slow
def test_a_bfloat16_run_learns_like_float32_and_repeats_bit_for_bit(tmp_path):
    sets = ["data.subset=600", "data.num_clients=4", "train.rounds=3", "train.local_epochs=1", "train.fraction=1.0",
            "run.threads=1", "quantize.enabled=false"]
    full = fed8.run(fed8.load_config(None, sets), out=tmp_path / "f32", report=False)
    half = fed8.run(fed8.load_config(None, sets + ["train.precision=bfloat16"]), out=tmp_path / "bf16", report=False)
    again = fed8.run(fed8.load_config(None, sets + ["train.precision=bfloat16"]), out=tmp_path / "again", report=False)
    assert (half.run_dir / "model.safetensors").read_bytes() == (again.run_dir / "model.safetensors").read_bytes()
    assert (half.run_dir / "model.safetensors").read_bytes() != (full.run_dir / "model.safetensors").read_bytes()
    assert half.final["eval_accuracy"] > 0.4  # it learns (chance: 0.1; float32 reached 0.483 here)
    assert abs(half.final["eval_accuracy"] - full.final["eval_accuracy"]) < 0.03


def test_precision_is_validated_and_emulated_bfloat16_is_warned_about(monkeypatch, caplog):
    with pytest.raises(ConfigError, match="precision"):
        fed8.load_config(None, ["train.precision=float16"])
    with pytest.raises(ParameterError, match="precision.*float16"):
        LocalTraining(precision="float16")
    from fed8 import _device
    from fed8.stages.federation import prepare

    monkeypatch.setattr(_device, "native_bfloat16", lambda device: False)
    sets = ["data.subset=100", "data.num_clients=2", "train.rounds=1", "run.threads=1", "quantize.enabled=false"]
    with caplog.at_level(logging.WARNING, logger="fed8"):
        prepare(fed8.load_config(None, sets + ["train.precision=bfloat16"]))
    assert "no native bfloat16 kernels" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fed8"):
        prepare(fed8.load_config(None, sets))
    assert "bfloat16" not in caplog.text
