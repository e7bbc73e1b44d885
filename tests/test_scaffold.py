"""SCAFFOLD (train.scaffold): against a hand-written Algorithm 1, its invariant, resume, bytes and refusals."""

import copy

import pytest
import torch
import torch.nn.functional as F

import fed8
from fed8._io import load_tensors
from fed8._rng import TRAIN, torch_generator
from fed8.errors import ConfigError
from fed8.federated.scaffold import control_correction, effective_steps, local_steps, next_control
from fed8.federated.schedule import client_epochs
from fed8.stages.federation import prepare

from conftest import assert_run_matches_reference, interrupted_run

# 6 clients, 3 sampled per round: partial participation, so c moves by |S| / N of the mean change.
BASE = ["data.subset=600", "data.num_clients=6", "train.fraction=0.5", "train.rounds=3", "run.threads=1",
        "quantize.enabled=false", "model.name=mlp", "model.hidden=32", "data.partition=shards",
        "data.shards_per_client=2", "train.scaffold=true"]


def _reference(prep, rounds: int) -> dict:
    """Algorithm 1 of Karimireddy et al. 2020 (option II) written out: clients upload y_i - x and c_i+ - c_i; the
    server averages the first by sample count and moves c by (1 / N) sum of the second. Same data, sample,
    shuffles and optimizer as the run. Under momentum beta, option II divides by the displacement per unit gradient
    of the client's K heavy-ball steps, sum_t (1 - beta^t) / (1 - beta), summed here step by step."""
    sim, cfg = prep.simulation, prep.config
    t = cfg.train
    model = copy.deepcopy(sim.model)
    x = {k: v.clone() for k, v in prep.state.items()}
    names = [k for k, _ in model.named_parameters()]
    c = {k: torch.zeros_like(x[k]) for k in names}
    c_i = [{k: torch.zeros_like(x[k]) for k in names} for _ in sim.clients]
    for rnd in range(1, rounds + 1):
        sampled = sim.sample(rnd)
        ys, dcs, ns = [], [], []
        for k in sampled:
            data = sim.clients[k]
            model.load_state_dict(x)
            params = dict(model.named_parameters())
            opt = torch.optim.SGD(params.values(), lr=t.lr, momentum=t.momentum)
            g = torch_generator(cfg.run.seed, TRAIN, rnd, k)
            steps, reach, unit = 0, 0.0, 0.0  # reach: how far a unit gradient has moved the weights so far
            for _ in range(client_epochs(cfg.run.seed, rnd, k, low=t.local_epochs_min, high=t.local_epochs)):
                perm = torch.randperm(data.num_train, generator=g)
                for i in range(0, data.num_train, t.batch_size):
                    idx = perm[i:i + t.batch_size]
                    loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
                    opt.zero_grad()
                    loss.backward()
                    for n, p in params.items():
                        p.grad += c[n] - c_i[k][n]
                    opt.step()
                    steps += 1
                    unit = t.momentum * unit + 1.0  # the momentum buffer of a constant unit gradient
                    reach += unit
            y = {n: p.detach().clone() for n, p in params.items()}
            new = {n: c_i[k][n] - c[n] + (x[n] - y[n]) / (reach * t.lr) for n in names}
            dcs.append({n: new[n] - c_i[k][n] for n in names})
            c_i[k] = new
            ys.append(y)
            ns.append(data.num_train)
        total = sum(ns)
        x = {n: x[n] + sum(w / total * (y[n] - x[n]) for w, y in zip(ns, ys)) for n in x}
        c = {n: c[n] + sum(dc[n] for dc in dcs) / len(sim.clients) for n in names}
    return {"x": x, "c": c, "clients": c_i}


@pytest.mark.parametrize("local", [["train.local_epochs=2", "train.batch_size=32"],  # ragged last minibatches
                                   ["train.local_epochs=2", "train.batch_size=32", "train.momentum=0"],  # the paper's
                                   ["train.local_epochs=1", "train.batch_size=512"],  # one-step clients
                                   ["train.local_epochs=3", "train.local_epochs_min=1", "train.batch_size=32"]],
                         ids=["momentum", "plain-sgd", "one-step", "unequal-epochs"])  # K_i from each client's draw
def test_the_run_is_algorithm_1_of_the_paper(local):
    assert_run_matches_reference(fed8.load_config(None, BASE + local), _reference, "c", atol_state=1e-6)


def test_the_server_control_is_the_mean_of_the_client_controls():
    cfg = fed8.load_config(None, BASE + ["train.rounds=4"])
    prep = prepare(cfg)
    sim = prep.simulation
    sim.run(prep.state)
    c, store = sim.transport.scaffold.c, sim.transport.controls
    n = len(sim.clients)
    for k, v in c.items():
        mean = sum(store.get(i)[k] for i in range(n) if store.get(i) is not None) / n
        torch.testing.assert_close(v, mean, rtol=1e-4, atol=1e-7)
    assert any(float(v.abs().max()) > 0 for v in c.values())


