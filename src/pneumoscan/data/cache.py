"""Decoded-image cache: every image is decoded and resized once, then read as one array.

The key covers the source files (path, size, mtime), the image size and the
preprocessing version, so a changed file or setting never reuses stale pixels.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..paths import atomic_write, cache_dir
from .preprocess import PREPROCESS_VERSION, ImageReadError, load_preprocessed, preprocess_array
from .sources import Collection, parse_medmnist_row


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


def _decode_all(paths: list[str], size: int) -> tuple[np.ndarray, list[tuple[int, str]]]:
    out = np.zeros((len(paths), size, size), dtype=np.uint8)
    errors: list[tuple[int, str]] = []

    def work(i: int) -> None:
        try:
            out[i] = load_preprocessed(paths[i], size)
        except ImageReadError as exc:
            errors.append((i, exc.problem))

    # Pillow releases the GIL while decoding, so threads use every core.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(work, range(len(paths))))
    return out, sorted(errors)


def load_images(collection: Collection, size: int, use_cache: bool = True) -> np.ndarray:
    """(N, size, size) uint8 images for ``collection.records``, in row order.

    Files that fail to decode are dropped from ``collection.records`` (in place) and
    listed in ``collection.skipped`` with the reason; the rest are returned.
    """
    if collection.kind == "medmnist":
        recs = collection.records
        images = np.stack([
            preprocess_array(collection.arrays[split][index], size)
            for split, index in map(parse_medmnist_row, recs["path"])
        ]) if len(recs) else np.zeros((0, size, size), np.uint8)
        return images
    key = _fingerprint(collection, size)
    file = cache_dir() / "images" / f"{key}.npz"
    if use_cache and file.is_file():
        try:
            with np.load(file) as cached:
                images, bad = cached["images"], cached["bad"]
            _drop(collection, [(int(i), str(r)) for i, r in bad])
            return images
        except (OSError, ValueError, KeyError):
            file.unlink(missing_ok=True)  # a damaged cache is rebuilt, never trusted
    paths = collection.records["path"].tolist()
    images, errors = _decode_all(paths, size)
    keep = np.ones(len(paths), dtype=bool)
    keep[[i for i, _ in errors]] = False
    images = images[keep]
    if use_cache:
        bad = np.array([(i, r) for i, r in errors], dtype=object).reshape(-1, 2).astype(str)
        atomic_write(file, lambda tmp: _save(tmp, images, bad))
    _drop(collection, errors)
    return images


def _save(tmp: Path, images: np.ndarray, bad: np.ndarray) -> None:
    with open(tmp, "wb") as fh:
        np.savez(fh, images=images, bad=bad)


def _drop(collection: Collection, errors: list[tuple[int, str]]) -> None:
    if not errors:
        return
    recs = collection.records
    for i, reason in errors:
        collection.skipped.append((recs["path"].iloc[i], reason))
    collection.records = recs.drop(recs.index[[i for i, _ in errors]]).reset_index(drop=True)
