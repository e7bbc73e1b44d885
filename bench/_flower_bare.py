"""A bare Flower app for bench/flower.py: what a Flower user writes by hand, with fed8's data and model only.

ServerApp: waits for the nodes, then each round sends the float32 model to every node,
averages the float32 deltas (sample-weighted, numpy) and, on fed8's eval rounds
(``eval.every``), asks every node for its local test accuracy, recording seconds per round.
ClientApp: loads its partition with fed8's loader, runs plain PyTorch SGD (the run's lr,
momentum, batch size, epochs) and replies with its float32 delta.
"""

import json
import time
import tomllib

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

server = ServerApp()
client = ClientApp()


def _cfg(text: str):
    from fed8.config import load_config

    raw = tomllib.loads(text)
    return load_config(None, {f"{s}.{k}": v for s, keys in raw.items() for k, v in keys.items()})


def _pack(state: dict) -> ArrayRecord:
    return ArrayRecord({k: Array(v.detach().numpy().astype(np.float32)) for k, v in state.items()})


@server.main()
def main(grid: Grid, context: Context) -> None:
    import torch

    from fed8.stages.federation import load_federation

    text = open(str(context.run_config["config"])).read()
    cfg = _cfg(text)
    n = cfg.data.num_clients
    while len(grid.get_node_ids()) < n:
        time.sleep(0.5)
    nodes = sorted(grid.get_node_ids())[:n]
    model = load_federation(cfg).model
    state = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    seconds, correct = [], []
    for rnd in range(1, cfg.train.rounds + 1):
        t0 = time.perf_counter()
        rec = _pack(state)
        msgs = [Message(content=RecordDict({"model": rec, "job": ConfigRecord({"config": text, "round": rnd})}),
                        dst_node_id=node, message_type="train") for node in nodes]
        replies = [r for r in grid.send_and_receive(msgs) if not r.has_error()]
        total = sum(int(r.content["job"]["n"]) for r in replies)
        for k in state:
            avg = sum(r.content["delta"][k].numpy() * int(r.content["job"]["n"]) for r in replies) / total
            state[k] = state[k] + torch.from_numpy(avg.astype(np.float32))
        every = cfg.eval.every
        if rnd == cfg.train.rounds or (every > 0 and rnd % every == 0):  # every node evaluates the new model
            rec = _pack(state)
            msgs = [Message(content=RecordDict({"model": rec, "job": ConfigRecord({"config": text, "round": rnd})}),
                            dst_node_id=node, message_type="evaluate") for node in nodes]
            replies = [r for r in grid.send_and_receive(msgs) if not r.has_error()]
            correct.append(sum(int(r.content["job"]["correct"]) for r in replies))
        seconds.append(time.perf_counter() - t0)
    with open(str(context.run_config["out"]), "w") as fh:
        json.dump({"seconds": seconds, "correct_on_nodes": correct}, fh)


def _client(msg: Message, context: Context):
    """The run's config, this node's partition and the model loaded with the sent weights."""
    import torch

    from fed8.stages.federation import load_federation

    cfg = _cfg(str(msg.content["job"]["config"]))
    torch.set_num_threads(1)
    fed = load_federation(cfg)
    start = {k: torch.from_numpy(msg.content["model"][k].numpy().copy()) for k in msg.content["model"].keys()}
    fed.model.load_state_dict(start, strict=False)
    return cfg, fed.model, fed.clients[int(context.node_config["partition-id"])], start


@client.train()
def train(msg: Message, context: Context) -> Message:
    import torch
    import torch.nn.functional as F

    cfg, model, data, start = _client(msg, context)
    t = cfg.train
    opt = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    model.train()
    for _ in range(t.local_epochs):
        perm = torch.randperm(data.num_train)
        for i in range(0, data.num_train, t.batch_size):
            idx = perm[i : i + t.batch_size]
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    delta = {k: v.detach() - start[k] for k, v in model.state_dict().items() if k in start}
    return Message(content=RecordDict({"delta": _pack(delta), "job": ConfigRecord({"n": data.num_train})}),
                   reply_to=msg)


@client.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    import torch

    _, model, data, _ = _client(msg, context)
    model.eval()
    with torch.no_grad():
        correct = int((model(data.x_test).argmax(1) == data.y_test).sum()) if len(data.y_test) else 0
    return Message(content=RecordDict({"job": ConfigRecord({"correct": correct, "n": int(len(data.y_test))})}),
                   reply_to=msg)
