"""Secure aggregation (Bonawitz et al. 2017, "Practical Secure Aggregation for
Privacy-Preserving Machine Learning", CCS; eprint 2017/281), honest-but-curious variant.

Messages of one round, for participants ``U`` and threshold ``t``::

    0 AdvertiseKeys     u -> S: c_u^PK, s_u^PK                       (X25519, fresh per round)
    1 ShareKeys         u -> S -> v: Enc_{KA(c_u, c_v)}(u, v, [s_u^SK]_v, [b_u]_v)
                        (t-of-|U1| Shamir shares of the mask key and of the self-mask seed)
    2 MaskedInput       u -> S: y_u = x_u + PRG(b_u) + sum_{v in U1, v != u} +-PRG(KA(s_u, s_v))  (mod 2^k)
                        (+ when u < v, - when u > v: pairwise masks cancel in the sum)
    3 Unmasking         u -> S: [b_v]_u for every v in U2 (sent input), [s_v^SK]_u for v in U1 \\ U2

The server sums the ``y_u`` as they arrive (streaming), then removes every ``PRG(b_u)``
(u in U2) and the pairwise masks left by clients that shared keys but never sent input
(U1 \\ U2). It learns ``sum_{u in U2} x_u`` and nothing else about any ``x_u``: each
``y_u`` alone is uniform in Z_(2^k) because of its self mask. Clients that drop after
sending their input are still counted; the round needs at least ``t`` clients at every
step, and fails with :class:`~fed8.errors.SecAggError` otherwise.

Cryptographic randomness (keys, seeds, share polynomials, nonces) comes from the
operating system, never from the run's seed; the unmasked sum does not depend on it,
so runs stay reproducible. Left out from the paper: signatures and consistency checks
(the actively-secure variant), so this guards against a curious server, not a lying one.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from ...errors import SecAggError
from .crypto import KeyPair, aead_decrypt, aead_encrypt, prg_words
from .bits import pack_bits, unpack_bits
from .shamir import SHARE_BYTES, combine, split

__all__ = ["SecAggClient", "SecAggServer", "threshold_for"]


def threshold_for(n: int, fraction: float) -> int:
    """``t = max(1, ceil(fraction * n))`` (at most ``n``)."""
    import math

    return min(n, max(1, math.ceil(fraction * n - 1e-9)))


def _label(kind: bytes, rnd: int) -> bytes:
    return b"fed8-secagg/" + kind + b"/" + str(rnd).encode()


def _mask_add(acc: np.ndarray, words: np.ndarray, sign: int) -> None:
    if sign > 0:
        np.add(acc, words, out=acc)
    else:
        np.subtract(acc, words, out=acc)


class SecAggClient:
    """One client's side of a round. ``length``: ring elements in its input; ``k``: ring bits."""

    def __init__(self, cid: int, *, rnd: int, threshold: int, k: int, length: int) -> None:
        self.id, self.rnd, self.t, self.k, self.length = cid, rnd, threshold, k, length
        self.c, self.s = KeyPair(), KeyPair()
        self.b = os.urandom(32)
        self.keys: dict[int, tuple[bytes, bytes]] = {}
        self.own_shares: tuple[bytes, bytes] | None = None

    def to_state(self) -> dict:
        """Everything this client must keep between protocol stages (private keys included: keep it local)."""
        return {"id": self.id, "rnd": self.rnd, "t": self.t, "k": self.k, "length": self.length,
                "c": self.c.private_bytes.hex(), "s": self.s.private_bytes.hex(), "b": self.b.hex(),
                "keys": {str(v): [a.hex(), b.hex()] for v, (a, b) in self.keys.items()},
                "own": [x.hex() for x in self.own_shares] if self.own_shares else None,
                "inbox": {str(u): ct.hex() for u, ct in getattr(self, "inbox", {}).items()}}

    @classmethod
    def from_state(cls, st: dict) -> "SecAggClient":
        c = cls.__new__(cls)
        c.id, c.rnd, c.t, c.k, c.length = int(st["id"]), int(st["rnd"]), int(st["t"]), int(st["k"]), int(st["length"])
        c.c, c.s, c.b = KeyPair(bytes.fromhex(st["c"])), KeyPair(bytes.fromhex(st["s"])), bytes.fromhex(st["b"])
        c.keys = {int(v): (bytes.fromhex(a), bytes.fromhex(b)) for v, (a, b) in st["keys"].items()}
        c.own_shares = tuple(bytes.fromhex(x) for x in st["own"]) if st["own"] else None
        c.inbox = {int(u): bytes.fromhex(ct) for u, ct in st["inbox"].items()}
        return c

    def advertise(self) -> bytes:
        """Round 0: the two public keys (64 bytes)."""
        return self.c.public + self.s.public

    def share_keys(self, adverts: dict[int, bytes]) -> dict[int, bytes]:
        """Round 1: encrypted shares of ``s^SK`` and ``b`` for every other client in ``adverts``."""
        if len(adverts) < self.t:
            raise SecAggError(f"only {len(adverts)} clients advertised keys; the threshold is {self.t}.")
        self.keys = {v: (m[:32], m[32:]) for v, m in adverts.items()}
        holders = sorted(adverts)
        sh_s = split(self.s.private_bytes, threshold=self.t, holders=holders)
        sh_b = split(self.b, threshold=self.t, holders=holders)
        out = {}
        for v in holders:
            if v == self.id:
                self.own_shares = (sh_s[v], sh_b[v])
                continue
            key = self.c.agree(self.keys[v][0], _label(b"enc", self.rnd))
            out[v] = aead_encrypt(key, struct.pack("<II", self.id, v) + sh_s[v] + sh_b[v], _label(b"share", self.rnd))
        return out

    def receive(self, ciphertexts: dict[int, bytes]) -> None:
        """Round 2's download: the encrypted shares addressed to this client (needed to unmask)."""
        self.inbox = dict(ciphertexts)

    def masked_input(self, x: np.ndarray, ciphertexts: dict[int, bytes]) -> bytes:
        """Round 2: ``x`` (uint32 ring elements) plus self and pairwise masks, packed at ``k`` bits.

        ``ciphertexts`` are the shares addressed to this client (their senders are U1).
        """
        if x.shape != (self.length,):
            raise SecAggError(f"client {self.id}: input has {x.shape} elements, the round expects {self.length}.")
        self.receive(ciphertexts)
        u1 = set(ciphertexts) | {self.id}
        y = x.astype(np.uint32).copy()
        _mask_add(y, prg_words(self.b, self.length), +1)
        for v in sorted(u1 - {self.id}):
            seed = self.s.agree(self.keys[v][1], _label(b"mask", self.rnd))
            _mask_add(y, prg_words(seed, self.length), +1 if self.id < v else -1)
        return pack_bits(y & np.uint32((1 << self.k) - 1), self.k)

    def unmask(self, senders: Iterable[int]) -> dict[int, tuple[str, bytes]]:
        """Round 3: for each v in U1, the share of ``b_v`` if v sent input, else of ``s_v^SK``."""
        senders = set(senders)
        if len(senders) < self.t:
            raise SecAggError(f"only {len(senders)} clients sent masked input; the threshold is {self.t}.")
        out: dict[int, tuple[str, bytes]] = {}
        for u, ct in self.inbox.items():
            key = self.c.agree(self.keys[u][0], _label(b"enc", self.rnd))
            pt = aead_decrypt(key, ct, _label(b"share", self.rnd))
            frm, to = struct.unpack("<II", pt[:8])
            if (frm, to) != (u, self.id):
                raise SecAggError(f"client {self.id}: share from {u} is addressed {frm}->{to}.")
            s_share, b_share = pt[8 : 8 + SHARE_BYTES], pt[8 + SHARE_BYTES :]
            out[u] = ("b", b_share) if u in senders else ("s", s_share)
        if self.id in senders and self.own_shares is not None:
            out[self.id] = ("b", self.own_shares[1])
        return out


