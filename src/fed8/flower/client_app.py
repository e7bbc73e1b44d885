"""fed8's ClientApp: the client step and the uplink codec on a SuperNode.

Messages: ``query`` (answers the node's ``partition-id``), ``train`` (the broadcast decoded
as the simulation's wire decodes it, local SGD with the generator of (seed, TRAIN, round,
client), the client hooks (simulated attacks, local DP with this node's OS CSPRNG), the
update encoded with the run's uplink codec, with error feedback from residuals kept on
the node, and the generator of (seed, COMPRESS, round, client), exactly as in simulation)
and ``evaluate`` (correct predictions of the sent model on the client's local test
split); the quantize stage's ``query.calibrate`` / ``evaluate.onnx``; secure
aggregation's ``query.secagg_*`` stages (:mod:`fed8.flower.secagg`). The data of client
k: on a real node, every image at the node config's ``data-path`` (read as
``data-source``, default the run's ``data.source``), ``data.test_fraction`` of them kept
as its local test split; in local trials, the ``partition-id`` of the run's dataset (the
same partition fed8's simulation makes).
"""

from __future__ import annotations

import os
import tomllib

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from .messages import bytes_array, state_from_record

__all__ = ["app"]

app = ClientApp()


def _check_partition(context: Context, client: int) -> int:
    """``client``, after checking the message reached the node of that partition."""
    pid = int(context.node_config.get("partition-id", client))
    if pid != client:
        raise RuntimeError(f"message for client {client} reached the node of partition {pid}")
    return client


def _check_model_allowed(name: str, context: Context) -> None:
    """A custom model (an import path) only if this node's own config lists it: the server cannot make a node import
    code (:mod:`fed8.models.custom`)."""
    from ..models.custom import is_import_path

    if not is_import_path(name):
        return
    allowed = str(context.node_config.get("models", "")).replace(",", " ").split()
    if name not in allowed:
        from ..errors import ConfigError

        raise ConfigError(f"the run's model.name = {name!r} is a custom model, and this node imports one only if its "
                          f"node config lists it (models = {' '.join(allowed)!r}). Start the SuperNode with "
                          f"--node-config \"models='{name}'\" if you trust that module.")


def _setup(msg: Message, context: Context):
    """The run's config, this node's model and data, its client id and the round, from a message.

    The data: ``data-path`` (+ ``data-source``) in the node config on a real node, else
    the ``partition-id`` of the run's dataset (local trials: the simulation's partition).
    """
    import torch

    from ..config import load_config

    job = msg.content["job"]
    raw = tomllib.loads(str(job["config"]))
    cfg = load_config(None, {f"{s}.{k}": v for s, keys in raw.items() for k, v in keys.items()})
    torch.set_num_threads(cfg.run.threads or os.cpu_count() or 1)
    client = _check_partition(context, int(job["client"]))
    _check_model_allowed(cfg.model.name, context)
    if context.node_config.get("data-path"):
        from ..stages.federation import load_node_data

        model, data = load_node_data(cfg, str(context.node_config["data-path"]), client=client,
                                     source=context.node_config.get("data-source") or None)
    else:
        from ..stages.federation import load_federation

        fed = load_federation(cfg)
        model, data = fed.model, fed.clients[client]
    return cfg, model, data, client, int(job["round"])


def _train_threads(cfg, model, context: Context) -> None:
    """A local trial's node trains with the simulation's torch threads per client (fed8.federated.parallel), so that
    the two runtimes give the same bytes; a real node (its own ``data-path``) keeps all of its threads."""
    if context.node_config.get("data-path"):
        return
    import torch

    from .._device import resolve_device
    from ..stages.federation import client_parallelism_of

    torch.set_num_threads(client_parallelism_of(cfg, model, resolve_device(cfg.run.device).type)[1])


