"""Predict on new images with a trained run.

    import pneumoscan
    model = pneumoscan.load("runs/default")
    model.predict(["xray.jpeg", "folder/"])   # DataFrame: path, probability, label, error
"""
from __future__ import annotations

import glob
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from .data.pipeline import predict_probabilities
from .data.preprocess import IMAGE_EXTENSIONS, ImageReadError, load_preprocessed
from .data.sources import CLASS_NAMES
from .evaluate.calibration import apply_temperature
from .runs import Run

COLUMNS = ["path", "probability", "label", "error"]


def expand_inputs(inputs: Iterable[str | Path]) -> list[tuple[str, str]]:
    """Files, folders (searched recursively for images) and globs -> [(path, error)].

    An input that matches nothing yields one row with the problem in ``error``.
    """
    out: list[tuple[str, str]] = []
    for item in map(str, inputs):
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                           and not p.name.startswith("."))
            out += [(str(p), "") for p in found] or [(item, "folder holds no JPEG or PNG images")]
        elif path.exists():
            out.append((str(path), ""))
        elif glob.has_magic(item):
            matches = sorted(glob.glob(str(path), recursive=True))
            out += [(m, "") for m in matches if Path(m).is_file()] or [(item, "pattern matches no files")]
        else:
            out.append((item, "file not found"))
    return out


class Predictor:
    """A trained model plus everything needed to use it: input size, temperature, threshold."""

    def __init__(self, model, image_size: int, threshold: float, temperature: float = 1.0, name: str = "model"):
        self.model, self.image_size, self.name = model, image_size, name
        self.threshold, self.temperature = float(threshold), float(temperature)

    @classmethod
    def from_run(cls, run_dir: str | Path) -> "Predictor":
        run = Run(Path(run_dir))
        cfg = run.config()
        metrics = run.metrics()
        temperature = metrics.get("calibration", {}).get("temperature", 1.0)
        return cls(run.load_model(), cfg.data.image_size, metrics["threshold"]["value"], temperature, name=str(run.root))

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Calibrated PNEUMONIA probability for (N, S, S) uint8 images already preprocessed."""
        return apply_temperature(predict_probabilities(self.model, images), self.temperature)

    def predict(self, inputs: Iterable[str | Path] | str | Path, batch_size: int = 32) -> pd.DataFrame:
        """One row per input image; unreadable inputs get an ``error`` and no probability."""
        if isinstance(inputs, (str, Path)):
            inputs = [inputs]
        rows = []
        entries = expand_inputs(inputs)
        for start in range(0, len(entries), batch_size):
            chunk, images, ok = entries[start:start + batch_size], [], []
            for path, error in chunk:
                if not error:
                    try:
                        images.append(load_preprocessed(path, self.image_size))
                    except ImageReadError as exc:
                        error = exc.problem
                ok.append(not error)
                rows.append({"path": path, "probability": np.nan, "label": "", "error": error})
            if images:
                probs = self.probabilities(np.stack(images))
                targets = [r for r, good in zip(rows[-len(chunk):], ok) if good]
                for row, p in zip(targets, probs):
                    row["probability"] = float(p)
                    row["label"] = CLASS_NAMES[int(p >= self.threshold)]
        return pd.DataFrame(rows, columns=COLUMNS)


def load(run_dir: str | Path) -> Predictor:
    return Predictor.from_run(run_dir)
