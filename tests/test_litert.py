"""LiteRT (.tflite) models: full-integer INT8 from the federated ranges, metadata, the quantize stage, predict.

Tests that convert need the fed8[litert] extra and are skipped without it (CI job: bash .ci/litert);
the behaviour without it (a note in the stage, an error when asked for by name) is tested always.
"""

import json

import numpy as np
import pytest
import torch
from torch import nn

import fed8
from fed8.cli import main
from fed8.deploy import litert
from fed8.deploy.calibrate import client_ranges, merge_ranges
from fed8.deploy.export import export_onnx, read_metadata
from fed8.deploy.runtime import run_logits, session
from fed8.errors import DeployError

pytestmark = pytest.mark.litert
needs_litert = pytest.mark.skipif(not litert.litert_available(),
                                  reason="needs the fed8[litert] extra: pip install 'fed8[litert]' (CI: bash .ci/litert)")


def _minmax_scale(lo: float, hi: float) -> float:
    """What a MinMax observer gives for int8 affine [-128, 127] (eps 2^-12): the scale the file must carry."""
    return max((max(hi, 0.0) - min(lo, 0.0)) / 255.0, 2**-12)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """fed8's cnn trained briefly on MNIST-10k, its FP32 ONNX file and ranges merged from 3 clients."""
    from fed8.config import DataConfig
    from fed8.data import load_splits, to_float
    from fed8.models import build_model

    torch.manual_seed(0)
    sp = load_splits(DataConfig())
    model = build_model("cnn", in_channels=1, height=28, width=28, num_classes=10, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = to_float(sp.train.images[:3000]), sp.train.labels[:3000]
    for i in range(0, len(x), 32):
        loss = nn.functional.cross_entropy(model(x[i : i + 32]), y[i : i + 32])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    d = tmp_path_factory.mktemp("litert")
    fp32 = export_onnx(model, (1, 28, 28), d / "fp32.onnx", metadata={"classes": [str(c) for c in range(10)]})
    calib = x[3000 - 600 :].numpy()
    ranges = merge_ranges(client_ranges(fp32, part) for part in np.array_split(calib, 3))
    return model, fp32, ranges, to_float(sp.eval.images).numpy(), d


@needs_litert
def test_int8_is_full_integer_small_and_agrees_with_float32(cnn):
    model, fp32, ranges, ex, d = cnn
    path = litert.build_litert(model, (1, 28, 28), d / "int8.tflite", fmt="litert_int8", metadata={}, ranges=ranges,
                               onnx_fp32=fp32)
    litert.check_full_integer(path)  # also done by build_litert; explicit here
    assert {"CONV_2D", "FULLY_CONNECTED"} <= set(litert.integer_ops(path))
    assert path.stat().st_size <= 0.26 * fp32.stat().st_size
    ref = run_logits(session(fp32), ex).argmax(1)
    got = run_logits(session(path), ex).argmax(1)
    assert (got == ref).mean() >= 0.99
    meta = read_metadata(path)
    assert meta["format"] == "litert_int8" and meta["batch"] == 1
    q = meta["input_quantization"]
    assert q["dtype"] == "int8" and q["scale"] > 0  # the interpreter's own input parameters, stored for the app


@needs_litert
def test_activation_scales_are_the_ones_the_federated_ranges_give(cnn):
    model, fp32, ranges, _, d = cnn
    path = litert.build_litert(model, (1, 28, 28), d / "scales.tflite", fmt="litert_int8", metadata={},
                               ranges=ranges, onnx_fp32=fp32)
    calibrated = read_metadata(path)["calibrated_tensors"]  # observer -> the ONNX tensor whose range it took
    assert {"input", "logits"} <= set(calibrated.values()) and len(calibrated) >= 5
    qt = litert.tensor_quantization(path)
    act_scales = [t["scales"][0] for t in qt.values() if t["dtype"] == "int8" and len(t["scales"]) == 1]
    expected = [_minmax_scale(*ranges[t]) for t in calibrated.values()]
    assert len(act_scales) >= 5
    for s in act_scales:  # every activation of the file is quantized with a scale of a federated range
        assert any(abs(s - want) <= 1e-6 * want for want in expected), s
    q = read_metadata(path)["input_quantization"]
    lo, hi = ranges["input"]
    assert q["scale"] == pytest.approx(_minmax_scale(lo, hi), rel=1e-6)
    assert q["zero_point"] == -128 - round(min(lo, 0.0) / q["scale"])
    # other ranges give other scales: the file follows the statistics it is given, not data of its own
    wider = {**ranges, "input": (lo, 2 * hi)}
    other = litert.build_litert(model, (1, 28, 28), d / "wider.tflite", fmt="litert_int8", metadata={},
                                ranges=wider, onnx_fp32=fp32)
    assert read_metadata(other)["input_quantization"]["scale"] == pytest.approx(_minmax_scale(lo, 2 * hi), rel=1e-6)


@needs_litert
def test_an_observer_without_a_federated_range_is_a_clear_error(cnn):
    model, fp32, ranges, _, d = cnn
    missing = {k: v for k, v in ranges.items() if k != "logits"}
    with pytest.raises(DeployError, match="matches no calibrated tensor") as e:
        litert.build_litert(model, (1, 28, 28), d / "x.tflite", fmt="litert_int8", metadata={}, ranges=missing,
                            onnx_fp32=fp32)
    assert "LiteRT conversion failed" not in str(e.value)  # fed8's own message, not wrapped in the converter's


@needs_litert
def test_a_model_that_stayed_float_is_refused(cnn):
    model, fp32, _, ex, d = cnn
    path = litert.build_litert(model, (1, 28, 28), d / "fp32.tflite", fmt="litert_fp32", metadata={})
    assert np.abs(run_logits(session(path), ex[:200]) - run_logits(session(fp32), ex[:200])).max() < 1e-3
    with pytest.raises(DeployError, match="not a full-integer INT8 model.*CONV_2D"):
        litert.check_full_integer(path)


@needs_litert
def test_odd_channel_counts(tmp_path):
    from test_deploy import OddNet  # 7 and 33 channels (odd), a Gemm last

    torch.manual_seed(0)
    model = OddNet().eval()
    fp32 = export_onnx(model, (3, 8, 8), tmp_path / "odd.onnx", metadata={})
    x = torch.randn(400, 3, 8, 8).numpy()
    ranges = merge_ranges(client_ranges(fp32, part) for part in (x[:100], x[100:200]))
    path = litert.build_litert(model, (3, 8, 8), tmp_path / "odd.tflite", fmt="litert_int8", metadata={},
                               ranges=ranges, onnx_fp32=fp32)
    litert.check_full_integer(path)
    agree = (run_logits(session(path), x[200:]).argmax(1) == run_logits(session(fp32), x[200:]).argmax(1)).mean()
    assert agree >= 0.95


@needs_litert
@pytest.mark.slow
def test_quantize_stage_rows_report_and_predict(tmp_path, small, capsys):
    from PIL import Image

    cfg = fed8.load_config(None, small + ["quantize.enabled=true", "data.subset=1000", "train.rounds=2",
                                          'quantize.formats="int8,litert_int8,litert_fp32"'])
    fed8.run(cfg, out=tmp_path / "r")
    q = json.loads((tmp_path / "r/deploy/quantization.json").read_text())
    rows = {r["format"]: r for r in q["formats"]}
    assert list(rows) == ["float32", "int8", "litert_int8", "litert_fp32"]
    lite = rows["litert_int8"]
    assert lite["runtime"] == "litert" and lite["file"] == "int8.tflite" and lite["status"] == "ok"
    assert lite["latency_ms_batch1"] > 0 and lite["latency_ms_batch256"] is None and lite["batch_sizes"] == [1]
    assert lite["speedup_batch1"] > 0 and lite["speedup_batch256"] is None
    assert lite["bytes_ratio_to_float32"] <= 0.26 and lite["top1_agreement_with_float32"] >= 0.97
    assert lite["on_device"]["client_accuracy_mean"] is not None and lite["gate"]["passed"]
    assert "CONV_2D" in lite["integer_kernels"] and rows["litert_fp32"]["integer_kernels"] == []
    assert any("LiteRT rows" in n and "phones, ARM, were not measured" in n for n in q["notes"])
    html = (tmp_path / "r/report.html").read_text()
    assert "<td>LiteRT</td>" in html and "batch 1 only" in html
    # predict: the .tflite applies the same preprocessing as the ONNX INT8 model (from its own metadata)
    lite_meta, onnx_meta = (read_metadata(tmp_path / f"r/deploy/{f}") for f in ("int8.tflite", "int8.onnx"))
    assert lite_meta["preprocess"] == onnx_meta["preprocess"] and lite_meta["classes"] == onnx_meta["classes"]
    from fed8.config import DataConfig
    from fed8.data import load_splits

    pixels = load_splits(DataConfig()).eval.images[:12].numpy()
    (tmp_path / "imgs").mkdir()
    for i, p in enumerate(pixels):
        Image.fromarray(p[0]).save(tmp_path / "imgs" / f"{i:02d}.png")
    tops = {}
    capsys.readouterr()
    for f in ("int8.tflite", "int8.onnx"):
        assert main(["predict", str(tmp_path / "r/deploy" / f), "--folder", str(tmp_path / "imgs"), "--json"]) == 0
        tops[f] = [json.loads(s)["top"][0][0] for s in capsys.readouterr().out.splitlines()]
    assert len(tops["int8.tflite"]) == 12
    assert np.mean([a == b for a, b in zip(tops["int8.tflite"], tops["int8.onnx"])]) >= 11 / 12
    # centralized calibration stays available for comparison: other data, other activation scales
    assert main(["quantize", str(tmp_path / "r"), "--formats", "litert_int8", "--out", str(tmp_path / "central"),
                 "--set", "quantize.centralized_calibration=true"]) == 0
    central = json.loads((tmp_path / "central/quantization.json").read_text())
    assert "centralized" in central["calibration"]["where"]

    def act_scales(path):
        return sorted(round(t["scales"][0], 9) for t in litert.tensor_quantization(path).values()
                      if t["dtype"] == "int8" and len(t["scales"]) == 1)

    assert act_scales(tmp_path / "central/int8.tflite") != act_scales(tmp_path / "r/deploy/int8.tflite")


def test_without_the_extra_the_stage_notes_it_and_the_cli_names_the_install(tmp_path, small, monkeypatch, capsys):
    monkeypatch.setattr(litert, "litert_available", lambda: False)
    cfg = fed8.load_config(None, small + ["quantize.enabled=true", "data.subset=400", "train.rounds=1",
                                          'quantize.formats="int8,litert_int8"'])
    fed8.run(cfg, out=tmp_path / "r", report=False)
    q = json.loads((tmp_path / "r/deploy/quantization.json").read_text())
    assert [r["format"] for r in q["formats"]] == ["float32", "int8"]
    assert any("skipped" in n and "pip install 'fed8[litert]'" in n for n in q["notes"])
    capsys.readouterr()
    assert main(["quantize", str(tmp_path / "r"), "--formats", "litert_int8"]) == 2
    assert "pip install 'fed8[litert]'" in capsys.readouterr().err
    # an ONNX file carries no PyTorch model to convert: said before any work, whether the extra is there or not
    monkeypatch.setattr(litert, "litert_available", lambda: True)
    assert main(["quantize", str(tmp_path / "r/deploy/fp32.onnx"), "--formats", "litert_int8",
                 "--calibration-data", str(tmp_path)]) == 2
    assert "quantize the run directory" in capsys.readouterr().err.lower()


def test_litert_formats_are_config_values():
    q = fed8.load_config(None, ['quantize.formats="int8,litert_int8,litert_fp32"']).quantize
    assert q.formats == "int8,litert_int8,litert_fp32"
    assert "litert_int8" in fed8.load_config(None).quantize.formats  # built by default when the extra is installed
