"""Top-k predictions of a deployed ONNX model on user images, with the model's own preprocessing."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["predict"]


def predict(model_path: str | Path, paths: Sequence[str | Path], *, top_k: int = 3,
            threads: int = 2, runtime: str = "onnxruntime") -> list[dict]:
    """For every image: its name and the ``top_k`` (class, probability) pairs, best first.

    Probabilities are ``softmax(logits)``; preprocessing (resize, channels, scale, mean,
    std) comes from the ``fed8`` entry of the model's ONNX metadata. ``runtime``:
    ``onnxruntime`` or ``openvino`` (see :func:`fed8.deploy.runtime.session`).
    """
    from .export import read_metadata
    from .images import load_inputs
    from .runtime import run_logits, session

    meta = read_metadata(model_path)
    imgs = load_inputs(paths, model_path, meta)  # another tool's ONNX model: an .npz of its own float inputs
    logits = run_logits(session(model_path, threads=threads, runtime=runtime), imgs.x).astype(np.float64)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    classes = [str(c) for c in meta.get("classes", range(p.shape[1]))]
    k = min(top_k, p.shape[1])
    out = []
    for name, row in zip(imgs.names, p):
        best = np.argsort(-row, kind="stable")[:k]
        out.append({"image": name, "top": [(classes[i], float(row[i])) for i in best]})
    return out
