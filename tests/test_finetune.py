"""Fine-tuned accuracy (eval.finetune_epochs): against hand-written local SGD, resume, and the privacy refusal."""

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fed8
from fed8._io import load_tensors
from fed8._rng import FINETUNE, torch_generator
from fed8.errors import ConfigError
from fed8.federated.finetune import FINETUNED_KEYS
from fed8.stages.federation import prepare

from conftest import interrupted_run

# two label shards per client: one global model serves each client's two digits poorly, fine-tuning helps
BASE = ["data.subset=600", "data.num_clients=6", "train.fraction=0.5", "train.rounds=3", "run.threads=1",
        "quantize.enabled=false", "model.name=mlp", "model.hidden=32", "data.partition=shards",
        "data.shards_per_client=2", "eval.finetune_epochs=2", "train.lr_schedule=exponential", "train.lr_decay=0.5"]


def _by_hand(cfg, state) -> list[float]:
    """Each client: 2 epochs of torch SGD from the final model at the last round's rate, shuffled by (seed, FINETUNE,
    client), then its accuracy on its local test split."""
    prep = prepare(cfg)
    t, accs = cfg.train, []
    lr = t.lr * t.lr_decay ** (t.rounds - 1)
    for k, data in enumerate(prep.simulation.clients):
        model = copy.deepcopy(prep.simulation.model)
        model.load_state_dict(state)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=t.momentum)
        g = torch_generator(cfg.run.seed, FINETUNE, k)
        model.train()
        for _ in range(2):
            perm = torch.randperm(data.num_train, generator=g)
            for i in range(0, data.num_train, t.batch_size):
                idx = perm[i:i + t.batch_size]
                loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            if data.y_test.numel():
                accs.append(float((model(data.x_test).argmax(1) == data.y_test).double().mean()))
    return accs


def test_every_client_fine_tunes_the_final_model_and_reports_its_accuracy(tmp_path):
    cfg = fed8.load_config(None, BASE)
    result = fed8.run(cfg, out=tmp_path / "run", report=False)
    rows = result.metrics
    assert all(k not in r for r in rows[:-1] for k in FINETUNED_KEYS)  # the last round only
    last = rows[-1]
    accs = _by_hand(cfg, load_tensors(tmp_path / "run/model.safetensors"))
    assert last["client_accuracy_finetuned_mean"] == pytest.approx(np.mean(accs), abs=1e-6)
    assert last["client_accuracy_finetuned_p10"] == pytest.approx(np.percentile(accs, 10), abs=1e-6)
    assert last["client_accuracy_finetuned_min"] == pytest.approx(min(accs), abs=1e-6)
    assert last["client_accuracy_finetuned_mean"] > last["client_accuracy_mean"] + 0.05  # adapting to two digits
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["final"]["client_accuracy_finetuned_mean"] == last["client_accuracy_finetuned_mean"]
    from fed8.cli import main

    assert main(["report", str(tmp_path / "run")]) == 0
    assert f"after fine-tuning (eval.finetune_epochs)</td><td>{last['client_accuracy_finetuned_mean']:.4f}" in \
        (tmp_path / "run/report.html").read_text()
    # the run's model is the global one: fine-tuning changed nothing the server keeps
    plain = fed8.run(fed8.load_config(None, BASE + ["eval.finetune_epochs=0"]), out=tmp_path / "plain", report=False)
    assert (tmp_path / "plain/model.safetensors").read_bytes() == (tmp_path / "run/model.safetensors").read_bytes()
    assert all(k not in plain.metrics[-1] for k in FINETUNED_KEYS)


def test_a_resumed_run_reports_the_same_fine_tuned_accuracy(tmp_path):
    cfg = fed8.load_config(None, BASE)
    full = fed8.run(cfg, out=tmp_path / "full", report=False)
    interrupted_run(cfg, tmp_path / "cut", 2)
    resumed = fed8.run(resume=tmp_path / "cut", report=False)
    assert {k: resumed.metrics[-1][k] for k in FINETUNED_KEYS} == {k: full.metrics[-1][k] for k in FINETUNED_KEYS}


def test_under_dp_it_needs_client_reports_on(tmp_path):
    dp = ["privacy.dp=central", "privacy.noise_multiplier=0.5", "privacy.weighting=uniform"]
    with pytest.raises(ConfigError, match="eval.finetune_epochs = 2 needs client reports.*client_reports = 'on'"):
        fed8.run(fed8.load_config(None, BASE + dp), out=tmp_path / "x", report=False)
    on = fed8.run(fed8.load_config(None, BASE + dp + ["privacy.client_reports=on"]), out=tmp_path / "on", report=False)
    assert on.metrics[-1]["client_accuracy_finetuned_mean"] is not None
    assert "also after fine-tuning" in on.summary["privacy"]["statement"]
