import math

import pytest
import torch

from conftest import server_round
from fed8.errors import CheckpointError, ConfigError, EmptyRoundError
from fed8.federated import (ClientData, ClientUpdate, FedAdam, FedAvg, FedAvgM, LocalTraining, WeightedMean,
                            WeightedSum, make_optimizer, sample_clients, train_client)
from fed8.federated.optimizer import FedAdagrad, FedYogi
from fed8.federated.evaluate import client_accuracy_stats

G = {"w": torch.tensor([1.0, 2.0]), "bn.running_mean": torch.tensor([0.0])}


def updates():
    # client 0: n=1, w=[3, 2]; client 1: n=3, w=[1, 6]
    return [
        ClientUpdate(0, {"w": torch.tensor([2.0, 0.0]), "bn.running_mean": torch.tensor([4.0])}, 1, 0.0),
        ClientUpdate(1, {"w": torch.tensor([0.0, 4.0]), "bn.running_mean": torch.tensor([0.0])}, 3, 0.0),
    ]


def run_round(optimizer, state=G, optimizer_state=None):
    """FedAvg's weighted mean, then ``optimizer``: (new model, new server state)."""
    return server_round(WeightedMean(), updates(), state, optimizer, optimizer_state)


def test_fedavg_known_answer():
    # w = 1/4 * [3, 2] + 3/4 * [1, 6] = [1.5, 5.0]; buffer: 1/4 * 4 = 1.0
    new, _ = run_round(FedAvg(buffers=["bn.running_mean"]))
    assert new["w"].tolist() == [1.5, 5.0]
    assert new["bn.running_mean"].tolist() == [1.0]
    half, _ = run_round(FedAvg(lr=0.5))
    assert half["w"].tolist() == [1.25, 3.5]


def test_weighted_sum_is_streaming_and_checks_keys():
    s = WeightedSum()
    s.add({"a": torch.tensor([1.0])}, 2.0)
    s.add({"a": torch.tensor([4.0])}, 1.0)
    assert s.mean()["a"].tolist() == [2.0]
    with pytest.raises(ValueError, match="expected the model's keys"):
        s.add({"b": torch.tensor([1.0])}, 1.0)
    with pytest.raises(EmptyRoundError, match="no updates"):
        WeightedSum().mean()


def test_fedavgm_known_answer():
    s = FedAvgM(lr=1.0, momentum=0.5, buffers=["bn.running_mean"])
    w1, st1 = run_round(s)
    assert w1["w"].tolist() == [1.5, 5.0] and st1["v.w"].tolist() == [0.5, 3.0]  # v = Delta
    w2, st2 = run_round(s, w1, st1)  # v = 0.5 * [0.5, 3] + [0.5, 3] = [0.75, 4.5]
    assert w2["w"].tolist() == [2.25, 9.5]
    assert w2["bn.running_mean"].tolist() == [2.0]  # buffers: plain average, no momentum
    assert st1["v.w"].tolist() == [0.5, 3.0]  # the step returns a new state; the old one is untouched
    assert set(st2) == {"v.w"} and s.check_state({**st2, "privacy.clip_norm": torch.tensor(1.0)}) == st2
    with pytest.raises(CheckpointError, match="another server.strategy"):
        FedAvg().check_state(st2)


def test_fedadam_known_answer():
    b1, b2, tau, lr = 0.9, 0.99, 1e-3, 0.1
    s = FedAdam(lr=lr, beta1=b1, beta2=b2, tau=tau, buffers=["bn.running_mean"])
    new, state = run_round(s)
    for i, d in enumerate([0.5, 3.0]):
        m = (1 - b1) * d
        v = b2 * tau**2 + (1 - b2) * d * d
        assert new["w"][i].item() == pytest.approx([1.0, 2.0][i] + lr * m / (math.sqrt(v) + tau), rel=1e-6)
    assert new["bn.running_mean"].tolist() == [1.0]
    assert set(state) == {"m.w", "v.w"}


def _second_moment(name, v, d, b2):
    """Reddi et al. 2021, Algorithm 2, written out per coordinate."""
    if name == "fedadagrad":
        return v + d * d
    if name == "fedadam":
        return b2 * v + (1 - b2) * d * d
    return v - (1 - b2) * d * d * math.copysign(1.0, v - d * d) if v != d * d else v  # fedyogi


