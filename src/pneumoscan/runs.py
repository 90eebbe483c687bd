"""The run directory: what every training run writes, and how to read it back."""
from __future__ import annotations

import json
import platform
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from .config import Config, ConfigError


class RunError(ValueError):
    """A run directory is missing or incomplete; the message names the file."""


@dataclass(frozen=True)
class Run:
    root: Path

    @property
    def config_file(self): return self.root / "config.json"
    @property
    def model_file(self): return self.root / "model.keras"
    @property
    def history_file(self): return self.root / "history.csv"
    @property
    def splits_file(self): return self.root / "splits.csv"
    @property
    def metrics_file(self): return self.root / "metrics.json"
    @property
    def predictions_file(self): return self.root / "predictions.csv"
    @property
    def environment_file(self): return self.root / "environment.json"
    @property
    def checkpoint_dir(self): return self.root / "checkpoints"

    def config(self) -> Config:
        if not self.config_file.is_file():
            raise RunError(f"{self.config_file}: not found; is {self.root} a pneumoscan run directory?")
        try:
            return Config.from_dict(json.loads(self.config_file.read_text()))
        except (json.JSONDecodeError, ConfigError) as exc:
            raise RunError(f"{self.config_file}: unreadable ({exc})") from None

    def metrics(self) -> dict:
        if not self.metrics_file.is_file():
            raise RunError(f"{self.metrics_file}: not found; run `pneumoscan evaluate {self.root}` first")
        return json.loads(self.metrics_file.read_text())

    def load_model(self):
        if not self.model_file.is_file():
            raise RunError(f"{self.model_file}: not found; training of {self.root} has not finished")
        import keras

        from . import models  # noqa: F401  registers custom objects

        return keras.saving.load_model(self.model_file, compile=False)


def environment() -> dict:
    """Versions and machine facts, saved with every run."""
    def version(pkg):
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    import os

    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "command": " ".join(sys.argv),
        "packages": {p: version(p) for p in ("pneumoscan", "tensorflow", "tensorflow-cpu", "keras", "numpy",
                                              "pandas", "scikit-learn", "pillow", "matplotlib", "seaborn")},
    }
