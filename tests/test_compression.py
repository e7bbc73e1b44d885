"""Codecs, payload format, error feedback, and compressed federated runs."""

import math

import pytest
import torch

import fed8
from fed8.compression import (CODECS, ErrorFeedback, ResidualStore, ScaledCodec, TopKCodec, decode, make_codec,
                              payload_size)
from fed8.compression.codec import _header_bytes
from fed8.errors import ConfigError, PayloadError
from fed8.rundir import RunDir


def _tensors(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"conv.weight": torch.randn(33, 7, 3, 3, generator=g), "conv.bias": torch.randn(33, generator=g) * 1e-3,
            "fc.weight": torch.randn(10, 301, generator=g) * 5, "scalar": torch.tensor(0.25),
            "empty": torch.zeros(0, 4)}


ALL = [(n, g) for n in CODECS for g in (["tensor", "channel", "block"] if n in ("int8", "float8_e4m3fn",
                                                                                  "float8_e5m2") else ["-"])]


@pytest.mark.parametrize("name, gran", ALL)
def test_payload_size_is_exactly_the_computed_size(name, gran):
    c = make_codec(name, granularity=gran if gran != "-" else "channel", block_size=37, topk_fraction=0.07)
    x = _tensors()
    p = c.encode(x, generator=torch.Generator().manual_seed(1))
    entries = c._entries(x)
    expected = 3 + 1 + 4 + len(_header_bytes(c.name, c.params(), entries)) + sum(e["nbytes"] for e in entries) + 4
    assert len(p) == c.size(x) == payload_size(c.name, c.params(), entries) == expected
    d = decode(p)
    assert list(d) == sorted(x) and all(d[k].shape == x[k].shape and d[k].dtype == x[k].dtype for k in x)


def _group_amax(x, gran, block):
    if gran == "channel" and x.ndim >= 2:
        return x.abs().reshape(x.shape[0], -1).amax(1).reshape([-1] + [1] * (x.ndim - 1)).expand_as(x)
    if gran == "block":
        flat = x.reshape(-1)
        pad = (-flat.numel()) % block
        b = torch.cat([flat, flat.new_zeros(pad)]).reshape(-1, block)
        return b.abs().amax(1, keepdim=True).expand_as(b).reshape(-1)[: flat.numel()].reshape(x.shape)
    return x.abs().max().expand_as(x)


@pytest.mark.parametrize("gran", ["tensor", "channel", "block"])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_int8_error_bound(gran, rounding):
    x = _tensors()["fc.weight"]
    c = ScaledCodec("int8", granularity=gran, block_size=64, rounding=rounding)
    d = decode(c.encode({"w": x}, generator=torch.Generator().manual_seed(0)))["w"]
    s = _group_amax(x, gran, 64) / 127
    bound = s / 2 if rounding == "nearest" else s  # RNE: half a step; stochastic: less than one step
    assert ((d - x).abs() <= bound * (1 + 1e-6) + 1e-12).all()
    assert (d - x).abs().max() > 0.3 * s.min()  # and it does round (the bound is not vacuous)


@pytest.mark.parametrize("name, rel, sub_exp", [("float8_e4m3fn", 2.0**-4, -10), ("float8_e5m2", 2.0**-3, -17),
                                                 ("float16", 2.0**-11, None), ("bfloat16", 2.0**-8, None)])
def test_float_error_bounds(name, rel, sub_exp):
    x = _tensors()["fc.weight"] * torch.logspace(-3, 0, 301)  # values spanning several binades
    c = make_codec(name, granularity="channel")
    d = decode(c.encode({"w": x}))["w"]
    if sub_exp is None:  # float16 subnormals (< 2^-14) are spaced 2^-24: absolute half-step 2^-25
        floor = 2.0**-25 if name == "float16" else 0.0
        assert ((d - x).abs() <= torch.clamp(rel * x.abs() * (1 + 1e-6), min=floor)).all()
        return
    s = _group_amax(x, "channel", 0) / (448.0 if name == "float8_e4m3fn" else 57344.0)
    bound = torch.maximum(rel * x.abs(), s * 2.0**sub_exp)  # relative for normals, absolute below
    assert ((d - x).abs() <= bound * (1 + 1e-5)).all()


