"""Secure aggregation: Shamir sharing, the ring encoding, the protocol, dropouts, bytes."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

import fed8
from conftest import interrupted_run
from fed8.errors import SecAggError
from fed8.privacy.dp import clip_by_norm
from fed8.privacy.secagg import SecAggClient, SecAggServer, SecureSum, ring_bits, threshold_for
from fed8.privacy.secagg.ring import from_ring, pack_bits, rotate, unpack_bits, unrotate
from fed8.privacy.secagg.shamir import combine, split


@pytest.fixture
def small(small):
    """These tests are about the privacy machinery, not the model: a small mlp keeps them fast."""
    return small + ["model.name=mlp", "model.hidden=64"]


def test_shamir_any_t_shares_recover_and_fewer_do_not():
    secret = bytes(range(32))
    shares = split(secret, threshold=3, holders=[0, 1, 2, 3, 4])
    for subset in ([0, 1, 2], [2, 3, 4], [0, 2, 4], [4, 1, 3, 0]):
        assert combine({h: shares[h] for h in subset}, threshold=3) == secret
    with pytest.raises(SecAggError, match="at least 3"):
        combine({0: shares[0], 1: shares[1]}, threshold=3)
    # two shares interpolated as if t = 2 give an unrelated field element, caught as inconsistent
    with pytest.raises(SecAggError, match="inconsistent"):
        combine({0: shares[0], 1: shares[1]}, threshold=2)


@pytest.mark.parametrize("n", [1, 2, 3, 10, 50, 100, 200, 1000])
def test_ring_holds_the_extreme_sums(n):
    k = ring_bits(n)
    assert k <= 8 + math.ceil(math.log2(max(n, 2)))
    for v in (127, -127):
        total = (np.full(n, v % (1 << k), dtype=np.uint64).sum()) & ((1 << k) - 1)
        assert from_ring(np.array([total]), k)[0] == v * n


@pytest.mark.parametrize("k", [8, 11, 16, 17, 20])
def test_pack_bits_roundtrip_and_size(k):
    v = np.random.default_rng(k).integers(0, 1 << k, 1001).astype(np.uint32)
    b = pack_bits(v, k)
    assert len(b) == math.ceil(1001 * k / 8)
    assert np.array_equal(unpack_bits(b, k, 1001), v)


def test_rotation_is_orthonormal_and_spreads():
    g = torch.Generator().manual_seed(0)
    d = 10_000
    signs = torch.randint(0, 2, (d,), generator=g).float() * 2 - 1
    x = torch.randn(d, generator=g)
    y = rotate(x, signs)
    assert y.shape == (d,) and float(y.norm()) == pytest.approx(float(x.norm()), rel=1e-5)
    assert torch.allclose(unrotate(y, signs), x, atol=1e-5)
    e = torch.zeros(d)
    e[17] = 1.0
    assert float(rotate(e, signs).abs().max()) <= 1.5 / math.sqrt(d)  # a spike becomes flat


def _protocol(inputs, *, t, k, drop_before=(), drop_after=()):
    """Run the four protocol rounds for integer inputs; returns the server's unmasked sum."""
    length = len(next(iter(inputs.values())))
    clients = {u: SecAggClient(u, rnd=1, threshold=t, k=k, length=length) for u in inputs}
    server = SecAggServer(1, t, k, length)
    for u, c in clients.items():
        server.adverts[u] = c.advertise()
    for u, c in clients.items():
        server.collect_shares(u, c.share_keys(server.adverts))
    payloads = {}
    for u, c in clients.items():
        if u in drop_before:
            continue
        payloads[u] = c.masked_input(inputs[u], server.inboxes[u])
        server.add_masked(u, payloads[u])
    responses = {u: clients[u].unmask(server.senders) for u in clients
                 if u not in drop_before and u not in drop_after}
    return server.unmask(responses), payloads


