"""Export the global model to ONNX and check it against PyTorch."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ..errors import DeployError

__all__ = ["OPSET", "export_onnx", "graph_key", "input_dims", "read_metadata", "set_metadata", "stamp_metadata"]

# Opset 19 is the first with float8 QuantizeLinear / DequantizeLinear.
OPSET = 19
INPUT, OUTPUT = "input", "logits"


def export_onnx(model: nn.Module, input_shape: tuple[int, int, int], path: str | Path, *,
                metadata: Mapping[str, Any]) -> Path:
    """Write ``model`` as ONNX (dynamic batch) with ``metadata`` (preprocessing, classes) as JSON props.

    The legacy TorchScript exporter is used: it needs no extra dependency and handles
    the reference models exactly.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    x = torch.zeros(1, *input_shape)
    tmp = path.with_suffix(".tmp.onnx")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), str(tmp), dynamo=False, opset_version=OPSET, input_names=[INPUT],
                              output_names=[OUTPUT], dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    except Exception as e:  # an operator or construct of the model that torch.onnx cannot export
        tmp.unlink(missing_ok=True)
        first = (str(e).splitlines() or [""])[0]
        raise DeployError(f"the model cannot be exported to ONNX (opset {OPSET}), which every 8-bit format starts "
                          f"from: {type(e).__name__}: {first}. Change the model to use exportable operators, or set "
                          "quantize.enabled = false to train without the 8-bit stage.") from e
    m = onnx.load(str(tmp))
    set_metadata(m, metadata)
    onnx.save(m, str(tmp))
    tmp.replace(path)
    return path


def set_metadata(model, metadata: Mapping[str, Any]) -> None:
    """Store ``metadata`` as one JSON string under ``fed8`` in the ONNX metadata_props."""
    import onnx

    keep = [p for p in model.metadata_props if p.key != "fed8"]
    del model.metadata_props[:]
    model.metadata_props.extend(keep + [onnx.StringStringEntryProto(key="fed8", value=json.dumps(dict(metadata)))])


def stamp_metadata(path: str | Path, metadata: Mapping[str, Any]) -> None:
    """Rewrite an ONNX file with ``metadata`` set (for models written by other tools, e.g. ORT's quantizer)."""
    import onnx

    m = onnx.load(str(path))
    set_metadata(m, metadata)
    onnx.save(m, str(path))


def graph_key(path: str | Path) -> str:
    """A digest of what an ONNX file computes: its model without metadata, plus the ORT session config its
    fed8 metadata asks for (``ort_session_config``: it changes the kernels ONNX Runtime runs)."""
    import hashlib

    import onnx

    if Path(path).suffix in (".tflite", ".safetensors"):  # LiteRT / torch FP8 files: their bytes (built once)
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    m = onnx.load(str(path))
    props = {p.key: p.value for p in m.metadata_props}
    config = json.loads(props.get("fed8", "{}")).get("ort_session_config", {})
    del m.metadata_props[:]
    h = hashlib.sha256(m.SerializeToString(deterministic=True))
    h.update(json.dumps(config, sort_keys=True).encode())
    return h.hexdigest()


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The fed8 metadata of an ONNX or LiteRT (``.tflite``) file (preprocessing, classes, input shape)."""
    import onnx

    if Path(path).suffix == ".tflite":
        from .litert import read_litert_metadata

        return read_litert_metadata(path)
    if Path(path).suffix == ".safetensors":
        from .fp8_linear import read_fp8_metadata

        return read_fp8_metadata(path)

    if Path(path).is_dir():
        _refuse_directory(Path(path))
    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and others for non-models
        raise DeployError(f"{path}: not an ONNX model ({type(e).__name__}: {e}).") from None
    if not m.graph.node:
        raise DeployError(f"{path}: not an ONNX model (no graph nodes).")
    props = {p.key: p.value for p in m.metadata_props}
    return json.loads(props["fed8"]) if "fed8" in props else {}


def input_dims(path: str | Path) -> list[int | None]:
    """The first graph input's dimensions after the batch: an int where the file fixes it, None where it is symbolic."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    first = next(i for i in m.graph.input if i.name not in inits)
    return [d.dim_value if d.HasField("dim_value") else None for d in first.type.tensor_type.shape.dim[1:]]


def _refuse_directory(path: Path) -> None:
    """A directory passed where a model file goes (usually a run directory): name the models it holds."""
    models = sorted(q for pattern in ("*.onnx", "*.tflite", "deploy/*.onnx", "deploy/*.tflite") for q in path.glob(pattern))
    if models:
        pick = next((q for q in models if q.name == "int8.onnx"), models[0])
        raise DeployError(f"{path} is a directory, not a model file. Pass one of its models, e.g. {pick} "
                          f"(there: {', '.join(q.name for q in models)}).")
    raise DeployError(f"{path} is a directory, not a model file, and holds no .onnx or .tflite model. For a run "
                      f"directory, build its 8-bit models with: fed8 quantize {path}")


def parity(model: nn.Module, logits_onnx: np.ndarray, x: torch.Tensor, *, batch_size: int = 500) -> dict[str, float]:
    """Top-1 agreement and max |logit difference| between PyTorch and ONNX outputs on ``x``."""
    model = model.eval()
    with torch.no_grad():
        ref = torch.cat([model(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]).numpy()
    return {"top1_agreement": float((ref.argmax(1) == logits_onnx.argmax(1)).mean()),
            "max_abs_logit_error": float(np.abs(ref - logits_onnx).max())}
