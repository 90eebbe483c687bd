"""One configuration object for every run.

Resolution order (later wins): built-in defaults < config file (TOML) < flags.
The resolved config is saved as ``config.json`` in every run directory, so
``pneumoscan train --config RUN/config.json`` repeats a run exactly.
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping


class ConfigError(ValueError):
    """A configuration file or override is invalid."""


@dataclass
class DataConfig:
    source: str = "auto"  # auto | kermany | medmnist | csv
    path: str | None = None  # None: --data, then $PNEUMOSCAN_DATA, then the cache dir
    image_size: int = 160
    val_fraction: float = 0.12
    split_seed: int = 1234
    max_per_class: int | None = None  # a small stratified subset of each split, for quick runs


@dataclass
class AugmentConfig:
    enabled: bool = True
    rotation_degrees: float = 8.0
    zoom: float = 0.10
    translate: float = 0.06
    contrast: float = 0.15
    brightness: float = 0.10
    # Off by default: a mirrored chest puts the heart on the wrong side.
    horizontal_flip: bool = False


@dataclass
class ModelConfig:
    name: str = "pneumonet"
    dropout: float = 0.3
    width: int = 32  # channels of the first stage; later stages double it
    weights: str | None = None  # keras.applications backbones: None | "imagenet" | path


@dataclass
class TrainConfig:
    epochs: int = 22  # the cosine schedule ends here; 22 x ~70 s fits the budget on 2 cores
    batch_size: int = 32
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    class_weight: str = "balanced"  # balanced | none
    monitor: str = "val_auc"
    patience: int = 8
    max_minutes: float | None = 28.0  # wall-clock budget; training stops before an epoch that would cross it
    seed: int = 42
    # Hardware (see pneumoscan.precision and pneumoscan.distribute). "auto" picks per device:
    # float32 without XLA on CPU (measured fastest), mixed_float16 with XLA on one GPU.
    precision: str = "auto"  # auto | float32 | mixed_float16 | mixed_bfloat16
    jit_compile: str = "auto"  # auto | on | off
    strategy: str = "auto"  # auto | one | mirrored | multiworker
    devices: str | None = None  # mirrored: e.g. "/gpu:0,/gpu:1"; default every local GPU
    # With several replicas, batch_size is per replica and learning_rate is scaled by the
    # replica count; batch-norm statistics are then taken over the global batch.
    sync_batchnorm: bool = True
    worker_timeout: float | None = 600.0  # multiworker: seconds without progress before the job fails


@dataclass
class EvaluateConfig:
    # Chosen before any test-split result was seen; see pneumoscan.evaluate.threshold.
    threshold_rule: str = "sensitivity:0.95"
    bootstrap: int = 2000
    seed: int = 0


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Config":
        return merge(cls(), values)


def _coerce(section: str, key: str, current: Any, value: Any, annotation: Any) -> Any:
    """Convert strings from the command line to the field's type, with a clear error."""
    if value is None:
        return None
    ann = str(annotation)
    try:
        if isinstance(value, str):
            low = value.strip().lower()
            if low in ("none", "null", ""):
                if "None" in ann:
                    return None
            if ann.startswith("bool") or isinstance(current, bool):
                if low in ("true", "1", "yes", "on"):
                    return True
                if low in ("false", "0", "no", "off"):
                    return False
                raise ValueError(value)
            if ann.startswith("int"):
                return int(value)
            if ann.startswith("float"):
                return float(value)
            return value
        # A file's value must already have the field's type: a TOML `epochs = true` or
        # `name = 5` is a mistake, not something to guess at.
        if isinstance(value, bool) != ann.startswith("bool") or ann.startswith("str"):
            raise ValueError(value)
        if not isinstance(value, (int, float)) or (ann.startswith("int") and isinstance(value, float)):
            raise ValueError(value)
        if ann.startswith("float") and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value
    except ValueError:
        raise ConfigError(
            f"config {section}.{key}: cannot use {value!r}; expected {ann}"
        ) from None


