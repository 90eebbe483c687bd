"""What the user points predict at (files, folders, globs) -> image paths, found lazily.

A folder of a million X-rays is walked one directory at a time, so prediction can start on
the first image at once and never holds more than one directory's names.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Iterable, Iterator

from ..imaging.loader import IMAGE_EXTENSIONS

_SKIPPED_FOLDERS = ("__MACOSX",)  # macOS archive debris, never images


def iter_inputs(inputs: Iterable[str | Path]) -> Iterator[tuple[str, str]]:
    """Files, folders (searched recursively for images) and globs -> (path, error), lazily.

    An input that matches nothing yields one entry with the problem in ``error``. A file
    named explicitly is passed on whatever its extension (the loader decides); a folder
    yields files ending in one of ``IMAGE_EXTENSIONS``.
    """
    for item in map(str, inputs):
        path = Path(item).expanduser()
        if path.is_dir():
            found = False
            for file in walk_images(path):
                found = True
                yield str(file), ""
            if not found:
                yield item, "folder holds no JPEG, PNG or DICOM (.dcm) images"
        elif path.exists():
            yield str(path), ""
        elif glob.has_magic(item):
            # Sorted for a stable order; a glob's matches are names only, never images.
            matches = [m for m in sorted(glob.glob(str(path), recursive=True)) if Path(m).is_file()]
            yield from ((m, "") for m in matches)
            if not matches:
                yield item, "pattern matches no files"
        else:
            yield item, "file not found"


def walk_images(root: Path) -> Iterator[Path]:
    """Image files under ``root`` in name order, depth first; hidden files and folders skipped."""
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and d not in _SKIPPED_FOLDERS)
        for name in sorted(files):
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                yield Path(folder) / name
