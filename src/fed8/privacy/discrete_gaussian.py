"""Exact sampling of the discrete Gaussian from random bits (Canonne, Kamath, Steinke 2020, arXiv:2004.00010).

``N_Z(0, sigma^2)`` puts mass ``exp(-x^2 / (2 sigma^2)) / Z`` on every integer ``x``: the
noise of the distributed discrete Gaussian mechanism (Kairouz, Liu, Steinke 2021), which
adds integers to integers and so survives a modular secure sum exactly. The samplers here use
integer arithmetic only (no floating point anywhere on the path from bits to samples), with
``sigma^2`` a positive integer:

* ``Bernoulli(exp(-n/d))`` (their Algorithm 1): for ``n/d <= 1``, draw ``A_k ~
  Bernoulli(n / (d k))`` for ``k = 1, 2, ...`` until the first ``A_k = 0``; return 1 iff
  that ``k`` is odd. For ``n/d > 1``, ``floor(n/d)`` draws of ``Bernoulli(exp(-1))`` and one
  of ``Bernoulli(exp(-(n/d - floor(n/d))))``, all 1.
* Discrete Laplace with scale ``t`` (Algorithm 2): ``U ~ Unif{0..t-1}`` kept with probability
  ``exp(-U/t)``, ``V`` = the number of ``Bernoulli(exp(-1))`` successes before a failure,
  ``X = U + t V``, a random sign (``-0`` rejected).
* Discrete Gaussian (Algorithm 3): ``t = floor(sigma) + 1``; ``Y ~ Lap_Z(t)`` kept with
  probability ``exp(-(|Y| - sigma^2/t)^2 / (2 sigma^2))``, i.e. ``Bernoulli(exp(-n/d))``
  with ``n = (|Y| t - sigma^2)^2`` and ``d = 2 sigma^2 t^2``.

Fast path (same algorithm, same distribution): the Bernoulli draws whose probabilities
repeat, ``exp(-U/t)`` for ``U < t``, ``exp(-1)`` and the Gaussian acceptance for ``|Y| <
16 t``, are decided by one 64-bit word ``W`` each against a table of ``L = floor(p 2^64)``.
``Bernoulli(p)`` is the event ``u < p`` for ``u = 0.W W' W''...`` uniform in [0, 1):
``W < L`` decides it true and ``W > L`` false, exactly; only ``W = L`` (probability
``2^-64``) reads more words, against more digits of ``p`` (:func:`_decide`). Each ``L`` is
exact: ``p`` is computed with Python's :mod:`decimal` to 50 significant digits (its ``exp``
is correctly rounded), and an entry whose ``p 2^64`` lies within ``1e-25`` of an integer is
marked uncertain and always read further. No floating point decides anything.

Vectorized over numpy ``int64`` arrays: every rejection loop runs on the still-undecided
entries only. Uniform integers below ``m`` come from 64-bit random words by rejection
(``u mod m`` for ``u < floor(2^64 / m) m``), so they are exactly uniform. The words come
from ``words(n)``: the OS CSPRNG (:func:`os.urandom`) unless a test passes its own.
``sigma^2`` is limited to ``2^26`` so that every product stays below ``2^62``.
"""

from __future__ import annotations

import functools
import math
import os
from decimal import Decimal, localcontext
from typing import Callable

import numpy as np

from ..errors import ParameterError

__all__ = ["MAX_SIGMA2", "bernoulli_exp", "discrete_gaussian", "discrete_gaussian_pmf", "discrete_gaussian_reference",
           "discrete_laplace", "system_words", "uniform_below"]

MAX_SIGMA2 = 2**26
Words = Callable[[int], np.ndarray]


def system_words(n: int) -> np.ndarray:
    """``n`` uniform 64-bit words from the operating system's CSPRNG."""
    return np.frombuffer(os.urandom(8 * n), dtype=np.uint64).copy() if n else np.zeros(0, np.uint64)


