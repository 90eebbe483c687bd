"""The few images a report shows, loaded exactly as the model saw them.

``predictions.csv`` names images by path. Files go through the one preprocessing function;
MedMNIST rows (``pneumoniamnist.npz:test:12``) are read back from the run's ``.npz``.
An image that cannot be read is left out with a warning, and the rest are still returned.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..config import Config
from ..data.preprocess import ImageReadError, load_preprocessed, preprocess_array
from ..data.sources import DataSourceError, parse_medmnist_row, read_source


def _medmnist_arrays(cfg: Config) -> dict[str, np.ndarray] | None:
    if not cfg.data.path:
        return None
    try:
        collection = read_source(cfg.data.path, cfg.data.source)
    except (DataSourceError, OSError):
        return None
    return collection.arrays if collection.kind == "medmnist" else None


def load_images(paths: list[str], cfg: Config) -> tuple[np.ndarray, list[int]]:
    """(N, S, S) uint8 images for the readable ``paths``, and their indices in ``paths``."""
    size = cfg.data.image_size
    images, kept = [], []
    arrays = None
    for i, path in enumerate(paths):
        try:
            row = None if Path(path).exists() else parse_medmnist_row(path)
            if row is None:
                images.append(load_preprocessed(path, size))
            else:
                if arrays is None:
                    arrays = _medmnist_arrays(cfg) or {}
                split, index = row
                if split not in arrays or index >= len(arrays[split]):
                    raise ImageReadError(path, f"not found in the run's MedMNIST data at {cfg.data.path}")
                images.append(preprocess_array(arrays[split][index], size))
            kept.append(i)
        except ImageReadError as exc:
            print(f"pneumoscan: warning: {exc}; left out of the report's images", file=sys.stderr)
    stacked = np.stack(images) if images else np.zeros((0, size, size), np.uint8)
    return stacked, kept
