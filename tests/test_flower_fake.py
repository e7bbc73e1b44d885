"""fed8's ServerApp and ClientApp over an in-process fake Grid: the Flower runtime's logic, fast."""

import json

import pytest

pytest.importorskip("flwr", reason="the Flower extra is not installed (pip install 'fed8[flower]')")

import fed8  # noqa: E402
from fed8.rundir import RunDir  # noqa: E402

from fake_grid import FakeGrid, run_server_app  # noqa: E402

BASE = ["data.subset=240", "data.num_clients=3", "train.rounds=3", "train.local_epochs=1", "train.fraction=1.0",
        "run.threads=1", "quantize.enabled=false", "model.name=mlp", "model.hidden=32"]


def _federation(tmp_path, sets, grid=None):
    cfg = fed8.load_config(None, BASE + sets)
    rd = RunDir.create(tmp_path / "fed", cfg)
    grid = grid or FakeGrid(cfg.data.num_clients, tmp_path / "nodes")
    run_server_app(rd.path, grid)
    return rd.path, grid


def _rows(path):
    return [{k: v for k, v in json.loads(x).items() if k != "seconds"}
            for x in (path / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("sets", [
    pytest.param(["compression.uplink=int8", "compression.downlink=int8"], id="int8-both-ways"),
    pytest.param(["train.precision=bfloat16"], id="bfloat16-clients"),
    pytest.param(["model.name=cnn", "train.batch_size=128", "train.momentum=0.9", "train.weight_decay=1e-3"],
                 id="one-step-clients"),  # ~64 images each: one step, the update without a weight update
    pytest.param(["train.augment=crop_flip", "train.local_epochs=2"], id="augmented-clients"),
    pytest.param(["train.lr_schedule=exponential", "train.lr_decay=0.5"], id="lr-schedule"),
    pytest.param(["model.name=cnn", "train.batch_size=128", "train.augment=crop"], id="augmented-one-step-clients"),
    pytest.param(["compression.uplink=float8_e4m3fn", "compression.downlink=int8", "compression.downlink_mode=delta",
                  "train.fraction=0.67"], id="delta-downlink-partial-participation"),
    pytest.param(["compression.uplink=topk", "compression.error_feedback=true"], id="error-feedback-on-the-node"),
    pytest.param(["attack.fraction=0.34", "server.robust=median"], id="attack-on-the-node"),
    pytest.param(["train.scaffold=true", "train.fraction=0.67", "train.local_epochs=2"], id="scaffold"),
    pytest.param(["train.scaffold=true", "model.name=cnn", "train.batch_size=128", "compression.uplink=int8",
                  "privacy.client_reports=off"], id="scaffold-one-step-int8"),
    pytest.param(["train.feddyn_alpha=0.05", "train.fraction=0.67", "train.local_epochs=2"], id="feddyn"),
    pytest.param(["server.fednova=true", "train.fraction=0.67", "train.local_epochs=2", "train.prox_mu=0.01",
                  "server.strategy=fedyogi"], id="fednova-fedyogi"),
    pytest.param(["server.fednova=true", "train.local_epochs=3", "train.local_epochs_min=1", "train.fraction=0.67"],
                 id="fednova-unequal-epochs"),  # each node draws its epochs as the simulation does
    pytest.param(["server.fednova=true", "privacy.client_reports=off", "privacy.weighting=uniform"],
                 id="fednova-uniform-weights-reports-off"),  # the count still travels: a_i needs it
    pytest.param(["eval.finetune_epochs=1", "train.lr_schedule=cosine"], id="fine-tuned-accuracy-on-the-nodes"),
    pytest.param(["privacy.dp=central", "privacy.noise_multiplier=0.5", "privacy.weighting=uniform",
                  "privacy.insecure_reproducible_noise=true"], id="central-dp"),
    pytest.param(["privacy.dp=local", "privacy.noise_multiplier=0.3", "privacy.weighting=uniform",
                  "privacy.insecure_reproducible_noise=true"], id="local-dp-on-the-node"),
])
def test_flower_apps_give_the_simulation_model(tmp_path, sets):
    fed, _ = _federation(tmp_path, sets)
    sim = fed8.run(fed8.load_config(None, BASE + sets), out=tmp_path / "sim", report=False)
    assert (fed / "model.safetensors").read_bytes() == (sim.run_dir / "model.safetensors").read_bytes()
    assert _rows(fed) == [{k: v for k, v in r.items() if k != "seconds"} for r in sim.metrics]
    assert json.loads((fed / "summary.json").read_text())["eval_per_class"] == sim.summary["eval_per_class"]


def test_error_feedback_residuals_live_on_the_node_not_the_server(tmp_path):
    fed, _ = _federation(tmp_path, ["compression.uplink=topk", "compression.error_feedback=true"])
    for k in range(3):  # node k holds client k's residuals: the last round's, and the one before until committed
        files = sorted(p.name for p in (tmp_path / "nodes" / str(k)).rglob("residuals/*.safetensors"))
        assert files[-1] == f"c{k:06d}-r000003.safetensors" and len(files) <= 2
        assert all(f.startswith(f"c{k:06d}-") for f in files)
    assert not list(fed.rglob("residuals/*.safetensors"))  # the server holds none


@pytest.mark.parametrize("algorithm", ["train.scaffold=true", "train.feddyn_alpha=0.05"])
def test_client_state_lives_on_the_nodes_and_a_resumed_run_ends_with_the_simulation_model(tmp_path, algorithm):
    """SCAFFOLD's c_i and FedDyn's g_k: kept by the node, rolled back with the server's rounds."""
    from fed8.errors import RoundFailedError

    sets = [algorithm, "train.rounds=3", "federation.min_replies=3"]
    cfg = fed8.load_config(None, BASE + sets)
    rd = RunDir.create(tmp_path / "fed", cfg)
    grid = FakeGrid(3, tmp_path / "nodes")
    grid.lose_reply_in_round = {2: {1}}  # client 1 trains round 2 (its control moves on its node), the reply is lost
    with pytest.raises(RoundFailedError):
        run_server_app(rd.path, grid)
    assert any((tmp_path / "nodes" / "1").rglob("controls/c000001-r000002.safetensors"))
    grid.lose_reply_in_round = {}
    run_server_app(rd.path, grid)  # resumed from round 1: node 1 rolls its control back to round 1's
    sim = fed8.run(cfg, out=tmp_path / "sim", report=False)
    assert (rd.path / "model.safetensors").read_bytes() == (sim.run_dir / "model.safetensors").read_bytes()
    for k in range(3):
        files = sorted(p.name for p in (tmp_path / "nodes" / str(k)).rglob("controls/*.safetensors"))
        assert files[-1] == f"c{k:06d}-r000003.safetensors"
    sent = [m for m in grid.sent if m.metadata.message_type == "train"]
    assert not any("control" in m.content for m in sent if int(m.content["job"]["round"]) == 1)  # c = 0
    scaffold = algorithm.startswith("train.scaffold")  # FedDyn sends nothing besides the model
    assert all(("control" in m.content) == scaffold for m in sent if int(m.content["job"]["round"]) > 1)
    assert not (rd.path / "controls").exists()  # none on the server


def test_local_dp_noise_is_drawn_on_the_node_from_the_os(tmp_path, monkeypatch):
    """Without the insecure opt-in, two runs differ (fresh OS noise on the nodes), and noise is real."""
    sets = ["privacy.dp=local", "privacy.noise_multiplier=0.3", "privacy.weighting=uniform", "train.rounds=1"]
    a, _ = _federation(tmp_path / "a", sets)
    b, _ = _federation(tmp_path / "b", sets)
    assert (a / "model.safetensors").read_bytes() != (b / "model.safetensors").read_bytes()


def test_a_node_that_lost_its_downlink_reference_gets_the_base_and_it_is_counted(tmp_path):
    sets = ["compression.downlink=int8", "compression.downlink_mode=delta", "train.rounds=2"]
    cfg = fed8.load_config(None, BASE + sets)
    grid = FakeGrid(3, tmp_path / "nodes")
    rd = RunDir.create(tmp_path / "fed", cfg)

    real = grid.answer

    def wipe_then_answer(messages):
        if messages and messages[0].metadata.message_type == "train" and int(messages[0].content["job"]["round"]) == 2:
            for f in (tmp_path / "nodes" / "1").rglob("downlink-r000001.safetensors"):
                f.unlink()  # node 1 lost its disk state (or missed the broadcast)
        return real(messages)

    grid.answer = wipe_then_answer
    run_server_app(rd.path, grid)
    sim = fed8.run(cfg, out=tmp_path / "sim", report=False)
    assert (rd.path / "model.safetensors").read_bytes() == (sim.run_dir / "model.safetensors").read_bytes()
    fed_rows, sim_rows = _rows(rd.path), sim.metrics
    base = sim_rows[1]["downlink_bytes_float32"] // 3  # one float32 model (an mlp has no raw entries)
    assert fed_rows[1]["downlink_bytes"] == sim_rows[1]["downlink_bytes"] + base


# -- faults: dropouts, min_replies, retries, restarted nodes, stale replies ---------------------------------------

def test_a_dropout_leaves_the_round_to_the_replies_that_came(tmp_path):
    cfg = fed8.load_config(None, BASE + ["train.rounds=2"])
    grid = FakeGrid(3, tmp_path / "nodes")
    grid.drop_in_round = {2: {1}}
    fed, _ = _federation(tmp_path, ["train.rounds=2", "federation.round_retries=0"], grid)
    rows = _rows(fed)
    one = rows[0]["uplink_bytes"] // 3  # float32 uplink: every update is the same size
    assert rows[0]["uplink_bytes"] == 3 * one and rows[1]["uplink_bytes"] == 2 * one
    sim = fed8.run(cfg, out=tmp_path / "sim", report=False)
    assert (fed / "model.safetensors").read_bytes() != (sim.run_dir / "model.safetensors").read_bytes()


def test_too_few_replies_stop_the_run_resumably_and_resume_ends_with_the_simulation_model(tmp_path):
    from fed8.errors import RoundFailedError

    sets = ["train.rounds=3", "federation.min_replies=3", "federation.round_retries=1"]
    cfg = fed8.load_config(None, BASE + sets)
    rd = RunDir.create(tmp_path / "fed", cfg)
    grid = FakeGrid(3, tmp_path / "nodes")
    grid.drop_in_round = {2: {2}}
    with pytest.raises(RoundFailedError, match=r"round 2: 2 of 3 .*min_replies = 3.*--resume"):
        run_server_app(rd.path, grid)
    assert [r["round"] for r in _rows(rd.path)] == [1]
    asked = [m for m in grid.sent if m.metadata.message_type == "train" and int(m.content["job"]["round"]) == 2]
    assert len(asked) == 4  # 3 clients, then the missing one again
    grid.drop_in_round = {}
    run_server_app(rd.path, grid)  # fed8 federation --resume: the nodes are back
    sim = fed8.run(cfg, out=tmp_path / "sim", report=False)
    assert (rd.path / "model.safetensors").read_bytes() == (sim.run_dir / "model.safetensors").read_bytes()


def test_a_restarted_node_is_found_by_partition_and_the_round_completes(tmp_path):
    sets = ["train.rounds=3", "federation.min_replies=3", "federation.round_retries=1",
            "compression.downlink=int8", "compression.downlink_mode=delta", "compression.uplink=topk",
            "compression.error_feedback=true"]
    grid = FakeGrid(3, tmp_path / "nodes")
    grid.restart_in_round = {2: 1}
    old = grid.node_of(1)
    fed, _ = _federation(tmp_path, sets, grid)
    assert grid.node_of(1) != old
    sim = fed8.run(fed8.load_config(None, BASE + sets), out=tmp_path / "sim", report=False)
    assert (fed / "model.safetensors").read_bytes() == (sim.run_dir / "model.safetensors").read_bytes()


def test_a_stale_reply_never_reaches_a_later_round(tmp_path):
    grid = FakeGrid(3, tmp_path / "nodes")
    grid.replay_in_round = {2: 0}
    fed, _ = _federation(tmp_path, ["train.rounds=2", "federation.round_retries=0"], grid)
    rows = _rows(fed)
    assert rows[1]["uplink_bytes"] == 2 * rows[0]["uplink_bytes"] // 3  # client 0's round-1 reply was dropped
    assert all(m.metadata.ttl == 600.0 for m in grid.sent if m.metadata.message_type == "train")


# -- the deploy stage over Flower -------------------------------------------------------------------------------------

def _deploy_rows(path):
    q = json.loads((path / "deploy/quantization.json").read_text())
    drop = ("latency", "speedup", "openvino")
    return q, [{k: v for k, v in r.items() if not k.startswith(drop)} for r in q["formats"]]


def test_the_deploy_stage_calibrates_and_evaluates_on_the_nodes_and_builds_the_simulation_models(tmp_path):
    sets = ["train.rounds=2", "quantize.enabled=true", 'quantize.formats="int8,float8_e4m3fn,torch_float8_e4m3fn"',
            # (torch_float8_e4m3fn: a .safetensors file the nodes open with PyTorch for their on-device counts)
            "quantize.calibration=percentile", "quantize.fp8_activation_scale=auto", "quantize.openvino=off",
            "quantize.calibration_samples_per_client=16"]
    fed, grid = _federation(tmp_path, sets)
    sim = fed8.run(fed8.load_config(None, BASE + sets), out=tmp_path / "sim", report=False)
    kinds = [m.metadata.message_type for m in grid.sent]
    assert {"query.calibrate", "evaluate.onnx"} <= set(kinds)
    q_fed, rows_fed = _deploy_rows(fed)
    q_sim, rows_sim = _deploy_rows(sim.run_dir)
    assert rows_fed == rows_sim  # same accuracies, per-client accuracies, gate decisions, bytes
    assert rows_fed[1]["on_device"]["client_accuracy_mean"] is not None
    for f in ("int8.onnx", "float8_e4m3fn.onnx", "torch_float8_e4m3fn.safetensors"):
        assert (fed / "deploy" / f).read_bytes() == (sim.run_dir / "deploy" / f).read_bytes()
    assert rows_fed[-1]["format"] == "torch_float8_e4m3fn" and rows_fed[-1]["on_device"]["client_accuracy_mean"] is not None
    assert "SuperNodes" in q_fed["calibration"]["where"] and q_fed["calibration"]["samples"] == 48
    assert json.loads((fed / "summary.json").read_text())["deploy"][1]["format"] == "int8"


# -- secure aggregation over Flower -----------------------------------------------------------------------------------

SECAGG = ["privacy.secure_aggregation=true", "data.num_clients=4", "privacy.secagg_threshold=0.6"]


@pytest.mark.parametrize("extra", [[], ["train.feddyn_alpha=0.05", "privacy.weighting=uniform", "train.local_epochs=2"]],
                         ids=["fedavg", "feddyn"])  # FedDyn: h from the unmasked sums, g_k on the nodes
def test_secure_aggregation_runs_its_stages_on_the_nodes_and_gives_the_simulation_model(tmp_path, extra):
    cfg = fed8.load_config(None, BASE + SECAGG + extra)
    grid = FakeGrid(4, tmp_path / "nodes")
    fed, _ = _federation(tmp_path, SECAGG + extra, grid)
    sim = fed8.run(cfg, out=tmp_path / "sim", report=False)
    assert (fed / "model.safetensors").read_bytes() == (sim.run_dir / "model.safetensors").read_bytes()
    assert _rows(fed) == [{k: v for k, v in r.items() if k != "seconds"} for r in sim.metrics]  # bytes too
    kinds = [m.metadata.message_type for m in grid.sent if "job" in m.content and int(m.content["job"]["round"]) == 1]
    stages = ["query.secagg_keys", "query.secagg_shares", "train", "query.secagg_unmask"]
    assert [k for k in kinds if k in stages] == [s for s in stages for _ in range(4)]
    # the server saw only masked input: no train reply carries a payload it could decode
    from fed8.compression import decode
    from fed8.errors import PayloadError

    for reply in grid.last_reply.values():
        with pytest.raises(PayloadError):
            decode(bytes(reply.content["update"]["payload"].data))
    assert not list((tmp_path / "nodes").rglob("secagg-r*.json"))  # keys deleted after unmasking


@pytest.mark.parametrize("adaptive", ["off", "on"])
def test_secure_aggregation_with_distributed_dp_draws_noise_on_the_nodes(tmp_path, adaptive):
    sets = SECAGG + ["privacy.dp=central", "privacy.noise_placement=distributed", "privacy.noise_multiplier=0.5",
                     "privacy.weighting=uniform", f"privacy.adaptive_clipping={adaptive}",
                     "privacy.adaptive_quantile=0.55", "privacy.insecure_reproducible_noise=true", "train.rounds=2"]
    fed, _ = _federation(tmp_path, sets)
    sim = fed8.run(fed8.load_config(None, BASE + sets), out=tmp_path / "sim", report=False)
    assert (fed / "model.safetensors").read_bytes() == (sim.run_dir / "model.safetensors").read_bytes()
    assert _rows(fed)[-1]["epsilon"] == sim.metrics[-1]["epsilon"]
    # adaptive clipping: the nodes' noised clip bits moved the clip norm the same way in both runtimes
    clips = [row["clip_norm"] for row in _rows(fed)]
    assert clips == [row["clip_norm"] for row in sim.metrics] and (clips[0] != clips[1]) == (adaptive == "on")


def test_distributed_dp_over_flower_sums_the_survivors_of_a_dropout(tmp_path):
    grid = FakeGrid(4, tmp_path / "nodes")
    # round 2: node 3 shares keys, then never sends its input: 3 inputs remain, the t = 3 noise shares needed;
    # round 3: two drop, and a sum of 2 inputs (too little noise) is never unmasked
    grid.drop_in_round = {2: {3}, 3: {2, 3}}
    sets = SECAGG + ["privacy.dp=central", "privacy.noise_placement=distributed", "privacy.noise_multiplier=0.5",
                     "privacy.clip_norm=0.05", "privacy.weighting=uniform", "train.rounds=3",
                     "federation.round_retries=0"]
    fed, _ = _federation(tmp_path, sets, grid)
    rows = _rows(fed)
    assert rows[1].get("aborted") is None and rows[1]["secagg_inputs"] == 3 and rows[1]["secagg_ring_bits"] == 17
    assert rows[0]["secagg_inputs"] == 4 and rows[1]["epsilon"] > rows[0]["epsilon"]
    assert "only 2 client(s) sent masked input" in rows[2]["aborted"]


def test_a_dropout_after_the_key_stages_is_unmasked_around(tmp_path):
    grid = FakeGrid(4, tmp_path / "nodes")
    grid.drop_in_round = {2: {3}}  # node 3 shares keys, then never sends its input
    fed, _ = _federation(tmp_path, SECAGG + ["train.rounds=2", "federation.round_retries=0"], grid)
    rows = _rows(fed)
    assert rows[1].get("aborted") is None and rows[1]["secagg_inputs"] == 3


def test_too_few_clients_for_the_threshold_abandon_the_round_clearly(tmp_path, caplog):
    grid = FakeGrid(4, tmp_path / "nodes")
    grid.drop_in_round = {2: {1, 2, 3}}  # 1 input: below secagg_min_clients = 3
    fed, _ = _federation(tmp_path, SECAGG + ["train.rounds=2", "federation.round_retries=0"], grid)
    rows = _rows(fed)
    assert "participation floor" in rows[1]["aborted"]
    m1 = json.loads((fed / "metrics.jsonl").read_text().splitlines()[0])
    assert m1.get("aborted") is None


def test_a_real_node_trains_and_evaluates_on_its_own_data_path(tmp_path):
    """Nodes configured with data-path / data-source use their own files, not the server's dataset."""
    import numpy as np

    from fed8.data import load_splits

    train = load_splits(fed8.load_config(None, BASE).data).train
    sizes = [40, 60, 80]
    cfg = fed8.load_config(None, BASE + ["train.rounds=1", "data.test_fraction=0.25"])
    grid = FakeGrid(3, tmp_path / "nodes")
    at = 0
    for conf in grid.configs.values():
        n = sizes[conf["partition-id"]]
        f = tmp_path / f"node{conf['partition-id']}.npz"
        np.savez(f, x_train=train.images[at:at + n].numpy(), y_train=train.labels[at:at + n].numpy(),
                 classes=np.array([str(c) for c in train.classes]))
        at += n
        conf.update({"data-path": str(f), "data-source": "npz"})
    rd = RunDir.create(tmp_path / "fed", cfg)
    run_server_app(rd.path, grid)
    counts = {int(r.content["job"]["client"]): int(r.content["job"]["count"])
              for r in grid.replies if r.metadata.message_type == "evaluate"}
    assert counts == {k: n // 4 for k, n in enumerate(sizes)}  # each node's own local test split
    trained = {int(r.content["job"]["client"]): int(r.content["job"]["num_samples"])
               for r in grid.replies if r.metadata.message_type == "train"}
    assert trained == {k: n - n // 4 for k, n in enumerate(sizes)}


def test_nodes_train_with_the_simulations_threads_per_client(tmp_path):
    """Two threads and three clients: the simulation trains two at a time on one torch thread each
    (fed8.federated.parallel); a local-trial node trains its client on one thread too, so the models are the same."""
    sets = ["run.threads=2", "model.name=cnn", "train.batch_size=10", "data.subset=150"]
    fed, _ = _federation(tmp_path, sets)
    sim = fed8.run(fed8.load_config(None, BASE + sets), out=tmp_path / "sim", report=False)
    assert (fed / "model.safetensors").read_bytes() == (sim.run_dir / "model.safetensors").read_bytes()
    assert _rows(fed) == [{k: v for k, v in r.items() if k != "seconds"} for r in sim.metrics]


def test_a_custom_model_trains_on_nodes_that_allow_it_and_only_those(tmp_path, user_module):
    """The node imports a model named by the server's config only if its own node config lists it; its dropout
    masks are seeded per client as in simulation."""
    from fed8.errors import ConfigError

    name = user_module(
        "from torch import nn\n"
        "def build(in_channels, height, width, num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * height * width, 16), nn.ReLU(),\n"
        "                         nn.Dropout(0.3), nn.Linear(16, num_classes))\n")  # dropout: seeded per client
    sets = [f"model.name={name}:build", "train.rounds=2"]
    refused = FakeGrid(3, tmp_path / "refused")
    with pytest.raises(ConfigError, match=rf"model.name = '{name}:build' is a custom model.*models="):
        _federation(tmp_path / "a", sets, refused)
    allowing = FakeGrid(3, tmp_path / "nodes")
    for c in allowing.configs.values():
        c["models"] = f"mlp_elsewhere:make {name}:build"
    fed, _ = _federation(tmp_path / "b", sets, allowing)
    sim = fed8.run(fed8.load_config(None, BASE + sets), out=tmp_path / "sim", report=False)
    assert (fed / "model.safetensors").read_bytes() == (sim.run_dir / "model.safetensors").read_bytes()


@pytest.mark.parametrize("reports", ["auto", "on"])
def test_under_dp_the_nodes_are_asked_nothing_outside_training_unless_client_reports_is_on(tmp_path, reports):
    sets = ["privacy.dp=central", "privacy.noise_multiplier=0.5", "privacy.weighting=uniform", "train.rounds=2",
            "quantize.enabled=true", "quantize.formats=int8", f"privacy.client_reports={reports}"]
    fed, grid = _federation(tmp_path, sets)
    kinds = {m.metadata.message_type for m in grid.sent}
    outside = kinds - {"train", "query"}  # query: a node's partition id, asked once
    if reports == "auto":
        assert outside == set(), outside  # no evaluate, calibrate or evaluate.onnx message reached a node
        assert all(r["client_accuracy_mean"] is None and r["train_loss"] is None for r in _rows(fed))
        train = [r for r in grid.replies if "update" in r.content]  # uniform weights: the count is not needed
        assert train and all(set(r.content["job"].keys()) == {"client", "round"} for r in train)
    else:
        assert {"evaluate", "query.calibrate", "evaluate.onnx"} <= outside, outside
        assert all(r["client_accuracy_mean"] is not None for r in _rows(fed))


def test_secure_aggregation_replies_carry_only_the_masked_input_by_default(tmp_path):
    fed, grid = _federation(tmp_path, SECAGG + ["train.rounds=1"])
    train = [r for r in grid.replies if "update" in r.content]
    assert train and all(set(r.content["job"].keys()) == {"client", "round"} for r in train)
    assert _rows(fed)[0]["train_loss"] is None
    fed, grid = _federation(tmp_path / "on", SECAGG + ["train.rounds=1", "privacy.client_reports=on"])
    train = [r for r in grid.replies if "update" in r.content]
    assert all({"num_samples", "train_loss"} <= set(r.content["job"].keys()) for r in train)
    assert _rows(fed)[0]["train_loss"] is not None


def test_a_diverged_client_sends_a_masked_zero_input_not_a_rejection(tmp_path):
    sets = ["privacy.secure_aggregation=true", "train.lr=1e30", "train.rounds=1"]
    fed, grid = _federation(tmp_path, sets)
    replies = [r for r in grid.replies if "update" in r.content or ("job" in r.content and "rejected" in r.content["job"])]
    assert replies and all("update" in r.content and "rejected" not in r.content["job"] for r in replies)
    sim = fed8.run(fed8.load_config(None, BASE + sets), out=tmp_path / "sim", report=False)
    assert _rows(fed) == [{k: v for k, v in r.items() if k != "seconds"} for r in sim.metrics]
