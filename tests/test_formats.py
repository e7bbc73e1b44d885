import math

import ml_dtypes
import numpy as np
import pytest
import torch

from fed8.formats import (E4M3FN, E5M2, PerBlock, PerChannel, PerTensor, choose_qparams_int8, choose_scale_fp8,
                          dequantize_fp8, dequantize_int8, fake_quantize_int8, fp8_format, from_bits, quantize_fp8,
                          quantize_int8, round_to_fp8, sqnr_db, to_bits)

ALL_F16 = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.float16).to(torch.float32)
ML = {"float8_e4m3fn": ml_dtypes.float8_e4m3fn, "float8_e5m2": ml_dtypes.float8_e5m2}


def same_bits(a: torch.Tensor, b: torch.Tensor, fmt) -> torch.Tensor:
    na, nb = from_bits(a, fmt).isnan(), from_bits(b, fmt).isnan()
    return (a == b) | (na & nb)  # NaN has several encodings


# -- FP8 known answers ----------------------------------------------------------------------
def test_fp8_constants():
    assert (E4M3FN.max, E5M2.max) == (448.0, 57344.0)
    assert (E4M3FN.min_normal, E4M3FN.min_subnormal) == (2**-6, 2**-9)
    assert (E5M2.min_normal, E5M2.min_subnormal) == (2**-14, 2**-16)
    assert from_bits(torch.tensor([0x7E], dtype=torch.uint8), E4M3FN).item() == 448.0
    assert from_bits(torch.tensor([0x7B], dtype=torch.uint8), E5M2).item() == 57344.0
    with pytest.raises(ValueError, match="'fp8' alone is ambiguous"):
        fp8_format("fp8")


@pytest.mark.parametrize("x, e4m3, e5m2", [
    (1.0, 1.0, 1.0),
    (1.0625, 1.0, 1.0),      # halfway between 1 and 1.125 (e4m3): ties to even -> 1.0
    (1.1875, 1.25, 1.25),    # halfway between 1.125 and 1.25 (e4m3): ties to even -> 1.25
    (1.125, 1.125, 1.0),     # e5m2 spacing at 1 is 0.25: 1.125 is a tie -> 1.0 (even)
    (1.375, 1.375, 1.5),     # e5m2 tie between 1.25 and 1.5 -> 1.5 (even mantissa)
    (2.0**-9, 2.0**-9, 2.0**-9),        # e4m3 smallest subnormal
    (2.0**-10, 0.0, 2.0**-10),          # e4m3: tie between 0 and 2^-9 -> 0
    (3 * 2.0**-10, 2.0**-8, 3 * 2.0**-10),  # e4m3: 1.5 * 2^-9 ties to 2 * 2^-9
    (2.0**-17, 0.0, 0.0),               # e5m2: half of smallest subnormal -> 0
    (500.0, 448.0, 512.0),              # saturates e4m3
    (1e9, 448.0, 57344.0),              # saturates both
    (-1e9, -448.0, -57344.0),
    (math.inf, 448.0, 57344.0),
])
def test_fp8_known_answers(x, e4m3, e5m2):
    t = torch.tensor([x])
    assert round_to_fp8(t, E4M3FN).item() == e4m3
    assert round_to_fp8(t, E5M2).item() == e5m2


def test_fp8_nan_stays_nan_and_overflow_without_saturation():
    nan = torch.tensor([float("nan")])
    assert round_to_fp8(nan, E4M3FN).isnan().all() and round_to_fp8(nan, E5M2).isnan().all()
    big = torch.tensor([1e6])
    assert round_to_fp8(big, E4M3FN, saturate=False).isnan().all()
    assert round_to_fp8(big, E5M2, saturate=False).isinf().all()


# -- FP8 bit-exact against oracles over all 65,536 float16 patterns ---------------------------
@pytest.mark.parametrize("fmt", [E4M3FN, E5M2], ids=lambda f: f.name)
def test_fp8_saturating_matches_ml_dtypes(fmt):
    ours = to_bits(ALL_F16, fmt)  # torch's cast after a clamp; ml_dtypes is an independent implementation
    ref = torch.from_numpy(ALL_F16.clamp(-fmt.max, fmt.max).numpy().astype(ML[fmt.name]).view(np.uint8).copy())
    assert bool(same_bits(ours, ref, fmt).all())
    # float32 inputs (more mantissa bits than float16: the ties and sticky bits differ): a sweep of bit patterns
    x = (torch.arange(0, 2**32, 65521, dtype=torch.int64) - 2**31).to(torch.int32).view(torch.float32)
    with np.errstate(invalid="ignore"):  # NaN patterns stay NaN
        ref32 = torch.from_numpy(x.clamp(-fmt.max, fmt.max).numpy().astype(ML[fmt.name]).view(np.uint8).copy())
    assert bool(same_bits(to_bits(x, fmt), ref32, fmt).all())
    finite = ALL_F16.isfinite()
    assert not from_bits(ours, fmt)[finite].isnan().any() and not from_bits(ours, fmt)[finite].isinf().any()


