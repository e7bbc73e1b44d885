"""Assemble a federation from a config: data, partition, clients, model, aggregator, optimizer, wire.

:func:`load_federation` builds what every stage needs from the data (the clients' shards,
the eval split, the model); :func:`prepare` adds what only training needs (the privacy
plan, the aggregator chain, the server optimizer, the codecs) and returns the
:class:`~fed8.federated.simulation.Simulation`. The quantize stage uses the first alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._rng import INIT, derive_seed
from ..config import Config

log = logging.getLogger("fed8")

if TYPE_CHECKING:
    from ..federated.client import LocalTraining

__all__ = ["Federation", "Prepared", "client_parallelism_of", "load_federation", "load_node_data", "local_training",
           "make_wire", "prepare"]


@dataclass
class Federation:
    """The data side of a run: clients, eval split, the model at round 0, the partition summary."""

    clients: list
    eval_x: torch.Tensor
    eval_y: torch.Tensor
    model: torch.nn.Module
    partition: dict
    classes: tuple[str, ...]
    input_shape: tuple[int, int, int]

    @property
    def local_test(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every client's local test split in one tensor, its labels, and the owner of each image."""
        from ..federated.client import local_test_split

        return local_test_split(self.clients)


def local_training(train, *, seed: int) -> "LocalTraining":
    """The client step's values from the ``[train]`` section (FedDyn's ``feddyn_alpha`` as the proximal term) and the
    run's ``seed`` (each client's epochs under ``train.local_epochs_min``)."""
    from ..data.augment import Augmentation
    from ..federated.client import LocalTraining

    return LocalTraining(epochs=train.local_epochs, batch_size=train.batch_size, lr=train.lr,
                         momentum=train.momentum, weight_decay=train.weight_decay,
                         prox_mu=train.feddyn_alpha or train.prox_mu,  # FedDyn's alpha is its proximal term
                         precision=train.precision, augment=Augmentation(train.augment, train.augment_pad),
                         lr_schedule=train.lr_schedule, lr_decay=train.lr_decay, rounds=train.rounds,
                         epochs_min=train.local_epochs_min, seed=seed)


def client_parallelism_of(cfg: Config, model: torch.nn.Module, device_type: str, *,
                          tell: bool = False) -> tuple[int, int]:
    """``(clients trained at once, torch threads per client)`` of a run on this machine
    (:func:`fed8.federated.parallel.client_parallelism` over ``run.threads``, ``run.parallel_clients``, the clients
    a round samples and the model's size). A model with dropout trains one client at a time
    (:mod:`fed8.federated.model_rng`); ``tell`` logs that once."""
    import math
    import os

    from ..federated.model_rng import randomness_reason
    from ..federated.parallel import client_parallelism
    from ..federated.sampling import num_sampled

    n, q = cfg.data.num_clients, cfg.train.fraction
    per_round = num_sampled(n, q) if cfg.train.sampling == "fixed" else math.ceil(q * n)
    threads = cfg.run.threads or os.cpu_count() or 1
    why = randomness_reason(model)
    if why is not None:
        if tell and cfg.run.parallel_clients != 1:  # a warning where P > 1 was asked for, a note under auto (0)
            (log.warning if cfg.run.parallel_clients > 1 else log.info)(
                "clients train one at a time on %d thread(s): %s", threads, why)
        return 1, threads
    return client_parallelism(threads=threads, parallel_clients=cfg.run.parallel_clients,
                              clients_per_round=per_round, device_type=device_type,
                              state_bytes=sum(v.numel() * v.element_size() for v in model.state_dict().values()
                                              if v.is_floating_point()))


def check_augmentation(train, height: int, width: int) -> None:
    """Refuse ``train.augment_pad`` larger than half the images' side (:func:`fed8.data.augment.crop_padding`)."""
    from ..data.augment import Augmentation, crop_padding
    from ..errors import ConfigError, ParameterError

    try:
        crop_padding(Augmentation(train.augment, train.augment_pad), height, width)
    except ParameterError:
        raise ConfigError(f"train.augment_pad = {train.augment_pad} is more than half the side of the data's "
                          f"{height}x{width} images, so random crops would be mostly padding. Use 1..{min(height, width) // 2}"
                          f", or 0 for {max(1, min(height, width) // 8)}.") from None


