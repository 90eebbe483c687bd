"""One configuration object for every run.

Resolution order (later wins): built-in defaults < config file (TOML or JSON, or the name
of a config shipped in the package: ``default``, ``quick``) < flags.
The resolved config is saved as ``config.json`` in every run directory, so
``pneumoscan train --config RUN/config.json`` repeats a run exactly.

Values are checked against the fields' types by pydantic: strictly for a file (a TOML
``epochs = true`` is a mistake, not something to guess at), leniently for the command
line, whose values all arrive as text (``--set train.epochs=3``).
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from pydantic import TypeAdapter, ValidationError

from .errors import ConfigError
from .options import (CLASS_WEIGHTS, JIT_MODES, NORMALIZATIONS, PRECISIONS, SOURCES, STRATEGIES,
                      THRESHOLD_RULE_HELP, parse_threshold_rule)

__all__ = ["Config", "ConfigError", "DataConfig", "AugmentConfig", "ModelConfig", "TrainConfig",
           "EvaluateConfig", "resolve", "named_configs", "parse_overrides", "merge", "load_file"]


@dataclass
class DataConfig:
    source: str = "auto"  # options.SOURCES
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
    # Acquisition levers (0 = off); see pneumoscan.imaging.augment.
    # The defaults are the recipe chosen on shift-stress validation (benchmarks/results/recipe.md).
    zoom_in: float = 0.25  # zoom in further than out, by up to this fraction (tighter framing)
    borders: float = 0.12  # collimator edges: black bands of up to this fraction per side
    gamma: float = 0.5  # intensity curve: exponent in [1/(1+gamma), 1+gamma]
    noise: float = 6.0  # detector noise: std up to this, on the 0..255 scale
    blur: float = 0.3  # Gaussian blur strength factor (Keras RandomGaussianBlur)
    sharpness: float = 0.3  # sharpening/softening factor (Keras RandomSharpness)
    erasing: float = 0.25  # probability of erasing a random rectangle (Keras RandomErasing)


@dataclass
class ModelConfig:
    name: str = "pneumonet"
    dropout: float = 0.3
    width: int = 32  # channels of the first stage; later stages double it
    weights: str | None = None  # keras.applications backbones: None | "imagenet" | path
    # Input intensity inside the model (so exports carry it): options.NORMALIZATIONS.
    # "scale": x / 255; "image": each image to zero mean and unit variance (exposure-invariant);
    # "auto": image for seed_cnn and pneumonet, the backbone's own scaling for keras.applications.
    normalize: str = "auto"


@dataclass
class TrainConfig:
    epochs: int = 22  # the cosine schedule ends here; 22 x ~70 s fits the budget on 2 cores
    batch_size: int = 32
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    # Exponential moving average of the weights (e.g. 0.99): validation, the best-epoch
    # checkpoint and model.keras use the averaged weights, which swing less between epochs.
    ema: float | None = 0.99
    class_weight: str = "balanced"  # options.CLASS_WEIGHTS
    monitor: str = "val_auc"
    patience: int = 8
    max_minutes: float | None = 28.0  # wall-clock budget; training stops before an epoch that would cross it
    seed: int = 42
    # Hardware (see pneumoscan.training.precision and .strategy). "auto" picks per device: on a
    # CPU float32 or mixed_bfloat16, whichever a probe measures faster, without XLA; on one GPU
    # mixed_float16 with XLA.
    precision: str = "auto"  # options.PRECISIONS
    jit_compile: str = "auto"  # options.JIT_MODES
    strategy: str = "auto"  # options.STRATEGIES
    devices: str | None = None  # mirrored: e.g. "/gpu:0,/gpu:1"; default every local GPU
    # With several replicas, batch_size is per replica and learning_rate is scaled by the
    # replica count; batch-norm statistics are then taken over the global batch.
    sync_batchnorm: bool = True
    worker_timeout: float | None = 600.0  # multiworker: seconds without progress before the job fails
    tensorboard: bool = False  # also write TensorBoard logs into RUN/tensorboard/


@dataclass
class EvaluateConfig:
    # Chosen before any test-split result was seen; see pneumoscan.evaluation.threshold.
    threshold_rule: str = "sensitivity:0.95"
    bootstrap: int = 2000
    seed: int = 0
    # Out-of-scope score: the share of validation images it may flag (its threshold's quantile).
    scope_flag_rate: float = 0.05


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


_NONE_WORDS = ("none", "null", "")


@cache
def _adapter(section_type: type, key: str) -> TypeAdapter:
    return TypeAdapter(typing.get_type_hints(section_type)[key])


def _coerce(section: str, key: str, section_type: type, value: Any, from_text: bool) -> Any:
    """``value`` as the field's type, or a ConfigError that names the key and what it expects."""
    adapter = _adapter(section_type, key)
    if from_text and isinstance(value, str) and value.strip().lower() in _NONE_WORDS:
        value = None  # "none" on the command line means None where the field allows it
    try:
        # Text from the command line is parsed ("3" -> 3, "on" -> True); a file's values
        # must already have the field's type, except an integer where a float is expected.
        return adapter.validate_python(value.strip() if from_text and isinstance(value, str) else value,
                                       strict=not from_text)
    except ValidationError as exc:
        hint = typing.get_type_hints(section_type)[key]
        expected = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
        why = exc.errors()[0]["msg"]
        raise ConfigError(f"config {section}.{key}: cannot use {value!r}; expected {expected} ({why})") from None


