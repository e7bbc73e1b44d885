"""Histogram calibration, FP8 activation scales, the accuracy gate, standalone quantize and predict."""

import json

import numpy as np
import pytest
import torch

from fed8.cli import main
from fed8.deploy.calibrate import (Histogram, check_input, client_histograms, client_ranges, merge_histograms,
                                   merge_ranges, thresholds)
from fed8.deploy.export import export_onnx
from fed8.deploy.gate import gate, layer_sqnr
from fed8.deploy.images import load_images
from fed8.deploy.quantize import fp8_activation_scales, quantize_fp8_model, quantize_int8_model
from fed8.deploy.runtime import run_logits, session
from fed8.errors import DeployError
from test_deploy import OddNet  # conv(7, odd) -> fc1 -> fc: first and last layers quantized

META = {"input_shape": [3, 8, 8], "classes": list("abcde"),
        "preprocess": {"divisor": 255, "mean": 0.5, "std": 0.5}}


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    torch.manual_seed(1)
    d = tmp_path_factory.mktemp("net")
    path = export_onnx(OddNet().eval(), (3, 8, 8), d / "fp32.onnx", metadata=META)
    pixels = torch.randint(0, 256, (400, 3, 8, 8), generator=torch.Generator().manual_seed(2)).to(torch.uint8)
    x = ((pixels.float() / 255 - 0.5) / 0.5).numpy()
    return path, x, pixels.numpy(), d


def test_federated_histograms_equal_union_exactly(net):
    path, x, _, _ = net
    parts = [x[:37], x[37:250], x[250:]]
    ranges = merge_ranges(client_ranges(path, p) for p in parts)
    bounds = {k: max(abs(lo), abs(hi)) for k, (lo, hi) in ranges.items()}
    merged = merge_histograms(client_histograms(path, p, bounds, bins=256) for p in parts)
    union = client_histograms(path, x, bounds, bins=256)
    assert merged.keys() == union.keys() == ranges.keys()
    for k in union:
        assert np.array_equal(merged[k].counts, union[k].counts) and merged[k].n == union[k].n == union[k].counts.sum()
        assert merged[k].sum == pytest.approx(union[k].sum, rel=1e-9, abs=1e-6)
    # a single client's histogram differs (so the equality above says something)
    assert any(not np.array_equal(client_histograms(path, parts[0], bounds, bins=256)[k].counts, union[k].counts)
               for k in union)
    with pytest.raises(DeployError, match="different edges"):
        merged[next(iter(merged))] + Histogram(np.zeros(3, np.int64), 1.0, 0, 0.0, 0.0)


def test_percentile_and_entropy_clip_outliers():
    rng = np.random.default_rng(0)
    a = np.concatenate([rng.standard_normal(100_000), [60.0]])  # one outlier
    bound = 60.0
    counts, _ = np.histogram(a, bins=2048, range=(-bound, bound))
    h = {"t": Histogram(counts.astype(np.int64), bound, a.size, float(a.sum()), float((a * a).sum()))}
    r = {"t": (float(a.min()), float(a.max()))}
    assert thresholds("minmax", r, h) == r
    lo, hi = thresholds("percentile", r, h, percentile=99.9)["t"]
    assert 3.0 < hi < 5.0 and -5.0 < lo < -3.0  # the 0.05% tails of N(0,1) are at +-3.3
    elo, ehi = thresholds("entropy", r, h)["t"]
    assert r["t"][0] <= elo < 0 < ehi < 20.0
    with pytest.raises(DeployError, match="one of minmax, percentile, entropy"):
        thresholds("kl", r, h)


def test_fp8_std_scale_matches_onnxruntime():
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import compute_scale_zp_float8

    a = np.random.default_rng(0).standard_normal(10_000) * 3 + 1
    h = {"t": Histogram(np.zeros(8, np.int64), 10.0, a.size, float(a.sum()), float((a * a).sum()))}
    ours = fp8_activation_scales("float8_e4m3fn", {"t": (-10.0, 10.0)}, method="std", hists=h)["t"]
    _, ort_scale = compute_scale_zp_float8(TensorProto.FLOAT8E4M3FN, np.array(a.std(), dtype=np.float32))
    assert ours == pytest.approx(float(ort_scale), rel=1e-5)
    assert fp8_activation_scales("float8_e5m2", {"t": (-2.0, 3.0)})["t"] == 3.0 / 57344
    with pytest.raises(DeployError, match="histogram"):
        fp8_activation_scales("float8_e4m3fn", {"t": (-1.0, 1.0)}, method="std")


