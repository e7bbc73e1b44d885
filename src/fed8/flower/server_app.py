"""fed8's ServerApp: the train stage of ``fed8 run`` with :class:`FlowerTransport` for its rounds.

Run config (set by ``fed8 federation``): ``run-dir`` (a run directory holding config.toml;
the ServerApp continues it after its last committed round). Deadlines, dropouts and
retries come from the run's ``[federation]`` section.
Sampling, aggregation, the server optimizer, evaluation on the server's eval split, the
metrics, checkpoints and summary are the simulation's own code. Then, when
``quantize.enabled``, the quantize stage runs with :class:`fed8.flower.deploy.FlowerStatistics`:
the nodes calibrate on their own images and evaluate every 8-bit model on their local
test splits.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

__all__ = ["app"]

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    from pathlib import Path

    from ..config import to_toml
    from ..rundir import RunDir
    from ..stages.train import run
    from .transport import FlowerTransport, discover_nodes

    run_dir = str(context.run_config["run-dir"])
    cfg = RunDir.open(run_dir).load_config()
    f = cfg.federation
    nodes = discover_nodes(grid, cfg.data.num_clients, timeout_s=f.round_timeout_s)
    transport = {}

    def make(prep):
        t = transport["t"] = FlowerTransport(
            grid, nodes, to_toml(cfg), prep.simulation.wire, round_timeout_s=f.round_timeout_s,
            run_key=Path(run_dir).name, min_replies=f.min_replies, round_retries=f.round_retries)
        if cfg.privacy.secure_aggregation:  # the protocol's client halves run on the nodes
            _remote_secure_sum(cfg, prep, t)
        from ..federated.scaffold import find_scaffold

        t.scaffold = find_scaffold(prep.simulation.aggregator)  # its c goes out with each train message
        return t

    from .._io import atomic_write_text
    from .launcher import STAGE_FILE

    def stage(words: str) -> None:  # fed8 federation's progress line follows this file (launcher.STAGE_FILE)
        try:
            atomic_write_text(Path(run_dir) / "flwr" / STAGE_FILE, words)
        except OSError:  # a progress display is not worth failing the run for (the run's own writes will say)
            pass

    run(resume=run_dir, report=True, quantize=False, transport_factory=make, stage=stage)
    if cfg.quantize.enabled:  # the deploy stage: statistics from the nodes, 8-bit models evaluated on them
        from ..stages.quantize import quantize_run
        from .deploy import FlowerStatistics

        quantize_run(run_dir, cfg.quantize, devices=FlowerStatistics(transport["t"]),
                     progress=lambda words: stage(f"quantize: {words}"))


def _remote_secure_sum(cfg, prep, transport) -> None:
    """Put a :class:`~fed8.flower.secagg.FlowerSecureSum` where the simulation's SecureSum sits in the chain."""
    from ..federated.secure import SecureWeightedSum
    from ..stages.aggregation import weight_cap
    from .secagg import FlowerSecureSum

    agg = prep.simulation.aggregator
    while not isinstance(agg, SecureWeightedSum):
        agg = agg.inner
    p = cfg.privacy
    state = prep.state
    transport.secure = agg.secure = FlowerSecureSum(
        transport, {k: tuple(v.shape) for k, v in state.items() if v.is_floating_point()}, seed=cfg.run.seed,
        threshold=p.secagg_threshold, min_clients=p.secagg_min_clients,
        weight_cap=weight_cap(cfg, [c.num_train for c in prep.simulation.clients]))
