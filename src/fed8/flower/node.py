"""What a SuperNode keeps between messages, in files: downlink references and error-feedback residuals.

Flower starts a fresh ClientApp process per message, so a client's state across rounds
lives on the node's disk, never on the server:

* ``downlink-r<round>.safetensors``: the model the client decoded in round ``r`` when the
  downlink sends deltas (``compression.downlink_mode = "delta"``); round ``r + 1``'s delta
  is added to it. Its content is a function of the committed rounds only, so a replayed
  round (after a server crash) rewrites the same bytes.
* ``residuals/``: the error-feedback residuals (:class:`fed8.compression.ResidualStore`),
  rolled back to the round the server resumed from, exactly as the simulation's.
* ``controls/``: SCAFFOLD's client control ``c_i`` (``train.scaffold``) or FedDyn's ``g_k``
  (``train.feddyn_alpha``), kept the same way.

The folder is ``<state-dir>/<run key>``: ``state-dir`` from the node config
(``fed8 federation`` sets ``RUN_DIR/nodes/<partition>``), else
``~/.fed8/supernode/partition-<id>``; the run key is the run directory's name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:  # torch is imported where tensors are read or written: the secure-aggregation stages need none
    import torch

__all__ = ["NodeState"]

_KEY = re.compile(r"[^A-Za-z0-9._-]")


class NodeState:
    """One run's files on one SuperNode, under ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @classmethod
    def of(cls, node_config: Mapping, run_key: str, partition: int) -> "NodeState":
        base = node_config.get("state-dir") or Path.home() / ".fed8" / "supernode" / f"partition-{partition}"
        return cls(Path(str(base)) / (_KEY.sub("_", run_key) or "run"))

    def _ref(self, rnd: int) -> Path:
        return self.root / f"downlink-r{rnd:06d}.safetensors"

    def reference(self, rnd: int) -> dict[str, torch.Tensor] | None:
        """The model decoded in round ``rnd``, or None if this node did not receive that broadcast."""
        from .._io import load_tensors

        path = self._ref(rnd)
        return load_tensors(path) if path.exists() else None

    def keep_reference(self, rnd: int, floats: Mapping[str, torch.Tensor]) -> None:
        """Store round ``rnd``'s decoded model; drop references older than ``rnd - 1``."""
        from .._io import save_tensors

        self.root.mkdir(parents=True, exist_ok=True)
        save_tensors(self._ref(rnd), floats)
        for f in self.root.glob("downlink-r*.safetensors"):
            if int(f.stem.rsplit("r", 1)[1]) < rnd - 1:
                f.unlink(missing_ok=True)

    def residuals(self):
        from ..compression import ResidualStore

        return ResidualStore(self.root / "residuals")

    def controls(self):
        """The state this node's client keeps across rounds, round by round: SCAFFOLD's control
        (:mod:`fed8.federated.scaffold`) or FedDyn's gradient estimate (:mod:`fed8.federated.feddyn`)."""
        from ..compression import ResidualStore

        return ResidualStore(self.root / "controls")

    # -- secure aggregation: this client's protocol state between stages (private keys: owner-only file) ----------
    def _secagg(self, rnd: int) -> Path:
        return self.root / f"secagg-r{rnd:06d}.json"

    def save_secagg(self, rnd: int, state: dict) -> None:
        """Write the client's secure-aggregation state of round ``rnd`` atomically, readable by this user only."""
        import json
        import os

        self.root.mkdir(parents=True, exist_ok=True)
        for f in self.root.glob("secagg-r*.json"):  # an abandoned round's keys are never needed again
            if f.name != self._secagg(rnd).name:
                f.unlink(missing_ok=True)
        tmp = self._secagg(rnd).with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self._secagg(rnd))

    def load_secagg(self, rnd: int) -> dict | None:
        import json

        path = self._secagg(rnd)
        return json.loads(path.read_text()) if path.exists() else None

    def secagg_client(self, rnd: int, client: int):
        """The client's :class:`~fed8.privacy.secagg.SecAggClient` of round ``rnd``, from its state file."""
        from ..errors import SecAggError
        from ..privacy.secagg.protocol import SecAggClient

        state = self.load_secagg(rnd)
        if state is None:
            raise SecAggError(f"client {client} has no secure-aggregation state for round {rnd} (its node lost it, "
                              "or missed the key stage).")
        return SecAggClient.from_state(state)

    def drop_secagg(self, rnd: int) -> None:
        self._secagg(rnd).unlink(missing_ok=True)
