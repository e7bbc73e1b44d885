import json
import os
import signal
import subprocess
import sys
import time

import pytest

import fed8
from conftest import interrupted_run
from fed8.errors import CheckpointError, ConfigError
from fed8.rundir import RunDir

TIMING_KEYS = {"seconds"}


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def test_end_to_end_small_run(tmp_path, small):
    res = fed8.run(fed8.load_config(None, small), out=tmp_path / "r")
    rd = tmp_path / "r"
    for name in ("config.toml", "partition.json", "metrics.jsonl", "model.safetensors", "summary.json",
                 "report.html", "checkpoints/state.json", "plots/accuracy_loss.png",
                 "plots/client_accuracy.png", "plots/samples_per_client.png"):
        assert (rd / name).is_file(), name
    rows = [json.loads(x) for x in (rd / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2] and rows == res.metrics
    required = {"round", "num_clients", "train_loss", "eval_loss", "eval_accuracy", "client_accuracy_mean",
                "client_accuracy_p10", "client_accuracy_min", "uplink_bytes", "downlink_bytes", "seconds"}
    assert required <= set(rows[0])
    assert rows[-1]["eval_accuracy"] > 0.2  # chance is 0.1: it learns in 2 rounds on 600 images
    assert rows[-1]["train_loss"] < 2.3  # below ln(10), the loss of a uniform guess
    assert rows[0]["client_accuracy_min"] <= rows[0]["client_accuracy_p10"] <= rows[0]["client_accuracy_mean"]
    # fp32 payload: 1,663,370 floats = 6,653,480 bytes plus a safetensors header, per client
    per_client = rows[0]["uplink_bytes"] / rows[0]["num_clients"]
    assert 6_653_480 < per_client < 6_653_480 + 2048
    assert res.summary["total_uplink_bytes"] == sum(r["uplink_bytes"] for r in rows)
    part = json.loads((rd / "partition.json").read_text())
    assert sum(c["train_samples"] + c["test_samples"] for c in part["clients"]) == 600
    # resolved config round-trips
    assert fed8.load_config(rd / "config.toml") == fed8.load_config(None, small)
    with pytest.raises(CheckpointError, match="already holds a run.*--resume"):
        fed8.run(fed8.load_config(None, small), out=rd)


def test_eval_every_and_fraction(tmp_path, small):
    res = fed8.run(fed8.load_config(None, small + ["train.rounds=3", "eval.every=2", "train.fraction=0.5"]),
                   out=tmp_path / "r", report=False)
    assert [r["eval_accuracy"] is not None for r in res.metrics] == [False, True, True]  # last always
    assert all(r["num_clients"] == 2 for r in res.metrics)


# a small mlp where the model does not matter (test_killed_process_resumes_bit_identical resumes the default cnn)
MLP = ["model.name=mlp", "model.hidden=64"]


def test_determinism(tmp_path, small):
    cfg = fed8.load_config(None, small + MLP + ["data.partition=shards", "server.strategy=fedavgm"])
    a = fed8.run(cfg, out=tmp_path / "a", report=False)
    b = fed8.run(cfg, out=tmp_path / "b", report=False)
    assert _strip(a.metrics) == _strip(b.metrics)
    assert (tmp_path / "a/model.safetensors").read_bytes() == (tmp_path / "b/model.safetensors").read_bytes()
    fed8.run(cfg.replace(["run.seed=1"]), out=tmp_path / "c", report=False)
    assert (tmp_path / "a/model.safetensors").read_bytes() != (tmp_path / "c/model.safetensors").read_bytes()


@pytest.mark.parametrize("strategy", ["fedavg", "fedadam", "fedyogi"])
def test_resume_after_interrupt_is_bit_identical(tmp_path, small, strategy):
    cfg = fed8.load_config(None, small + MLP + ["train.rounds=4", f"server.strategy={strategy}"])
    full = fed8.run(cfg, out=tmp_path / "full", report=False)

    interrupted_run(cfg, tmp_path / "cut", 2)
    assert RunDir(tmp_path / "cut").load_checkpoint()["round"] == 2
    assert not (tmp_path / "cut/model.safetensors").exists()
    resumed = fed8.run(resume=tmp_path / "cut", report=False)
    assert [r["round"] for r in resumed.metrics] == [1, 2, 3, 4]
    assert _strip(resumed.metrics) == _strip(full.metrics)
    assert (tmp_path / "cut/model.safetensors").read_bytes() == (tmp_path / "full/model.safetensors").read_bytes()


def test_resume_rules(tmp_path, small):
    cfg = fed8.load_config(None, small)
    fed8.run(cfg, out=tmp_path / "r", report=False)
    with pytest.raises(ConfigError, match=r"cannot change train\.lr when resuming"):
        fed8.run(resume=tmp_path / "r", overrides=["train.lr=0.1"], report=False)
    more = fed8.run(resume=tmp_path / "r", overrides=["train.rounds=3"], report=False)  # extend a finished run
    assert [r["round"] for r in more.metrics] == [1, 2, 3]
    with pytest.raises(CheckpointError, match="not a fed8 run directory"):
        fed8.run(resume=tmp_path / "nothing")
    state = tmp_path / "r/checkpoints/state.json"
    meta = json.loads(state.read_text())
    (tmp_path / "r/checkpoints" / meta["model_file"]).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="SHA-256 does not match"):
        fed8.run(resume=tmp_path / "r", report=False)


