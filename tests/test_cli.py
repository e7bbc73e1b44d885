import subprocess
import sys

import fed8
from fed8.cli import main


def test_init_writes_loadable_commented_config(tmp_path, capsys):
    p = tmp_path / "f.toml"
    assert main(["init", str(p)]) == 0
    text = p.read_text()
    assert "# Dirichlet concentration" in text and "[train]" in text
    assert fed8.load_config(p) == fed8.Config()
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
    assert "torch 2." in out and "mnist10k" in out and "resnet20" in out


def test_run_and_report(tmp_path, small, capsys):
    args = ["run", "--out", str(tmp_path / "r")] + [a for s in small for a in ("--set", s)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "fed8 run summary" in out and "eval accuracy" in out
    (tmp_path / "r/report.html").unlink()
    assert main(["report", str(tmp_path / "r")]) == 0
    html = (tmp_path / "r/report.html").read_text()
    assert "data:image/png;base64," in html and "Metrics per round" in html
    assert main(["report", str(tmp_path / "nope")]) == 1


def test_import_is_cheap():
    code = "import sys, fed8; print(sorted(m for m in ('torch', 'matplotlib', 'rich', 'onnxruntime') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
