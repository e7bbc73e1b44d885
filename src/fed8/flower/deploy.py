"""The quantize stage's client side on SuperNodes: :class:`FlowerStatistics`.

Implements :class:`fed8.deploy.clients.ClientStatistics` with messages through the
transport's Grid: ``query.calibrate`` carries the FP32 ONNX model and asks each node for
per-tensor ranges, histograms on the server's edges, or the gate's two sums per tensor,
computed on its own calibration images; ``evaluate.onnx`` carries an 8-bit model and
asks for its correct-prediction count on the node's local test split. Only those numbers
leave a node. The server merges them with the simulation's own code, in client order, so
the models built are the simulation's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

from ..deploy.calibrate import Histogram, Ranges
from ..errors import Fed8Error

__all__ = ["FlowerStatistics"]


class FlowerStatistics:
    """Calibration statistics and on-device accuracy from the SuperNodes of a :class:`FlowerTransport`."""

    where = ("SuperNodes (federated over Flower: only per-tensor statistics and correct-prediction counts left "
             "each node)")

    def __init__(self, transport) -> None:
        self.transport = transport
        self.samples: int | None = None

    def _ask(self, kind: str, model: Path, *, required: bool, **job) -> dict[int, dict]:
        from flwr.app import ArrayRecord

        from .messages import bytes_array

        t = self.transport
        rec = ArrayRecord({"onnx": bytes_array(Path(model).read_bytes())})
        clients = sorted(t.nodes)
        t.refresh(clients)
        replies = t.send(kind, 0, {k: t.message(kind, 0, k, rec, **job) for k in clients})
        if required and len(replies) < len(clients):
            missing = sorted(set(clients) - set(replies))
            raise Fed8Error(f"calibration needs every client's statistics; clients {missing[:10]} did not answer "
                            f"within federation.round_timeout_s = {t.round_timeout_s:g} s. The trained model is "
                            "saved: run the quantize stage again when the nodes are back (fed8 federation --resume "
                            "RUN_DIR), or calibrate centrally (fed8 quantize RUN_DIR --calibration-data ...).")
        return {k: replies[k]["job"] for k in sorted(replies)}

    def _stats(self, model: Path, **job) -> list:
        replies = self._ask("query.calibrate", model, required=True, **job)
        if job["what"] == "ranges":
            self.samples = sum(int(r["samples"]) for r in replies.values())
        return [json.loads(str(r["stats"])) for r in replies.values()]

    def ranges(self, fp32: Path) -> list[Ranges]:
        return [{t: (float(lo), float(hi)) for t, (lo, hi) in s.items()} for s in self._stats(fp32, what="ranges")]

    def histograms(self, fp32: Path, bounds: Mapping[str, float]) -> list[dict[str, Histogram]]:
        import numpy as np

        out = self._stats(fp32, what="histograms", bounds=json.dumps(dict(bounds)))
        return [{t: Histogram(np.asarray(c, dtype=np.int64), float(b), int(n), float(s), float(ss))
                 for t, (c, b, n, s, ss) in h.items()} for h in out]

    def sqnr_sums(self, fp32: Path, fmt: str, ranges: Mapping[str, tuple[float, float]],
                  fp8_scales: Mapping[str, float] | None) -> list[dict[str, tuple[float, float]]]:
        out = self._stats(fp32, what="sqnr", format=fmt, ranges=json.dumps({k: list(v) for k, v in ranges.items()}),
                          **{"fp8-scales": json.dumps(dict(fp8_scales or {}))})
        return [{t: (float(a), float(b)) for t, (a, b) in s.items()} for s in out]

    def correct(self, model: Path) -> list[tuple[int, int]] | None:
        # a .tflite (LiteRT) or .safetensors (torch_float8_e4m3fn) file says so: the node opens it with the runtime
        # of its kind (LiteRT needs fed8[litert] on the node)
        suffix = Path(model).suffix
        replies = self._ask("evaluate.onnx", model, required=False, **({"suffix": suffix} if suffix != ".onnx" else {}))
        return [(int(replies[k]["correct"]), int(replies[k]["count"])) if k in replies else (0, 0)
                for k in sorted(self.transport.nodes)]
