"""Shamir t-of-n secret sharing over the prime field GF(2^521 - 1).

Shamir 1979, "How to share a secret": a secret ``s`` is the constant term of a random
polynomial ``f`` of degree ``t - 1``; share ``i`` is ``(i, f(i))``. Any ``t`` shares
give ``s = f(0)`` by Lagrange interpolation; fewer reveal nothing about it. Secrets here
are 32-byte keys and seeds, far below the field size. The polynomial's coefficients
come from the operating system's CSPRNG (``secrets``), never from the run's seed.
"""

from __future__ import annotations

import secrets
from typing import Sequence

from ...errors import SecAggError

__all__ = ["PRIME", "SHARE_BYTES", "combine", "split"]

PRIME = 2**521 - 1  # a Mersenne prime
SHARE_BYTES = 66  # ceil(521 / 8)


def split(secret: bytes, *, threshold: int, holders: Sequence[int]) -> dict[int, bytes]:
    """Shares of ``secret`` for each holder id (ids are >= 0; evaluated at ``id + 1``)."""
    if not 1 <= threshold <= len(holders):
        raise SecAggError(f"threshold must be in [1, {len(holders)}] for {len(holders)} holders; got {threshold}.")
    s = int.from_bytes(secret, "big")
    if s >= PRIME:
        raise SecAggError(f"secret of {len(secret)} bytes does not fit the field GF(2^521 - 1).")
    coeffs = [s] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    out = {}
    for h in holders:
        x, y = h + 1, 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % PRIME
        out[h] = y.to_bytes(SHARE_BYTES, "big")
    return out


def combine(shares: dict[int, bytes], *, threshold: int, length: int = 32) -> bytes:
    """The secret from at least ``threshold`` shares ``{holder id: share}`` (Lagrange at 0).

    Raises
    ------
    SecAggError
        With fewer than ``threshold`` shares: the secret cannot be recovered.
    """
    if len(shares) < threshold:
        raise SecAggError(f"only {len(shares)} shares for a {threshold}-of-n secret; at least {threshold} "
                          "are needed.")
    pts = [(h + 1, int.from_bytes(v, "big")) for h, v in sorted(shares.items())[:threshold]]
    s = 0
    for i, (xi, yi) in enumerate(pts):
        num, den = 1, 1
        for j, (xj, _) in enumerate(pts):
            if i != j:
                num = num * (-xj) % PRIME
                den = den * (xi - xj) % PRIME
        s = (s + yi * num * pow(den, -1, PRIME)) % PRIME
    if s >> (8 * length):
        raise SecAggError(f"the shares do not reconstruct a {length}-byte secret: they are inconsistent "
                          "(tampered, or from different secrets).")
    return s.to_bytes(length, "big")