@dataclass
class SecAggServer:
    """The server's side: routes messages, sums masked inputs as they arrive, unmasks the sum."""

    rnd: int
    threshold: int
    k: int
    length: int
    adverts: dict[int, bytes] = field(default_factory=dict)
    inboxes: dict[int, dict[int, bytes]] = field(default_factory=dict)
    senders: list[int] = field(default_factory=list)
    u1: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.total = np.zeros(self.length, dtype=np.uint32)

    @property
    def mask(self) -> np.uint32:
        return np.uint32((1 << self.k) - 1)

    def collect_shares(self, sender: int, ciphertexts: dict[int, bytes]) -> None:
        self.u1.add(sender)
        for v, ct in ciphertexts.items():
            self.inboxes.setdefault(v, {})[sender] = ct

    def add_masked(self, sender: int, payload: bytes) -> None:
        expected = (self.length * self.k + 7) // 8
        if len(payload) != expected:
            raise SecAggError(f"masked input of client {sender} has {len(payload)} bytes; expected {expected}.")
        np.add(self.total, unpack_bits(payload, self.k, self.length), out=self.total)
        self.senders.append(sender)

    def unmask(self, responses: dict[int, dict[int, tuple[str, bytes]]]) -> np.ndarray:
        """The plain sum over the senders (uint32 mod 2^k) from the survivors' shares.

        Raises
        ------
        SecAggError
            If fewer than ``threshold`` clients answered: the masks cannot be removed and
            the round is abandoned (nothing about any input is revealed).
        """
        if len(responses) < self.threshold:
            raise SecAggError(
                f"secure aggregation round {self.rnd}: only {len(responses)} clients survived to unmasking, "
                f"fewer than the threshold t = {self.threshold}; the round is abandoned and no update is "
                "applied. Lower privacy.secagg_threshold (less dropout tolerance is the price of a higher t) "
                "or sample more clients.")
        senders = set(self.senders)
        u1 = self.u1
        total = self.total.copy()
        shares: dict[int, dict[int, bytes]] = {}
        for holder, resp in responses.items():
            for u, (kind, share) in resp.items():
                if (kind == "b") != (u in senders):
                    raise SecAggError(f"client {holder} revealed the wrong share kind for client {u}.")
                shares.setdefault(u, {})[holder] = share
        for u in sorted(senders):
            b = combine(shares.get(u, {}), threshold=self.threshold)
            _mask_add(total, prg_words(b, self.length), -1)
        for u in sorted(u1 - senders):
            kp = KeyPair(combine(shares.get(u, {}), threshold=self.threshold))
            for v in sorted(senders):
                seed = kp.agree(self.adverts[v][32:], _label(b"mask", self.rnd))
                _mask_add(total, prg_words(seed, self.length), -1 if v < u else +1)
        return total & self.mask
