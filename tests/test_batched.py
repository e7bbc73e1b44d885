"""Batched clients (torch.func) against sequential training: per-client updates, runs, and every feature on top."""

import logging

import pytest
import torch

import fed8
from fed8.federated.batched import auto_chunk, batching_blocker, train_clients_batched
from fed8.federated.client import ClientData, LocalTraining, train_client
from fed8.models import build_model

# Batched kernels sum in another order than per-client ones, and SGD steps amplify the difference. In float64
# the two are the same computation (1e-12); in float32, |batched - sequential| <= TOL * max(1, |delta|).
TOL32 = {"cnn": 1e-5, "mlp": 1e-5, "resnet20": 5e-3}


def _clients(sizes, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [ClientData(torch.randn(n, 1, 28, 28, generator=g).to(dtype), torch.randint(0, 10, (n,), generator=g),
                       torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long)) for n in sizes]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", ["cnn", "mlp", "resnet20"])
@pytest.mark.parametrize("local", [
    LocalTraining(epochs=3, batch_size=4, lr=0.01),
    LocalTraining(epochs=2, batch_size=5, lr=0.01, momentum=0.9, weight_decay=1e-3, prox_mu=0.1),
], ids=["sgd", "momentum-wd-prox"])
def test_batched_updates_match_sequential_for_ragged_clients(name, local, dtype):
    model = build_model(name, in_channels=1, height=28, width=28, num_classes=10, seed=0, hidden=32,
                        norm="group").to(dtype)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    data = _clients([9, 1, 13, 4, 20], dtype=dtype)  # ragged: 1 to 20 images, 1 to 5 steps per epoch
    seq = [train_client(model, state, d, local, generator=torch.Generator().manual_seed(100 + i), client=i)
           for i, d in enumerate(data)]
    bat = train_clients_batched(model, state, data, local, clients=list(range(5)),
                                generators=[torch.Generator().manual_seed(100 + i) for i in range(5)])
    tol = 1e-12 if dtype == torch.float64 else TOL32[name]
    for a, b in zip(seq, bat):
        assert a.client == b.client and a.num_samples == b.num_samples and a.delta.keys() == b.delta.keys()
        scale = max(1.0, max(float(v.abs().max()) for v in a.delta.values()))
        for k in a.delta:
            assert float((a.delta[k] - b.delta[k]).abs().max()) <= tol * scale, (name, k)
        assert b.train_loss == pytest.approx(a.train_loss, rel=max(1e-4, tol))
    assert max(float(v.abs().max()) for v in bat[1].delta.values()) > 0  # the one-image client trained too


def test_models_with_batchnorm_are_not_batched_and_auto_chunks_bound_memory():
    bn = build_model("resnet20", in_channels=1, height=28, width=28, num_classes=10, seed=0, norm="batch")
    assert "BatchNorm" in batching_blocker(bn)
    cnn = build_model("cnn", in_channels=1, height=28, width=28, num_classes=10, seed=0)
    assert batching_blocker(cnn) is None
    per_client = 4 * sum(p.numel() * 4 for p in cnn.parameters())
    assert auto_chunk(cnn, 1000) == (192 << 20) // per_client and auto_chunk(cnn, 3) == 3


BASE = ["data.subset=300", "data.num_clients=6", "train.rounds=2", "train.local_epochs=2", "train.fraction=1.0",
        "run.threads=1", "quantize.enabled=false", "model.name=mlp", "model.hidden=32", "train.batch_size=8"]
BATCHED = ["run.client_batching=auto", "run.client_batch_size=4"]  # chunks of 4 and 2: chunking is exercised


def _model(result):
    from fed8._io import load_tensors

    return load_tensors(result.run_dir / "model.safetensors")


def _w0(sets=BASE):
    from fed8.stages.federation import load_federation

    return load_federation(fed8.load_config(None, sets)).model.state_dict()


def _close(a, b, rel, sets=BASE):
    """``||a - b|| <= rel * ||b - w0||``: the two runs' models differ by at most ``rel`` of what training moved."""
    w0 = _w0(sets)
    num = sum(float((a[k] - b[k]).norm() ** 2) for k in a) ** 0.5
    den = sum(float((b[k] - w0[k]).norm() ** 2) for k in b) ** 0.5
    return num <= rel * den


def test_a_batched_run_is_deterministic_resumes_bit_identically_and_is_close_to_sequential(tmp_path):
    cfg = fed8.load_config(None, BASE + BATCHED + ["train.rounds=3"])
    a = fed8.run(cfg, out=tmp_path / "a", report=False)
    b = fed8.run(cfg, out=tmp_path / "b", report=False)
    assert (a.run_dir / "model.safetensors").read_bytes() == (b.run_dir / "model.safetensors").read_bytes()
    fed8.run(cfg.replace(["train.rounds=2"]), out=tmp_path / "c", report=False)
    c = fed8.run(resume=tmp_path / "c", overrides=["train.rounds=3"], report=False)
    assert (c.run_dir / "model.safetensors").read_bytes() == (a.run_dir / "model.safetensors").read_bytes()
    seq = fed8.run(cfg.replace(["run.client_batching=off"]), out=tmp_path / "s", report=False)
    assert _close(_model(a), _model(seq), 1e-4)


