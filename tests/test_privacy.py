"""Client-level DP: clipping, noise, adaptive clipping, accounting, the plan, the wrapper."""

import json
import math

import dp_accounting as dpa
import pytest
import torch

import fed8
from conftest import server_round
from fed8.errors import ConfigError, ParameterError
from fed8.federated.client import ClientUpdate
from fed8.federated.hooks import LocalDP
from fed8.federated.private import AdaptiveClipping, PrivateAggregate, capped_weight, uniform_weight
from fed8.privacy import (PrivacySpec, adaptive_clip_step, calibrate_noise_multiplier, check_model_for_dp,
                          clip_by_norm, epsilon, global_norm, make_plan, max_rounds_within, split_noise_multiplier)
from fed8.privacy.accounting import Accountant
from fed8.privacy.randomness import PrivacyRandomness, SeededDraws


@pytest.fixture
def small(small):
    """These tests are about the privacy machinery, not the model: a small mlp keeps them fast."""
    return small + ["model.name=mlp", "model.hidden=64"]


def test_clip_by_norm_known_answers():
    out, norm = clip_by_norm({"a": torch.tensor([3.0]), "b": torch.tensor([4.0])}, 1.0)
    assert norm == 5.0
    assert torch.allclose(out["a"], torch.tensor([0.6])) and torch.allclose(out["b"], torch.tensor([0.8]))
    small = {"a": torch.tensor([0.3, 0.4])}
    out, norm = clip_by_norm(small, 1.0)
    assert norm == pytest.approx(0.5) and torch.equal(out["a"], small["a"])
    with pytest.raises(ParameterError, match="clip_norm must be > 0; got 0.0") as e:
        clip_by_norm(small, 0.0)
    assert "privacy." not in str(e.value)  # a lower layer does not name a config key it does not own


def test_noise_std_and_determinism():
    x = {"w": torch.zeros(1_000_000)}
    seeded = lambda: SeededDraws(torch.Generator().manual_seed(3))  # noqa: E731
    a = fed8.privacy.add_gaussian_noise(x, 0.5, draws=seeded())["w"]
    b = fed8.privacy.add_gaussian_noise(x, 0.5, draws=seeded())["w"]
    assert torch.equal(a, b)
    # std of the sample std of 1e6 normals is std / sqrt(2e6); allow 6 of those
    assert abs(float(a.std()) - 0.5) < 6 * 0.5 / math.sqrt(2e6)


def test_adaptive_split_costs_privacy_exactly_as_the_library_composes_it():
    z, sigma_b = 1.0, 5.0
    z_u = split_noise_multiplier(z, sigma_b)
    assert z_u > z  # the update gets more noise than the accountant's z
    composed = dpa.ComposedDpEvent([dpa.GaussianDpEvent(z_u), dpa.GaussianDpEvent(2 * sigma_b)])
    for make in (dpa.rdp.RdpAccountant, dpa.pld.PLDAccountant):
        a, b = make(), make()
        a.compose(composed, 10)
        b.compose(dpa.GaussianDpEvent(z), 10)
        assert a.get_epsilon(1e-5) == pytest.approx(b.get_epsilon(1e-5), rel=1e-3)
    with pytest.raises(ConfigError, match="adaptive_count_stddev"):
        split_noise_multiplier(1.0, 0.5)


def test_adaptive_clip_step_known_answer():
    assert adaptive_clip_step(2.0, 0.7, target_quantile=0.5, lr=0.2) == pytest.approx(2.0 * math.exp(-0.04))
    assert adaptive_clip_step(2.0, 0.0, target_quantile=0.5, lr=0.2) > 2.0  # everyone clipped: grow


def test_accounting_maps_to_the_matching_analysis():
    # Poisson: PoissonSampled(q, Gaussian(z)) under add/remove
    s = PrivacySpec("central", "poisson", 100, 10, 1e-5)
    acc = dpa.rdp.RdpAccountant()
    acc.compose(dpa.PoissonSampledDpEvent(0.1, dpa.GaussianDpEvent(1.1)), 30)
    assert epsilon(s, 1.1, 30) == pytest.approx(acc.get_epsilon(1e-5))
    # fixed size: sampled without replacement, replace-one, sensitivity 2C -> z / 2
    f = PrivacySpec("central", "fixed", 100, 10, 1e-5)
    acc = dpa.rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)
    acc.compose(dpa.SampledWithoutReplacementDpEvent(100, 10, dpa.GaussianDpEvent(0.55)), 30)
    assert epsilon(f, 1.1, 30) == pytest.approx(acc.get_epsilon(1e-5))
    assert epsilon(f, 1.1, 30) > epsilon(s, 1.1, 30)
    # one local round is the Gaussian mechanism with sensitivity 2C; PLD is within 1% of the analytic value
    loc = PrivacySpec("local", "fixed", 100, 10, 1e-5, "pld")
    assert epsilon(loc, 4.0, 1) == pytest.approx(dpa.get_epsilon_gaussian(2.0, 1e-5), rel=0.01)
    with pytest.raises(ConfigError, match="pld.*fixed-size"):
        PrivacySpec("central", "fixed", 100, 10, 1e-5, "pld")
    assert epsilon(s, 0.0, 5) == math.inf and epsilon(s, 1.0, 0) == 0.0


