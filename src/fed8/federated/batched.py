"""Batched clients: a chunk of a round's clients trained together with ``torch.func``.

Each client runs exactly the local SGD of :func:`fed8.federated.client.train_client`
(its own minibatch order from its own generator, its own number of steps), but the
chunk's clients share one forward/backward per step: parameters carry the clients as a
leading batch dimension and ``vmap(grad_and_value(loss))`` over
``functional_call(model, params, x)`` computes every client's gradient at once
(torch.func; the per-example-gradient pattern of Opacus and functorch, with clients in
place of examples). Ragged clients are masked, never padded into their updates:

* step ``t`` of client ``c`` uses its ``t``-th minibatch (epochs concatenated); a padded
  slot has mask 0, so the loss is the mean over the client's real samples only;
* a client with fewer steps is *inactive* after its last one: its weights and momentum
  are left untouched (``torch.where``), so weight decay, momentum and FedProx never act
  on a step the client did not take.

SGD as ``torch.optim.SGD`` (dampening 0, no Nesterov): ``g = grad + mu (w - w_global) +
lambda w``, ``b = g`` on the first step else ``b = m b + g``, ``w = w - lr b``. The result
equals sequential training up to float rounding: batched kernels sum in another order,
and many SGD steps amplify the difference (in float64 the two agree to 1e-15; in float32
to 1e-7 of the update for the cnn and mlp, 1e-3 for resnet20 after 15 steps; see
``tests/test_batched.py``). Models with BatchNorm (per-client running
statistics) or other float buffers are not batched (:func:`batching_blocker`).
"""

from __future__ import annotations

import weakref
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .client import (ClientData, ClientUpdate, LocalTraining, augment_generator, epoch_images, forward_precision,
                     loss_logits)

__all__ = ["auto_chunk", "batching_blocker", "batching_slower", "train_clients_batched"]

# Per-client state kept during a chunk: weights, gradients, momentum, the FedProx anchor.
_STATE_COPIES = 4


def batching_blocker(model: nn.Module) -> str | None:
    """Why ``model``'s clients cannot be trained batched, or None."""
    from .model_rng import randomness_reason

    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return "the model has BatchNorm layers (per-client running statistics are sequential state)"
    params = {n for n, _ in model.named_parameters()}
    extra = [k for k, v in model.state_dict().items() if v.is_floating_point() and k not in params]
    if extra:
        return f"the model has float buffers that training changes ({', '.join(extra[:3])})"
    return randomness_reason(model)


def batching_slower(model: nn.Module, device: torch.device) -> str | None:
    """Why ``model``'s clients train slower batched than one by one on ``device``, or None.

    On the CPU, ``vmap`` turns each client's weights of an overlapping convolution (a kernel
    larger than its stride) into one grouped convolution, which oneDNN runs slowly: the
    ``cnn`` trained 1.6x slower batched than one client after another (8 clients of 40
    images, 2 threads), and W1 took 1.67x the plain loop against 0.85x (docs/BENCHMARKS.md).
    Non-overlapping convolutions (``vit_tiny``'s patch embedding) and Linear layers batch into
    ordinary matrix products (``vit_tiny``: 0.92x). On a GPU nothing is measured yet, so
    nothing is ruled out there.
    """
    if device.type != "cpu":
        return None
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd) and any(k > s for k, s in zip(m.kernel_size, m.stride)):
            return ("on the CPU, vmap makes each client's convolution weights one grouped convolution, slower than "
                    "training the clients one by one (cnn: 1.6x); run.client_batching = 'on' batches them anyway")
    return None


