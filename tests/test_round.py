"""The server side of a round over the Transport interface, with a transport that is not the simulation."""

import torch

from fed8.federated import FedAvgM, Reply, RoundLoop, RoundRecord, WeightedMean
from fed8.federated.client import ClientUpdate


class ScriptedTransport:
    """Clients that answer with fixed updates; clients in ``silent`` never reply (dropouts)."""

    def __init__(self, deltas, silent=()):
        self.deltas, self.silent, self.broadcasts = deltas, set(silent), []

    def broadcast(self, rnd, state, clients):
        self.broadcasts.append((rnd, list(clients)))
        return 10 * len(clients)

    def collect(self, rnd, clients):
        for k in clients:
            if k not in self.silent:
                yield Reply(ClientUpdate(k, {"w": torch.tensor(self.deltas[k])}, k + 1, 0.5), 7)

    def evaluate_clients(self, state):
        return {"client_accuracy_mean": 0.5, "client_accuracy_p10": 0.25, "client_accuracy_min": 0.0}

    def float32_bytes(self, state):
        return 4, 4

    def state_dict(self):
        return {"wire.x": torch.tensor(1.0)}

    def load_state_dict(self, state):
        self.loaded = dict(state)


def test_round_loop_over_another_transport():
    t = ScriptedTransport({0: [1.0, 0.0], 1: [0.0, 3.0], 2: [9.0, 9.0]}, silent={2})
    loop = RoundLoop(aggregator=WeightedMean(), optimizer=FedAvgM(momentum=0.5), transport=t, num_clients=3,
                     fraction=1.0, rounds=2, evaluate_server=lambda s: {"eval_accuracy": 0.75, "eval_loss": 1.0})
    w, rec = loop.run_round(1, {"w": torch.zeros(2)})
    # client 2 dropped: weights n = 1 and 2 -> Delta = [1/3, 2]
    assert torch.allclose(w["w"], torch.tensor([1 / 3, 2.0]))
    assert isinstance(rec, RoundRecord) and rec.num_clients == 3 and rec.uplink_bytes == 14
    assert rec.downlink_bytes == 30 and rec.eval_accuracy == 0.75 and rec.client_accuracy_p10 == 0.25
    row = rec.to_dict()
    assert RoundRecord.from_dict(row) == rec and list(row)[:5] == ["round", "num_clients", "train_loss",
                                                                    "eval_loss", "eval_accuracy"]
    state = loop.server_state()
    assert set(state) == {"v.w", "wire.x"}
    loop.load_server_state(state)
    assert t.loaded == {"wire.x": torch.tensor(1.0)} and torch.equal(loop.optimizer_state["v.w"], state["v.w"])


def test_a_round_nobody_answers_is_abandoned():
    t = ScriptedTransport({0: [1.0, 0.0]}, silent={0})
    loop = RoundLoop(aggregator=WeightedMean(), optimizer=FedAvgM(), transport=t, num_clients=1, fraction=1.0,
                     rounds=1)
    w, rec = loop.run_round(1, {"w": torch.ones(2)})
    assert torch.equal(w["w"], torch.ones(2)) and "no updates" in rec.aborted
