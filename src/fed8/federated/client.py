"""The client step: local SGD from the global weights on one client's data.

The step is a function of (model architecture, global weights, client data, config,
generator) with no other state, so the clients of a round can run in any order, in
parallel, batched, or inside a Flower ClientApp, with identical results.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .._rng import derive_seed
from ..data.augment import Augmentation, augment
from ..errors import ParameterError
from ..models.layout import fast_layout
from .model_rng import client_randomness

__all__ = ["AUGMENT_STREAM", "ClientData", "ClientUpdate", "LocalTraining", "PRECISIONS", "augment_generator",
           "epoch_images", "forward_precision", "local_test_split", "loss_logits", "to_device", "train_client",
           "trainable_keys"]

PRECISIONS = ("float32", "bfloat16")
AUGMENT_STREAM = 11  # stream tag under the client's training seed (model_rng's dropout seed is 10)


@dataclass(frozen=True)
class LocalTraining:
    """The values of a client's local SGD (taken from ``[train]`` by the caller)."""

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    prox_mu: float = 0.0
    precision: str = "float32"  # of the forward and backward passes (forward_precision); weights stay float32
    augment: Augmentation = Augmentation()  # of the training images, drawn anew every epoch (epoch_images)
    lr_schedule: str = "constant"  # lr round by round (fed8.federated.schedule): constant | exponential | cosine
    lr_decay: float = 1.0  # exponential: lr * lr_decay^(round - 1)
    rounds: int = 0  # the planned rounds, for cosine
    epochs_min: int = 0  # > 0: each client trains epochs_min..epochs epochs, drawn per round (for_client); 0: epochs
    seed: int = 0  # the run's seed, which those draws come from

    def __post_init__(self) -> None:
        from .schedule import LR_SCHEDULES

        if not 0 <= self.epochs_min <= self.epochs:
            raise ParameterError(f"LocalTraining.epochs_min must be in 0..epochs ({self.epochs}); got "
                                 f"{self.epochs_min}. Use 0 for every client training epochs epochs.")

        if self.precision not in PRECISIONS:
            raise ParameterError(f"LocalTraining.precision must be one of {PRECISIONS}; got {self.precision!r}. Use "
                                 "'bfloat16' for mixed precision, 'float32' otherwise.")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ParameterError(f"LocalTraining.lr_schedule must be one of {LR_SCHEDULES}; got {self.lr_schedule!r}.")

    def at_round(self, rnd: int) -> "LocalTraining":
        """These values with ``lr`` the schedule's rate in round ``rnd`` (itself under a constant schedule). Every
        runtime trains round ``rnd``'s clients with ``local.at_round(rnd)``."""
        if self.lr_schedule == "constant":
            return self
        from .schedule import client_lr

        lr = client_lr(self.lr, self.lr_schedule, rnd, rounds=self.rounds, decay=self.lr_decay)
        return dataclasses.replace(self, lr=lr, lr_schedule="constant")

    @property
    def unequal_epochs(self) -> bool:
        """Whether clients draw their epochs (``0 < epochs_min < epochs``)."""
        return 0 < self.epochs_min < self.epochs

    def for_client(self, rnd: int, client: int) -> "LocalTraining":
        """These values with ``epochs`` client ``client``'s draw in round ``rnd``
        (:func:`fed8.federated.schedule.client_epochs`; itself unless :attr:`unequal_epochs`). Every runtime trains
        a client with ``local.at_round(rnd).for_client(rnd, client)``, and the server counts its steps with it."""
        if not self.unequal_epochs:
            return self
        from .schedule import client_epochs

        e = client_epochs(self.seed, rnd, client, low=self.epochs_min, high=self.epochs)
        return dataclasses.replace(self, epochs=e, epochs_min=0)


