"""Post-training quantization of an FP32 ONNX model to INT8 or FP8 QDQ models.

* INT8: ONNX Runtime's static quantizer (QDQ format, signed per-channel weights,
  unsigned affine activations) with ranges from federated calibration. The result is
  checked to run integer kernels on ORT CPU; a model that silently stays float is an error.
* ``float8_e4m3fn`` / ``float8_e5m2``: QDQ nodes written here (ORT's quantizer has no
  E5M2 and calibrates E4M3 only by matching a standard deviation). Weights are stored in
  8 bits with a per-output-channel scale chosen by :func:`fed8.formats.choose_scale_fp8`;
  activation inputs of Conv / Gemm / MatMul get a QuantizeLinear -> DequantizeLinear
  pair with a per-tensor scale from :func:`fp8_activation_scales`: ``amax`` maps the
  calibrated range onto the format's largest finite value, ``std`` is ORT's rule
  (``std(x) / std(all finite FP8 values)``). ORT's CPU has FP8 Q/DQ kernels but no FP8
  arithmetic: the math between Q/DQ runs in float32.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch

from ..errors import DeployError
from ..formats import PerChannel, choose_scale_fp8, fp8_format, from_bits, quantize_fp8
from .calibrate import Histogram, to_tensors_data
from .export import set_metadata
from .runtime import FP8_CPU_SESSION_CONFIG, INTEGER_OPS, kernel_ops

__all__ = ["COMPUTE_OPS", "FORMATS", "FP8_ACTIVATION_SCALES", "fp8_activation_scales", "quantize_fp8_model",
           "quantize_int8_model"]

FORMATS = ("int8", "float8_e4m3fn", "float8_e5m2")
FP8_ACTIVATION_SCALES = ("amax", "std")
COMPUTE_OPS = ("Conv", "Gemm", "MatMul")
# Ops that commute with rounding to a grid (monotone, or pure data movement):
# Q(op(x)) == op(Q(x)) for the same scale.
_COMMUTING = ("Relu", "MaxPool", "Flatten", "Reshape")


def _hoist(src: str, producers: dict, consumers: dict) -> tuple[str, str | None]:
    """Walk back from ``src`` through commuting ops with a single consumer.

    Returns the earliest tensor of the chain and the node that consumes it inside the
    chain (None if ``src`` itself). ORT's extended optimizations rewrite
    ``Relu -> QuantizeLinear`` as if the zero point clipped negatives, which is false
    for FP8 (it is for uint8); quantizing before the Relu gives identical values and
    no such pattern.
    """
    t, first = src, None
    while t in producers and producers[t].op_type in _COMMUTING and len(consumers.get(t, ())) <= 1:
        first = producers[t]
        t = first.input[0]
        if len(consumers.get(t, ())) != 1:
            break
    return t, first


def quantize_int8_model(fp32_path: str | Path, out_path: str | Path, ranges: Mapping[str, tuple[float, float]], *,
                        per_channel: bool = True, nodes_to_exclude: list[str] | None = None,
                        tune_graph: bool = True, reduce_range: bool | None = None) -> Path:
    """INT8 QDQ model via ``onnxruntime.quantization.quantize_static`` with the given activation ranges.

    ``reduce_range``: weights in 7 bits (``[-64, 64]``), so that ONNX Runtime's uint8 x int8 kernels
    on x86 CPUs without VNNI cannot saturate (:func:`fed8.deploy.runtime.int8_pair_saturation`);
    None: where this CPU is one of them. Stored in the model's metadata (``int8_weight_bits``).

    With ``tune_graph`` the float graph is first rewritten by :func:`fed8.deploy.int8_graph.tune_for_int8`
    (exact rewrites that ORT's CPU integer kernels run faster; the integers computed are
    the same); :func:`fed8.deploy.int8_graph.pin_quantize` keeps ORT from moving their
    input quantization in front of a float space-to-depth.
    The rewrites applied are stored in the model's metadata (``int8_graph_rewrites``).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    from .export import read_metadata, set_metadata
    from .int8_graph import pin_quantize, tune_for_int8

    out_path = Path(out_path)
    source = fp32_path
    if reduce_range is None:
        from .runtime import int8_pair_saturation

        reduce_range = int8_pair_saturation() is not None
    with tempfile.TemporaryDirectory(prefix="fed8-q-") as tmp:
        rewrites: list[str] = []
        exclude = list(nodes_to_exclude or [])
        if tune_graph:
            tuned = tune_for_int8(onnx.load(str(fp32_path)), skip=set(nodes_to_exclude or ()))
            if tuned.rewrites:
                missing = sorted({v for v in tuned.aliases.values() if v not in ranges})
                if missing:
                    raise DeployError(f"no calibration range for tensor(s) {missing}; calibrate the same ONNX "
                                      "model that is quantized.")
                ranges = {**ranges, **{k: ranges[v] for k, v in tuned.aliases.items()}}
                fp32_path = Path(tmp) / "tuned.onnx"
                onnx.save(tuned.model, str(fp32_path))
                rewrites = tuned.rewrites
                exclude += tuned.float_nodes
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(to_tensors_data(ranges), cache)
        root = logging.getLogger()  # ORT logs a pre-processing hint on the root logger every call
        level = root.level
        root.setLevel(max(level, logging.ERROR))
        try:
            quantize_static(str(fp32_path), str(out_path), None, quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=per_channel,
                            calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=str(cache),
                            nodes_to_exclude=exclude, reduce_range=reduce_range,
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        finally:
            root.setLevel(level)
        q = onnx.load(str(out_path))
        if rewrites:
            pin_quantize(q, set(tuned.pinned_inputs))
        set_metadata(q, {**read_metadata(out_path), "int8_weight_bits": 7 if reduce_range else 8,
                         **({"int8_graph_rewrites": rewrites} if rewrites else {})})
        onnx.checker.check_model(q)
        onnx.save(q, str(out_path))

    used = kernel_ops(out_path)
    compute = {n.name for n in onnx.load(str(source)).graph.node if n.op_type in COMPUTE_OPS}
    if not (set(used) & INTEGER_OPS) and (not compute or compute - set(nodes_to_exclude or ())):
        raise DeployError(f"{out_path}: the INT8 model runs no integer kernel on ORT CPU (ops: {dict(used)}); "
                          "it would silently compute in float. Check that the model has Conv/Gemm/MatMul layers.")
    return out_path


def fp8_activation_scales(fmt: str, ranges: Mapping[str, tuple[float, float]], *, method: str = "amax",
                          hists: Mapping[str, "Histogram"] | None = None) -> dict[str, float]:
    """Per-tensor FP8 activation scales.

    ``amax``: ``s = max(|min|, |max|) / fmt.max``, the calibrated range fills the format.
    ``std``: ``s = std(x) / std(V)`` with ``V`` every finite value of the format, which is
    ONNX Runtime's default FP8 calibration (``compute_scale_zp_float8``); it needs the
    moments of the histogram pass.
    """
    f = fp8_format(fmt)
    if method == "amax":
        return {k: (max(abs(lo), abs(hi)) or 1.0) / f.max for k, (lo, hi) in ranges.items()}
    if method == "std":
        if hists is None:
            raise DeployError("FP8 'std' activation scales need the histogram calibration pass (its moments).")
        v = from_bits(torch.arange(256, dtype=torch.uint8), f).double()
        std_fmt = float(v[torch.isfinite(v)].std(unbiased=False))
        return {k: (hists[k].std or 1.0) / std_fmt if k in hists else (max(abs(lo), abs(hi)) or 1.0) / f.max
                for k, (lo, hi) in ranges.items()}
    raise DeployError(f"FP8 activation scale must be one of {', '.join(FP8_ACTIVATION_SCALES)}; got {method!r}.")


def _tensor(name: str, arr: np.ndarray | bytes, dims, dtype: int):
    from onnx import helper

    if isinstance(arr, bytes):
        return helper.make_tensor(name, dtype, dims, vals=arr, raw=True)
    return helper.make_tensor(name, dtype, dims, vals=np.asarray(arr).tobytes(), raw=True)


def quantize_fp8_model(fp32_path: str | Path, out_path: str | Path, act_scales: Mapping[str, float],
                       fmt: str, *, scale_method: str = "amax", keep_float: Iterable[str] = ()) -> Path:
    """Write an FP8 QDQ model: 8-bit weights (per-channel scale) and Q/DQ on compute-op inputs.

    Parameters
    ----------
    act_scales
        Per-tensor activation scale (see :func:`fp8_activation_scales`).
    fmt
        ``"float8_e4m3fn"`` or ``"float8_e5m2"``.
    scale_method
        Weight scale selection per output channel (``amax``, ``percentile``, ``mse``).
    keep_float
        Names of Conv / Gemm / MatMul nodes left in float (the accuracy gate's fallback).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    f = fp8_format(fmt)
    keep_float = frozenset(keep_float)
    elem = {"float8_e4m3fn": TensorProto.FLOAT8E4M3FN, "float8_e5m2": TensorProto.FLOAT8E5M2}[f.name]
    model = onnx.load(str(fp32_path))
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    new_nodes, act_q = [], {}
    producers = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    rewire = {}  # id(first node of a hoisted chain) -> (dequantized tensor, its Q/DQ nodes)
    replaced: set[str] = set()  # float weights now stored in FP8
    zero8 = f"fed8_zero_{f.name}"
    g.initializer.append(_tensor(zero8, bytes([0]), [], elem))
    for node in g.node:
        if node.op_type in COMPUTE_OPS and node.name not in keep_float and len(node.input) > 1 and node.input[1] in inits:
            src = node.input[0]
            if src not in act_scales:
                raise DeployError(f"no calibration range for tensor {src!r} (input of {node.name}); "
                                  "calibrate the same ONNX model that is quantized.")
            if src not in act_q:
                t, first = _hoist(src, producers, consumers)
                s_name = f"{t}_fp8_scale"
                g.initializer.append(numpy_helper.from_array(np.array(act_scales[src], dtype=np.float32), s_name))
                q, dq = f"{t}_fp8_q", f"{t}_fp8_dq"
                qdq = [helper.make_node("QuantizeLinear", [t, s_name, zero8], [q], name=f"{t}_Q", saturate=1),
                       helper.make_node("DequantizeLinear", [q, s_name, zero8], [dq], name=f"{t}_DQ")]
                if first is None:
                    new_nodes.extend(qdq)
                    act_q[src] = dq
                else:  # quantize at the start of the chain; the chain then carries grid values
                    rewire[id(first)] = (dq, qdq)
                    act_q[src] = src
            node.input[0] = act_q[src]
            w_name = node.input[1]
            w = torch.from_numpy(numpy_helper.to_array(inits[w_name]).copy())
            transposed = node.op_type == "Gemm" and not any(a.name == "transB" and a.i for a in node.attribute)
            axis = 1 if (node.op_type == "MatMul" or transposed) else 0  # the output-channel axis
            scale = choose_scale_fp8(w, f, method=scale_method, granularity=PerChannel(axis))
            bits = quantize_fp8(w, scale, f)
            qw, sw, zw = f"{w_name}_fp8", f"{w_name}_fp8_scale", f"{w_name}_fp8_zero"
            g.initializer.append(_tensor(qw, bits.numpy().tobytes(), list(w.shape), elem))
            g.initializer.append(numpy_helper.from_array(scale.reshape(-1).numpy().astype(np.float32), sw))
            g.initializer.append(_tensor(zw, bytes(w.shape[axis]), [w.shape[axis]], elem))
            new_nodes.append(helper.make_node("DequantizeLinear", [qw, sw, zw], [f"{w_name}_fp8_dq"],
                                              name=f"{w_name}_DQ", axis=axis))
            node.input[1] = f"{w_name}_fp8_dq"
            replaced.add(w_name)
        new_nodes.append(node)
    if rewire:  # insert hoisted Q/DQ pairs just before the chain's first node
        ordered = []
        for n in new_nodes:
            if id(n) in rewire:
                dq, qdq = rewire[id(n)]
                ordered.extend(qdq)
                n.input[0] = dq
            ordered.append(n)
        new_nodes = ordered
    keep = [t for t in g.initializer if t.name not in replaced]
    del g.initializer[:]
    g.initializer.extend(keep)
    del g.node[:]
    g.node.extend(new_nodes)
    onnx.checker.check_model(model)
    # Every FP8 file asks for the ORT session config it must run with, from the first time it is scored.
    props = {p.key: p.value for p in model.metadata_props}
    set_metadata(model, {**json.loads(props.get("fed8", "{}")), "ort_session_config": FP8_CPU_SESSION_CONFIG})
    out_path = Path(out_path)
    onnx.save(model, str(out_path))
    return out_path
