"""FedNova (server.fednova): a_i against torch's own SGD, the aggregate against the paper's formula, runs, refusals."""

import pytest
import torch

import fed8
from fed8.errors import ConfigError
from fed8.federated import ClientUpdate, LocalTraining, WeightedMean
from fed8.federated.aggregator import samples_weight
from fed8.federated.fednova import FedNovaAggregate, client_reach, steps_reach
from fed8.federated.scaffold import effective_steps

from conftest import interrupted_run

BASE = ["data.subset=600", "data.num_clients=6", "train.fraction=0.5", "train.rounds=3", "run.threads=1",
        "quantize.enabled=false", "model.name=mlp", "model.hidden=32", "data.partition=dirichlet", "data.alpha=0.3",
        "train.local_epochs=2", "server.fednova=true"]


def _torch_reach(steps, *, lr, momentum, prox_mu, weight_decay):
    """-x_K / lr after torch.optim.SGD's K steps on f(x) = x + prox_mu x^2 / 2 from x = 0 (FedProx's term toward the
    global x = 0), with torch's own momentum and weight decay: the displacement per unit of a constant gradient."""
    x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([x], lr=lr, momentum=momentum, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad()
        (x.sum() + prox_mu / 2 * (x * x).sum()).backward()
        opt.step()
    return -x.item() / lr


@pytest.mark.parametrize("momentum,prox_mu,weight_decay", [(0.0, 0.0, 0.0), (0.9, 0.0, 0.0), (0.0, 0.1, 0.0),
                                                          (0.9, 0.05, 1e-3), (0.5, 0.0, 0.01)])
def test_reach_is_the_displacement_of_torch_sgd_per_unit_gradient(momentum, prox_mu, weight_decay):
    for steps in (1, 2, 7, 40):
        a = steps_reach(steps, lr=0.05, momentum=momentum, prox_mu=prox_mu, weight_decay=weight_decay)
        assert a == pytest.approx(_torch_reach(steps, lr=0.05, momentum=momentum, prox_mu=prox_mu,
                                               weight_decay=weight_decay), rel=1e-12)
    # the paper's closed forms (Wang et al. 2020, Section 4)
    assert steps_reach(13, lr=0.05) == 13
    assert steps_reach(13, lr=0.05, momentum=0.9) == effective_steps(13, 0.9)
    assert steps_reach(13, lr=0.05, prox_mu=0.1) == pytest.approx((1 - (1 - 0.05 * 0.1) ** 13) / (0.05 * 0.1), rel=1e-12)
    assert steps_reach(0, lr=0.05, momentum=0.9) == 0.0
    # K_i = epochs * ceil(n_i / B)
    assert client_reach(65, LocalTraining(epochs=2, batch_size=32, lr=0.05)) == 6


def test_aggregate_is_the_papers_normalized_average():
    local = LocalTraining(epochs=2, batch_size=10, lr=0.1, momentum=0.9, prox_mu=0.01)
    g = torch.Generator().manual_seed(0)
    sizes = [7, 30, 95]  # 1, 3 and 10 steps an epoch
    updates = [ClientUpdate(k, {"w": torch.randn(4, generator=g), "bn.running_mean": torch.randn(2, generator=g)}, n, 0.0)
               for k, n in enumerate(sizes)]
    agg = FedNovaAggregate(WeightedMean(samples_weight), keys=["w"], local=local, weight=samples_weight)
    agg.begin(1, [0, 1, 2])
    for u in updates:
        agg.add(u)
    out = agg.result({})
    n = sum(sizes)
    a = [steps_reach(2 * -(-s // 10), lr=0.1, momentum=0.9, prox_mu=0.01) for s in sizes]
    tau = sum(s / n * ai for s, ai in zip(sizes, a))
    ref = tau * sum(s / n * u.delta["w"] / ai for s, u, ai in zip(sizes, updates, a))
    torch.testing.assert_close(out["w"], ref, rtol=1e-6, atol=1e-7)
    fedavg = sum(s / n * u.delta["w"] for s, u in zip(sizes, updates))
    assert not torch.allclose(out["w"], fedavg, rtol=1e-3)  # the normalization changes the answer
    torch.testing.assert_close(out["bn.running_mean"], sum(s / n * u.delta["bn.running_mean"]
                                                            for s, u in zip(sizes, updates)))  # buffers: plain mean
    assert agg.metrics()["fednova_tau_eff"] == pytest.approx(tau, abs=1e-4)


def test_a_run_normalizes_and_equals_fedavg_when_every_client_takes_the_same_steps(tmp_path):
    iid = ["data.partition=iid", "data.subset=500"]  # 400 train images: 6 clients of 66-67, 3 steps an epoch each
    same = fed8.run(fed8.load_config(None, BASE + iid), out=tmp_path / "nova-iid", report=False)
    plain = fed8.run(fed8.load_config(None, BASE + iid + ["server.fednova=false"]), out=tmp_path / "avg-iid",
                     report=False)
    assert [r["eval_accuracy"] for r in same.metrics] == pytest.approx([r["eval_accuracy"] for r in plain.metrics],
                                                                        abs=1e-3)
    assert all(r["fednova_tau_eff"] == pytest.approx(steps_reach(6, lr=0.05, momentum=0.9), abs=1e-4)
               for r in same.metrics)
    nova = fed8.run(fed8.load_config(None, BASE), out=tmp_path / "nova", report=False)
    avg = fed8.run(fed8.load_config(None, BASE + ["server.fednova=false"]), out=tmp_path / "avg", report=False)
    assert (tmp_path / "nova/model.safetensors").read_bytes() != (tmp_path / "avg/model.safetensors").read_bytes()
    assert [r["uplink_bytes"] for r in nova.metrics] == [r["uplink_bytes"] for r in avg.metrics]  # clients unchanged
    assert len({r["fednova_tau_eff"] for r in nova.metrics}) > 1  # non-IID sizes: tau_eff follows the sample


def test_kill_and_resume_is_bit_identical(tmp_path):
    cfg = fed8.load_config(None, BASE + ["train.rounds=4", "server.strategy=fedyogi"])
    fed8.run(cfg, out=tmp_path / "full", report=False)
    interrupted_run(cfg, tmp_path / "cut", 2)
    fed8.run(resume=tmp_path / "cut", report=False)
    assert (tmp_path / "cut/model.safetensors").read_bytes() == (tmp_path / "full/model.safetensors").read_bytes()


@pytest.mark.parametrize("sets,match", [
    (["privacy.dp=central", "privacy.noise_multiplier=1.0"], "fednova = true cannot run with privacy.dp"),
    (["privacy.secure_aggregation=true"], "cannot run with privacy.secure_aggregation"),
    (["server.robust=median"], "no weights to normalize"),
])
def test_refused_where_the_server_cannot_normalize(tmp_path, sets, match):
    with pytest.raises(ConfigError, match=match):
        fed8.run(fed8.load_config(None, BASE + sets), out=tmp_path / "r", report=False)
    assert not (tmp_path / "r").exists()


def test_one_step_clients_keep_the_one_pass_path_and_fedavgs_bytes(tmp_path, caplog):
    import logging

    one = BASE + ["train.local_epochs=1", "train.batch_size=512", "run.client_batching=auto"]  # a_i = 1 for all
    with caplog.at_level(logging.INFO, logger="fed8"):
        fed8.run(fed8.load_config(None, one), out=tmp_path / "nova", report=False)
    assert "train as one pass" in caplog.text  # the cohort path was not given up for FedNova
    fed8.run(fed8.load_config(None, one + ["server.fednova=false"]), out=tmp_path / "avg", report=False)
    assert (tmp_path / "nova/model.safetensors").read_bytes() == (tmp_path / "avg/model.safetensors").read_bytes()
