"""Secure summation of client updates for the simulation: the ring encoding of
:mod:`.ring` driven through the protocol of :mod:`.protocol`, with dropouts and the
real bytes of every message counted.

Each participant's input is ``[codes of R(w x) (d values), weight code, clip bit]``:
``x`` its clipped update, ``w`` in [0, 1] its aggregation weight (quantized to
``round(127 w) / 127`` and applied before encoding, so the weight code sum is exactly
the sum of the weights applied), and the bit ``1[||x_raw|| <= C]`` for adaptive clipping.

Under distributed DP (a :class:`fed8.privacy.ddg.DDG` mechanism) the input is the ``d``
values of the distributed discrete Gaussian, ``(round(R(w x) / gamma) + N_Z(0, sigma^2)) mod
2^b``, and with adaptive clipping one more, the clip bit with its own integer noise, ``(b +
N_Z(0, sigma_b^2)) mod 2^b``. The weight code is not sent (it would reach the server without
noise), nor the bit under a fixed clip norm, and no sum of fewer than the mechanism's ``t``
inputs is unmasked. The grid step follows the round's clip norm (:meth:`DDG.at_clip`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch

from ..._rng import SECAGG, torch_generator
from ...errors import ParameterError, SecAggError
from ..randomness import PrivacyRandomness
from ..ddg import DDG
from .protocol import SecAggClient, SecAggServer, threshold_for
from .ring import flatten, from_ring, ring_bits, rotate, shared_scale, to_ring, unflatten, unrotate

__all__ = ["RoundEncoding", "SecureSum", "SumResult"]

# sub-streams of SECAGG
_ROTATION, _ROUNDING, _NOISE, _DROPOUT = 1, 2, 3, 4


@dataclass
class SumResult:
    """The unmasked, dequantized sum and what came with it."""

    total: dict[str, torch.Tensor]
    weight_sum: float | None  # None under distributed DP (not sent)
    bit_sum: int | None  # under distributed DP: the noised count (adaptive clipping), else None
    num_inputs: int
    ring_bits: int
    uplink_bytes: dict[int, int] = field(default_factory=dict)
    downlink_bytes: dict[int, int] = field(default_factory=dict)
    client_seconds: dict[int, float] = field(default_factory=dict)
    server_seconds: float = 0.0


@dataclass(frozen=True)
class RoundEncoding:
    """One round's public encoding, the same on every client: rotation signs, shared scale, ring bits.

    Each client's ring input is ``[to_ring(R(w x)), weight code, clip bit]`` (``length =
    padded + 2`` elements), or under distributed DP (``ddg``, at this round's clip norm) the
    ``padded`` values of the distributed discrete Gaussian in Z_(2^b), then the noised clip
    bit when the mechanism has one (adaptive clipping). :meth:`encode` is the client's half, run in
    this process by :class:`SecureSum` and on the SuperNode over Flower, :meth:`decode` the
    server's after unmasking.
    """

    rnd: int
    seed: int
    k: int
    dim: int
    scale: float
    ddg: DDG | None = None

    @classmethod
    def for_round(cls, rnd: int, *, seed: int, participants: int, dim: int, clip_norm: float,
                  ddg: DDG | None = None, bound_sigmas: float = 4.0) -> "RoundEncoding":
        padded = dim + dim % 2
        if ddg is not None:
            if ddg.dim != padded:
                raise SecAggError(f"the update has {dim} values (padded {padded}); the run's distributed discrete "
                                  f"Gaussian was planned for {ddg.dim}. Every node must run the same model.")
            ddg = ddg.at_clip(clip_norm)
            return cls(rnd, seed, ddg.bits, dim, ddg.gamma, ddg)
        return cls(rnd, seed, ring_bits(participants), dim,
                   shared_scale(clip_norm=clip_norm, dim=padded, bound_sigmas=bound_sigmas))

    @property
    def padded(self) -> int:
        return self.dim + self.dim % 2

    @property
    def length(self) -> int:
        if self.ddg is not None:
            return self.padded + (1 if self.ddg.count_sigma2 else 0)
        return self.padded + 2

    def signs(self) -> torch.Tensor:
        g = torch_generator(self.seed, SECAGG, _ROTATION, self.rnd)
        return torch.randint(0, 2, (self.padded,), generator=g).to(torch.float32) * 2 - 1

    def encode(self, vec: torch.Tensor, *, weight: float, bit: int, client: int, randomness: PrivacyRandomness,
               signs: torch.Tensor | None = None) -> np.ndarray:
        """The client's ring input for its flattened, clipped update ``vec``."""
        signs = signs if signs is not None else self.signs()
        w = min(max(weight, 0.0), 1.0)
        x = torch.zeros(self.padded)
        rounding = randomness.draws(SECAGG, _ROUNDING, self.rnd, client)
        if self.ddg is not None:  # distributed DP: rounded to the grid, this client's discrete Gaussian added
            x[: self.dim] = vec * w
            noise = randomness.draws(SECAGG, _NOISE, self.rnd, client)
            values = self.ddg.encode(rotate(x, signs), draws=rounding, words=noise.words)
            if not self.ddg.count_sigma2:
                return values
            return np.concatenate([values, self.ddg.encode_count(bit, words=noise.words)])
        code = int(round(127 * w))
        x[: self.dim] = vec * (code / 127)
        ring = np.empty(self.length, dtype=np.uint32)
        ring[: self.padded] = to_ring(rotate(x, signs), self.scale, self.k, draws=rounding)
        ring[self.padded :] = [code, int(bit)]
        return ring

    def decode(self, unmasked: np.ndarray, signs: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, float | None, int | None]:
        """The summed update (flat), the sum of the weights applied and the clip-bit sum.

        Under DDG: no weight sum, and the clip-bit sum is the noised count (None without one).
        """
        signs = signs if signs is not None else self.signs()
        if self.ddg is not None:
            total = from_ring(unmasked, self.k)
            y = torch.from_numpy(total[: self.padded].astype(np.float64) * self.ddg.gamma).to(torch.float32)
            count = int(total[self.padded]) if self.ddg.count_sigma2 else None
            return unrotate(y, signs)[: self.dim], None, count
        total = from_ring(unmasked, self.k)
        y = torch.from_numpy(total[: self.padded].astype(np.float64)).to(torch.float32) * self.scale
        vec = unrotate(y, signs)[: self.dim]
        return vec, float(total[self.padded]) / 127, int(total[self.padded + 1])


class SecureSum:
    """Sums clipped, weighted updates with secure aggregation (Bonawitz et al. 2017).

    Parameters
    ----------
    seed
        Run seed: the public rotation and the simulated dropouts derive from (seed, round).
    threshold
        ``t`` as a fraction of the round's participants (``t = ceil(threshold * n)``).
    min_clients
        Participation floor: the server refuses to unmask a sum of fewer inputs (a sum
        of one input is that client's update in the clear); the round is abandoned.
    randomness
        Each client's private randomness (stochastic rounding, distributed noise shares):
        the OS CSPRNG by default; seeded only for runs without DP or an insecure opt-in.
    dropout, dropout_phase
        Simulated fraction of participants that drop ``"before_input"`` (after sharing
        keys; their input is lost) or ``"after_input"`` (input counted, no unmasking help).
    bound_sigmas
        Standard deviations of a rotated coordinate that map to int8 code 127.
    """

    def __init__(self, *, seed: int, threshold: float, min_clients: int = 3, dropout: float = 0.0,
                 dropout_phase: str = "after_input", bound_sigmas: float = 4.0,
                 randomness: PrivacyRandomness | None = None) -> None:
        if min_clients < 2:
            raise ParameterError(f"min_clients must be >= 2 (a sum of one input reveals it); got {min_clients}.")
        self.seed, self.threshold_fraction, self.min_clients = seed, threshold, min_clients
        self.dropout, self.dropout_phase, self.bound_sigmas = dropout, dropout_phase, bound_sigmas
        self.randomness = randomness if randomness is not None else PrivacyRandomness()

    def begin(self, rnd: int, participants: Sequence[int], *, clip_norm: float, ddg: DDG | None = None) -> None:
        """Rounds 0-1 of the protocol for ``participants``; fixes the shared scale inputs.

        ``ddg``: distributed DP; the threshold is then at least the mechanism's ``t`` (no sum
        of fewer noise shares is ever unmasked), and a round with fewer participants fails.
        """
        self.rnd, self.clip_norm, self.ddg = rnd, clip_norm, ddg
        self.participants = sorted(participants)
        n = len(self.participants)
        self.t = threshold_for(n, self.threshold_fraction)
        self.failed = None
        if ddg is not None:
            self.t = max(self.t, ddg.shares)
            if n < ddg.shares:
                self.failed = (f"secure aggregation round {rnd}: {n} participants, fewer than the t = {ddg.shares} "
                               "noise shares the distributed discrete Gaussian needs in every sum")
        self.k = ring_bits(n) if ddg is None else ddg.bits
        self.up = {u: 0 for u in self.participants}
        self.cpu = {u: 0.0 for u in self.participants}  # protocol seconds per client (key phases, masking)
        self.server_cpu = 0.0
        self.down = {u: 0 for u in self.participants}
        ndrop = int(round(self.dropout * n))
        g = torch_generator(self.seed, SECAGG, _DROPOUT, rnd)
        self.dropped = {self.participants[i] for i in torch.randperm(n, generator=g)[:ndrop].tolist()}
        self.layout = None
        self.clients: dict[int, SecAggClient] = {}
        self.server: SecAggServer | None = None

    def _start(self, length: int) -> None:
        # The key phases do not depend on the input; run them once the input length is known.
        self.length = length
        self.server = SecAggServer(self.rnd, self.t, self.k, length)
        for u in self.participants:
            t0 = time.perf_counter()
            c = SecAggClient(u, rnd=self.rnd, threshold=self.t, k=self.k, length=length)
            self.clients[u] = c
            self.server.adverts[u] = c.advertise()
            self.cpu[u] += time.perf_counter() - t0
            self.up[u] += 64
        for u, c in self.clients.items():
            self.down[u] += 68 * len(self.server.adverts)
            t0 = time.perf_counter()
            cts = c.share_keys(self.server.adverts)
            self.cpu[u] += time.perf_counter() - t0
            self.up[u] += sum(len(m) + 4 for m in cts.values())
            self.server.collect_shares(u, cts)

    def add(self, client: int, update: Mapping[str, torch.Tensor], *, weight: float, bit: int) -> None:
        """Client side then server side of round 2 for one client (``update`` already clipped).

        ``weight`` in [0, 1] multiplies the update; the weight actually used is
        ``round(127 weight) / 127``.
        """
        if client not in self.up:
            raise SecAggError(f"client {client} is not a participant of round {self.rnd}.")
        if self.failed:
            return
        vec, layout = flatten(update)
        if self.layout is None:
            self.layout, self.dim = layout, vec.shape[0]
            self.enc = RoundEncoding.for_round(self.rnd, seed=self.seed, participants=len(self.participants),
                                               dim=self.dim, clip_norm=self.clip_norm, ddg=self.ddg,
                                               bound_sigmas=self.bound_sigmas)
            self.padded, self.scale = self.enc.padded, self.enc.scale
            self._start(self.enc.length)
            self._signs = self.enc.signs()
        elif layout != self.layout:
            raise SecAggError(f"client {client}: update layout differs from the round's.")
        if client in self.dropped and self.dropout_phase == "before_input":
            return
        t0 = time.perf_counter()
        ring = self.enc.encode(vec, weight=weight, bit=bit, client=client, randomness=self.randomness,
                               signs=self._signs)
        c = self.clients[client]
        inbox = self.server.inboxes.get(client, {})
        self.down[client] += sum(len(m) + 4 for m in inbox.values())
        payload = c.masked_input(ring, inbox)
        t1 = time.perf_counter()
        self.cpu[client] += t1 - t0
        self.up[client] += len(payload)
        self.server.add_masked(client, payload)
        self.server_cpu += time.perf_counter() - t1

    def finish(self) -> SumResult:
        """Round 3 (unmasking by the survivors) and the dequantized, un-rotated sum."""
        if self.failed:
            raise SecAggError(self.failed + "; the round is abandoned and nothing is unmasked.")
        if self.server is None or not self.server.senders:
            raise SecAggError(f"secure aggregation round {self.rnd}: no client sent masked input.")
        senders = list(self.server.senders)
        if len(senders) < self.min_clients:
            raise SecAggError(
                f"secure aggregation round {self.rnd}: only {len(senders)} client(s) sent masked input, fewer than "
                f"the participation floor of {self.min_clients}; the sum is not unmasked (it would reveal too "
                "few clients' updates) and the round is abandoned.")
        survivors = [u for u in self.participants if u not in self.dropped]
        responses = {}
        for u in survivors:
            self.down[u] += 4 * len(senders)
            t0 = time.perf_counter()
            if not hasattr(self.clients[u], "inbox"):  # sent no input (its update was not finite); still unmasks
                inbox = self.server.inboxes.get(u, {})
                self.down[u] += sum(len(m) + 4 for m in inbox.values())
                self.clients[u].receive(inbox)
            r = self.clients[u].unmask(senders)
            self.cpu[u] += time.perf_counter() - t0
            self.up[u] += sum(5 + len(s) for _, s in r.values())
            responses[u] = r
        t0 = time.perf_counter()
        vec, weight_sum, bit_sum = self.enc.decode(self.server.unmask(responses), self._signs)
        self.server_cpu += time.perf_counter() - t0
        return SumResult(unflatten(vec, self.layout), weight_sum, bit_sum,
                         len(senders), self.k, dict(self.up), dict(self.down), dict(self.cpu), self.server_cpu)
