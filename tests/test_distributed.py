"""fed8 run under torchrun: 2 ranks on 127.0.0.1 give a single process's run directory, bit for bit."""

import json
import os
import socket
import subprocess
import sys

import pytest

from fed8._io import load_tensors
from fed8.cli import main

from conftest import SMALL

# Non-IID, partial participation, int8 uplink with error feedback, an int8 delta downlink: everything rank 0
# does around the workers' training has state, and 5 sampled clients of 6 shard unevenly over 2 ranks.
SETS = SMALL + ["data.num_clients=6", "train.fraction=0.8", "train.rounds=3", "compression.uplink=int8",
                "compression.error_feedback=true", "compression.downlink=int8", "compression.downlink_mode=delta"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args, env=None, timeout=300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "fed8.cli", *args]
    env = {**os.environ, **(env or {})}
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                         start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, 9)
            p.wait()
    return p.returncode, out


def _metrics(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.mark.slow
def test_two_workers_give_the_single_process_run_bit_for_bit_and_resume(tmp_path):
    sets = [a for s in SETS for a in ("--set", s)]
    assert main(["run", "--out", str(tmp_path / "one"), "--no-report", *sets]) == 0
    rc, out = _torchrun(["run", "--out", str(tmp_path / "two"), "--no-report", *sets])
    assert rc == 0, out[-3000:]
    assert "sharded over 2 ranks" in out and out.count("fed8 run summary") == 1  # one run, two processes
    a, b = load_tensors(tmp_path / "one/model.safetensors"), load_tensors(tmp_path / "two/model.safetensors")
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    assert _metrics(tmp_path / "one") == _metrics(tmp_path / "two")  # accuracy, losses, bytes: all of it
    assert not (tmp_path / "two" / "two").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]
    # resume under torchrun: 2 more rounds on rank 0's run directory, the workers get the resumed config
    assert main(["run", "--resume", str(tmp_path / "one"), "--no-report", "--set", "train.rounds=5"]) == 0
    rc, out = _torchrun(["run", "--resume", str(tmp_path / "two"), "--no-report", "--set", "train.rounds=5"])
    assert rc == 0, out[-3000:]
    a, b = load_tensors(tmp_path / "one/model.safetensors"), load_tensors(tmp_path / "two/model.safetensors")
    assert all(bool((a[k] == b[k]).all()) for k in a)
    assert _metrics(tmp_path / "one") == _metrics(tmp_path / "two")


def test_flower_is_refused_under_torchrun(monkeypatch, capsys):
    pytest.importorskip("flwr")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["federation", "--set", "train.rounds=1"]) == 2
    assert "torchrun" in capsys.readouterr().err
