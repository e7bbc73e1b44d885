"""Peer column: Flower's simulation engine (``flwr[simulation]==1.42.*``, Ray) on W1 / S8.

Run by ``bench/w1_fedavg.py --peers flower`` with ``bench/peers/.venv-flower/bin/python``
(made by ``bench/peers/make_venvs.sh``). The app is written the way the Flower docs teach:
the built-in ``FedAvg`` strategy (sample-weighted by ``num-examples``) drives
``strategy.start``; each ClientApp loads the global model, runs plain PyTorch SGD on its
shard and replies with its weights. ``num_supernodes`` = the clients; Ray runs them in
``--actors`` actors of ``threads / actors`` torch threads each.

Interleaving: ``evaluate_fn`` runs on the server after every round, in this process while
the actors idle. It closes the Flower round's clock (after the central evaluation on the
last round), runs one plain-loop round, and restarts the clock; so both see the same
machine load. Prints one JSON line (see ``_common.result``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402

from _common import PeakTreeRSS, PlainLoop, accuracy, build_cnn, load_workload, local_sgd, result  # noqa: E402

client = ClientApp()
server = ServerApp()
_CACHE: dict = {}
_RUN: dict = {}  # filled by main() (the ServerApp runs in a thread of this process)


def _workload() -> dict:
    if "w" not in _CACHE:
        torch.set_num_threads(int(os.environ["FED8_PEER_THREADS"]))
        _CACHE["w"] = load_workload(os.environ["FED8_PEER_WORKLOAD"])
        _CACHE["model"] = build_cnn()
    return _CACHE["w"]


@client.train()
def train(msg: Message, context: Context) -> Message:
    w = _workload()
    model = _CACHE["model"]
    k = int(context.node_config["partition-id"])
    x, y = w["xs"][k], w["ys"][k]
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    local_sgd(model, x, y, lr=float(msg.content["config"]["lr"]), bs=w["bs"])  # the plain loop's own epoch
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "metrics": MetricRecord({"num-examples": int(x.shape[0])})})
    return Message(content=content, reply_to=msg)


@server.main()
def main_server(grid: Grid, context: Context) -> None:
    w, n = _RUN["w"], len(_RUN["w"]["xs"])
    plain, model = _RUN["plain"], build_cnn()
    mark = [time.perf_counter()]

    def evaluate_fn(rnd: int, arrays: ArrayRecord):
        if rnd == 0:  # the initial model: the clock starts now
            mark[0] = time.perf_counter()
            return None
        if rnd == w["rounds"]:
            model.load_state_dict(arrays.to_torch_state_dict())
            _RUN["accuracy"] = accuracy(model, w["ex"], w["ey"])
        _RUN["seconds"].append(time.perf_counter() - mark[0])
        plain.round(rnd)
        mark[0] = time.perf_counter()
        return MetricRecord({})

    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(w["state"]), num_rounds=w["rounds"],
                   train_config=ConfigRecord({"lr": float(w["lr"])}), evaluate_fn=evaluate_fn)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--actors", type=int, default=1, help="Ray actors (each gets threads / actors torch threads)")
    a = ap.parse_args()
    from flwr.simulation import run_simulation

    torch.set_num_threads(a.threads)
    os.environ["FED8_PEER_WORKLOAD"] = a.workload
    os.environ["FED8_PEER_THREADS"] = str(max(1, a.threads // a.actors))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    w = load_workload(a.workload)
    _RUN.update(w=w, plain=PlainLoop(w), seconds=[], accuracy=None)
    rss = PeakTreeRSS()
    t0 = time.perf_counter()
    run_simulation(server_app=server, client_app=client, num_supernodes=len(w["xs"]),
                   backend_config={"client_resources": {"num_cpus": a.threads / a.actors, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": a.threads}})
    total = time.perf_counter() - t0
    print(json.dumps(result(f"flower-sim {a.actors} actor(s)", _RUN["seconds"], _RUN["plain"].seconds,
                            _RUN["accuracy"], rss.stop(), total_s=round(total, 1), threads=a.threads)), flush=True)


if __name__ == "__main__":
    main()