def load_federation(cfg: Config) -> Federation:
    """Load the data, partition it across the clients and build the model (seeded by (seed, INIT))."""
    from ..data import load_splits, local_split, partition, partition_summary, to_float
    from ..federated import ClientData
    from ..models import build_model

    splits = load_splits(cfg.data)
    train, ev = splits.train, splits.eval
    labels = train.labels.numpy()
    parts = partition(labels, cfg.data.num_clients, cfg.data.partition, alpha=cfg.data.alpha,
                      shards_per_client=cfg.data.shards_per_client, seed=cfg.run.seed,
                      owners=None if train.owners is None else train.owners.numpy())
    client_splits = [local_split(p, test_fraction=cfg.data.test_fraction, seed=cfg.run.seed, client=k)
                     for k, p in enumerate(parts)]
    # Lay the clients out contiguously so each client's tensors are views, not copies.
    order = np.concatenate([np.concatenate([s.train, s.test]) for s in client_splits])
    x_all, y_all = to_float(train.images[torch.from_numpy(order)]), train.labels[torch.from_numpy(order)]
    clients, at = [], 0
    for s in client_splits:
        a, b, c = at, at + len(s.train), at + len(s.train) + len(s.test)
        clients.append(ClientData(x_all[a:b], y_all[a:b], x_all[b:c], y_all[b:c]))
        at = c
    c_, h, w = train.shape
    check_augmentation(cfg.train, h, w)
    model = build_model(cfg.model.name, in_channels=c_, height=h, width=w, num_classes=train.num_classes,
                        norm=cfg.model.norm, hidden=cfg.model.hidden, seed=derive_seed(cfg.run.seed, INIT),
                        allow_import=True)
    return Federation(clients, to_float(ev.images), ev.labels, model,
                      partition_summary(client_splits, labels, train.num_classes), train.classes, train.shape)


def load_node_data(cfg: Config, path: str, *, client: int, source: str | None = None):
    """A real node's own data: every image at ``path`` (read as ``source``, default ``data.source``).

    The node keeps ``data.test_fraction`` of them as its local test split (seeded by
    (seed, client), as in simulation) and trains on the rest. Returns ``(model, ClientData)``;
    the model is the run's architecture for this data's image shape and classes (the
    server's model must match it, or loading the broadcast fails with both shapes named).
    """
    import dataclasses

    from ..data import load_splits, local_split, to_float
    from ..errors import DataError
    from ..federated import ClientData
    from ..models import build_model

    src = source or cfg.data.source
    if src == "mnist10k":
        raise DataError("node config data-source = 'mnist10k' is the bundled dataset, not a node's own data; give "
                        "data-path with data-source = idx | cifar10 | folder | npz, or use partition-id.")
    # the node's files are its own client's data: the run's partition (natural included) does not apply to them
    splits = load_splits(dataclasses.replace(cfg.data, source=src, path=str(path), subset=0, partition="iid"))
    images = torch.cat([splits.train.images, splits.eval.images])
    labels = torch.cat([splits.train.labels, splits.eval.labels])
    s = local_split(np.arange(len(labels)), test_fraction=cfg.data.test_fraction, seed=cfg.run.seed, client=client)
    tr, te = torch.from_numpy(s.train), torch.from_numpy(s.test)
    x = to_float(images)
    c, h, w = splits.train.shape
    check_augmentation(cfg.train, h, w)
    model = build_model(cfg.model.name, in_channels=c, height=h, width=w, num_classes=splits.train.num_classes,
                        norm=cfg.model.norm, hidden=cfg.model.hidden, seed=derive_seed(cfg.run.seed, INIT),
                        allow_import=True)
    return model, ClientData(x[tr], labels[tr], x[te], labels[te])


def _warn_inactive_keys(cfg) -> None:
    """Warn about keys set away from their default that this run's other choices ignore (:mod:`fed8._inactive`)."""
    from .._inactive import inactive_keys

    for why in inactive_keys(cfg):
        log.warning("config: %s", why)


def _warn_if_noise_swamps(plan, *, dim: int, clients_per_round: float) -> None:
    """Warn before training when the DP noise on the mean update dwarfs any client's clipped update."""
    from ..privacy.plan import NOISE_RATIO_WARN, noise_to_clip_ratio

    ratio = noise_to_clip_ratio(plan, dim=dim, clients_per_round=clients_per_round)
    if ratio is not None and ratio > NOISE_RATIO_WARN:
        log.warning(
            "privacy: the noise on each round's mean update has about %.0fx the norm of one clipped update (noise "
            "std %.3g clip_norm on the sum of %g clients' updates of %s values), and runs above %.0fx lost much or "
            "all of their accuracy in fed8's measurements (README, 'Privacy'). The ratio falls as 1 / m with more "
            "clients per round (data.num_clients, train.fraction), as 1 / sqrt(values) with a smaller model, and "
            "with a larger privacy.target_epsilon.", ratio, ratio * max(clients_per_round, 1.0) / dim ** 0.5,
            clients_per_round, f"{dim:,}", NOISE_RATIO_WARN)


@dataclass
class Prepared:
    """Everything a run needs before round 1: data, clients, model, aggregator, partition summary."""

    config: Config
    simulation: Any
    state: dict[str, torch.Tensor]
    partition: dict
    classes: tuple[str, ...]
    input_shape: tuple[int, int, int]
    num_parameters: int
    plan: Any = None


