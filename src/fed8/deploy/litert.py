"""LiteRT (``.tflite``) models for phones and microcontrollers: full-integer INT8 and FP32, from the PyTorch model.

Built with ``litert-torch`` (extra ``fed8[litert]``) along its PT2E route (Google's
documented path for static INT8): ``torch.export`` -> ``prepare_pt2e`` with
``litert_torch``'s ``PT2EQuantizer`` (int8 per-channel symmetric weights, int8 affine
per-tensor activations, int32 bias) -> calibrate -> ``convert_pt2e(fold_quantize=False)``
-> ``litert_torch.convert(..., quant_config=QuantConfig(pt2e_quantizer=...))``.

**Calibration is federated**, with the same statistics as the ONNX models: no image is
run through the model on the server. The activation observers are MinMax observers, and
each one is *set* to the federated range (merged min/max, or the percentile / entropy
threshold) of the tensor it watches. Which ONNX tensor an observer watches is found once,
data-free: one fixed random probe runs through the prepared PyTorch graph and the FP32
ONNX graph, and each observed tensor is matched to the ONNX tensor with the same shape
and values. The resulting scales are those of a MinMax observer that saw exactly the
federated range: ``s = (max(hi, 0) - min(lo, 0)) / 255``, ``z = -128 - round(min(lo, 0) / s)``.

The INT8 model is checked to be full-integer (every CONV_2D / DEPTHWISE_CONV_2D /
FULLY_CONNECTED with int8 input, int8 weights and int32 bias; int8 model input and
output); a model that stayed float is an error. fed8's metadata (preprocessing, classes,
the input and output quantization) is stored in the flatbuffer's ``metadata`` under the
name ``fed8``.

Limits: ``litert-torch`` exports a fixed batch of 1 here (a dynamic batch breaks
``prepare_pt2e``); the session below feeds larger batches one image at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import DeployError, MissingExtraError

__all__ = ["LITERT_FORMATS", "LiteRTSession", "METADATA_NAME", "build_litert", "check_full_integer", "integer_ops",
           "litert_available", "observer_ranges", "read_litert_metadata", "tensor_quantization"]

LITERT_FORMATS = ("litert_int8", "litert_fp32")
METADATA_NAME = "fed8"
_INTEGER_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def litert_available() -> bool:
    """Whether ``litert-torch`` and the LiteRT interpreter can be imported (without importing them)."""
    return all(importlib.util.find_spec(m) is not None for m in ("litert_torch", "ai_edge_litert"))


def _require() -> None:
    if not litert_available():
        raise MissingExtraError("litert-torch", "litert")


def _annotate_each_max_pool(gm) -> None:
    """Max pooling shares its input's quantization, one node at a time.

    litert-torch 0.10 annotates max pooling per *source partition*; a pooling module
    called twice (fed8's ``cnn`` reuses ``self.pool``) is one partition of two nodes, and
    it then ties the first pool's output to the second pool's input, picked from a set:
    ``prepare_pt2e`` fails or not depending on object addresses. Here each
    ``max_pool2d`` node gets input and output ``SharedQuantizationSpec`` of its own input.
    """
    import torch
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec

    pools = (torch.ops.aten.max_pool2d.default, torch.ops.aten.max_pool2d_with_indices.default)
    for n in gm.graph.nodes:
        if n.op != "call_function" or n.target not in pools:
            continue
        src = n.args[0]
        qa = src.meta.get("quantization_annotation")
        if qa is None or not qa._annotated or qa.output_qspec is None:
            continue  # the producer stays float: so does the pool
        shared = SharedQuantizationSpec(src)
        n.meta["quantization_annotation"] = QuantizationAnnotation(input_qspec_map={src: shared},
                                                                   output_qspec=shared, _annotated=True)


def _quantizer():
    """litert-torch's PT2EQuantizer, per-channel symmetric weights, MinMax activation observers (ranges we set)."""
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e.observer import MinMaxObserver

    class Quantizer(PT2EQuantizer):
        STATIC_OPS = [op for op in PT2EQuantizer.STATIC_OPS if op != "max_pool2d"]

        def annotate(self, model):
            model = super().annotate(model)
            _annotate_each_max_pool(model)
            return model

    cfg = get_symmetric_quantization_config(is_per_channel=True)
    act = dataclasses.replace(cfg.input_activation, observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
    return Quantizer().set_global(dataclasses.replace(cfg, input_activation=act, output_activation=act))


def _probe(input_shape) -> "torch.Tensor":  # noqa: F821
    import torch

    return torch.randn((1, *input_shape), generator=torch.Generator().manual_seed(0))


def observer_ranges(prepared, onnx_fp32: str | Path, ranges: Mapping[str, tuple[float, float]], input_shape
                    ) -> dict[str, tuple[str, tuple[float, float]]]:
    """For every activation observer of ``prepared``: the ONNX tensor it watches and that tensor's range.

    Raises
    ------
    DeployError
        An observed tensor matches no ONNX tensor with a calibrated range, or matches tensors
        whose ranges differ (ambiguous).
    """
    from torchao.quantization.pt2e.observer import MinMaxObserver

    from .calibrate import activations

    obs = {n: m for n, m in prepared.named_modules() if type(m) is MinMaxObserver}
    seen: dict[str, np.ndarray] = {}
    hooks = [m.register_forward_pre_hook(lambda _m, a, n=n: seen.__setitem__(n, a[0].detach().numpy().copy()))
             for n, m in obs.items()]
    x = _probe(input_shape)
    try:
        prepared(x)
    finally:
        for h in hooks:
            h.remove()
    names = sorted(ranges)
    onnx_vals = next(activations(onnx_fp32, names, x.numpy(), 1))
    out = {}
    for n, t in seen.items():
        tol = 1e-4 * max(float(np.abs(t).max()), 1e-6)
        hits = [k for k, v in onnx_vals.items() if v.shape == t.shape and np.allclose(v, t, rtol=1e-4, atol=tol)]
        if not hits:
            raise DeployError(f"LiteRT calibration: the tensor observed by {n} (shape {t.shape}) matches no calibrated "
                              "tensor of the FP32 ONNX model, so its range cannot come from the clients' statistics. "
                              "Use the ONNX formats for this model, or report it as a bug.")
        if len({ranges[k] for k in hits}) > 1:
            raise DeployError(f"LiteRT calibration: the tensor observed by {n} matches {', '.join(hits)}, whose "
                              "calibrated ranges differ; refusing to guess.")
        out[n] = (hits[0], ranges[hits[0]])
    return out


@contextlib.contextmanager
def _quiet():
    """Send the converter's progress lines and C++ logs (file descriptors 1 and 2) to a file; its tail on failure."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        except DeployError:  # fed8's own refusal (e.g. an unmapped observer): already says what and why
            raise
        except Exception as e:
            sys.stdout.flush()
            sys.stderr.flush()
            log.seek(0)
            tail = log.read().decode(errors="replace")[-2000:]
            raise DeployError(f"LiteRT conversion failed: {type(e).__name__}: {e}\nconverter output (tail):\n{tail}") from e
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _export(module, example, path: Path, quant_config=None) -> None:
    import litert_torch

    edge = litert_torch.convert(module, (example,), quant_config=quant_config) if quant_config else \
        litert_torch.convert(module, (example,))
    edge.export(str(path))


def build_litert(model, input_shape, path: str | Path, *, fmt: str, metadata: Mapping,
                 ranges: Mapping[str, tuple[float, float]] | None = None, onnx_fp32: str | Path | None = None) -> Path:
    """Write ``path`` (``.tflite``): ``fmt = "litert_int8"`` (full-integer, calibrated from ``ranges``) or ``"litert_fp32"``.

    ``ranges`` are the federated activation ranges keyed by the tensor names of the FP32
    ONNX model ``onnx_fp32`` (what the ONNX formats were calibrated with).
    """
    _require()
    import torch

    if fmt not in LITERT_FORMATS:
        raise DeployError(f"LiteRT format must be one of {', '.join(LITERT_FORMATS)}; got {fmt!r}.")
    path = Path(path)
    model = model.eval()
    example = _probe(input_shape)
    meta = {**metadata, "format": fmt, "batch": 1}
    with tempfile.TemporaryDirectory(prefix="fed8-litert-") as tmp:
        raw = Path(tmp) / "model.tflite"
        with torch.no_grad(), _quiet():
            if fmt == "litert_fp32":
                _export(model, example, raw)
            else:
                if ranges is None or onnx_fp32 is None:
                    raise DeployError("litert_int8 needs the federated activation ranges and the FP32 ONNX model.")
                from litert_torch.quantize.quant_config import QuantConfig
                from torchao.quantization.pt2e import move_exported_model_to_eval
                from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

                quantizer = _quantizer()
                prepared = prepare_pt2e(torch.export.export(model, (example,)).module(), quantizer)
                mapping = observer_ranges(prepared, onnx_fp32, ranges, input_shape)  # also fills the weight observers
                for n, mod in prepared.named_modules():
                    if n in mapping:
                        lo, hi = mapping[n][1]
                        mod.reset_min_max_vals()
                        mod.min_val.resize_(()).fill_(lo)
                        mod.max_val.resize_(()).fill_(hi)
                meta["calibrated_tensors"] = {n: t for n, (t, _) in sorted(mapping.items())}
                converted = move_exported_model_to_eval(convert_pt2e(prepared, fold_quantize=False))
                _export(converted, example, raw, QuantConfig(pt2e_quantizer=quantizer))
        sess = LiteRTSession(raw, threads=1)
        meta["input_quantization"], meta["output_quantization"] = sess.input_quantization, sess.output_quantization
        _write_with_metadata(raw, path, meta)
    if fmt == "litert_int8":
        check_full_integer(path)
    return path


def _write_with_metadata(src: Path, dst: Path, meta: Mapping) -> None:
    """``src`` with ``meta`` (JSON) as flatbuffer metadata ``fed8``, written atomically to ``dst``."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils as fu

    model = fu.read_model(str(src))
    buf = schema.BufferT()
    buf.data = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    model.buffers.append(buf)
    md = schema.MetadataT()
    md.name = METADATA_NAME
    md.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name not in (METADATA_NAME, METADATA_NAME.encode())] + [md]
    tmp = dst.with_name(dst.name + ".tmp")
    fu.write_model(model, str(tmp))
    os.replace(tmp, dst)


def read_litert_metadata(path: str | Path) -> dict:
    """fed8's metadata of a ``.tflite`` file ({} if it has none)."""
    from ai_edge_litert import schema_py_generated as schema

    data = Path(path).read_bytes()
    m = schema.Model.GetRootAs(data, 0)
    for i in range(m.MetadataLength()):
        md = m.Metadata(i)
        if md.Name() in (METADATA_NAME, METADATA_NAME.encode()):
            return json.loads(m.Buffers(md.Buffer()).DataAsNumpy().tobytes().decode())
    return {}


def _interpreter(path, threads: int):
    _require()
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=threads)
    it.allocate_tensors()
    return it


