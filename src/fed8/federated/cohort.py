"""One-step clients in one pass: FedSGD's identity for a round whose clients each take one SGD step.

When every sampled client runs exactly one local step from the same global weights ``w``
(one epoch, all of its ``n_k`` samples in one minibatch) with SGD, its update is

    delta_k = -lr (g_k + lambda w),    g_k = grad (1 / n_k) sum_{i in k} l_i(w)

(momentum's first step is the gradient itself, and FedProx's term ``mu (w - w_global)`` is 0
at ``w_global``), so the weighted mean a FedAvg server computes, with weights ``w_k`` and
``W = sum_k w_k``, is one gradient of a weighted loss over all the round's samples:

    sum_k w_k delta_k / W = -lr (grad sum_i a_i l_i(w) + (W_+ / W) lambda w),
    a_i = w_k / (W n_k) for sample i of client k,

``W_+`` the weight of the clients with samples (a client without any sends a zero update).
This is FedSGD written as FedAvg (McMahan et al. 2017, arXiv:1602.05629, Section 2): one
forward and backward over the round's samples, in chunks, instead of one small step per
client. It applies only where nothing needs the clients' individual updates: a plain
weighted mean (:meth:`fed8.federated.aggregator.Aggregator.cohort_weight`), float32
uploads without error feedback, no client hooks; and only to models whose step does not
depend on the batch it is in (no BatchNorm, no dropout). It equals the clients one by one
up to float summation order (``tests/test_cohort.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ParameterError
from ..models.layout import fast_layout
from .batched import batching_blocker
from .client import (ClientData, LocalTraining, augment_generator, epoch_images, forward_precision, loss_logits,
                     trainable_keys)

__all__ = ["CohortUpdate", "cohort_blocker", "train_cohort"]

CHUNK_SAMPLES = 256  # samples per forward/backward: bounds the activations' memory (128-800 ran alike here)


@dataclass(frozen=True)
class CohortUpdate:
    """A round's clients already averaged: ``mean = sum_k w_k delta_k / W`` and ``weight = W``.

    ``clients``, ``num_samples`` and ``train_losses`` are per client, in order.
    """

    clients: tuple[int, ...]
    mean: dict[str, torch.Tensor]
    weight: float
    num_samples: tuple[int, ...]
    train_losses: tuple[float, ...]


def cohort_blocker(model: nn.Module, data: Sequence[ClientData], cfg: LocalTraining) -> str | None:
    """Why these clients' round cannot be computed as one pass, or None."""
    if cfg.epochs != 1:
        return f"clients train {cfg.epochs} local epochs (one pass needs exactly one step per client)"
    big = max((d.num_train for d in data), default=0)
    if big > cfg.batch_size:
        return f"a client has {big} samples, more than one minibatch of {cfg.batch_size}"
    return batching_blocker(model)  # BatchNorm, float buffers, dropout (its masks are drawn per client)


def train_cohort(model: nn.Module, global_state: Mapping[str, torch.Tensor], data: Sequence[ClientData],
                 cfg: LocalTraining, *, weight: Callable[[int], float], clients: Sequence[int],
                 generators: Sequence[torch.Generator] | None = None) -> CohortUpdate:
    """The weighted mean of ``data``'s one-step updates from ``global_state``, in one pass (module docstring).

    ``weight``: the aggregator's ``w_k`` of a client with ``n_k`` samples. ``generators``: each
    client's training generator, which its augmentations derive from (required when
    ``cfg.augment`` is on; the one pass needs no shuffle). Call only where
    :func:`cohort_blocker` returns None.
    """
    if cfg.augment.active and (generators is None or len(generators) != len(data)):
        raise ParameterError(f"train_cohort needs one generator per client when cfg.augment is on ({cfg.augment.kind!r}); "
                             f"got {None if generators is None else len(generators)} for {len(data)} clients. Pass "
                             "the clients' training generators.")
    fast_layout(model)
    model.load_state_dict(global_state)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = None
    sizes = [d.num_train for d in data]
    w = [weight(n) for n in sizes]
    total_w = float(sum(w))
    with_data = float(sum(wk for wk, n in zip(w, sizes) if n > 0))
    x = torch.cat([epoch_images(d.x_train, cfg.augment, augment_generator(generators[k], cfg.augment) if generators
                                else None) for k, d in enumerate(data)])
    y = torch.cat([d.y_train for d in data])
    dev, dtype = x.device, x.dtype
    owner = torch.repeat_interleave(torch.arange(len(data), device=dev), torch.tensor(sizes, device=dev))
    per_client = torch.tensor([wk / (total_w * n) if n > 0 else 0.0 for wk, n in zip(w, sizes)],
                              dtype=dtype, device=dev)
    a = per_client[owner]
    losses = torch.zeros(len(data), dtype=dtype, device=dev)
    for i in range(0, x.shape[0], CHUNK_SAMPLES):
        sl = slice(i, i + CHUNK_SAMPLES)
        with forward_precision(dev, cfg.precision):
            out = model(x[sl])
        li = F.cross_entropy(loss_logits(out), y[sl], reduction="none")
        (li * a[sl]).sum().backward()
        losses.index_add_(0, owner[sl], li.detach())
    named = dict(model.named_parameters())
    mean = {}
    with torch.no_grad():
        for k in trainable_keys(global_state):
            p = named.get(k)
            if p is None or not p.requires_grad or p.grad is None:
                mean[k] = torch.zeros_like(global_state[k])
                continue
            g = p.grad
            if cfg.weight_decay:
                g = g + (with_data / total_w) * cfg.weight_decay * p.detach()
            mean[k] = (-cfg.lr * g).contiguous()
    for p in params:
        p.grad = None
    counts = torch.tensor(sizes, dtype=dtype, device=dev).clamp(min=1)
    return CohortUpdate(tuple(clients), mean, total_w, tuple(sizes), tuple((losses / counts).tolist()))
