"""privacy.client_reports: under DP or secure aggregation nothing from a client's data reaches the server outside
training, unless asked for, and then the privacy statement says what it does not cover."""

import pytest

import fed8

BASE = ["data.subset=600", "data.num_clients=6", "train.rounds=2", "train.fraction=1.0", "train.local_epochs=1",
        "model.name=mlp", "model.hidden=16", "run.threads=1"]
DP = ["privacy.dp=central", "privacy.noise_multiplier=0.3", "privacy.weighting=uniform"]
SECAGG = ["privacy.secure_aggregation=true"]
CLIENT_KEYS = ("client_accuracy_mean", "client_accuracy_p10", "client_accuracy_min")


def _run(tmp_path, name, sets, quantize=False):
    q = ["quantize.formats=int8"] if quantize else ["quantize.enabled=false"]
    return fed8.run(fed8.load_config(None, BASE + sets + q), out=tmp_path / name, report=False)


@pytest.mark.parametrize("privacy", [DP, SECAGG], ids=["central-dp", "secure-aggregation"])
def test_private_runs_keep_evaluation_and_calibration_on_the_clients_by_default(tmp_path, privacy):
    r = _run(tmp_path, "auto", privacy, quantize=True)
    assert all(row[k] is None for row in r.metrics for k in (*CLIENT_KEYS, "train_loss"))
    p = r.summary["privacy"]
    assert p["client_reports"] is False and "Not covered" not in p["statement"]
    import json

    deploy = json.loads((r.run_dir / "deploy" / "quantization.json").read_text())
    assert deploy["calibration"]["where"].startswith("server eval split") and "client_reports = off" in \
        deploy["calibration"]["where"]
    assert all(f["on_device"] is None for f in deploy["formats"])

    on = _run(tmp_path, "on", privacy + ["privacy.client_reports=on"], quantize=True)
    assert all(row[k] is not None for row in on.metrics for k in (*CLIENT_KEYS, "train_loss"))
    assert on.summary["privacy"]["client_reports"] is True
    assert "Not covered: each client also sent the server" in on.summary["privacy"]["statement"]
    deploy = json.loads((on.run_dir / "deploy" / "quantization.json").read_text())
    assert deploy["calibration"]["where"].startswith("clients") and deploy["formats"][1]["on_device"] is not None
    if privacy is SECAGG:  # the switch changes what the server learns, not what is trained (DP noise is secret)
        assert (r.run_dir / "model.safetensors").read_bytes() == (on.run_dir / "model.safetensors").read_bytes()


def test_runs_without_a_privacy_promise_report_as_before(tmp_path):
    r = _run(tmp_path, "plain", [])
    assert all(row[k] is not None for row in r.metrics for k in CLIENT_KEYS)
    assert r.summary["privacy"]["client_reports"] is True
    assert r.summary["privacy"]["statement"] == "No differential privacy; the server saw each client's update."
    off = _run(tmp_path, "off", ["privacy.client_reports=off"])
    assert all(row[k] is None for row in off.metrics for k in CLIENT_KEYS)
    assert (off.run_dir / "model.safetensors").read_bytes() == (r.run_dir / "model.safetensors").read_bytes()


def test_local_dp_refuses_weights_that_would_tell_the_server_each_sample_count(tmp_path):
    from fed8.errors import ConfigError

    with pytest.raises(ConfigError, match="learn each client's sample count up to the cap, which local DP"):
        _run(tmp_path, "x", ["privacy.dp=local", "privacy.noise_multiplier=1.0", "privacy.weighting=capped",
                             "privacy.weight_cap=50"])


def test_a_rejected_update_is_named_in_the_statement_as_not_covered(tmp_path):
    r = _run(tmp_path, "bad", DP + ["attack.fraction=0.34", "attack.kind=non_finite"])
    rejected = sum(row["rejected_updates"] for row in r.metrics)
    assert rejected > 0
    assert f"Not covered either: {rejected} client update(s) were not finite" in r.summary["privacy"]["statement"]
    assert "Not covered" not in _run(tmp_path, "good", DP).summary["privacy"]["statement"]


@pytest.mark.parametrize("privacy", [DP, SECAGG], ids=["central-dp", "secure-aggregation"])
def test_a_client_whose_training_diverged_sends_zeros_and_the_server_does_not_learn_it(tmp_path, privacy, caplog):
    diverge = ["train.lr=1e30"]  # every client's local SGD overflows to NaN
    r = _run(tmp_path, "auto", privacy + diverge)
    assert all(row["rejected_updates"] == 0 for row in r.metrics)
    assert "Not covered" not in r.summary["privacy"]["statement"]
    assert "update is not finite (its local training diverged); it sends zeros" in caplog.text
    told = _run(tmp_path, "on", privacy + diverge + ["privacy.client_reports=on"])  # the client tells, the server rejects
    assert sum(row["rejected_updates"] for row in told.metrics) == 12
    assert "Not covered either: 12 client update(s) were not finite" in told.summary["privacy"]["statement"]
