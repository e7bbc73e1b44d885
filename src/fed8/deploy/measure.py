"""What the quantize stage measures about a deployed model, written once for every runtime.

A runtime plugs in with a session that has ORT's ``get_inputs()`` / ``run()`` surface
(:func:`fed8.deploy.runtime.session`: ONNX Runtime, OpenVINO, LiteRT for ``.tflite``) and,
for the "integer kernels" column, an entry in :data:`INTEGER_KERNELS`. Every model row gets
the same columns: accuracy on the eval split and its change against FP32 in points, top-1
agreement with FP32, the clients' on-device accuracy, bytes, latency at batch 1 and 256
(``None`` at 256 for a file that takes batch 1 only), the integer kernels it runs; and, at the
end, ratios to ONNX Runtime FP32 (:func:`add_ratios`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["INTEGER_KERNELS", "Measure", "add_ratios", "timings"]


def _ort_integer_kernels(path: Path) -> list[str]:
    from .runtime import INTEGER_OPS, kernel_ops

    return sorted(set(kernel_ops(path)) & INTEGER_OPS)


def _litert_integer_kernels(path: Path) -> list[str]:
    from .litert import integer_ops

    return integer_ops(path)


#: runtime -> the integer kernels a file runs there
INTEGER_KERNELS: dict[str, Callable[[Path], list[str]]] = {
    "onnxruntime": _ort_integer_kernels, "litert": _litert_integer_kernels}


def timings(sess, input_shape) -> dict[str, float | None]:
    """Median latency at batch 1 and 256; a session with ``batch == 1`` (LiteRT) has no batch-256 figure."""
    from .runtime import latency_ms

    shape = tuple(input_shape)
    fixed = getattr(sess, "batch", None)
    return {"latency_ms_batch1": latency_ms(sess, shape, batch=1, repeats=30),
            "latency_ms_batch256": None if fixed == 1 else latency_ms(sess, shape, batch=256, repeats=5)}


@dataclass
class Measure:
    """The measurements of one quantize stage: FP32's logits as the reference, and how to count on the clients.

    Parameters
    ----------
    eval_x, eval_y
        The eval split (``eval_y`` None: scores are top-1 agreement with FP32).
    fp32_logits
        FP32 on ONNX Runtime, the reference of every agreement and ratio.
    input_shape
        One image's shape, for the latency inputs.
    threads
        Threads of every session.
    on_device
        ``path -> client accuracy summary`` (or None), from the clients' own counts.
    say
        Progress messages.
    """

    eval_x: np.ndarray
    eval_y: np.ndarray | None
    fp32_logits: np.ndarray
    input_shape: tuple[int, ...]
    threads: int
    on_device: Callable[[Path], dict | None]
    say: Callable[[str], None] = lambda s: None

    @property
    def reference(self) -> np.ndarray:
        return self.eval_y if self.eval_y is not None else self.fp32_logits.argmax(1)

    def score(self, logits: np.ndarray) -> float:
        return float((logits.argmax(1) == self.reference).mean())

    def row(self, name: str, path: Path, sess, logits: np.ndarray, runtime: str = "onnxruntime", *,
            timed: bool = True) -> dict[str, Any]:
        """The row of a model ``name`` stored at ``path``, run in ``sess`` of ``runtime``; ``logits`` on the eval split.

        ``timed = False``: no latency (``None``): the machine cannot run the format at its real speed.
        """
        self.say(f"measuring {name}")
        acc, base = self.score(logits), self.score(self.fp32_logits)
        labelled = self.eval_y is not None
        return {
            "format": name, "runtime": runtime, "file": path.name, "bytes": os.path.getsize(path),
            "eval_accuracy": acc if labelled else None,
            "accuracy_delta_points": 100 * (acc - base) if labelled else None,
            "top1_agreement_with_float32": float((logits.argmax(1) == self.fp32_logits.argmax(1)).mean()),
            "on_device": self.on_device(path),
            **(timings(sess, self.input_shape) if timed else {"latency_ms_batch1": None, "latency_ms_batch256": None}),
            "integer_kernels": INTEGER_KERNELS[runtime](path) if runtime in INTEGER_KERNELS else [],
            "status": "ok", "layers_kept_float": [],
        }

    def other_runtime(self, path: Path, runtime: str, ort_logits: np.ndarray) -> dict[str, Any]:
        """The same file on another runtime (OpenVINO): agreement with ONNX Runtime and latency."""
        from .runtime import run_logits, session

        self.say(f"measuring {path.name} on {runtime}")
        sess = session(path, threads=self.threads, runtime=runtime)
        logits = run_logits(sess, self.eval_x)
        return {"file": path.name, "bytes": os.path.getsize(path),
                "top1_agreement_with_onnxruntime": float((logits.argmax(1) == ort_logits.argmax(1)).mean()),
                **timings(sess, self.input_shape)}


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Size and speedups against the first row (FP32 on ONNX Runtime); nested OpenVINO rows also against its FP32."""
    first = rows[0]
    for r in rows:
        r["bytes_ratio_to_float32"] = r["bytes"] / first["bytes"]
        for b in ("batch1", "batch256"):
            key = f"latency_ms_{b}"
            r[f"speedup_{b}"] = first[key] / r[key] if r[key] is not None and first[key] is not None else None
            if "openvino" in r:
                ov = r["openvino"]
                ov[f"speedup_{b}"] = first[key] / ov[key]
                ov[f"speedup_{b}_vs_openvino_float32"] = first["openvino"][key] / ov[key]
