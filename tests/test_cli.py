import os
import subprocess
import sys

import pytest
from pathlib import Path

import fed8
from fed8.cli import main


def test_init_writes_loadable_commented_config(tmp_path, capsys):
    p = tmp_path / "f.toml"
    assert main(["init", str(p)]) == 0
    text = p.read_text()
    assert "# Dirichlet concentration" in text and "[train]" in text
    assert fed8.load_config(p) == fed8.Config()
    # "auto" values stay "auto" in the template, so a budget set in the file still turns on central DP
    assert 'dp = "auto"' in text and 'adaptive_clipping = "auto"' in text
    p.write_text(text.replace("target_epsilon = 0.0", "target_epsilon = 8.0"))
    assert fed8.load_config(p).privacy.dp == "central"
    p.write_text(text)
    assert main(["init", str(p)]) == 2  # refuses to overwrite
    assert "exists" in capsys.readouterr().err


def test_config_errors_exit_2_with_message(tmp_path, capsys):
    assert main(["run", "--set", "data.alpha=-1", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "data.alpha must be a float > 0.0; got -1.0" in err
    assert main(["run", "--set", "train.nope=1"]) == 2
    assert "unknown key train.nope" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["run", "--set", "data.source=idx", "--out", str(tmp_path / "y")]) == 2
    assert "data.path is empty" in capsys.readouterr().err


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch 2." in out and "mnist10k" in out and "resnet20" in out and "vit_tiny" in out
    assert "FP8 compute (torch_float8_e4m3fn): " in out and ("8.9" in out or "yes" in out)
    from fed8._device import native_bfloat16, resolve_device

    line = next(x for x in out.splitlines() if x.startswith("bfloat16 compute (train.precision = bfloat16) on the "))
    assert line.endswith(": native" if native_bfloat16(resolve_device("auto")) else ": emulated, slower than float32")


def test_run_and_report(tmp_path, small, capsys):
    run_dir = tmp_path / "r[un]"  # brackets print as typed: no rich markup in what fed8 prints
    args = ["run", "--out", str(run_dir)] + [a for s in small for a in ("--set", s)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "fed8 run summary" in out and "eval accuracy" in out
    assert f"run directory {run_dir}" in out.replace("\n", "") and f"report: {run_dir / 'report.html'}" in out
    (run_dir / "report.html").unlink()
    assert main(["report", str(run_dir)]) == 0
    html = (run_dir / "report.html").read_text()
    assert "data:image/png;base64," in html and "Metrics per round" in html
    per_round = html[html.index("Metrics per round"):html.index("<h2>Configuration")]
    assert all(f"<th>{h}</th>" in per_round for h in ("eval acc", "clients mean", "uplink", "downlink", "s"))
    assert "<th>epsilon</th>" not in per_round  # columns without values (no DP here) are left out
    assert main(["report", str(tmp_path / "nope")]) == 2  # a user error: exit 2
    capsys.readouterr()
    assert main(["run", "--resume", str(run_dir), "--no-report"]) == 0  # nothing left to train: the bar starts done
    out = capsys.readouterr().out
    assert "round 2/2" in out and " acc " in out and "preparing data and model" not in out
    assert main(args) == 2  # refused before any round: the error, and no progress bar left above it
    captured = capsys.readouterr()
    assert "already holds a run" in captured.err and "round 0/" not in captured.out


def test_quantize_notes_and_failures_print_as_written(capsys):
    """An install hint such as pip install 'fed8[litert]' keeps its brackets (rich markup would eat them)."""
    from fed8._terminal import console as _console, print_deploy as _print_deploy
    from fed8.stages.quantize import NOTE_LITERT_SKIPPED

    row = {"format": "float32", "runtime": "onnxruntime", "bytes": 6655332, "eval_accuracy": 0.98,
           "accuracy_delta_points": 0.0, "top1_agreement_with_float32": 1.0, "on_device": None,
           "latency_ms_batch1": 0.2, "latency_ms_batch256": 30.0, "status": "ok", "layers_kept_float": []}
    failed = {**row, "format": "int8", "status": "failed"}
    _print_deploy(_console(), {"formats": [row, failed], "failed": ["int8[per_tensor]"], "notes": [NOTE_LITERT_SKIPPED]},
                  Path("runs/a[b]/deploy/quantization.json"))
    out = capsys.readouterr().out
    assert "pip install 'fed8[litert]'" in out
    assert "int8 FAILED" in out and "int8[per_tensor]: fails max_accuracy_drop" in out
    assert "wrote runs/a[b]/deploy/quantization.json" in out


def test_run_summary_prints_the_quantize_stage_notes(tmp_path, capsys):
    """fed8 run ends with the deploy tables: a format the stage skipped (LiteRT without its extra) must say so
    there, with the install command, and not only in quantization.json and the HTML report."""
    import json

    from fed8._terminal import console as _console, print_summary as _print_summary
    from fed8.stages.quantize import NOTE_LITERT_SKIPPED

    row = {"format": "float32", "runtime": "onnxruntime", "bytes": 6655332, "eval_accuracy": 0.98,
           "accuracy_delta_points": 0.0, "top1_agreement_with_float32": 1.0, "on_device": None,
           "latency_ms_batch1": 0.2, "latency_ms_batch256": 30.0, "status": "ok", "layers_kept_float": []}
    kept = {**row, "format": "int8", "layers_kept_float": [{"node": "/fc2/Gemm", "sqnr_db": 12.5}]}
    s = {"final": {"eval_accuracy": 0.98, "eval_loss": 0.1, "client_accuracy_mean": None, "client_accuracy_p10": None,
                   "client_accuracy_min": None}, "model": "cnn", "parameters": 10, "rounds": 1,
         "total_uplink_bytes": 1, "total_downlink_bytes": 1, "uplink_ratio_to_float32": 1.0,
         "downlink_ratio_to_float32": 1.0, "uplink_codec": "float32", "downlink_codec": "float32", "train_seconds": 1.0,
         "deploy": [row, kept]}
    (tmp_path / "deploy").mkdir()
    (tmp_path / "deploy" / "quantization.json").write_text(json.dumps(
        {"formats": [row, kept], "failed": [], "notes": [NOTE_LITERT_SKIPPED]}))
    _print_summary(_console(), tmp_path, s, "fed8 run summary", report=False)
    out = capsys.readouterr().out.replace("\n", " ")
    assert "note: LiteRT (.tflite) formats were listed" in out and "pip install 'fed8[litert]'" in out
    assert "int8: kept /fc2/Gemm in float (local SQNR 12.5 dB)" in out
    (tmp_path / "deploy" / "quantization.json").write_text("{not json")  # a damaged file: the tables still print
    _print_summary(_console(), tmp_path, s, "fed8 run summary", report=False)
    out = capsys.readouterr().out
    assert "8-bit deployment: accuracy" in out and "note:" not in out


@pytest.mark.parametrize("user", [None, "ACTIVE"])
def test_cli_sets_passive_openmp_wait_policy_before_torch_loads(user):
    """libgomp (torch's OpenMP) prints its settings (OMP_DISPLAY_ENV) when torch loads it: unset, it spins
    300,000 times at a barrier (and shows PASSIVE); PASSIVE spins 0 times; ACTIVE 3e10 times."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["OMP_DISPLAY_ENV"] = "VERBOSE"
    if user:
        env["OMP_WAIT_POLICY"] = user  # a user's own choice is kept
    r = subprocess.run([sys.executable, "-c", "import sys; from fed8.cli import main; sys.exit(main(['info']))"],
                       capture_output=True, text=True, check=True, env=env)
    shown = r.stdout + r.stderr
    assert f"OMP_WAIT_POLICY = '{user or 'PASSIVE'}'" in shown
    assert f"GOMP_SPINCOUNT = '{'30000000000' if user else '0'}'" in shown
    assert f"OpenMP wait policy: {user or 'PASSIVE'}" in r.stdout


def test_flower_processes_get_the_wait_policy_and_malloc_thresholds(monkeypatch, tmp_path):
    from fed8.flower.launcher import flower_env

    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                 "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"):
        monkeypatch.delenv(name, raising=False)
    env = flower_env(tmp_path)
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and env["MALLOC_MMAP_THRESHOLD_"] == str(1 << 30)
    assert float(env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"]) < 1  # Flower's default is 1 s per message per node
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    monkeypatch.setenv("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "2")
    env = flower_env(tmp_path)
    assert env["OMP_WAIT_POLICY"] == "ACTIVE" and env["MALLOC_TRIM_THRESHOLD_"] == "0"
    assert env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] == "2"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setenv("GOMP_SPINCOUNT", "300000")  # libgomp's default spin count, asked for: no policy on top
    assert "OMP_WAIT_POLICY" not in flower_env(tmp_path)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_malloc_thresholds_stop_refaulting_freed_buffers():
    """A 40 MiB buffer (an evaluation batch's activations) freed and allocated again: glibc's defaults map fresh
    pages every time (above the 32 MiB ceiling of its dynamic mmap threshold); after tune_malloc it is reused."""
    code = (
        "import resource, sys, torch\n"
        "from fed8._process import tune_malloc\n"
        "if sys.argv[1] == '1': assert tune_malloc()\n"
        "for _ in range(20): torch.empty(10 << 20).fill_(1)\n"  # the heap settles (grows to fit) first
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(20): torch.empty(10 << 20).fill_(1)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    faults = {on: int(subprocess.run([sys.executable, "-c", code, on], capture_output=True, text=True, check=True,
                                     env=env).stdout) for on in ("0", "1")}
    pages = 20 * (40 << 20) // 4096
    assert faults["1"] < 0.1 * pages < faults["0"], faults


def test_import_is_cheap():
    code = "import sys, fed8; print(sorted(m for m in ('torch', 'matplotlib', 'rich', 'onnxruntime') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_progress_line_takes_missing_metrics():
    from fed8._terminal import progress_line

    row = {"round": 1, "train_loss": 0.5, "eval_accuracy": 0.9, "client_accuracy_mean": None,
           "client_accuracy_min": None, "epsilon": None}
    assert progress_line(row) == "loss 0.500 acc 0.9000"
    full = {**row, "client_accuracy_mean": 0.8, "client_accuracy_min": 0.5, "epsilon": 2.25}
    assert progress_line(full) == "loss 0.500 acc 0.9000 clients 0.800/0.500 eps 2.25"
    assert len("round 20/20 " + "-" * 8 + " 0:01:10 " + progress_line(full)) <= 80  # an 80-column terminal


def test_run_without_local_test_images(tmp_path, small, capsys):
    args = ["run", "--out", str(tmp_path / "r"), "--no-report"] + [a for s in small for a in ("--set", s)]
    assert main(args + ["--set", "data.test_fraction=0"]) == 0
    assert "fed8 run summary" in capsys.readouterr().out


def _err(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_path_and_resource_errors_exit_2_without_traceback(tmp_path, small, capsys):
    sets = [a for s in small for a in ("--set", s)]
    (tmp_path / "file").write_text("x")
    assert main(["run", "--out", str(tmp_path / "file/run")] + sets) == 2
    assert "cannot create the run directory" in _err(capsys)
    assert main(["run", "--set", f"run.out={tmp_path / 'file'}"] + sets) == 2
    assert "is a part of the path a file" in _err(capsys)
    assert main(["run", str(tmp_path)] + sets) == 2
    assert "is a folder" in _err(capsys)
    assert main(["init", str(tmp_path), "--force"]) == 2
    assert "is a folder" in _err(capsys)
    assert main(["run", "--set", "model.name=mlp", "--set", "model.hidden=1000000000"]) == 2
    assert "model.hidden must be" in _err(capsys)
    assert main(["init", str(tmp_path / "file/fed8.toml")]) == 2
    assert "cannot use" in _err(capsys)


def test_out_of_memory_is_a_user_error(tmp_path, small, capsys, monkeypatch):
    import fed8.stages.train

    def alloc(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(fed8.stages.train, "prepare", alloc)
    assert main(["run", "--out", str(tmp_path / "r")] + [a for s in small for a in ("--set", s)]) == 2
    assert "out of memory" in _err(capsys) and not (tmp_path / "r").exists()


def test_a_run_that_fails_before_round_1_leaves_no_folder(tmp_path, small, capsys):
    import numpy as np

    np.savez(tmp_path / "one.npz", x_train=np.zeros((8, 5, 5), np.uint8), y_train=np.zeros(8, int))
    sets = [a for s in small + ["data.source=npz", f"data.path={tmp_path / 'one.npz'}"] for a in ("--set", s)]
    assert main(["run", "--out", str(tmp_path / "r")] + sets) == 2
    assert "needs at least 2" in _err(capsys)
    assert not (tmp_path / "r").exists()
    (tmp_path / "mine/checkpoints").mkdir(parents=True)  # a folder of the user's: what was there stays
    (tmp_path / "mine/notes.txt").write_text("keep")
    assert main(["run", "--out", str(tmp_path / "mine")] + sets) == 2
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["checkpoints", "notes.txt"]


def test_resume_may_not_go_back(tmp_path, small, capsys):
    sets = [a for s in small for a in ("--set", s)]
    assert main(["run", "--out", str(tmp_path / "r"), "--no-report"] + sets) == 0
    capsys.readouterr()
    assert main(["run", "--resume", str(tmp_path / "r"), "--set", "train.rounds=1", "--no-report"]) == 2
    assert "below the 2 rounds" in _err(capsys)
    assert fed8.load_config(tmp_path / "r/config.toml").train.rounds == 2  # nothing changed


def test_run_files_follow_the_umask(tmp_path, small):
    import os

    old = os.umask(0o022)
    try:
        fed8.run(fed8.load_config(None, small), out=tmp_path / "r", report=False)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "r").rglob("*") if p.is_file()}
    assert modes and set(modes.values()) == {0o644}, modes


def test_a_newline_in_a_path_keeps_config_toml_valid(tmp_path, small):
    import numpy as np

    from fed8.data import load_splits

    train = load_splits(fed8.load_config(None, small).data).train
    data = tmp_path / "a\nb\"c.npz"
    np.savez(data, x_train=train.images[:200].numpy(), y_train=train.labels[:200].numpy())
    cfg = fed8.load_config(None, small + ["run.out='unused'", "data.source=npz"]).replace({"data.path": str(data)})
    fed8.run(cfg, out=tmp_path / "r", report=False)
    assert fed8.load_config(tmp_path / "r/config.toml").data.path == str(data)
    fed8.run(resume=tmp_path / "r", overrides=["train.rounds=3"], report=False)


def test_decompression_bomb_and_bad_quantize_out_are_refused(tmp_path, small, capsys, monkeypatch):
    from PIL import Image

    stages: list[str] = []  # what fed8 run's progress line shows after the rounds
    fed8.run(fed8.load_config(None, small + ["quantize.enabled=true", "quantize.formats=int8",
                                             "quantize.openvino=off", "train.rounds=1"]), out=tmp_path / "r",
             report=False, stage=stages.append)
    assert stages[0] == "quantize: preparing data" and "quantize: quantizing int8" in stages
    assert "quantize: measuring int8" in stages and "writing the report" not in stages
    Image.new("L", (40, 40)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1,600 pixels > 2 x the limit: Pillow's bomb error
    assert main(["predict", str(tmp_path / "r/deploy/int8.onnx"), str(tmp_path / "bomb.png")]) == 2
    assert "too large to decode safely" in _err(capsys)
    assert main(["quantize", str(tmp_path / "r"), "--out", str(tmp_path / "bomb.png/deploy")]) == 2
    assert "cannot use" in _err(capsys)


@pytest.mark.parametrize("command", [["info"], ["certs", "{tmp}/certs"]])  # printed with rich / with print()
def test_a_reader_that_stops_reading_ends_the_command_quietly(tmp_path, command):
    # `fed8 ... | head`: the pipe's reader is gone before fed8 writes (closed here first, so it never races)
    read_end, write_end = os.pipe()
    os.close(read_end)
    args = [a.format(tmp=tmp_path) for a in command]
    try:
        p = subprocess.run([sys.executable, "-m", "fed8.cli", *args], stdout=write_end, stderr=subprocess.PIPE,
                           text=True, timeout=120)
    finally:
        os.close(write_end)
    assert p.returncode == 1 and p.stderr == ""  # no "cannot use: Broken pipe", no traceback


def test_another_broken_pipe_is_still_reported(monkeypatch, capsys):
    import fed8.cli as cli

    def broken(args):
        raise BrokenPipeError(32, "Broken pipe", "/tmp/some.sock")  # not our output: a child's pipe, a socket

    monkeypatch.setattr(cli, "_cmd_info", broken)
    assert main(["info"]) == 2
    assert "cannot use '/tmp/some.sock': Broken pipe" in capsys.readouterr().err


def test_predict_with_a_run_directory_names_its_models(tmp_path, capsys):
    (tmp_path / "run/deploy").mkdir(parents=True)
    img = tmp_path / "x.png"
    img.write_bytes(b"")
    assert main(["predict", str(tmp_path / "run"), str(img)]) == 2
    err = capsys.readouterr().err
    assert "is a directory, not a model file" in err and f"fed8 quantize {tmp_path / 'run'}" in err
    for name in ("fp32.onnx", "int8.onnx"):
        (tmp_path / "run/deploy" / name).write_bytes(b"")
    assert main(["predict", str(tmp_path / "run"), str(img)]) == 2
    err = capsys.readouterr().err
    assert f"e.g. {tmp_path / 'run/deploy/int8.onnx'} (there: fp32.onnx, int8.onnx)" in err


def test_a_federation_with_a_stray_data_path_is_refused_before_anything_starts(tmp_path, capsys):
    args = ["federation", "--out", str(tmp_path / "fed"), "--set", f"data.path={tmp_path}", "--set", "data.num_clients=2"]
    assert main(args) == 2
    assert "is not read with data.source = 'mnist10k'" in capsys.readouterr().err
    assert not (tmp_path / "fed").exists()


def test_a_refused_combination_names_no_run_directory(tmp_path, capsys):
    assert main(["run", "--set", "server.fednova=true", "--set", "server.robust=median", "--out",
                 str(tmp_path / "r")]) == 2
    captured = capsys.readouterr()
    assert "server.fednova = true with server.robust = 'median'" in captured.err
    assert "run directory" not in captured.out and not (tmp_path / "r").exists()
