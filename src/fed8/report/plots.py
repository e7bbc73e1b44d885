"""PNG plots of a run: accuracy and loss per round, per-client accuracy band, samples per client."""

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


def plot_all(rows: list[dict[str, Any]], partition: dict | None, out: Path) -> list[Path]:
    """Write the plots into ``out`` and return their paths."""
    plt = _pyplot()
    ev = [r for r in rows if r.get("eval_accuracy") is not None]
    rounds = [r["round"] for r in ev]
    paths = []

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    a1.plot(rounds, [r["eval_accuracy"] for r in ev], marker="o", ms=3)
    a1.set(xlabel="round", ylabel="accuracy", title="Global model, eval split")
    a2.plot(rounds, [r["eval_loss"] for r in ev], marker="o", ms=3, label="eval loss")
    a2.plot([r["round"] for r in rows], [r["train_loss"] for r in rows], marker=".", ms=3, label="client train loss")
    a2.set(xlabel="round", ylabel="cross-entropy", title="Loss")
    a2.legend()
    for ax in (a1, a2):
        _round_axis(ax)
    _save(fig, out / "accuracy_loss.png", paths)

    band = [r for r in ev if r.get("client_accuracy_mean") is not None]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    if band:
        x = [r["round"] for r in band]
        ax.fill_between(x, [r["client_accuracy_min"] for r in band], [r["client_accuracy_mean"] for r in band],
                        alpha=0.2, label="min .. mean")
        ax.plot(x, [r["client_accuracy_min"] for r in band], lw=1, label="min")
        ax.plot(x, [r["client_accuracy_p10"] for r in band], lw=1, label="10th percentile")
        ax.plot(x, [r["client_accuracy_mean"] for r in band], lw=2, label="mean")
        ax.legend()
    ax.set(xlabel="round", ylabel="accuracy", title="Global model on each client's local test split")
    _round_axis(ax)
    _save(fig, out / "client_accuracy.png", paths)

    eps = [r for r in rows if r.get("epsilon") is not None]
    if eps:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        ax.plot([r["round"] for r in eps], [r["epsilon"] for r in eps], marker="o", ms=3, label="epsilon")
        ax.set(xlabel="round", ylabel="epsilon (client level)", title="Privacy spent after each round")
        _round_axis(ax)
        _save(fig, out / "epsilon.png", paths)

    if partition:
        clients = partition["clients"]
        fig, ax = plt.subplots(figsize=(max(6, len(clients) * 0.12), 3.6))
        hist = [c["label_histogram"] for c in clients]
        bottom = [0] * len(clients)
        for label in range(partition["num_classes"]):
            vals = [h[label] for h in hist]
            ax.bar(range(len(clients)), vals, bottom=bottom, width=0.85, label=str(label))
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set(xlabel="client", ylabel="samples", title="Samples per client, by label")
        _round_axis(ax)
        if partition["num_classes"] <= 20:
            ax.legend(ncol=2, fontsize=7, title="label", loc="upper left", bbox_to_anchor=(1.01, 1))
        _save(fig, out / "samples_per_client.png", paths)
    return paths
