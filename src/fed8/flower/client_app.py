"""fed8's ClientApp: the client step and the uplink codec on a SuperNode.

Messages: ``query`` (answers the node's ``partition-id``), ``train`` (the broadcast decoded
as the simulation's wire decodes it, local SGD with the generator of (seed, TRAIN, round,
client), the client hooks (simulated attacks, local DP with this node's OS CSPRNG), the
update encoded with the run's uplink codec, with error feedback from residuals kept on
the node, and the generator of (seed, COMPRESS, round, client), exactly as in simulation)
and ``evaluate`` (correct predictions of the sent model on the client's local
test split). The data of client k comes from the run's config and the node's
``partition-id`` (local trials: the same partition fed8's simulation makes).
"""

from __future__ import annotations

import os
import tomllib

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from .._rng import COMPRESS, TRAIN, torch_generator
from .messages import bytes_array, state_from_record

__all__ = ["app"]

app = ClientApp()


def _setup(msg: Message, context: Context):
    import torch

    from ..config import load_config
    from ..stages.federation import load_federation

    job = msg.content["job"]
    raw = tomllib.loads(str(job["config"]))
    cfg = load_config(None, {f"{s}.{k}": v for s, keys in raw.items() for k, v in keys.items()})
    torch.set_num_threads(cfg.run.threads or os.cpu_count() or 1)
    client = int(job["client"])
    pid = int(context.node_config.get("partition-id", client))
    if pid != client:
        raise RuntimeError(f"message for client {client} reached the node of partition {pid}")
    return cfg, load_federation(cfg), client, int(job["round"])


@app.query()
def query(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    return Message(content=RecordDict({"a": ConfigRecord({"partition-id": pid})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    from ..federated.client import train_client
    from ..stages.aggregation import make_client_hooks
    from ..stages.federation import local_training, make_wire
    from .messages import received_state
    from .node import NodeState

    cfg, fed, k, rnd = _setup(msg, context)
    job = msg.content["job"]
    node = NodeState.of(context.node_config, str(job["run-key"]), k)
    state = received_state(msg.content["model"], rnd=rnd, is_delta=bool(job["is-delta"]),
                           keep=bool(job["keep-ref"]), node=node)
    if state is None:  # a delta without the reference it applies to: ask for the base
        return Message(content=RecordDict({"job": ConfigRecord({"client": k, "round": rnd, "missing-ref": rnd - 1})}),
                       reply_to=msg)
    update = train_client(fed.model, state, fed.clients[k], local_training(cfg.train),
                          generator=torch_generator(cfg.run.seed, TRAIN, rnd, k), client=k)
    for hook in make_client_hooks(cfg, _plan(cfg), cfg.data.num_clients):  # attacks, local DP (this node's CSPRNG)
        update = hook(rnd, update)
    wire = make_wire(cfg, cfg.data.num_clients)
    gen = torch_generator(cfg.run.seed, COMPRESS, rnd, k)
    if cfg.compression.error_feedback:
        from ..compression import ErrorFeedback

        store = node.residuals()
        store.rollback(rnd - 1)  # the server resumed from round rnd - 1: later residuals were never committed
        store.commit(rnd - 1)
        payload, _ = ErrorFeedback(wire.uplink, store).encode(update.delta, client=k, round=rnd, generator=gen)
    else:
        payload = wire.uplink.encode(update.delta, generator=gen)
    return Message(content=RecordDict({
        "update": ArrayRecord({"payload": bytes_array(payload)}),
        "job": ConfigRecord({"client": k, "round": rnd, "num_samples": update.num_samples,
                             "train_loss": update.train_loss})}),
        reply_to=msg)


def _plan(cfg):
    """The run's privacy plan, computed on the node from the config (local DP's noise is the node's choice)."""
    if cfg.privacy.dp != "local":
        return None
    from ..privacy import make_plan
    from ..stages.aggregation import expected_clients

    return make_plan(cfg.privacy, num_clients=cfg.data.num_clients, clients_per_round=expected_clients(cfg),
                     sampling=cfg.train.sampling, rounds=cfg.train.rounds)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    from ..federated.evaluate import predict_correct

    cfg, fed, k, rnd = _setup(msg, context)
    fed.model.load_state_dict(state_from_record(msg.content["model"]))
    data = fed.clients[k]
    _, correct = predict_correct(fed.model, data.x_test, data.y_test, batch_size=cfg.eval.batch_size)
    return Message(content=RecordDict({"job": ConfigRecord(
        {"client": k, "round": rnd, "correct": int(correct.sum()), "count": int(correct.numel())})}), reply_to=msg)
