"""One round's metrics as a typed record, defined once (after Flower's ``MetricRecord``).

``metrics.jsonl`` holds one :meth:`RoundRecord.to_dict` per line; the summary, the report
and the CLI read rows back with :meth:`RoundRecord.from_dict` and use its attributes, so
a key is spelled in one place. Aggregator-specific entries (``clip_norm``,
``clipped_fraction``, ``noise_std``, ``secagg_*``, the ``rejected`` list) travel in
``extra`` and keep their JSON keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["CLIENT_ACCURACY_KEYS", "RoundRecord"]

CLIENT_ACCURACY_KEYS = ("client_accuracy_mean", "client_accuracy_p10", "client_accuracy_min")


@dataclass
class RoundRecord:
    """What happened in one round; evaluation fields are None on rounds that are not evaluated."""

    round: int
    num_clients: int
    train_loss: float | None  # None when no client trained (a Poisson round that sampled nobody)
    uplink_bytes: int
    downlink_bytes: int
    uplink_bytes_float32: int = 0
    downlink_bytes_float32: int = 0
    rejected_updates: int = 0
    eval_loss: float | None = None
    eval_accuracy: float | None = None
    client_accuracy_mean: float | None = None
    client_accuracy_p10: float | None = None
    client_accuracy_min: float | None = None
    seconds: float = 0.0
    epsilon: float | None = None
    aborted: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def evaluated(self) -> bool:
        return self.eval_accuracy is not None

    def with_eval(self, metrics: Mapping[str, Any]) -> "RoundRecord":
        """A copy with the evaluation fields of ``metrics`` (eval_loss, eval_accuracy, client_accuracy_*)."""
        names = {f.name for f in dataclasses.fields(self)}
        return dataclasses.replace(self, **{k: v for k, v in metrics.items() if k in names})

    def get(self, key: str, default: Any = None) -> Any:
        """A field or an ``extra`` entry by its JSON key."""
        if key in self.extra:
            return self.extra[key]
        return getattr(self, key, default) if key != "extra" else default

    def to_dict(self) -> dict[str, Any]:
        """The ``metrics.jsonl`` row (the key order of earlier versions; ``aborted`` only when set)."""
        row: dict[str, Any] = {
            "round": self.round, "num_clients": self.num_clients, "train_loss": self.train_loss,
            "eval_loss": self.eval_loss, "eval_accuracy": self.eval_accuracy,
            **{k: getattr(self, k) for k in CLIENT_ACCURACY_KEYS},
            "uplink_bytes": self.uplink_bytes, "downlink_bytes": self.downlink_bytes,
            "uplink_bytes_float32": self.uplink_bytes_float32, "downlink_bytes_float32": self.downlink_bytes_float32,
            "rejected_updates": self.rejected_updates, **self.extra,
        }
        if self.aborted is not None:
            row["aborted"] = self.aborted
        row["seconds"] = self.seconds
        row["epsilon"] = self.epsilon
        return row

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> "RoundRecord":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in row.items() if k in names}
        known.setdefault("uplink_bytes", 0)
        known.setdefault("downlink_bytes", 0)
        known.setdefault("train_loss", None)
        known.setdefault("num_clients", 0)
        return cls(**known, extra={k: v for k, v in row.items() if k not in names})