def test_scaffold_changes_the_model_and_its_pieces_are_the_formulas():
    off = prepare(fed8.load_config(None, BASE[:-1]))
    on = prepare(fed8.load_config(None, BASE))
    a, b = off.simulation.run(off.state), on.simulation.run(on.state)
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert local_steps(0, 2, 32) == 0 and local_steps(33, 2, 32) == 4 and local_steps(32, 1, 32) == 1
    assert effective_steps(4, 0.0) == 4 and effective_steps(1, 0.9) == pytest.approx(1.0)
    assert effective_steps(3, 0.5) == pytest.approx(1 + 1.5 + 1.75)  # buffers 1, 1 + b, 1 + b + b^2
    assert control_correction({}, None) is None
    c, ci = {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([0.5, 0.5])}
    assert torch.equal(control_correction(c, ci)["w"], torch.tensor([0.5, 1.5]))
    assert torch.equal(control_correction({}, ci)["w"], torch.tensor([-0.5, -0.5]))
    d = {"w": torch.tensor([-0.2, 0.4])}
    torch.testing.assert_close(next_control(ci, c, d, ["w"], steps=2, lr=0.1)["w"],
                               ci["w"] - c["w"] - d["w"] / 0.2)
    assert next_control(ci, c, {"w": torch.tensor([float("nan"), 0.0])}, ["w"], steps=2, lr=0.1) is None
    assert next_control(ci, c, d, ["w"], steps=0, lr=0.1) is None


def test_the_control_travels_with_the_model_and_is_counted(tmp_path):
    off = fed8.run(fed8.load_config(None, BASE[:-1]), out=tmp_path / "off", report=False)
    on = fed8.run(fed8.load_config(None, BASE), out=tmp_path / "on", report=False)
    params = sum(v.numel() for k, v in load_tensors(on.run_dir / "model.safetensors").items())  # the mlp: no buffers
    m = 3  # clients per round
    assert on.metrics[0]["downlink_bytes"] == off.metrics[0]["downlink_bytes"]  # c = 0 is not sent
    extra = on.metrics[1]["downlink_bytes"] - off.metrics[1]["downlink_bytes"]
    assert extra % m == 0 and 4 * params <= extra // m <= 4 * params + 1024  # c as a float32 payload (its header)
    assert on.metrics[1]["uplink_bytes"] == off.metrics[1]["uplink_bytes"]  # clients upload delta alone
    assert on.metrics[-1]["scaffold_c_norm"] > 0 and "scaffold_c_norm" not in off.metrics[-1]


def test_resume_is_bit_identical_and_batching_falls_back(tmp_path):
    cfg = fed8.load_config(None, BASE)
    whole = fed8.run(cfg, out=tmp_path / "whole", report=False)
    interrupted_run(cfg, tmp_path / "cut", 1)
    fed8.run(resume=tmp_path / "cut", report=False)
    want = (whole.run_dir / "model.safetensors").read_bytes()
    assert (tmp_path / "cut" / "model.safetensors").read_bytes() == want
    on = fed8.run(fed8.load_config(None, BASE + ["run.client_batching=on"]), out=tmp_path / "on", report=False)
    assert (on.run_dir / "model.safetensors").read_bytes() == want  # each client its own correction: one by one


@pytest.mark.parametrize("sets, match", [
    (["privacy.dp=central", "privacy.noise_multiplier=1.0"], "privacy.dp = 'central'"),
    (["privacy.dp=local", "privacy.noise_multiplier=1.0"], "privacy.dp = 'local'"),
    (["privacy.secure_aggregation=true", "privacy.secagg_min_clients=2"], "secure_aggregation"),
    (["server.robust=median"], "server.robust = 'median'"),
])
def test_combinations_that_would_break_a_promise_are_refused(sets, match):
    with pytest.raises(ConfigError, match=match):
        prepare(fed8.load_config(None, BASE + sets))


def test_torchrun_is_refused_before_any_rank_trains(tmp_path):
    from fed8.stages.distributed import run_distributed

    with pytest.raises(ConfigError, match="not supported under torchrun"):
        run_distributed(fed8.load_config(None, BASE), out=tmp_path / "r", report=False)


def test_parallel_clients_keep_their_own_controls(tmp_path):
    one = fed8.run(fed8.load_config(None, BASE), out=tmp_path / "one", report=False)  # run.threads=1: one by one
    two = fed8.run(fed8.load_config(None, BASE + ["run.threads=2", "run.parallel_clients=2"]), out=tmp_path / "two",
                   report=False)  # two clients at a time, one torch thread each: the same arithmetic
    assert (two.run_dir / "model.safetensors").read_bytes() == (one.run_dir / "model.safetensors").read_bytes()
    for f in sorted((one.run_dir / "controls").iterdir()):
        assert (two.run_dir / "controls" / f.name).read_bytes() == f.read_bytes()
