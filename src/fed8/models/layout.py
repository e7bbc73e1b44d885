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

import torch
from torch import nn

__all__ = ["fast_layout"]


def fast_layout(model: nn.Module) -> nn.Module:
    """Put ``model``'s 4-D weights in ``torch.channels_last`` if it has 2-D convolutions (idempotent, in place)."""
    flag = getattr(model, "_fed8_layout", None)
    if flag is None:
        flag = any(isinstance(m, nn.Conv2d) for m in model.modules())
        model._fed8_layout = flag
    if flag:
        model.to(memory_format=torch.channels_last)
    return model
