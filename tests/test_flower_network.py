"""More real-process federations on 127.0.0.1: faults, TLS, SuperNode authentication (minutes; ``pytest -m network``).

CI runs one real-process federation (tests/test_flower.py); these run on demand and
before a release: a SuperNode killed mid-round and restarted, the ServerApp killed and
the run resumed, TLS with SuperNode authentication and an unregistered node refused,
secure aggregation over real Flower (and, in tests/test_flower.py, Ctrl-C + resume).
"""

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

import fed8
from fed8.errors import Fed8Error
from fed8.rundir import RunDir

pytest.importorskip("flwr", reason="the Flower extra is not installed (pip install 'fed8[flower]')")

from test_flower import SMALL, _processes_of  # noqa: E402

pytestmark = pytest.mark.network


def _procs(home: Path, word: str) -> list[tuple[int, list[str]]]:
    """Live processes of this federation whose command line contains ``word``."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                env = (d / "environ").read_bytes().split(b"\0")
                cmd = [a.decode() for a in (d / "cmdline").read_bytes().split(b"\0") if a]
                zombie = (d / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
                if not zombie and f"FLWR_HOME={home}".encode() in env and any(word in a for a in cmd):
                    out.append((int(d.name), cmd))
            except OSError:
                pass
    return out


def _after_round(run: Path, rnd: int, action, timeout_s: float = 300) -> threading.Thread:
    def watch():
        deadline = time.monotonic() + timeout_s
        m = run / "metrics.jsonl"
        while time.monotonic() < deadline:
            if m.exists() and len(m.read_text().splitlines()) >= rnd:
                action()
                return
            time.sleep(0.3)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_supernode_killed_mid_round_is_a_dropout_and_its_restart_rejoins(tmp_path):
    from fed8.flower.launcher import flower_env, run_federation

    cfg = fed8.load_config(None, SMALL + ["train.rounds=3", "compression.uplink=float32",
                                          "federation.round_timeout_s=25", "federation.min_replies=2",
                                          "federation.round_retries=0"])
    rd = RunDir.create(tmp_path / "fed", cfg)
    home = rd.path.resolve() / "flwr"
    events = {}

    def kill_and_restart():
        (pid, cmd), = _procs(home, "partition-id=2")
        os.killpg(pid, signal.SIGKILL)  # the SuperNode dies at the start of round 2
        events["killed"] = time.monotonic()
        time.sleep(3)
        env = flower_env(home)
        with open(home / "supernode-2-restarted.log", "ab") as fh:
            subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)

    watcher = _after_round(rd.path, 1, kill_and_restart)
    run_federation(rd.path, 3, timeout_s=400)
    watcher.join(1)
    assert "killed" in events
    rows = _rows(rd.path)
    one = rows[0]["uplink_bytes"] // 3
    assert rows[0]["uplink_bytes"] == 3 * one
    assert rows[1]["uplink_bytes"] == 2 * one  # round 2: the dead node's reply never came; 2 >= min_replies
    assert rows[2]["uplink_bytes"] == 3 * one  # round 3: the restarted node (a new node id) was found and trained
    assert _processes_of(home) == []


def test_the_serverapp_killed_mid_run_resumes_to_the_simulation_model(tmp_path):
    from fed8.flower.launcher import run_federation

    sets = SMALL + ["train.rounds=3"]
    rd = RunDir.create(tmp_path / "fed", fed8.load_config(None, sets))
    home = rd.path.resolve() / "flwr"

    def kill_server():
        for pid, _ in _procs(home, "flwr-serverapp"):
            os.kill(pid, signal.SIGKILL)

    watcher = _after_round(rd.path, 1, kill_server)
    with pytest.raises(Fed8Error, match="did not finish.*--resume"):
        run_federation(rd.path, 3, timeout_s=400)
    watcher.join(1)
    assert _processes_of(home) == []
    assert 1 <= json.loads((rd.path / "checkpoints/state.json").read_text())["round"] < 3
    run_federation(rd.path, 3, timeout_s=400)  # fed8 federation --resume RUN_DIR
    sim = fed8.run(fed8.load_config(None, sets), out=tmp_path / "sim", report=False)
    assert (rd.path / "model.safetensors").read_bytes() == (sim.run_dir / "model.safetensors").read_bytes()
    assert [r["round"] for r in _rows(rd.path)] == [1, 2, 3]


def test_tls_with_supernode_authentication_trains_and_an_unregistered_node_is_refused(tmp_path, capsys):
    from fed8.cli import main
    from fed8.flower.launcher import local_federation

    sets = [a for s in SMALL + ["data.num_clients=2", "train.rounds=1"] for a in ("--set", s)]
    assert main(["federation", "--auth", "--out", str(tmp_path / "fed")] + sets) == 0
    home = (tmp_path / "fed/flwr").resolve()
    assert 'root-certificates = "' in (home / "config.toml").read_text()  # the flwr CLI verified TLS too
    sim = fed8.run(fed8.load_config(None, SMALL + ["data.num_clients=2", "train.rounds=1"]), out=tmp_path / "sim",
                   report=False)
    assert (tmp_path / "fed/model.safetensors").read_bytes() == (sim.run_dir / "model.safetensors").read_bytes()
    assert _processes_of(home) == []

    other = (tmp_path / "refused").resolve()
    with local_federation(other, 2, auth=True, unregistered=(1,)) as fed:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and fed["procs"][2].poll() is None:
            time.sleep(0.5)
        assert fed["procs"][2].poll() not in (None, 0)  # the unregistered SuperNode was turned away
        assert fed["procs"][1].poll() is None  # the registered one stays connected
    assert "Failed to activate SuperNode" in (other / "supernode-1.log").read_text()
    assert _processes_of(other) == []


@pytest.mark.parametrize("dp", [[], [
    "privacy.dp=central", "privacy.noise_placement=distributed", "privacy.noise_multiplier=0.5",
    "privacy.clip_norm=0.05", "privacy.weighting=uniform", "privacy.insecure_reproducible_noise=true",
    "privacy.adaptive_clipping=on", "privacy.adaptive_quantile=0.55"]],  # the noised clip bits too
    ids=["plain", "distributed-discrete-gaussian"])
def test_secure_aggregation_over_real_flower_gives_the_simulation_model(tmp_path, dp):
    """fed8's secure-aggregation stages through Flower's real serialization and processes (with and without DDG)."""
    from fed8.flower.launcher import run_federation

    sets = SMALL + ["data.num_clients=3", "compression.uplink=float32", "privacy.secure_aggregation=true",
                    "privacy.secagg_min_clients=2", "privacy.secagg_threshold=0.6"] + dp
    rd = RunDir.create(tmp_path / "fed", fed8.load_config(None, sets))
    run_federation(rd.path, 3, timeout_s=600)
    sim = fed8.run(fed8.load_config(None, sets), out=tmp_path / "sim", report=False)
    assert (rd.path / "model.safetensors").read_bytes() == (sim.run_dir / "model.safetensors").read_bytes()
    rows = _rows(rd.path)
    assert [r["uplink_bytes"] for r in rows] == [r["uplink_bytes"] for r in sim.metrics]
    assert all(r["secagg_inputs"] == 3 for r in rows)
    assert not list((rd.path / "nodes").rglob("secagg-r*.json"))  # keys gone after unmasking
    assert _processes_of(rd.path.resolve() / "flwr") == []


def test_a_custom_model_from_the_current_folder_over_real_flower(tmp_path, user_module):
    """fed8 federation's local nodes may import the run's own model (node config models) and find it in the folder."""
    from fed8.flower.launcher import run_federation

    name = user_module(
        "from torch import nn\n"
        "def build(in_channels, height, width, num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(in_channels * height * width, num_classes))\n")
    sets = SMALL + ["data.num_clients=2", f"model.name={name}:build"]
    rd = RunDir.create(tmp_path / "fed", fed8.load_config(None, sets))
    run_federation(rd.path, 2, timeout_s=600)
    sim = fed8.run(fed8.load_config(None, sets), out=tmp_path / "sim", report=False)
    assert (rd.path / "model.safetensors").read_bytes() == (sim.run_dir / "model.safetensors").read_bytes()
    assert _processes_of(rd.path.resolve() / "flwr") == []