def merge(config: Config, values: Mapping[str, Any]) -> Config:
    """Return a copy of ``config`` with ``values`` ({section: {key: value}}) applied."""
    result = _copy(config)
    for section, entries in values.items():
        if not hasattr(result, section) or not dataclasses.is_dataclass(getattr(result, section)):
            raise ConfigError(f"unknown config section {section!r}; known: {', '.join(_sections())}")
        if not isinstance(entries, Mapping):
            raise ConfigError(f"config section {section!r} must be a table of key = value")
        target = getattr(result, section)
        fields = {f.name: f for f in dataclasses.fields(target)}
        for key, value in entries.items():
            if key not in fields:
                raise ConfigError(
                    f"unknown config key {section}.{key}; known: {', '.join(sorted(fields))}"
                )
            current = getattr(target, key)
            setattr(target, key, _coerce(section, key, current, value, fields[key].type))
    validate(result)
    return result


def _copy(config: Config) -> Config:
    d = config.to_dict()
    return Config(**{name: type(getattr(config, name))(**d[name]) for name in _sections()})


def _sections() -> list[str]:
    return [f.name for f in dataclasses.fields(Config)]


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML or JSON config file into {section: {key: value}}."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        if path.suffix == ".json":
            return json.loads(path.read_text())
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a valid config file: {exc}") from None


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """Turn ``["train.epochs=3", ...]`` into {section: {key: value}}."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        dotted, value = item.split("=", 1)
        section, key = dotted.split(".", 1)
        out.setdefault(section, {})[key] = value
    return out


def resolve(file: str | Path | None = None, overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Config:
    """Defaults < file < overrides."""
    config = Config()
    if file is not None:
        config = merge(config, load_file(file))
    if overrides:
        config = merge(config, overrides)
    return config


def validate(config: Config) -> None:
    d, t = config.data, config.train
    if d.source not in ("auto", "kermany", "medmnist", "csv"):
        raise ConfigError(f"data.source must be auto, kermany, medmnist or csv, not {d.source!r}")
    if not 16 <= d.image_size <= 1024:
        raise ConfigError(f"data.image_size must be between 16 and 1024, not {d.image_size}")
    if not 0.02 <= d.val_fraction <= 0.5:
        raise ConfigError(f"data.val_fraction must be between 0.02 and 0.5, not {d.val_fraction}")
    if d.max_per_class is not None and d.max_per_class < 1:
        raise ConfigError("data.max_per_class must be a positive number or none")
    if t.epochs < 1 or t.batch_size < 1:
        raise ConfigError("train.epochs and train.batch_size must be at least 1")
    if t.learning_rate <= 0:
        raise ConfigError("train.learning_rate must be positive")
    if t.class_weight not in ("balanced", "none"):
        raise ConfigError(f"train.class_weight must be balanced or none, not {t.class_weight!r}")
    for key, allowed in (("precision", ("auto", "float32", "mixed_float16", "mixed_bfloat16")),
                         ("jit_compile", ("auto", "on", "off")),
                         ("strategy", ("auto", "one", "mirrored", "multiworker"))):
        if getattr(t, key) not in allowed:
            raise ConfigError(f"train.{key} must be one of {', '.join(allowed)}, not {getattr(t, key)!r}")
    if t.worker_timeout is not None and t.worker_timeout <= 0:
        raise ConfigError("train.worker_timeout must be a positive number of seconds or none")
    _validate_threshold_rule(config.evaluate.threshold_rule)


def _validate_threshold_rule(rule: str) -> None:
    """Checked here, not after training: the rule is only used once the model is trained."""
    name, _, arg = rule.partition(":")
    if name in ("youden", "balanced_accuracy") and not arg:
        return
    if name in ("sensitivity", "fixed"):
        try:
            if 0.0 <= float(arg) <= 1.0:
                return
        except ValueError:
            pass
    raise ConfigError(
        f"evaluate.threshold_rule {rule!r} is not one of sensitivity:<0..1>, fixed:<0..1>, youden, balanced_accuracy"
    )
