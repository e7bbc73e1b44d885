"""``fed8 run`` under ``torchrun``: rank 0 is the run, every other rank trains its share of the clients.

    torchrun --nproc-per-node 2 -m fed8.cli run --set run.threads=1 ...        # one machine
    torchrun --nnodes 2 --node-rank R --master-addr HOST --nproc-per-node 2 -m fed8.cli run ...

Rank 0 resolves the config (a fresh run, or ``--resume`` of its run directory), writes the
run directory, evaluates, checkpoints and runs the quantize stage (after the workers were
released), exactly as one process does. It sends the resolved config to the workers, which
build the same federation from it (the data must be readable on every machine) and serve
rounds (:mod:`fed8.federated.distributed`). Workers write nothing. The run directory is the one a
single process writes (bit-identical with sequential clients; tested with 2 workers on
127.0.0.1). Simulation only: ``fed8 federation`` (Flower) is refused under torchrun.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..config import load_config, to_toml
from ..errors import ConfigError

__all__ = ["refuse_flower_under_torchrun", "run_distributed", "serve_worker"]


def run_distributed(config=None, **kwargs: Any):
    """Rank 0: :func:`fed8.stages.train.run` with the clients' training sharded over the group's ranks."""
    from ..federated.distributed import Workers, broadcast_text
    from .train import run

    def factory(prep):
        t = prep.config.train
        if t.scaffold or t.feddyn_alpha > 0:
            what = "train.scaffold = true" if t.scaffold else f"train.feddyn_alpha = {t.feddyn_alpha}"
            raise ConfigError(f"{what} is not supported under torchrun: each client's state (SCAFFOLD's control, "
                              "FedDyn's gradient estimate) lives with the process that trains it, and ranks train "
                              "different clients each round. Run it in one process (fed8 run without torchrun).")
        broadcast_text(to_toml(prep.config))
        transport = prep.simulation.transport
        transport.workers = Workers(prep.state)  # stopped by transport.close() when the rounds are over
        return transport

    # A failed rank 0 exits non-zero and torchrun stops the workers (a stop broadcast could wait on a
    # worker still sending its update of an abandoned round).
    return run(config, transport_factory=factory, **kwargs)


def serve_worker() -> int:
    """A worker rank: receive the resolved config from rank 0, build the federation, serve rounds until stopped."""
    from ..federated.distributed import broadcast_text, serve
    from .federation import prepare

    text = broadcast_text(None)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.toml"
        path.write_text(text, encoding="utf-8")
        cfg = load_config(path)
        torch.set_num_threads(cfg.run.threads or os.cpu_count() or 1)
        prep = prepare(cfg, residuals=None)
        transport = prep.simulation.transport
        return serve(prep.state, transport.local_updates)


def refuse_flower_under_torchrun() -> None:
    from ..federated.distributed import world_from_env

    if world_from_env()[1] > 1:
        raise ConfigError("fed8 federation runs on Flower's deployment engine, not under torchrun (WORLD_SIZE > 1); "
                          "use fed8 run under torchrun for a sharded simulation, or start fed8 federation alone.")
