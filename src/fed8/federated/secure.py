"""Secure summation as a sum that DP-FedAvg's aggregator wraps (:class:`SecureWeightedSum`).

Same interface as :class:`fed8.federated.aggregator.WeightedMean`'s sum (``configure``,
``add_weighted``, ``total``) over :class:`fed8.privacy.secagg.SecureSum`: the server
only ever learns the total of the clipped, weighted updates, the total weight and the
count of unclipped clients, plus the real bytes of every protocol message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from .aggregator import Aggregator, Tensors, Total

__all__ = ["MaskedInput", "SecureWeightedSum"]


@dataclass(frozen=True)
class MaskedInput:
    """A client's masked ring input, encoded on the client (over Flower: on its SuperNode).

    Takes the place of a :class:`~fed8.federated.client.ClientUpdate` in the round: the
    server never sees the update, so validation, clipping and weighting happened on the
    client, and the wrappers pass it to the secure sum untouched.
    """

    client: int
    payload: bytes
    num_samples: int
    train_loss: float | None  # None: the client kept it (privacy.client_reports off)


class SecureWeightedSum(Aggregator):
    """A round's weighted sum computed by the secure-aggregation protocol.

    Parameters
    ----------
    secure
        A :class:`fed8.privacy.secagg.SecureSum` (threshold, floor, dropouts, randomness).
    """

    def __init__(self, secure) -> None:
        self.secure = secure
        self.clip_norm, self.ddg, self.num_updates = 1.0, None, 0

    def configure(self, *, clip_norm: float, ddg=None) -> None:
        """The public numbers the round's encoding is fixed from (before :meth:`begin`).

        ``ddg``: the run's :class:`fed8.privacy.ddg.DDG` under distributed DP, else None.
        """
        self.clip_norm, self.ddg = clip_norm, ddg

    def begin(self, rnd: int, clients: Sequence[int] = ()) -> None:
        self.rnd, self.num_updates = rnd, 0
        self.secure.begin(rnd, clients, clip_norm=self.clip_norm, ddg=self.ddg)

    def add_weighted(self, client: int, tensors: Mapping[str, torch.Tensor], weight: float, bit: int = 0) -> None:
        self.secure.add(client, tensors, weight=weight, bit=bit)
        self.num_updates += 1

    def add_masked(self, update: MaskedInput) -> None:
        """A masked input the client encoded itself (its protocol driver is remote)."""
        self.secure.add_masked(update.client, update.payload)
        self.num_updates += 1

    def total(self) -> Total:
        if self.num_updates == 0:
            return Total(None, 0.0, 0, 0, {})
        res = self.secure.finish()
        return Total(res.total, res.weight_sum, res.bit_sum, res.num_inputs, {
            "uplink_bytes": sum(res.uplink_bytes.values()), "secagg_downlink_bytes": sum(res.downlink_bytes.values()),
            "secagg_ring_bits": res.ring_bits, "secagg_inputs": res.num_inputs})

    def result(self, params: Mapping[str, torch.Tensor]) -> Tensors:  # pragma: no cover - always wrapped
        raise NotImplementedError("SecureWeightedSum is a sum: wrap it in PrivateAggregate.")