@pytest.mark.parametrize("name", ["fedadagrad", "fedadam", "fedyogi"])
def test_adaptive_optimizers_follow_the_paper_over_rounds(name):
    """Three rounds whose Delta^2 first exceeds v, then falls below it (both branches of Yogi's sign)."""
    b1, b2, tau, lr = 0.9, 0.99, 1e-3, 0.1
    s = make_optimizer(name, lr=lr, beta1=b1, beta2=b2, tau=tau, buffers=["bn.running_mean"])
    deltas = [[0.5, -3.0], [0.01, 2.0], [-0.02, 0.001]]
    w, state = {"w": torch.tensor([1.0, 2.0], dtype=torch.float64), "bn.running_mean": torch.zeros(1, dtype=torch.float64)}, {}
    ref_w, m, v = [1.0, 2.0], [0.0, 0.0], [tau**2, tau**2]
    for d in deltas:
        w, state = s.apply(state, w, {"w": torch.tensor(d, dtype=torch.float64),
                                      "bn.running_mean": torch.tensor([1.0], dtype=torch.float64)})
        for i in range(2):
            m[i] = b1 * m[i] + (1 - b1) * d[i]
            v[i] = _second_moment(name, v[i], d[i], b2)
            ref_w[i] += lr * m[i] / (math.sqrt(v[i]) + tau)
        assert w["w"].tolist() == pytest.approx(ref_w, rel=1e-12)
        assert state["v.w"].tolist() == pytest.approx(v, rel=1e-12)
    assert w["bn.running_mean"].tolist() == [3.0]  # statistics: plain averaging, no optimizer
    others = [n for n in ("fedadagrad", "fedadam", "fedyogi") if n != name]  # the three really differ here
    for other in others:
        o, ost = make_optimizer(other, lr=lr, beta1=b1, beta2=b2, tau=tau), {}
        ow = {"w": torch.tensor([1.0, 2.0], dtype=torch.float64)}
        for d in deltas:
            ow, ost = o.apply(ost, ow, {"w": torch.tensor(d, dtype=torch.float64)})
        assert not torch.allclose(ow["w"], w["w"], rtol=1e-6)


def test_make_optimizer():
    assert isinstance(make_optimizer("fedadam", lr=0.01), FedAdam)
    assert isinstance(make_optimizer("fedyogi", lr=0.01), FedYogi)
    assert isinstance(make_optimizer("fedadagrad", lr=0.01), FedAdagrad)
    assert isinstance(make_optimizer("fedavgm", lr=1.0), FedAvgM)
    with pytest.raises(ConfigError, match="server.strategy"):
        make_optimizer("x", lr=1.0)


def test_sampling_seeded():
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    a = sample_clients(100, 0.1, generator=g(1))
    assert len(a) == 10 and a == sorted(set(a)) and a == sample_clients(100, 0.1, generator=g(1))
    assert a != sample_clients(100, 0.1, generator=g(2))
    assert sample_clients(5, 1.0, generator=g(1)) == [0, 1, 2, 3, 4]
    assert len(sample_clients(5, 0.01, generator=g(1))) == 1


def _client():
    torch.manual_seed(0)
    x = torch.randn(40, 4)
    y = (x[:, 0] > 0).long()
    return ClientData(x, y, x[:8], y[:8])


def test_client_delta_determinism_and_prox():
    model = torch.nn.Linear(4, 2)
    g0 = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = LocalTraining(epochs=3, batch_size=8, lr=0.5, momentum=0.0)
    run = lambda c, s: train_client(model, g0, _client(), c, generator=torch.Generator().manual_seed(s))  # noqa
    u1, u2, u3 = run(cfg, 1), run(cfg, 1), run(cfg, 2)
    assert u1.num_samples == 40 and u1.train_loss > 0
    assert all(torch.equal(u1.delta[k], u2.delta[k]) for k in g0)
    assert not torch.equal(u1.delta["weight"], u3.delta["weight"])
    # delta is w_local - w_global: the working model ends at g0 + delta
    assert torch.allclose(model.state_dict()["weight"], g0["weight"] + u3.delta["weight"])
    prox = run(LocalTraining(epochs=3, batch_size=8, lr=0.5, momentum=0.0, prox_mu=1.0), 1)
    assert prox.delta["weight"].norm() < 0.8 * u1.delta["weight"].norm()