@app.query()
def query(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    return Message(content=RecordDict({"a": ConfigRecord({"partition-id": pid})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    from .._rng import COMPRESS, TRAIN, torch_generator
    from ..federated.client import train_client
    from ..stages.aggregation import make_client_hooks
    from ..stages.federation import local_training, make_wire
    from .messages import received_state
    from .node import NodeState

    cfg, model, data, k, rnd = _setup(msg, context)
    _train_threads(cfg, model, context)
    job = msg.content["job"]
    node = NodeState.of(context.node_config, str(job["run-key"]), k)
    state = received_state(msg.content["model"], rnd=rnd, is_delta=bool(job["is-delta"]),
                           keep=bool(job["keep-ref"]), node=node)
    if state is None:  # a delta without the reference it applies to: ask for the base
        return Message(content=RecordDict({"job": ConfigRecord({"client": k, "round": rnd, "missing-ref": rnd - 1})}),
                       reply_to=msg)
    local = local_training(cfg.train, seed=cfg.run.seed).at_round(rnd).for_client(rnd, k)

    def train_with(correction=None):
        return train_client(model, state, data, local, generator=torch_generator(cfg.run.seed, TRAIN, rnd, k),
                            client=k, correction=correction)

    if cfg.train.scaffold or cfg.train.feddyn_alpha > 0:  # the client's state lives on the node, rolled back with
        from ..federated.feddyn import feddyn_client  # the server's rounds: SCAFFOLD's c_i, FedDyn's g_k
        from ..federated.scaffold import scaffold_client

        store = node.controls()
        store.rollback(rnd - 1)
        store.commit(rnd - 1)
        keys = [n for n, p in model.named_parameters() if p.requires_grad]
        if cfg.train.scaffold:
            c = state_from_record(msg.content["control"]) if "control" in msg.content else {}
            update = scaffold_client(train_with, store, k, rnd, c, keys, local)
        else:
            update = feddyn_client(train_with, store, k, rnd, keys, alpha=cfg.train.feddyn_alpha)
    else:
        update = train_with()
    local_plan = _plan(cfg) if cfg.privacy.dp == "local" else None
    for hook in make_client_hooks(cfg, local_plan, cfg.data.num_clients):  # own check, attacks, local DP (node CSPRNG)
        update = hook(rnd, update)
    if "secagg" in msg.content:  # secure aggregation, stage 2: only the masked ring input leaves the node
        payload = _masked_input(cfg, k, rnd, update, msg.content, node)
        if payload is None:
            return Message(content=RecordDict({"job": ConfigRecord({"client": k, "round": rnd, "rejected": 1})}),
                           reply_to=msg)
        return Message(content=RecordDict({
            "update": ArrayRecord({"payload": bytes_array(payload)}),
            "job": ConfigRecord({"client": k, "round": rnd, **_reports(cfg, update)})}), reply_to=msg)
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
        "job": ConfigRecord({"client": k, "round": rnd, **_reports(cfg, update)})}),
        reply_to=msg)


def _reports(cfg, update) -> dict:
    """What a train reply says besides the update: the sample count and the training loss, or (with
    ``privacy.client_reports`` off) only what the server's side of the mechanism needs: the count where the server
    weights the updates by it (capped weights under central DP without secure aggregation); nothing otherwise."""
    from ..stages.aggregation import client_reports_on, server_weights_by_samples

    if client_reports_on(cfg):
        return {"num_samples": update.num_samples, "train_loss": update.train_loss}
    # SCAFFOLD's and FedNova's server sides need each client's step count, a function of its sample count (neither
    # runs under DP or secure aggregation)
    needs_count = server_weights_by_samples(cfg) or cfg.train.scaffold or cfg.server.fednova
    return {"num_samples": update.num_samples} if needs_count else {}


def _masked_input(cfg, k: int, rnd: int, update, content, node) -> bytes | None:
    """Clip, weight, rotate, round (with this node's randomness) and mask the update, as the simulation's secure sum.

    The node chooses its own noise share (from the config's privacy plan) and checks its
    update; None if the update is not finite (it then sends no input).
    """
    import torch

    from ..privacy.dp import clip_by_norm
    from ..privacy.randomness import privacy_randomness
    from ..privacy.secagg.ring import flatten
    from ..privacy.secagg.summer import RoundEncoding
    from .messages import from_bytes_array

    if not all(bool(torch.isfinite(v).all()) for v in update.delta.values()):
        return None
    p, sa = cfg.privacy, content["secagg"]
    clip, cap = float(sa["clip-norm"]), float(sa["weight-cap"])
    clipped, norm = clip_by_norm(update.delta, clip)
    weight = 1.0 if cap == 0 else min(1.0, update.num_samples / cap)
    vec, _ = flatten(clipped)
    plan = _plan(cfg, dim=int(vec.shape[0]))
    enc = RoundEncoding.for_round(rnd, seed=cfg.run.seed, participants=int(sa["participants"]), dim=int(vec.shape[0]),
                                  clip_norm=clip, ddg=None if plan is None else plan.ddg)
    ring = enc.encode(vec, weight=weight, bit=int(norm <= clip), client=k, randomness=privacy_randomness(
        dp=p.dp != "none", insecure_reproducible=p.insecure_reproducible_noise, seed=cfg.run.seed))
    client = node.secagg_client(rnd, k)
    payload = client.masked_input(ring, {int(u): from_bytes_array(a) for u, a in content["inbox"].items()})
    node.save_secagg(rnd, client.to_state())
    return payload


def _plan(cfg, dim: int | None = None):
    """The run's privacy plan, computed on the node from the config (its noise is the node's choice).

    ``dim``: the update's length, which the distributed discrete Gaussian's parameters need.
    """
    p = cfg.privacy
    if not (p.dp == "local" or (p.dp == "central" and p.noise_placement == "distributed")):
        return None
    from ..stages.aggregation import privacy_plan

    return privacy_plan(cfg, dim=dim)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    from ..federated.evaluate import predict_correct

    cfg, model, data, k, rnd = _setup(msg, context)
    model.load_state_dict(state_from_record(msg.content["model"]))
    _, correct = predict_correct(model, data.x_test, data.y_test, batch_size=cfg.eval.batch_size)
    return Message(content=RecordDict({"job": ConfigRecord(
        {"client": k, "round": rnd, "correct": int(correct.sum()), "count": int(correct.numel())})}), reply_to=msg)


@app.evaluate("finetuned")
def evaluate_finetuned(msg: Message, context: Context) -> Message:
    """The node's correct count on its local test split after fine-tuning the sent model on its own training images
    (:mod:`fed8.federated.finetune`); the fine-tuned model stays here."""
    from ..federated.finetune import finetune_correct, finetuning
    from ..stages.federation import local_training

    cfg, model, data, k, rnd = _setup(msg, context)
    _train_threads(cfg, model, context)
    local = finetuning(local_training(cfg.train, seed=cfg.run.seed), rnd, int(msg.content["job"]["epochs"]))
    correct, count = finetune_correct(model, state_from_record(msg.content["model"]), data, local, seed=cfg.run.seed,
                                      client=k, batch_size=cfg.eval.batch_size)
    return Message(content=RecordDict({"job": ConfigRecord(
        {"client": k, "round": rnd, "correct": correct, "count": count})}), reply_to=msg)


# -- the quantize stage on the node: statistics of its own images, on-device accuracy ------------------------------

def _onnx(msg: Message, folder: str):
    from pathlib import Path

    from .messages import from_bytes_array

    job = msg.content["job"]
    suffix = str(job["suffix"]) if "suffix" in job else ".onnx"
    if suffix not in (".onnx", ".tflite", ".safetensors"):
        from ..errors import Fed8Error

        raise Fed8Error(f"the server sent a model of type {suffix!r}; this node runs another fed8 version than the "
                        "server. Install the same fed8 on every node.")
    path = Path(folder) / f"model{suffix}"
    path.write_bytes(from_bytes_array(msg.content["model"]["onnx"]))
    return path


@app.query("calibrate")
def calibrate(msg: Message, context: Context) -> Message:
    """Ranges, histograms or the gate's SQNR sums of the sent FP32 model on this node's calibration images."""
    import json
    import tempfile

    from ..deploy.calibrate import client_histograms, client_ranges
    from ..deploy.gate import client_sqnr_sums

    cfg, _, data, k, rnd = _setup(msg, context)
    job = msg.content["job"]
    x = data.x_train[: cfg.quantize.calibration_samples_per_client].numpy()
    what = str(job["what"])
    with tempfile.TemporaryDirectory(prefix="fed8-node-") as d:
        path = _onnx(msg, d)
        if what == "ranges":
            stats = client_ranges(path, x)
        elif what == "histograms":
            h = client_histograms(path, x, json.loads(str(job["bounds"])))
            stats = {t: [v.counts.tolist(), v.bound, v.n, v.sum, v.sum_sq] for t, v in h.items()}
        elif what == "sqnr":
            scales = json.loads(str(job["fp8-scales"]))
            stats = client_sqnr_sums(path, str(job["format"]), x, ranges=json.loads(str(job["ranges"])),
                                     fp8_scales=scales or None)
        else:
            from ..errors import Fed8Error

            raise Fed8Error(f"unknown calibration request {what!r}; this node runs another fed8 version than the "
                            "server. Install the same fed8 on every node.")
    return Message(content=RecordDict({"job": ConfigRecord(
        {"client": k, "round": rnd, "samples": int(len(x)), "stats": json.dumps(stats)})}), reply_to=msg)


@app.evaluate("onnx")
def evaluate_onnx(msg: Message, context: Context) -> Message:
    """Correct predictions of the sent 8-bit (or FP32) ONNX model on this node's local test split."""
    import tempfile

    from ..deploy.clients import correct_counts
    from ..deploy.runtime import session

    cfg, _, data, k, rnd = _setup(msg, context)
    with tempfile.TemporaryDirectory(prefix="fed8-node-") as d:
        hits, n = correct_counts(session(_onnx(msg, d), threads=cfg.quantize.threads), data.x_test.numpy(),
                                 data.y_test.numpy())
    return Message(content=RecordDict({"job": ConfigRecord({"client": k, "round": rnd, "correct": hits,
                                                            "count": n})}), reply_to=msg)


# -- secure aggregation's key and unmasking stages (fed8.flower.secagg) ---------------------------------------------

def _secagg_node(msg: Message, context: Context):
    from .node import NodeState

    job = msg.content["job"]
    k, rnd = _check_partition(context, int(job["client"])), int(job["round"])
    return job, k, rnd, NodeState.of(context.node_config, str(job["run-key"]), k)


def _secagg_reply(msg: Message, k: int, rnd: int, arrays: dict) -> Message:
    return Message(content=RecordDict({"secagg": ArrayRecord(arrays), "job": ConfigRecord(
        {"client": k, "round": rnd})}), reply_to=msg)


@app.query("secagg_keys")
def secagg_keys(msg: Message, context: Context) -> Message:
    """Stage 0: fresh key pairs (from the OS); the public keys go to the server, the rest stays on the node."""
    from ..privacy.secagg.protocol import SecAggClient

    job, k, rnd, node = _secagg_node(msg, context)
    client = SecAggClient(k, rnd=rnd, threshold=int(job["t"]), k=int(job["ring-bits"]), length=int(job["length"]))
    node.save_secagg(rnd, client.to_state())
    return _secagg_reply(msg, k, rnd, {"advert": bytes_array(client.advertise())})


@app.query("secagg_shares")
def secagg_shares(msg: Message, context: Context) -> Message:
    """Stage 1: Shamir shares of this client's mask seed and key, encrypted to each other participant."""
    from .messages import from_bytes_array

    _, k, rnd, node = _secagg_node(msg, context)
    client = node.secagg_client(rnd, k)
    cts = client.share_keys({int(u): from_bytes_array(a) for u, a in msg.content["secagg"].items()})
    node.save_secagg(rnd, client.to_state())
    return _secagg_reply(msg, k, rnd, {str(v): bytes_array(ct) for v, ct in cts.items()})


@app.query("secagg_unmask")
def secagg_unmask(msg: Message, context: Context) -> Message:
    """Stage 3: the shares that remove the masks of the round's senders (never both of one client's secrets)."""
    import json

    job, k, rnd, node = _secagg_node(msg, context)
    shares = node.secagg_client(rnd, k).unmask(json.loads(str(job["senders"])))
    node.drop_secagg(rnd)
    return _secagg_reply(msg, k, rnd, {f"{kind}{u}": bytes_array(share) for u, (kind, share) in shares.items()})