@pytest.mark.parametrize("acct", ["rdp", "pld"])
def test_calibration_meets_the_target_and_no_less_noise_would(acct):
    s = PrivacySpec("central", "poisson", 100, 20, 1e-5, acct)
    z = calibrate_noise_multiplier(s, 4.0, 20)
    assert epsilon(s, z, 20) <= 4.0 < epsilon(s, z * 0.99, 20)


def test_max_rounds_and_running_accountant():
    s = PrivacySpec("central", "poisson", 100, 10, 1e-5)
    r = max_rounds_within(s, 1.0, 3.0, 1000)
    assert epsilon(s, 1.0, r) <= 3.0 < epsilon(s, 1.0, r + 1)
    acc = Accountant(s, 1.0)
    eps = [acc.step() for _ in range(3)]
    assert eps == sorted(eps) and eps[-1] == pytest.approx(epsilon(s, 1.0, 3))
    assert Accountant(s, 1.0, rounds=3).epsilon == pytest.approx(eps[-1])


def _priv(**kw):
    return fed8.load_config(None, {f"privacy.{k}": v for k, v in kw.items()}).privacy


def test_plan_budget_refuse_stop_and_calibrate():
    kw = dict(num_clients=100, clients_per_round=10.0, sampling="poisson", rounds=50)
    with pytest.raises(ConfigError, match=r"at most \d+ rounds.*budget = 'stop'"):
        make_plan(_priv(dp="central", noise_multiplier=1.2, target_epsilon=2.0), **kw)
    with pytest.raises(ConfigError, match=r"not even one round"):
        make_plan(_priv(dp="central", noise_multiplier=0.3, target_epsilon=0.5, budget="stop"), **kw)
    stop = make_plan(_priv(dp="central", noise_multiplier=1.2, target_epsilon=2.0, budget="stop"), **kw)
    assert 0 < stop.rounds < 50 and "stopped after round" in stop.stop_reason
    assert stop.epsilon(stop.rounds) <= 2.0 < stop.epsilon(stop.rounds + 1)
    cal = make_plan(_priv(dp="central", target_epsilon=2.0), **kw)
    assert cal.calibrated and cal.rounds == 50 and cal.epsilon(50) <= 2.0
    with pytest.raises(ConfigError, match="needs noise"):
        make_plan(_priv(dp="central"), **kw)
    with pytest.raises(ConfigError, match=r"^privacy.noise_multiplier = 1.0 has no effect with privacy.dp = 'none'"):
        make_plan(_priv(dp="none", noise_multiplier=1.0), **kw)  # names only what was set
    with pytest.raises(ConfigError, match=r"noise_multiplier = 1.0 and privacy.target_epsilon = 2.0 have no effect"):
        make_plan(_priv(dp="none", noise_multiplier=1.0, target_epsilon=2.0), **kw)
    ad = make_plan(_priv(dp="central", noise_multiplier=1.0), adaptive=True, **kw)
    assert ad.count_stddev == pytest.approx(math.sqrt(10) / 2)  # 10 / 20 would spend too much of the budget
    assert ad.update_noise_multiplier == pytest.approx(1.0 / math.sqrt(0.9))  # the count takes 10% of 1/z^2
    assert "(epsilon, delta) = (" in cal.statement(50) and "client level after 50 rounds" in cal.statement(50)


def test_dp_auto_is_central_when_noise_or_a_budget_is_asked_for():
    assert _priv().dp == "none"
    assert _priv(target_epsilon=8.0).dp == "central" and _priv(noise_multiplier=1.0).dp == "central"
    assert _priv(dp="local", target_epsilon=8.0).dp == "local"
    # a file that asks for nothing, then an override that sets a budget: auto must see the override
    cfg = fed8.load_config(None, ["privacy.target_epsilon=8"])
    assert cfg.privacy.dp == "central"


