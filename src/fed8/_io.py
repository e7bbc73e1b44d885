"""Atomic file writes for run directories: write a temp file, fsync, rename; whole folders by a staged switch;
and the advisory lock that keeps one writer per run directory (:func:`exclusive`)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_write_text", "exclusive", "load_metadata",
           "load_tensors", "read_jsonl", "save_tensors", "staged_dir", "write_jsonl"]


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def atomic_write_bytes(path: str | Path, data: bytes, *, only_new: bool = False) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.

    The file gets the mode a plain ``open()`` would give it (``0666 & ~umask``), not the
    0600 of the temporary file. ``only_new``: only if ``path`` does not exist yet, else
    ``FileExistsError``; of two processes creating one file, exactly one wins. The name is
    claimed with ``O_CREAT | O_EXCL`` (atomic on every filesystem, unlike hard links), so
    until the rename a reader may find it empty.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if only_new:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | Path, text: str, *, only_new: bool = False) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), only_new=only_new)


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


def _recover_staged(final: Path) -> None:
    """Undo what a kill between the two renames of :func:`staged_dir`, or during a build, left behind."""
    import shutil

    olds = sorted(final.parent.glob(f".{final.name}.old-*"))
    if olds and not final.exists():
        os.replace(olds.pop(), final)  # killed between the renames: the previous folder comes back
    for leftover in [*olds, *final.parent.glob(f".{final.name}.new-*")]:
        shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(final: str | Path) -> Iterator[Path]:
    """Build a folder's new content beside it, then switch it in: readers see the old folder or the new one.

    Yields an empty temporary folder next to ``final``. If the block raises (or the process
    dies), ``final`` is untouched and the temporary folder is removed (at the latest by the
    next call). On success ``final`` is renamed aside, the new folder renamed into its
    place, and the old one deleted; a kill between the two renames is undone by the next call.
    """
    import shutil

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _recover_staged(final)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.new-"))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.parent / f".{final.name}.old-{tmp.name.rsplit('-', 1)[-1]}"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def exclusive(lock_file: str | Path, holder: str, busy: Callable[[str], Exception]) -> Iterator[None]:
    """Hold an advisory lock (``flock``) on ``lock_file`` for the block, or raise ``busy(who holds it)``.

    ``holder`` (e.g. ``"fed8 run (pid 123)"``) is written into the file for the next
    contender's message. The kernel drops the lock when the process dies, however it dies,
    so no stale lock survives a crash. Without ``fcntl`` (Windows) the block runs unlocked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy(os.read(fd, 200).decode(errors="replace").strip() or "another process") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
