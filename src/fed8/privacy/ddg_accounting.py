"""Privacy of the distributed discrete Gaussian mechanism (Kairouz, Liu, Steinke 2021, arXiv:2102.06387).

``n`` clients each add ``N_Z(0, sigma^2)`` (in the integer units after scaling by ``1 / gamma``)
to their rounded update; the sum of ``n`` discrete Gaussians is not exactly a discrete
Gaussian, and the paper bounds the gap (their Theorem 1): with

    tau = 10 * sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k / (k + 1)),

and sensitivities ``Delta_2``, ``Delta_1`` of the rounded update (in integer units), one round
is ``(alpha, eps(alpha))``-RDP for every integer ``alpha > 1`` (their Proposition 14, Eq. 17)
with ``s_2 = Delta_2 / (sqrt(n) sigma)``, ``s_1 = Delta_1 / (sqrt(n) sigma)`` and ``d`` the
(padded) dimension:

    eps(alpha) = min( alpha s_2^2 / 2 + tau d,
                      alpha / 2 (s_2^2 + 2 s_1 tau + tau^2 d),
                      alpha / 2 (s_2 + sqrt(d) tau)^2 ).

``T`` rounds compose by adding RDP (no amplification by sampling is claimed here: every
sampled client takes part in every round it is sampled for, and the bound is stated per
participating round); the conversion to ``(epsilon, delta)`` is ``dp-accounting``'s
(:func:`dp_accounting.rdp.compute_epsilon`). The sensitivities after conditional rounding are
``Delta_2 = sqrt(norm_bound)`` (:func:`fed8.privacy.ddg_encode.norm_bound`) and ``Delta_1 <=
min(sqrt(d) Delta_2, Delta_2^2)`` (integer coordinates).

With ``n = 1`` and a large ``sigma``, ``tau`` vanishes and ``eps(alpha) = alpha Delta_2^2 /
(2 sigma^2)``: the continuous Gaussian's RDP, which the tests use as an independent check.
"""

from __future__ import annotations

import math
from typing import Sequence

from ..errors import ParameterError

__all__ = ["DDG_ORDERS", "ddg_epsilon", "ddg_rdp", "ddg_tau"]

DDG_ORDERS = tuple(range(2, 129)) + (256,)


def ddg_tau(sigma: float, n: int) -> float:
    """The paper's ``tau`` for ``n`` clients each adding ``N_Z(0, sigma^2)`` (Theorem 1)."""
    if n < 1 or sigma <= 0:
        raise ParameterError(f"ddg_tau needs n >= 1 and sigma > 0; got n={n}, sigma={sigma}.")
    return 10.0 * sum(math.exp(-2.0 * math.pi**2 * sigma**2 * k / (k + 1)) for k in range(1, n))


def ddg_rdp(*, l2_sens: float, sigma: float, n: int, dim: int, l1_sens: float | None = None,
            orders: Sequence[int] = DDG_ORDERS) -> list[float]:
    """One round's RDP at each order (Proposition 14); sensitivities and ``sigma`` in the same integer units."""
    if l2_sens <= 0 or dim < 1:
        raise ParameterError(f"ddg_rdp needs l2_sens > 0 and dim >= 1; got {l2_sens}, {dim}.")
    l1 = l1_sens if l1_sens is not None else min(math.sqrt(dim) * l2_sens, l2_sens**2)
    tau = ddg_tau(sigma, n)
    s2 = l2_sens / (math.sqrt(n) * sigma)
    s1 = l1 / (math.sqrt(n) * sigma)
    out = []
    for a in orders:
        if int(a) != a or a <= 1:
            raise ParameterError(f"RDP orders must be integers > 1; got {a}.")
        out.append(min(a * s2 * s2 / 2 + tau * dim,
                       a / 2 * (s2 * s2 + 2 * s1 * tau + tau * tau * dim),
                       a / 2 * (s2 + math.sqrt(dim) * tau) ** 2))
    return out


def ddg_epsilon(*, l2_sens: float, sigma: float, n: int, dim: int, rounds: int, delta: float,
                l1_sens: float | None = None, orders: Sequence[int] = DDG_ORDERS) -> float:
    """``epsilon`` at ``delta`` after ``rounds`` rounds (RDP composition, dp-accounting's conversion)."""
    from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

    rdp = [rounds * r for r in ddg_rdp(l2_sens=l2_sens, sigma=sigma, n=n, dim=dim, l1_sens=l1_sens, orders=orders)]
    eps, _ = compute_epsilon(list(orders), rdp, delta)
    return float(eps)
