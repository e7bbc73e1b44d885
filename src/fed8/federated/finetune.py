"""Fine-tuned accuracy: how well each client does after adapting the final global model to its own data.

One global model serves every client, and on non-IID data it serves some of them poorly. The
standard measure of what is left on the table is local fine-tuning ("FedAvg-FT": Wang et al.
2019, arXiv:1910.10252; Yu et al. 2020, arXiv:2002.04758; the baseline of personalization
papers such as Collins et al. 2021, FedRep, arXiv:2102.07078): after the last round every
client trains the global model ``E`` more epochs on its own training images and evaluates the
result on its own test split::

    theta_k = LocalSGD_k(theta_T, E epochs)        client_accuracy_finetuned_* = stats_k acc_k(theta_k)

Local SGD is the run's (batch size, learning rate of the last round, momentum, weight decay;
no proximal term, no drift correction: plain fine-tuning), its shuffles from
``(seed, FINETUNE, client)``, so both runtimes give the same numbers. The fine-tuned models stay
on the clients; only their correct-prediction counts are reported, like the global model's
client accuracy (``privacy.client_reports``).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import torch
from torch import nn

from .._rng import FINETUNE, torch_generator
from .client import ClientData, LocalTraining, train_client
from .evaluate import client_accuracy_from_counts, predict_correct

__all__ = ["FINETUNED_KEYS", "finetune_correct", "finetuned_stats", "finetuning"]

FINETUNED_KEYS = ("client_accuracy_finetuned_mean", "client_accuracy_finetuned_p10", "client_accuracy_finetuned_min")


def finetuning(local: LocalTraining, rnd: int, epochs: int) -> LocalTraining:
    """The fine-tuning values: ``local`` at round ``rnd`` (the last) with ``epochs`` epochs, plain SGD."""
    return dataclasses.replace(local.at_round(rnd), epochs=epochs, epochs_min=0, prox_mu=0.0)


def finetune_correct(model: nn.Module, state: Mapping[str, torch.Tensor], data: ClientData, local: LocalTraining, *,
                     seed: int, client: int, batch_size: int) -> tuple[int, int]:
    """Client ``client``'s ``(correct, images)`` on its local test split after fine-tuning ``state`` with ``local``
    (:func:`finetuning`'s values) on its training images; ``batch_size``: of the evaluation."""
    if data.num_train > 0:
        u = train_client(model, state, data, local, generator=torch_generator(seed, FINETUNE, client), client=client)
        state = {k: v + u.delta[k] if k in u.delta else v for k, v in state.items()}
    model.load_state_dict(state)
    _, correct = predict_correct(model, data.x_test, data.y_test, batch_size=batch_size)
    return int(correct.sum()), int(correct.numel())


def finetuned_stats(counts: Sequence[tuple[int, int]]) -> dict[str, float | None]:
    """``client_accuracy_finetuned_mean / p10 / min`` from each client's ``(correct, images)``."""
    stats = client_accuracy_from_counts(counts)
    return {k.replace("client_accuracy_", "client_accuracy_finetuned_"): v for k, v in stats.items()}
