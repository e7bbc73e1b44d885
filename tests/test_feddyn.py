"""FedDyn (train.feddyn_alpha): against a hand-written Algorithm 1, resume, bytes, parallel clients and refusals."""

import copy

import pytest
import torch
import torch.nn.functional as F

import fed8
from fed8._rng import TRAIN, torch_generator
from fed8.errors import ConfigError
from fed8.federated.feddyn import FedDynAggregate, next_gradient
from fed8.federated.secure import MaskedInput
from fed8.stages.federation import prepare

from conftest import assert_run_matches_reference, interrupted_run

ALPHA = 0.05
# 6 clients of unequal size (Dirichlet), 3 sampled per round: partial participation, h moves by alpha / N.
BASE = ["data.subset=600", "data.num_clients=6", "train.fraction=0.5", "train.rounds=3", "run.threads=1",
        "quantize.enabled=false", "model.name=mlp", "model.hidden=32", "data.partition=dirichlet", "data.alpha=0.3",
        f"train.feddyn_alpha={ALPHA}"]


def _reference(prep, rounds: int) -> dict:
    """Algorithm 1 of Acar et al. 2021 written out: each client minimizes L_k(theta) - <g_k, theta> + alpha/2 ||theta -
    x||^2 by the run's local SGD (same data, sample, shuffles, optimizer), keeps g_k <- g_k - alpha (theta_k - x); the
    server keeps h <- h - alpha / N sum (theta_k - x) and sets x <- weighted mean of theta_k - h / alpha."""
    sim, cfg = prep.simulation, prep.config
    t = cfg.train
    model = copy.deepcopy(sim.model)
    x = {k: v.clone() for k, v in prep.state.items()}
    names = [k for k, _ in model.named_parameters()]
    h = {k: torch.zeros_like(x[k]) for k in names}
    g = [{k: torch.zeros_like(x[k]) for k in names} for _ in sim.clients]
    for rnd in range(1, rounds + 1):
        ys, ns = [], []
        for k in sim.sample(rnd):
            data = sim.clients[k]
            model.load_state_dict(x)
            params = dict(model.named_parameters())
            opt = torch.optim.SGD(params.values(), lr=t.lr, momentum=t.momentum)
            gen = torch_generator(cfg.run.seed, TRAIN, rnd, k)
            for _ in range(t.local_epochs):
                perm = torch.randperm(data.num_train, generator=gen)
                for i in range(0, data.num_train, t.batch_size):
                    idx = perm[i:i + t.batch_size]
                    loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
                    opt.zero_grad()
                    loss.backward()
                    with torch.no_grad():
                        for n, p in params.items():
                            p.grad += ALPHA * (p - x[n]) - g[k][n]
                    opt.step()
            y = {n: p.detach().clone() for n, p in params.items()}
            g[k] = {n: g[k][n] - ALPHA * (y[n] - x[n]) for n in names}
            h = {n: h[n] - ALPHA / len(sim.clients) * (y[n] - x[n]) for n in names}
            ys.append(y)
            ns.append(data.num_train)
        total = sum(ns)
        x = {n: sum(w / total * y[n] for w, y in zip(ns, ys)) - h[n] / ALPHA for n in x}
    return {"x": x, "h": h, "clients": g}


@pytest.mark.parametrize("local", [["train.local_epochs=2", "train.batch_size=32"],  # momentum 0.9, ragged batches
                                   ["train.local_epochs=2", "train.batch_size=32", "train.momentum=0"]])  # the paper's
def test_the_run_is_algorithm_1_of_the_paper(local):
    assert_run_matches_reference(fed8.load_config(None, BASE + local), _reference, "h")


def test_feddyn_changes_the_model_uploads_the_update_alone_and_sends_nothing_extra(tmp_path):
    off = fed8.run(fed8.load_config(None, BASE[:-1]), out=tmp_path / "off", report=False)
    on = fed8.run(fed8.load_config(None, BASE), out=tmp_path / "on", report=False)
    assert (on.run_dir / "model.safetensors").read_bytes() != (off.run_dir / "model.safetensors").read_bytes()
    assert [r["uplink_bytes"] for r in on.metrics] == [r["uplink_bytes"] for r in off.metrics]
    assert [r["downlink_bytes"] for r in on.metrics] == [r["downlink_bytes"] for r in off.metrics]
    assert on.metrics[-1]["feddyn_h_norm"] > 0 and (on.run_dir / "controls").is_dir()
    d = {"w": torch.tensor([0.5, -1.0])}
    assert torch.equal(next_gradient(None, d, ["w"], alpha=0.1)["w"], torch.tensor([-0.05, 0.1]))
    assert next_gradient(None, {"w": torch.tensor([float("inf"), 0.0])}, ["w"], alpha=0.1) is None