@pytest.mark.parametrize("fmt", [E4M3FN, E5M2], ids=lambda f: f.name)
def test_fp8_nonsaturating_matches_ml_dtypes(fmt):
    ours = to_bits(ALL_F16, fmt, saturate=False)
    ref = torch.from_numpy(ALL_F16.numpy().astype(ML[fmt.name]).view(np.uint8).copy())
    assert bool(same_bits(ours, ref, fmt).all())
    # in range, torch's plain cast agrees too
    inr = ALL_F16.abs() <= fmt.max
    tref = ALL_F16.to(fmt.torch_dtype).view(torch.uint8)
    assert bool(same_bits(ours[inr], tref[inr], fmt).all())


@pytest.mark.parametrize("fmt", [E4M3FN, E5M2], ids=lambda f: f.name)
def test_fp8_decode_all_256_codes(fmt):
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    ref = codes.numpy().view(ML[fmt.name]).astype(np.float32)
    ours = from_bits(codes, fmt).numpy()
    assert np.array_equal(ours, ref, equal_nan=True)


# -- scaled FP8 ------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt, min_db", [(E4M3FN, 28.0), (E5M2, 22.0)], ids=["e4m3fn", "e5m2"])
@pytest.mark.parametrize("g", [PerTensor(), PerChannel(0), PerBlock(64)], ids=["tensor", "channel", "block"])
def test_fp8_sqnr_on_gaussian(fmt, min_db, g):
    x = torch.randn(64, 300, generator=torch.Generator().manual_seed(0))
    s = choose_scale_fp8(x, fmt, granularity=g)
    xh = dequantize_fp8(quantize_fp8(x, s, fmt, granularity=g), s, fmt, granularity=g, shape=x.shape)
    assert xh.shape == x.shape
    assert sqnr_db(x, xh) > min_db  # ~31 dB for e4m3 (3 mantissa bits), ~25 dB for e5m2
    assert sqnr_db(x, xh) < min_db + 10  # and not impossibly good


def test_fp8_scale_methods():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10000, generator=g)
    x[0] = 1000.0  # one outlier
    amax = choose_scale_fp8(x, E4M3FN, method="amax")
    assert amax.item() == pytest.approx(1000.0 / 448.0)
    pct = choose_scale_fp8(x, E4M3FN, method="percentile", percentile=99.9)
    assert pct.item() < amax.item() / 100
    mse = choose_scale_fp8(x, E4M3FN, method="mse")

    def err(s):
        return float(((dequantize_fp8(quantize_fp8(x, s, E4M3FN), s, E4M3FN) - x) ** 2).mean())

    assert err(mse) <= err(amax)
    assert choose_scale_fp8(torch.zeros(5), E5M2).item() == 1.0
    with pytest.raises(ValueError, match="'amax', 'percentile' or 'mse'"):
        choose_scale_fp8(x, E5M2, method="max")


# -- INT8 ------------------------------------------------------------------------------------
def test_int8_known_answers():
    x = torch.tensor([-1.0, -0.5, 0.0, 0.25, 1.0])
    s, z = choose_qparams_int8(x, symmetric=True)
    assert s.item() == pytest.approx(1 / 127) and z.item() == 0
    q = quantize_int8(x, s, z)
    assert q.tolist() == [-127, -64, 0, 32, 127]  # -63.5 -> -64 (even), 31.75 -> 32
    # ties to even
    assert quantize_int8(torch.tensor([0.5, 1.5, 2.5, -2.5]), torch.tensor(1.0)).tolist() == [0, 2, 2, -2]
    # saturating
    assert quantize_int8(torch.tensor([1e9, -1e9]), torch.tensor(1.0)).tolist() == [127, -127]
    # affine: [0, 2.55] -> scale 0.01, zero point -128
    s, z = choose_qparams_int8(torch.tensor([0.0, 2.55]), symmetric=False)
    assert s.item() == pytest.approx(0.01) and z.item() == -128
    assert quantize_int8(torch.tensor([0.0, 2.55]), s, z).tolist() == [-128, 127]
    s, z = choose_qparams_int8(torch.zeros(3))
    assert s.item() == 1.0


def test_int8_per_channel_and_block():
    x = torch.tensor([[1.0, -2.0], [10.0, 5.0]])
    s, z = choose_qparams_int8(x, granularity=PerChannel(0))
    assert s.flatten().tolist() == pytest.approx([2 / 127, 10 / 127])
    q = quantize_int8(x, s, z)
    assert q.tolist() == [[64, -127], [127, 64]]  # 63.5 -> 64 (even), 63.5 -> 64
    xb = torch.arange(10, dtype=torch.float32)
    s, z = choose_qparams_int8(xb, granularity=PerBlock(4))
    assert s.flatten().tolist() == pytest.approx([3 / 127, 7 / 127, 9 / 127])
    back = dequantize_int8(quantize_int8(xb, s, z, granularity=PerBlock(4)), s, z, granularity=PerBlock(4),
                           shape=xb.shape)
    assert back.shape == xb.shape and torch.allclose(back, xb, atol=9 / 127 / 2 + 1e-6)