@pytest.mark.parametrize("fmt", ["int8", "float8_e4m3fn"])
def test_gate_keeps_the_broken_layer_in_float(net, fmt):
    path, x, _, d = net
    ranges = client_ranges(path, x)
    bad = dict(ranges)
    bad["input"] = (0.0, 1e-4)  # a calibration that wipes out the first layer's input
    ref = run_logits(session(path), x).argmax(1)
    scales = fp8_activation_scales(fmt, bad) if fmt != "int8" else None
    out = d / f"gate-{fmt}.onnx"

    def build(keep):
        if fmt == "int8":
            quantize_int8_model(path, out, bad, nodes_to_exclude=list(keep))
        else:
            quantize_fp8_model(path, out, scales, fmt, keep_float=keep)
        return float((run_logits(session(out), x).argmax(1) == ref).mean())

    ranking = layer_sqnr(path, fmt, [x[:200], x[200:]], ranges=bad, fp8_scales=scales)
    assert [r.node for r in ranking][0] == "/conv/Conv" and len(ranking) == 3
    assert ranking[0].input_db < 3 < ranking[1].sqnr_db
    res = gate(build, lambda: ranking, float_accuracy=1.0, max_drop_points=5.0)
    assert res.tried[0][1] < 0.9  # the fully quantized model fails the gate
    assert res.passed and [r.node for r in res.kept_float] == ["/conv/Conv"] and res.accuracy >= 0.95
    failed = gate(lambda keep: 0.0, lambda: ranking, float_accuracy=1.0, max_drop_points=1.0)
    assert not failed.passed and len(failed.tried) == 4


def test_wrong_shape_calibration_data_is_a_clear_error(net, tmp_path):
    path, x, pixels, _ = net
    with pytest.raises(DeployError, match=r"shape \(10, 3, 9, 9\).*Nx3x8x8"):
        client_ranges(path, np.zeros((10, 3, 9, 9), np.float32))
    with pytest.raises(DeployError, match="shape"):
        check_input(path, np.zeros((10, 8, 8), np.float32))
    np.savez(tmp_path / "wrong.npz", x=np.zeros((10, 1, 8, 8), np.uint8))
    with pytest.raises(DeployError, match=r"\(10, 1, 8, 8\).*3x8x8"):
        load_images([tmp_path / "wrong.npz"], META)
    assert main(["quantize", str(path), "--calibration-data", str(tmp_path / "wrong.npz")]) == 2  # user errors exit 2
    assert main(["quantize", str(path)]) == 2  # a bare model needs calibration data


def test_quantize_standalone_model_with_labelled_npz(net, tmp_path):
    path, x, pixels, _ = net
    y = run_logits(session(path), x).argmax(1)
    np.savez(tmp_path / "cal.npz", x=pixels.transpose(0, 2, 3, 1), y=y)  # NHWC uint8 is accepted
    out = tmp_path / "deploy"
    assert main(["quantize", str(path), "--calibration-data", str(tmp_path / "cal.npz"), "--out", str(out),
                 "--formats", "int8,float8_e5m2", "--calibration", "entropy"]) == 0
    q = json.loads((out / "quantization.json").read_text())
    rows = {r["format"]: r for r in q["formats"]}
    assert list(rows) == ["float32", "int8", "float8_e5m2"]
    assert q["calibration"]["samples"] == 200 and q["calibration"]["method"] == "entropy"
    assert rows["float32"]["eval_accuracy"] == 1.0  # labels are the FP32 predictions
    assert rows["int8"]["eval_accuracy"] > 0.8 and rows["int8"]["integer_kernels"]
    assert rows["float8_e5m2"]["activation_scale"] in ("amax", "std")
    assert set(rows["float8_e5m2"]["activation_scale_candidates"]) == {"amax", "std"}
    assert (out / "int8.onnx").exists() and (out / "float8_e5m2.onnx").exists()


