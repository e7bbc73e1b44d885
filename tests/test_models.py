import pytest
import torch

from fed8.errors import ConfigError
from fed8.models import build_model, count_parameters


def test_cnn_has_mcmahan_parameter_count():
    m = build_model("cnn", in_channels=1, height=28, width=28, num_classes=10)
    assert count_parameters(m) == 1_663_370
    assert m(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize("name, shape, classes, kw", [
    ("cnn", (3, 32, 32), 7, {}),
    ("resnet20", (3, 32, 32), 10, {"norm": "batch"}),
    ("resnet20", (1, 28, 28), 5, {"norm": "group"}),
    ("mlp", (1, 28, 28), 10, {"hidden": 64}),
])
def test_models_take_shape_from_data(name, shape, classes, kw):
    m = build_model(name, in_channels=shape[0], height=shape[1], width=shape[2], num_classes=classes, **kw)
    assert m(torch.zeros(2, *shape)).shape == (2, classes)


def test_resnet20_size_and_norms():
    b = build_model("resnet20", in_channels=3, height=32, width=32, num_classes=10, norm="batch")
    g = build_model("resnet20", in_channels=3, height=32, width=32, num_classes=10, norm="group")
    assert 260_000 < count_parameters(b) < 280_000
    assert any(isinstance(x, torch.nn.BatchNorm2d) for x in b.modules())
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in g.modules())
    assert any(isinstance(x, torch.nn.GroupNorm) for x in g.modules())


def test_seeded_init_is_reproducible():
    a = build_model("cnn", in_channels=1, height=28, width=28, num_classes=10, seed=5)
    b = build_model("cnn", in_channels=1, height=28, width=28, num_classes=10, seed=5)
    c = build_model("cnn", in_channels=1, height=28, width=28, num_classes=10, seed=6)
    assert torch.equal(a.conv1.weight, b.conv1.weight)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


def test_unknown_model_and_tiny_input():
    with pytest.raises(ConfigError, match="model.name must be one of"):
        build_model("vit", in_channels=1, height=28, width=28, num_classes=10)
    with pytest.raises(ConfigError, match="at least 4x4"):
        build_model("cnn", in_channels=1, height=2, width=2, num_classes=10)


def test_fast_layout_puts_convolutions_in_channels_last_and_updates_stay_contiguous():
    import torch

    from fed8.federated.client import ClientData, LocalTraining, train_client
    from fed8.models import build_model, fast_layout

    m = build_model("cnn", in_channels=1, height=28, width=28, num_classes=10, seed=0)
    keys = list(m.state_dict())
    state = {k: v.clone() for k, v in m.state_dict().items()}
    assert fast_layout(m) is m and list(m.state_dict()) == keys  # nothing registered on the module
    assert m.conv2.weight.is_contiguous(memory_format=torch.channels_last) and not m.conv2.weight.is_contiguous()
    m.load_state_dict(state)  # copies into the parameters: the layout stays
    assert m.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    data = ClientData(torch.randn(12, 1, 28, 28), torch.randint(0, 10, (12,)), torch.zeros(0, 1, 28, 28),
                      torch.zeros(0, dtype=torch.long))
    fresh = build_model("cnn", in_channels=1, height=28, width=28, num_classes=10, seed=0)
    u = train_client(fresh, state, data, LocalTraining(batch_size=4), generator=torch.Generator().manual_seed(0))
    assert fresh.conv2.weight.is_contiguous(memory_format=torch.channels_last)  # train_client switched it
    assert all(v.is_contiguous() for v in u.delta.values())  # what leaves the client is plain contiguous
    mlp = build_model("mlp", in_channels=1, height=28, width=28, num_classes=10, seed=0)
    assert all(p.is_contiguous() for p in fast_layout(mlp).parameters())


@pytest.mark.parametrize("shape, classes", [((1, 28, 28), 10), ((3, 32, 32), 7)])
def test_vit_tiny_shapes_width_and_no_batchnorm(shape, classes):
    m = build_model("vit_tiny", in_channels=shape[0], height=shape[1], width=shape[2], num_classes=classes, seed=0)
    assert m(torch.zeros(2, *shape)).shape == (2, classes)
    assert m.pos.shape == (1, (shape[1] // 4) * (shape[2] // 4), 192)  # 49 or 64 tokens of width 192
    assert not any(isinstance(x, torch.nn.modules.batchnorm._BatchNorm) for x in m.modules())
    with pytest.raises(ConfigError, match="divisible by 4"):
        build_model("vit_tiny", in_channels=1, height=30, width=30, num_classes=10)


@pytest.mark.slow
def test_vit_tiny_trains_federatedly(tmp_path):
    """Two FedAvg rounds of 4 clients (10 SGD steps each): the train loss gets below the chance level ln(10).

    (ViTs learn slowly with SGD: centrally, 100 steps of batch 32 reach a loss of ~1.97 here.)
    """
    import math

    import fed8

    cfg = fed8.load_config(None, ["model.name=vit_tiny", "data.num_clients=4", "data.subset=800", "train.rounds=2",
                                  "train.fraction=1.0", "train.local_epochs=1", "train.batch_size=16", "train.lr=0.01",
                                  "run.threads=2", "quantize.enabled=false", "eval.every=0"])
    res = fed8.run(cfg, out=tmp_path / "vit", report=False)
    losses = [r["train_loss"] for r in res.metrics]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < math.log(10)
    assert 0.0 <= res.final["eval_accuracy"] <= 1.0


def test_vit_tiny_exports_to_onnx_with_parity(tmp_path):
    import numpy as np

    from fed8.deploy.export import export_onnx
    from fed8.deploy.runtime import run_logits, session

    m = build_model("vit_tiny", in_channels=1, height=28, width=28, num_classes=10, seed=0).eval()
    path = export_onnx(m, (1, 28, 28), tmp_path / "vit.onnx", metadata={})
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        ref = m(x).numpy()
    assert np.abs(run_logits(session(path), x.numpy()) - ref).max() < 1e-4