def test_resume_is_bit_identical_and_parallel_clients_keep_their_own_state(tmp_path):
    cfg = fed8.load_config(None, BASE + ["train.rounds=4"])
    whole = fed8.run(cfg, out=tmp_path / "whole", report=False)
    interrupted_run(cfg, tmp_path / "cut", 2)
    fed8.run(resume=tmp_path / "cut", report=False)
    want = (whole.run_dir / "model.safetensors").read_bytes()
    assert (tmp_path / "cut" / "model.safetensors").read_bytes() == want
    two = fed8.run(fed8.load_config(None, BASE + ["train.rounds=4", "run.threads=2", "run.parallel_clients=2",
                                                  "run.client_batching=on"]), out=tmp_path / "two", report=False)
    assert (two.run_dir / "model.safetensors").read_bytes() == want  # one torch thread per client, never batched


@pytest.mark.parametrize("sets, match", [
    (["privacy.dp=central", "privacy.noise_multiplier=1.0"], "privacy.dp = 'central'"),
    (["privacy.secure_aggregation=true", "privacy.secagg_min_clients=2"], "needs privacy.weighting = 'uniform'"),
    (["privacy.secure_aggregation=true", "privacy.weighting=uniform", "privacy.dp=central",
      "privacy.noise_multiplier=1.0"], "privacy.dp = 'central'"),
    (["server.robust=trimmed_mean"], "server.robust = 'trimmed_mean'"),
    (["train.prox_mu=0.01"], "cannot be combined with train.prox_mu"),
    (["train.scaffold=true"], "cannot be combined with train.scaffold"),
    (["server.fednova=true"], "cannot be combined with server.fednova"),
])
def test_combinations_are_refused(sets, match):
    with pytest.raises(ConfigError, match=match):
        prepare(fed8.load_config(None, BASE + sets))


def test_torchrun_is_refused_before_any_rank_trains(tmp_path):
    from fed8.stages.distributed import run_distributed

    with pytest.raises(ConfigError, match="feddyn_alpha = 0.05 is not supported under torchrun"):
        run_distributed(fed8.load_config(None, BASE), out=tmp_path / "r", report=False)


class _SumOnly:
    """A stand-in for the secure sum: it takes masked inputs and releases a mean and its number of inputs."""

    def __init__(self, mean):
        self.mean, self.inputs = mean, 0

    def begin(self, rnd, clients=()):
        self.inputs = 0

    def add(self, update):
        assert isinstance(update, MaskedInput)
        self.inputs += 1

    def result(self, params):
        return dict(self.mean)

    def metrics(self):
        return {"secagg_inputs": self.inputs}


def test_under_secure_aggregation_h_comes_from_the_released_sum_alone():
    mean = {"w": torch.tensor([0.5, -1.0]), "bn.running_mean": torch.tensor([3.0])}
    agg = FedDynAggregate(_SumOnly(mean), keys=["w"], num_clients=10, alpha=0.1, from_sum=True)
    for rnd in (1, 2):
        agg.begin(rnd, [0, 1, 2])
        for k in range(3):  # what the server holds under secure aggregation: masked bytes, no update to read
            agg.add(MaskedInput(client=k, payload=b"masked", num_samples=0, train_loss=None))
        out = agg.result({})
    h = -0.1 / 10 * 2 * 3 * mean["w"]  # two rounds of h <- h - alpha / N * (3 inputs x the mean)
    torch.testing.assert_close(agg.h["w"], h)
    torch.testing.assert_close(out["w"], mean["w"] - h / 0.1)
    torch.testing.assert_close(out["bn.running_mean"], mean["bn.running_mean"])  # buffers carry no h


def test_secure_aggregation_runs_feddyn_close_to_the_plain_sum():
    """With a fixed clip above the updates' norms, the secure sum differs from the plain one by its ring rounding (int8
    codes on a grid set by the clip norm), and the trajectories that rounding sends apart: measured 7% on h here, 51%
    where the clip cut most updates (1.0)."""
    plain = prepare(fed8.load_config(None, BASE + ["privacy.weighting=uniform"]))
    plain_state = plain.simulation.run(plain.state)
    sa = prepare(fed8.load_config(None, BASE + [
        "privacy.weighting=uniform", "privacy.secagg_min_clients=2", "privacy.secure_aggregation=true",
        "privacy.secagg_adaptive_clip=false", "privacy.clip_norm=5"]))
    sa_state = sa.simulation.run(sa.state)

    def gap(a, b, keys):
        diff = sum(float((a[k] - b[k]).double().square().sum()) for k in keys) ** 0.5
        return diff / sum(float(b[k].double().square().sum()) for k in keys) ** 0.5

    h_plain, h_sa = plain.simulation.transport.scaffold.h, sa.simulation.transport.scaffold.h
    assert gap(h_sa, h_plain, h_plain) < 0.15  # h moved by the sums: a third of them, or none, is 0.67 or 1.0 off
    assert gap(sa_state, plain_state, h_plain) < 0.05
