"""The few images a report shows, loaded exactly as the model saw them.

``predictions.csv`` names images by path; they are read by :func:`pneumoscan.data.cache.load_images`
(MedMNIST rows such as ``pneumoniamnist.npz:test:12`` from the run's ``.npz``). An image that
cannot be read is left out with a warning, and the rest are still returned.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..config import Config
from ..data.cache import load_images
from ..data.sources import parse_medmnist_row, read_source
from ..errors import DataSourceError


def _medmnist_arrays(cfg: Config) -> dict[str, np.ndarray] | None:
    if not cfg.data.path:
        return None
    try:
        collection = read_source(cfg.data.path, cfg.data.source)
    except (DataSourceError, OSError):
        return None
    return collection.arrays if collection.kind == "medmnist" else None


def images_for_report(paths: list[str], cfg: Config) -> tuple[np.ndarray, list[int]]:
    """(N, S, S) uint8 images for the readable ``paths``, and their indices in ``paths``."""
    needs_arrays = any(not Path(p).exists() and parse_medmnist_row(p) for p in paths)
    images, errors = load_images(paths, cfg.data.image_size, _medmnist_arrays(cfg) if needs_arrays else None)
    for index, problem in errors:
        print(f"pneumoscan: warning: {paths[index]}: {problem}; left out of the report's images", file=sys.stderr)
    failed = {index for index, _ in errors}
    return images, [i for i in range(len(paths)) if i not in failed]
