"""FP8 compute for Linear layers (torch._scaled_mm): scale math and numerics on CPU; speed needs a GPU (marked)."""

import pytest
import torch
from torch import nn

from fed8.deploy.fp8_linear import Float8Linear, fp8_compute_available, swap_linears_fp8
from fed8.errors import ParameterError
from fed8.formats import E4M3FN, round_to_fp8


@pytest.mark.parametrize("granularity", ["tensor", "row"])
@pytest.mark.parametrize("shape", [(33, 70, 10), (16, 3136, 512), (5, 192, 576)])
def test_fp8_linear_equals_the_dequantized_float_reference(granularity, shape):
    m, k, n = shape
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(k, n)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) * torch.logspace(-2, 0, n).unsqueeze(1))  # rows of mixed size
    x = torch.randn(m, k, generator=g)
    f8 = Float8Linear.from_linear(lin, granularity)
    assert f8.weight_fp8.dtype == torch.float8_e4m3fn and f8.weight_fp8.shape == (-(-n // 16) * 16, -(-k // 16) * 16)
    # the weight scale is amax / 448 per tensor or per output row
    w = lin.weight.detach()
    want = (w.abs().amax(1) / E4M3FN.max) if granularity == "row" else (w.abs().amax() / E4M3FN.max).reshape(1)
    assert torch.allclose(f8.weight_scale.reshape(-1)[: want.numel()], want, rtol=1e-6)
    # the product equals float math on the FP8-rounded operands (same scales), up to the output dtype
    wq = f8.dequantized_weight()
    sx = (x.abs().amax(1, keepdim=True) if granularity == "row" else x.abs().amax()) / E4M3FN.max
    xq = round_to_fp8(x / sx, E4M3FN) * sx
    ref = xq @ wq.t() + lin.bias.detach()
    got = f8(x)
    tol = 1e-2 if granularity == "row" else 1e-4  # row-wise scales give a bfloat16 product
    assert got.shape == (m, n)
    assert (got - ref).abs().max() <= tol * ref.abs().max()
    # and FP8 is close to the float layer: e4m3fn keeps 3 mantissa bits, error ~2^-4 relative per operand
    full = lin(x).detach()
    assert (got - full).norm() / full.norm() < 0.08


def test_fp8_linear_keeps_leading_dims_and_swaps_every_linear():
    from fed8.models import build_model

    model = build_model("vit_tiny", in_channels=1, height=28, width=28, num_classes=10, seed=0).eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
        names = swap_linears_fp8(model)
        got = model(x)
    assert len(names) == 4 * 4 + 1 and "head" in names and "blocks.0.qkv" in names  # 4 per block + head
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert got.shape == ref.shape and (got - ref).norm() / ref.norm() < 0.1
    with pytest.raises(ParameterError, match="granularity must be one of tensor, row"):
        Float8Linear.from_linear(nn.Linear(4, 4), "block")


def test_fp8_compute_available_says_why_not_here():
    ok, why = fp8_compute_available()
    if not torch.cuda.is_available():
        assert not ok and "no CUDA device" in why and "8.9" in why


@pytest.mark.skipif(not fp8_compute_available()[0], reason="needs an NVIDIA GPU with FP8 tensor cores (cc >= 8.9)")
def test_fp8_linear_on_the_gpu_matches_the_cpu_numbers():
    lin = nn.Linear(512, 256)
    x = torch.randn(64, 512)
    cpu = Float8Linear.from_linear(lin)(x)
    gpu = Float8Linear.from_linear(lin.cuda())(x.cuda()).cpu()
    assert (gpu - cpu).abs().max() <= 1e-3 * cpu.abs().max()


@pytest.mark.slow
def test_quantize_stage_builds_torch_fp8_and_says_it_is_not_timed_without_fp8_cores(tmp_path, small, capsys):
    import json

    import fed8
    from fed8.cli import main
    from fed8.deploy.export import read_metadata
    from fed8.deploy.fp8_linear import load_fp8_model
    from fed8.deploy.runtime import run_logits, session

    cfg = fed8.load_config(None, small + ["data.subset=400", "train.rounds=1", "quantize.enabled=false"])
    fed8.run(cfg, out=tmp_path / "r", report=False)
    assert main(["quantize", str(tmp_path / "r"), "--formats", "int8,torch_float8_e4m3fn"]) == 0
    q = json.loads((tmp_path / "r/deploy/quantization.json").read_text())
    rows = {r["format"]: r for r in q["formats"]}
    row = rows["torch_float8_e4m3fn"]
    assert row["runtime"] == "torch" and row["file"] == "torch_float8_e4m3fn.safetensors" and row["status"] == "ok"
    assert row["top1_agreement_with_float32"] > 0.97 and row["on_device"]["client_accuracy_mean"] is not None
    assert row["bytes_ratio_to_float32"] < 0.5  # the fc layers (most of the cnn's weights) are 1 byte per value
    path = tmp_path / "r/deploy/torch_float8_e4m3fn.safetensors"
    meta = read_metadata(path)
    assert meta["fp8_linears"] == ["fc1", "fc2"] and meta["granularity"] == "tensor" and meta["model"] == "cnn"
    model = load_fp8_model(path)  # rebuilt from the file alone
    assert model.fc1.weight_fp8.dtype == torch.float8_e4m3fn
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        assert np_close(run_logits(session(path), x.numpy()), model(x).numpy())
    if not fp8_compute_available()[0]:
        assert row["latency_ms_batch1"] is None and row["speedup_batch1"] is None
        assert any("latency not measured" in n and "8.9" in n for n in q["notes"])
        capsys.readouterr()
        assert main(["quantize", str(tmp_path / "r"), "--formats", "torch_float8_e4m3fn", "--out", str(tmp_path / "o")]) == 0
        out = capsys.readouterr().out
        assert "n/a" in out and "latency not measured" in out


def np_close(a, b):
    import numpy as np

    return np.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("granularity", ["tensor", "row"])
def test_the_float32_product_off_the_gpu_is_pytorchs_scaled_mm_up_to_summation_order(granularity):
    """fp8_matmul's CPU path against torch._scaled_mm's own CPU kernel (a slow reference: small shapes only)."""
    from fed8.deploy.fp8_linear import fp8_matmul

    g = torch.Generator().manual_seed(1)
    a = (torch.randn(32, 64, generator=g) * 50).to(torch.float8_e4m3fn)
    b = (torch.randn(48, 64, generator=g) * 50).to(torch.float8_e4m3fn).t()
    sa = torch.rand(32, 1, generator=g) + 0.5 if granularity == "row" else torch.tensor(0.7)
    sb = torch.rand(1, 48, generator=g) + 0.5 if granularity == "row" else torch.tensor(1.3)
    out = torch.bfloat16 if granularity == "row" else torch.float32
    ref = torch._scaled_mm(a, b, scale_a=sa, scale_b=sb, out_dtype=out).float()
    got = fp8_matmul(a, b, scale_a=sa, scale_b=sb, out_dtype=out).float()
    exact = (a.double() @ b.double()) * sa.double() * sb.double()  # the products are exact; the sums in float64
    assert got.dtype == torch.float32 and got.shape == (32, 48)
    tol = 8e-3 if granularity == "row" else 1e-5  # bfloat16 output keeps 8 bits
    assert (got - ref).abs().max() <= tol * ref.abs().max()
    assert (got.double() - exact).abs().max() <= tol * exact.abs().max()
