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

Client sampling amplifies each round. The discrete Gaussian's sum is not a Gaussian, so the
Gaussian-specific subsampling analyses of ``dp-accounting`` do not apply; the general ones
for any mechanism with RDP curve ``eps(l)`` at integer orders do, as the paper's own
accounting code uses them:

* Poisson sampling with rate ``q`` (add/remove adjacency), Zhu and Wang 2019 ("Poisson
  Subsampled Renyi Differential Privacy", ICML, the general upper bound). A run's mechanism
  does not use it: under Poisson sampling the number of noise shares, which the sum reveals,
  depends on who was sampled (:mod:`.ddg` refuses it):

      eps'(a) = 1/(a-1) log( (1-q)^(a-1) (a q - q + 1) + C(a,2) q^2 (1-q)^(a-2) e^eps(2)
                             + 3 sum_{l=3}^{a} C(a,l) q^l (1-q)^(a-l) e^((l-1) eps(l)) );

* sampling ``m`` of ``N`` without replacement, ``g = m / N`` (replace-one adjacency, where
  one client moves the sum by twice its norm: sensitivities doubled), Wang, Balle and
  Kasiviswanathan 2019 (arXiv:1808.00087, Theorem 9 with ``eps(inf) = inf``):

      eps'(a) = 1/(a-1) log( 1 + g^2 C(a,2) min(4 (e^eps(2) - 1), 2 e^eps(2))
                             + 2 sum_{j=3}^{a} g^j C(a,j) e^((j-1) eps(j)) ),

each capped by the unsampled ``eps(a)``. Against a party that sees who took part in each round
there is no amplification: :func:`participation_bound` bounds how many rounds a client joins.
``T`` rounds compose by adding RDP; the
conversion to ``(epsilon, delta)`` is ``dp-accounting``'s
(:func:`dp_accounting.rdp.compute_epsilon`). The sensitivities after conditional rounding are
``Delta_2 = sqrt(norm_bound)`` (:func:`fed8.privacy.ddg_encode.norm_bound`) and ``Delta_1 <=
min(sqrt(d) Delta_2, Delta_2^2)`` (integer coordinates).

Adaptive clipping (Andrew et al. 2021) adds a second query each round: the count of clients
whose update was not clipped, ``sum_k b_k`` with ``b_k`` in {0, 1}, to which each client adds
``N_Z(0, sigma_b^2)`` inside the same secure sum. It is the same mechanism in one dimension
with sensitivity 1 (``Delta_2 = Delta_1 = 1``: one client's bit moves the count by at most 1
under either adjacency). The two queries of a round compose by adding their RDP curves, and
sampling amplifies the pair, whose curve is that sum (``count_sigma`` of :func:`ddg_epsilon`).