@pytest.mark.parametrize("settings, m, on", [
    ({"target_epsilon": 8.0}, 100.0, True),           # the measured case: 1,000 clients, q = 0.1
    ({"target_epsilon": 8.0}, 99.0, False),           # below the measured cohort: fixed clip_norm
    ({}, 500.0, False),                               # no DP
    ({"dp": "local", "target_epsilon": 8.0}, 500.0, False),
    ({"target_epsilon": 8.0, "secure_aggregation": True, "noise_placement": "distributed"}, 500.0, False),
    ({"target_epsilon": 8.0, "secure_aggregation": True}, 500.0, True),
    ({"target_epsilon": 8.0, "adaptive_clipping": False}, 500.0, False),   # TOML bools still work
    ({"target_epsilon": 8.0, "adaptive_clipping": True}, 10.0, True),
    ({"target_epsilon": 8.0, "adaptive_clipping": "off"}, 500.0, False),
])
def test_adaptive_clipping_auto(settings, m, on):
    from fed8.stages.aggregation import adaptive_clipping_on, privacy_plan

    cfg = fed8.load_config(None, {**{f"privacy.{k}": v for k, v in settings.items()}, "data.num_clients": 10_000,
                                  "train.sampling": "fixed" if "noise_placement" in settings else "poisson",
                                  "train.fraction": m / 10_000, "train.rounds": 10})
    assert adaptive_clipping_on(cfg) is on
    if cfg.privacy.dp == "central":
        assert (privacy_plan(cfg, dim=1000).count_stddev > 0) is on  # the count noise is drawn (and accounted) only when on


def test_target_epsilon_at_1000_clients_runs_adaptive_clipping_by_default(tmp_path):
    """`fed8 run --set privacy.target_epsilon=8` on 1,000 clients uses the recipe of bench/privacy.py --part scale."""
    cfg = fed8.load_config(None, [
        "data.num_clients=1000", "data.partition=iid", "data.test_fraction=0.0", "data.subset=1000",
        "train.sampling=poisson", "train.fraction=0.1", "train.rounds=2", "train.batch_size=8",
        "model.name=mlp", "model.hidden=8", "privacy.target_epsilon=8", "quantize.enabled=false",
        "eval.every=0", "privacy.insecure_reproducible_noise=true"])
    res = fed8.run(cfg, out=tmp_path / "run", report=False)
    assert res.summary["privacy"]["dp"] == "central" and res.summary["privacy"]["adaptive_clipping"] is True
    clips = [row["clip_norm"] for row in res.metrics]
    assert clips[0] != clips[1]  # the clip norm moved after round 1 (the fixed default would stay at 1.0)