def test_stochastic_rounding_is_unbiased():
    # M draws of SR of a fixed x: each draw's error e is in (-s, s) with E[e] = 0 and Var[e] <= s^2 / 4,
    # so the mean over M draws has standard deviation <= s / (2 sqrt(M)). A 6-sigma band holds for all
    # 512 entries (Gaussian tail 2e-9 each); round-to-nearest, biased for most entries, is far outside.
    x = torch.randn(512, generator=torch.Generator().manual_seed(3))
    M = 2000
    c = ScaledCodec("int8", granularity="tensor", rounding="stochastic")
    g = torch.Generator().manual_seed(4)
    mean = sum(decode(c.encode({"x": x}, generator=g))["x"] for _ in range(M)) / M
    s = float(x.abs().max()) / 127
    tol = 6 * s / (2 * math.sqrt(M))
    assert (mean - x).abs().max() < tol
    nearest = decode(ScaledCodec("int8", granularity="tensor").encode({"x": x}))["x"]
    assert (nearest - x).abs().max() > 5 * tol


def test_topk_keeps_the_largest_entries_and_packs_indices():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    c = TopKCodec(0.05)
    p = c.encode({"x": x})
    d = decode(p)["x"]
    kept = d != 0
    assert kept.sum() == 50
    assert set(torch.nonzero(kept).reshape(-1).tolist()) == set(x.abs().topk(50).indices.tolist())
    s = float(x[kept].abs().max()) / 127
    assert ((d[kept] - x[kept]).abs() <= s / 2 + 1e-7).all()
    # chunked indices, b = 6: 16 chunk counts of 7 bits + 50 offsets of 6 bits = 412 bits = 52 bytes
    # (a 1000-bit bitmap is 125 bytes, 50 packed 10-bit indices 63)
    assert c.layout((1000,))[0] == 4 + 50 + 52
    n = 1_663_370
    assert TopKCodec(0.1).layout((n,))[0] < 4 + 166_337 + 0.7 * n / 8  # 10%: < 0.7 index bits per entry
    assert TopKCodec(0.9).layout((1000,))[0] <= 4 + 900 + 125  # never worse than a bitmap