def tensor_quantization(path: str | Path) -> dict[str, dict]:
    """Per tensor name: dtype and quantization (scales, zero points) of a ``.tflite`` model."""
    it = _interpreter(path, 1)
    return {t["name"]: {"dtype": np.dtype(t["dtype"]).name, "scales": t["quantization_parameters"]["scales"].tolist(),
                        "zero_points": t["quantization_parameters"]["zero_points"].tolist(), "index": t["index"]}
            for t in it.get_tensor_details()}


def check_full_integer(path: str | Path) -> None:
    """A :class:`DeployError` unless every conv / fully-connected op and the model's input and output are integer."""
    it = _interpreter(path, 1)
    dtype = {t["index"]: np.dtype(t["dtype"]).name for t in it.get_tensor_details()}
    bad = []
    for op in it._get_ops_details():
        if op["op_name"] not in _INTEGER_OPS:
            continue
        ins = [i for i in op["inputs"] if i >= 0]
        want = ["int8", "int8", "int32"][: len(ins)]
        got = [dtype[i] for i in ins] + [dtype[o] for o in op["outputs"]]
        if [dtype[i] for i in ins] != want or any(dtype[o] != "int8" for o in op["outputs"]):
            bad.append(f"{op['op_name']} #{op['index']} ({', '.join(got)})")
    io = [("input", d) for d in it.get_input_details()] + [("output", d) for d in it.get_output_details()]
    bad += [f"model {kind} {d['name']} ({np.dtype(d['dtype']).name})" for kind, d in io if np.dtype(d["dtype"]) != np.int8]
    if bad:
        raise DeployError(f"{Path(path).name} is not a full-integer INT8 model: {'; '.join(bad)} "
                          "(want int8 inputs and weights, int32 bias, int8 outputs). It would run float kernels on "
                          "the device; refusing to ship it.")


