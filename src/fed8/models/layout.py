"""Memory layout for speed: convolutional models compute in channels-last (NHWC) on CPU.

oneDNN, PyTorch's CPU convolution library, runs NHWC convolutions without the layout
conversions it makes around NCHW ones. With the ``cnn``'s weights in
``torch.channels_last`` a training step at batch 32 took 24.5 ms instead of 31-39 ms, and
an evaluation batch of 500 144 ms instead of 207 ms (2 threads, x86-64; docs/BENCHMARKS.md
"DEFAULT RUN"). Only the model's convolution weights change layout; its state dict keeps
the same shapes and values, and everything fed8 writes or sends is made contiguous first.
Results differ from NCHW by float rounding only (another summation order), and a given
layout is deterministic.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

__all__ = ["fast_layout"]


_CONV_WEIGHTS: "weakref.WeakKeyDictionary[nn.Module, list[torch.Tensor]]" = weakref.WeakKeyDictionary()


def fast_layout(model: nn.Module) -> nn.Module:
    """Put ``model``'s 4-D weights in ``torch.channels_last`` if it has 2-D convolutions (idempotent, in place)."""
    weights = _CONV_WEIGHTS.get(model)
    if weights is None:
        weights = _CONV_WEIGHTS[model] = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    # Module.to() keeps the Parameter objects (it swaps their data) and load_state_dict copies into them in
    # place, so the layout stays once set: skip the module walk then (~0.5 ms a call on the cnn, per client).
    if not all(w.is_contiguous(memory_format=torch.channels_last) for w in weights):
        model.to(memory_format=torch.channels_last)
    return model
