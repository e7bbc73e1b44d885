"""Atomic file writes for run directories: write a temp file, fsync, rename."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_write_text",
           "load_metadata", "load_tensors", "read_jsonl", "save_tensors", "write_jsonl"]


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def write_jsonl(path: str | Path, rows: list[Mapping[str, Any]]) -> None:
    """Rewrite ``path`` atomically with ``rows`` (a JSON object per line)."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def save_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor],
                 metadata: Mapping[str, Any] | None = None) -> None:
    """Atomically write tensors as safetensors (contiguous CPU copies).

    ``metadata`` is stored as one JSON string under the key ``"fed8"`` with sorted
    keys: safetensors writes its metadata map in arbitrary order, and one key keeps
    the file bytes reproducible.
    """
    from safetensors.torch import save

    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {"fed8": json.dumps(dict(metadata), sort_keys=True)} if metadata else None
    atomic_write_bytes(path, save(flat, metadata=meta))


def load_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata written by :func:`save_tensors` (empty if none)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    return json.loads(meta["fed8"]) if "fed8" in meta else {}


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file (no pickle: safe for files from elsewhere)."""
    from safetensors.torch import load_file

    return load_file(str(path))
