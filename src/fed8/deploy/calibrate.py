"""Federated calibration: activation statistics computed on each client, merged on the server.

Only statistics leave a client, never an image or an activation. Two passes:

1. **Ranges.** Each client runs ONNX Runtime's own MinMax calibrator (the one
   ``quantize_static`` uses) over its local images and sends ``(min, max)`` per
   tensor. The server merges with ``min = min_k min_k(t)``, ``max = max_k max_k(t)``,
   which equals calibrating on the union of the clients' data exactly.
2. **Histograms** (for ``percentile`` / ``entropy``, and the moments FP8's
   std-matching scale needs). The server fixes, per tensor, ``bins`` equal bins over
   ``[-T, T]`` with ``T = max(|min|, |max|)`` of the merged range; each client sends
   its counts, ``n``, ``sum x`` and ``sum x^2``. With shared edges the summed
   histogram *is* the histogram of the union, so the thresholds the server derives
   with ORT's ``HistogramCollector`` (percentile: cut ``(100 - p) / 2`` percent per
   side; entropy: the KL-divergence threshold search of TensorRT, Migacz 2017) are the
   ones centralized calibration on the union would give with the same edges.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np

from ..errors import DeployError

__all__ = ["CALIBRATION_METHODS", "Histogram", "Ranges", "activations", "check_input", "client_histograms", "client_ranges",
           "merge_histograms", "merge_ranges", "thresholds", "to_tensors_data"]

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
Ranges = dict[str, tuple[float, float]]


@dataclass
class Histogram:
    """One tensor's statistics from one client (or summed over clients): counts on shared edges and moments."""

    counts: np.ndarray  # int64 [bins]
    bound: float  # edges are linspace(-bound, bound, bins + 1)
    n: int
    sum: float
    sum_sq: float

    def __add__(self, other: "Histogram") -> "Histogram":
        if self.bound != other.bound or self.counts.shape != other.counts.shape:
            raise DeployError("histograms with different edges cannot be merged; both must use the server's edges.")
        return Histogram(self.counts + other.counts, self.bound, self.n + other.n, self.sum + other.sum,
                         self.sum_sq + other.sum_sq)

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(-self.bound, self.bound, self.counts.size + 1, dtype=np.float32)

    @property
    def std(self) -> float:
        mean = self.sum / max(self.n, 1)
        return float(np.sqrt(max(self.sum_sq / max(self.n, 1) - mean * mean, 0.0)))


def check_input(model_path: str | Path, x: np.ndarray) -> str:
    """Name of the model's input; a :class:`DeployError` if ``x`` does not fit its shape."""
    import onnx

    inp = onnx.load(str(model_path), load_external_data=False).graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    want = dims[1:]
    if x.ndim != len(dims) or any(w is not None and w != g for w, g in zip(want, x.shape[1:])):
        shape = "x".join("N" if d is None else str(d) for d in dims)
        raise DeployError(f"calibration data has shape {tuple(x.shape)}, but {Path(model_path).name} takes input "
                          f"{inp.name!r} of shape {shape}. Give images of that size and channel count "
                          f"(N images of {'x'.join(str(d) for d in want)}).")
    return inp.name


class _Reader:
    """ORT CalibrationDataReader over an array, in batches."""

    def __init__(self, name: str, x: np.ndarray, batch_size: int) -> None:
        self._it = iter([{name: x[i : i + batch_size]} for i in range(0, x.shape[0], batch_size)])

    def get_next(self):
        return next(self._it, None)


