"""Privacy randomness from the OS CSPRNG, empty DP rounds, the secure-aggregation floor, public weights,
and what resume promises under DP."""

import json
import math
import shutil

import pytest
import torch

import fed8
from conftest import interrupted_run
from fed8._rng import DP_NOISE, torch_generator
from fed8.errors import CheckpointError, ConfigError, EmptyRoundError, SecAggError
from fed8.federated.client import ClientUpdate
from fed8.federated.private import PrivateAggregate, uniform_weight
from fed8.federated.robust import ValidateUpdates
from fed8.stages.federation import prepare
from fed8.privacy.dp import add_gaussian_noise, clip_by_norm
from fed8.privacy.randomness import PrivacyRandomness, SeededDraws, SystemDraws
from fed8.privacy.secagg import SecureSum
from fed8.rundir import RunDir


@pytest.fixture
def small(small):
    """These tests are about the privacy machinery, not the model: a small mlp keeps them fast."""
    return small + ["model.name=mlp", "model.hidden=64"]


DP = ["privacy.dp=central", "privacy.noise_multiplier=1.0"]


def test_system_draws_are_fresh_and_have_the_right_law():
    d = SystemDraws()
    z = d.randn((400_000,))
    assert z.dtype == torch.float32 and abs(float(z.mean())) < 6 / math.sqrt(4e5)
    assert abs(float(z.std()) - 1.0) < 6 / math.sqrt(8e5)
    assert abs(float((z.abs() < 1).float().mean()) - 0.682689) < 0.005  # a Gaussian, not just unit variance
    u = d.rand((100_000,))
    assert 0.0 <= float(u.min()) and float(u.max()) < 1.0 and abs(float(u.mean()) - 0.5) < 0.005
    assert not torch.equal(d.randn((16,)), d.randn((16,)))
    p = d.randperm(1000)
    assert sorted(p.tolist()) == list(range(1000)) and p.tolist() != list(range(1000))
    assert d.randn(()).shape == ()


def _one_client_release(randomness):
    """The noised sum of one known update, as the server releases it (the model change)."""
    state = {"w": torch.zeros(20_000)}
    s = PrivateAggregate(clip_norm=1.0, weight=uniform_weight, denominator=1.0, noise_multiplier=5.0,
                         randomness=randomness)
    s.begin(1, [0])
    update = {"w": torch.full((20_000,), 0.005)}
    s.add(ClientUpdate(0, update, 10, 0.0))
    return state["w"] + s.result(state)["w"], clip_by_norm(update, 1.0)[0]["w"]


def test_knowing_the_seed_does_not_remove_the_noise():
    # The attack of the review: regenerate the noise from (seed, DP_NOISE, round) and subtract it.
    attacker_noise = add_gaussian_noise({"w": torch.zeros(20_000)}, 5.0,
                                        draws=SeededDraws(torch_generator(0, DP_NOISE, 1)))["w"]
    insecure, clipped = _one_client_release(PrivacyRandomness(seed=0))
    assert float((insecure - attacker_noise - clipped).norm()) < 1e-3  # the opt-in is really insecure
    secure, clipped = _one_client_release(PrivacyRandomness())
    err = float((secure - attacker_noise - clipped).norm())
    assert err > 0.5 * 5.0 * math.sqrt(2 * 20_000)  # ~ sqrt(2) x the noise norm: nothing recovered


@pytest.mark.slow
def test_dp_runs_draw_fresh_noise_unless_the_insecure_opt_in(tmp_path, small):
    runs = {}
    for name, extra in [("a", []), ("b", []), ("c", ["privacy.insecure_reproducible_noise=true"]),
                        ("d", ["privacy.insecure_reproducible_noise=true"])]:
        runs[name] = fed8.run(fed8.load_config(None, small + DP + extra), out=tmp_path / name, report=False)
    model = {k: (tmp_path / k / "model.safetensors").read_bytes() for k in runs}
    assert model["a"] != model["b"] and model["c"] == model["d"]
    assert runs["a"].summary["privacy"]["noise_source"] == "os.urandom"
    assert "(epsilon, delta) = (" in runs["a"].summary["privacy"]["statement"]
    p = runs["c"].summary["privacy"]
    assert p["insecure_reproducible_noise"] and p["statement"].startswith("NO PRIVACY")
    # without DP nothing changes: runs stay bit-identical and say nothing about noise
    plain = [fed8.run(fed8.load_config(None, small), out=tmp_path / f"p{i}", report=False) for i in range(2)]
    assert plain[0].summary["privacy"]["noise_source"] is None
    assert (tmp_path / "p0/model.safetensors").read_bytes() == (tmp_path / "p1/model.safetensors").read_bytes()


def test_dp_sampling_and_secagg_client_randomness_are_secret(small):
    for extra, secure in [(DP, True), ([], False), (DP + ["privacy.insecure_reproducible_noise=true"], False)]:
        cfg = fed8.load_config(None, small + ["privacy.secure_aggregation=true"] + extra)
        sim = prepare(cfg).simulation
        assert sim.sampling_randomness.secure is secure
        assert sim.aggregator.inner.inner.secure.randomness.secure is secure
        assert sim.aggregator.inner.randomness.secure is secure