def make_wire(cfg: Config, num_clients: int, residuals: Path | None = None):
    """The uplink / downlink codecs of ``cfg.compression``; error-feedback residuals under ``residuals``."""
    from ..compression import ResidualStore, make_codec
    from ..compression.wire import Wire

    c = cfg.compression
    opts = dict(granularity=c.granularity, block_size=c.block_size, rounding=c.rounding,
                topk_fraction=c.topk_fraction)
    store = ResidualStore(residuals) if c.error_feedback else None
    return Wire(make_codec(c.uplink, **opts), make_codec(c.downlink, **opts), seed=cfg.run.seed,
                num_clients=num_clients, downlink_mode=c.downlink_mode, residuals=store)


def _control_store(cfg: Config, root: Path | None):
    """The clients' own state under ``root`` (None: in memory): SCAFFOLD's controls, FedDyn's gradient estimates; None
    without either."""
    if not (cfg.train.scaffold or cfg.train.feddyn_alpha > 0):
        return None
    from ..compression import ResidualStore

    return ResidualStore(root)


def prepare(cfg: Config, residuals: Path | None = None, controls: Path | None = None):
    """Load data, partition it, build the clients, the model, the aggregator, the optimizer and the wire.

    ``residuals``: folder for error-feedback residuals (the run directory's); in memory if None.
    ``controls``: the same for SCAFFOLD's client controls (``train.scaffold``).
    """

    from ..federated import Simulation
    from ..models import count_parameters
    from ..privacy import check_model_for_dp
    from ..federated.optimizer import tied_aliases
    from ..privacy.randomness import privacy_randomness
    from .._device import native_bfloat16, resolve_device
    from .aggregation import (check_combination, client_reports_on, expected_clients, make_aggregator,
                              make_server_optimizer, privacy_plan)

    check_combination(cfg)
    _warn_inactive_keys(cfg)
    # a bad budget is refused before any data loads; the distributed discrete Gaussian needs the model's size
    plan = privacy_plan(cfg) if cfg.privacy.noise_placement != "distributed" else None
    fed = load_federation(cfg)
    model, clients = fed.model, fed.clients
    if cfg.privacy.dp != "none":
        check_model_for_dp(model, model_name=cfg.model.name)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    dim = sum(v.numel() for v in state.values() if v.is_floating_point())
    if plan is None:
        plan = privacy_plan(cfg, dim=dim)
    _warn_if_noise_swamps(plan, dim=dim, clients_per_round=expected_clients(cfg))
    param_names = {k for k, _ in model.named_parameters()}
    tied = tied_aliases(model)
    if tied:
        log.warning("the model ties parameters (%s): each name travels as its own tensor (counted in the bytes), and "
                    "the server sets every alias to its parameter's new value each round",
                    ", ".join(f"{a} is {n}" for a, n in sorted(tied.items())[:3]) + (", ..." if len(tied) > 3 else ""))
    buffers = [k for k, v in state.items() if v.is_floating_point() and k not in param_names and k not in tied]
    aggregator, hooks = make_aggregator(
        cfg, plan, client_sizes=[c.num_train for c in clients],
        expected={k: tuple(v.shape) for k, v in state.items() if v.is_floating_point()},
        params=[k for k, p in model.named_parameters() if p.requires_grad and p.is_floating_point()],
        local=local_training(cfg.train, seed=cfg.run.seed))
    t = cfg.train
    device = resolve_device(cfg.run.device)
    if t.precision == "bfloat16" and not native_bfloat16(device):
        log.warning(
            "train.precision = 'bfloat16' on %s, which has no native bfloat16 kernels: it is emulated and slower than "
            "float32 there; set train.precision = 'float32'", device)
    parallel, client_threads = client_parallelism_of(cfg, model, device.type, tell=True)
    # A privacy budget may cut the rounds (privacy.budget = "stop"); the saved config keeps the plan's input.
    sim = Simulation(model=model, clients=clients, eval_x=fed.eval_x, eval_y=fed.eval_y,
                     aggregator=aggregator, optimizer=make_server_optimizer(cfg, buffers=buffers, tied=tied),
                     local=local_training(t, seed=cfg.run.seed),
                     rounds=plan.rounds, fraction=t.fraction, sampling=t.sampling, eval_every=cfg.eval.every,
                     eval_batch_size=cfg.eval.batch_size, seed=cfg.run.seed,
                     wire=make_wire(cfg, len(clients), residuals), client_hooks=hooks,
                     sampling_randomness=privacy_randomness(
                         dp=cfg.privacy.dp != "none", insecure_reproducible=cfg.privacy.insecure_reproducible_noise,
                         seed=cfg.run.seed),
                     client_batch_size=1 if cfg.run.client_batching == "off" else cfg.run.client_batch_size,
                     batch_when_slower=cfg.run.client_batching == "on",
                     device=device, parallel_clients=parallel, client_threads=client_threads,
                     client_reports=client_reports_on(cfg), controls=_control_store(cfg, controls),
                     finetune_epochs=cfg.eval.finetune_epochs)
    return Prepared(cfg, sim, state, fed.partition, fed.classes, fed.input_shape, count_parameters(model), plan)
