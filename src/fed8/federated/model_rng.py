"""Randomness inside a model's forward pass (dropout), drawn reproducibly per client.

fed8 draws every random choice from a generator of (seed, stream, round, client)
(:mod:`fed8._rng`). Dropout cannot take a generator: ``torch.nn.functional.dropout`` draws
from torch's default generator, one per process and shared by all threads. So a model
with layers that draw random numbers while training (:func:`random_layers`: dropout of
any kind, attention with dropout, RReLU) trains each client under that generator seeded
from the client's own training generator (:func:`client_randomness`), restored afterwards;
its clients then train one at a time (parallel client threads would interleave their draws
on the shared generator) and not batched (``vmap`` draws the masks of a chunk at once). With
that, a run with dropout is deterministic, resumes bit for bit, and ``fed8 federation``'s
nodes, which seed the same way, end with the same model. A model of your own whose
``forward`` draws otherwise (``F.dropout``, ``torch.rand``) is found when it is built: one
training-mode forward pass on a copy changes the generator's state
(:func:`fed8.models.custom.build_custom` sets ``fed8_random_forward``).
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Iterator

import torch
from torch import nn

from .._rng import derive_seed

__all__ = ["MODEL_RANDOMNESS", "client_randomness", "random_layers", "randomness_reason"]

MODEL_RANDOMNESS = 10  # stream tag under the client's training seed: (seed, TRAIN, round, client) -> this

_CACHE: "weakref.WeakKeyDictionary[nn.Module, tuple[str, ...]]" = weakref.WeakKeyDictionary()


def random_layers(model: nn.Module) -> tuple[str, ...]:
    """Names of ``model``'s layers that draw random numbers in training (empty for a deterministic model)."""
    found = _CACHE.get(model)
    if found is None:
        found = tuple(name or type(m).__name__ for name, m in model.named_modules() if _draws(m))
        if not found and getattr(model, "fed8_random_forward", False):  # a custom model's probe (models.custom)
            found = ("its forward",)
        _CACHE[model] = found
    return found


def _draws(m: nn.Module) -> bool:
    if isinstance(m, nn.modules.dropout._DropoutNd):
        return m.p > 0
    if isinstance(m, nn.MultiheadAttention):
        return m.dropout > 0
    return isinstance(m, nn.RReLU)


def randomness_reason(model: nn.Module) -> str | None:
    """Why ``model``'s clients must train one at a time, unbatched: its random layers; or None."""
    names = random_layers(model)
    if not names:
        return None
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return (f"the model draws random numbers in training ({', '.join(names[:3])}{more}: dropout draws from torch's "
            "one generator per process, seeded per client)")


@contextlib.contextmanager
def client_randomness(model: nn.Module, generator: torch.Generator, device: torch.device) -> Iterator[None]:
    """torch's default generator seeded from ``generator``'s seed while a client trains ``model`` (if it draws any)."""
    if not random_layers(model):
        yield
        return
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" \
        else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(derive_seed(generator.initial_seed(), MODEL_RANDOMNESS))
        yield
