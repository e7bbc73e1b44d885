"""Accuracy gate: rank layers by quantization SQNR and keep the most sensitive ones in float.

Each Conv / Gemm / MatMul layer gets a *local* sensitivity, the quantization error it
introduces itself (not the error it inherits from earlier layers):

    SQNR_w = 10 log10(sum w^2 / sum (w - Q(w))^2)        weights, as the format stores them
    SQNR_x = 10 log10(sum x^2 / sum (x - Q(x))^2)        its input activation, with the calibrated scale
    SQNR   = -10 log10(10^(-SQNR_w / 10) + 10^(-SQNR_x / 10))

(the noise-to-signal ratios of the two factors of a product add, to first order).
The activation sums are computed on each client over its calibration images and only
the two sums per tensor leave it, like the calibration statistics. If a format loses
more than ``max_accuracy_drop`` points, :func:`gate` keeps layers in float, lowest SQNR
first, until the model passes; a format that fails with every layer in float is
reported as failed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from ..formats import PerChannel, QParams, choose_qparams, dequantize, qparams_for_range, quantize, sqnr_db
from .calibrate import activations, check_input

__all__ = ["GateResult", "LayerSQNR", "client_sqnr_sums", "gate", "layer_sqnr", "layer_sqnr_from_sums"]

_COMPUTE = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class LayerSQNR:
    """Local quantization SQNR (dB) of one compute layer."""

    node: str
    op: str
    weight_db: float
    input_db: float

    @property
    def sqnr_db(self) -> float:
        nsr = sum(10 ** (-v / 10) for v in (self.weight_db, self.input_db) if math.isfinite(v))
        return math.inf if nsr == 0 else -10 * math.log10(nsr)


def _fake_act(x: torch.Tensor, fmt: str, lo: float, hi: float, fp8_scale: float | None) -> torch.Tensor:
    """Input activation as the deployed model sees it: INT8 on the affine grid of its range (ORT's uint8 grid,
    shifted by 128: the same values), FP8 with its chosen scale."""
    qp = qparams_for_range(lo, hi, fmt) if fp8_scale is None else QParams(torch.tensor(fp8_scale))
    return dequantize(quantize(x, qp, fmt), qp, fmt)


def _fake_weight(w: torch.Tensor, fmt: str, axis: int, weight_scale: str) -> torch.Tensor:
    """A weight as stored: per output channel, symmetric INT8 or FP8 with ``weight_scale``."""
    g = PerChannel(axis)
    qp = choose_qparams(w, fmt, granularity=g, method="amax" if fmt == "int8" else weight_scale)
    return dequantize(quantize(w, qp, fmt, granularity=g), qp, fmt, granularity=g)


def _layers(g):
    inits = {t.name: t for t in g.initializer}
    return inits, [n for n in g.node if n.op_type in _COMPUTE and len(n.input) > 1 and n.input[1] in inits]


def client_sqnr_sums(fp32_path: str | Path, fmt: str, x: np.ndarray, *, ranges: Mapping[str, tuple[float, float]],
                     fp8_scales: Mapping[str, float] | None = None) -> dict[str, tuple[float, float]]:
    """On one client: ``{input tensor: (sum x^2, sum (x - Q(x))^2)}`` of every compute layer's input."""
    import onnx

    _, layers = _layers(onnx.load(str(fp32_path)).graph)
    acts = sorted({n.input[0] for n in layers if n.input[0] in ranges})
    sig, noise = dict.fromkeys(acts, 0.0), dict.fromkeys(acts, 0.0)
    if x.shape[0]:
        check_input(fp32_path, x)
        for batch in activations(fp32_path, acts, x, 100):
            for k, a in batch.items():
                t = torch.from_numpy(a).double()
                q = _fake_act(t, fmt, *ranges[k], fp8_scales[k] if fp8_scales else None)
                sig[k] += float((t * t).sum())
                noise[k] += float(((t - q) ** 2).sum())
    return {k: (sig[k], noise[k]) for k in acts}


def layer_sqnr_from_sums(fp32_path: str | Path, fmt: str, sums: Iterable[Mapping[str, tuple[float, float]]], *,
                         weight_scale: str = "mse") -> list[LayerSQNR]:
    """Server side: the clients' sums added (in client order), SQNR of every layer, lowest first."""
    import onnx
    from onnx import numpy_helper

    inits, layers = _layers(onnx.load(str(fp32_path)).graph)
    sig: dict[str, float] = {}
    noise: dict[str, float] = {}
    for s in sums:
        for k, (a, b) in s.items():
            sig[k], noise[k] = sig.get(k, 0.0) + a, noise.get(k, 0.0) + b
    out = []
    for n in layers:
        w = torch.from_numpy(numpy_helper.to_array(inits[n.input[1]]).copy())
        transposed = n.op_type == "Gemm" and not any(a.name == "transB" and a.i for a in n.attribute)
        axis = 1 if (n.op_type == "MatMul" or transposed) else 0
        w_db = sqnr_db(w, _fake_weight(w, fmt, axis, weight_scale))
        k = n.input[0]
        if k not in sig or noise[k] == 0:
            x_db = math.inf
        else:
            x_db = 10 * math.log10(sig[k] / noise[k]) if sig[k] > 0 else -math.inf
        out.append(LayerSQNR(n.name, n.op_type, w_db, x_db))
    return sorted(out, key=lambda r: r.sqnr_db)


def layer_sqnr(fp32_path: str | Path, fmt: str, client_images: Iterable[np.ndarray], *,
               ranges: Mapping[str, tuple[float, float]], fp8_scales: Mapping[str, float] | None = None,
               weight_scale: str = "mse") -> list[LayerSQNR]:
    """Local SQNR of every compute layer with a constant weight, lowest (most sensitive) first.

    Each client's images give two sums per tensor (:func:`client_sqnr_sums`); only those
    leave it, and :func:`layer_sqnr_from_sums` adds them.
    """
    return layer_sqnr_from_sums(fp32_path, fmt, (client_sqnr_sums(fp32_path, fmt, x, ranges=ranges,
                                                                  fp8_scales=fp8_scales) for x in client_images),
                                weight_scale=weight_scale)


@dataclass(frozen=True)
class GateResult:
    """Outcome of the gate for one format."""

    passed: bool
    accuracy: float
    kept_float: tuple[LayerSQNR, ...]
    tried: tuple[tuple[int, float], ...]  # (layers kept in float, accuracy) for every model built


def gate(build: Callable[[Sequence[str]], float], ranking: Callable[[], Sequence[LayerSQNR]], *,
         float_accuracy: float, max_drop_points: float) -> GateResult:
    """Keep the most sensitive layers in float until the accuracy drop is within ``max_drop_points``.

    Parameters
    ----------
    build
        Builds the format with the given node names kept in float and returns its accuracy.
    ranking
        Layers, most sensitive first; only called if the fully quantized model fails.
    """
    def ok(acc: float) -> bool:
        return 100 * (float_accuracy - acc) <= max_drop_points + 1e-9

    acc = build(())
    tried = [(0, acc)]
    if ok(acc):
        return GateResult(True, acc, (), tuple(tried))
    layers = list(ranking())
    for k in range(1, len(layers) + 1):
        acc = build([r.node for r in layers[:k]])
        tried.append((k, acc))
        if ok(acc):
            return GateResult(True, acc, tuple(layers[:k]), tuple(tried))
    return GateResult(False, acc, tuple(layers), tuple(tried))
