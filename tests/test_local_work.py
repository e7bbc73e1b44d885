"""Unequal local work (train.local_epochs_min): the draw, every training path, the server's step counts, refusals."""

import pytest
import torch

import fed8
from fed8._rng import TRAIN, torch_generator
from fed8.errors import ConfigError, ParameterError
from fed8.federated import ClientUpdate, LocalTraining, WeightedMean, train_client
from fed8.federated.aggregator import samples_weight
from fed8.federated.batched import train_clients_batched
from fed8.federated.fednova import FedNovaAggregate, steps_reach
from fed8.federated.schedule import client_epochs
from fed8.stages.federation import prepare

from conftest import interrupted_run

BASE = ["data.subset=600", "data.num_clients=6", "train.fraction=0.5", "train.rounds=3", "run.threads=1",
        "quantize.enabled=false", "model.name=mlp", "model.hidden=32", "train.local_epochs=4",
        "train.local_epochs_min=1"]


def test_each_client_draws_its_epochs_from_the_seed_round_and_client():
    draws = [client_epochs(0, rnd, k, low=2, high=5) for rnd in range(1, 11) for k in range(20)]
    assert set(draws) == {2, 3, 4, 5}  # the whole range, both ends included, nothing outside
    assert draws == [client_epochs(0, rnd, k, low=2, high=5) for rnd in range(1, 11) for k in range(20)]
    assert draws != [client_epochs(1, rnd, k, low=2, high=5) for rnd in range(1, 11) for k in range(20)]
    assert [client_epochs(0, 1, k, low=2, high=5) for k in range(20)] != \
           [client_epochs(0, 2, k, low=2, high=5) for k in range(20)]  # drawn anew every round
    assert {client_epochs(0, 3, k, low=0, high=4) for k in range(20)} == {4}  # off: every client trains E
    local = LocalTraining(epochs=5, epochs_min=2, seed=7)
    assert local.unequal_epochs and local.for_client(3, 4).epochs == client_epochs(7, 3, 4, low=2, high=5)
    assert not local.for_client(3, 4).unequal_epochs  # resolved: what the client trains
    assert LocalTraining(epochs=5).for_client(3, 4).epochs == 5
    with pytest.raises(ParameterError, match="epochs_min"):
        LocalTraining(epochs=2, epochs_min=3)


def test_a_run_trains_each_client_for_its_own_epochs():
    prep = prepare(fed8.load_config(None, BASE))
    sim, t = prep.simulation, prep.config.train
    clients = list(range(6))
    epochs = [client_epochs(0, 1, k, low=1, high=4) for k in clients]
    assert len(set(epochs)) > 1  # this seed gives the round's clients unequal work
    got = list(sim.transport.local_updates(1, prep.state, clients))
    for k, u in zip(clients, got):
        local = LocalTraining(epochs=epochs[k], batch_size=t.batch_size, lr=t.lr, momentum=t.momentum)
        want = train_client(sim.model, prep.state, sim.clients[k], local, generator=torch_generator(0, TRAIN, 1, k),
                            client=k)
        assert u.train_loss == want.train_loss
        for name in want.delta:
            assert torch.equal(u.delta[name], want.delta[name]), (k, name)


@pytest.mark.parametrize("sets", [["run.client_batching=on", "run.client_batch_size=3"], ["run.parallel_clients=2"]],
                         ids=["batched", "parallel-clients"])
def test_batched_and_parallel_clients_train_the_same_epochs(sets):
    seq = prepare(fed8.load_config(None, BASE))
    other = prepare(fed8.load_config(None, BASE + sets))
    clients = list(range(6))
    a = list(seq.simulation.transport.local_updates(1, seq.state, clients))
    b = sorted(other.simulation.transport.local_updates(1, other.state, clients), key=lambda u: u.client)
    for u, v in zip(a, b):
        scale = max(1.0, max(float(x.abs().max()) for x in u.delta.values()))
        for name in u.delta:
            assert float((u.delta[name] - v.delta[name]).abs().max()) <= 1e-5 * scale, (u.client, name)


def test_batched_masks_a_client_whose_epochs_end_first():
    g = torch.Generator().manual_seed(0)
    data = [fed8.federated.ClientData(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g),
                                      torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long)) for n in (9, 9, 4)]
    model = fed8.models.build_model("mlp", in_channels=1, height=28, width=28, num_classes=10, seed=0, hidden=16)
    model = model.double()
    data = [fed8.federated.ClientData(d.x_train.double(), d.y_train, d.x_test, d.y_test) for d in data]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    local = LocalTraining(epochs=3, batch_size=4, lr=0.05, momentum=0.9)
    epochs = [1, 3, 2]
    bat = train_clients_batched(model, state, data, local, clients=[0, 1, 2], epochs=epochs,
                                generators=[torch.Generator().manual_seed(10 + i) for i in range(3)])
    for i, (d, e) in enumerate(zip(data, epochs)):
        seq = train_client(model, state, d, LocalTraining(epochs=e, batch_size=4, lr=0.05, momentum=0.9),
                           generator=torch.Generator().manual_seed(10 + i), client=i)
        for name in seq.delta:
            torch.testing.assert_close(bat[i].delta[name], seq.delta[name], rtol=0, atol=1e-12)


def test_fednova_normalizes_by_each_clients_own_steps():
    local = LocalTraining(epochs=4, epochs_min=1, batch_size=10, lr=0.1, momentum=0.9, seed=3)
    sizes = [30, 30, 30]  # equal data: under equal epochs FedNova would be FedAvg
    g = torch.Generator().manual_seed(0)
    updates = [ClientUpdate(k, {"w": torch.randn(4, generator=g)}, n, 0.0) for k, n in enumerate(sizes)]
    rnd = next(r for r in range(1, 50) if len({client_epochs(3, r, k, low=1, high=4) for k in range(3)}) > 1)
    agg = FedNovaAggregate(WeightedMean(samples_weight), keys=["w"], local=local, weight=samples_weight)
    agg.begin(rnd, [0, 1, 2])
    for u in updates:
        agg.add(u)
    out = agg.result({})
    a = [steps_reach(3 * client_epochs(3, rnd, k, low=1, high=4), lr=0.1, momentum=0.9) for k in range(3)]
    tau = sum(a) / 3
    torch.testing.assert_close(out["w"], tau * sum(u.delta["w"] / ai for u, ai in zip(updates, a)) / 3)
    assert not torch.allclose(out["w"], sum(u.delta["w"] for u in updates) / 3, rtol=1e-3)


def test_runs_are_deterministic_resume_bit_identically_and_differ_from_equal_work(tmp_path):
    cfg = fed8.load_config(None, BASE + ["server.fednova=true"])
    fed8.run(cfg, out=tmp_path / "full", report=False)
    interrupted_run(cfg, tmp_path / "cut", 2)
    fed8.run(resume=tmp_path / "cut", report=False)
    full = (tmp_path / "full/model.safetensors").read_bytes()
    assert (tmp_path / "cut/model.safetensors").read_bytes() == full
    fed8.run(fed8.load_config(None, BASE[:-1] + ["server.fednova=true"]), out=tmp_path / "equal", report=False)
    assert (tmp_path / "equal/model.safetensors").read_bytes() != full


def test_a_minimum_above_the_epochs_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"local_epochs_min = 5 is more than train.local_epochs = 4.*Lower"):
        fed8.run(fed8.load_config(None, BASE + ["train.local_epochs_min=5"]), out=tmp_path / "x", report=False)