def merge(config: Config, values: Mapping[str, Any], from_text: bool = False) -> Config:
    """Return a copy of ``config`` with ``values`` ({section: {key: value}}) applied.

    ``from_text``: the values are command-line text, to be parsed rather than type-checked.
    """
    result = _copy(config)
    for section, entries in values.items():
        if not hasattr(result, section) or not dataclasses.is_dataclass(getattr(result, section)):
            raise ConfigError(f"unknown config section {section!r}; known: {', '.join(_sections())}")
        if not isinstance(entries, Mapping):
            raise ConfigError(f"config section {section!r} must be a table of key = value")
        target = getattr(result, section)
        fields = {f.name for f in dataclasses.fields(target)}
        for key, value in entries.items():
            if key not in fields:
                raise ConfigError(f"unknown config key {section}.{key}; known: {', '.join(sorted(fields))}")
            setattr(target, key, _coerce(section, key, type(target), value, from_text))
    validate(result)
    return result


def _copy(config: Config) -> Config:
    d = config.to_dict()
    return Config(**{name: type(getattr(config, name))(**d[name]) for name in _sections()})


def _sections() -> list[str]:
    return [f.name for f in dataclasses.fields(Config)]


def named_configs() -> list[str]:
    """The configs shipped inside the package, by name (``pneumoscan train --config quick``)."""
    folder = resources.files("pneumoscan").joinpath("configs")
    return sorted(entry.name.removesuffix(".toml") for entry in folder.iterdir() if entry.name.endswith(".toml"))


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML or JSON config file, or a named config, into {section: {key: value}}."""
    text, where = _config_text(path)
    try:
        if where.endswith(".json"):
            return json.loads(text)
        return tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{where}: not a valid config file: {exc}") from None


def _config_text(path: str | Path) -> tuple[str, str]:
    file = Path(path).expanduser()
    if file.is_file():
        return file.read_text(), str(file)
    name = str(path)
    if name in named_configs():
        entry = resources.files("pneumoscan").joinpath("configs", f"{name}.toml")
        return entry.read_text(encoding="utf-8"), f"pneumoscan/configs/{name}.toml"
    raise ConfigError(f"{path}: config file not found (and not a named config: {', '.join(named_configs())})")


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
    """Defaults < ``file`` (a path or a named config) < ``overrides`` ({section: {key: value}}).

    Overrides may be typed values (from Python) or text (from the command line).
    """
    config = Config()
    if file is not None:
        config = merge(config, load_file(file))
    if overrides:
        config = merge(config, overrides, from_text=True)
    return config


def _one_of(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(allowed)}, not {value!r}")


def validate(config: Config) -> None:
    d, t = config.data, config.train
    _one_of("data.source", d.source, SOURCES)
    _one_of("model.normalize", config.model.normalize, NORMALIZATIONS)
    for key in ("zoom_in", "borders", "gamma", "noise", "blur", "sharpness", "erasing"):
        if getattr(config.augment, key) < 0:
            raise ConfigError(f"augment.{key} must be 0 (off) or positive, not {getattr(config.augment, key)}")
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
    if not 0.0 < config.evaluate.scope_flag_rate < 0.5:
        raise ConfigError(f"evaluate.scope_flag_rate must be between 0 and 0.5, not {config.evaluate.scope_flag_rate}")
    if t.ema is not None and not 0.0 < t.ema < 1.0:
        raise ConfigError(f"train.ema must be a momentum between 0 and 1 (e.g. 0.99) or none, not {t.ema}")
    _one_of("train.class_weight", t.class_weight, CLASS_WEIGHTS)
    _one_of("train.precision", t.precision, PRECISIONS)
    _one_of("train.jit_compile", t.jit_compile, JIT_MODES)
    _one_of("train.strategy", t.strategy, STRATEGIES)
    if t.worker_timeout is not None and t.worker_timeout <= 0:
        raise ConfigError("train.worker_timeout must be a positive number of seconds or none")
    try:  # checked here, not after training: the rule is only used once the model is trained
        parse_threshold_rule(config.evaluate.threshold_rule)
    except ValueError as exc:
        raise ConfigError(f"evaluate.threshold_rule: {exc} ({THRESHOLD_RULE_HELP})") from None
