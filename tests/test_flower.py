"""fed8 on Flower's deployment engine: real SuperLink and SuperNode processes on 127.0.0.1."""

import json
import os
from pathlib import Path

import pytest

import fed8
from conftest import wait_for_round
from fed8.cli import main
from fed8.errors import MissingExtraError

pytest.importorskip("flwr", reason="the Flower extra is not installed (pip install 'fed8[flower]')")

SMALL = ["data.subset=300", "data.num_clients=3", "train.rounds=2", "train.local_epochs=1", "train.fraction=1.0",
         "run.threads=1", "compression.uplink=int8", "quantize.enabled=false"]
# the real-process test also carries what lives on the nodes' disks: delta-downlink references, EF residuals
RICH = SMALL + ["compression.downlink=int8", "compression.downlink_mode=delta", "compression.error_feedback=true"]
# ... and the deploy stage on the nodes (calibration statistics from them, the INT8 model evaluated on them).
# Each message costs a real node seconds (Flower's SuperNode polls every 3 s and starts a ClientApp process per
# message), so this test sends few: the last round only is evaluated, and minmax ranges need no histograms (the
# fake-grid tests in test_flower_fake.py cover every message kind)
DEPLOY = ["quantize.enabled=true", "quantize.formats=int8", "quantize.openvino=off", "quantize.calibration=minmax",
          "quantize.calibration_samples_per_client=32", "eval.every=0"]