With ``n = 1`` and a large ``sigma``, ``tau`` vanishes and ``eps(alpha) = alpha Delta_2^2 /
(2 sigma^2)``: the continuous Gaussian's RDP, which the tests use as an independent check.
"""

from __future__ import annotations

import math
from typing import Sequence

from ..errors import ParameterError

__all__ = ["DDG_ORDERS", "ddg_epsilon", "ddg_rdp", "ddg_tau", "participation_bound", "poisson_subsampled_rdp",
           "wor_subsampled_rdp"]

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


def _log_binom(a: int) -> list[float]:
    return [math.lgamma(a + 1) - math.lgamma(j + 1) - math.lgamma(a - j + 1) for j in range(a + 1)]


def _logsumexp(xs: Sequence[float]) -> float:
    m = max(xs)
    return m if m == -math.inf else m + math.log(sum(math.exp(x - m) for x in xs))


def _base_curve(rdp: Sequence[float], orders: Sequence[int], rate: float, what: str):
    """``eps(order)`` of the base curve ``rdp`` (orders 2, 3, ...), after checking it and the sampling ``rate``."""
    if len(rdp) < max(orders) - 1:
        raise ParameterError(f"the base RDP curve must give orders 2..{max(orders)}; got {len(rdp)} values.")
    if not 0 < rate <= 1:
        raise ParameterError(f"the sampling {what} must be in (0, 1]; got {rate}.")
    return lambda order: rdp[order - 2]


def poisson_subsampled_rdp(q: float, rdp: Sequence[float], orders: Sequence[int]) -> list[float]:
    """RDP at ``orders`` of a mechanism with RDP ``rdp[l - 2]`` at order ``l`` under Poisson sampling ``q`` (Zhu-Wang)."""
    eps = _base_curve(rdp, orders, q, "rate")
    if q == 1:
        return [eps(a) for a in orders]
    lq, l1q = math.log(q), math.log1p(-q)
    out = []
    for a in orders:
        lb = _log_binom(a)
        terms = [(a - 1) * l1q + math.log(a * q - q + 1), lb[2] + 2 * lq + (a - 2) * l1q + eps(2)]
        terms += [math.log(3) + lb[j] + j * lq + (a - j) * l1q + (j - 1) * eps(j) for j in range(3, a + 1)]
        out.append(min(_logsumexp(terms) / (a - 1), eps(a)))
    return out


def wor_subsampled_rdp(g: float, rdp: Sequence[float], orders: Sequence[int]) -> list[float]:
    """RDP at ``orders`` under sampling a fraction ``g`` without replacement (Wang-Balle-Kasiviswanathan Thm 9).

    ``rdp`` is the base mechanism's curve under replace-one adjacency.
    """
    eps = _base_curve(rdp, orders, g, "fraction")
    if g == 1:
        return [eps(a) for a in orders]
    lg = math.log(g)
    e2 = eps(2)
    # log min(4 (e^e2 - 1), 2 e^e2), computed without overflow
    second = min(math.log(4) + e2 + math.log1p(-math.exp(-e2)) if e2 > 0 else -math.inf, math.log(2) + e2)
    out = []
    for a in orders:
        lb = _log_binom(a)
        terms = [0.0, 2 * lg + lb[2] + second]
        terms += [math.log(2) + j * lg + lb[j] + (j - 1) * eps(j) for j in range(3, a + 1)]
        out.append(min(_logsumexp(terms) / (a - 1), eps(a)))
    return out


def participation_bound(rounds: int, rate: float, tail: float) -> tuple[int, float]:
    """``(k, P[K > k])`` for the fewest ``k`` with ``P[K > k] <= tail``, ``K ~ Binomial(rounds, rate)``.

    ``K`` is how many of ``rounds`` independent rounds, each sampling a client with
    probability ``rate``, include a given client. A party that sees who takes part in each
    round (the server) gets no amplification by sampling; its view of a client is the
    composition of the rounds that client joined, at most ``k`` of them except with
    probability ``P[K > k]``, which the caller adds to ``delta``.
    """
    if rounds < 0 or not 0 < rate <= 1 or not 0 <= tail < 1:
        raise ParameterError(f"participation_bound needs rounds >= 0, rate in (0, 1] and tail in [0, 1); got "
                             f"{rounds}, {rate}, {tail}.")
    if rate == 1 or rounds == 0:
        return rounds, 0.0
    lq, l1q = math.log(rate), math.log1p(-rate)
    above = 0.0  # P[K > k], from k = rounds downwards
    for k in range(rounds, -1, -1):
        pk = math.exp(math.lgamma(rounds + 1) - math.lgamma(k + 1) - math.lgamma(rounds - k + 1) + k * lq
                      + (rounds - k) * l1q)  # P[K = k]
        if above + pk > tail:
            return k, above
        above += pk
    return 0, above  # pragma: no cover - the loop returns at k = 0 at the latest (P[K >= 0] = 1 > tail)


def ddg_epsilon(*, l2_sens: float, sigma: float, n: int, dim: int, rounds: int, delta: float,
                l1_sens: float | None = None, orders: Sequence[int] = DDG_ORDERS,
                poisson_rate: float | None = None, wor_fraction: float | None = None,
                count_sigma: float | None = None) -> float:
    """``epsilon`` at ``delta`` after ``rounds`` rounds (RDP composition, dp-accounting's conversion).

    ``poisson_rate`` / ``wor_fraction``: the round's client sampling (at most one), amplified
    with :func:`poisson_subsampled_rdp` / :func:`wor_subsampled_rdp`; the sensitivities are
    then those of the matching adjacency (the caller doubles them for replace-one).
    ``count_sigma``: each client's noise std on the clipped-count query of adaptive clipping
    (sensitivity 1, the same ``n`` shares), composed with the update's in every round.
    """
    from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

    if rounds <= 0:
        return 0.0
    if poisson_rate is not None and wor_fraction is not None:
        raise ParameterError("ddg_epsilon takes poisson_rate or wor_fraction, not both.")
    orders = list(orders)

    def curve(at: Sequence[int]) -> list[float]:
        out = ddg_rdp(l2_sens=l2_sens, sigma=sigma, n=n, dim=dim, l1_sens=l1_sens, orders=at)
        if count_sigma is not None:
            count = ddg_rdp(l2_sens=1.0, l1_sens=1.0, sigma=count_sigma, n=n, dim=1, orders=at)
            out = [a + b for a, b in zip(out, count)]
        return out

    if poisson_rate is None and wor_fraction is None:
        per = curve(orders)
    else:
        base = curve(range(2, max(orders) + 1))
        per = (poisson_subsampled_rdp(poisson_rate, base, orders) if poisson_rate is not None
               else wor_subsampled_rdp(wor_fraction, base, orders))
    eps, _ = compute_epsilon(orders, [rounds * r for r in per], delta)
    return float(eps)
