"""Federated calibration: activation statistics computed on each client, merged on the server.

Each client runs ONNX Runtime's own MinMax calibrator (the one ``quantize_static``
uses) over its local images and sends back only ``(min, max)`` per tensor: no image,
no activation, leaves the device. The server merges with

    min = min_k min_k(t),    max = max_k max_k(t),

which equals calibrating on the union of the clients' data exactly, and hands the
merged ranges to the quantizer.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

__all__ = ["Ranges", "client_ranges", "merge_ranges", "to_tensors_data"]

Ranges = dict[str, tuple[float, float]]


class _Reader:
    """ORT CalibrationDataReader over an array, in batches."""

    def __init__(self, name: str, x: np.ndarray, batch_size: int) -> None:
        self._it = iter([{name: x[i : i + batch_size]} for i in range(0, x.shape[0], batch_size)])

    def get_next(self):
        return next(self._it, None)


def client_ranges(model_path: str | Path, x: np.ndarray, *, batch_size: int = 100) -> Ranges:
    """Per-tensor (min, max) of every float tensor of the ONNX model on one client's images ``x``."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    if x.shape[0] == 0:
        return {}
    name = onnx.load(str(model_path), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="fed8-calib-") as tmp:
        cal = create_calibrator(Path(model_path), [], augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                calibrate_method=CalibrationMethod.MinMax)
        cal.collect_data(_Reader(name, np.ascontiguousarray(x, dtype=np.float32), batch_size))
        data = cal.compute_data()
    return {k: (float(np.min(v.range_value[0])), float(np.max(v.range_value[1]))) for k, v in data.data.items()}


def merge_ranges(stats: Iterable[Mapping[str, tuple[float, float]]]) -> Ranges:
    """Server side: elementwise min of the minima and max of the maxima."""
    out: Ranges = {}
    for s in stats:
        for k, (lo, hi) in s.items():
            if k in out:
                out[k] = (min(out[k][0], lo), max(out[k][1], hi))
            else:
                out[k] = (lo, hi)
    return out


def to_tensors_data(ranges: Mapping[str, tuple[float, float]]):
    """ORT ``TensorsData`` (MinMax) for ``quantize_static``'s calibration cache."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData

    return TensorsData(CalibrationMethod.MinMax,
                       {k: (np.array(lo, dtype=np.float32), np.array(hi, dtype=np.float32)) for k, (lo, hi) in ranges.items()})
