"""The run directory: what every training run writes, and how to read it back."""
from __future__ import annotations

import hashlib
import json
import platform
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from .config import Config
from .errors import ConfigError, RunError


# The figures of a run, in the order the report shows them (all inside ``plots/``).
PLOT_FILES = ("training_curves.png", "confusion_matrix.png", "roc_pr.png", "calibration.png",
              "scope_scores.png", "sample_predictions.png", "gradcam_grid.png")


@dataclass(frozen=True)
class Run:
    """A run directory. Every path inside one is spelled here and nowhere else."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    def __fspath__(self) -> str:
        # A Run is accepted wherever a run directory's path is: pneumoscan.load(pneumoscan.train(...)).
        return str(self.root)

    # what training writes
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
    def tensorboard_dir(self): return self.root / "tensorboard"
    @property
    def scope_file(self): return self.root / "scope.npz"
    @property
    def scope_extra_file(self): return self.root / "scope_extra.csv"  # pneumoscan report --scope-folder
    @property
    def model_card_file(self): return self.root / "MODEL_CARD.md"
    # what pneumoscan adapt adds
    @property
    def adapt_file(self): return self.root / "adapt.json"
    # checkpoints (resume and the best epoch)
    @property
    def checkpoint_dir(self): return self.root / "checkpoints"
    @property
    def checkpoint_state_file(self): return self.checkpoint_dir / "state.json"
    @property
    def last_checkpoint_file(self): return self.checkpoint_dir / "last.keras"
    @property
    def best_weights_file(self): return self.checkpoint_dir / "best.weights.h5"
    # what a person looks at
    @property
    def plots_dir(self): return self.root / "plots"
    @property
    def report_file(self): return self.root / "report.html"
    # exports (pneumoscan export, and the ONNX engine's cache)
    @property
    def export_dir(self): return self.root / "export"

    def plot_file(self, name: str) -> Path:
        if name not in PLOT_FILES:
            raise ValueError(f"unknown figure {name!r}; a run's figures are {', '.join(PLOT_FILES)}")
        return self.plots_dir / name

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

    def history(self):
        """history.csv as a DataFrame: one row per epoch."""
        import pandas as pd

        if not self.history_file.is_file():
            raise RunError(f"{self.history_file}: not found; no epoch of {self.root} has finished")
        return pd.read_csv(self.history_file)

    def predictions(self):
        """predictions.csv as a DataFrame: path, split, label, probability, raw_probability, predicted, ood_score."""
        import pandas as pd

        if not self.predictions_file.is_file():
            raise RunError(f"{self.predictions_file}: not found; run `pneumoscan evaluate {self.root}` first")
        return pd.read_csv(self.predictions_file)

    def require_model(self) -> Path:
        if not self.model_file.is_file():
            raise RunError(f"{self.model_file}: not found; training of {self.root} has not finished")
        return self.model_file

    def model_sha256(self) -> str:
        return file_sha256(self.require_model())

    def scope_sha256(self) -> str | None:
        """The fitted out-of-scope statistics' hash (None for a run without them)."""
        return file_sha256(self.scope_file) if self.scope_file.is_file() else None

    def model_id(self) -> str:
        """The run folder's name plus a short hash of its model.keras: names exactly one model."""
        return f"{self.root.name}-{self.model_sha256()[:12]}"


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def cpu_model() -> str:
    """The processor's model name (results files and measurements name the machine they ran on)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


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
        "processor": cpu_model(),
        "cpu_count": os.cpu_count(),
        "command": " ".join(sys.argv),
        "packages": {p: version(p) for p in ("pneumoscan", "tensorflow", "tensorflow-cpu", "keras", "numpy",
                                              "pandas", "scikit-learn", "pillow", "matplotlib", "seaborn")},
    }
