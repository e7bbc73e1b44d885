"""Quantization error measures."""

from __future__ import annotations

import math

import torch

__all__ = ["sqnr_db"]


def sqnr_db(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(sum x^2 / sum (x - x_hat)^2)`` in dB (inf if exact)."""
    x, x_hat = x.to(torch.float64), x_hat.to(torch.float64)
    noise = float(((x - x_hat) ** 2).sum())
    signal = float((x**2).sum())
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf
