"""PNG plots of a run: accuracy and loss per round, per-client accuracy band, samples per client,
accuracy against the bytes sent, and the 8-bit deployment trade-off (accuracy against latency and size)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_all"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, paths: list[Path]) -> None:
    """Write ``fig`` atomically as PNG to ``path``, record it in ``paths`` and close it."""
    import io

    from .._io import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    paths.append(path)
    _pyplot().close(fig)


def _round_axis(ax) -> None:
    """Integer ticks on the x axis (rounds, clients) and a light grid."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def plot_all(rows: list[dict[str, Any]], partition: dict | None, out: Path, deploy: dict | None = None,
             per_class: dict | None = None) -> list[Path]:
    """Write the plots into ``out`` and return their paths."""
    from ..federated.record import RoundRecord

    plt = _pyplot()
    recs = [RoundRecord.from_dict(r) for r in rows]
    ev = [r for r in recs if r.evaluated]
    rounds = [r.round for r in ev]
    paths: list[Path] = []

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    a1.plot(rounds, [r.eval_accuracy for r in ev], marker="o", ms=3)
    a1.set(xlabel="round", ylabel="accuracy", title="Global model, eval split")
    a2.plot(rounds, [r.eval_loss for r in ev], marker="o", ms=3, label="eval loss")
    a2.plot([r.round for r in recs], [float("nan") if r.train_loss is None else r.train_loss for r in recs], marker=".",
            ms=3, label="client train loss")
    a2.set(xlabel="round", ylabel="cross-entropy", title="Loss")
    a2.legend()
    for ax in (a1, a2):
        _round_axis(ax)
    _save(fig, out / "accuracy_loss.png", paths)

    band = [r for r in ev if r.client_accuracy_mean is not None]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    if band:
        x = [r.round for r in band]
        ax.fill_between(x, [r.client_accuracy_min for r in band], [r.client_accuracy_mean for r in band],
                        alpha=0.2, label="min .. mean")
        ax.plot(x, [r.client_accuracy_min for r in band], lw=1, label="min")
        ax.plot(x, [r.client_accuracy_p10 for r in band], lw=1, label="10th percentile")
        ax.plot(x, [r.client_accuracy_mean for r in band], lw=2, label="mean")
        ax.legend()
    ax.set(xlabel="round", ylabel="accuracy", title="Global model on each client's local test split")
    _round_axis(ax)
    _save(fig, out / "client_accuracy.png", paths)

    eps = [r for r in recs if r.epsilon is not None]
    if eps:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        ax.plot([r.round for r in eps], [r.epsilon for r in eps], marker="o", ms=3, label="epsilon")
        ax.set(xlabel="round", ylabel="epsilon (client level)", title="Privacy spent after each round")
        _round_axis(ax)
        _save(fig, out / "epsilon.png", paths)

    if partition:
        _samples_per_client(plt, partition, out, paths)
    if ev:
        _accuracy_vs_bytes(plt, recs, out, paths)
    if deploy:
        _deploy_tradeoff(plt, deploy, out, paths)
    if per_class and len(per_class["classes"]) <= _MAX_LABELS:
        _confusion(plt, per_class, out, paths)
    return paths