def _processes_of(home: Path) -> list[int]:
    """PIDs of live (not zombie) processes started with FLWR_HOME = ``home`` (SuperLink, SuperNodes, apps)."""
    needle = f"FLWR_HOME={home}".encode()
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                zombie = (d / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
                if not zombie and needle in (d / "environ").read_bytes().split(b"\0"):
                    out.append(int(d.name))
            except OSError:
                pass
    return out


@pytest.mark.slow
def test_federation_gives_the_simulation_model_and_leaves_no_process(tmp_path, capsys, monkeypatch):
    from rich.progress import Progress

    shown, update = [], Progress.update

    def spy(self, task, **kw):  # what the live line showed
        if "description" in kw:
            shown.append(kw["description"])
        return update(self, task, **kw)

    monkeypatch.setattr(Progress, "update", spy)
    sets = [a for s in RICH + DEPLOY for a in ("--set", s)]
    assert main(["federation", "--out", str(tmp_path / "fed")] + sets) == 0
    out = capsys.readouterr().out
    assert "round 2/2" in out and "fed8 federation summary" in out and "int8" in out
    # after the rounds the line follows the ServerApp's steps (its stage file), then shows the last round again
    assert any(s.startswith("quantize: ") for s in shown)  # polled twice a second: a quick step may go unseen
    assert shown[-1].startswith("loss ") and "quantize: " not in out
    assert _processes_of((tmp_path / "fed/flwr").resolve()) == []
    sim = fed8.run(fed8.load_config(None, RICH + DEPLOY), out=tmp_path / "sim", report=False)
    assert (tmp_path / "fed/model.safetensors").read_bytes() == (tmp_path / "sim/model.safetensors").read_bytes()
    assert (tmp_path / "fed/deploy/int8.onnx").read_bytes() == (tmp_path / "sim/deploy/int8.onnx").read_bytes()
    on = [json.loads((tmp_path / d / "deploy/quantization.json").read_text())["formats"][1]["on_device"]
          for d in ("fed", "sim")]
    assert on[0] == on[1] and on[0]["client_accuracy_mean"] > 0.1  # evaluated on the nodes, same numbers
    for k in range(3):  # each node kept its own state on its own disk
        assert len(list((tmp_path / f"fed/nodes/{k}").rglob(f"residuals/c{k:06d}-r000002.safetensors"))) == 1
        assert len(list((tmp_path / f"fed/nodes/{k}").rglob("downlink-r000002.safetensors"))) == 1
    rows = [json.loads(x) for x in (tmp_path / "fed/metrics.jsonl").read_text().splitlines()]
    for a, b in zip(rows, sim.metrics):  # same metrics, the counted bytes (int8 uplink payloads) included
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    assert rows[0]["uplink_bytes"] < 0.3 * rows[0]["uplink_bytes_float32"]


def test_federation_refuses_what_it_cannot_do_yet(tmp_path, capsys):
    assert main(["federation", "--set", "privacy.secure_aggregation=true", "--set", "privacy.secagg_dropout=0.2"]) == 2
    assert "does not take privacy.secagg_dropout = 0.2" in capsys.readouterr().err
    assert main(["federation", "--set", "federation.min_replies=30", "--set", "data.num_clients=3"]) == 2
    assert "federation.min_replies = 30 is above data.num_clients = 3" in capsys.readouterr().err
    assert main(["federation", "--nodes", "2", "--set", "data.num_clients=3", "--out", str(tmp_path / "x")]) == 2
    assert "one SuperNode per client" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_prepare_writes_the_run_and_the_app_for_real_machines_and_starts_nothing(tmp_path, capsys):
    import tomllib

    assert main(["federation", "--prepare", "--out", str(tmp_path / "run"), "--set", "data.num_clients=3"]) == 0
    out = capsys.readouterr().out
    app = tmp_path / "run/flwr/app/pyproject.toml"
    comp = tomllib.loads(app.read_text())["tool"]["flwr"]["app"]["components"]
    assert comp == {"serverapp": "fed8.flower.server_app:app", "clientapp": "fed8.flower.client_app:app"}
    assert (tmp_path / "run/config.toml").exists() and "flwr run" in out and "run-dir=" in out
    assert _processes_of((tmp_path / "run/flwr").resolve()) == [] and not (tmp_path / "run/flwr/superlink.log").exists()


def test_missing_flower_names_the_extra(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_flwr(name, *a, **k):
        if name == "flwr" or name.startswith("flwr."):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_flwr)
    from fed8.flower import require_flwr

    with pytest.raises(MissingExtraError, match=r"pip install 'fed8\[flower\]'"):
        require_flwr()
    assert os.environ.get("FLWR_HOME") is None  # the launcher never sets it in this process


@pytest.mark.network  # 2 minutes: with the fault tests (pytest -m network), to keep CI under 15 minutes
def test_ctrl_c_stops_every_process_and_resume_finishes_the_same_model(tmp_path):
    import signal
    import subprocess
    import sys

    sets = [a for s in SMALL + ["train.rounds=3"] for a in ("--set", s)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run = tmp_path / "fed"
    # SIGINT's default action restored in the child: a test run in the background inherits it ignored
    p = subprocess.Popen([sys.executable, "-m", "fed8.cli", "federation", "--out", str(run)] + sets, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for_round(run, p, 240)
    home = (run / "flwr").resolve()
    for pid in _processes_of(home):  # every Flower process runs with telemetry and update checks off
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert b"FLWR_TELEMETRY_ENABLED=0" in env and b"FLWR_DISABLE_UPDATE_CHECK=1" in env
    p.send_signal(signal.SIGINT)  # Ctrl-C after round 1 was committed
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 130 and "fed8 federation --resume" in out, out
    assert _processes_of((run / "flwr").resolve()) == []
    done = json.loads((run / "checkpoints/state.json").read_text())["round"]
    assert 1 <= done < 3
    assert main(["federation", "--resume", str(run)]) == 0
    assert _processes_of((run / "flwr").resolve()) == []
    sim = fed8.run(fed8.load_config(None, SMALL + ["train.rounds=3"]), out=tmp_path / "sim", report=False)
    assert (run / "model.safetensors").read_bytes() == (tmp_path / "sim/model.safetensors").read_bytes()
    assert [json.loads(x)["round"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert len(sim.metrics) == 3


@pytest.mark.network  # a minute: a real federation, stopped as timeout, a scheduler or docker stop would stop it
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_sigterm_or_sighup_stops_every_process_like_ctrl_c(tmp_path, sig):
    import contextlib
    import signal
    import subprocess
    import sys

    signum = getattr(signal, sig)
    sets = [a for s in SMALL + ["train.rounds=6"] for a in ("--set", s)]
    run = tmp_path / "fed"

    def default_dispositions():  # a test runner's own handlers are not the user's
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)

    p = subprocess.Popen([sys.executable, "-m", "fed8.cli", "federation", "--out", str(run)] + sets,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, preexec_fn=default_dispositions)
    home = (run / "flwr").resolve()
    try:
        wait_for_round(run, p, 240)
        assert len(_processes_of(home)) >= 5  # SuperLink, 3 SuperNodes, flwr run, the apps
        p.send_signal(signum)
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 128 + signum, out
        assert f"stopped by {sig}" in out and "fed8 federation --resume" in out and "Traceback" not in out, out
        assert _processes_of(home) == []  # without the handler Python ends at once and every Flower process lives on
        assert 1 <= len((run / "metrics.jsonl").read_text().splitlines()) < 6
    finally:  # whatever failed, this test stops what it started
        for pid in _processes_of(home) + ([p.pid] if p.poll() is None else []):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.network  # two minutes
def test_after_fed8_is_killed_the_next_federation_stops_its_orphans_first(tmp_path, caplog):
    import contextlib
    import signal
    import subprocess
    import sys

    sets = [a for s in SMALL + ["train.rounds=4"] for a in ("--set", s)]
    run = tmp_path / "fed"
    home = (run / "flwr").resolve()
    p = subprocess.Popen([sys.executable, "-m", "fed8.cli", "federation", "--out", str(run)] + sets,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_round(run, p, 240)
        p.kill()  # SIGKILL, as the OOM killer does: no handler runs
        p.wait()
        orphans = _processes_of(home)
        assert len(orphans) >= 5  # SuperLink, SuperNodes, flwr run, the apps: all still running
        caplog.set_level("WARNING", logger="fed8")
        assert main(["federation", "--resume", str(run)]) == 0
        assert "left running" in caplog.text and "killed" in caplog.text
        assert not any(pid in _processes_of(home) for pid in orphans) and _processes_of(home) == []
        fed8.run(fed8.load_config(None, SMALL + ["train.rounds=4"]), out=tmp_path / "sim", report=False)
        assert (run / "model.safetensors").read_bytes() == (tmp_path / "sim/model.safetensors").read_bytes()
        assert [json.loads(x)["round"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    finally:  # whatever failed, this test stops what it started
        for pid in _processes_of(home):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_server_error_stops_every_process_and_says_where_the_logs_are(tmp_path, capsys):
    sets = [a for s in SMALL + ["data.source=npz", f"data.path={tmp_path / 'missing.npz'}"] for a in ("--set", s)]
    assert main(["federation", "--out", str(tmp_path / "bad")] + sets) == 1  # the ServerApp fails on the data
    err = capsys.readouterr().err
    assert "did not finish" in err and "flwr-run.log" in err and "Traceback" not in err
    assert _processes_of((tmp_path / "bad/flwr").resolve()) == []