def test_a_dp_round_with_nothing_to_add_still_releases_noise():
    state = {"w": torch.zeros(50_000)}
    s = PrivateAggregate(clip_norm=2.0, weight=uniform_weight, denominator=4.0, noise_multiplier=1.0)
    s.begin(1, [])
    out = s.result(state)["w"]  # empty Poisson sample
    assert abs(float(out.std()) - 2.0 / 4.0) < 6 * 0.5 / math.sqrt(1e5)
    # every update rejected by validation: the same noised zero sum
    v = ValidateUpdates(PrivateAggregate(clip_norm=2.0, weight=uniform_weight, denominator=4.0,
                                         noise_multiplier=1.0), {"w": (50_000,)})
    v.begin(2, [0])
    v.add(ClientUpdate(0, {"w": torch.full((50_000,), float("nan"))}, 10, 0.0))
    out = v.result(state)["w"]
    assert v.metrics()["rejected_updates"] == 1 and abs(float(out.std()) - 0.5) < 0.01
    # without DP there is nothing to release: the round is abandoned
    plain = PrivateAggregate(clip_norm=2.0, weight=uniform_weight, denominator=None)
    plain.begin(1, [])
    with pytest.raises(EmptyRoundError):
        plain.result(state)


def test_empty_poisson_rounds_under_dp_move_the_model(tmp_path, small):
    # client_reports = on: the clients report their training loss (under DP, auto keeps it on the clients)
    cfg = fed8.load_config(None, small + DP + ["train.sampling=poisson", "train.fraction=0.01", "train.rounds=3",
                                               "privacy.client_reports=on"])
    r = fed8.run(cfg, out=tmp_path / "e", report=False)
    empty = [row for row in r.metrics if row["num_clients"] == 0]
    assert empty and all("aborted" not in row and row["noise_std"] > 0 for row in empty)
    assert all(row["train_loss"] is None for row in empty)  # nobody trained: no loss, not a loss of 0
    # a round with clients reports their loss; NaN is possible and honest: the sampling and the noise come from
    # the OS CSPRNG, and a round that follows a noise-only round (noise ~25x the clip norm per value on the mean
    # here) can train a blown-up model to NaN (seen in CI: that client's update was then rejected)
    trained = [row["train_loss"] for row in r.metrics if row["num_clients"] > 0]
    assert all(isinstance(x, float) and (x > 0 or math.isnan(x)) for x in trained)
    assert r.metrics[-1]["epsilon"] == pytest.approx(r.summary["privacy"]["epsilon"])


def test_secure_sum_refuses_to_unmask_below_the_floor():
    s = SecureSum(seed=0, threshold=0.6, min_clients=3)
    s.begin(1, [0], clip_norm=1.0)  # threshold_for(1, 0.6) == 1: one survivor could unmask one input
    s.add(0, {"a": torch.ones(8) * 0.1}, weight=1.0, bit=1)
    with pytest.raises(SecAggError, match="participation floor of 3"):
        s.finish()
    s = SecureSum(seed=0, threshold=0.6, min_clients=3)
    s.begin(1, [0, 1, 2], clip_norm=1.0)
    for u in range(3):
        s.add(u, {"a": torch.ones(8) * 0.1}, weight=1.0, bit=1)
    assert s.finish().num_inputs == 3


def test_secagg_floor_is_validated_and_named(tmp_path, small):
    with pytest.raises(ConfigError, match="secagg_min_clients = 5 is more than the 4 clients per round"):
        fed8.run(fed8.load_config(None, small + ["privacy.secure_aggregation=true", "privacy.secagg_min_clients=5"]),
                 out=tmp_path / "x", report=False)
    with pytest.raises(ConfigError, match="secagg_min_clients"):
        fed8.load_config(None, ["privacy.secagg_min_clients=1"])
    cfg = fed8.load_config(None, small + ["privacy.secure_aggregation=true", "privacy.secagg_dropout=0.5",
                                          "privacy.secagg_dropout_phase=before_input", "privacy.secagg_threshold=0.5"])
    r = fed8.run(cfg, out=tmp_path / "f", report=False)  # 2 of 4 inputs arrive: below the floor of 3
    assert all("participation floor of 3" in row["aborted"] for row in r.metrics)
    assert "at least 3 clients" in r.summary["privacy"]["statement"]


def test_capped_weights_need_a_public_cap_and_the_denominator_ignores_client_sizes(small):
    from fed8.stages.aggregation import make_aggregator
    from fed8.privacy import make_plan

    cfg = fed8.load_config(None, small + DP + ["privacy.weighting=capped"])
    with pytest.raises(ConfigError, match="weight_cap > 0"):
        make_aggregator(cfg, None, client_sizes=[10, 20], expected={})
    cfg = fed8.load_config(None, small + DP + ["privacy.weighting=capped", "privacy.weight_cap=50"])
    plan = make_plan(cfg.privacy, num_clients=4, clients_per_round=4, sampling="fixed", rounds=2)
    denominators = {make_aggregator(cfg, plan, client_sizes=sizes, expected={})[0].inner.denominator
                    for sizes in ([10, 20, 30, 40], [500, 1, 1, 1], [50, 50, 50, 50])}
    assert denominators == {4.0}  # D = m: no client's data chooses a privacy parameter