def _sgd_step_by_step(model, g0, data, cfg, seed):
    """The update as the general loop computes it: ``torch.optim.SGD`` steps, then ``w_local - w_global``."""
    model.load_state_dict(g0)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    idx = torch.randperm(data.num_train, generator=torch.Generator().manual_seed(seed))
    loss = torch.nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return {k: v - g0[k] for k, v in model.state_dict().items() if v.is_floating_point()}, float(loss.detach())


@pytest.mark.parametrize("name", ["cnn", "resnet20"])  # resnet20 with BatchNorm: its running statistics move too
def test_a_one_step_client_gets_the_sgd_step_as_its_update(name):
    from fed8.models import build_model

    model = build_model(name, in_channels=1, height=16, width=16, num_classes=10, seed=0).double()
    model.fc.weight.requires_grad_(False) if name == "resnet20" else model.fc1.weight.requires_grad_(False)
    g0 = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    data = ClientData(torch.randn(6, 1, 16, 16, generator=g).double(), torch.randint(0, 10, (6,), generator=g),
                      torch.zeros(0), torch.zeros(0))
    cfg = LocalTraining(epochs=1, batch_size=8, lr=0.1, momentum=0.9, weight_decay=1e-2, prox_mu=0.5)
    kept = {k: v.clone() for k, v in g0.items()}
    u = train_client(model, g0, data, cfg, generator=torch.Generator().manual_seed(3))
    # the pass read the global tensors in place, and gave the model its own tensors back, untouched
    assert all(torch.equal(g0[k], kept[k]) for k in g0)
    assert not {p.data_ptr() for p in model.parameters()} & {v.data_ptr() for v in g0.values()}
    with pytest.raises(IndexError, match="out of bounds"):  # and so on an error in the pass: a label >= classes
        train_client(model, g0, ClientData(data.x_train, data.y_train + 10, data.x_test, data.y_test), cfg,
                     generator=torch.Generator().manual_seed(3))
    assert not {p.data_ptr() for p in model.parameters()} & {v.data_ptr() for v in g0.values()}
    want, loss = _sgd_step_by_step(model, g0, data, cfg, seed=3)
    assert u.delta.keys() == want.keys() and u.train_loss == pytest.approx(loss, rel=1e-12)
    frozen = "fc.weight" if name == "resnet20" else "fc1.weight"
    assert not u.delta[frozen].any()
    if name == "resnet20":
        assert all(u.delta[k].abs().max() > 0 for k in want if k.endswith("running_mean"))
    for k in want:  # momentum and the FedProx term are zero at a first step; weight decay is not
        assert torch.allclose(u.delta[k], want[k], rtol=0, atol=1e-12 * (1 + float(want[k].abs().max()))), k
    # computed as -lr (grad + wd w): one rounding, where stepping and subtracting round twice
    model.load_state_dict(g0)
    idx = torch.randperm(6, generator=torch.Generator().manual_seed(3))
    loss = torch.nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
    conv = "conv1.weight" if name == "cnn" else "conv.weight"
    (grad,) = torch.autograd.grad(loss, [dict(model.named_parameters())[conv]])
    assert torch.equal(u.delta[conv], grad.add(g0[conv], alpha=cfg.weight_decay).mul(-cfg.lr))


def test_client_accuracy_stats():
    correct = torch.tensor([1, 1, 0, 1, 0, 0], dtype=torch.bool)
    owner = torch.tensor([0, 0, 1, 1, 2, 2])
    s = client_accuracy_stats(correct, owner, 4)  # client 3 has no test data: skipped
    assert s["client_accuracy_mean"] == pytest.approx(0.5)
    assert s["client_accuracy_min"] == 0.0
    assert s["client_accuracy_p10"] == pytest.approx(0.1)  # percentile of [1, .5, 0]