def test_batching_falls_back_for_batchnorm_and_says_why_once(tmp_path, caplog):
    sets = BASE + BATCHED + ["model.name=resnet20", "model.norm=batch", "data.subset=60", "train.rounds=1"]
    with caplog.at_level(logging.INFO, logger="fed8"):
        a = fed8.run(fed8.load_config(None, sets), out=tmp_path / "a", report=False)
    assert sum("client batching is off for this model" in r.message for r in caplog.records) == 1
    b = fed8.run(fed8.load_config(None, sets + ["run.client_batching=off"]), out=tmp_path / "b", report=False)
    assert (a.run_dir / "model.safetensors").read_bytes() == (b.run_dir / "model.safetensors").read_bytes()


@pytest.mark.parametrize("sets, rel", [
    pytest.param(["compression.uplink=int8", "compression.downlink=int8"], 1e-4, id="int8-codecs"),
    # top-k: a coordinate near the k-th largest can be picked in one mode and not the other (measured 1.2%)
    pytest.param(["compression.uplink=topk", "compression.error_feedback=true"], 0.05, id="error-feedback"),
    pytest.param(["server.robust=trimmed_mean"], 1e-4, id="robust"),
    pytest.param(["privacy.dp=central", "privacy.noise_multiplier=0.3", "privacy.weighting=uniform",
                  "privacy.insecure_reproducible_noise=true"], 1e-4, id="central-dp"),
    # secure aggregation's stochastic rounding to int8 codes flips a few codes (measured 2.7e-4)
    pytest.param(["privacy.secure_aggregation=true"], 1e-2, id="secure-aggregation"),
])
def test_features_work_unchanged_on_batched_training(tmp_path, sets, rel):
    """The same run batched and sequential: the models agree up to rounding (and what rounding flips)."""
    bat = fed8.run(fed8.load_config(None, BASE + BATCHED + sets), out=tmp_path / "b", report=False)
    seq = fed8.run(fed8.load_config(None, BASE + sets), out=tmp_path / "s", report=False)
    assert _close(_model(bat), _model(seq), rel)
    assert [r["uplink_bytes"] for r in bat.metrics] == [r["uplink_bytes"] for r in seq.metrics]


def test_batching_slower_flags_overlapping_convolutions_on_the_cpu_only():
    from fed8.federated.batched import batching_slower
    from fed8.models import build_model

    def model(name):
        return build_model(name, in_channels=1, height=28, width=28, num_classes=10, seed=0)

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert "grouped convolution" in batching_slower(model("cnn"), cpu)
    assert batching_slower(model("cnn"), cuda) is None  # nothing measured on a GPU: not ruled out
    assert batching_slower(model("mlp"), cpu) is None
    assert batching_slower(model("vit_tiny"), cpu) is None  # its patch embedding does not overlap (kernel = stride)


def test_auto_trains_a_cnn_one_by_one_on_the_cpu_and_on_batches_it(tmp_path, caplog, monkeypatch):
    import fed8.federated.batched as batched

    sets = BASE + ["model.name=cnn", "data.subset=60", "data.num_clients=4", "train.rounds=1", "run.client_batch_size=2"]
    calls = []
    real = batched.train_clients_batched
    monkeypatch.setattr(batched, "train_clients_batched", lambda *a, **k: calls.append(1) or real(*a, **k))
    with caplog.at_level(logging.INFO, logger="fed8"):
        auto = fed8.run(fed8.load_config(None, sets + ["run.client_batching=auto"]), out=tmp_path / "a", report=False)
    assert calls == [] and sum("client batching is off for this model: on the CPU" in r.message
                               for r in caplog.records) == 1
    off = fed8.run(fed8.load_config(None, sets + ["run.client_batching=off"]), out=tmp_path / "o", report=False)
    assert (auto.run_dir / "model.safetensors").read_bytes() == (off.run_dir / "model.safetensors").read_bytes()
    on = fed8.run(fed8.load_config(None, sets + ["run.client_batching=on"]), out=tmp_path / "b", report=False)
    assert len(calls) == 2  # 4 clients in chunks of 2
    assert _close(_model(on), _model(off), 1e-4, sets)


@pytest.mark.parametrize("batched", [False, True], ids=["sequential", "batched"])
def test_a_parameter_the_forward_does_not_use_is_left_as_sgd_leaves_it(batched):
    """torch.optim.SGD skips a parameter without a gradient (no weight decay, no momentum, no FedProx term); the
    batched clients, whose torch.func gradients are zero there, leave it too."""
    from torch import nn

    class WithAux(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.aux = nn.Linear(784, 10), nn.Linear(5, 5)

        def forward(self, x):
            return self.fc(x.flatten(1))

    torch.manual_seed(0)
    model = WithAux().double()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    data = _clients([9, 4], dtype=torch.float64)
    local = LocalTraining(epochs=2, batch_size=4, lr=0.1, momentum=0.9, weight_decay=1e-2, prox_mu=0.1)
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    if batched:
        ups = train_clients_batched(model, state, data, local, clients=[0, 1], generators=gens)
    else:
        ups = [train_client(model, state, d, local, generator=g, client=i) for i, (d, g) in enumerate(zip(data, gens))]
    for u in ups:
        assert float(u.delta["aux.weight"].abs().max()) == 0 and float(u.delta["fc.weight"].abs().max()) > 0
