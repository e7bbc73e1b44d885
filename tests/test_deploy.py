import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import fed8
from conftest import interrupted_run
from fed8.cli import main
from fed8.deploy.calibrate import client_ranges, merge_ranges
from fed8.deploy.export import export_onnx, read_metadata
from fed8.deploy.quantize import fp8_activation_scales, quantize_fp8_model, quantize_int8_model
from fed8.deploy.runtime import INTEGER_OPS, kernel_ops, run_logits, session
from fed8.errors import CheckpointError, ConfigError, DeployError


class OddNet(nn.Module):
    """First layer with 7 output channels (odd), last layer a Gemm: both must be quantized.

    ``fc1 -> Relu -> fc2`` is the pattern ORT's optimizer rewrites wrongly for FP8 Q/DQ.
    """

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 7, 3, padding=1)
        self.fc1 = nn.Linear(7 * 4 * 4, 33)
        self.fc = nn.Linear(33, 5)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
        return self.fc(torch.relu(self.fc1(torch.flatten(x, 1))))


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("odd")
    model = OddNet().eval()
    path = export_onnx(model, (3, 8, 8), d / "fp32.onnx", metadata={"classes": list("abcde")})
    x = torch.randn(300, 3, 8, 8).numpy()
    return model, path, x, d


def test_export_parity_and_metadata(odd):
    model, path, x, _ = odd
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    out = run_logits(session(path), x)
    assert (out.argmax(1) == ref.argmax(1)).all() and np.abs(out - ref).max() < 1e-4
    assert read_metadata(path)["classes"] == list("abcde")


def test_federated_minmax_equals_union_exactly(odd):
    _, path, x, _ = odd
    parts = [x[:50], x[50:170], x[170:]]
    merged = merge_ranges(client_ranges(path, p) for p in parts)
    union = client_ranges(path, x)
    assert merged.keys() == union.keys() and len(merged) >= 4
    assert merged == union  # exact, not approximately
    # and one client alone sees a narrower range somewhere
    assert any(client_ranges(path, parts[0])[k] != union[k] for k in union)


def _weight_dq_inputs(path):
    m = onnx.load(str(path))
    inits = {t.name: t.data_type for t in m.graph.initializer}
    return {n.input[0]: inits.get(n.input[0]) for n in m.graph.node if n.op_type == "DequantizeLinear"}


def test_int8_quantizes_first_and_last_layer_and_runs_integer_kernels(odd):
    _, path, x, d = odd
    ranges = merge_ranges([client_ranges(path, x)])
    for tune in (False, True):  # the first conv is rewritten by the INT8 graph tuning; both stay int8
        q = quantize_int8_model(path, d / "int8.onnx", ranges, tune_graph=tune)
        dq = _weight_dq_inputs(q)
        first = "/conv/Conv/phase_w" if tune else "conv.weight"
        assert any(first in k and v == onnx.TensorProto.INT8 for k, v in dq.items())
        assert any("fc.weight" in k and v == onnx.TensorProto.INT8 for k, v in dq.items())
        ops = kernel_ops(q)
        assert {"QLinearConv", "QGemm"} <= set(ops) and set(ops) & INTEGER_OPS
        a, b = run_logits(session(path), x), run_logits(session(q), x)
        assert (a.argmax(1) == b.argmax(1)).mean() > 0.9


def _default_vs_unoptimized(q, x):
    import onnxruntime as ort

    default = ort.InferenceSession(str(q), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = ort.InferenceSession(str(q), so, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    return default, plain


@pytest.mark.parametrize("fmt, code", [("float8_e4m3fn", onnx.TensorProto.FLOAT8E4M3FN),
                                       ("float8_e5m2", onnx.TensorProto.FLOAT8E5M2)])
def test_fp8_models_work_in_a_default_session(odd, fmt, code, monkeypatch):
    import fed8.deploy.quantize as qmod

    _, path, x, d = odd
    ranges = merge_ranges([client_ranges(path, x)])
    q = quantize_fp8_model(path, d / f"{fmt}.onnx", fp8_activation_scales(fmt, ranges), fmt)
    dq = _weight_dq_inputs(q)
    assert [v for k, v in dq.items() if "conv.weight" in k] == [code]
    assert [v for k, v in dq.items() if "fc.weight" in k] == [code]
    assert not any(t.name in ("conv.weight", "fc.weight") for t in onnx.load(str(q)).graph.initializer)
    default, plain = _default_vs_unoptimized(q, x)
    # Same graph, with and without ORT's optimizations: equal up to summation order (a rare
    # FP8 rounding flip moves a logit by ~1e-3). ORT's Relu->Q rewrite changes far more.
    assert (default.argmax(1) == plain.argmax(1)).all() and np.abs(default - plain).max() < 0.05
    fp32 = run_logits(session(path), x)
    assert (default.argmax(1) == fp32.argmax(1)).mean() > 0.9
    # Without hoisting Q/DQ before Relu chains, the default session breaks the model.
    monkeypatch.setattr(qmod, "_hoist", lambda src, producers, consumers: (src, None))
    bad = quantize_fp8_model(path, d / f"{fmt}_nohoist.onnx", fp8_activation_scales(fmt, ranges), fmt)
    default, plain = _default_vs_unoptimized(bad, x)
    assert np.abs(default - plain).max() > 0.05


def test_int8_model_without_compute_layers_fails_loudly(tmp_path):
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["input"], ["logits"])], "g",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)]), str(path))
    ranges = client_ranges(path, np.random.randn(10, 4).astype(np.float32))
    with pytest.raises(DeployError, match="runs no integer kernel"):
        quantize_int8_model(path, tmp_path / "q.onnx", ranges)


