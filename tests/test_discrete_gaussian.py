"""The exact discrete Gaussian sampler (Canonne, Kamath, Steinke 2020): its distribution against the exact pmf."""

import math

import numpy as np
import pytest
from scipy import stats

from fed8.errors import ParameterError
from fed8.privacy.discrete_gaussian import (MAX_SIGMA2, bernoulli_exp, discrete_gaussian, discrete_gaussian_pmf,
                                            discrete_laplace, uniform_below)


def seeded_words(seed):
    g = np.random.default_rng(seed)
    return lambda n: g.integers(0, 2**64, size=n, dtype=np.uint64, endpoint=False)


def _chi2_pvalue(samples, pmf_at):
    """Chi-square goodness of fit on integer bins, tails merged so every expected count is >= 5."""
    n = samples.size
    lo, hi = int(samples.min()), int(samples.max())
    support = np.arange(lo, hi + 1)
    p = pmf_at(support)
    expected = n * p
    keep = expected >= 5
    edges = support[keep]
    obs = np.array([(samples == v).sum() for v in edges], dtype=float)
    exp = expected[keep]
    rest_obs, rest_exp = n - obs.sum(), n - exp.sum()  # everything outside the kept bins, as one bin
    obs, exp = np.append(obs, rest_obs), np.append(exp, rest_exp)
    stat = ((obs - exp) ** 2 / exp).sum()
    return stats.chi2.sf(stat, df=len(obs) - 1)


@pytest.mark.parametrize("sigma2", [1, 7, 100, 2500])
def test_discrete_gaussian_matches_the_exact_pmf(sigma2):
    x = discrete_gaussian(sigma2, 100_000, words=seeded_words(sigma2))
    assert _chi2_pvalue(x, lambda s: discrete_gaussian_pmf(sigma2, s)) > 1e-4
    assert abs(x.mean()) < 5 * math.sqrt(sigma2 / x.size)
    assert abs(x.var() / sigma2 - 1) < 0.03  # N_Z's variance is sigma^2 up to a tiny (< 1e-15 relative) deficit


def test_a_wrong_sampler_is_caught_by_the_same_test():
    # the continuous Gaussian rounded to integers is *not* N_Z(0, sigma^2): the test must see it at small sigma
    g = np.random.default_rng(0)
    rounded = np.rint(g.normal(0, 1.0, 100_000)).astype(np.int64)
    assert _chi2_pvalue(rounded, lambda s: discrete_gaussian_pmf(1, s)) < 1e-6


def test_discrete_laplace_and_bernoulli_exp():
    words = seeded_words(1)
    t = 3
    x = discrete_laplace(t, 100_000, words)
    lap = lambda s: np.exp(-np.abs(s) / t) * (1 - math.exp(-1 / t)) / (1 + math.exp(-1 / t))  # noqa: E731
    assert _chi2_pvalue(x, lap) > 1e-4
    for num, den in ((3, 10), (5, 2), (0, 7), (13, 4)):
        b = bernoulli_exp(np.full(200_000, num), den, words)
        p = math.exp(-num / den)
        assert abs(b.mean() - p) < 5 * math.sqrt(p * (1 - p) / b.size) + 1e-12


def test_uniform_below_is_exactly_uniform_for_a_modulus_that_does_not_divide_2_64():
    u = uniform_below(np.full(300_000, 3), seeded_words(2))
    assert set(np.unique(u)) == {0, 1, 2}
    assert stats.chisquare(np.bincount(u, minlength=3)).pvalue > 1e-4


def test_noise_comes_from_the_os_unless_words_are_given_and_bad_variances_are_refused():
    a, b = discrete_gaussian(100, 1000), discrete_gaussian(100, 1000)
    assert not np.array_equal(a, b)  # os.urandom: fresh noise every call
    w1, w2 = seeded_words(5), seeded_words(5)
    assert np.array_equal(discrete_gaussian(100, 1000, w1), discrete_gaussian(100, 1000, w2))
    for bad in (0, 2.5, MAX_SIGMA2 + 1, True):
        with pytest.raises(ParameterError, match="sigma2 must be an integer"):
            discrete_gaussian(bad, 10)


# -- the client-side encoding of the distributed discrete Gaussian (Kairouz, Liu, Steinke 2021) ------------------

def test_conditional_rounding_is_unbiased_and_keeps_the_norm_bound():
    import torch

    from fed8.privacy.ddg_encode import conditional_round, norm_bound
    from fed8.privacy.randomness import SeededDraws

    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, generator=g, dtype=torch.float64) * 4
    c = float(x.norm())
    bound = norm_bound(c, 256, beta=math.exp(-0.5))
    draws = SeededDraws(torch.Generator().manual_seed(1))
    rs = torch.stack([conditional_round(x, bound, draws) for _ in range(400)]).to(torch.float64)
    assert ((rs ** 2).sum(1) <= bound).all()
    assert ((rs - torch.floor(x)).abs() <= 1).all()
    assert float((rs.mean(0) - x).abs().max()) < 0.12  # unbiased up to the conditioning (beta small) and sampling
    assert norm_bound(c, 256, 1e-9) <= (c + 16) ** 2
    with pytest.raises(ParameterError, match="did not meet the norm bound"):
        conditional_round(x, bound=0.0, draws=draws, max_tries=3)


