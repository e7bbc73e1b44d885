"""FP8 compute for Linear layers: ``float8_e4m3fn`` weights and activations multiplied by ``torch._scaled_mm``.

``y = (s_x s_w) (q_x q_w^T) + b`` with ``q_w = Q(W / s_w)`` stored in FP8 and the activation
``q_x = Q(x / s_x)`` rounded to FP8 on the fly (Micikevicius et al. 2022, "FP8 Formats for
Deep Learning"; the recipe of torchao's float8 inference). Scales come from
:func:`fed8.formats.choose_qparams` (``amax / 448``):

* ``granularity = "tensor"``: one scale for ``W`` and one for each call's ``x``;
* ``granularity = "row"``: one per output row of ``W`` and one per row (token) of ``x``,
  which ``_scaled_mm`` takes as ``[M, 1]`` and ``[1, N]`` scales (bfloat16 output).

``_scaled_mm`` runs on NVIDIA GPUs with FP8 tensor cores (compute capability >= 8.9: Ada,
Hopper). Elsewhere the same FP8 operands are multiplied in float32 (:func:`fp8_matmul`): a
product of two ``float8_e4m3fn`` values has at most 8 significant bits, so every product is
exact in float32 and only the float32 summation order can differ from ``_scaled_mm``'s.
(PyTorch's own CPU ``_scaled_mm`` is a reference kernel: one 512x3136x512 product took 29 s
on the project's VM against 0.07 s this way.) So the numerics are tested without a GPU; speed
is only meaningful on the GPU (:func:`fp8_compute_available` says whether this machine has
it). Shapes are padded to multiples of 16 (the GPU kernel's requirement) and sliced back.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ParameterError
from ..formats import PerChannel, PerTensor, QParams, choose_qparams, quantize

__all__ = ["Float8Linear", "GRANULARITIES", "TORCH_FP8_FORMAT", "TorchSession", "fp8_compute_available", "fp8_matmul",
           "load_fp8_model", "read_fp8_metadata", "save_fp8_model", "swap_linears_fp8"]

GRANULARITIES = ("tensor", "row")
_FMT = "float8_e4m3fn"


def fp8_compute_available() -> tuple[bool, str]:
    """Whether this machine has FP8 tensor cores (CUDA, compute capability >= 8.9), and why not."""
    if not torch.cuda.is_available():
        return False, "no CUDA device: FP8 compute needs an NVIDIA GPU with compute capability >= 8.9 (Ada, Hopper)"
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) < (8, 9):
        return False, (f"{torch.cuda.get_device_name()} has compute capability {major}.{minor}; FP8 tensor cores "
                       "need >= 8.9 (Ada, Hopper)")
    return True, f"{torch.cuda.get_device_name()} (compute capability {major}.{minor})"


def fp8_matmul(a: torch.Tensor, b: torch.Tensor, *, scale_a: torch.Tensor, scale_b: torch.Tensor,
               out_dtype: torch.dtype) -> torch.Tensor:
    """``(scale_a scale_b) (a @ b)`` of FP8 ``a [M, K]`` and ``b [K, N]``: ``torch._scaled_mm`` on a CUDA device,
    float32 arithmetic elsewhere (exact products, float32 sums; module docstring). Scales are scalars or
    ``[M, 1]`` / ``[1, N]``."""
    if a.device.type == "cuda":
        return torch._scaled_mm(a, b, scale_a=scale_a, scale_b=scale_b, out_dtype=out_dtype)
    return ((a.to(torch.float32) @ b.to(torch.float32)) * scale_a * scale_b).to(out_dtype)


def _pad16(n: int) -> int:
    return -(-n // 16) * 16


def _to_fp8(x: torch.Tensor, qp: QParams, granularity) -> torch.Tensor:
    """FP8 values (torch.float8_e4m3fn) of ``x / scale``: fed8's saturating rounding, viewed as the torch dtype."""
    return quantize(x, qp, _FMT, granularity=granularity).view(torch.float8_e4m3fn)