@dataclass(frozen=True)
class ClientData:
    """One client's local data as float tensors ``[N, C, H, W]`` and labels ``[N]``."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def num_train(self) -> int:
        return int(self.y_train.shape[0])


@dataclass(frozen=True)
class ClientUpdate:
    """What a client sends back: ``delta = w_local - w_global`` per float tensor, its sample count, its mean loss."""

    client: int
    delta: dict[str, torch.Tensor]
    num_samples: int
    train_loss: float | None  # None: the client kept it (privacy.client_reports off)


def local_test_split(clients) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every client's local test images in one tensor, their labels, and ``owner[i]``: the client holding image i."""
    x = torch.cat([c.x_test for c in clients]) if clients else torch.zeros(0)
    y = torch.cat([c.y_test for c in clients]) if clients else torch.zeros(0, dtype=torch.long)
    owner = torch.cat([torch.full((c.y_test.shape[0],), k, dtype=torch.long) for k, c in enumerate(clients)]) \
        if clients else torch.zeros(0, dtype=torch.long)
    return x, y, owner


def forward_precision(device: torch.device, precision: str):
    """The context a client's forward pass runs in: ``torch.autocast`` to bfloat16, or nothing for float32.

    bfloat16 is mixed precision (Micikevicius et al. 2018, arXiv:1710.03740; bfloat16 needs no
    loss scaling, Kalamkar et al. 2019, arXiv:1905.12322): under autocast, convolutions and
    matrix products run in bfloat16 (AMX or AVX512-BF16 on x86 CPUs, tensor cores on GPUs) while
    the weights, their gradients, the optimizer state and the update stay float32. Callers take
    the loss of :func:`loss_logits`, so the softmax and the loss are float32 too.
    """
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")


def loss_logits(out: torch.Tensor) -> torch.Tensor:
    """``out`` for the loss: float32 where autocast left it in bfloat16, else as it is (float32, float64)."""
    return out.float() if out.dtype == torch.bfloat16 else out


def augment_generator(generator: torch.Generator, aug: Augmentation) -> torch.Generator | None:
    """The generator of a client's augmentations (None when ``aug`` does nothing): its own stream under the client's
    training generator's seed, so the augmentations never shift the minibatch shuffles (and turning them on changes
    nothing else)."""
    if not aug.active:
        return None
    return torch.Generator().manual_seed(derive_seed(generator.initial_seed(), AUGMENT_STREAM))


def epoch_images(x: torch.Tensor, aug: Augmentation, generator: torch.Generator | None) -> torch.Tensor:
    """One epoch's training images: ``x`` augmented image by image with draws from ``generator``
    (:func:`augment_generator`), in the images' stored order, before the epoch's shuffle picks its minibatches. Every
    training path calls this once per client and epoch, in epoch order, so all see the same pixels (torchvision's
    per-sample transforms draw anew each time an image is loaded: once per epoch, the same distribution)."""
    return x if generator is None or not aug.active else augment(x, aug, generator)


def trainable_keys(state: Mapping[str, torch.Tensor]) -> list[str]:
    """State entries that are averaged: every floating-point tensor (weights and BN statistics)."""
    return [k for k, v in state.items() if v.is_floating_point()]