def _cli(*args):
    return [sys.executable, "-m", "fed8.cli", *args]


def _wait_rounds(path, n, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        if proc.poll() is not None:
            pytest.fail(f"run ended before round {n}")
        time.sleep(0.05)
    pytest.fail("timed out")


@pytest.mark.slow
def test_killed_process_resumes_bit_identical(tmp_path, small):
    sets = [a for s in small + ["train.rounds=8"] for a in ("--set", s)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run(_cli("run", *sets, "--out", str(tmp_path / "full"), "--no-report"), check=True,
                   env=env, capture_output=True)
    # SIGKILL mid-run: no chance to clean up
    p = subprocess.Popen(_cli("run", *sets, "--out", str(tmp_path / "cut"), "--no-report"), env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_rounds(tmp_path / "cut/metrics.jsonl", 2, p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (tmp_path / "cut/model.safetensors").exists(), "killed too late to test anything"
    # Ctrl-C (SIGINT) on the resumed run: exit 130 with the resume command
    p = subprocess.Popen(_cli("run", "--resume", str(tmp_path / "cut"), "--no-report"), env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done = RunDir(tmp_path / "cut").load_checkpoint()["round"]
    _wait_rounds(tmp_path / "cut/metrics.jsonl", min(done + 1, 7), p)
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=60)
    if p.returncode == 130:
        assert "fed8 run --resume" in out
    r = subprocess.run(_cli("run", "--resume", str(tmp_path / "cut"), "--no-report"), env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cut/model.safetensors").read_bytes() == (tmp_path / "full/model.safetensors").read_bytes()
    full = [json.loads(x) for x in (tmp_path / "full/metrics.jsonl").read_text().splitlines()]
    cut = [json.loads(x) for x in (tmp_path / "cut/metrics.jsonl").read_text().splitlines()]
    assert _strip(full) == _strip(cut)


def test_model_file_metadata(tmp_path, small):
    from fed8._io import load_metadata, load_tensors

    fed8.run(fed8.load_config(None, small), out=tmp_path / "r", report=False)
    meta = load_metadata(tmp_path / "r/model.safetensors")
    assert meta["model"] == "cnn" and meta["input_shape"] == [1, 28, 28] and len(meta["classes"]) == 10
    assert load_tensors(tmp_path / "r/model.safetensors")["conv1.weight"].shape == (32, 1, 5, 5)
