"""Inference sessions on CPU: ONNX Runtime (the default) or OpenVINO; latency, and which kernels ORT runs.

OpenVINO (optional extra ``fed8[openvino]``) reads the same ONNX files, QDQ models
included, and runs INT8 convolutions and GEMMs with oneDNN kernels (AMX / VNNI on
recent Intel CPUs). Its session here is a thin adapter with ORT's ``get_inputs()`` /
``run()`` surface, so every measurement function takes either.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

__all__ = ["FP8_CPU_SESSION_CONFIG", "INTEGER_OPS", "RUNTIMES", "int8_pair_saturation", "kernel_ops", "latency_ms",
           "openvino_available", "run_logits", "saturation_reason", "session"]

RUNTIMES = ("onnxruntime", "openvino")

# Operators that compute in integers on ORT CPU once QDQ groups are fused.
INTEGER_OPS = frozenset({"QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "ConvInteger",
                         "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QLinearAdd", "QLinearGlobalAveragePool"})


# For FP8 models on CPU: ORT has no FP8 arithmetic, so nothing is lost by letting its
# constant folding turn the FP8 weights' DequantizeLinear into float32 constants once,
# at load, instead of on every run (batch-1 latency drops ~7x on the MNIST cnn; the
# file stays 8-bit). Activations still round to FP8 in every run.
FP8_CPU_SESSION_CONFIG = {"session.disable_quant_qdq": "1"}


def int8_pair_saturation() -> str | None:
    """Why ONNX Runtime's INT8 kernels can saturate on this CPU, or None where they cannot.

    On x86 CPUs without VNNI (SSE4.1, AVX2 and AVX-512 without ``avx512_vnni`` / ``avx_vnni``:
    AMD Zen 2 and 3, Intel before Cascade Lake and Alder Lake) MLAS multiplies uint8 activations
    by int8 weights with ``vpmaddubsw``, which adds each pair of products into a 16-bit integer
    with saturation: ``255 * 127 * 2 = 64,770`` does not fit ``32,767``, and the result is silently
    wrong (ONNX Runtime's quantization docs; oneDNN's "Nuances of int8 computations"). Weights in
    7 bits (``[-64, 64]``: ``255 * 64 * 2 = 32,640``) cannot saturate. VNNI's ``vpdpbusd`` adds
    into 32 bits, and ARM's dot products have no such limit. x86 CPUs whose flags cannot be read
    (no ``/proc/cpuinfo``) count as saturating: the cautious answer costs one bit of weight precision.
    """
    import platform

    machine = platform.machine()
    if machine.lower() not in _X86:
        return None
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        flags = None
    return saturation_reason(machine, flags)


_X86 = ("x86_64", "amd64", "x86", "i386", "i686")


def saturation_reason(machine: str, flags: list[str] | None) -> str | None:
    """:func:`int8_pair_saturation` for a CPU of architecture ``machine`` with the instruction-set ``flags`` of
    ``/proc/cpuinfo`` (None: unknown)."""
    if machine.lower() not in _X86:
        return None
    if flags is None:
        return "an x86 CPU whose instruction sets could not be read (no /proc/cpuinfo)"
    if {"avx512_vnni", "avx_vnni"} & set(flags):
        return None
    return "this x86 CPU has no VNNI (" + ("AVX2" if "avx2" in flags else "no AVX2") + ")"


def openvino_available() -> bool:
    """Whether the optional OpenVINO runtime can be imported."""
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


class _OpenVINOSession:
    """An OpenVINO CPU model compiled for latency, behind ORT's ``get_inputs()`` / ``run()`` surface."""

    def __init__(self, path: Path, threads: int) -> None:
        try:
            import openvino as ov
        except ImportError:
            from ..errors import MissingExtraError

            raise MissingExtraError("openvino", "openvino") from None
        core = ov.Core()
        # f32 inference precision: on CPUs with AMX / AVX512-BF16, OpenVINO would otherwise run the
        # float parts of a model in bfloat16, and float32 numbers would not be float32.
        self._model = core.compile_model(core.read_model(str(path)), "CPU", {
            "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32"})
        self._request = self._model.create_infer_request()
        self._inputs = [_Input(p.get_any_name()) for p in self._model.inputs]

    def get_inputs(self) -> list:
        return self._inputs

    def run(self, output_names, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        # shared buffers (no copy in, views out; about 0.2 ms less per call at batch 1), then
        # a copy of each output, because the next infer() overwrites the shared ones
        res = self._request.infer(feeds, share_inputs=True, share_outputs=True)
        return [np.array(res[o], copy=True) for o in self._model.outputs]


class _Input:
    def __init__(self, name: str) -> None:
        self.name = name


def session(path: str | Path, *, threads: int = 2, optimized_path: str | Path | None = None,
            config: dict[str, str] | None = None, runtime: str = "onnxruntime"):
    """A CPU inference session with ``threads`` threads.

    ``runtime = "onnxruntime"``: an ORT session with all graph optimizations and session
    ``config`` entries; without ``config``, the entries a fed8 model recommends in its
    metadata (``fed8.ort_session_config``) are used. ``runtime = "openvino"``: the model
    compiled by OpenVINO for CPU latency in float32 precision (``config`` and
    ``optimized_path`` are ORT-only). A ``.tflite`` file always opens in LiteRT's
    interpreter (:class:`fed8.deploy.litert.LiteRTSession`).
    """
    if Path(path).suffix == ".safetensors":  # a torch_float8_e4m3fn module: PyTorch runs it
        from .fp8_linear import TorchSession, load_fp8_model

        return TorchSession(load_fp8_model(path), threads=threads)
    if Path(path).suffix == ".tflite":  # LiteRT's interpreter is the only runtime of a .tflite file
        from .litert import LiteRTSession

        return LiteRTSession(path, threads=threads)
    if runtime == "openvino":
        return _OpenVINOSession(Path(path), threads)
    if runtime != "onnxruntime":
        from ..errors import ConfigError

        raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}.")
    import onnxruntime as ort

    if config is None:
        from .export import read_metadata

        config = read_metadata(path).get("ort_session_config", {})
    so = ort.SessionOptions()
    for k, v in config.items():
        so.add_session_config_entry(k, str(v))
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_logits(sess, x: np.ndarray, *, batch_size: int = 500) -> np.ndarray:
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + batch_size]})[0] for i in range(0, x.shape[0], batch_size)])


def kernel_ops(path: str | Path) -> Counter:
    """Op types of the graph ORT actually executes (after its optimizations and QDQ fusion)."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        opt = Path(tmp) / "optimized.onnx"
        session(path, threads=1, optimized_path=opt, config={})
        return Counter(n.op_type for n in onnx.load(str(opt)).graph.node)


def latency_ms(sess, shape: tuple[int, ...], *, batch: int, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time in milliseconds of one ``sess.run`` at ``batch``."""
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
    for _ in range(warmup):
        sess.run(None, {name: x})
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)
