"""Stopping fed8: SIGTERM and SIGHUP stop a command as Ctrl-C does (fed8._process), and the Flower processes
of a fed8 killed outright are stopped by the next federation (fed8.flower.launcher.stop_leftovers)."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import wait_for_round

from fed8 import cli
from fed8._process import Terminated, exit_status, stop_on_signals


def _defaults():
    """Start each case from the default dispositions (a test runner may have its own), restored afterwards."""
    return {s: signal.signal(s, signal.SIG_DFL) for s in (signal.SIGTERM, signal.SIGHUP)}


@pytest.fixture
def default_signals():
    saved = _defaults()
    yield
    for s, h in saved.items():
        signal.signal(s, h)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_in_the_block_raises_terminated_once_and_the_handlers_come_back(default_signals, sig):
    with stop_on_signals() as names:
        assert names == ["SIGTERM", "SIGHUP"]  # checked before any signal is sent: the default would end pytest
        with pytest.raises(Terminated) as caught:
            os.kill(os.getpid(), sig)
            time.sleep(5)  # the handler raises between bytecodes, long before this ends
        assert caught.value.signum == sig and isinstance(caught.value, KeyboardInterrupt)
        assert exit_status(caught.value) == 128 + sig
        assert signal.getsignal(sig) is signal.SIG_DFL  # a second one ends the process at once
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and signal.getsignal(signal.SIGHUP) is signal.SIG_DFL


def test_an_ignored_signal_stays_ignored_and_a_callers_handler_is_kept(default_signals):
    mine = lambda signum, frame: None  # noqa: E731
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nohup
    signal.signal(signal.SIGTERM, mine)
    with stop_on_signals() as names:
        assert names == []
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is mine
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is mine


def test_outside_the_main_thread_nothing_is_installed(default_signals):
    seen = []

    def worker():
        with stop_on_signals() as names:
            seen.append(names)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [[]] and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_ctrl_c_keeps_its_status():
    assert exit_status(KeyboardInterrupt()) == 130


def test_a_command_stopped_by_sigterm_says_so_in_one_line_and_exits_143(default_signals, monkeypatch, capsys):
    def info(args):
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL, "main() installed no handler"  # else: kill pytest
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        return 0

    monkeypatch.setattr(cli, "_cmd_info", info)
    assert cli.main(["info"]) == 143
    assert capsys.readouterr().err == "fed8 info: stopped by SIGTERM\n"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # main() gave this process its handler back


@pytest.mark.slow
def test_fed8_run_stopped_by_sigterm_keeps_its_rounds_and_says_how_to_continue(tmp_path, small):
    sets = [a for s in small + ["train.rounds=10"] for a in ("--set", s)]
    run = tmp_path / "r"
    p = subprocess.Popen([sys.executable, "-m", "fed8.cli", "run", *sets, "--out", str(run), "--no-report"],
                         env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, preexec_fn=_defaults)
    wait_for_round(run, p, 120)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 143, out
    assert "stopped by SIGTERM" in out and f"fed8 run --resume {run}" in " ".join(out.split()) and "Traceback" not in out
    done = len((run / "metrics.jsonl").read_text().splitlines())
    assert 1 <= done < 10
    r = subprocess.run([sys.executable, "-m", "fed8.cli", "run", "--resume", str(run), "--no-report"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 10


def test_leftovers_of_a_killed_federation_are_stopped_and_nothing_else(tmp_path, caplog):
    from fed8.flower.launcher import stop_leftovers

    home, other = (tmp_path / "run/flwr").resolve(), (tmp_path / "other/flwr").resolve()
    left = subprocess.Popen(["sleep", "60"], env={**os.environ, "FLWR_HOME": str(home)}, start_new_session=True)
    bystander = subprocess.Popen(["sleep", "60"], env={**os.environ, "FLWR_HOME": str(other)}, start_new_session=True)
    try:
        caplog.set_level("WARNING", logger="fed8")
        assert stop_leftovers(home) == 1
        assert left.wait(timeout=10) == -signal.SIGTERM  # TERM first
        assert bystander.poll() is None  # another run directory's federation is not ours to stop
        assert "1 Flower processes left running" in caplog.text
        assert stop_leftovers(home) == 0
    finally:
        for p in (left, bystander):
            p.kill()
            p.wait()


def test_one_writer_per_run_directory(tmp_path, small, capsys):
    import fed8
    from fed8.errors import CheckpointError
    from fed8.rundir import RunDir

    run = tmp_path / "r"
    fed8.run(fed8.load_config(None, small + ["train.rounds=1"]), out=run, report=False)
    before = {f: (run / f).read_bytes() for f in ("config.toml", "metrics.jsonl", "checkpoints/state.json")}
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom fed8.rundir import RunDir\n"
                               f"with RunDir({str(run)!r}).lock('fed8 run'):\n    print('held', flush=True)\n"
                               "    time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CheckpointError, match=rf"in use by fed8 run \(pid {holder.pid}\)"):
            fed8.run(resume=run, overrides=["train.rounds=2"], report=False)
        assert cli.main(["run", "--resume", str(run), "--set", "train.rounds=2", "--no-report"]) == 2
        assert f"pid {holder.pid}" in capsys.readouterr().err
        assert cli.main(["quantize", str(run)]) == 2  # it would update summary.json beside the writer
        assert f"pid {holder.pid}" in capsys.readouterr().err and not (run / "deploy").exists()
        assert {f: (run / f).read_bytes() for f in before} == before  # refused before anything was written
    finally:
        holder.kill()
        holder.wait()
    # the kernel dropped the killed holder's lock: the run goes on, and releases the lock when it ends
    assert len(fed8.run(resume=run, overrides=["train.rounds=2"], report=False).metrics) == 2
    with RunDir(run).lock():
        pass


def test_of_two_runs_starting_on_one_folder_one_is_refused_and_the_winners_config_stays(tmp_path, monkeypatch):
    # a sweep started in one second: both find the default folder free, then both publish a config
    import fed8.rundir
    from fed8.config import Config
    from fed8.errors import CheckpointError
    from fed8.rundir import RunDir

    run, real_to_toml = tmp_path / "r", fed8.rundir.to_toml
    winner = Config().replace(["train.lr=0.01"])

    def other_process_publishes_first(cfg):
        monkeypatch.setattr(fed8.rundir, "to_toml", real_to_toml)
        RunDir.create(run, winner)  # between this process's check and its publish
        return real_to_toml(cfg)

    monkeypatch.setattr(fed8.rundir, "to_toml", other_process_publishes_first)
    with pytest.raises(CheckpointError, match="already holds a run"):
        RunDir.create(run, Config().replace(["train.lr=0.02"]))
    assert RunDir.open(run).load_config() == winner
    assert [p.name for p in run.iterdir()] == ["config.toml"]  # no temporary file left behind


def test_a_federation_is_refused_on_a_run_directory_in_use(tmp_path, small):
    pytest.importorskip("flwr", reason="the Flower extra is not installed (pip install 'fed8[flower]')")
    import fed8
    from fed8._io import exclusive
    from fed8.errors import CheckpointError
    from fed8.flower.launcher import run_federation
    from fed8.rundir import RunDir

    run = (tmp_path / "r").resolve()
    fed8.run(fed8.load_config(None, small + ["train.rounds=1"]), out=run, report=False)
    (run / "flwr").mkdir(exist_ok=True)
    with exclusive(run / "flwr/.lock", "fed8 federation (pid 4242)", RuntimeError):  # another live launcher
        with pytest.raises(CheckpointError, match=r"in use by fed8 federation \(pid 4242\), which runs its federation"):
            run_federation(run, 4, timeout_s=5)
    with RunDir(run).lock("fed8 run"):  # a 'fed8 run --resume' of the same folder, training now
        with pytest.raises(CheckpointError, match=rf"in use by fed8 run \(pid {os.getpid()}\)"):
            run_federation(run, 4, timeout_s=5)
    assert not list((run / "flwr").glob("*.log"))  # refused before any Flower process started


def test_a_full_disk_stops_the_run_with_the_resume_command(tmp_path, small, monkeypatch, capsys):
    import errno

    import fed8
    from fed8.rundir import RunDir

    save = RunDir.save_checkpoint

    def full_at_round_2(self, rnd, *a, **k):
        if rnd == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.checkpoints / "round-000002.safetensors"))
        return save(self, rnd, *a, **k)

    monkeypatch.setattr(RunDir, "save_checkpoint", full_at_round_2)
    run = tmp_path / "r"
    sets = [a for s in small + ["train.rounds=3"] for a in ("--set", s)]
    assert cli.main(["run", *sets, "--out", str(run), "--no-report"]) == 1  # the machine's problem, not a usage error
    err = " ".join(capsys.readouterr().err.split())
    assert "the disk is full writing" in err and "round-000002.safetensors" in err
    assert f"Free some space, then continue with: fed8 run --resume {run}" in err and "Check the paths" not in err
    monkeypatch.setattr(RunDir, "save_checkpoint", save)
    assert RunDir(run).load_checkpoint()["round"] == 1
    assert len(fed8.run(resume=run, report=False).metrics) == 3

    # before the first round: nothing kept, and the message says so
    monkeypatch.setattr(RunDir, "save_checkpoint", lambda self, rnd, *a, **k: full_at_round_2(self, 2))
    assert cli.main(["run", *sets, "--out", str(tmp_path / "r0"), "--no-report"]) == 1
    assert "nothing was kept" in capsys.readouterr().err and not (tmp_path / "r0").exists()