@pytest.mark.parametrize("g, symmetric", [(PerTensor(), True), (PerTensor(), False), (PerChannel(1), True),
                                          (PerBlock(128), True)])
def test_int8_error_bound_and_sqnr(g, symmetric):
    x = torch.randn(32, 257, generator=torch.Generator().manual_seed(1))
    s, z = choose_qparams_int8(x, symmetric=symmetric, granularity=g)
    xh = fake_quantize_int8(x, symmetric=symmetric, granularity=g)
    # round to nearest: |x - x_hat| <= s / 2 for every element inside the range
    sb = s if not isinstance(g, PerBlock) else s.expand(-1, 128).reshape(-1)[: x.numel()].reshape(x.shape)
    assert bool(((x - xh).abs() <= sb / 2 + 1e-6).all())
    assert sqnr_db(x, xh) > 36.0  # ~6 dB per bit, minus the Gaussian crest factor


def test_int8_stochastic_rounding_is_unbiased():
    # x = 0.3 * s: rounds to 1 with p = 0.3. Mean of N draws has std sqrt(p(1-p)/N) = 0.0029 (N = 25,000);
    # 5 sigma = 0.0145.
    n = 25_000
    x = torch.full((n,), 0.3)
    q = quantize_int8(x, torch.tensor(1.0), generator=torch.Generator().manual_seed(0))
    assert set(q.unique().tolist()) == {0, 1}
    assert abs(q.float().mean().item() - 0.3) < 5 * math.sqrt(0.3 * 0.7 / n)
    det = quantize_int8(x, torch.tensor(1.0))
    assert det.float().mean().item() == 0.0  # nearest rounding is biased here: that is the point


def test_sqnr():
    x = torch.tensor([1.0, 2.0])
    assert sqnr_db(x, x) == math.inf
    assert sqnr_db(x, x * 1.1) == pytest.approx(20.0)


# -- the one API for every 8-bit format (fed8.formats.api) -------------------------------------------------------

@pytest.mark.parametrize("fmt", ["int8", "float8_e4m3fn", "float8_e5m2"])
@pytest.mark.parametrize("granularity", [PerTensor(), PerChannel(0), PerBlock(16)])
def test_one_api_gives_the_per_format_codes_and_bounds(fmt, granularity):
    from fed8.formats import FORMATS_8BIT, choose_qparams, dequantize, quantize

    assert fmt in FORMATS_8BIT
    x = torch.randn(8, 40, generator=torch.Generator().manual_seed(3)) * 3
    qp = choose_qparams(x, fmt, granularity=granularity)
    codes = quantize(x, qp, fmt, granularity=granularity)
    x_hat = dequantize(codes, qp, fmt, granularity=granularity, shape=x.shape)
    assert codes.element_size() == 1 and x_hat.shape == x.shape
    if fmt == "int8":  # the same codes as the int8 functions, symmetric, half a step of error at most
        s, _ = choose_qparams_int8(x, symmetric=True, granularity=granularity)
        assert torch.equal(codes, quantize_int8(x, s, granularity=granularity, symmetric=True))
        assert qp.zero_point is None
        if not isinstance(granularity, PerBlock):  # (blocks: the same codes, checked above)
            assert ((x_hat - x).abs() <= s / 2 + 1e-6).all()
    else:  # the same bytes as the FP8 functions, and the format's relative error for normals
        s = choose_scale_fp8(x, fmt, granularity=granularity)
        assert torch.equal(codes, quantize_fp8(x, s, fmt, granularity=granularity))
        rel = 2.0**-4 if fmt == "float8_e4m3fn" else 2.0**-3
        big = x.abs() > 0.5
        assert ((x_hat - x).abs()[big] <= rel * x.abs()[big] + 1e-6).all()


def test_one_api_affine_int8_is_the_onnxruntime_uint8_grid_shifted():
    from fed8.formats import dequantize, qparams_for_range, quantize

    lo, hi = -0.7, 3.1
    x = torch.linspace(-2, 5, 1001)
    qp = qparams_for_range(lo, hi, "int8")
    got = dequantize(quantize(x, qp, "int8"), qp, "int8")
    s = (hi - lo) / 255
    z = round(-lo / s)
    want = ((torch.round(x / s) + z).clamp(0, 255) - z) * s  # ORT's uint8 affine activation grid
    assert torch.allclose(got, want, atol=1e-5)
    assert qp.zero_point is not None and int(qp.zero_point) == z - 128


def test_one_api_errors_name_the_allowed_values():
    from fed8.errors import ParameterError
    from fed8.formats import choose_qparams, quantize

    x = torch.randn(10)
    with pytest.raises(ParameterError, match="name the FP8 format exactly"):
        choose_qparams(x, "fp8")
    with pytest.raises(ParameterError, match="int8 scale method must be one of amax, minmax"):
        choose_qparams(x, "int8", method="mse")
    qp = choose_qparams(x, "float8_e5m2")
    with pytest.raises(ParameterError, match="stochastic rounding is implemented for int8 only"):
        quantize(x, qp, "float8_e5m2", generator=torch.Generator())