def test_unmasked_sum_equals_the_plain_sum_exactly_with_dropouts():
    rng = np.random.default_rng(0)
    n, t = 7, 4
    k = ring_bits(n)
    codes = {u: rng.integers(-127, 128, 5000) for u in range(n)}
    inputs = {u: (c & ((1 << k) - 1)).astype(np.uint32) for u, c in codes.items()}
    total, _ = _protocol(inputs, t=t, k=k)
    assert np.array_equal(from_ring(total, k), sum(codes.values()))
    # up to n - t clients drop after sending masked input: still the sum over all senders
    total, _ = _protocol(inputs, t=t, k=k, drop_after={1, 4, 6})
    assert np.array_equal(from_ring(total, k), sum(codes.values()))
    # clients that drop before sending: the sum over those who sent (their pairwise masks removed)
    total, _ = _protocol(inputs, t=t, k=k, drop_before={0, 5})
    assert np.array_equal(from_ring(total, k), sum(codes[u] for u in range(n) if u not in (0, 5)))
    # fewer than t survivors: clear failure
    with pytest.raises(SecAggError, match="fewer than the threshold t = 4"):
        _protocol(inputs, t=t, k=k, drop_after={0, 1, 2, 3})
    with pytest.raises(SecAggError, match="threshold is 4"):
        _protocol(inputs, t=t, k=k, drop_before={0, 1, 2, 3})


def test_what_the_server_receives_from_one_client_looks_uniform():
    n, t, k = 5, 3, 12
    length = 200_000
    inputs = {u: np.full(length, 7, dtype=np.uint32) for u in range(n)}  # maximally non-uniform inputs
    _, payloads = _protocol(inputs, t=t, k=k)
    bins = 1 << k
    for u in (0, 3):
        seen = unpack_bits(payloads[u], k, length)
        p = stats.chisquare(np.bincount(seen, minlength=bins)).pvalue
        assert p > 1e-4, f"client {u}'s masked input fails a chi-square test of uniformity (p = {p})"
    # the test has power: the unmasked input fails it
    assert stats.chisquare(np.bincount(inputs[0], minlength=bins) + 1).pvalue < 1e-10


def test_tampered_share_is_detected():
    clients = {u: SecAggClient(u, rnd=1, threshold=2, k=10, length=4) for u in range(3)}
    server = SecAggServer(1, 2, 10, 4)
    for u, c in clients.items():
        server.adverts[u] = c.advertise()
    for u, c in clients.items():
        server.collect_shares(u, c.share_keys(server.adverts))
    inbox = dict(server.inboxes[0])
    inbox[1] = inbox[1][:-1] + bytes([inbox[1][-1] ^ 1])
    clients[0].masked_input(np.zeros(4, dtype=np.uint32), inbox)
    from cryptography.exceptions import InvalidTag

    with pytest.raises(InvalidTag):
        clients[0].unmask([0, 1, 2])


