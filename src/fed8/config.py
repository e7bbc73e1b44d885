"""Run configuration: frozen dataclasses, loaded from TOML plus ``--set`` overrides.

A config has one section per stage (``[data]``, ``[model]``, ``[train]``,
``[server]``, ``[eval]``, ``[run]``). Every key carries its documentation and its
allowed values in the dataclass field metadata, so validation, ``fed8 init`` and
the error messages come from one place. Unknown sections or keys are errors.

Examples
--------
>>> cfg = load_config(None, ["train.rounds=3", "data.alpha=0.1"])
>>> cfg.train.rounds
3
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "AttackConfig",
    "CompressionConfig",
    "Config",
    "DEPLOY_FORMATS",
    "DataConfig",
    "EvalConfig",
    "FederationConfig",
    "ModelConfig",
    "PrivacyConfig",
    "QuantizeConfig",
    "RunConfig",
    "ServerConfig",
    "TrainConfig",
    "load_config",
    "to_toml",
]


from ._config_sections import (  # noqa: E402  (re-exported: the sections are part of this module's API)
    DEPLOY_FORMATS,
    AttackConfig,
    CompressionConfig,
    DataConfig,
    EvalConfig,
    FederationConfig,
    ModelConfig,
    PrivacyConfig,
    QuantizeConfig,
    RunConfig,
    ServerConfig,
    TrainConfig,
)


@dataclass(frozen=True)
class Config:
    """A complete, validated fed8 configuration (one frozen dataclass per section)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def replace(self, overrides: Sequence[str] | Mapping[str, Any]) -> "Config":
        """Return a copy with ``section.key=value`` overrides applied and validated."""
        return _build(self.to_dict(), overrides, source="--set")

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "server": ServerConfig,
    "eval": EvalConfig,
    "compression": CompressionConfig,
    "quantize": QuantizeConfig,
    "privacy": PrivacyConfig,
    "attack": AttackConfig,
    "federation": FederationConfig,
    "run": RunConfig,
}


def _allowed(meta: Mapping[str, Any], typ: str) -> str:
    if "choices" in meta:
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    parts = []
    for rule, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
        if rule in meta:
            parts.append(f"{sym} {meta[rule]}")
    article = "an" if typ[0] in "aeiou" else "a"
    return f"{article} {typ}" + (" " + " and ".join(parts) if parts else "")


def _check(section: str, f: dataclasses.Field, value: Any) -> Any:
    """Type-check and range-check one value; return it converted (int -> float)."""
    name = f"{section}.{f.name}"
    meta = f.metadata
    typ = f.type if isinstance(f.type, str) else f.type.__name__
    hint = meta.get("hint", "")

    def fail(why: str) -> ConfigError:
        msg = f"{name} must be {_allowed(meta, typ)}; got {value!r}{why}."
        return ConfigError(msg + (" " + hint if hint else ""))

    if isinstance(value, bool) and "bool_alias" in meta:  # a key that was a bool and grew an "auto"
        value = meta["bool_alias"][value]
    if typ == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail(f" ({type(value).__name__})")
        value = float(value)
        if not math.isfinite(value):
            raise fail(" (not finite)")
    elif typ == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(f" ({type(value).__name__})")
    elif typ == "str":
        if not isinstance(value, str):
            raise fail(f" ({type(value).__name__})")
    elif typ == "bool":
        if not isinstance(value, bool):
            raise fail(f" ({type(value).__name__})")
    if "choices" in meta and value not in meta["choices"]:
        raise fail("")
    if "validate" in meta:
        meta["validate"](name, value)
    for rule, ok in (
        ("gt", lambda v, b: v > b),
        ("ge", lambda v, b: v >= b),
        ("lt", lambda v, b: v < b),
        ("le", lambda v, b: v <= b),
    ):
        if rule in meta and not ok(value, meta[rule]):
            raise fail("")
    return value


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(
            f"--set expects section.key=value (e.g. train.rounds=10); got {item!r}."
        )
    key, raw = item.split("=", 1)
    key, raw = key.strip(), raw.strip()
    try:  # TOML literal: 10, 0.5, true, "text"
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word is a string: data.source=idx
    return key, value


