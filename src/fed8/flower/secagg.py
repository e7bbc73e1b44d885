"""Secure aggregation over Flower messages: fed8's protocol, one message type per stage.

The clients' halves of :mod:`fed8.privacy.secagg.protocol` run on the SuperNodes; the
server (:class:`FlowerSecureSum`, in place of the simulation's
:class:`~fed8.privacy.secagg.SecureSum` under the same DP wrapper) routes messages, sums
the masked inputs and unmasks the total. Round ``r``, sampled clients ``U``::

    query.secagg_keys    S -> u: t, k, length          u -> S: 2 public keys (64 bytes)        -> U1
    query.secagg_shares  S -> u: the keys of U1        u -> S: encrypted shares for each v     -> U1
    train                S -> u: model, the shares      u -> S: masked ring input of its
                         addressed to u, clip bound,    clipped, weighted, rotated, stochastically
                         the public encoding            rounded update (or, under distributed   -> U2
                                                        DP, its discrete Gaussian encoding)
    query.secagg_unmask  S -> u: U2                    u -> S: shares of b_v (v in U2) or of
                                                        s_v (v in U1 \\ U2)

Each stage waits ``federation.round_timeout_s``; a client that does not answer a stage
drops out of the rest of the round. Fewer than ``t`` clients at a stage, or fewer than
``privacy.secagg_min_clients`` inputs, and the round is abandoned with the reason
(:class:`~fed8.errors.SecAggError`); nothing is unmasked. The encoding's randomness
(stochastic rounding, the discrete Gaussian noise under distributed DP) is drawn on the node, from its OS CSPRNG
under DP; without DP it is seeded, so the unmasked sum is the simulation's exactly.
A client's private keys stay in an owner-only file on its node
(:meth:`fed8.flower.node.NodeState.save_secagg`) and are deleted after unmasking.
"""

from __future__ import annotations

import json
import logging
from typing import Mapping, Sequence

import torch

from ..errors import SecAggError
from ..privacy.secagg import SecAggServer, SumResult, threshold_for
from ..privacy.secagg.ring import flatten, unflatten
from ..privacy.secagg.summer import RoundEncoding

__all__ = ["FlowerSecureSum"]

log = logging.getLogger("fed8")