@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning")
def test_a_model_from_another_tool_quantizes_on_its_own_float_inputs(tmp_path, capsys):
    """No fed8 metadata: no preprocessing to apply, so an .npz of the model's float inputs, checked against its input."""
    from fed8.deploy.export import input_dims

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4),
                                torch.nn.Flatten(), torch.nn.Linear(128, 5)).eval()
    path = tmp_path / "theirs.onnx"  # another input name, a symbolic batch, no fed8 metadata
    torch.onnx.export(model, torch.randn(1, 3, 16, 16), str(path), input_names=["pixels"], output_names=["scores"],
                      dynamic_axes={"pixels": {0: "b"}, "scores": {0: "b"}}, dynamo=False)
    assert input_dims(path) == [3, 16, 16]
    x = np.random.default_rng(0).standard_normal((120, 3, 16, 16)).astype(np.float32)  # as the model takes them
    y = run_logits(session(path), x).argmax(1)
    np.savez(tmp_path / "inputs.npz", x=x, y=y)
    out = tmp_path / "deploy"
    assert main(["quantize", str(path), "--calibration-data", str(tmp_path / "inputs.npz"), "--out", str(out),
                 "--formats", "int8,float8_e4m3fn"]) == 0
    rows = {r["format"]: r for r in json.loads((out / "quantization.json").read_text())["formats"]}
    assert rows["float32"]["eval_accuracy"] == 1.0  # its labels are FP32's predictions: taken as given, not rescaled
    assert rows["int8"]["eval_accuracy"] > 0.8 and rows["float8_e4m3fn"]["eval_accuracy"] > 0.8
    assert (out / "int8.onnx").exists()
    capsys.readouterr()
    np.savez(tmp_path / "pixels.npz", x=(x * 50 + 128).clip(0, 255).astype(np.uint8))  # pixels: nothing to scale them
    np.savez(tmp_path / "small.npz", x=x[:, :, :8, :8])
    (tmp_path / "imgs").mkdir()
    for bad, says in (("pixels.npz", "is uint8 (120, 3, 16, 16); the model takes float inputs of 3x16x16"),
                      ("small.npz", "(120, 3, 8, 8); the model takes float inputs of 3x16x16"),
                      ("imgs", "cannot preprocess image files for it. Give an .npz")):
        assert main(["quantize", str(path), "--calibration-data", str(tmp_path / bad), "--out", str(out)]) == 2
        assert says in capsys.readouterr().err.replace("\n", " ")
    # fed8 predict takes the same inputs: classes are output indices (the model names none)
    assert main(["predict", str(out / "int8.onnx"), str(tmp_path / "inputs.npz"), "--json", "--top-k", "1"]) == 0
    top = [json.loads(line)["top"][0][0] for line in capsys.readouterr().out.splitlines()]
    assert len(top) == 120 and np.mean(np.array(top, dtype=int) == y) > 0.8
    assert main(["predict", str(path), str(tmp_path / "imgs")]) == 2


def test_predict_uses_training_preprocessing(net, tmp_path, capsys):
    from PIL import Image

    from fed8.data import to_float

    path, _, pixels, _ = net
    for i in range(4):
        (tmp_path / "imgs" / "abcde"[i % 2]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[i].transpose(1, 2, 0)).save(tmp_path / "imgs" / "abcde"[i % 2] / f"{i}.png")
    imgs = load_images([tmp_path / "imgs"], META)
    assert list(imgs.y) == [0, 0, 1, 1]  # labelled by class folder name
    order = [0, 2, 1, 3]
    assert np.array_equal(imgs.x, to_float(torch.from_numpy(pixels[order])).numpy())
    logits = run_logits(session(path), imgs.x)
    assert main(["predict", str(path), "--folder", str(tmp_path / "imgs" / "a"), "--top-k", "2", "--json"]) == 0
    lines = [json.loads(s) for s in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2 and all(len(r["top"]) == 2 for r in lines)
    assert lines[0]["top"][0][0] == "abcde"[int(logits[0].argmax())]
    p = np.exp(logits[0] - logits[0].max())
    assert lines[0]["top"][0][1] == pytest.approx(float(p.max() / p.sum()), rel=1e-5)
    assert main(["predict", str(path)]) == 2
    assert main(["predict", str(path), str(tmp_path / "missing.png")]) == 2
