"""Per-class accuracy of the final model on the eval split: the confusion matrix, the summary, report and compare."""

import torch

import fed8
from fed8.federated.evaluate import confusion_matrix, evaluate, per_class
from fed8.models import build_model


def test_the_confusion_matrix_counts_each_image_once_where_the_model_puts_it():
    model = build_model("mlp", in_channels=1, height=28, width=28, num_classes=10, seed=0, hidden=16)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(237, 1, 28, 28, generator=g), torch.randint(0, 10, (237,), generator=g)
    c = confusion_matrix(model, x, y, 10, batch_size=50)  # batches of 50: the last one ragged
    with torch.no_grad():
        pred = model.eval()(x).argmax(1)
    want = torch.zeros(10, 10, dtype=torch.int64)
    for t, p in zip(y.tolist(), pred.tolist()):
        want[t, p] += 1
    assert torch.equal(c, want) and int(c.sum()) == 237
    _, acc = evaluate(model, x, y, batch_size=50)
    assert abs(float(c.trace()) / 237 - acc) < 1e-6


def test_per_class_accuracy_names_the_worst_class_and_skips_absent_ones():
    c = torch.tensor([[8, 2, 0], [0, 0, 0], [3, 0, 1]])
    pc = per_class(c, ("cat", "dog", "emu"))
    assert pc["accuracy"] == [0.8, None, 0.25] and pc["images"] == [10, 0, 4]
    assert pc["worst_class"] == "emu" and pc["worst_class_accuracy"] == 0.25
    assert per_class(torch.zeros(2, 2, dtype=torch.int64), ("a", "b"))["worst_class"] is None


def test_a_run_reports_its_classes(tmp_path, small, capsys):
    import json

    from fed8.cli import main
    from fed8.report import write_report

    res = fed8.run(fed8.load_config(None, small + ["model.name=mlp"]), out=tmp_path / "r", report=False)
    pc = res.summary["eval_per_class"]
    assert pc == json.loads((res.run_dir / "summary.json").read_text())["eval_per_class"]
    assert pc["classes"] == [str(k) for k in range(10)] and sum(pc["images"]) == 2000  # mnist10k's eval split
    c = torch.tensor(pc["confusion"])
    assert abs(float(c.trace()) / float(c.sum()) - res.final["eval_accuracy"]) < 1e-6
    assert pc["worst_class_accuracy"] == min(a for a in pc["accuracy"] if a is not None)
    page = write_report(res.run_dir).read_text()
    assert "<h2>Per class</h2>" in page and (res.run_dir / "plots" / "confusion.png").exists()
    assert main(["compare", str(res.run_dir)]) == 0
    assert "worst class acc" in capsys.readouterr().out


def test_the_final_model_is_passed_over_the_eval_split_once(tmp_path, small, monkeypatch):
    """The last round's evaluation gives the loss, the accuracy and the confusion matrix: one pass, same numbers."""
    from fed8.federated import simulation

    passes, real = [], simulation.predict

    def counting(model, x, y, *, batch_size):
        passes.append(int(x.shape[0]))
        return real(model, x, y, batch_size=batch_size)

    monkeypatch.setattr(simulation, "predict", counting)
    cfg = fed8.load_config(None, small + ["model.name=mlp", "model.hidden=16", "train.rounds=3", "eval.every=2"])
    res = fed8.run(cfg, out=tmp_path / "r", report=False)
    assert passes == [2000, 2000]  # rounds 2 and 3 (the last), nothing for the summary's confusion matrix
    from safetensors.torch import load_file

    from fed8.stages.federation import load_federation

    fed = load_federation(cfg)
    fed.model.load_state_dict(load_file(res.run_dir / "model.safetensors"))
    again = confusion_matrix(fed.model, fed.eval_x, fed.eval_y, 10)
    assert again.tolist() == res.summary["eval_per_class"]["confusion"]
    loss, acc = evaluate(fed.model, fed.eval_x, fed.eval_y)
    assert (loss, acc) == (res.final["eval_loss"], res.final["eval_accuracy"])
