"""Predict on new images with a trained run.

    import pneumoscan
    model = pneumoscan.load("runs/default")
    model.predict(["xray.jpeg", "folder/"])   # DataFrame: path, probability, label, error, warning
    for table in model.iter_predict(["folder/"], batch_size=32):   # the same, one batch at a time
        ...

Inputs are expanded lazily and decoded one batch at a time, so memory stays bounded
whatever the number of images.
"""
from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Collection, Iterable, Iterator

import numpy as np
import pandas as pd

from .data.inputs import iter_inputs
from .data.pipeline import predict_probabilities
from .data.preprocess import ImageReadError, LoadedImage, load_checked
from .data.sources import CLASS_NAMES
from .evaluate.calibration import apply_temperature
from .runs import Run

COLUMNS = ["path", "probability", "label", "error", "warning"]
WARNING_SEPARATOR = "; "  # several warnings share the one ``warning`` cell


def expand_inputs(inputs: Iterable[str | Path]) -> list[tuple[str, str]]:
    """Files, folders and globs -> [(path, error)]; ``iter_inputs`` is the lazy version."""
    return list(iter_inputs(inputs))


class Predictor:
    """A trained model plus everything needed to use it: input size, temperature, threshold."""

    def __init__(self, model, image_size: int, threshold: float, temperature: float = 1.0, name: str = "model"):
        self.model, self.image_size, self.name = model, image_size, name
        self.threshold, self.temperature = float(threshold), float(temperature)

    @classmethod
    def from_run(cls, run_dir: str | Path, engine: str = "keras") -> "Predictor":
        """``engine``: "keras" (model.keras) or "onnx" (ONNX Runtime on RUN/export/model.onnx)."""
        from .engines import load_engine

        run = Run(Path(run_dir))
        cfg = run.config()
        metrics = run.metrics()
        temperature = metrics.get("calibration", {}).get("temperature", 1.0)
        return cls(load_engine(run, engine), cfg.data.image_size, metrics["threshold"]["value"], temperature,
                   name=str(run.root))

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Calibrated PNEUMONIA probability for (N, S, S) uint8 images already preprocessed."""
        return apply_temperature(predict_probabilities(self.model, images), self.temperature)

    def predict(self, inputs: Iterable[str | Path] | str | Path, batch_size: int = 32) -> pd.DataFrame:
        """One row per input image; unreadable inputs get an ``error`` and no probability."""
        tables = list(self.iter_predict(inputs, batch_size))
        return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=COLUMNS)

    def iter_predict(self, inputs: Iterable[str | Path] | str | Path, batch_size: int = 32,
                     skip: Collection[str] = ()) -> Iterator[pd.DataFrame]:
        """``predict`` one batch at a time: a table of at most ``batch_size`` rows per step.

        Only one batch of images is ever in memory. Paths in ``skip`` (e.g. already in an
        output file) are left out without being read.
        """
        if isinstance(inputs, (str, Path)):
            inputs = [inputs]
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        entries = (entry for entry in iter_inputs(inputs) if entry[0] not in skip)
        # Decoding threads: Pillow and numpy release the GIL while they work.
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            while chunk := list(itertools.islice(entries, batch_size)):
                yield self._predict_batch(chunk, pool.map(self._load, chunk))

    def _load(self, entry: tuple[str, str]) -> LoadedImage | str:
        """The loaded image, or the reason it cannot be used."""
        path, error = entry
        if error:
            return error
        try:
            return load_checked(path, self.image_size)
        except ImageReadError as exc:
            return exc.problem

    def _predict_batch(self, chunk: list[tuple[str, str]], loaded: Iterable[LoadedImage | str]) -> pd.DataFrame:
        rows, images, targets = [], [], []
        for (path, _), result in zip(chunk, loaded):
            row = {"path": path, "probability": np.nan, "label": "", "error": "", "warning": ""}
            if isinstance(result, str):
                row["error"] = result
            else:
                row["warning"] = WARNING_SEPARATOR.join(result.warnings)
                images.append(result.array)
                targets.append(row)
            rows.append(row)
        if images:
            for row, p in zip(targets, self.probabilities(np.stack(images))):
                row["probability"] = float(p)
                row["label"] = CLASS_NAMES[int(p >= self.threshold)]
        return pd.DataFrame(rows, columns=COLUMNS)


def load(run_dir: str | Path) -> Predictor:
    return Predictor.from_run(run_dir)
