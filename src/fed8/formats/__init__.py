"""8-bit number formats as pure functions: INT8 (symmetric / affine) and FP8 (float8_e4m3fn, float8_e5m2).

``choose_qparams`` / ``quantize`` / ``dequantize`` (:mod:`.api`) are the one API for all three;
the per-format functions underneath stay available.
"""

from .api import FORMATS_8BIT, QParams, choose_qparams, dequantize, qparams_for_range, quantize
from .fp8 import (E4M3FN, E5M2, FORMATS, FP8Format, choose_scale_fp8, dequantize_fp8, fp8_format, from_bits,
                  quantize_fp8, round_to_fp8, to_bits)
from .granularity import Granularity, PerBlock, PerChannel, PerTensor
from .int8 import INT8_MAX, INT8_MIN, choose_qparams_int8, dequantize_int8, fake_quantize_int8, quantize_int8
from .metrics import sqnr_db

__all__ = [
    "E4M3FN", "E5M2", "FORMATS", "FORMATS_8BIT", "FP8Format", "Granularity", "INT8_MAX", "INT8_MIN", "PerBlock",
    "PerChannel", "PerTensor", "QParams", "choose_qparams", "choose_qparams_int8", "choose_scale_fp8", "dequantize",
    "dequantize_fp8", "dequantize_int8", "fake_quantize_int8", "fp8_format", "from_bits", "qparams_for_range",
    "quantize", "quantize_fp8", "quantize_int8", "round_to_fp8", "sqnr_db", "to_bits",
]
