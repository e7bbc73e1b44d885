"""fed8 compare: run directories side by side (what differs, the numbers, the plots and the page)."""

import dataclasses
import json

import pytest

import fed8
from fed8.cli import main
from fed8.report.compare import comparison, differing_keys, load_run, seed_groups, table, write_comparison

from conftest import interrupted_run


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Three small runs: a base, the base with an int8 uplink and lr 0.1, and a repeat of the base."""
    root = tmp_path_factory.mktemp("sweep")
    base = ["data.subset=300", "data.num_clients=3", "train.rounds=2", "train.local_epochs=1", "model.name=mlp",
            "model.hidden=32", "run.threads=1", "quantize.enabled=false"]
    runs = [fed8.run(fed8.load_config(None, base + extra), out=root / name, report=False)
            for name, extra in (("base", []), ("int8", ["compression.uplink=int8", "train.lr=0.1"]), ("again", []))]
    return root, runs


def test_the_keys_that_differ_label_the_runs_and_the_numbers_are_the_runs_own(sweep):
    root, results = sweep
    runs = [load_run(root / n) for n in ("base", "int8", "again")]
    assert differing_keys(runs) == ["train.lr", "compression.uplink"]  # config order; run.out is not a setting
    assert differing_keys([runs[0], runs[2]]) == []
    rows = comparison(runs)
    assert [r["run"] for r in rows] == ["#1", "#2", "#3"]
    assert rows[1]["settings"] == {"train.lr": 0.1, "compression.uplink": "int8"}
    for row, res in zip(rows, results):
        assert row["eval_accuracy"] == res.final["eval_accuracy"] and row["rounds"] == 2
        assert row["uplink_bytes"] == sum(m["uplink_bytes"] for m in res.metrics)
    assert rows[0]["uplink_vs_float32"] == 1.0 and 0.24 < rows[1]["uplink_vs_float32"] < 0.3  # 1 byte + scales
    assert rows[0]["eval_accuracy"] == rows[2]["eval_accuracy"]  # a repeat: the same run
    lines = dict(table(rows))
    assert lines["compression.uplink"] == ["float32", "int8", "float32"] and lines["rounds"] == ["2", "2", "2"]
    assert "epsilon" not in lines  # no run has one


def test_the_command_prints_the_table_and_writes_the_page_plots_and_json(sweep, tmp_path, capsys):
    root, _ = sweep
    assert main(["compare", str(root / "base"), str(root / "int8"), "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "compression.uplink" in out and "int8" in out and "#2" in out and str(root / "int8") in out
    data = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert data["differing_keys"] == ["train.lr", "compression.uplink"] and len(data["runs"]) == 2
    page = (tmp_path / "cmp" / "compare.html").read_text()
    assert str(root / "base") in page and page.count("data:image/png;base64,") == 2
    assert (tmp_path / "cmp" / "accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_what_is_not_a_run_is_refused_clearly(tmp_path, capsys):
    assert main(["compare", str(tmp_path)]) == 2
    assert "is not a fed8 run directory" in capsys.readouterr().err
    fed8.run(fed8.load_config(None, ["data.subset=300", "data.num_clients=3", "train.rounds=1",
                                     "quantize.enabled=false", "model.name=mlp"]), out=tmp_path / "r", report=False)
    (tmp_path / "r" / "metrics.jsonl").write_text("")
    assert main(["compare", str(tmp_path / "r")]) == 2
    assert "no rounds yet" in capsys.readouterr().err


def test_a_stopped_run_shows_how_far_it_got(tmp_path, small):
    cfg = fed8.load_config(None, small + ["model.name=mlp", "train.rounds=3"])
    interrupted_run(cfg, tmp_path / "cut", 1)
    (row,) = comparison([load_run(tmp_path / "cut")])
    assert row["rounds"] == 1 and dict(table([row]))["rounds"] == ["1 of 3"]


def test_8_bit_accuracy_comes_from_the_quantize_stage(tmp_path):
    sets = ["data.subset=300", "data.num_clients=3", "train.rounds=1", "model.name=mlp", "model.hidden=32",
            "run.threads=1", "quantize.formats=int8"]
    res = fed8.run(fed8.load_config(None, sets), out=tmp_path / "q", report=False)
    deploy = json.loads((res.run_dir / "deploy" / "quantization.json").read_text())
    want = next(f["eval_accuracy"] for f in deploy["formats"] if f["format"] == "int8")
    plain = fed8.run(fed8.load_config(None, sets + ["quantize.enabled=false"]), out=tmp_path / "p", report=False)
    rows = comparison([load_run(res.run_dir), load_run(plain.run_dir)])
    assert rows[0]["int8_accuracy"] == want and rows[1]["int8_accuracy"] is None
    assert dict(table(rows))["int8 acc"] == [f"{want:.4f}", "-"]
    run = load_run(res.run_dir)  # a format whose gate failed (it lost more than quantize.max_accuracy_drop)
    failed = dataclasses.replace(run, deploy={**run.deploy, "formats": [
        {**f, "status": "failed"} if f["format"] == "int8" else f for f in run.deploy["formats"]]})
    assert dict(table(comparison([failed])))["int8 acc"] == [f"{want:.4f} (over max drop)"]
    paths = write_comparison([load_run(res.run_dir), load_run(plain.run_dir)], tmp_path / "cmp")
    assert [p.name for p in paths] == ["compare.json", "accuracy.png", "accuracy_vs_bytes.png", "compare.html"]


def test_runs_that_differ_only_in_their_seed_are_averaged(tmp_path, capsys):
    import statistics

    base = ["data.subset=300", "data.num_clients=3", "train.rounds=2", "model.name=mlp", "model.hidden=32",
            "run.threads=1", "quantize.enabled=false"]
    runs, results = [], {}
    for lr in ("0.05", "0.1"):
        for seed in (0, 1, 2):
            r = fed8.run(fed8.load_config(None, base + [f"train.lr={lr}", f"run.seed={seed}"]),
                         out=tmp_path / f"lr{lr}-s{seed}", report=False)
            runs.append(r.run_dir)
            results.setdefault(lr, []).append(r.final["eval_accuracy"])
    groups = seed_groups(comparison([load_run(p) for p in runs]))
    assert [g["runs"] for g in groups] == [["#1", "#2", "#3"], ["#4", "#5", "#6"]]
    assert [g["settings"] for g in groups] == [{"train.lr": 0.05}, {"train.lr": 0.1}]
    assert groups[0]["seeds"] == [0, 1, 2]
    for g, lr in zip(groups, ("0.05", "0.1")):
        assert g["eval_accuracy"] == pytest.approx(statistics.fmean(results[lr]))
        assert g["eval_accuracy_sd"] == pytest.approx(statistics.stdev(results[lr]))
    lines = dict(table(groups))
    assert lines["run.seed"] == ["0, 1, 2", "0, 1, 2"] and " ± " in lines["eval acc"][0]
    assert main(["compare", *map(str, runs), "--mean-over-seeds", "--out", str(tmp_path / "cmp")]) == 0
    assert "6 runs in 2 groups of seeds" in capsys.readouterr().out
    data = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert len(data["runs"]) == 6 and [g["run"] for g in data["seed_groups"]] == ["#1,#2,#3", "#4,#5,#6"]
    assert "<th>#1,#2,#3</th>" in (tmp_path / "cmp" / "compare.html").read_text()  # the page shows the groups
