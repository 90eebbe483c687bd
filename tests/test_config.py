"""The configuration object: defaults < file < overrides, clear errors naming the key, round trips."""
from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path

import pytest

from pneumoscan.config import Config, ConfigError, load_file, merge, parse_overrides, resolve

DEFAULT_TOML = Path(__file__).resolve().parents[1] / "src" / "pneumoscan" / "configs" / "default.toml"


def test_default_toml_is_exactly_the_built_in_defaults():
    assert resolve(DEFAULT_TOML) == Config()


def test_default_toml_writes_out_every_key_that_has_a_value():
    # TOML has no null, so only the keys whose default is None may be left out of the file.
    written = tomllib.loads(DEFAULT_TOML.read_text())
    defaults = Config().to_dict()
    expected = {s: {k for k, v in keys.items() if v is not None} for s, keys in defaults.items()}
    assert {s: set(keys) for s, keys in written.items()} == expected


def test_file_beats_defaults_and_overrides_beat_the_file(tmp_path):
    file = tmp_path / "mine.toml"
    file.write_text('[train]\nepochs = 7\nbatch_size = 8\n\n[model]\nname = "seed_cnn"\n')
    cfg = resolve(file, parse_overrides(["train.epochs=3", "data.image_size=96", "train.max_minutes=none"]))
    assert cfg.train.epochs == 3            # override over file
    assert cfg.train.batch_size == 8        # file over default
    assert cfg.model.name == "seed_cnn"
    assert cfg.data.image_size == 96        # override over default
    assert cfg.train.max_minutes is None
    assert cfg.train.learning_rate == Config().train.learning_rate  # untouched default
    assert Config() == resolve()  # resolving never changes the defaults themselves


def test_override_strings_are_converted_to_the_field_type():
    cfg = resolve(overrides=parse_overrides([
        "augment.horizontal_flip=yes", "train.learning_rate=1e-3", "data.max_per_class=40", "model.weights=none"]))
    assert cfg.augment.horizontal_flip is True
    assert cfg.train.learning_rate == 0.001 and isinstance(cfg.train.learning_rate, float)
    assert cfg.data.max_per_class == 40 and cfg.model.weights is None


@pytest.mark.parametrize("values, key", [
    ({"train": {"epoch": 3}}, "train.epoch"),
    ({"trian": {"epochs": 3}}, "'trian'"),
    ({"train": {"epochs": "many"}}, "train.epochs"),
    ({"train": {"epochs": True}}, "train.epochs"),
    ({"train": {"epochs": [3]}}, "train.epochs"),
    ({"data": {"image_size": 1.5}}, "data.image_size"),
    ({"data": {"image_size": 8}}, "data.image_size"),
    ({"data": {"val_fraction": 0.9}}, "data.val_fraction"),
    ({"data": {"source": "dicom"}}, "data.source"),
    ({"data": {"max_per_class": 0}}, "data.max_per_class"),
    ({"model": {"name": 5}}, "model.name"),
    ({"augment": {"enabled": "maybe"}}, "augment.enabled"),
    ({"train": {"learning_rate": -1.0}}, "train.learning_rate"),
    ({"train": {"class_weight": "inverse"}}, "train.class_weight"),
    ({"evaluate": {"threshold_rule": "sensitivity:high"}}, "evaluate.threshold_rule"),
    ({"evaluate": {"threshold_rule": "best"}}, "evaluate.threshold_rule"),
    ({"model": "pneumonet"}, "'model'"),
])
def test_unknown_keys_and_bad_values_raise_config_error_naming_the_key(values, key):
    with pytest.raises(ConfigError) as err:
        merge(Config(), values)
    assert key in str(err.value)


def test_good_threshold_rules_pass_validation():
    for rule in ("sensitivity:0.95", "fixed:0.5", "youden", "balanced_accuracy"):
        assert merge(Config(), {"evaluate": {"threshold_rule": rule}}).evaluate.threshold_rule == rule


def test_file_errors_name_the_file_and_the_key(tmp_path):
    with pytest.raises(ConfigError, match="config file not found") as err:
        load_file(tmp_path / "absent.toml")
    assert "absent.toml" in str(err.value)
    broken = tmp_path / "broken.toml"
    broken.write_text("[train\nepochs = 3\n")
    with pytest.raises(ConfigError, match="not a valid config file") as err:
        resolve(broken)
    assert str(broken) in str(err.value)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[train]\nepochs = 3\nwarmup = 2\n")
    with pytest.raises(ConfigError, match="train.warmup"):
        resolve(unknown)


@pytest.mark.parametrize("item", ["epochs=3", "train.epochs", "trainepochs=3"])
def test_malformed_override_is_a_config_error(item):
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_overrides([item])


def test_saved_config_json_round_trips(tmp_path):
    changed = resolve(overrides=parse_overrides([
        "data.image_size=64", "data.max_per_class=40", "data.path=/data/xray", "model.name=pneumonet_small",
        "train.max_minutes=none", "augment.horizontal_flip=true", "evaluate.threshold_rule=youden"]))
    file = tmp_path / "config.json"
    file.write_text(changed.to_json())
    assert Config.from_dict(json.loads(file.read_text())) == changed
    assert resolve(file) == changed  # `train --config RUN/config.json` repeats the run
    assert changed != Config() and dataclasses.asdict(changed)["data"]["path"] == "/data/xray"