def train_client(
    model: nn.Module,
    global_state: Mapping[str, torch.Tensor],
    data: ClientData,
    cfg: LocalTraining,
    *,
    generator: torch.Generator,
    client: int = -1,
    correction: Mapping[str, torch.Tensor] | None = None,
) -> ClientUpdate:
    """Run ``cfg.epochs`` epochs of minibatch SGD and return the update.

    Parameters
    ----------
    model
        Working copy of the architecture; its weights are overwritten with ``global_state`` and
        trained (a one-step client leaves them as they were: read its update, not the model).
    global_state
        The global model's ``state_dict`` this round.
    data
        The client's local data.
    cfg
        :class:`LocalTraining`: ``lr``, ``momentum``, ``weight_decay``, ``batch_size``,
        ``epochs`` and ``prox_mu``. With ``prox_mu > 0`` the FedProx term (Li et al. 2020,
        arXiv:1812.06127) ``mu/2 * ||w - w_global||^2`` is added to the loss, i.e.
        ``mu * (w - w_global)`` to each gradient. ``precision``: :func:`forward_precision`.
    generator
        Source of the minibatch shuffling; derive it from (seed, round, client).
    correction
        Added to the gradient of each named parameter at every step: SCAFFOLD's ``c - c_i``
        (:mod:`fed8.federated.scaffold`); None: plain SGD.

    Returns
    -------
    ClientUpdate
        ``delta[k] = w_local[k] - w_global[k]`` for every float entry; mean loss over
        all minibatches of all local epochs. A client that takes exactly one step (one
        epoch, all its samples in one minibatch: cross-device clients with a few images)
        gets its update without a weight update, ``delta = -lr (grad + weight_decay * w)``
        (:func:`_one_step_update`): the same SGD step (momentum and the FedProx term are zero
        at a first step), with one rounding instead of two. A model with dropout draws its
        masks from torch's default generator seeded by ``generator``'s seed
        (:mod:`fed8.federated.model_rng`).
    """
    fast_layout(model)
    model.train()
    with client_randomness(model, generator, data.x_train.device):  # dropout: seeded per client (model_rng)
        if cfg.epochs == 1 and 0 < data.num_train <= cfg.batch_size:
            return _one_step_update(model, global_state, data, cfg, generator=generator, client=client,
                                    correction=correction)
        return _local_sgd(model, global_state, data, cfg, generator=generator, client=client, correction=correction)