def auto_chunk(model: nn.Module, clients: int, *, budget_bytes: int = 192 << 20) -> int:
    """Clients per chunk so that their per-client state stays within ``budget_bytes`` (at least 1)."""
    per = _STATE_COPIES * sum(p.numel() * p.element_size() for p in model.parameters())
    return max(1, min(clients, budget_bytes // max(per, 1)))


_USED: "weakref.WeakKeyDictionary[nn.Module, frozenset[str]]" = weakref.WeakKeyDictionary()


def _used_parameters(model: nn.Module, x: torch.Tensor, precision: str) -> frozenset[str]:
    """Names of the parameters ``model``'s output depends on (once per model). ``torch.func`` gives the others a zero
    gradient, where ``torch.optim.SGD`` sees none and leaves them (no weight decay, no momentum): they stay out."""
    used = _USED.get(model)
    if used is None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        with torch.enable_grad(), forward_precision(x.device, precision):  # as the chunk's passes compute
            out = loss_logits(model(x))
            grads = torch.autograd.grad(out.sum(), [p for _, p in named], allow_unused=True)
        used = _USED[model] = frozenset(n for (n, _), g in zip(named, grads) if g is not None)
    return used


def train_clients_batched(model: nn.Module, global_state: dict[str, torch.Tensor], data: Sequence[ClientData],
                          cfg: LocalTraining, *, generators: Sequence[torch.Generator],
                          clients: Sequence[int], epochs: Sequence[int] | None = None) -> list[ClientUpdate]:
    """Local SGD of every client in ``data`` at once; one :class:`ClientUpdate` per client, in order.

    ``epochs``: each client's epochs (``cfg.for_client``'s, under unequal local work); default ``cfg.epochs`` for
    all. A client that runs out of steps first is masked, as a client with fewer images is.
    """
    from torch.func import functional_call, grad_and_value, vmap

    used = _used_parameters(model, data[0].x_train[:1], cfg.precision)
    names = [n for n, p in model.named_parameters() if p.requires_grad and n in used]  # the others: SGD leaves them
    c_n, bs = len(data), cfg.batch_size
    base = {n: global_state[n].detach() for n in names}
    w = {n: base[n].unsqueeze(0).expand(c_n, *base[n].shape).clone() for n in names}
    buf: dict[str, torch.Tensor] | None = None
    fixed = {k: v for k, v in global_state.items() if k not in base}  # integer buffers etc., shared

    schedule = []  # per client: (its epoch's images, a minibatch's indices) per step, epochs concatenated
    for d, g, e in zip(data, generators, epochs if epochs is not None else [cfg.epochs] * len(data)):
        steps = []  # train_client's draws, in its order
        aug = augment_generator(g, cfg.augment)
        for _ in range(e):
            xe = epoch_images(d.x_train, cfg.augment, aug)
            perm = torch.randperm(d.num_train, generator=g)
            steps += [(xe, perm[i : i + bs].to(d.x_train.device)) for i in range(0, d.num_train, bs)]
        schedule.append(steps)
    n_steps = [len(s) for s in schedule]
    shape, dtype, dev = data[0].x_train.shape[1:], data[0].x_train.dtype, data[0].x_train.device

    def loss(params, x, y, m):
        with forward_precision(dev, cfg.precision):
            out = functional_call(model, {**params, **fixed}, (x,))
        return (F.cross_entropy(loss_logits(out), y, reduction="none") * m).sum() / m.sum().clamp(min=1.0)

    step = vmap(grad_and_value(loss))
    totals = torch.zeros(c_n, device=dev)
    model.train()
    for t in range(max(n_steps, default=0)):
        x = torch.zeros((c_n, bs, *shape), dtype=dtype, device=dev)
        y = torch.zeros((c_n, bs), dtype=torch.long, device=dev)
        m = torch.zeros((c_n, bs), dtype=dtype, device=dev)
        active = torch.tensor([t < n for n in n_steps], device=dev)
        for c, s in enumerate(schedule):
            if t < len(s):
                xe, idx = s[t]
                x[c, : len(idx)], y[c, : len(idx)], m[c, : len(idx)] = xe[idx], data[c].y_train[idx], 1
        grads, values = step(w, x, y, m)
        totals += torch.where(active, values.detach(), torch.zeros((), device=dev))
        with torch.no_grad():
            new_buf = {}
            for n in names:
                a = active.view(-1, *([1] * base[n].dim()))
                g = grads[n]
                if cfg.prox_mu > 0:
                    g = g + cfg.prox_mu * (w[n] - base[n])
                if cfg.weight_decay:
                    g = g + cfg.weight_decay * w[n]
                if cfg.momentum:
                    g = g if buf is None else torch.where(a, cfg.momentum * buf[n] + g, buf[n])
                    new_buf[n] = g
                w[n] = torch.where(a, w[n] - cfg.lr * g, w[n])
            if cfg.momentum:
                buf = new_buf
    out = []
    for c, d in enumerate(data):
        delta = {k: (w[k][c] - base[k]) if k in base else torch.zeros_like(v)
                 for k, v in global_state.items() if v.is_floating_point()}
        out.append(ClientUpdate(client=clients[c], delta=delta, num_samples=d.num_train,
                                train_loss=float(totals[c]) / max(n_steps[c], 1)))
    return out