def _confusion(plt, per_class: dict, out: Path, paths: list[Path]) -> None:
    """The final model's confusion matrix on the eval split, each row as fractions of its class's images."""
    import numpy as np

    c = np.asarray(per_class["confusion"], dtype=float)
    rows = c / np.maximum(c.sum(1, keepdims=True), 1)
    names = per_class["classes"]
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set(xticks=range(len(names)), yticks=range(len(names)), xlabel="predicted", ylabel="true class",
           title="Final model, eval split (row fractions)")
    ax.set_xticklabels(names, rotation=90 if max(map(len, names)) > 2 else 0, fontsize=8)
    ax.set_yticklabels(names, fontsize=8)
    for i in range(len(names)):
        ax.text(i, i, f"{rows[i, i]:.2f}", ha="center", va="center", fontsize=7,
                color="white" if rows[i, i] > 0.6 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    _save(fig, out / "confusion.png", paths)


_MAX_BARS, _MAX_LABELS = 200, 20


def _samples_per_client(plt, partition: dict, out: Path, paths: list[Path]) -> None:
    """Stacked label bars per client (up to 200 clients and 20 labels), else a histogram of client sizes."""
    clients = partition["clients"]
    if len(clients) > _MAX_BARS:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        ax.hist([c["train_samples"] + c["test_samples"] for c in clients], bins=40)
        ax.set(xlabel="samples on a client", ylabel="clients", title=f"Samples per client ({len(clients):,} clients)")
        ax.grid(alpha=0.3)
        _save(fig, out / "samples_per_client.png", paths)
        return
    fig, ax = plt.subplots(figsize=(min(16, max(6, len(clients) * 0.12)), 3.6))
    hist = [c["label_histogram"] for c in clients]
    k = partition["num_classes"]
    shown = range(min(k, _MAX_LABELS))
    bottom = [0] * len(clients)
    for label in shown:
        vals = [h[label] for h in hist]
        ax.bar(range(len(clients)), vals, bottom=bottom, width=0.85, label=str(label))
        bottom = [b + v for b, v in zip(bottom, vals)]
    if k > _MAX_LABELS:
        rest = [sum(h[_MAX_LABELS:]) for h in hist]
        ax.bar(range(len(clients)), rest, bottom=bottom, width=0.85, color="#999", label="other")
    ax.set(xlabel="client", ylabel="samples", title="Samples per client, by label")
    _round_axis(ax)
    ax.legend(ncol=2, fontsize=7, title="label", loc="upper left", bbox_to_anchor=(1.01, 1))
    _save(fig, out / "samples_per_client.png", paths)


def _accuracy_vs_bytes(plt, recs: list, out: Path, paths: list[Path]) -> None:
    """Eval accuracy against cumulative bytes on the wire, with what float32 payloads would have cost."""
    sent = sent32 = 0
    x, x32, acc = [], [], []
    for r in recs:
        sent += r.uplink_bytes + r.downlink_bytes
        sent32 += (r.uplink_bytes_float32 or r.uplink_bytes) + (r.downlink_bytes_float32 or r.downlink_bytes)
        if r.evaluated:
            x.append(sent / 1e6)
            x32.append(sent32 / 1e6)
            acc.append(r.eval_accuracy)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(x, acc, marker="o", ms=3, label="this run's codecs")
    if x32 != x:
        ax.plot(x32, acc, ls="--", color="#888", label="same rounds in float32")
    ax.set(xlabel="cumulative MB sent (uplink + downlink)", ylabel="eval accuracy", title="Accuracy against bytes sent")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, out / "accuracy_vs_bytes.png", paths)


def _deploy_tradeoff(plt, deploy: dict, out: Path, paths: list[Path]) -> None:
    """Per format and runtime: eval accuracy (or agreement) against latency; marker area = file size."""
    fmts = deploy["formats"]
    metric = "eval_accuracy" if fmts[0].get("eval_accuracy") is not None else "top1_agreement_with_float32"
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, b in zip(axes, ("batch1", "batch256")):
        for i, r in enumerate(fmts):
            runtime0 = {"litert": ("LiteRT", "^"), "torch": ("PyTorch", "D")}.get(r.get("runtime", "onnxruntime"),
                                                                              ("ONNX Runtime", "o"))
            runs = [(runtime0[0], r, runtime0[1])] + ([("OpenVINO", r["openvino"], "s")] if "openvino" in r else [])
            for runtime, m, marker in runs:
                if m[f"latency_ms_{b}"] is None:  # a LiteRT file at batch 256: not exported
                    continue
                ax.scatter(m[f"latency_ms_{b}"], r[metric], s=40 + 400 * m["bytes"] / fmts[0]["bytes"],
                           marker=marker, color=colors[i % len(colors)], alpha=0.75,
                           label=f"{r['format']}, {runtime}, {m['bytes'] / 1e6:.1f} MB")
        ax.set(xlabel=f"latency at {b.replace('batch', 'batch ')} (ms, lower is faster)",
               ylabel=metric.replace("_", " "), title=f"batch {b[5:]}")
        ax.margins(0.15)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), markerscale=0.5)
    fig.suptitle("8-bit deployment: accuracy against latency (marker area = file size)", fontsize=10)
    _save(fig, out / "deploy_tradeoff.png", paths)