class _Input:
    def __init__(self, name: str) -> None:
        self.name = name


class LiteRTSession:
    """A ``.tflite`` model in LiteRT's interpreter (XNNPACK, ``threads``) behind ORT's ``get_inputs()`` / ``run()``.

    Float32 in and out: an int8 model's input is quantized with the file's own input scale
    and zero point (``q = clip(round(x / s) + z, -128, 127)``) and its output dequantized.
    The file takes batch 1, so a batch runs image by image.
    """

    def __init__(self, path: str | Path, threads: int = 2) -> None:
        self._it = _interpreter(path, threads)
        self._in = self._it.get_input_details()[0]
        self._out = self._it.get_output_details()[0]
        self.batch = int(self._in["shape"][0])
        self.input_quantization = self._qparams(self._in)
        self.output_quantization = self._qparams(self._out)
        self._in_index, self._out_index = self._in["index"], self._out["index"]
        if self.input_quantization is not None:  # per call: one multiply, round, clip and cast
            q = self.input_quantization
            self._scale = np.float32(q["scale"])
            info = np.iinfo(q["dtype"])
            self._qmin, self._qmax, self._qdtype = info.min, info.max, np.dtype(q["dtype"])

    @staticmethod
    def _qparams(d) -> dict | None:
        if np.dtype(d["dtype"]) == np.float32:
            return None
        s, z = d["quantization"]
        return {"dtype": np.dtype(d["dtype"]).name, "scale": float(s), "zero_point": int(z)}

    def get_inputs(self) -> list:
        return [_Input(self._in["name"])]

    def _one(self, x: np.ndarray) -> np.ndarray:
        q = self.input_quantization
        if q is not None:
            x = np.clip(np.rint(x / self._scale) + q["zero_point"], self._qmin, self._qmax).astype(self._qdtype)
        self._it.set_tensor(self._in_index, np.ascontiguousarray(x))
        self._it.invoke()
        y = self._it.get_tensor(self._out_index)
        o = self.output_quantization
        return y.astype(np.float32) if o is None else (y.astype(np.float32) - o["zero_point"]) * o["scale"]

    def run(self, output_names, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        x = np.asarray(next(iter(feeds.values())), dtype=np.float32)
        b = self.batch
        if x.shape[0] == b:
            return [self._one(x)]
        return [np.concatenate([self._one(x[i : i + b]) for i in range(0, x.shape[0], b)])]


def integer_ops(path: str | Path) -> list[str]:
    """Op names of a ``.tflite`` model whose inputs and outputs are all integer (what runs integer kernels)."""
    it = _interpreter(path, 1)
    dtype = {t["index"]: np.dtype(t["dtype"]) for t in it.get_tensor_details()}
    return sorted({op["op_name"] for op in it._get_ops_details() if op["op_name"] != "DELEGATE"
                   and all(dtype[i].kind in "iu" for i in [*op["inputs"], *op["outputs"]] if i >= 0)})
