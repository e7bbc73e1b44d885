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
