"""The optional OpenVINO runtime: same answers as ONNX Runtime, in predict and in the quantize stage."""

import json

import numpy as np
import pytest
import torch

import fed8
from fed8.cli import main
from fed8.deploy.calibrate import client_ranges, merge_ranges
from fed8.deploy.export import export_onnx, read_metadata
from fed8.deploy.quantize import quantize_int8_model
from fed8.deploy.runtime import latency_ms, run_logits, session
from fed8.errors import ConfigError, MissingExtraError
from test_deploy import OddNet

META = {"input_shape": [3, 8, 8], "classes": list("abcde"), "preprocess": {"divisor": 255, "mean": 0.5, "std": 0.5}}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.manual_seed(3)
    d = tmp_path_factory.mktemp("ov")
    fp32 = export_onnx(OddNet().eval(), (3, 8, 8), d / "fp32.onnx", metadata=META)
    x = np.random.default_rng(0).standard_normal((300, 3, 8, 8)).astype(np.float32)
    int8 = quantize_int8_model(fp32, d / "int8.onnx", merge_ranges([client_ranges(fp32, x)]), tune_graph=False)
    return fp32, int8, x


def test_openvino_session_matches_onnxruntime(models):
    pytest.importorskip("openvino")
    fp32, int8, x = models
    ref, ov = run_logits(session(fp32), x), run_logits(session(fp32, runtime="openvino"), x)
    assert ov.shape == ref.shape and ov.dtype == np.float32
    assert np.abs(ov - ref).max() < 1e-4  # float32 precision (not OpenVINO's bf16 default on AMX CPUs)
    q_ref, q_ov = run_logits(session(int8), x), run_logits(session(int8, runtime="openvino"), x)
    assert (q_ov.argmax(1) == q_ref.argmax(1)).mean() > 0.95
    assert np.abs(q_ov - ref).max() < 0.2 * np.abs(ref).max()  # it is the quantized model, close to float
    assert latency_ms(session(int8, runtime="openvino"), (3, 8, 8), batch=4, repeats=2) > 0
    s = session(fp32, runtime="openvino")  # an output survives the next call (OpenVINO reuses its buffers)
    first = s.run(None, {"input": x[:8]})[0]
    kept = first.copy()
    s.run(None, {"input": x[8:16]})
    assert np.array_equal(first, kept) and not np.array_equal(first, s.run(None, {"input": x[8:16]})[0])
    with pytest.raises(ConfigError, match="runtime must be one of onnxruntime, openvino; got 'tensorrt'"):
        session(fp32, runtime="tensorrt")


def test_openvino_missing_is_a_clear_error(models, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_openvino(name, *a, **k):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError("No module named 'openvino'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    with pytest.raises(MissingExtraError, match=r"pip install 'fed8\[openvino\]'"):
        session(models[0], runtime="openvino")


def test_predict_on_openvino(models, tmp_path, capsys):
    pytest.importorskip("openvino")
    fp32 = models[0]
    pixels = np.random.default_rng(1).integers(0, 256, (3, 3, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "imgs.npz", x=pixels)
    outs = {}
    for rt in ("onnxruntime", "openvino"):
        assert main(["predict", str(fp32), str(tmp_path / "imgs.npz"), "--json", "--runtime", rt]) == 0
        outs[rt] = [json.loads(s) for s in capsys.readouterr().out.splitlines()]
    assert len(outs["openvino"]) == 3
    for a, b in zip(outs["onnxruntime"], outs["openvino"]):
        assert [c for c, _ in a["top"]] == [c for c, _ in b["top"]]
        assert [p for _, p in a["top"]] == pytest.approx([p for _, p in b["top"]], abs=1e-5)


@pytest.mark.slow
def test_quantize_stage_measures_openvino(tmp_path, small, monkeypatch):
    pytest.importorskip("openvino")
    cfg = fed8.load_config(None, small + ["quantize.enabled=false", "data.subset=600", "train.rounds=1"])
    fed8.run(cfg, out=tmp_path / "r")
    assert main(["quantize", str(tmp_path / "r"), "--formats", "int8,float8_e5m2", "--set", "quantize.openvino=on"]) == 0
    q = json.loads((tmp_path / "r/deploy/quantization.json").read_text())
    rows = {r["format"]: r for r in q["formats"]}
    assert rows["float32"]["openvino"]["file"] == "fp32.onnx"
    assert rows["float8_e5m2"]["openvino"]["file"] == "float8_e5m2.onnx"
    ov8 = rows["int8"]["openvino"]  # the ORT graph rewrites apply to int8.onnx, OpenVINO gets the plain graph
    assert rows["int8"]["graph_rewrites"] and ov8["file"] == "int8_openvino.onnx"
    plain = read_metadata(tmp_path / "r/deploy/int8_openvino.onnx")
    assert "int8_graph_rewrites" not in plain and plain["runtime"] == "openvino" and plain["classes"]
    for r in rows.values():
        ov = r["openvino"]
        assert ov["top1_agreement_with_onnxruntime"] > 0.95 and ov["bytes"] > 0
        assert ov["latency_ms_batch1"] > 0 and ov["latency_ms_batch256"] > 0
        assert ov["speedup_batch256"] == pytest.approx(rows["float32"]["latency_ms_batch256"] / ov["latency_ms_batch256"])
    assert rows["float32"]["openvino"]["speedup_batch1_vs_openvino_float32"] == 1.0
    assert any(n.startswith("OpenVINO rows") for n in q["notes"])
    assert "<td>OpenVINO</td>" in (tmp_path / "r/report.html").read_text()  # its rows in the latency table
    # off: no OpenVINO measurement, and int8_openvino.onnx is named as left over from the earlier quantize
    assert main(["quantize", str(tmp_path / "r"), "--formats", "int8", "--set", "quantize.openvino=off"]) == 0
    q = json.loads((tmp_path / "r/deploy/quantization.json").read_text())
    assert all("openvino" not in r for r in q["formats"])
    assert any("float8_e5m2.onnx, int8_openvino.onnx" in n and "earlier quantize" in n for n in q["notes"])
    # on, without OpenVINO installed: an error before any work
    import fed8.deploy.runtime as rt

    monkeypatch.setattr(rt, "openvino_available", lambda: False)
    assert main(["quantize", str(tmp_path / "r"), "--formats", "int8", "--set", "quantize.openvino=on",
                 "--out", str(tmp_path / "never")]) == 2  # a missing extra is a user error
    assert not (tmp_path / "never").exists()
