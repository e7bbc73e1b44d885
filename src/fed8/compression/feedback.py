"""Error feedback (Karimireddy et al. 2019, arXiv:1901.09847) around any codec, residuals on disk.

Client ``k`` in round ``r`` sends ``C(x + e_k)`` and keeps ``e_k <- (x + e_k) - D(C(x + e_k))``,
so what compression dropped is sent later instead of lost.

Residuals live in :class:`ResidualStore`: one safetensors file per client and round in
the run directory (``residuals/c<client>-r<round>.safetensors``), read when the client is
sampled, so memory stays one model, not clients x model. A round's files are kept until
its checkpoint is committed (:meth:`ResidualStore.commit`); resuming from round ``R``
drops files newer than ``R`` (:meth:`ResidualStore.rollback`), so a crash mid-round
replays bit for bit.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import torch

from .._io import load_tensors, save_tensors
from ..errors import CheckpointError
from .codec import TensorCodec
from .registry import decode

__all__ = ["ErrorFeedback", "ResidualStore"]

_NAME = re.compile(r"c(\d+)-r(\d+)\.safetensors$")


class ResidualStore:
    """Per-client residuals: on disk under ``root``, or in memory if ``root`` is None (small simulations, tests)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else None
        self._mem: dict[int, dict[str, torch.Tensor]] = {}
        self._rounds: dict[int, list[int]] = {}
        if self.root is not None:  # the folder appears with the first file (a store nobody writes leaves none)
            for f in self.root.glob("c*-r*.safetensors"):
                m = _NAME.search(f.name)
                if m:
                    self._rounds.setdefault(int(m[1]), []).append(int(m[2]))
            for v in self._rounds.values():
                v.sort()

    def _file(self, client: int, rnd: int) -> Path:
        if self.root is None:  # pragma: no cover - in-memory stores never reach the file paths
            raise CheckpointError("this residual store keeps its residuals in memory; it has no files.")
        return self.root / f"c{client:06d}-r{rnd:06d}.safetensors"

    def get(self, client: int) -> dict[str, torch.Tensor] | None:
        if self.root is None:
            return self._mem.get(client)
        rounds = self._rounds.get(client)
        return load_tensors(self._file(client, rounds[-1])) if rounds else None

    def put(self, client: int, rnd: int, residual: Mapping[str, torch.Tensor]) -> None:
        if self.root is None:
            self._mem[client] = {k: v.clone() for k, v in residual.items()}
            return
        self.root.mkdir(parents=True, exist_ok=True)
        save_tensors(self._file(client, rnd), residual)
        rounds = self._rounds.setdefault(client, [])
        if not rounds or rounds[-1] != rnd:
            rounds.append(rnd)

    def commit(self, rnd: int) -> None:
        """Round ``rnd`` is checkpointed: older files of clients with a newer one can go."""
        for client, rounds in self._rounds.items():
            keep = [r for r in rounds if r <= rnd][-1:] + [r for r in rounds if r > rnd]
            for r in set(rounds) - set(keep):
                self._file(client, r).unlink(missing_ok=True)
            rounds[:] = sorted(keep)

    def rollback(self, rnd: int) -> None:
        """Resuming after round ``rnd``: residuals written by later (uncommitted) rounds are dropped."""
        for client, rounds in self._rounds.items():
            for r in [r for r in rounds if r > rnd]:
                self._file(client, r).unlink(missing_ok=True)
            rounds[:] = [r for r in rounds if r <= rnd]

    def __len__(self) -> int:
        return len(self._mem) if self.root is None else sum(1 for v in self._rounds.values() if v)


class ErrorFeedback:
    """Wrap ``codec`` with per-client error feedback; residuals in ``store``."""

    def __init__(self, codec: TensorCodec, store: ResidualStore) -> None:
        self.codec, self.store = codec, store
        self.name = f"{codec.name}+ef"

    def encode(self, tensors: Mapping[str, torch.Tensor], *, client: int, round: int,
               generator: torch.Generator | None = None) -> tuple[bytes, dict[str, torch.Tensor]]:
        """Payload of ``tensors + residual`` and its decoded value; stores the new residual."""
        e = self.store.get(client)
        corrected = {k: v + e[k] for k, v in tensors.items()} if e is not None else dict(tensors)
        payload = self.codec.encode(corrected, generator=generator)
        decoded = decode(payload)
        self.store.put(client, round, {k: corrected[k] - decoded[k] for k in corrected})
        return payload, decoded
