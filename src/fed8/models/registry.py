"""Build a reference model by name, with input shape and class count taken from the data."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["MODELS", "build_model", "count_parameters"]

MODELS = ("cnn", "resnet20", "mlp", "vit_tiny")


def build_model(name: str, *, in_channels: int, height: int, width: int, num_classes: int,
                norm: str = "batch", hidden: int = 200, seed: int | None = None,
                allow_import: bool = False) -> nn.Module:
    """Instantiate model ``name``; with ``seed``, its initial weights depend on the seed alone.

    ``name`` is a built-in model, or with ``allow_import`` (a config the user runs, never a
    file's metadata) ``package.module:function`` (:mod:`fed8.models.custom`).
    """
    from .cnn import CNN
    from .custom import build_custom, is_import_path
    from .mlp import MLP
    from .resnet import ResNet20
    from .vit import ViTTiny

    if name == "cnn" and (height < 4 or width < 4):
        raise ConfigError(f"model.name = 'cnn' needs images of at least 4x4; got {height}x{width}.")
    makers = {
        "cnn": lambda: CNN(in_channels, height, width, num_classes),
        "resnet20": lambda: ResNet20(in_channels, height, width, num_classes, norm=norm),
        "mlp": lambda: MLP(in_channels, height, width, num_classes, hidden=hidden),
        "vit_tiny": lambda: ViTTiny(in_channels, height, width, num_classes),
    }
    if is_import_path(name):
        if not allow_import:
            raise ConfigError(f"model {name!r} is a custom model (an import path); fed8 imports code only from a "
                              "config you run, not from a file's metadata. Build it in Python and load the weights.")
        makers[name] = lambda: build_custom(name, in_channels=in_channels, height=height, width=width,
                                            num_classes=num_classes)
    if name not in makers:
        raise ConfigError(f"model.name must be one of {', '.join(MODELS)} or 'package.module:function'; "
                          f"got {name!r}.")
    if seed is None:
        return makers[name]()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return makers[name]()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
