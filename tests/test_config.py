import dataclasses

import pytest

import fed8
from fed8.config import Config, load_config, to_toml
from fed8.errors import ConfigError, Fed8Error


def test_defaults_and_overrides():
    cfg = load_config(None, ["train.rounds=3", "data.alpha=0.1", "data.source=idx", "server.strategy=\"fedadam\""])
    assert cfg.train.rounds == 3 and cfg.data.alpha == 0.1
    assert cfg.data.source == "idx" and cfg.server.strategy == "fedadam"
    assert load_config().train.rounds == Config().train.rounds
    assert fed8.Config is Config and fed8.load_config is load_config


def test_int_accepted_for_float_and_frozen():
    cfg = load_config(None, ["train.lr=1"])
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 2.0


@pytest.mark.parametrize("item, match", [
    ("train.roundz=3", r"unknown key train\.roundz.*Did you mean train\.rounds"),
    ("bogus.key=1", r"unknown section \[bogus\]"),
    ("rounds=3", r"must be section\.key"),
    ("train.rounds", r"expects section\.key=value"),
    ("data.alpha=-1", r"data\.alpha must be a float > 0.0; got -1\.0\. Use e\.g\. 0\.5"),
    ("train.rounds=2.5", r"train\.rounds must be an int >= 1; got 2\.5 \(float\)"),
    ("train.rounds=0", r"train\.rounds must be an int >= 1; got 0"),
    ("train.rounds=true", r"train\.rounds .*\(bool\)"),
    ("data.source=imagenet", r"data\.source must be one of 'mnist10k', 'idx'.*got 'imagenet'"),
    ("train.fraction=1.5", r"train\.fraction must be a float > 0\.0 and <= 1\.0; got 1\.5"),
    ("train.lr=nan", r"train\.lr .*not finite"),
])
def test_bad_overrides(item, match):
    with pytest.raises(ConfigError, match=match) as info:
        load_config(None, [item])
    assert isinstance(info.value, ValueError) and isinstance(info.value, Fed8Error)


def test_toml_file_roundtrip_and_errors(tmp_path):
    cfg = load_config(None, ["train.rounds=7", "data.path=/x/\"y\""])
    p = tmp_path / "c.toml"
    p.write_text(to_toml(cfg))
    assert load_config(p) == cfg
    (tmp_path / "bad.toml").write_text("[train]\nrounds = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")
    (tmp_path / "unk.toml").write_text("[train]\nepochs = 3\n")
    with pytest.raises(ConfigError, match=r"unk\.toml: unknown key train\.epochs"):
        load_config(tmp_path / "unk.toml")
    with pytest.raises(ConfigError, match="does not exist.*fed8 init"):
        load_config(tmp_path / "missing.toml")
    # --set wins over the file
    assert load_config(p, ["train.rounds=9"]).train.rounds == 9


def test_commented_toml_documents_every_key():
    text = to_toml(Config(), comments=True)
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(getattr(Config(), section.name)):
            line = f"{f.name} = "
            idx = text.index(f"\n{line}", text.index(f"[{section.name}]"))
            prev = text[:idx].rsplit("\n", 1)[-1]
            assert prev.startswith("# "), f"{section.name}.{f.name} has no comment"
