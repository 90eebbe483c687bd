"""Images of a data set as arrays, decoded once: :func:`load_images` reads any list of image
paths (files, or MedMNIST rows) through the one loader, and :func:`load_collection` caches
a whole data set's pixels on disk.

The cache key covers the source files (path, size, mtime), the image size and the
preprocessing version, so a changed file or setting never reuses stale pixels.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import ImageReadError
from ..imaging.loader import PREPROCESS_VERSION, load_image, resize_square
from ..paths import atomic_write_npz, cache_dir
from .sources import Collection, parse_medmnist_row


def load_images(paths: Sequence[str], size: int, medmnist: Mapping[str, np.ndarray] | None = None,
                threads: int | None = None) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """(N, size, size) uint8 pixels of the readable ``paths``, in order, and (index, problem)
    for each path that could not be read.

    A MedMNIST row id (``pneumoniamnist.npz:test:12``) is read from ``medmnist`` (split ->
    images); every file goes through :func:`pneumoscan.imaging.load_image`.
    """
    out = np.zeros((len(paths), size, size), dtype=np.uint8)
    errors: list[tuple[int, str]] = []

    def work(i: int) -> None:
        try:
            out[i] = _pixels(paths[i], size, medmnist)
        except ImageReadError as exc:
            errors.append((i, exc.problem))

    # Pillow releases the GIL while decoding, so threads use every core.
    with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 2) as pool:
        list(pool.map(work, range(len(paths))))
    errors.sort()
    keep = np.ones(len(paths), dtype=bool)
    keep[[i for i, _ in errors]] = False
    return out[keep], errors


def _pixels(path: str, size: int, medmnist: Mapping[str, np.ndarray] | None) -> np.ndarray:
    row = None if Path(path).exists() else parse_medmnist_row(path)
    if row is None:
        return load_image(path, size).array
    split, index = row
    if not medmnist or split not in medmnist or index >= len(medmnist[split]):
        raise ImageReadError(path, "MedMNIST row not found in the data set's .npz")
    return resize_square(medmnist[split][index], size)


def _fingerprint(collection: Collection, size: int) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([collection.kind, size, PREPROCESS_VERSION]).encode())
    if collection.kind == "medmnist":
        st = Path(collection.root).stat()
        h.update(f"{collection.root}|{st.st_size}|{st.st_mtime_ns}".encode())
    for path in collection.records["path"]:
        if collection.kind != "medmnist":
            st = os.stat(path)
            h.update(f"{path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        else:
            h.update(f"{path}\n".encode())
    return h.hexdigest()[:24]


def load_collection(collection: Collection, size: int, use_cache: bool = True) -> np.ndarray:
    """(N, size, size) uint8 images for ``collection.records``, in row order.

    Files that fail to decode are dropped from ``collection.records`` (in place) and
    listed in ``collection.skipped`` with the reason; the rest are returned.
    """
    paths = collection.records["path"].tolist()
    if collection.kind == "medmnist":  # already arrays in memory: nothing to cache
        images, errors = load_images(paths, size, collection.arrays, threads=1)
        _drop(collection, errors)
        return images
    file = cache_dir() / "images" / f"{_fingerprint(collection, size)}.npz"
    if use_cache and file.is_file():
        try:
            with np.load(file) as cached:
                images, bad = cached["images"], cached["bad"]
            _drop(collection, [(int(i), str(r)) for i, r in bad])
            return images
        except (OSError, ValueError, KeyError):
            file.unlink(missing_ok=True)  # a damaged cache is rebuilt, never trusted
    images, errors = load_images(paths, size)
    if use_cache:
        bad = np.array(errors, dtype=object).reshape(-1, 2).astype(str)
        atomic_write_npz(file, images=images, bad=bad)
    _drop(collection, errors)
    return images


def _drop(collection: Collection, errors: list[tuple[int, str]]) -> None:
    if not errors:
        return
    recs = collection.records
    for i, reason in errors:
        collection.skipped.append((recs["path"].iloc[i], reason))
    collection.records = recs.drop(recs.index[[i for i, _ in errors]]).reset_index(drop=True)