class FlowerSecureSum:
    """The server's side of secure aggregation with the clients on SuperNodes.

    Parameters
    ----------
    transport
        The :class:`~fed8.flower.transport.FlowerTransport` whose Grid reaches the clients.
    expected
        ``{name: shape}`` of the model's float tensors (the update's layout).
    seed, threshold, min_clients, bound_sigmas
        As for :class:`fed8.privacy.secagg.SecureSum`.
    weight_cap
        Client weights ``min(1, n_k / cap)``, or uniform if 0 (sent to the clients: public).
    """

    def __init__(self, transport, expected: Mapping[str, Sequence[int]], *, seed: int, threshold: float,
                 min_clients: int, weight_cap: float, bound_sigmas: float = 4.0) -> None:
        self.transport, self.seed = transport, seed
        self.threshold_fraction, self.min_clients, self.bound_sigmas = threshold, min_clients, bound_sigmas
        self.weight_cap = weight_cap
        self.layout = flatten({k: torch.zeros(tuple(v)) for k, v in expected.items()})[1]
        self.dim = sum(int(torch.Size(s).numel()) for _, s in self.layout)
        self.failed: str | None = None

    def _stage(self, kind: str, clients: Sequence[int], records) -> dict[int, object]:
        from flwr.app import ArrayRecord

        t, empty = self.transport, ArrayRecord({})
        return t.send(kind, self.rnd, {u: t.message(kind, self.rnd, u, empty, extra={"secagg": records(u)},
                                                    **self._job) for u in clients})

    def begin(self, rnd: int, participants: Sequence[int], *, clip_norm: float, ddg=None) -> None:
        """Stages 0 and 1 (keys, encrypted shares) with the sampled clients."""
        from flwr.app import ArrayRecord

        from .messages import bytes_array, from_bytes_array

        self.rnd, self.clip_norm, self.failed = rnd, clip_norm, None
        self.participants = sorted(participants)
        n = len(self.participants)
        self.t = threshold_for(n, self.threshold_fraction)
        if ddg is not None:  # no sum of fewer than the mechanism's t noise shares is ever unmasked
            self.t = max(self.t, ddg.shares)
        self.enc = RoundEncoding.for_round(rnd, seed=self.seed, participants=n, dim=self.dim, clip_norm=clip_norm,
                                           ddg=ddg, bound_sigmas=self.bound_sigmas)
        self.server = SecAggServer(rnd, self.t, self.enc.k, self.enc.length)
        self.up = {u: 0 for u in self.participants}
        self.down = {u: 0 for u in self.participants}
        self._job = {"t": self.t, "ring-bits": self.enc.k, "length": self.enc.length, "participants": n}
        if not n:
            return
        if ddg is not None and n < ddg.shares:
            self.failed = (f"secure aggregation round {rnd}: {n} participants, fewer than the t = {ddg.shares} noise "
                           "shares the distributed discrete Gaussian needs in every sum")
            return
        self.transport.refresh(self.participants)
        keys = self._stage("query.secagg_keys", self.participants, lambda u: ArrayRecord({}))
        for u, c in keys.items():
            self.server.adverts[u] = from_bytes_array(c["secagg"]["advert"])
            self.up[u] += 64
        if len(self.server.adverts) < self.t:
            self.failed = (f"secure aggregation round {rnd}: only {len(self.server.adverts)} of {n} clients "
                           f"advertised keys within the deadline, fewer than t = {self.t}")
            return
        adverts = ArrayRecord({str(u): bytes_array(a) for u, a in self.server.adverts.items()})
        u1 = sorted(self.server.adverts)
        for u in u1:
            self.down[u] += 68 * len(u1)
        shares = self._stage("query.secagg_shares", u1, lambda u: adverts)
        for u, c in shares.items():
            cts = {int(v): from_bytes_array(a) for v, a in c["secagg"].items()}
            self.up[u] += sum(len(m) + 4 for m in cts.values())
            self.server.collect_shares(u, cts)
        if len(self.server.u1) < self.t:
            self.failed = (f"secure aggregation round {rnd}: only {len(self.server.u1)} clients sent their "
                           f"encrypted shares within the deadline, fewer than t = {self.t}")

    def train_records(self, u: int):
        """What client ``u``'s train message carries for stage 2: its inbox and the public encoding."""
        from flwr.app import ArrayRecord, ConfigRecord

        from .messages import bytes_array

        inbox = self.server.inboxes.get(u, {})
        self.down[u] += sum(len(m) + 4 for m in inbox.values())
        return (ArrayRecord({str(v): bytes_array(ct) for v, ct in inbox.items()}),
                ConfigRecord({"clip-norm": float(self.clip_norm), "weight-cap": float(self.weight_cap),
                              "participants": len(self.participants)}))

    def ready(self, u: int) -> bool:
        """Whether ``u`` may send input (it shared keys) and the round is still alive."""
        return self.failed is None and u in self.server.u1

    def add_masked(self, client: int, payload: bytes) -> None:
        self.server.add_masked(client, payload)
        self.up[client] += len(payload)

    def add(self, *a, **k) -> None:  # pragma: no cover - the clients encode on their nodes
        raise SecAggError("over Flower the clients encode their own input; the server only adds masked inputs.")

    def finish(self) -> SumResult:
        """Stage 3 (unmasking by the clients that shared keys) and the dequantized, un-rotated sum."""
        from flwr.app import ArrayRecord

        from .messages import from_bytes_array

        if self.failed:
            raise SecAggError(self.failed + "; the round is abandoned and nothing is unmasked.")
        senders = list(self.server.senders)
        if not senders:
            raise SecAggError(f"secure aggregation round {self.rnd}: no client sent masked input.")
        if len(senders) < self.min_clients:
            raise SecAggError(
                f"secure aggregation round {self.rnd}: only {len(senders)} client(s) sent masked input, fewer than "
                f"the participation floor of {self.min_clients}; the sum is not unmasked (it would reveal too few "
                "clients' updates) and the round is abandoned.")
        survivors = sorted(self.server.u1)
        self._job = {**self._job, "senders": json.dumps(sorted(senders))}
        for u in survivors:
            self.down[u] += 4 * len(senders)
        replies = self._stage("query.secagg_unmask", survivors, lambda u: ArrayRecord({}))
        responses = {}
        for u, c in replies.items():
            r = {int(name[1:]): (name[0], from_bytes_array(a)) for name, a in c["secagg"].items()}
            self.up[u] += sum(5 + len(s) for _, s in r.values())
            responses[u] = r
        vec, weight_sum, bit_sum = self.enc.decode(self.server.unmask(responses))
        return SumResult(unflatten(vec, self.layout), weight_sum, bit_sum, len(senders), self.enc.k,
                         dict(self.up), dict(self.down))
