"""The exact float-graph rewrites that make ORT's integer kernels faster (fed8.deploy.int8_graph)."""

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from fed8.deploy.calibrate import client_ranges, merge_ranges
from fed8.deploy.export import export_onnx, read_metadata
from fed8.deploy.int8_graph import tune_for_int8
from fed8.deploy.quantize import quantize_int8_model
from fed8.deploy.runtime import int8_pair_saturation, run_logits, saturation_reason, session
from fed8.models import build_model


class Net(nn.Module):
    """conv(k, same) -> relu -> maxpool 2 -> conv -> relu -> maxpool 2 -> flatten -> fc -> relu -> fc."""

    def __init__(self, cin: int, c1: int, k: int, hw: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, c1, k, padding=k // 2)
        self.conv2 = nn.Conv2d(c1, 6, 3, padding=1)
        self.fc1 = nn.Linear(6 * (hw // 4) ** 2, 9)
        self.fc2 = nn.Linear(9, 4)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


def _export(model, shape, path):
    torch.manual_seed(1)
    for p in model.parameters():  # biases away from zero so that Relu cuts somewhere
        p.data.normal_(0, 0.3)
    return export_onnx(model.eval(), shape, path, metadata={})


def _run(model_proto, x):
    import onnxruntime as ort

    s = ort.InferenceSession(model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("cin,c1,k,hw", [(1, 32, 5, 28), (3, 7, 3, 12), (2, 5, 7, 16), (4, 6, 1, 8)])
def test_float_rewrites_compute_the_same_function(tmp_path, cin, c1, k, hw):
    path = _export(Net(cin, c1, k, hw), (cin, hw, hw), tmp_path / "m.onnx")
    tuned = tune_for_int8(onnx.load(str(path)))
    assert [r.split(":")[0] for r in tuned.rewrites] == ["phase_pool", "nhwc_flatten"]
    pools = [[a.ints for a in n.attribute if a.name == "kernel_shape"][0] for n in tuned.model.graph.node
             if n.op_type == "MaxPool"]
    assert sorted(map(list, pools)) == [[1, 4], [2, 2]]  # conv1's pool is a max over the phases; conv2's stays
    x = np.random.default_rng(0).standard_normal((5, cin, hw, hw)).astype(np.float32)
    ref = run_logits(session(path, config={}), x)
    out = _run(tuned.model, x)
    assert np.abs(out - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())
    # every new tensor borrows the range of a tensor of the original model
    original = {o for n in onnx.load(str(path)).graph.node for o in n.output} | {"input"}
    assert tuned.aliases and set(tuned.aliases.values()) <= original


def test_patterns_that_do_not_match_are_left_alone(tmp_path):
    class Wide(nn.Module):  # 8 input channels (fast already), a strided conv, a 3x3 pool
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(8, 4, 3, padding=1)
            self.b = nn.Conv2d(4, 4, 3, padding=1, stride=2)
            self.c = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            x = nn.functional.max_pool2d(torch.relu(self.a(x)), 2)
            x = nn.functional.max_pool2d(torch.relu(self.b(x)), 2)
            return nn.functional.max_pool2d(torch.relu(self.c(x)), 3).mean((2, 3))

    path = _export(Wide(), (8, 24, 24), tmp_path / "w.onnx")
    tuned = tune_for_int8(onnx.load(str(path)))
    assert tuned.rewrites == [] and tuned.aliases == {}
    skipped = tune_for_int8(onnx.load(str(_export(Net(1, 6, 3, 8), (1, 8, 8), tmp_path / "n.onnx"))),
                            skip={"/conv1/Conv"})
    assert [r.split(":")[0] for r in skipped.rewrites] == ["nhwc_flatten"]


def _cnn(d, cin: int, hw: int):
    model = build_model("cnn", in_channels=cin, height=hw, width=hw, num_classes=10, seed=0).eval()
    path = export_onnx(model, (cin, hw, hw), d / "fp32.onnx", metadata={"classes": list("0123456789")})
    x = np.random.default_rng(0).random((200, cin, hw, hw), dtype=np.float32)
    return path, x, d


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    return _cnn(tmp_path_factory.mktemp("cnn"), 1, 28)


def _optimized(path, d):
    """The graph ORT runs (after layout transformation and QDQ fusion)."""
    out = d / f"{path.stem}.ort.onnx"
    session(path, threads=1, optimized_path=out, config={})
    return onnx.load(str(out)).graph


@pytest.mark.parametrize("cin,hw", [(1, 28), (3, 16)])
def test_tuned_int8_model_computes_the_same_integers(tmp_path, cin, hw):
    path, x, d = _cnn(tmp_path, cin, hw)
    ranges = merge_ranges([client_ranges(path, x)])
    plain = quantize_int8_model(path, d / "plain.onnx", ranges, tune_graph=False)
    tuned = quantize_int8_model(path, d / "tuned.onnx", ranges)
    assert "int8_graph_rewrites" not in read_metadata(plain)
    assert len(read_metadata(tuned)["int8_graph_rewrites"]) == 2
    a, b = run_logits(session(plain), x), run_logits(session(tuned), x)
    assert np.array_equal(a, b)  # bit-identical logits, not approximately

    # what ORT runs: the space-to-depth transposes float input, every conv is integer, and no
    # Transpose is left on the uint8 path (the plain model has them around its NHWC kernels)
    g = _optimized(tuned, d)
    producer = {o: n for n in g.node for o in n.output}

    def from_input(t):  # t computed from the graph input by Reshape / Transpose only, i.e. still float
        while t in producer and producer[t].op_type in ("Reshape", "Transpose"):
            t = producer[t].input[0]
        return t == g.input[0].name

    ops = [n.op_type for n in g.node]
    assert ops.count("QLinearConv") == 2 and "Conv" not in ops and "ReduceMax" not in ops
    transposes = [n for n in g.node if n.op_type == "Transpose"]
    assert len(transposes) == 1 and from_input(transposes[0].input[0])
    assert any(n.op_type == "Transpose" and not from_input(n.input[0]) for n in _optimized(plain, d).node)


def test_gate_kept_float_layer_is_not_rewritten(cnn):
    path, x, d = cnn
    ranges = merge_ranges([client_ranges(path, x)])
    q = quantize_int8_model(path, d / "keep.onnx", ranges, nodes_to_exclude=["/conv1/Conv"])
    assert [r.split(":")[0] for r in read_metadata(q)["int8_graph_rewrites"]] == ["nhwc_flatten"]
    names = {n.name for n in onnx.load(str(q)).graph.node}
    assert "/conv1/Conv" in names  # still there, in float
    ref = run_logits(session(path), x)
    assert (run_logits(session(q), x).argmax(1) == ref.argmax(1)).mean() > 0.9


def _int8_weights(path) -> list[np.ndarray]:
    """The int8 weight initializers of a QDQ model (the inputs of its weight DequantizeLinear nodes)."""
    from onnx import numpy_helper

    m = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    return [inits[n.input[0]] for n in m.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].dtype == np.int8]


def test_reduce_range_keeps_int8_weights_in_seven_bits_and_auto_follows_the_cpu(tmp_path):
    path, x, d = _cnn(tmp_path, 1, 28)
    ranges = merge_ranges([client_ranges(path, x)])
    full = quantize_int8_model(path, d / "full.onnx", ranges, reduce_range=False)
    seven = quantize_int8_model(path, d / "seven.onnx", ranges, reduce_range=True)
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in _int8_weights(full)) == 127  # symmetric, per channel
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in _int8_weights(seven)) <= 64  # 255 * 64 * 2 < 2^15
    assert read_metadata(full)["int8_weight_bits"] == 8 and read_metadata(seven)["int8_weight_bits"] == 7
    auto = quantize_int8_model(path, d / "auto.onnx", ranges)
    assert read_metadata(auto)["int8_weight_bits"] == (7 if int8_pair_saturation() else 8)
    a, b = run_logits(session(seven), x), run_logits(session(full), x)
    assert (a.argmax(1) == b.argmax(1)).mean() > 0.9  # one bit less weight precision, the same model


@pytest.mark.parametrize("machine, flags, saturates", [
    ("x86_64", ["sse4_1", "avx2", "fma"], True),  # AMD Zen 2/3, Intel Haswell-Skylake
    ("x86_64", ["avx2", "avx512f", "avx512bw"], True),  # AVX-512 without VNNI (Skylake-SP)
    ("x86_64", ["avx2", "avx512f", "avx512_vnni"], False),  # Cascade Lake and later, Zen 4
    ("AMD64", ["avx2", "avx_vnni"], False),  # Alder Lake's AVX-VNNI
    ("x86_64", None, True),  # flags unknown: the cautious answer
    ("aarch64", None, False), ("arm64", ["asimd"], False),  # ARM's dot products add in 32 bits
])
def test_which_cpus_saturate(machine, flags, saturates):
    assert (saturation_reason(machine, flags) is not None) == saturates
