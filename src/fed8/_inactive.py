"""Keys set away from their default that the run's other choices make inactive.

``server.momentum = 0.5`` under ``server.strategy = "fedavg"`` trains plain FedAvg, and a user
who set it expected momentum. fed8 warns (before round 1) instead of refusing: a sweep that
switches ``server.strategy`` on a config that keeps every strategy's parameters is a normal
workflow. Keys whose silence would train on the wrong data (``data.path`` with ``mnist10k``)
are refused when a run is created (:func:`fed8.data.refuse_unread_keys`).
"""

from __future__ import annotations

from typing import Callable

from ._config_sections import ADAPTIVE_STRATEGIES as _ADAPTIVE
from .config import Config

__all__ = ["inactive_keys"]

_Rule = tuple[str, Callable[[Config], bool], str]

_RULES: tuple[_Rule, ...] = (
    ("server.momentum", lambda c: c.server.strategy == "fedavgm", "server.strategy = 'fedavgm'"),
    ("server.beta1", lambda c: c.server.strategy in _ADAPTIVE, "server.strategy = 'fedadagrad', 'fedadam' or 'fedyogi'"),
    ("server.beta2", lambda c: c.server.strategy in ("fedadam", "fedyogi"), "server.strategy = 'fedadam' or 'fedyogi'"),
    ("server.tau", lambda c: c.server.strategy in _ADAPTIVE, "server.strategy = 'fedadagrad', 'fedadam' or 'fedyogi'"),
    ("server.norm_bound", lambda c: c.server.robust == "norm_bound", "server.robust = 'norm_bound'"),
    ("server.trim_fraction", lambda c: c.server.robust == "trimmed_mean", "server.robust = 'trimmed_mean'"),
    ("train.lr_decay", lambda c: c.train.lr_schedule == "exponential", "train.lr_schedule = 'exponential'"),
    ("train.augment_pad", lambda c: c.train.augment in ("crop", "crop_flip"), "train.augment = 'crop' or 'crop_flip'"),
    ("data.alpha", lambda c: c.data.partition == "dirichlet", "data.partition = 'dirichlet'"),
    ("data.shards_per_client", lambda c: c.data.partition == "shards", "data.partition = 'shards'"),
    ("compression.topk_fraction", lambda c: "topk" in (c.compression.uplink, c.compression.downlink),
     "compression.uplink or downlink = 'topk'"),
    ("compression.block_size", lambda c: c.compression.granularity == "block", "compression.granularity = 'block'"),
    ("privacy.ddg_bits", lambda c: c.privacy.noise_placement == "distributed", "privacy.noise_placement = 'distributed'"),
    ("privacy.ddg_gamma", lambda c: c.privacy.noise_placement == "distributed",
     "privacy.noise_placement = 'distributed'"),
    ("privacy.ddg_beta", lambda c: c.privacy.noise_placement == "distributed", "privacy.noise_placement = 'distributed'"),
    ("privacy.secagg_threshold", lambda c: c.privacy.secure_aggregation, "privacy.secure_aggregation = true"),
    ("privacy.secagg_min_clients", lambda c: c.privacy.secure_aggregation, "privacy.secure_aggregation = true"),
    ("attack.kind", lambda c: c.attack.fraction > 0, "attack.fraction > 0"),
    ("attack.scale", lambda c: c.attack.fraction > 0 and c.attack.kind == "sign_flip",
     "attack.fraction > 0 and attack.kind = 'sign_flip'"),
)


def inactive_keys(cfg: Config) -> list[str]:
    """One sentence per key set away from its default that has no effect in ``cfg``.

    Examples
    --------
    >>> from fed8.config import load_config
    >>> inactive_keys(load_config(None, ["server.momentum=0.5"]))  # doctest: +ELLIPSIS
    ["server.momentum = 0.5 has no effect: it applies only with server.strategy = 'fedavgm' (here 'fedavg')..."]
    """
    default, out = Config(), []
    for key, active, when in _RULES:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value == getattr(getattr(default, section), name) or active(cfg):
            continue
        here = ""
        if " or " not in when and " and " not in when:  # one governing key: say what it is now
            g_section, g_name = when.split(" ")[0].split(".")
            here = f" (here {_toml(getattr(getattr(cfg, g_section), g_name))})"
        out.append(f"{key} = {_toml(value)} has no effect: it applies only with {when}{here}. Set that too, or drop "
                   f"{key}.")
    return out


def _toml(v) -> str:
    """A value as it is written in a config file."""
    return ("true" if v else "false") if isinstance(v, bool) else repr(v)