def _updates(n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {u: {"a": torch.randn(d // 2, generator=g) * 0.01, "b": torch.randn(d - d // 2, generator=g) * 0.01}
            for u in range(n)}


@pytest.mark.parametrize("phase", ["after_input", "before_input"])
def test_secure_sum_decodes_the_weighted_sum(phase):
    n, d = 8, 4001
    ups = _updates(n, d)
    s = SecureSum(seed=0, threshold=0.6, dropout=0.25, dropout_phase=phase)
    s.begin(3, list(range(n)), clip_norm=1.0)
    for u in range(n):
        s.add(u, clip_by_norm(ups[u], 1.0)[0], weight=0.5 if u % 2 else 1.0, bit=u % 3 == 0)
    r = s.finish()
    kept = [u for u in range(n) if phase == "after_input" or u not in s.dropped]
    assert len(s.dropped) == 2 and r.num_inputs == len(kept)
    w = {u: round(127 * (0.5 if u % 2 else 1.0)) / 127 for u in range(n)}  # weights travel as int8 codes
    assert r.weight_sum == pytest.approx(sum(w[u] for u in kept), abs=1e-9)
    assert r.bit_sum == sum(u % 3 == 0 for u in kept)
    plain = {k: sum(w[u] * ups[u][k] for u in kept) for k in ("a", "b")}
    # stochastic rounding: error per coordinate ~ scale * sqrt(n) / 2; scale = 4 C / sqrt(d) / 127
    bound = 6 * 4 / math.sqrt(d + 1) / 127 * math.sqrt(n) / 2
    err = max(float((r.total[k] - plain[k]).abs().max()) for k in plain)
    assert err < bound


def test_upload_is_about_two_bytes_per_value():
    n, d = 30, 60_000
    ups = _updates(n, d)
    s = SecureSum(seed=0, threshold=0.6)
    s.begin(1, list(range(n)), clip_norm=1.0)
    for u in range(n):
        s.add(u, ups[u], weight=1.0, bit=1)
    r = s.finish()
    assert r.ring_bits == ring_bits(n) == 13
    ratio = max(r.uplink_bytes.values()) / (4 * d)
    assert 13 / 32 < ratio < 0.55  # masked input at k bits/value plus keys and shares


def test_threshold_for():
    assert threshold_for(10, 0.6) == 6 and threshold_for(3, 0.01) == 1 and threshold_for(4, 1.0) == 4


def test_secagg_run_matches_plain_accuracy_and_sends_half(tmp_path, small):
    base = small + ["train.rounds=3", "privacy.clip_norm=5.0"]
    plain = fed8.run(fed8.load_config(None, base), out=tmp_path / "p", report=False)
    sec = fed8.run(fed8.load_config(None, base + ["privacy.secure_aggregation=true"]), out=tmp_path / "s",
                   report=False)
    assert sec.summary["uplink_ratio_to_float32"] < 0.55
    assert all(r["secagg_ring_bits"] == ring_bits(4) for r in sec.metrics)
    assert sec.final["eval_accuracy"] > plain.final["eval_accuracy"] - 0.05
    assert "only saw sums of at least 3 clients' updates" in sec.summary["privacy"]["statement"]


def test_secagg_round_with_too_few_survivors_is_abandoned(tmp_path, small):
    cfg = fed8.load_config(None, small + ["privacy.secure_aggregation=true", "privacy.secagg_threshold=0.9",
                                          "privacy.secagg_dropout=0.5"])
    r = fed8.run(cfg, out=tmp_path / "a", report=False)
    assert all("fewer than the threshold" in row["aborted"] for row in r.metrics)


@pytest.mark.slow
@pytest.mark.parametrize("adaptive", ["off", "on"])
def test_dp_with_secure_aggregation_resumes_bit_identical(tmp_path, small, adaptive):
    from fed8.rundir import RunDir

    cfg = fed8.load_config(None, small + ["train.rounds=3", "privacy.secure_aggregation=true", "privacy.dp=central",
                                          "privacy.noise_multiplier=0.3", "privacy.noise_placement=distributed",
                                          "privacy.secagg_dropout=0.25", "privacy.insecure_reproducible_noise=true",
                                          f"privacy.adaptive_clipping={adaptive}", "privacy.adaptive_quantile=0.55"])
    full = fed8.run(cfg, out=tmp_path / "full", report=False)
    # with adaptive clipping the clip norm (and the grid with it) moves every round; resume restores it
    assert (len({row["clip_norm"] for row in full.metrics}) > 1) == (adaptive == "on")

    interrupted_run(cfg, tmp_path / "cut", 1)
    assert RunDir(tmp_path / "cut").load_checkpoint()["round"] == 1
    fed8.run(resume=tmp_path / "cut", report=False)
    assert (tmp_path / "cut/model.safetensors").read_bytes() == (tmp_path / "full/model.safetensors").read_bytes()