def test_damaged_payloads_raise_never_garbage():
    p = make_codec("int8").encode(_tensors())
    with pytest.raises(PayloadError, match="not a fed8 payload"):
        decode(b"PK\x03\x04" + p[4:])  # a zip file, say
    with pytest.raises(PayloadError, match="not a fed8 payload"):
        decode(p[:5])
    with pytest.raises(PayloadError, match="checksum"):
        decode(p[:-1])  # truncated
    with pytest.raises(PayloadError, match="version"):
        decode(p[:3] + bytes([9]) + p[4:])
    for i in range(4, len(p), max(1, len(p) // 97)):  # any flipped byte is caught
        bad = bytearray(p)
        bad[i] ^= 0x10
        with pytest.raises(PayloadError):
            decode(bytes(bad))
    with pytest.raises(PayloadError, match="must be bytes"):
        decode("text")


def test_a_codec_decodes_its_own_payloads_and_decode_reads_any():
    t = _tensors()
    for name in CODECS:
        c = make_codec(name)
        p = c.encode(t)
        assert {k: v.shape for k, v in c.decode(p).items()} == {k: v.shape for k, v in t.items()}
        assert all(torch.equal(c.decode(p)[k], decode(p)[k]) for k in t)
    p = make_codec("int8", granularity="tensor").encode(t)
    for other in (make_codec("float16"), make_codec("int8", granularity="channel")):  # another codec, other params
        with pytest.raises(PayloadError, match="fed8.compression.decode"):
            other.decode(p)


def test_error_feedback_sends_everything_eventually(tmp_path):
    store = ResidualStore(tmp_path / "res")
    ef = ErrorFeedback(TopKCodec(0.1), store)
    g = torch.Generator().manual_seed(0)
    xs = [{"w": torch.randn(40, 30, generator=g)} for _ in range(5)]
    sent = torch.zeros(40, 30)
    for r, x in enumerate(xs, start=1):
        _, decoded = ef.encode(x, client=7, round=r)
        sent += decoded["w"]
        store.commit(r)
    # telescoping: everything that entered is sent or still held as the residual
    total = sum(x["w"] for x in xs)
    assert torch.allclose(sent + store.get(7)["w"], total, atol=1e-5)
    assert (sent - total).abs().sum() < (decode(TopKCodec(0.1).encode({"w": total}))["w"] - total).abs().sum() * 5
    # on disk, one committed file per client; nothing in RAM
    assert [f.name for f in (tmp_path / "res").iterdir()] == ["c000007-r000005.safetensors"] and not store._mem
    # a crashed round's residuals are dropped on resume
    r5 = store.get(7)["w"]
    ef.encode(xs[0], client=7, round=6)
    ef.encode(xs[0], client=8, round=6)
    reopened = ResidualStore(tmp_path / "res")
    assert len(reopened) == 2 and not torch.equal(reopened.get(7)["w"], r5)
    reopened.rollback(5)
    assert len(reopened) == 1 and torch.equal(reopened.get(7)["w"], r5) and reopened.get(8) is None
    assert sorted(f.name for f in (tmp_path / "res").iterdir()) == ["c000007-r000005.safetensors"]


def test_config_rejects_unknown_codec_and_init_documents_all():
    with pytest.raises(ConfigError, match="compression.uplink"):
        fed8.load_config(None, ["compression.uplink=fp8"])
    text = fed8.config.to_toml(fed8.Config(), comments=True)
    assert "[compression]" in text and all(n in text for n in CODECS)


def _strip(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.mark.slow
def test_compressed_run_counts_real_bytes_and_resumes_bit_identical(tmp_path, small, monkeypatch):
    from fed8.compression.wire import Wire

    cfg = fed8.load_config(None, small + ["model.name=mlp", "model.hidden=64", "train.rounds=3",
                                          "compression.uplink=topk", "compression.topk_fraction=0.1",
                                          "compression.error_feedback=true", "compression.downlink=float8_e4m3fn",
                                          "compression.downlink_mode=delta", "compression.rounding=stochastic"])
    lengths = []
    real_upload = Wire.upload

    def counting(self, rnd, client, delta):
        out = real_upload(self, rnd, client, delta)
        lengths.append(out[1])
        return out

    monkeypatch.setattr(Wire, "upload", counting)
    full = fed8.run(cfg, out=tmp_path / "full", report=False)
    rows = full.metrics
    assert sum(r["uplink_bytes"] for r in rows) == sum(lengths)  # the summed lengths of the real payloads
    assert 0.02 < full.summary["uplink_ratio_to_float32"] < 0.05
    assert 0.24 < full.summary["downlink_ratio_to_float32"] < 0.27  # float8 deltas (all clients every round)
    assert rows[-1]["eval_accuracy"] > 0.2
    assert len(list((tmp_path / "full/residuals").iterdir())) == 4  # one committed residual per client
    # crash in the middle of round 3 (after one client wrote its residual), then resume
    calls = {"n": 0}

    def crashing(self, rnd, client, delta):
        out = real_upload(self, rnd, client, delta)
        if rnd == 3:
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
        return out

    monkeypatch.setattr(Wire, "upload", crashing)
    with pytest.raises(KeyboardInterrupt):
        fed8.run(cfg, out=tmp_path / "cut", report=False)
    assert RunDir(tmp_path / "cut").load_checkpoint()["round"] == 2
    monkeypatch.setattr(Wire, "upload", real_upload)
    resumed = fed8.run(resume=tmp_path / "cut", report=False)
    assert _strip(resumed.metrics) == _strip(rows)
    assert (tmp_path / "cut/model.safetensors").read_bytes() == (tmp_path / "full/model.safetensors").read_bytes()


def test_delta_downlink_tracks_the_clients_model_and_counts_catch_up():
    from fed8.compression.wire import Wire

    g = torch.Generator().manual_seed(0)
    w = {"a": torch.randn(20, 10, generator=g), "steps": torch.tensor(3)}
    wire = Wire(make_codec("float32"), make_codec("int8"), seed=0, num_clients=3, downlink_mode="delta")
    got1, bytes1 = wire.broadcast(1, w, [0, 1])
    full_int8 = make_codec("int8").size({"a": w["a"]})
    raw = bytes1 // 2 - full_int8  # the non-float entry travels as safetensors
    assert bytes1 == 2 * (full_int8 + raw) and raw > 0 and torch.equal(got1["steps"], w["steps"])
    w2 = {"a": w["a"] + 0.01 * torch.randn(20, 10, generator=g), "steps": torch.tensor(4)}
    got2, bytes2 = wire.broadcast(2, w2, [1, 2])  # client 2 missed round 1: it first gets w_ref in float32
    delta_size = make_codec("int8").size({"a": w2["a"]})
    assert bytes2 == (delta_size + raw) + (make_codec("float32").size({"a": w["a"]}) + delta_size + raw)
    # the delta is small, so the clients' model is much closer to w2 than a full int8 copy would be
    full = decode(make_codec("int8").encode({"a": w2["a"]}))["a"]
    assert (got2["a"] - w2["a"]).abs().max() < 0.2 * (full - w2["a"]).abs().max()
    assert torch.equal(wire.ref["a"], got2["a"])
