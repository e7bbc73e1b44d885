"""Your own model: ``model.name = "package.module:function"``.

fed8 imports ``package.module`` (installed, on ``PYTHONPATH``, or in the current directory;
``__main__`` for a function defined in the script or notebook that calls :func:`fed8.run`)
and calls ``function(in_channels=C, height=H, width=W, num_classes=K)``; it must return a
``torch.nn.Module`` that maps a float batch ``[B, C, H, W]`` (pixels normalized as fed8's data
loaders give them) to logits ``[B, K]``. The input shape and the class count come from the
data, as for the built-in models, and the initial weights depend on ``run.seed`` alone (the
call runs under ``torch.manual_seed``). One training-mode forward pass on a copy tells whether
the model draws random numbers (dropout, functional or not): such a model's clients then draw
them seeded per client (:mod:`fed8.federated.model_rng`).

Trust: naming a module runs its code, as Flower's ``pyproject.toml`` components and Hydra's
``_target_`` do. fed8 imports a module only from a config you run (``fed8 run``, ``--resume`` of
a run directory, ``fed8 federation``, ``fed8 quantize RUN_DIR``), never from the metadata of a model file it reads, and a
Flower SuperNode imports one only if its own node config lists it (``models``): the server
cannot make a node import code.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable

from torch import nn

from ..errors import ConfigError

__all__ = ["IMPORT_PATH", "build_custom", "check_import_path", "import_factory", "is_import_path", "slug"]

IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_FORM = "'package.module:function' (e.g. 'mynets.small:build')"


def is_import_path(name: str) -> bool:
    """Whether ``name`` names a factory by import path rather than a built-in model."""
    return ":" in name


def check_import_path(key: str, name: str) -> None:
    """Refuse a ``model.name`` with a colon that is not ``package.module:function``."""
    if is_import_path(name) and not IMPORT_PATH.match(name):
        raise ConfigError(f"{key} = {name!r} is not an import path: use the form {_FORM}, or a built-in model.")


def slug(name: str) -> str:
    """``name`` made safe for a folder name: the function after the module's last part (``small.build``)."""
    if not is_import_path(name):
        return name
    module, attr = name.split(":")
    return f"{module.rsplit('.', 1)[-1]}.{attr}"


def import_factory(name: str) -> Callable[..., nn.Module]:
    """The callable that ``name`` (``package.module:function``) names; the current directory is searched too."""
    check_import_path("model.name", name)
    module_name, attr = name.split(":")
    try:
        module = _import(module_name)
    except ImportError as e:
        raise ConfigError(f"model.name = {name!r}: cannot import module {module_name!r} ({type(e).__name__}: {e}). "
                          "Install it, put it on PYTHONPATH, or run fed8 from the folder that holds it.") from e
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            where = (" A model defined in a script or notebook ('__main__') exists only while it runs: resume from "
                     "there with fed8.run(resume=...), or move the function into a module and name that."
                     if module_name == "__main__" else " Name the function that builds the model.")
            raise ConfigError(f"model.name = {name!r}: module {module_name!r} has no attribute {attr!r}.{where}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"model.name = {name!r}: {attr!r} is a {type(obj).__name__}, not a function or class.")
    return obj


def _import(module_name: str):
    """``module_name``, found as usual or else in the current folder, which then stays on ``sys.path`` (as
    ``python -m`` and uvicorn put it there: the module's own imports of its neighbours work later too)."""
    import os

    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        top = module_name.split(".")[0]
        here = os.getcwd()
        if e.name != top or here in sys.path:
            raise
        sys.path.insert(0, here)
        try:
            return importlib.import_module(module_name)
        except ModuleNotFoundError as again:
            if again.name == top:  # not in the current folder either: leave sys.path as it was
                sys.path.remove(here)
            raise


def build_custom(name: str, *, in_channels: int, height: int, width: int, num_classes: int) -> nn.Module:
    """Call the factory that ``name`` names and check what it returns (a module giving ``[B, num_classes]`` logits)."""
    import torch

    factory = import_factory(name)
    try:
        model = factory(in_channels=in_channels, height=height, width=width, num_classes=num_classes)
    except TypeError as e:
        raise ConfigError(f"model.name = {name!r}: calling it with in_channels, height, width, num_classes failed "
                          f"({e}). Its signature must accept those four keywords.") from e
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.name = {name!r} returned a {type(model).__name__}; it must return a "
                          "torch.nn.Module.")
    params = list(model.parameters())
    if not params or not all(p.dtype == torch.float32 for p in params):
        raise ConfigError(f"model.name = {name!r}: the model must have float32 parameters "
                          f"(got {sorted({str(p.dtype) for p in params}) or 'none'}).")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, in_channels, height, width))
    except Exception as e:  # the user's forward: name the shape it was given
        raise ConfigError(f"model.name = {name!r}: its forward failed on a batch of shape "
                          f"[2, {in_channels}, {height}, {width}] ({type(e).__name__}: {e}). It must accept "
                          "[B, C, H, W] images of the data's size.") from e
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes) or not out.is_floating_point():
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"model.name = {name!r}: its forward must return float logits of shape [B, {num_classes}] "
                          f"(the data's classes); got {got} for B = 2.")
    try:
        draws = _draws_in_training(model, (2, in_channels, height, width))
    except Exception as e:  # the user's forward in training mode
        raise ConfigError(f"model.name = {name!r}: its forward in training mode failed on a batch of shape "
                          f"[2, {in_channels}, {height}, {width}] ({type(e).__name__}: {e}).") from e
    if draws:
        model.fed8_random_forward = True  # fed8.federated.model_rng: seeded per client, one client at a time
    return model


def _draws_in_training(model: nn.Module, shape: tuple[int, ...]) -> bool:
    """Whether a training-mode forward pass draws from torch's default generator (``F.dropout``, ``torch.rand`` in
    ``forward``), found by running one on a copy and comparing the generator's state; the state is restored."""
    import copy

    import torch

    probe = copy.deepcopy(model).train()
    state = torch.get_rng_state()
    try:
        with torch.no_grad():
            probe(torch.zeros(shape))
        return not torch.equal(torch.get_rng_state(), state)
    finally:
        torch.set_rng_state(state)