def test_errors(tmp_path, small):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a model")
    with pytest.raises(DeployError, match="not an ONNX model"):
        read_metadata(junk)
    with pytest.raises(ConfigError, match="name the FP8 format exactly"):
        fed8.load_config(None, ['quantize.formats="int8,fp8"'])
    with pytest.raises(ConfigError, match="'bf8' is not a format"):
        fed8.load_config(None, ['quantize.formats="bf8"'])
    cfg = fed8.load_config(None, small)

    interrupted_run(cfg, tmp_path / "unfinished", 1)
    with pytest.raises(CheckpointError, match="has not finished"):
        from fed8.stages.quantize import quantize_run
        quantize_run(tmp_path / "unfinished")


@pytest.mark.slow
def test_run_with_quantize_stage(tmp_path, small):
    cfg = fed8.load_config(None, small + ["quantize.enabled=true", "data.subset=1000", "train.rounds=3"])
    res = fed8.run(cfg, out=tmp_path / "r")
    q = json.loads((tmp_path / "r/deploy/quantization.json").read_text())
    names = [r["format"] for r in q["formats"]]
    from fed8.deploy.litert import litert_available

    lite = ["litert_int8"] if litert_available() else []  # in the default formats; skipped with a note without it
    assert names == ["float32", "int8", "float8_e4m3fn", "float8_e5m2", *lite]
    assert lite or any("pip install 'fed8[litert]'" in n for n in q["notes"])
    assert q["float32_parity"]["top1_agreement"] == 1.0
    assert q["calibration"]["clients"] == 4 and "only per-tensor statistics" in q["calibration"]["where"]
    rows = {r["format"]: r for r in q["formats"]}
    assert rows["int8"]["integer_kernels"] and not rows["float8_e4m3fn"]["integer_kernels"]
    for f in ("int8", "float8_e4m3fn", "float8_e5m2"):
        assert rows[f]["bytes_ratio_to_float32"] < 0.26
        assert abs(rows[f]["accuracy_delta_points"]) < 3.0
        assert rows[f]["top1_agreement_with_float32"] > 0.95
        assert rows[f]["on_device"]["client_accuracy_mean"] is not None
        assert rows[f]["latency_ms_batch1"] > 0 and rows[f]["latency_ms_batch256"] > 0
    from fed8.deploy.export import read_metadata
    from fed8.deploy.runtime import int8_pair_saturation

    bits = 7 if int8_pair_saturation() else 8  # auto: 7-bit weights where this CPU's u8s8 kernels saturate
    assert rows["int8"]["weight_bits"] == bits
    assert read_metadata(tmp_path / "r/deploy/int8.onnx")["int8_weight_bits"] == bits
    assert any("weights in 7 bits" in n for n in q["notes"]) == (bits == 7)
    for f in ("float32", "int8"):
        assert read_metadata(tmp_path / f"r/deploy/{rows[f]['file']}")["preprocess"]["std"] == 0.5
    assert "no FP8 arithmetic" in q["notes"][0]
    assert q["failed"] == [] and all(rows[f]["gate"]["passed"] for f in ("int8", "float8_e5m2"))
    assert q["calibration"]["method"] == "percentile" and "histogram" in q["calibration"]["statistics"]
    # FP8 files recommend folding their weight DQ at load; the result matches a default session
    f8 = tmp_path / "r/deploy/float8_e4m3fn.onnx"
    assert read_metadata(f8)["ort_session_config"] == {"session.disable_quant_qdq": "1"}
    x = np.random.default_rng(0).standard_normal((64, 1, 28, 28)).astype(np.float32)
    folded, default = run_logits(session(f8), x), run_logits(session(f8, config={}), x)
    assert (folded.argmax(1) == default.argmax(1)).mean() > 0.98 and np.abs(folded - default).max() < 0.05
    html = (tmp_path / "r/report.html").read_text()
    assert "<td>float8_e4m3fn</td>" in html
    # laid out for a screen: key/value summary, signed deltas in points, latency as a ratio, calibration as a list
    assert '<h2>Summary</h2><table class="kv">' in html and "<h3>Calibration</h3><table class=\"kv\">" in html
    delta = rows["int8"]["accuracy_delta_points"]
    assert f"<td>{delta:+.2f}</td>" in html
    ratio = rows["int8"]["latency_ms_batch1"] / rows["float32"]["latency_ms_batch1"]
    assert f"<td>{ratio:.2f}x</td>" in html
    for plot in ("deploy_tradeoff.png", "accuracy_vs_bytes.png"):
        assert (tmp_path / "r/plots" / plot).stat().st_size > 1000 and f'alt="{plot[:-4]}"' in html
    assert res.summary["deploy"][1]["format"] == "int8"
    # the CLI re-quantizes a finished run with other formats
    assert main(["quantize", str(tmp_path / "r"), "--formats", "float8_e5m2"]) == 0
    q2 = json.loads((tmp_path / "r/deploy/quantization.json").read_text())
    assert [r["format"] for r in q2["formats"]] == ["float32", "float8_e5m2"]
    assert any("int8.onnx, float8_e4m3fn.onnx" in n and "earlier quantize" in n for n in q2["notes"])
    assert (tmp_path / "r/deploy/int8.onnx").exists()  # nothing deleted
    report = (tmp_path / "r/report.html").read_text()  # refreshed from the new quantization.json
    assert "<td>float8_e5m2</td>" in report and "<td>float8_e4m3fn</td>" not in report
    summary = json.loads((tmp_path / "r/summary.json").read_text())  # the summary follows deploy/ too
    assert [r["format"] for r in summary["deploy"]] == ["float32", "float8_e5m2"]
    # --out writes elsewhere and leaves the run's deploy/ as it was
    assert main(["quantize", str(tmp_path / "r"), "--formats", "int8", "--out", str(tmp_path / "elsewhere")]) == 0
    q3 = json.loads((tmp_path / "elsewhere/quantization.json").read_text())
    assert [r["format"] for r in q3["formats"]] == ["float32", "int8"]
    assert not any("earlier quantize" in n for n in q3["notes"])
    assert (tmp_path / "elsewhere/int8.onnx").exists() and (tmp_path / "elsewhere/fp32.onnx").exists()
    assert json.loads((tmp_path / "r/deploy/quantization.json").read_text()) == q2
    assert main(["quantize", str(tmp_path / "r"), "--formats", "fp8"]) == 2