def test_resume_under_dp_keeps_committed_rounds_and_redraws_the_rest(tmp_path, small):
    cfg = fed8.load_config(None, small + DP + ["train.rounds=3"])
    interrupted_run(cfg, tmp_path / "cut", 1)
    cut = RunDir(tmp_path / "cut")
    row1 = cut.read_metrics()
    model1 = cut.load_checkpoint()["model"]
    for name in ("r1", "r2"):
        shutil.copytree(tmp_path / "cut", tmp_path / name)
        r = fed8.run(resume=tmp_path / name, report=False)
        assert r.metrics[:1] == row1  # a committed round is never redrawn
        assert r.summary["privacy"]["epsilon"] == pytest.approx(
            prepare(cfg).plan.epsilon(3))  # each released round counted once
    assert (tmp_path / "r1/model.safetensors").read_bytes() != (tmp_path / "r2/model.safetensors").read_bytes()
    after = RunDir(tmp_path / "cut").load_checkpoint()["model"]
    assert all(torch.equal(model1[k], after[k]) for k in model1)


def test_an_interrupted_local_dp_attempt_is_counted(tmp_path, small):
    from fed8.privacy import epsilon

    cfg = fed8.load_config(None, small + ["privacy.dp=local", "privacy.noise_multiplier=2.0", "train.rounds=3"])
    interrupted_run(cfg, tmp_path / "cut", 1)
    RunDir(tmp_path / "cut").mark_attempt(2)  # as if killed while round 2's noised updates were on their way
    r = fed8.run(resume=tmp_path / "cut", report=False)
    spec = prepare(cfg).plan.spec
    assert r.summary["privacy"]["epsilon"] == pytest.approx(epsilon(spec, 2.0, 4))  # 3 rounds + 1 attempt
    assert json.loads((tmp_path / "cut/checkpoints/state.json").read_text())["extra_releases"] == 1


def test_interrupted_attempt_never_overspends_a_budget(tmp_path, small):
    cfg = fed8.load_config(None, small + ["privacy.dp=local", "privacy.target_epsilon=30", "train.rounds=3"])
    interrupted_run(cfg, tmp_path / "cut", 1)
    RunDir(tmp_path / "cut").mark_attempt(2)
    r = fed8.run(resume=tmp_path / "cut", report=False)
    assert len(r.metrics) == 2 and r.summary["privacy"]["epsilon"] <= 30
    assert "interrupted" in r.summary["privacy"]["stopped_for_budget"]


def test_a_row_committed_but_not_yet_in_metrics_is_restored(tmp_path, small):
    cfg = fed8.load_config(None, small + ["train.rounds=3"])
    interrupted_run(cfg, tmp_path / "cut", 2)
    rd = RunDir(tmp_path / "cut")
    rows = rd.read_metrics()
    rd.write_metrics(rows[:1])  # killed after the checkpoint commit, before the metrics write
    r = fed8.run(resume=tmp_path / "cut", report=False)
    assert [row["round"] for row in r.metrics] == [1, 2, 3] and r.metrics[1] == rows[1]


def test_resume_without_a_committed_checkpoint_is_refused_and_changes_nothing(tmp_path, small):
    cfg = fed8.load_config(None, small)
    fed8.run(cfg, out=tmp_path / "r", report=False)
    (tmp_path / "r/checkpoints/state.json").unlink()
    before = {p.name: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError, match="no committed checkpoint"):
        fed8.run(resume=tmp_path / "r", report=False)
    after = {p.name: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()}
    assert after == before


@pytest.mark.slow
def test_secure_aggregation_alone_adapts_its_clip_bound_and_reports_the_clipped_fraction(tmp_path, small):
    sec = ["privacy.secure_aggregation=true", "train.rounds=4", "privacy.clip_norm=0.05"]
    r = fed8.run(fed8.load_config(None, small + sec), out=tmp_path / "a", report=False)
    clip = [row["clip_norm"] for row in r.metrics]
    clipped = [row["clipped_fraction"] for row in r.metrics]
    assert all(0.0 <= c <= 1.0 for c in clipped)
    assert clipped[0] == 1.0 and clip[0] == 0.05  # every update of this run is larger than the initial bound
    assert clip[-1] > 0.2 and clipped[-1] < 1.0  # the bound caught up with the norms (x2.46 a round at first)
    fixed = fed8.run(fed8.load_config(None, small + sec + ["privacy.secagg_adaptive_clip=false"]),
                     out=tmp_path / "f", report=False)
    assert all(row["clip_norm"] == 0.05 and row["clipped_fraction"] == 1.0 for row in fixed.metrics)
    rows = RunDir(tmp_path / "a").read_metrics()
    assert all("clipped_fraction" in row for row in rows)
