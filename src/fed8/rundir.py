"""The run directory: the contract between ``fed8 run``, ``resume``, ``report`` and later stages.

Layout::

    RUN/config.toml          fully resolved config
    RUN/partition.json       samples and label histogram per client
    RUN/metrics.jsonl        one JSON object per round
    RUN/checkpoints/         latest completed round: model + server state (safetensors) + state.json
    RUN/model.safetensors    final global model
    RUN/summary.json         final numbers
    RUN/report.html, plots/  written by fed8 report

Every file is written atomically. A checkpoint is committed by ``state.json``, written
last; it names the round's safetensors files and their SHA-256, so a crash between
writes leaves the previous checkpoint intact and usable.

One process writes a run directory at a time: :meth:`RunDir.lock` holds an advisory lock
(``flock``) on ``RUN/.lock`` while a run trains, so a second ``fed8 run --resume`` (or a
federation) on the same folder is refused with the holder's pid instead of interleaving its
rounds with the first. The kernel drops the lock when its process dies, however it dies.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from ._io import (atomic_write_json, atomic_write_text, exclusive, load_tensors, read_jsonl, save_tensors,
                  write_jsonl)
from .config import Config, load_config, to_toml
from .errors import CheckpointError

__all__ = ["Checkpoint", "RunDir"]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Checkpoint(dict):
    """``round``, ``model`` (state dict), ``server`` (aggregator, optimizer and wire state), ``meta`` (state.json)."""


class RunDir:
    """Paths and atomic reads/writes of one run directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # paths ---------------------------------------------------------------------
    config = property(lambda self: self.path / "config.toml")
    partition = property(lambda self: self.path / "partition.json")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    checkpoints = property(lambda self: self.path / "checkpoints")
    model = property(lambda self: self.path / "model.safetensors")
    summary = property(lambda self: self.path / "summary.json")
    report = property(lambda self: self.path / "report.html")
    plots = property(lambda self: self.path / "plots")

    # creation / opening ----------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, config: Config) -> "RunDir":
        """Make a new run directory and write its config; refuse to overwrite a run."""
        rd = cls(path)
        if rd.config.exists():
            raise rd._holds_a_run()
        # What was there before is never removed by discard_if_no_round.
        rd._preexisting = {p.name for p in rd.path.iterdir()} if rd.path.is_dir() else set()
        rd._made_dir = not rd.path.exists()
        try:
            rd.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CheckpointError(
                f"cannot create the run directory {rd.path}: {e.strerror or e} (is a part of the path a file?). "
                "Choose another --out or run.out.") from None
        try:  # published only if absent (O_EXCL): of two processes starting on one folder (a sweep), one wins, one is refused
            atomic_write_text(rd.config, to_toml(config), only_new=True)
        except FileExistsError:
            raise rd._holds_a_run() from None
        return rd

    def _holds_a_run(self) -> CheckpointError:
        return CheckpointError(f"{self.path} already holds a run (config.toml exists). Continue it with "
                               f"'fed8 run --resume {self.path}', or choose another --out.")

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        rd = cls(path)
        if not rd.config.is_file():
            raise CheckpointError(f"{rd.path} is not a fed8 run directory (no config.toml); "
                                  "pass the folder that 'fed8 run' printed.")
        return rd

    def load_config(self) -> Config:
        return load_config(self.config)

    # one writer at a time ---------------------------------------------------------
    lock_file = property(lambda self: self.path / ".lock")

    def lock(self, what: str = "fed8 run") -> contextlib.AbstractContextManager[None]:
        """Hold the run directory's writer lock for a block; :class:`CheckpointError` if another process holds it.

        ``what`` names the holder in the refusal another process gets.
        """
        def busy(holder: str) -> CheckpointError:
            return CheckpointError(
                f"{self.path} is in use by {holder}: two processes writing one run directory would mix their "
                "rounds. Wait for it to finish, or stop it, then continue with "
                f"'fed8 run --resume {self.path}' (or 'fed8 federation --resume {self.path}').")

        return exclusive(self.lock_file, f"{what} (pid {os.getpid()})", busy)

    def ensure_unlocked(self) -> None:
        """:class:`CheckpointError` if a process holds :meth:`lock` now (a check, not a reservation)."""
        with self.lock():
            pass

    def write_config(self, config: Config) -> None:
        atomic_write_text(self.config, to_toml(config))

    # metrics ---------------------------------------------------------------------
    def read_metrics(self) -> list[dict[str, Any]]:
        try:
            return read_jsonl(self.metrics)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{self.metrics}: not valid JSON lines ({e}).") from None

    def write_metrics(self, rows: list[Mapping[str, Any]]) -> None:
        write_jsonl(self.metrics, rows)

    def write_json(self, path: Path, obj: Any) -> None:
        atomic_write_json(path, obj)

    # checkpoints -----------------------------------------------------------------
    def save_checkpoint(self, rnd: int, model: Mapping[str, torch.Tensor],
                        server: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        """Write round ``rnd``'s model and server state, commit with state.json, drop older rounds."""
        ck = self.checkpoints
        model_file, server_file = ck / f"round-{rnd:06d}.model.safetensors", ck / f"round-{rnd:06d}.server.safetensors"
        save_tensors(model_file, model)
        save_tensors(server_file, server)
        atomic_write_json(ck / "state.json", {
            "round": rnd,
            "model_file": model_file.name, "model_sha256": _sha256(model_file),
            "server_file": server_file.name, "server_sha256": _sha256(server_file),
            **meta,
        })
        for old in ck.glob("round-*.safetensors"):
            if old.name not in (model_file.name, server_file.name):
                old.unlink(missing_ok=True)

    def discard_if_no_round(self) -> None:
        """Remove what :meth:`create` and the first round wrote if no round was committed.

        Only entries that did not exist before :meth:`create` are touched; a folder the
        user gave that held other files keeps them.
        """
        import shutil

        if (self.checkpoints / "state.json").exists():
            return
        before = getattr(self, "_preexisting", set())
        for name in ("config.toml", "partition.json", "metrics.jsonl", "checkpoints", "residuals", "controls", ".lock"):
            f = self.path / name
            if name in before:
                continue
            if f.is_dir():
                shutil.rmtree(f, ignore_errors=True)
            else:
                f.unlink(missing_ok=True)
        if getattr(self, "_made_dir", False):
            try:
                self.path.rmdir()  # only if nothing else is in it
            except OSError:
                pass

    def mark_attempt(self, rnd: int) -> None:
        """Record that round ``rnd`` is about to send messages (read back on resume)."""
        atomic_write_json(self.checkpoints / "attempt.json", {"round": rnd})

    def attempted_round(self) -> int:
        """The last round :meth:`mark_attempt` recorded, 0 if none."""
        f = self.checkpoints / "attempt.json"
        try:
            return int(json.loads(f.read_text())["round"]) if f.exists() else 0
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise CheckpointError(f"{f}: cannot read the attempt record ({e!r}).") from None

    def load_checkpoint(self) -> Checkpoint | None:
        """The latest committed checkpoint, or None if no round has completed."""
        state_file = self.checkpoints / "state.json"
        if not state_file.exists():
            return None
        try:
            meta = json.loads(state_file.read_text())
            out = Checkpoint(round=int(meta["round"]), meta=meta)
            for part in ("model", "server"):
                f = self.checkpoints / meta[f"{part}_file"]
                if _sha256(f) != meta[f"{part}_sha256"]:
                    raise CheckpointError(f"{f}: SHA-256 does not match state.json; the checkpoint is corrupt.")
                out[part] = load_tensors(f)
        except (KeyError, ValueError, OSError) as e:
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(f"{state_file}: cannot read checkpoint ({e!r}).") from None
        return out
