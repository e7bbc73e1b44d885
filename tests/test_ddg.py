"""The distributed discrete Gaussian wired into secure aggregation (privacy.noise_placement = distributed)."""

import math

import numpy as np
import pytest
import torch

import fed8
from fed8.errors import ConfigError, SecAggError
from fed8.privacy.ddg import DDG, calibrate_ddg, ddg_for_noise_multiplier
from fed8.privacy.randomness import PrivacyRandomness
from fed8.privacy.secagg.ring import from_ring


@pytest.fixture
def small(small):
    """These tests are about the privacy machinery, not the model: a small mlp keeps them fast."""
    return small + ["model.name=mlp", "model.hidden=64"]


BETA = math.exp(-0.5)


def _mech(n=8, dim=2000, bits=16, z=1.0, shares=None, sampling="fixed", num_clients=None, m=None):
    return ddg_for_noise_multiplier(z, dim=dim, bits=bits, beta=BETA, gamma=0.0, shares=shares or n, clip_norm=1.0,
                                    sampling=sampling, num_clients=num_clients or n, clients_per_round=m or n)


def _updates(n, dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        v = torch.randn(dim, generator=g)
        out.append({"w": v / v.norm() * 0.9})  # inside the clip bound
    return out


# -- the sum is exact in the ring ---------------------------------------------------------------------------------

def test_the_secure_sum_of_ddg_inputs_is_the_exact_integer_sum_of_the_clients_encodings():
    from fed8.privacy.secagg import SecureSum
    from fed8.privacy.secagg.summer import RoundEncoding

    n, dim = 6, 2000
    m = _mech(n, dim)
    ups = _updates(n, dim)
    s = SecureSum(seed=3, threshold=0.6, randomness=PrivacyRandomness(seed=11))
    s.begin(1, list(range(n)), clip_norm=1.0, ddg=m)
    for u in range(n):
        s.add(u, ups[u], weight=1.0, bit=1)
    res = s.finish()
    # the same encodings, computed again from the same (seeded) randomness, summed as signed integers
    enc = RoundEncoding.for_round(1, seed=3, participants=n, dim=dim, clip_norm=1.0, ddg=m)
    ints = [from_ring(enc.encode(ups[u]["w"], weight=1.0, bit=1, client=u, randomness=PrivacyRandomness(seed=11)), m.bits)
            for u in range(n)]
    total = np.sum(ints, axis=0)
    assert np.abs(total).max() < 2 ** (m.bits - 1)  # no wrap-around: the centered lift is the integer sum
    want, _, _ = enc.decode((total & (2**m.bits - 1)).astype(np.uint32))
    assert torch.equal(res.total["w"], want)  # masks cancel exactly; the server got the integer sum, nothing else
    assert res.weight_sum is None and res.bit_sum is None and res.ring_bits == m.bits
    assert enc.length == m.dim  # no weight code, no clip bit: those would reach the server without noise
    # and the decoded sum is the true sum up to the noise and rounding, whose size the mechanism states
    err = (res.total["w"] - sum(x["w"] for x in ups)).std()
    assert float(err) == pytest.approx(m.gamma * math.sqrt(n * (m.sigma2 + 1 / 6)), rel=0.1)


def test_the_noise_is_drawn_fresh_from_the_os_and_is_integer():
    from fed8.privacy.secagg.summer import RoundEncoding

    m = _mech(4, 500)
    enc = RoundEncoding.for_round(1, seed=0, participants=4, dim=500, clip_norm=1.0, ddg=m)
    x = torch.zeros(500)
    a = enc.encode(x, weight=1.0, bit=1, client=0, randomness=PrivacyRandomness())
    b = enc.encode(x, weight=1.0, bit=1, client=0, randomness=PrivacyRandomness())
    assert not np.array_equal(a, b)
    la = from_ring(a, m.bits)
    assert abs(la.var() / m.sigma2 - 1) < 0.25  # a zero update: what is sent is the noise share itself


def test_the_granularity_fits_the_sum_in_the_ring_and_more_bits_give_a_finer_grid():
    m16, m18 = _mech(100, 100_000, 16), _mech(100, 100_000, 18)
    assert m18.gamma < m16.gamma / 3
    for m in (m16, m18):  # 8.5 standard deviations of 100 clients' sum fit in half the ring
        spread = math.sqrt(2 * 100**2 * (1 / m.gamma) ** 2 / m.dim + 100 / 4 + 100 * m.sigma2)
        assert 7 * spread < 2 ** (m.bits - 1)
    with pytest.raises(ConfigError, match="ddg_bits"):
        _mech(100, 100_000, 8, z=3.0)


def test_too_few_participants_for_the_noise_shares_abandon_the_round():
    from fed8.privacy.secagg import SecureSum

    m = _mech(n=8, dim=100, shares=5)
    s = SecureSum(seed=0, threshold=0.1, min_clients=2)
    s.begin(1, [0, 1, 2, 3], clip_norm=1.0, ddg=m)
    for u in range(4):
        s.add(u, {"w": torch.zeros(100)}, weight=1.0, bit=1)
    with pytest.raises(SecAggError, match="fewer than the t = 5 noise shares"):
        s.finish()
    s.begin(2, list(range(8)), clip_norm=1.0, ddg=m)
    s.add(0, {"w": torch.zeros(100)}, weight=1.0, bit=1)
    assert s.t >= 5  # the Shamir threshold is at least the mechanism's t: no sum of fewer inputs is unmasked


# -- privacy ------------------------------------------------------------------------------------------------------

def _paper_epsilon(m: DDG, rounds, delta):
    """The paper's accounting (Kairouz et al. 2021) written again from its equations, in update units.

    Replace-one adjacency (the rounded sum moves by up to twice the rounded norm). Returns
    ``(against the server, against model observers)``: the server knows who joined, so its bound
    composes the unsampled mechanism over ``k*`` rounds (``P[Binomial(R, q) > k*] <= delta / 2``,
    converted at ``delta / 2``); observers get sampling without replacement (Wang et al. 2019, Thm 9).
    """
    from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon
    from scipy.special import comb, logsumexp
    from scipy.stats import binom

    c, g, d, beta, n = m.clip_norm, m.gamma, m.dim, m.beta, m.shares
    sens2 = 4 * min((c + g * math.sqrt(d)) ** 2,
                    c**2 + g**2 * d / 4 + math.sqrt(2 * math.log(1 / beta)) * g * (c + g * math.sqrt(d) / 2))
    var = m.sigma2 * g**2  # per client, update units
    tau = 10 * sum(math.exp(-2 * var / g**2 * math.pi**2 * k / (k + 1)) for k in range(1, n))
    s = math.sqrt(sens2 / (n * var))

    def base(a):  # Eq. 17 without the L1 term (the min can only be lower with it)
        out = min(a * s * s / 2 + tau * d, a / 2 * (s + math.sqrt(d) * tau) ** 2)
        if m.count_sigma2:  # adaptive clipping: the count, one value of sensitivity 1, composed each round
            tb = 10 * sum(math.exp(-2 * m.count_sigma2 * math.pi**2 * k / (k + 1)) for k in range(1, n))
            sb = 1 / math.sqrt(n * m.count_sigma2)
            out += min(a * sb * sb / 2 + tb, a / 2 * (sb + tb) ** 2)
        return out

    q = m.clients_per_round / m.num_clients
    orders = list(range(2, 129)) + [256]

    def sub(a):  # Wang, Balle, Kasiviswanathan 2019, Theorem 9 (eps(inf) = inf)
        second = math.log(min(4 * (math.exp(base(2)) - 1), 2 * math.exp(base(2))))
        terms = [0.0, 2 * math.log(q) + math.log(comb(a, 2)) + second]
        terms += [math.log(2 * comb(a, j)) + j * math.log(q) + (j - 1) * base(j) for j in range(3, a + 1)]
        return min(logsumexp(terms) / (a - 1), base(a))

    k = next(k for k in range(rounds + 1) if binom.sf(k, rounds, q) <= delta / 2)
    server = compute_epsilon(orders, [k * base(a) for a in orders], delta / 2)[0]
    observers = compute_epsilon(orders, [rounds * sub(a) for a in orders], delta)[0]
    return server, observers


def test_the_runs_epsilon_equals_the_papers_accounting_computed_independently():
    for clients, rounds in ((100, 15), (1000, 60)):
        m = _mech(n=50, dim=100_000, z=1.2, shares=30, num_clients=clients, m=50)
        server, observers = _paper_epsilon(m, rounds, 1e-5)
        assert m.epsilon_server(rounds, 1e-5) == pytest.approx(server, rel=1e-9)
        assert m.epsilon_observers(rounds, 1e-5) == pytest.approx(observers, rel=1e-9)
        assert m.epsilon(rounds, 1e-5) == max(m.epsilon_server(rounds, 1e-5), m.epsilon_observers(rounds, 1e-5))
    # at q = 0.05 the server, who sees who joined, gets no amplification: its bound is far above the observers'
    assert m.epsilon_server(60, 1e-5) > 2 * m.epsilon_observers(60, 1e-5)
    assert m.rounds_joined_bound(60, 1e-5) < 60  # but it counts only the rounds a client can plausibly join
    # every client in every round: sampling amplifies for no one, and the two bounds agree
    full = _mech(n=50, dim=100_000, z=1.2, shares=30, num_clients=50, m=50)
    assert full.epsilon_observers(15, 1e-5) == pytest.approx(full.epsilon_server(15, 1e-5), rel=1e-12)
    # the rounding costs privacy: the rounded sensitivity is above the clip norm, so epsilon is above the
    # continuous Gaussian's at the same noise std (dp-accounting's sampled Gaussian without replacement)
    from fed8.privacy.accounting import PrivacySpec, epsilon

    m = _mech(n=50, dim=100_000, z=1.2, shares=30, num_clients=100, m=50)
    z_cont = m.noise_std / m.clip_norm
    assert m.epsilon_observers(15, 1e-5) > epsilon(PrivacySpec("central", "fixed", 100, 50.0, 1e-5), z_cont, 15)


def test_adaptive_clippings_noised_count_is_accounted_with_the_updates():
    kw = dict(dim=100_000, bits=17, beta=BETA, gamma=0.0, shares=30, clip_norm=1.0, sampling="fixed",
              num_clients=100, clients_per_round=50.0)
    plain = ddg_for_noise_multiplier(1.2, **kw)
    m = ddg_for_noise_multiplier(1.2, **kw, count_stddev=0.0)
    # the default count noise: max(m / 20, 1.5 z) in all, split into t integer shares (rounded up)
    assert m.count_sigma2 == math.ceil(max(50 / 20, 1.5 * 1.2) ** 2 / 30) and plain.count_sigma2 == 0
    assert m.count_noise_std == pytest.approx(math.sqrt(30 * m.count_sigma2))
    for rounds in (15, 60):
        server, observers = _paper_epsilon(m, rounds, 1e-5)
        assert m.epsilon_server(rounds, 1e-5) == pytest.approx(server, rel=1e-9)
        assert m.epsilon_observers(rounds, 1e-5) == pytest.approx(observers, rel=1e-9)
        assert m.epsilon(rounds, 1e-5) > plain.epsilon(rounds, 1e-5)  # the count costs privacy
    # calibrated to a budget, the count takes its share and the updates get more noise; a count noise set too
    # small for the budget is refused with the key to change
    c = calibrate_ddg(8.0, 15, 1e-5, **kw, count_stddev=0.0)
    assert c.epsilon(15, 1e-5) <= 8.0 and c.noise_multiplier > calibrate_ddg(8.0, 15, 1e-5, **kw).noise_multiplier
    wide = {**kw, "bits": 20}
    assert calibrate_ddg(1.0, 15, 1e-5, **wide, count_stddev=0.0).epsilon(15, 1e-5) <= 1.0
    with pytest.raises(ConfigError, match="adaptive_count_stddev"):  # one variance unit per share: std 5.5 in all
        calibrate_ddg(1.0, 15, 1e-5, **wide, count_stddev=0.05)


def test_a_new_clip_norm_scales_the_grid_and_keeps_the_integers_and_the_privacy():
    from fed8.privacy.secagg.summer import RoundEncoding

    m = _mech(6, 3000)
    v = _updates(1, 3000)[0]["w"]
    at = lambda c: RoundEncoding.for_round(1, seed=3, participants=6, dim=3000, clip_norm=c, ddg=m)  # noqa: E731
    a = at(1.0).encode(v, weight=1.0, bit=1, client=0, randomness=PrivacyRandomness(seed=5))
    b = at(0.25).encode(v * 0.25, weight=1.0, bit=1, client=0, randomness=PrivacyRandomness(seed=5))
    assert np.array_equal(a, b)  # the same vector relative to the clip norm: the same ring values
    assert at(0.25).scale == pytest.approx(m.gamma / 4)
    assert m.at_clip(0.25).epsilon(15, 1e-5) == m.epsilon(15, 1e-5) and m.at_clip(1.0) is m


def test_the_clip_bits_are_summed_exactly_with_their_integer_noise():
    from fed8.privacy.secagg import SecureSum
    from fed8.privacy.secagg.summer import RoundEncoding

    n, dim = 6, 2000
    m = ddg_for_noise_multiplier(1.0, dim=dim, bits=16, beta=BETA, gamma=0.0, shares=n, clip_norm=1.0,
                                 sampling="fixed", num_clients=n, clients_per_round=n, count_stddev=3.0)
    assert m.count_sigma2 == 2  # ceil(3^2 / 6)
    ups, bits = _updates(n, dim), [1, 0, 1, 1, 0, 1]
    s = SecureSum(seed=3, threshold=0.6, randomness=PrivacyRandomness(seed=11))
    s.begin(1, list(range(n)), clip_norm=1.0, ddg=m)
    for u in range(n):
        s.add(u, ups[u], weight=1.0, bit=bits[u])
    res = s.finish()
    enc = RoundEncoding.for_round(1, seed=3, participants=n, dim=dim, clip_norm=1.0, ddg=m)
    assert enc.length == m.dim + 1  # one more value: the noised clip bit
    ints = [from_ring(enc.encode(ups[u]["w"], weight=1.0, bit=bits[u], client=u,
                                 randomness=PrivacyRandomness(seed=11)), m.bits) for u in range(n)]
    assert res.bit_sum == int(np.sum(ints, axis=0)[-1]) and res.weight_sum is None
    # and what a client sends for its bit is the bit plus a fresh N_Z(0, count_sigma2)
    draws = np.array([from_ring(enc.encode(torch.zeros(dim), weight=1.0, bit=1, client=0,
                                           randomness=PrivacyRandomness()), m.bits)[-1] for _ in range(300)])
    assert abs(draws.mean() - 1) < 5 * math.sqrt(2 / 300) and abs(draws.var() / 2 - 1) < 0.35


def test_the_participation_bound_is_the_binomial_tail():
    from scipy.stats import binom

    from fed8.privacy.ddg_accounting import participation_bound

    for rounds, q, tail in ((15, 0.5, 5e-6), (100, 0.1, 5e-6), (1000, 0.01, 1e-3), (7, 1.0, 1e-6)):
        k, p = participation_bound(rounds, q, tail)
        assert p == pytest.approx(binom.sf(k, rounds, q), rel=1e-6, abs=1e-300) and p <= tail
        assert k == 0 or binom.sf(k - 1, rounds, q) > tail  # the fewest such k


def test_poisson_sampling_is_refused_because_the_noise_reveals_the_count(tmp_path, small):
    with pytest.raises(ConfigError, match="train.sampling = 'fixed'"):
        _mech(n=50, dim=1000, sampling="poisson", num_clients=100, m=50)
    with pytest.raises(ConfigError, match="reveals how many clients took part"):
        fed8.run(fed8.load_config(None, small + DIST + ["privacy.noise_multiplier=1.0", "train.sampling=poisson"]),
                 out=tmp_path / "r", report=False)
    # the leak it guards against: the sum's noise variance over d values tells 30 shares from 31
    from fed8.privacy.discrete_gaussian import discrete_gaussian

    bits = np.random.default_rng(0).bit_generator
    shares = [discrete_gaussian(400, 100_000, lambda n: bits.random_raw(n)) for _ in range(31)]
    thirty = sum(shares[:30])
    est = [thirty.var() / 400, (thirty + shares[30]).var() / 400]  # relative std sqrt(2 / d) = 0.45%
    assert abs(est[0] - 30) < 0.5 and abs(est[1] - 31) < 0.5


def test_subsampled_rdp_bounds_hold_against_the_gaussians_exact_curves():
    from dp_accounting.rdp import rdp_privacy_accountant as r

    from fed8.privacy.ddg_accounting import DDG_ORDERS, poisson_subsampled_rdp, wor_subsampled_rdp

    orders = list(DDG_ORDERS)
    for q, z in ((0.5, 1.5), (0.1, 1.0), (0.01, 0.8)):
        base = [a / (2 * z * z) for a in range(2, 257)]
        ours = poisson_subsampled_rdp(q, base, orders)
        exact = r._compute_rdp_poisson_subsampled_gaussian(q, z, orders)
        assert all(o >= e - 1e-9 for o, e in zip(ours, exact))  # an upper bound on the truth
        assert all(o <= b + 1e-12 for o, b in zip(ours, [a / (2 * z * z) for a in orders]))  # never worse than none
        assert ours[0] < 0.5 * orders[0] / (2 * z * z)  # and it does amplify
        wor = wor_subsampled_rdp(q, base, orders)
        exact_wor = r._compute_rdp_sample_wor_gaussian(q, z, orders)
        assert all(o >= e - 1e-9 for o, e in zip(wor, exact_wor) if np.isfinite(e))


def test_calibration_meets_the_budget_and_more_noise_means_less_epsilon():
    kw = dict(dim=50_000, bits=16, beta=BETA, gamma=0.0, shares=20, clip_norm=1.0, sampling="fixed",
              num_clients=100, clients_per_round=30.0)
    m = calibrate_ddg(6.0, 10, 1e-5, **kw)
    assert 0.995 * 6.0 < m.epsilon(10, 1e-5) <= 6.0
    more = ddg_for_noise_multiplier(m.noise_multiplier * 1.2, **kw)
    assert more.epsilon(10, 1e-5) < m.epsilon(10, 1e-5)


# -- configuration and runs ---------------------------------------------------------------------------------------

MLP = ["model.name=mlp", "model.hidden=16"]
DIST = ["privacy.dp=central", "privacy.secure_aggregation=true", "privacy.noise_placement=distributed",
        "privacy.weighting=uniform", "privacy.secagg_min_clients=2"]


def test_a_distributed_run_states_its_exact_guarantee_trust_model_and_bits(tmp_path, small):
    cfg = fed8.load_config(None, small + DIST + MLP + ["privacy.target_epsilon=30", "train.rounds=2",
                                                 "privacy.ddg_bits=18"])
    r = fed8.run(cfg, out=tmp_path / "r", report=True)
    p = r.summary["privacy"]
    plan = _plan(cfg)
    assert p["epsilon"] == pytest.approx(plan.ddg.epsilon(2, 1e-5)) and p["epsilon"] <= 30
    st = p["statement"]
    assert f"({p['epsilon']:.3g}, 1e-05)" in st and f"t = {plan.ddg.shares} honest clients" in st
    assert "18 bits per value" in st and "discrete Gaussian" in st and "approx" not in st.lower()
    assert p["mechanism"]["bits_per_value"] == 18 and p["mechanism"]["sigma2"] == plan.ddg.sigma2
    # two parties, two bounds: the server knows who joined (no amplification), observers of the models do not
    server, observers = plan.ddg.epsilon_server(2, 1e-5), plan.ddg.epsilon_observers(2, 1e-5)
    assert p["mechanism"]["epsilon_against_server"] == pytest.approx(server)
    assert p["mechanism"]["epsilon_against_model_observers"] == pytest.approx(observers)
    assert p["epsilon"] == pytest.approx(max(server, observers))
    assert f"does not amplify against it: epsilon {server:.3g}" in st and f"amplifies: epsilon {observers:.3g}" in st
    assert "honest clients" in (r.run_dir / "report.html").read_text()
    m = r.metrics[-1]
    assert m["secagg_ring_bits"] == 18 and m["clipped_fraction"] is None  # the clip bits are not sent
    # on the mean (D = m): the noise of every input's share, at least the t shares the guarantee counts
    assert m["noise_std"] == pytest.approx(plan.ddg.noise_std * math.sqrt(m["secagg_inputs"] / plan.ddg.shares)
                                           / _expected(cfg))


def _plan(cfg):
    from fed8.stages.aggregation import privacy_plan
    from fed8.stages.federation import load_federation

    state = load_federation(cfg).model.state_dict()
    return privacy_plan(cfg, dim=sum(v.numel() for v in state.values() if v.is_floating_point()))


def _expected(cfg):
    from fed8.stages.aggregation import expected_clients

    return expected_clients(cfg)


def test_adaptive_clipping_under_distributed_dp_moves_the_clip_and_the_grid_with_it(tmp_path, small):
    cfg = fed8.load_config(None, small + DIST + MLP + [
        "privacy.target_epsilon=30", "train.rounds=3", "privacy.adaptive_clipping=on", "privacy.clip_norm=5.0",
        "privacy.adaptive_lr=0.5", "privacy.adaptive_quantile=0.55"])  # a count / m never equals 0.55: C moves
    r = fed8.run(cfg, out=tmp_path / "r", report=False)
    plan, p = _plan(cfg), r.summary["privacy"]
    assert plan.ddg.count_sigma2 > 0 and p["adaptive_clipping"] and p["mechanism"]["count_sigma2"] == plan.ddg.count_sigma2
    assert p["epsilon"] == pytest.approx(plan.ddg.epsilon(3, 1e-5)) and p["epsilon"] <= 30
    assert "adaptive clipping" in p["statement"] and f"N_Z(0, {plan.ddg.count_sigma2})" in p["statement"]
    clips = [row["clip_norm"] for row in r.metrics]
    assert clips[0] == 5.0 and len(set(clips)) == 3  # every round's noised count moved it
    assert r.metrics[0]["num_clients"] == 4  # (so that count / 4 is a multiple of 0.25)
    # the noise on the mean follows the round's clip norm (the grid step scales with it)
    ratios = [row["noise_std"] / row["clip_norm"] * math.sqrt(plan.ddg.shares / row["secagg_inputs"]) for row in r.metrics]
    assert ratios == pytest.approx([plan.ddg.noise_std / 5.0 / _expected(cfg)] * 3, rel=1e-6)
    assert all(row["clipped_fraction"] is None for row in r.metrics)  # the count is noised; only C shows it


def test_distributed_dp_refuses_what_it_cannot_analyse(tmp_path, small):
    for extra, msg in ((["privacy.accountant=pld"], "accountant"),
                       (["privacy.noise_multiplier=0.5", "privacy.target_epsilon=1.0"], "budget exceeded")):
        with pytest.raises(ConfigError, match=msg):
            fed8.run(fed8.load_config(None, small + DIST + ["privacy.noise_multiplier=1.0"] + extra),
                     out=tmp_path / msg.replace(" ", "_"), report=False)


def test_distributed_dp_with_dropouts_sums_the_senders(tmp_path, small):
    # resuming a distributed run bit for bit: tests/test_secagg.py::test_dp_with_secure_aggregation_resumes_bit_identical
    cfg = fed8.load_config(None, small + DIST + MLP + [
        "train.rounds=2", "privacy.noise_multiplier=0.5", "privacy.clip_norm=0.05", "privacy.secagg_threshold=0.5",
        "privacy.secagg_dropout=0.25", "privacy.secagg_dropout_phase=before_input"])
    full = fed8.run(cfg, out=tmp_path / "full", report=False)
    n = full.metrics[0]["num_clients"]
    assert all(row.get("aborted") is None and row["secagg_inputs"] == n - round(0.25 * n) for row in full.metrics)


def test_fed8_init_documents_the_mechanisms_parameters(tmp_path):
    from fed8.config import to_toml

    text = to_toml(None, comments=True)
    for key in ("ddg_bits", "ddg_gamma", "ddg_beta"):
        assert key in text
    assert "modulus" in text and "grid step" in text and "bias bound" in text


def test_a_budget_that_needs_more_noise_than_the_ring_holds_is_refused_with_the_fix():
    kw = dict(dim=200_000, bits=12, beta=BETA, gamma=0.0, shares=30, clip_norm=1.0, sampling="fixed",
              num_clients=100, clients_per_round=50.0)
    with pytest.raises(ConfigError, match="needs more noise than privacy.ddg_bits = 12 can hold"):
        calibrate_ddg(1.0, 15, 1e-5, **kw)
    assert calibrate_ddg(1.0, 15, 1e-5, **{**kw, "bits": 20}).epsilon(15, 1e-5) <= 1.0


def test_an_interrupted_attempt_is_one_more_release_and_the_budget_cuts_a_round(small):
    from fed8.stages.aggregation import privacy_plan

    cfg = fed8.load_config(None, small + DIST + ["privacy.target_epsilon=6", "train.rounds=5"])
    plan = privacy_plan(cfg, dim=10_000)
    assert plan.server_sees_releases and plan.rounds == 5 and plan.epsilon(5) <= 6
    cut = plan.after_interruptions(1, target_epsilon=6.0)
    assert cut.rounds == 4 and "interrupted" in cut.stop_reason
    assert cut.epsilon(4) == pytest.approx(plan.ddg.epsilon(5, 1e-5))  # 4 rounds + the attempt = 5 releases