# -- the privacy of the distributed discrete Gaussian (Kairouz, Liu, Steinke 2021) -------------------------------

def _paper_rdp(alpha, l2, l1, sigma, n, d):
    """Proposition 14 / Eq. 17 and Theorem 1 of arXiv:2102.06387, written out again on its own."""
    tau = 10 * sum(math.exp(-2 * math.pi ** 2 * sigma ** 2 * k / (k + 1)) for k in range(1, n))
    s2, s1 = l2 / (math.sqrt(n) * sigma), l1 / (math.sqrt(n) * sigma)
    return min(alpha * s2 ** 2 / 2 + tau * d, alpha / 2 * (s2 ** 2 + 2 * s1 * tau + tau ** 2 * d),
               alpha / 2 * (s2 + math.sqrt(d) * tau) ** 2)


def test_ddg_epsilon_equals_the_papers_bound_computed_independently():
    from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

    from fed8.privacy.ddg_accounting import DDG_ORDERS, ddg_epsilon, ddg_rdp

    # small sigma per client, many clients: tau matters; d = 2^21 (the padded cnn)
    for sigma, n, d, l2 in ((0.6, 100, 2**21, 2000.0), (2.0, 10, 1024, 50.0), (0.3, 50, 4096, 30.0)):
        l1 = min(math.sqrt(d) * l2, l2 * l2)
        ours = ddg_rdp(l2_sens=l2, sigma=sigma, n=n, dim=d)
        theirs = [_paper_rdp(a, l2, l1, sigma, n, d) for a in DDG_ORDERS]
        assert ours == pytest.approx(theirs, rel=1e-12)
        eps = ddg_epsilon(l2_sens=l2, sigma=sigma, n=n, dim=d, rounds=100, delta=1e-5)
        assert eps == pytest.approx(compute_epsilon(list(DDG_ORDERS), [100 * r for r in theirs], 1e-5)[0], rel=1e-12)
    # one client, large sigma: tau ~ 0 and the mechanism is the Gaussian's: the same epsilon as dp-accounting's
    import dp_accounting as dpa

    acc = dpa.rdp.RdpAccountant(list(DDG_ORDERS))
    acc.compose(dpa.GaussianDpEvent(noise_multiplier=100.0 / 10.0), 50)
    gauss = acc.get_epsilon(1e-5)
    assert ddg_epsilon(l2_sens=10.0, sigma=100.0, n=1, dim=1000, rounds=50, delta=1e-5) == pytest.approx(gauss, rel=1e-9)


# -- the fast path: tabled Bernoulli draws decided by one word, exact ties -------------------------------------------

def test_the_fast_and_the_integer_only_sampler_both_match_the_pmf():
    from fed8.privacy.discrete_gaussian import discrete_gaussian_reference

    for sampler in (discrete_gaussian, discrete_gaussian_reference):
        x = sampler(40, 60_000, seeded_words(9))
        assert _chi2_pvalue(x, lambda s: discrete_gaussian_pmf(40, s)) > 1e-4


def test_a_tie_with_the_table_reads_more_words_and_decides_exactly():
    from decimal import Decimal, localcontext

    from fed8.privacy.discrete_gaussian import _decide, _Table

    num, den = 3, 10
    with localcontext() as c:
        c.prec = 80
        p128 = int((Decimal(-num) / Decimal(den)).exp() * (Decimal(2) ** 128))
    first, second = p128 >> 64, p128 & (2**64 - 1)  # the first 128 bits of exp(-0.3)
    table = _Table([(num, den)])
    assert int(table.lo[0]) == int(table.hi[0]) == first  # certain entry: L = floor(p 2^64)

    def feed(*ws):
        it = iter(ws)
        return lambda n: np.array([next(it) for _ in range(n)], dtype=np.uint64)

    # u = 0.first(second - 1)... < p and u = 0.first(second + 1)... > p: the second word decides
    assert table.draw(np.array([0]), feed(first, second - 1))[0]
    assert not table.draw(np.array([0]), feed(first, second + 1))[0]
    assert table.draw(np.array([0]), feed(first - 1))[0] and not table.draw(np.array([0]), feed(first + 1))[0]
    assert _decide(num, den, first, feed(second - 1)) and not _decide(num, den, first, feed(second + 1))


def test_the_fast_path_reads_about_half_the_words_of_the_integer_only_one():
    # not a timing test: the fast path must not fall back to the slow one (the number of words it reads says so)
    count = [0]

    def words(n):
        count[0] += n
        return system_words(n)

    from fed8.privacy.discrete_gaussian import system_words

    discrete_gaussian(191_379, 100_000, words)
    assert count[0] / 100_000 < 10  # ~7.6 words per sample; the integer-only algorithms read ~16