class Float8Linear(nn.Module):
    """A Linear layer that stores ``float8_e4m3fn`` weights with their scales and multiplies in FP8.

    Build it with :meth:`from_linear`. ``weight_scale`` is ``[1, 1]`` (tensor) or ``[1, N]``
    (row), the layout ``_scaled_mm``'s ``scale_b`` takes for ``W^T``.
    """

    def __init__(self, weight_fp8: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
                 in_features: int, out_features: int, granularity: str) -> None:
        super().__init__()
        if granularity not in GRANULARITIES:
            raise ParameterError(f"granularity must be one of {', '.join(GRANULARITIES)}; got {granularity!r}.")
        self.register_buffer("weight_fp8", weight_fp8)  # [N_pad, K_pad], float8_e4m3fn
        self.register_buffer("weight_scale", weight_scale)  # [1, 1] or [1, N_pad], float32
        self.register_buffer("bias", bias)
        self.in_features, self.out_features, self.granularity = in_features, out_features, granularity

    @classmethod
    def from_linear(cls, linear: nn.Linear, granularity: str = "tensor") -> "Float8Linear":
        w = linear.weight.detach().to(torch.float32)
        n, k = w.shape
        wp = torch.zeros(_pad16(n), _pad16(k), dtype=torch.float32, device=w.device)
        wp[:n, :k] = w
        g = PerChannel(0) if granularity == "row" else PerTensor()
        qp = choose_qparams(wp, _FMT, granularity=g)  # amax / 448 (a zero row gets scale 1)
        scale = qp.scale.reshape(1, -1) if granularity == "row" else qp.scale.reshape(1, 1)
        bias = None if linear.bias is None else linear.bias.detach().to(torch.float32).clone()
        return cls(_to_fp8(wp, qp, g), scale.to(torch.float32), bias, k, n, granularity)

    def dequantized_weight(self) -> torch.Tensor:
        """``q_w * s_w`` as float32 ``[N, K]``: the reference the FP8 product is tested against."""
        s = self.weight_scale.reshape(-1, 1) if self.granularity == "row" else self.weight_scale
        return (self.weight_fp8.to(torch.float32) * s)[: self.out_features, : self.in_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead, k = x.shape[:-1], x.shape[-1]
        x2 = x.reshape(-1, k).to(torch.float32)
        m = x2.shape[0]
        xp = torch.zeros(_pad16(m), self.weight_fp8.shape[1], dtype=torch.float32, device=x.device)
        xp[:m, :k] = x2
        g = PerChannel(0) if self.granularity == "row" else PerTensor()
        qp = choose_qparams(xp, _FMT, granularity=g)
        sx = qp.scale.reshape(-1, 1) if self.granularity == "row" else qp.scale.reshape(())
        sw = self.weight_scale if self.granularity == "row" else self.weight_scale.reshape(())
        out_dtype = torch.bfloat16 if self.granularity == "row" else torch.float32  # row-wise scales need bf16 out
        y = fp8_matmul(_to_fp8(xp, qp, g), self.weight_fp8.t(), scale_a=sx.to(torch.float32),
                       scale_b=sw.to(torch.float32), out_dtype=out_dtype)
        y = y[:m, : self.out_features].to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {_FMT}, scales per {self.granularity}"


def swap_linears_fp8(model: nn.Module, granularity: str = "tensor") -> list[str]:
    """Replace every ``nn.Linear`` of ``model`` (in place) by a :class:`Float8Linear`; returns their names."""
    done = []
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if type(child) is nn.Linear:
                setattr(mod, child_name, Float8Linear.from_linear(child, granularity))
                done.append(f"{name}.{child_name}" if name else child_name)
    return done


TORCH_FP8_FORMAT = "torch_float8_e4m3fn"


def save_fp8_model(model: nn.Module, path, *, granularity: str = "tensor", metadata: dict | None = None) -> nn.Module:
    """A copy of ``model`` with every Linear in FP8 (:func:`swap_linears_fp8`), saved as safetensors at ``path``.

    The file holds the FP8 weights as ``F8_E4M3`` tensors with their scales, the other
    parameters as they are, and fed8's metadata (``fp8_linears``, ``granularity``, the
    model's name, input shape and preprocessing). Returns the FP8 module.
    """
    import copy

    from .._io import save_tensors

    fp8 = copy.deepcopy(model).eval()
    names = swap_linears_fp8(fp8, granularity)
    if not names:
        raise ParameterError("torch_float8_e4m3fn: the model has no nn.Linear layer to run in FP8.")
    save_tensors(path, fp8.state_dict(), {**(metadata or {}), "format": TORCH_FP8_FORMAT, "granularity": granularity,
                                          "fp8_linears": names})
    return fp8


class TorchSession:
    """A PyTorch module behind ORT's ``get_inputs()`` / ``run()`` surface (float32 in, logits out)."""

    class _Input:
        name = "input"

    def __init__(self, module: nn.Module, threads: int = 2) -> None:
        self.module, self.threads = module.eval(), threads

    def get_inputs(self) -> list:
        return [self._Input()]

    def run(self, output_names, feeds) -> list:
        import numpy as np

        x = torch.from_numpy(np.ascontiguousarray(next(iter(feeds.values())), dtype=np.float32))
        old = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            with torch.no_grad():
                return [self.module(x).float().numpy()]
        finally:
            torch.set_num_threads(old)


def read_fp8_metadata(path) -> dict:
    """fed8's metadata of a ``torch_float8_e4m3fn`` safetensors file."""
    import json

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta["fed8"]) if "fed8" in meta else {}


def load_fp8_model(path) -> nn.Module:
    """The FP8 module saved by :func:`save_fp8_model` for one of fed8's models (its metadata names it)."""
    from .._io import load_tensors
    from ..errors import DeployError
    from ..models import build_model

    meta = read_fp8_metadata(path)
    if meta.get("format") != TORCH_FP8_FORMAT or "model" not in meta or "input_shape" not in meta:
        raise DeployError(f"{path}: not a fed8 {TORCH_FP8_FORMAT} model (its metadata does not name a fed8 model).")
    c, h, w = meta["input_shape"]
    model = build_model(meta["model"], in_channels=c, height=h, width=w, num_classes=len(meta["classes"]),
                        **meta.get("model_options", {}))
    swap_linears_fp8(model, meta.get("granularity", "tensor"))
    model.load_state_dict(load_tensors(path))
    return model.eval()
