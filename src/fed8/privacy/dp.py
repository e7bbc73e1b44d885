"""Client-level DP primitives: L2 clipping, Gaussian noise, adaptive clipping.

Pure functions on dicts of tensors; randomness only from explicit draws
(:mod:`fed8.privacy.randomness`: the OS CSPRNG under DP).
References: McMahan et al. 2018, "Learning Differentially Private Recurrent Language
Models" (arXiv:1710.06963), DP-FedAvg; Andrew et al. 2021, "Differentially Private
Learning with Adaptive Clipping" (arXiv:1905.03871).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Mapping

import torch

from ..errors import ConfigError, ParameterError

if TYPE_CHECKING:
    from .randomness import Draws

__all__ = ["adaptive_clip_step", "add_gaussian_noise", "clip_by_norm", "global_norm", "split_noise_multiplier"]

Tensors = dict[str, torch.Tensor]


@torch.no_grad()
def global_norm(tensors: Mapping[str, torch.Tensor]) -> float:
    """``||x||_2`` over every tensor of the dict taken together (float64 accumulation)."""
    total = 0.0
    for v in tensors.values():
        total += float(torch.sum(v.to(torch.float64) ** 2))
    return math.sqrt(total)


@torch.no_grad()
def clip_by_norm(tensors: Mapping[str, torch.Tensor], clip_norm: float) -> tuple[Tensors, float]:
    """Scale ``x`` to ``x * min(1, C / ||x||)``; return it and the norm before clipping.

    The result has ``||x|| <= C`` (up to float rounding), which bounds one client's
    contribution to a sum: the sensitivity of DP-FedAvg. ``x`` is not modified.
    """
    if not clip_norm > 0:
        raise ParameterError(f"clip_norm must be > 0; got {clip_norm!r}. Pass a positive L2 bound.")
    norm = global_norm(tensors)
    factor = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return {k: v * factor for k, v in tensors.items()}, norm


@torch.no_grad()
def add_gaussian_noise(tensors: Mapping[str, torch.Tensor], std: float, *, draws: "Draws") -> Tensors:
    """``x + N(0, std^2 I)``, one draw per coordinate, in the dict's sorted key order.

    ``draws``: a :class:`fed8.privacy.randomness.Draws` (``SystemDraws`` for real privacy).
    """
    out = {}
    for k in sorted(tensors):
        v = tensors[k]
        out[k] = v + std * draws.randn(tuple(v.shape)) if std > 0 else v.clone()
    return {k: out[k] for k in tensors}


def split_noise_multiplier(noise_multiplier: float, count_stddev: float) -> float:
    """Noise multiplier left for the update when the clipped-count query also spends budget.

    Andrew et al. 2021 (Sec. 3.1): the update (sensitivity C, noise ``z_u C``) and the
    count of clients whose norm is at most C (bits shifted to ``b - 1/2``, sensitivity
    1/2, noise ``sigma_b``) together are one Gaussian mechanism of multiplier ``z`` iff::

        z^-2 = z_u^-2 + (2 sigma_b)^-2   =>   z_u = (z^-2 - (2 sigma_b)^-2)^(-1/2)

    so the accountant keeps using ``z`` and the update gets the larger ``z_u``.

    Raises
    ------
    ConfigError
        If ``2 sigma_b <= z``: the count alone would use the whole budget.
    """
    if noise_multiplier <= 0:
        return noise_multiplier
    if 2 * count_stddev <= noise_multiplier:
        raise ConfigError(
            f"privacy.adaptive_count_stddev = {count_stddev} is too small for noise_multiplier = "
            f"{noise_multiplier}: the clipped-count query alone would spend the whole budget "
            f"(needs 2 * count_stddev > noise_multiplier). Raise adaptive_count_stddev (the paper uses "
            f"clients_per_round / 20) or the noise multiplier.")
    return (noise_multiplier ** -2 - (2 * count_stddev) ** -2) ** -0.5


def adaptive_clip_step(clip_norm: float, unclipped_fraction: float, *, target_quantile: float,
                       lr: float) -> float:
    """Geometric update of the clipping norm (Andrew et al. 2021, eq. 3).

    ``C <- C * exp(-lr * (b - gamma))`` where ``b`` is the (noisy) fraction of clients
    whose update norm was at most ``C`` and ``gamma`` the target quantile: C grows when
    fewer than ``gamma`` of the clients fit under it, and shrinks otherwise.
    """
    return clip_norm * math.exp(-lr * (unclipped_fraction - target_quantile))