def _build(
    base: Mapping[str, Mapping[str, Any]],
    overrides: Sequence[str] | Mapping[str, Any],
    *,
    source: str,
) -> Config:
    merged = {s: dict(v) for s, v in base.items()}
    items = overrides.items() if isinstance(overrides, Mapping) else map(_parse_override, overrides)
    for key, value in items:
        if "." not in key:
            raise ConfigError(
                f"{source}: key {key!r} must be section.key, with section one of "
                f"{', '.join(_SECTIONS)}; e.g. train.rounds=10."
            )
        section, name = key.split(".", 1)
        merged.setdefault(section, {})[name] = value
    return _from_dict(merged, source=source)


def _from_dict(raw: Mapping[str, Any], *, source: str) -> Config:
    sections = {}
    for section, values in raw.items():
        if section not in _SECTIONS:
            raise ConfigError(
                f"{source}: unknown section [{section}]; allowed: "
                f"{', '.join(_SECTIONS)}. Run 'fed8 init' to see every key."
            )
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source}: [{section}] must be a table of keys; got {values!r}.")
        cls = _SECTIONS[section]
        known = {f.name: f for f in fields(cls)}
        kwargs = {}
        for name, value in values.items():
            if name not in known:
                close = [k for k in known if k.startswith(name[:3])]
                raise ConfigError(
                    f"{source}: unknown key {section}.{name}; [{section}] has "
                    f"{', '.join(known)}."
                    + (f" Did you mean {section}.{close[0]}?" if close else "")
                )
            kwargs[name] = _check(section, known[name], value)
        sections[section] = cls(**kwargs)
    return Config(**sections)


def load_config(
    path: str | Path | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
) -> Config:
    """Load a config from a TOML file (or the defaults) and apply overrides.

    Parameters
    ----------
    path
        A TOML file with any subset of the sections and keys; ``None`` for defaults.
    overrides
        ``["section.key=value", ...]`` as given to ``--set`` (values are TOML
        literals; bare words are strings), or a mapping ``{"section.key": value}``.

    Raises
    ------
    ConfigError
        Unknown section or key, wrong type, value out of range, unreadable file.
    """
    raw: dict[str, Any] = {}
    source = "--set"
    if path is not None:
        p = Path(path)
        source = str(p)
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {p} does not exist; run 'fed8 init {p}' to create one.") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {p} is a folder; pass a .toml file (e.g. {p / 'config.toml'} of a run "
                              "directory, or one written by 'fed8 init').") from None
        except OSError as e:
            raise ConfigError(f"config file {p} cannot be read: {e.strerror or e}.") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {p} is not valid TOML: {e}.") from None
    _from_dict(raw, source=source)  # the file's own errors name the file
    # The file's keys as written, not resolved: an "auto" in the file must see the overrides too.
    return _build(raw, overrides, source="--set")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):  # a TOML basic string: JSON's escapes are TOML's (plus DEL, which JSON leaves)
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, float):
        return repr(v)
    return str(v)


def to_toml(config: Config | None, *, comments: bool = False) -> str:
    """Serialize a config to TOML; with ``comments``, document every key above it.

    ``config = None`` writes the declared defaults, ``auto`` values as ``auto`` (``fed8 init``):
    a constructed config holds them resolved (``privacy.dp = "auto"`` is ``"none"`` until a
    budget is set), and a template must keep them resolvable.
    """
    lines: list[str] = []
    if comments:
        lines += ["# fed8 configuration. Every key is optional; shown are the defaults.",
                  "# Override any key on the command line: fed8 run --set train.rounds=30", ""]
    for section, cls in _SECTIONS.items():
        obj = getattr(config, section) if config is not None else None
        if comments and cls.__doc__:
            lines.append(f"# {cls.__doc__.strip()}")
        lines.append(f"[{section}]")
        for f in fields(cls):
            if comments:
                lines.append(f"# {f.metadata['doc']}")
            lines.append(f"{f.name} = {_toml_value(f.default if obj is None else getattr(obj, f.name))}")
        lines.append("")
    return "\n".join(lines)