def _local_sgd(model: nn.Module, global_state: Mapping[str, torch.Tensor], data: ClientData, cfg: LocalTraining, *,
               generator: torch.Generator, client: int,
               correction: Mapping[str, torch.Tensor] | None = None) -> ClientUpdate:
    """``cfg.epochs`` epochs of minibatch SGD from ``global_state`` (:func:`train_client`)."""
    model.load_state_dict(global_state)
    named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    fixes = _corrections(named, correction)
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    anchors = [p.detach().clone() for p in params] if cfg.prox_mu > 0 else None
    x, y, n, bs = data.x_train, data.y_train, data.num_train, cfg.batch_size
    device = x.device
    total, steps = torch.zeros((), device=device), 0
    aug = augment_generator(generator, cfg.augment)
    for _ in range(cfg.epochs):
        xe = epoch_images(x, cfg.augment, aug)
        perm = torch.randperm(n, generator=generator).to(device)  # the shuffle is drawn on the CPU: any device
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            with forward_precision(device, cfg.precision):
                out = model(xe[idx])
            loss = F.cross_entropy(loss_logits(out), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if anchors is not None:
                with torch.no_grad():
                    for p, a in zip(params, anchors):
                        if p.grad is not None:  # a parameter the forward pass did not use: SGD leaves it, as FedProx
                            p.grad.add_(p - a, alpha=cfg.prox_mu)
            if fixes is not None:
                for p, f in zip(params, fixes):
                    if p.grad is not None and f is not None:  # as FedProx: an unused parameter stays where it is
                        p.grad.add_(f)
            opt.step()
            total += loss.detach()
            steps += 1
    with torch.no_grad():
        local = model.state_dict()
        delta = {k: (local[k] - global_state[k]).contiguous() for k in trainable_keys(global_state)}
    return ClientUpdate(client=client, delta=delta, num_samples=n, train_loss=float(total) / max(steps, 1))


def _corrections(named, correction: Mapping[str, torch.Tensor] | None) -> list[torch.Tensor | None] | None:
    """``correction``'s tensor for each of the ``(name, parameter)`` pairs (None where it has none), in the parameter's
    dtype, device and memory layout; None when there is no correction."""
    if correction is None:
        return None
    out = []
    for k, p in named:
        f = correction.get(k)
        out.append(None if f is None else torch.empty_like(p).copy_(f.to(device=p.device, dtype=p.dtype)))
    return out


def _one_step_update(model: nn.Module, global_state: Mapping[str, torch.Tensor], data: ClientData,
                     cfg: LocalTraining, *, generator: torch.Generator, client: int,
                     correction: Mapping[str, torch.Tensor] | None = None) -> ClientUpdate:
    """The update of a client that takes one SGD step from ``global_state``.

    One step of SGD is ``w_1 = w_0 - lr (g + wd w_0)`` whatever the momentum (its buffer starts as
    ``g``) and the FedProx coefficient (``w_0 - w_global = 0``), so ``delta = -lr (g + wd w_0)``
    is computed in the gradient's own buffer, and the weights are never written: the model's
    parameters point at the global tensors for the pass (:func:`_global_weights`) instead of
    holding a copy. Skipping the copy, the step and the subtraction saves four passes over the
    weights, 15% of a batch-8 ``cnn`` client's time on two threads (docs/BENCHMARKS.md, "One-step
    clients"). Buffers (BatchNorm statistics) are copied and updated by the forward pass as in
    any step, and their delta is taken as usual.
    """
    x, y, n = data.x_train, data.y_train, data.num_train
    params = dict(model.named_parameters())
    x = epoch_images(x, cfg.augment, augment_generator(generator, cfg.augment))
    with _global_weights(model, params, global_state):
        idx = torch.randperm(n, generator=generator).to(x.device)  # the general loop's first draw
        with forward_precision(x.device, cfg.precision):
            out = model(x[idx])
        loss = F.cross_entropy(loss_logits(out), y[idx])
        model.zero_grad(set_to_none=True)
        loss.backward()
        delta = {}
        buffers = dict(model.named_buffers())
        with torch.no_grad():
            for k in trainable_keys(global_state):
                p = params.get(k)
                if p is None:  # a buffer: what the forward pass made of it
                    delta[k] = (buffers[k] - global_state[k]).contiguous()
                elif p.grad is None:  # frozen, or not used by the forward pass: SGD leaves it as it is
                    delta[k] = torch.zeros_like(global_state[k])
                else:
                    g = p.grad if cfg.weight_decay == 0 else p.grad.add_(p, alpha=cfg.weight_decay)
                    if correction is not None and k in correction:  # SCAFFOLD's c - c_i
                        g = g.add_(correction[k].to(device=g.device, dtype=g.dtype))
                    delta[k] = g.mul_(-cfg.lr).contiguous()
        model.zero_grad(set_to_none=True)  # the gradients now hold the update: keep them out of the next client
    return ClientUpdate(client=client, delta=delta, num_samples=n, train_loss=float(loss.detach()))


@contextlib.contextmanager
def _global_weights(model: nn.Module, params: Mapping[str, nn.Parameter],
                    global_state: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Within the block, ``model`` computes with ``global_state``'s weights; its own tensors come back after.

    A parameter whose global tensor has its dtype, device and memory layout points at that
    tensor (read-only use: several clients may read it at once); the others (convolution
    weights kept channels-last by :func:`fast_layout`, small) and the buffers are copied.
    """
    if global_state.keys() != model.state_dict().keys():
        model.load_state_dict(global_state)  # its error names what is missing or unexpected
    own: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for k, p in params.items():
                g = global_state[k]
                if g.dtype == p.dtype and g.device == p.device and g.shape == p.shape and g.stride() == p.stride():
                    own[k] = p.data
                    p.data = g
                else:
                    p.copy_(g)
            for k, b in model.named_buffers():
                if k in global_state:  # non-persistent buffers are not in a state dict
                    b.copy_(global_state[k])
        yield
    finally:
        for k, t in own.items():
            params[k].data = t


def to_device(data: ClientData, device: torch.device) -> ClientData:
    """``data`` with its tensors on ``device`` (itself when already there)."""
    if data.x_train.device == device:
        return data
    return ClientData(data.x_train.to(device), data.y_train.to(device), data.x_test.to(device), data.y_test.to(device))