def _updates(n, d=50, scale=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [ClientUpdate(k, {"w": torch.randn(d, generator=g) * scale}, 10 + k, 0.0) for k in range(n)]


def _aggregate(aggregator, updates, state):
    return server_round(aggregator, updates, state)[0]


def test_dp_fedavg_fixed_denominator_bounds_one_clients_influence():
    state = {"w": torch.zeros(50)}
    ups = _updates(5)
    make = lambda: PrivateAggregate(clip_norm=1.0, weight=uniform_weight, denominator=5.0)  # noqa: E731
    base = _aggregate(make(), ups, state)
    expect = sum(clip_by_norm(u.delta, 1.0)[0]["w"] for u in ups) / 5.0
    assert torch.allclose(base["w"], expect, atol=1e-6)
    huge = ups[:4] + [ClientUpdate(4, {"w": torch.full((50,), 1e6)}, 14, 0.0)]
    diff = global_norm({"w": _aggregate(make(), huge, state)["w"] - base["w"]})
    assert diff <= 2 * 1.0 / 5.0 + 1e-5  # replace-one sensitivity 2C / D


def test_dp_noise_has_the_stated_std():
    state = {"w": torch.zeros(200_000)}
    ups = [ClientUpdate(k, {"w": torch.zeros(200_000)}, 10, 0.0) for k in range(4)]
    s = PrivateAggregate(clip_norm=2.0, weight=uniform_weight, denominator=8.0, noise_multiplier=1.5)
    out = _aggregate(s, ups, state)["w"]
    assert s.metrics()["noise_std"] == pytest.approx(1.5 * 2.0 / 8.0)
    assert abs(float(out.std()) - 1.5 * 2.0 / 8.0) < 6 * (1.5 * 2.0 / 8.0) / math.sqrt(2 * 200_000)


def test_adaptive_clipping_follows_the_norms_and_is_checkpointed():
    state = {"w": torch.zeros(50)}
    big = _updates(6, scale=10.0)  # every norm > C = 1: all clipped, C must grow by exp(eta * gamma)
    s = PrivateAggregate(clip_norm=1.0, weight=uniform_weight, denominator=6.0,
                         adaptive=AdaptiveClipping(target_quantile=0.5, lr=0.2, count_stddev=1e-12),
                         expected_clients=6.0)
    _aggregate(s, big, state)
    assert s.clip_norm == pytest.approx(math.exp(0.2 * 0.5))
    small = _updates(6, scale=1e-4)  # nobody clipped: shrink by exp(-eta (1 - gamma))
    _aggregate(s, small, state)
    assert s.clip_norm == pytest.approx(1.0)
    s.clip_norm = 3.25
    t = PrivateAggregate(clip_norm=1.0, weight=uniform_weight, denominator=6.0)
    t.load_state_dict(s.state_dict())
    assert t.clip_norm == 3.25


def test_capped_weights():
    w = capped_weight(100)
    assert w(50) == 0.5 and w(100) == 1.0 and w(1000) == 1.0


def test_local_dp_hook_clips_then_noises_on_the_client():
    u = ClientUpdate(3, {"w": torch.full((100_000,), 5.0)}, 10, 0.0)
    hook = LocalDP(clip_norm=1.0, noise_multiplier=2.0)
    out = hook(1, u).delta["w"]
    clean = clip_by_norm(u.delta, 1.0)[0]["w"]
    noise = out - clean
    assert abs(float(noise.std()) - 2.0) < 6 * 2.0 / math.sqrt(2 * 100_000)
    assert not torch.equal(out, hook(1, u).delta["w"])  # OS CSPRNG: fresh noise for the same (round, client)
    seeded = LocalDP(clip_norm=1.0, noise_multiplier=2.0, randomness=PrivacyRandomness(0))
    assert torch.equal(seeded(1, u).delta["w"], seeded(1, u).delta["w"])  # the insecure opt-in repeats


def test_batchnorm_is_flagged_with_the_fix():
    from fed8.models import build_model

    bn = build_model("resnet20", in_channels=1, height=28, width=28, num_classes=10, norm="batch")
    with pytest.raises(ConfigError, match=r"BatchNorm.*\n(.|\n)*model.norm = \"group\""):
        check_model_for_dp(bn, model_name="resnet20")
    gn = build_model("resnet20", in_channels=1, height=28, width=28, num_classes=10, norm="group")
    check_model_for_dp(gn, model_name="resnet20")


def test_refused_combinations(tmp_path, small):
    cases = [
        (["privacy.dp=central", "privacy.noise_multiplier=1.0", "privacy.weighting=samples"], "unbounded|noise no longer"),
        (["privacy.secure_aggregation=true", "compression.uplink=int8"], "compression.uplink"),
        (["privacy.secure_aggregation=true", "server.robust=median"], "only learns the sum"),
        (["privacy.dp=central", "privacy.noise_multiplier=1.0", "server.robust=trimmed_mean"], "sensitivity"),
        (["privacy.adaptive_clipping=true"], "adaptive_clipping needs"),
        (["privacy.dp=central", "privacy.noise_multiplier=1.0", "privacy.noise_placement=distributed"],
         "distributed"),
        (["privacy.dp=central", "privacy.noise_multiplier=1.0", "model.name=resnet20"], "model.norm"),
    ]
    for extra, msg in cases:
        with pytest.raises(ConfigError, match=msg):
            fed8.run(fed8.load_config(None, small + extra), out=tmp_path / str(abs(hash(msg))), report=False)


def test_dp_run_reports_epsilon_every_round_and_the_statement(tmp_path, small):
    # the default model here (the others in this file train a small mlp)
    cfg = fed8.load_config(None, small + ["model.name=cnn", "train.rounds=3", "data.num_clients=8", "privacy.dp=central",
                                          "privacy.target_epsilon=20", "train.sampling=poisson",
                                          "train.fraction=0.5", "privacy.adaptive_clipping=true",
                                          "privacy.adaptive_count_stddev=2.0"])
    r = fed8.run(cfg, out=tmp_path / "dp", report=False)
    eps = [row["epsilon"] for row in r.metrics]
    assert len(eps) == 3 and all(e is not None for e in eps) and eps == sorted(eps)
    assert eps[-1] <= 20.0 and all("rejected_updates" in row for row in r.metrics)
    p = r.summary["privacy"]
    assert p["noise_multiplier_calibrated"] and p["epsilon"] == pytest.approx(eps[-1])
    assert p["update_noise_multiplier"] > p["noise_multiplier"]
    assert "after 3 rounds" in p["statement"]
    # resuming may not change the rounds of a budgeted run
    with pytest.raises(ConfigError, match="privacy budget was planned"):
        fed8.run(resume=tmp_path / "dp", overrides=["train.rounds=4"], report=False)


def test_budget_stop_trains_only_the_rounds_within(tmp_path, small):
    cfg = fed8.load_config(None, small + ["train.rounds=5", "privacy.dp=central", "privacy.noise_multiplier=1.0",
                                          "privacy.target_epsilon=12", "privacy.budget=stop"])
    r = fed8.run(cfg, out=tmp_path / "s", report=False)
    assert 0 < len(r.metrics) < 5 and r.metrics[-1]["eval_accuracy"] is not None
    assert r.metrics[-1]["epsilon"] <= 12 and "stopped after round" in r.summary["privacy"]["stopped_for_budget"]


def _plan(sets, dim):
    from fed8.stages.aggregation import expected_clients, privacy_plan

    cfg = fed8.load_config(None, sets)
    return privacy_plan(cfg, dim=dim), expected_clients(cfg)


def test_noise_to_clip_ratio_is_the_measured_norm_of_the_noise_on_the_mean():
    """The formula against noise actually drawn: its norm on the mean update over clip_norm."""
    from fed8.privacy.plan import noise_to_clip_ratio

    d, g = 40_000, torch.Generator().manual_seed(0)
    base = ["data.num_clients=100", "train.fraction=0.1", "privacy.clip_norm=0.5"]
    central, m = _plan(base + ["privacy.dp=central", "privacy.noise_multiplier=2.0"], d)
    drawn = (torch.randn(d, generator=g, dtype=torch.float64) * 2.0 * 0.5).norm() / m / 0.5
    assert noise_to_clip_ratio(central, dim=d, clients_per_round=m) == pytest.approx(float(drawn), rel=0.02)
    assert noise_to_clip_ratio(central, dim=d, clients_per_round=m) == pytest.approx(2.0 * math.sqrt(d) / 10)
    local, m = _plan(base + ["privacy.dp=local", "privacy.noise_multiplier=2.0"], d)
    drawn = (torch.randn(int(m), d, generator=g, dtype=torch.float64) * 2.0 * 0.5).sum(0).norm() / m / 0.5
    assert noise_to_clip_ratio(local, dim=d, clients_per_round=m) == pytest.approx(float(drawn), rel=0.02)
    ddg, m = _plan(base + ["privacy.dp=central", "privacy.target_epsilon=8", "privacy.secure_aggregation=true",
                           "privacy.noise_placement=distributed"], d)
    shares = [torch.randn(d, generator=g, dtype=torch.float64) * math.sqrt(ddg.ddg.sigma2) for _ in range(int(m))]
    drawn = (sum(shares) * ddg.ddg.gamma).norm() / m / 0.5  # every sampled client's share, in update units
    assert noise_to_clip_ratio(ddg, dim=d, clients_per_round=m) == pytest.approx(float(drawn), rel=0.02)
    none, m = _plan(base, d)
    assert noise_to_clip_ratio(none, dim=d, clients_per_round=m) is None


def test_a_run_whose_noise_swamps_the_updates_is_warned_about_and_the_recipe_is_not(tmp_path, caplog):
    import logging

    from fed8.privacy.plan import NOISE_RATIO_WARN, noise_to_clip_ratio

    with caplog.at_level(logging.WARNING, logger="fed8"):
        fed8.run(fed8.load_config(None, ["data.subset=200", "data.num_clients=4", "train.rounds=1", "eval.every=0",
                                         "quantize.enabled=false", "train.fraction=1.0",
                                         "privacy.target_epsilon=8"]), out=tmp_path / "r", report=False)
    assert "privacy: the noise on each round's mean update has about" in caplog.text
    said = float(caplog.text.split("has about ")[1].split("x the norm")[0])
    summary = json.loads((tmp_path / "r/summary.json").read_text())["privacy"]
    assert round(summary["noise_to_clip_ratio"]) == said > NOISE_RATIO_WARN
    cnn = 1_663_370  # the README's 1,000-client recipe, at epsilon 8 and 4: it learned (0.94)
    for eps in (8, 4):
        plan, m = _plan(["data.num_clients=1000", "data.partition=iid", "train.sampling=poisson",
                         "train.fraction=0.1", "train.rounds=100", f"privacy.target_epsilon={eps}"], cnn)
        assert noise_to_clip_ratio(plan, dim=cnn, clients_per_round=m) < NOISE_RATIO_WARN
