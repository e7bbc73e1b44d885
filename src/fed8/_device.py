"""Where tensors live: ``run.device`` resolved to a :class:`torch.device`.

The clients' training and the evaluations run there (the model and every client's images
move once, at the start); everything that leaves a client (its update, after training) and
the whole server side (aggregation, DP noise, secure aggregation, codecs, checkpoints) stay
on the CPU, so the run directory is the same format on any device.
"""

from __future__ import annotations

import torch

from .errors import ConfigError

__all__ = ["native_bfloat16", "resolve_device"]


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively: a CUDA GPU that supports it, or a CPU whose oneDNN has
    bfloat16 kernels (AVX512-BF16 or AMX); elsewhere bfloat16 is emulated, slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without that probe or without oneDNN
        return False


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else the CPU; ``cuda`` without CUDA is a :class:`ConfigError`."""
    if name == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if name == "auto":
        return torch.device("cuda" if available else "cpu")
    if name == "cuda":
        if not available:
            raise ConfigError(
                f"run.device = 'cuda' but this torch build sees no CUDA device (torch {torch.__version__}, "
                f"cuda {torch.version.cuda or 'none'}). Install a CUDA build of torch on a GPU machine, or set "
                "run.device = 'auto' or 'cpu'.")
        return torch.device("cuda")
    raise ConfigError(f"run.device must be auto, cpu or cuda; got {name!r}.")  # pragma: no cover - config validates
