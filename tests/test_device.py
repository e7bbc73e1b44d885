"""run.device: where clients train and models are evaluated (the server side stays on the CPU)."""

import pytest
import torch

import fed8
from fed8.cli import main
from fed8.errors import ConfigError

no_cuda = not torch.cuda.is_available()
gpu = pytest.mark.skipif(no_cuda, reason="needs a CUDA GPU")


@pytest.mark.skipif(not no_cuda, reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_clear_user_error(tmp_path, small, capsys):
    with pytest.raises(ConfigError, match="run.device = 'cuda' but this torch build sees no CUDA device"):
        fed8.run(fed8.load_config(None, small + ["run.device=cuda"]), out=tmp_path / "a", report=False)
    assert main(["run", "--out", str(tmp_path / "b"), "--set", "run.device=cuda"]) == 2
    assert "run.device = 'auto' or 'cpu'" in capsys.readouterr().err


def test_auto_resolves_to_what_the_machine_has():
    from fed8._device import resolve_device

    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu").type == "cpu"


@gpu
@pytest.mark.parametrize("batching", ["off", "auto"])
def test_a_cuda_run_matches_the_cpu_run_within_tolerance_and_writes_the_same_files(tmp_path, small, batching):
    from fed8._io import load_tensors

    sets = small + [f"run.client_batching={batching}", "quantize.enabled=false"]
    cpu = fed8.run(fed8.load_config(None, sets + ["run.device=cpu"]), out=tmp_path / "cpu", report=False)
    cuda = fed8.run(fed8.load_config(None, sets + ["run.device=cuda"]), out=tmp_path / "cuda", report=False)
    assert abs(cpu.final["eval_accuracy"] - cuda.final["eval_accuracy"]) <= 0.02
    a, b = load_tensors(cpu.run_dir / "model.safetensors"), load_tensors(cuda.run_dir / "model.safetensors")
    assert a.keys() == b.keys() and all(b[k].device.type == "cpu" and b[k].dtype == a[k].dtype for k in a)
    assert max(float((a[k].float() - b[k].float()).abs().max()) for k in a) < 1e-2
    assert sorted(p.name for p in cpu.run_dir.iterdir()) == sorted(p.name for p in cuda.run_dir.iterdir())
