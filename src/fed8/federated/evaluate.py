"""Evaluation of the global model: on the server's eval split and on every client's local test split."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.layout import fast_layout

__all__ = ["client_accuracy_from_counts", "client_accuracy_stats", "confusion_from_predictions", "confusion_matrix",
           "evaluate", "loss_and_accuracy", "per_class", "predict", "predict_correct"]


def _batches(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(logits, labels)`` of ``model`` in eval mode, batch by batch, on the model's device (call under no_grad)."""
    fast_layout(model)
    model.eval()
    dev = next(model.parameters()).device
    for i in range(0, x.shape[0], batch_size):
        yield model(x[i : i + batch_size].to(dev)), y[i : i + batch_size].to(dev)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample cross-entropy loss and predicted label (top-1), in eval mode, on the CPU (computed on the model's
    device): one pass gives the loss, the accuracy and the confusion matrix."""
    losses, preds = [], []
    for logits, yb in _batches(model, x, y, batch_size):
        losses.append(F.cross_entropy(logits, yb, reduction="none"))
        preds.append(logits.argmax(1))
    if not losses:
        return torch.zeros(0), torch.zeros(0, dtype=torch.int64)
    return torch.cat(losses).cpu(), torch.cat(preds).cpu()


def predict_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample cross-entropy loss and correctness (bool), in eval mode, on the CPU (computed on the model's device)."""
    loss, pred = predict(model, x, y, batch_size=batch_size)
    return loss, pred == y.cpu()


def confusion_from_predictions(y: torch.Tensor, pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``C[i, j]``: images of class ``i`` predicted as ``j``, as int64 ``[K, K]`` on the CPU."""
    flat = y.cpu().long() * num_classes + pred.cpu().long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def confusion_matrix(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, *,
                     batch_size: int = 500) -> torch.Tensor:
    """``C[i, j]``: images of class ``i`` that ``model`` (eval mode) labels ``j``, as int64 ``[K, K]`` on the CPU."""
    return confusion_from_predictions(y, predict(model, x, y, batch_size=batch_size)[1], num_classes)


def per_class(confusion: torch.Tensor, classes: Sequence[str]) -> dict:
    """Per-class accuracy (recall) from a confusion matrix, and the worst class: what a mean accuracy hides.

    On non-IID federations a class that few clients hold can stay far below the mean
    (client drift, Zhao et al. 2018, arXiv:1806.00582). Classes without eval images get
    ``None`` and are left out of the worst.
    """
    counts = confusion.sum(1)
    acc = [float(confusion[i, i]) / float(n) if n else None for i, n in enumerate(counts.tolist())]
    held = [(a, k) for k, a in enumerate(acc) if a is not None]
    worst = min(held) if held else (None, None)
    return {"classes": list(classes), "accuracy": acc, "images": counts.tolist(), "confusion": confusion.tolist(),
            "worst_class": None if worst[1] is None else classes[worst[1]], "worst_class_accuracy": worst[0]}


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 500) -> tuple[float, float]:
    """Mean loss and top-1 accuracy of ``model`` on ``(x, y)``."""
    return loss_and_accuracy(*predict_correct(model, x, y, batch_size=batch_size))


def loss_and_accuracy(loss: torch.Tensor, correct: torch.Tensor) -> tuple[float, float]:
    """Mean of the per-sample ``loss`` and of ``correct`` (NaN, NaN without samples)."""
    if loss.numel() == 0:
        return float("nan"), float("nan")
    return float(loss.mean()), float(correct.float().mean())


def client_accuracy_stats(correct: torch.Tensor, owner: torch.Tensor, num_clients: int) -> dict[str, float | None]:
    """Mean, 10th percentile and min of per-client accuracy (clients without local test data skipped).

    ``correct[i]`` says whether sample i was classified right and ``owner[i]`` which
    client holds it. The percentile uses linear interpolation (``numpy.percentile``).
    """
    counts = torch.bincount(owner, minlength=num_clients).double()
    hits = torch.bincount(owner, weights=correct.double(), minlength=num_clients)
    has = counts > 0
    if not bool(has.any()):
        return {"client_accuracy_mean": None, "client_accuracy_p10": None, "client_accuracy_min": None}
    acc = (hits[has] / counts[has]).numpy()
    return {
        "client_accuracy_mean": float(acc.mean()),
        "client_accuracy_p10": float(np.percentile(acc, 10)),
        "client_accuracy_min": float(acc.min()),
    }



def client_accuracy_from_counts(counts: Sequence[tuple[int, int]]) -> dict[str, float | None]:
    """:func:`client_accuracy_stats` from each client's ``(correct, images)`` (what a device reports)."""
    hits = torch.tensor([float(h) for h, _ in counts], dtype=torch.float64)
    n = torch.tensor([float(c) for _, c in counts], dtype=torch.float64)
    has = n > 0
    if not bool(has.any()):
        return {"client_accuracy_mean": None, "client_accuracy_p10": None, "client_accuracy_min": None}
    acc = (hits[has] / n[has]).numpy()
    return {"client_accuracy_mean": float(acc.mean()), "client_accuracy_p10": float(np.percentile(acc, 10)),
            "client_accuracy_min": float(acc.min())}