def uniform_below(m: np.ndarray, words: Words = system_words) -> np.ndarray:
    """Exactly uniform integers in ``[0, m)`` for each positive ``m`` (int64, ``m < 2^62``)."""
    m = np.asarray(m, dtype=np.uint64)
    out = np.empty(m.shape, dtype=np.uint64)
    todo = np.arange(m.size)
    flat_m = m.reshape(-1)
    flat = out.reshape(-1)
    while todo.size:
        mm = flat_m[todo]
        limit = (np.uint64(2**64 - 1) // mm) * mm  # accept u < limit (a multiple of m): u mod m is uniform
        u = words(todo.size)
        ok = u < limit
        flat[todo[ok]] = u[ok] % mm[ok]
        todo = todo[~ok]
    return out.astype(np.int64)


def _bernoulli_frac(num: np.ndarray, den: np.ndarray, words: Words) -> np.ndarray:
    """``Bernoulli(num / den)`` for ``0 <= num <= den``."""
    return uniform_below(den, words) < num


def _bernoulli_exp_le1(num: np.ndarray, den: np.ndarray, words: Words) -> np.ndarray:
    """``Bernoulli(exp(-num/den))`` for ``0 <= num <= den`` (Algorithm 1, gamma in [0, 1])."""
    out = np.zeros(num.shape, dtype=bool)
    k = np.ones(num.shape, dtype=np.int64)
    todo = np.arange(num.size)
    while todo.size:
        a = _bernoulli_frac(num[todo], den[todo] * k[todo], words)
        stop = ~a
        out[todo[stop]] = (k[todo[stop]] % 2) == 1
        k[todo[a]] += 1
        todo = todo[a]
    return out


def bernoulli_exp(num, den, words: Words = system_words) -> np.ndarray:
    """``Bernoulli(exp(-num/den))`` for integers ``num >= 0``, ``den > 0`` (arrays of the same shape)."""
    num = np.asarray(num, dtype=np.int64).reshape(-1)
    den = np.broadcast_to(np.asarray(den, dtype=np.int64), num.shape).reshape(-1)
    if (num < 0).any() or (den <= 0).any():
        raise ParameterError("bernoulli_exp needs num >= 0 and den > 0.")
    whole, rest = num // den, num % den
    out = np.ones(num.shape, dtype=bool)
    todo = np.flatnonzero(whole > 0)
    while todo.size:  # floor(num/den) draws of Bernoulli(exp(-1)), stopping at the first failure
        ones = np.ones(todo.size, dtype=np.int64)
        b = _bernoulli_exp_le1(ones, ones, words)
        out[todo[~b]] = False
        whole[todo] -= 1
        todo = todo[b & (whole[todo] > 0)]
    live = np.flatnonzero(out)
    out[live] = _bernoulli_exp_le1(rest[live], den[live], words)
    return out


def discrete_laplace(t: int, size: int, words: Words = system_words) -> np.ndarray:
    """``size`` samples of ``P(x) ∝ exp(-|x| / t)`` on the integers (Algorithm 2), ``t >= 1`` an integer."""
    if t < 1:
        raise ParameterError(f"discrete_laplace scale t must be an integer >= 1; got {t}.")
    out = np.empty(size, dtype=np.int64)
    todo = np.arange(size)
    while todo.size:
        n = todo.size
        u = uniform_below(np.full(n, t, dtype=np.int64), words)
        keep = bernoulli_exp(u, np.full(n, t, dtype=np.int64), words)
        v = np.zeros(n, dtype=np.int64)
        go = np.flatnonzero(keep)
        while go.size:  # V: Bernoulli(exp(-1)) successes before the first failure
            ones = np.ones(go.size, dtype=np.int64)
            a = bernoulli_exp(ones, ones, words)
            v[go[a]] += 1
            go = go[a]
        x = u + t * v
        sign = uniform_below(np.full(n, 2, dtype=np.int64), words)
        ok = keep & ~((sign == 1) & (x == 0))  # -0 would count zero twice
        out[todo[ok]] = np.where(sign[ok] == 1, -x[ok], x[ok])
        todo = todo[~ok]
    return out


def _floor_scaled(num: int, den: int, bits: int) -> tuple[int, bool]:
    """``floor(exp(-num/den) 2^bits)`` and whether it is certain (False: within 1e-25 of an integer)."""
    with localcontext() as c:
        c.prec = 40 + math.ceil(0.302 * bits) + len(str(num)) // 3
        v = (Decimal(-num) / Decimal(den)).exp() * (Decimal(2) ** bits)
    f = int(v)
    frac = v - f
    return f, Decimal("1e-25") < frac < 1 - Decimal("1e-25")


def _decide(num: int, den: int, w: int, words: Words) -> bool:
    """``Bernoulli(exp(-num/den))`` given that its first word is ``w``: more words until ``u`` and ``p`` differ."""
    value, bits = int(w), 64
    while True:
        f, certain = _floor_scaled(num, den, bits)
        lo, hi = (f, f) if certain else (f - 1, f + 1)
        if value < lo:
            return True
        if value > hi:
            return False
        value, bits = (value << 64) | int(words(1)[0]), bits + 64


class _Table:
    """``L = floor(exp(-num_i / den_i) 2^64)`` for a family of probabilities, with the uncertain entries widened."""

    def __init__(self, pairs: list[tuple[int, int]]) -> None:
        self.pairs = pairs
        lo, hi = np.empty(len(pairs), np.uint64), np.empty(len(pairs), np.uint64)
        for i, (num, den) in enumerate(pairs):
            if num == 0:  # p = 1: every word accepts
                lo[i] = hi[i] = np.uint64(2**64 - 1)
                continue
            f, certain = _floor_scaled(num, den, 64)
            lo[i], hi[i] = (f, f) if certain else (max(f - 1, 0), f + 1)
        self.lo, self.hi, self.one = lo, hi, np.array([n == 0 for n, _ in pairs])

    def draw(self, index: np.ndarray, words: Words) -> np.ndarray:
        """One Bernoulli per entry of ``index`` (into the table), exactly."""
        w = words(index.size)
        lo, hi = self.lo[index], self.hi[index]
        out = (w < lo) | self.one[index]
        for i in np.flatnonzero((w >= lo) & (w <= hi) & ~self.one[index]):
            out[i] = _decide(*self.pairs[int(index[i])], int(w[i]), words)
        return out


@functools.lru_cache(maxsize=8)
def _tables(s2: int) -> tuple[_Table, _Table, _Table, int]:
    t = math.isqrt(s2) + 1
    ymax = 16 * t
    lap = _Table([(u, t) for u in range(t)])
    gauss = _Table([((a * t - s2) ** 2, 2 * s2 * t * t) for a in range(ymax)])
    return lap, _Table([(1, 1)]), gauss, ymax


def _laplace_fast(t: int, lap: _Table, e1: _Table, size: int, words: Words) -> np.ndarray:
    """:func:`discrete_laplace` with the tabled Bernoulli draws."""
    out = np.empty(size, dtype=np.int64)
    todo = np.arange(size)
    while todo.size:
        n = todo.size
        u = uniform_below(np.full(n, t, dtype=np.int64), words)
        keep = lap.draw(u, words)
        v = np.zeros(n, dtype=np.int64)
        go = np.flatnonzero(keep)
        while go.size:
            a = e1.draw(np.zeros(go.size, dtype=np.int64), words)
            v[go[a]] += 1
            go = go[a]
        x = u + t * v
        sign = np.unpackbits(words((n + 63) // 64).view(np.uint8))[:n].astype(bool)
        ok = keep & ~(sign & (x == 0))
        out[todo[ok]] = np.where(sign[ok], -x[ok], x[ok])
        todo = todo[~ok]
    return out


def discrete_gaussian(sigma2: int, size: int, words: Words = system_words) -> np.ndarray:
    """``size`` exact samples of ``N_Z(0, sigma2)`` (Algorithm 3); ``sigma2`` a positive integer <= ``MAX_SIGMA2``."""
    if isinstance(sigma2, bool) or not isinstance(sigma2, (int, np.integer)) or not 1 <= sigma2 <= MAX_SIGMA2:
        raise ParameterError(f"discrete_gaussian sigma2 must be an integer in [1, {MAX_SIGMA2}]; got {sigma2!r}. "
                             "Scale the values so that the noise variance is an integer in those units.")
    s2 = int(sigma2)
    t = math.isqrt(s2) + 1  # floor(sigma) + 1
    lap, e1, gauss, ymax = _tables(s2)
    out = np.empty(size, dtype=np.int64)
    todo = np.arange(size)
    while todo.size:
        y = _laplace_fast(t, lap, e1, todo.size, words)
        a = np.abs(y)
        c = np.zeros(todo.size, dtype=bool)
        near = a < ymax
        c[near] = gauss.draw(a[near], words)
        far = np.flatnonzero(~near)  # |Y| >= 16 t (probability ~e^-16): the integer-only path below
        if far.size:
            c[far] = _gauss_accept_slow(y[far], s2, t, words)
        out[todo[c]] = y[c]
        todo = todo[~c]
    return out


def _gauss_accept_slow(y: np.ndarray, s2: int, t: int, words: Words) -> np.ndarray:
    """CKS's acceptance ``Bernoulli(exp(-(|y| - s2/t)^2 / (2 s2)))`` with :func:`bernoulli_exp` (integers only)."""
    c = np.zeros(y.size, dtype=bool)
    big = np.abs(y) > 2**30 // t  # beyond any plausible draw; would overflow: reject (mass < exp(-2^40))
    num = (np.abs(y) * t - s2) ** 2  # (|y| - s2/t)^2 / (2 s2) = num / den
    den = np.full(y.size, 2 * s2 * t * t, dtype=np.int64)
    c[~big] = bernoulli_exp(num[~big], den[~big], words)
    return c


def discrete_gaussian_reference(sigma2: int, size: int, words: Words = system_words) -> np.ndarray:
    """:func:`discrete_gaussian` with every Bernoulli drawn by the integer-only algorithms (slower; for tests)."""
    s2 = int(sigma2)
    t = math.isqrt(s2) + 1
    out = np.empty(size, dtype=np.int64)
    todo = np.arange(size)
    while todo.size:
        y = discrete_laplace(t, todo.size, words)
        c = _gauss_accept_slow(y, s2, t, words)
        out[todo[c]] = y[c]
        todo = todo[~c]
    return out


def discrete_gaussian_pmf(sigma2: float, support: np.ndarray) -> np.ndarray:
    """The exact probabilities of ``N_Z(0, sigma2)`` at the integers ``support`` (normalized over +-60 sigma)."""
    span = int(60 * math.sqrt(sigma2)) + 10
    xs = np.arange(-span, span + 1, dtype=np.float64)
    z = np.exp(-xs * xs / (2 * sigma2)).sum()
    s = np.asarray(support, dtype=np.float64)
    return np.exp(-s * s / (2 * sigma2)) / z