def client_ranges(model_path: str | Path, x: np.ndarray, *, batch_size: int = 100) -> Ranges:
    """Pass 1 on one client: per-tensor (min, max) of every float tensor of the model on images ``x``."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    if x.shape[0] == 0:
        return {}
    name = check_input(model_path, x)
    with tempfile.TemporaryDirectory(prefix="fed8-calib-") as tmp:
        cal = create_calibrator(Path(model_path), [], augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                calibrate_method=CalibrationMethod.MinMax)
        cal.collect_data(_Reader(name, np.ascontiguousarray(x, dtype=np.float32), batch_size))
        data = cal.compute_data()
    return {k: (float(np.min(v.range_value[0])), float(np.max(v.range_value[1]))) for k, v in data.data.items()}


def merge_ranges(stats: Iterable[Mapping[str, tuple[float, float]]]) -> Ranges:
    """Server side of pass 1: elementwise min of the minima and max of the maxima."""
    out: Ranges = {}
    for s in stats:
        for k, (lo, hi) in s.items():
            out[k] = (min(out[k][0], lo), max(out[k][1], hi)) if k in out else (lo, hi)
    return out


def activations(model_path: str | Path, names: list[str], x: np.ndarray, batch_size: int
                 ) -> Iterator[dict[str, np.ndarray]]:
    """Batches of the named intermediate tensors (the model with them added as outputs)."""
    import onnx
    import onnxruntime as ort

    m = onnx.load(str(model_path))
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                          for n in names if n not in have)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor by name
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0].name
    for i in range(0, x.shape[0], batch_size):
        yield dict(zip(names, sess.run(names, {inp: np.ascontiguousarray(x[i : i + batch_size], np.float32)})))


def client_histograms(model_path: str | Path, x: np.ndarray, bounds: Mapping[str, float], *, bins: int = 2048,
                      batch_size: int = 100) -> dict[str, Histogram]:
    """Pass 2 on one client: counts on the server's edges ``linspace(-bound, bound, bins + 1)`` and moments."""
    check_input(model_path, x)
    names = sorted(bounds)
    out = {k: Histogram(np.zeros(bins, np.int64), float(bounds[k]), 0, 0.0, 0.0) for k in names}
    if x.shape[0] == 0:
        return out
    for batch in activations(model_path, names, x, batch_size):
        for k, a in batch.items():
            a = a.ravel().astype(np.float64)
            h = out[k]
            b = h.bound if h.bound > 0 else 1.0
            counts, _ = np.histogram(np.clip(a, -b, b), bins=bins, range=(-b, b))
            out[k] = h + Histogram(counts.astype(np.int64), h.bound, a.size, float(a.sum()), float((a * a).sum()))
    return out


def merge_histograms(stats: Iterable[Mapping[str, Histogram]]) -> dict[str, Histogram]:
    """Server side of pass 2: counts and moments summed over clients."""
    out: dict[str, Histogram] = {}
    for s in stats:
        for k, h in s.items():
            out[k] = out[k] + h if k in out else h
    return out


def thresholds(method: str, ranges: Mapping[str, tuple[float, float]], hists: Mapping[str, Histogram], *,
               percentile: float = 99.999, num_quantized_bins: int = 128) -> Ranges:
    """Activation ranges for ``method`` from merged statistics (ORT's threshold math on our histograms).

    ``minmax`` returns ``ranges``; ``percentile`` and ``entropy`` return ranges clipped to
    the percentile / KL-optimal threshold, never wider than the observed (min, max).
    """
    if method not in CALIBRATION_METHODS:
        raise DeployError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}; got {method!r}.")
    if method == "minmax":
        return dict(ranges)
    from onnxruntime.quantization.calibrate import HistogramCollector

    col = HistogramCollector(method, symmetric=False, num_bins=None, num_quantized_bins=num_quantized_bins,
                             percentile=percentile, scenario="same")
    col.histogram_dict = {k: (h.counts, h.edges, np.float32(ranges[k][0]), np.float32(ranges[k][1]),
                              np.float32(h.bound)) for k, h in hists.items() if h.bound > 0 and h.n > 0}
    out = dict(ranges)
    if col.histogram_dict:
        with contextlib.redirect_stdout(io.StringIO()):  # ORT prints progress
            result = col.compute_collection_result()
        for k, v in result.items():
            lo, hi = ranges[k]
            out[k] = (max(float(v[0]), lo), min(float(v[1]), hi))
    return out


def to_tensors_data(ranges: Mapping[str, tuple[float, float]]):
    """ORT ``TensorsData`` (MinMax) for ``quantize_static``'s calibration cache."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData

    return TensorsData(CalibrationMethod.MinMax,
                       {k: (np.array(lo, dtype=np.float32), np.array(hi, dtype=np.float32)) for k, (lo, hi) in ranges.items()})