def test_a_quantize_killed_midway_leaves_the_deploy_folder_as_it_was(tmp_path, small, monkeypatch):
    import fed8.deploy.quantize as qmod
    from fed8.stages.quantize import quantize_run

    cfg = fed8.load_config(None, small + ["quantize.enabled=true", "quantize.formats=int8", "train.rounds=1",
                                          "quantize.openvino=off"])
    fed8.run(cfg, out=tmp_path / "r", report=False)
    deploy = tmp_path / "r/deploy"
    before = {p.name: p.read_bytes() for p in deploy.iterdir()}
    summary = (tmp_path / "r/summary.json").read_bytes()

    def killed(*a, **k):  # the FP8 build dies after fp32.onnx and int8.onnx were rebuilt
        raise KeyboardInterrupt

    monkeypatch.setattr(qmod, "quantize_fp8_model", killed)
    with pytest.raises(KeyboardInterrupt):
        quantize_run(tmp_path / "r", fed8.load_config(None, ["quantize.formats=int8,float8_e5m2",
                                                             "quantize.openvino=off"]).quantize)
    assert {p.name: p.read_bytes() for p in deploy.iterdir()} == before
    assert (tmp_path / "r/summary.json").read_bytes() == summary
    # no staging left (.lock is the run directory's writer lock, fed8.rundir.RunDir.lock)
    assert [p.name for p in (tmp_path / "r").iterdir() if p.name.startswith(".") and p.name != ".lock"] == []
    assert oct((deploy / "quantization.json").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    import os

    old = os.umask(0o022)
    os.umask(old)
    return old


def test_staged_dir_switches_whole_folders_and_recovers_a_kill_between_renames(tmp_path):
    import os

    from fed8._io import staged_dir

    final = tmp_path / "deploy"
    with staged_dir(final) as d:
        (d / "a").write_text("1")
    assert (final / "a").read_text() == "1"
    with pytest.raises(RuntimeError), staged_dir(final) as d:
        (d / "a").write_text("half")
        raise RuntimeError
    assert (final / "a").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["deploy"]
    os.replace(final, tmp_path / ".deploy.old-x")  # killed after the first rename
    (tmp_path / ".deploy.new-y").mkdir()  # and a half-built folder from another kill
    with staged_dir(final) as d:
        assert (final / "a").read_text() == "1"  # the previous folder is back before anything else
        (d / "a").write_text("2")
    assert (final / "a").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["deploy"]


def test_graph_key_ignores_metadata_but_not_the_session_config_it_asks_for(tmp_path):
    import shutil

    from fed8.deploy.export import graph_key, stamp_metadata
    from fed8.models import build_model

    m = build_model("mlp", in_channels=1, height=8, width=8, num_classes=3, seed=0, hidden=4).eval()
    a = export_onnx(m, (1, 8, 8), tmp_path / "a.onnx", metadata={"classes": ["x", "y", "z"]})
    b = tmp_path / "b.onnx"
    shutil.copy(a, b)
    stamp_metadata(b, {"classes": ["p", "q", "r"], "format": "float32"})
    assert graph_key(a) == graph_key(b)  # the same computation
    stamp_metadata(b, {"ort_session_config": {"session.disable_quant_qdq": "1"}})
    assert graph_key(a) != graph_key(b)  # other kernels in ONNX Runtime
