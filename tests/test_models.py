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
