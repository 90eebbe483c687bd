"""Data sources: a Kaggle/Kermany folder, a MedMNIST ``.npz``, a CSV of the user's images, or
a folder holding ``NORMAL/`` and ``PNEUMONIA/``.

Each reader returns a :class:`Collection`: one row per image (``path, label, patient_id,
split``) and the list of files it skipped, with the reason for each. ``split`` is the
source's own split (``train``, ``val``, ``test``); the patient-grouped validation split
is carved later by :mod:`pneumoscan.data.dataset`.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataSourceError
from ..imaging.loader import IMAGE_EXTENSIONS
from ..options import CLASS_NAMES
from .patients import patient_ids

_LABELS = {"normal": 0, "0": 0, "pneumonia": 1, "1": 1}


@dataclass
class Collection:
    records: pd.DataFrame  # path, label (0 normal / 1 pneumonia), patient_id, split
    kind: str  # one of options.SOURCES but auto
    root: Path
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    arrays: dict[str, np.ndarray] | None = None  # medmnist: split -> images

    def summary(self) -> pd.DataFrame:
        """Images and patients per split and class."""
        df = self.records.assign(cls=self.records["label"].map(dict(enumerate(CLASS_NAMES))))
        table = df.groupby(["split", "cls"]).agg(images=("path", "size"), patients=("patient_id", "nunique"))
        return table.reset_index()


def parse_label(value, where: str) -> int:
    label = _LABELS.get(str(value).strip().lower())
    if label is None:
        raise DataSourceError(f"{where}: label {value!r} is not NORMAL/PNEUMONIA (or 0/1)")
    return label


# Files a folder data set leaves out on purpose: not problems with the data. Callers that
# treat skipped files as errors (a site set for adapt) tell these apart with ``is_benign_skip``.
HIDDEN_FILE = "hidden or macOS metadata file"
NOT_AN_IMAGE = "not an image file"


def is_benign_skip(reason: str) -> bool:
    return reason.startswith((HIDDEN_FILE, NOT_AN_IMAGE))


def class_images(folder: Path, skipped: list[tuple[str, str]]) -> list[str]:
    """The image files under one class folder, sorted; anything else goes to ``skipped`` with the reason."""
    found = []
    for file in sorted(folder.rglob("*")):
        if file.is_dir():
            continue
        if "__MACOSX" in file.parts or file.name.startswith("."):
            skipped.append((str(file), HIDDEN_FILE))
        elif file.suffix.lower() not in IMAGE_EXTENSIONS:
            skipped.append((str(file), f"{NOT_AN_IMAGE} ({file.suffix or 'no extension'})"))
        else:
            found.append(str(file))
    return found


# ---------------------------------------------------------------- Kermany folder
_KERMANY_NESTS = ("", "chest_xray", "chest_xray/chest_xray", "chest_xray_kermany_224")


def find_kermany_root(path: Path) -> Path | None:
    """The folder holding ``train/`` and ``test/``, allowing Kaggle's nested layouts."""
    for nest in _KERMANY_NESTS:
        candidate = path / nest if nest else path
        if (candidate / "train").is_dir() and (candidate / "test").is_dir():
            return candidate
    return None


def read_kermany(path: str | Path) -> Collection:
    path = Path(path)
    root = find_kermany_root(path)
    if root is None:
        raise DataSourceError(
            f"{path}: not a Kermany/Kaggle chest X-ray folder (expected train/ and test/ "
            "with NORMAL/ and PNEUMONIA/ inside, possibly under chest_xray/)"
        )
    rows, skipped = [], []
    for split in ("train", "val", "test"):
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        for class_dir in sorted(split_dir.iterdir()):
            if class_dir.name.startswith(".") or class_dir.name == "__MACOSX":
                skipped.append((str(class_dir), HIDDEN_FILE))
                continue
            if not class_dir.is_dir():
                skipped.append((str(class_dir), "not a class folder"))
                continue
            label = _LABELS.get(class_dir.name.lower())
            if label is None:
                skipped.append((str(class_dir), "unknown class folder (expected NORMAL or PNEUMONIA)"))
                continue
            rows += [(path, label, split) for path in class_images(class_dir, skipped)]
    if not rows:
        raise DataSourceError(f"{root}: no images found under train/, val/ or test/")
    records = pd.DataFrame(rows, columns=["path", "label", "split"])
    records.insert(2, "patient_id", patient_ids(records["path"]))
    return Collection(records, "kermany", root, skipped)


# ---------------------------------------------------------------- MedMNIST npz
def medmnist_row_id(npz: Path, split: str, index: int) -> str:
    """The ``path`` of a MedMNIST image in records and run files: ``<file>.npz:<split>:<index>``."""
    return f"{Path(npz).name}:{split}:{index}"


def parse_medmnist_row(path: str) -> tuple[str, int] | None:
    """(split, index) of a :func:`medmnist_row_id`, or None for any other path."""
    parts = str(path).rsplit(":", 2)
    if len(parts) != 3 or not parts[0].endswith(".npz") or not parts[2].isdigit():
        return None
    return parts[1], int(parts[2])


def read_medmnist(path: str | Path) -> Collection:
    path = Path(path)
    try:
        npz = np.load(path)
    except (OSError, ValueError) as exc:
        raise DataSourceError(f"{path}: not a readable .npz file ({exc})") from None
    arrays, rows = {}, []
    with npz:
        for split in ("train", "val", "test"):
            ki, kl = f"{split}_images", f"{split}_labels"
            if ki not in npz.files or kl not in npz.files:
                raise DataSourceError(f"{path}: missing {ki!r} or {kl!r} (MedMNIST keys expected)")
            images, labels = npz[ki], npz[kl].reshape(-1)
            if images.ndim == 4:  # MedMNIST+ colour layout; PneumoniaMNIST is grayscale
                images = images[..., 0]
            if images.ndim != 3 or len(images) != len(labels):
                raise DataSourceError(f"{path}: {ki} has shape {images.shape}, labels {labels.shape}")
            arrays[split] = np.ascontiguousarray(images.astype(np.uint8))
            # No patient ids in MedMNIST: each image is its own group.
            rows += [(medmnist_row_id(path, split, i), int(y), f"{split}:{i}", split) for i, y in enumerate(labels)]
    records = pd.DataFrame(rows, columns=["path", "label", "patient_id", "split"])
    return Collection(records, "medmnist", path, [], arrays)


# ---------------------------------------------------------------- CSV manifest
def read_csv_manifest(path: str | Path) -> Collection:
    """``path,label[,patient_id][,split]``; relative paths are relative to the CSV."""
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip().lower() for h in (reader.fieldnames or [])]
            table = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataSourceError(f"{path}: cannot read CSV ({exc})") from None
    if "path" not in header or "label" not in header:
        raise DataSourceError(f"{path}: CSV needs columns path,label (found {', '.join(header) or 'none'})")
    rows, skipped = [], []
    for n, raw in enumerate(table, start=2):
        row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k}
        image = Path(row["path"]).expanduser()
        if not image.is_absolute():
            image = path.parent / image
        try:
            label = parse_label(row["label"], f"{path}:{n}")
        except DataSourceError as exc:
            skipped.append((str(image), str(exc)))
            continue
        split = row.get("split", "").lower() or "train"
        if split not in ("train", "val", "test"):
            skipped.append((str(image), f"{path}:{n}: split {split!r} is not train, val or test"))
            continue
        if not image.is_file():
            skipped.append((str(image), f"{path}:{n}: file not found"))
            continue
        rows.append((str(image), label, row.get("patient_id", ""), split))
    if not rows:
        raise DataSourceError(f"{path}: no usable rows")
    records = pd.DataFrame(rows, columns=["path", "label", "patient_id", "split"])
    missing = records["patient_id"] == ""
    records.loc[missing, "patient_id"] = patient_ids(records.loc[missing, "path"])
    return Collection(records, "csv", path, skipped)


# ---------------------------------------------------------------- class folders
def class_folders(path: Path) -> dict[int, Path]:
    """{label: folder} for a folder holding NORMAL/ and PNEUMONIA/ (any case), else {}."""
    found = {}
    if path.is_dir():
        for child in path.iterdir():
            label = _LABELS.get(child.name.lower())
            if child.is_dir() and label is not None and not child.name.isdigit():
                found[label] = child
    return found if len(found) == len(CLASS_NAMES) else {}


def read_class_folders(path: str | Path) -> Collection:
    """``NORMAL/`` and ``PNEUMONIA/`` folders of images (searched recursively), one split (``train``)."""
    path = Path(path)
    folders = class_folders(path)
    if not folders:
        raise DataSourceError(f"{path}: expected NORMAL/ and PNEUMONIA/ folders inside")
    rows, skipped = [], []
    for label, folder in sorted(folders.items()):
        rows += [(path, label, "train") for path in class_images(folder, skipped)]
    if not rows:
        raise DataSourceError(f"{path}: no images in NORMAL/ or PNEUMONIA/")
    records = pd.DataFrame(rows, columns=["path", "label", "split"])
    records.insert(2, "patient_id", patient_ids(records["path"]))
    return Collection(records, "folders", path, skipped)


def _find_medmnist_npz(folder: Path) -> Path | None:
    """A pneumoniamnist*.npz in ``folder`` or one level below (the places data.locate accepts)."""
    found = sorted(folder.glob("pneumoniamnist*.npz")) or sorted(folder.glob("*/pneumoniamnist*.npz"))
    return found[0] if found else None


def read_source(path: str | Path, kind: str = "auto") -> Collection:
    """Open a data source; ``kind='auto'`` decides by what the path is."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataSourceError(f"{path}: data path does not exist")
    if kind == "auto":
        if path.is_dir():
            if find_kermany_root(path) is not None:
                kind = "kermany"
            elif class_folders(path):
                kind = "folders"
            elif npz := _find_medmnist_npz(path):
                path, kind = npz, "medmnist"
            else:
                raise DataSourceError(f"{path}: found no Kermany folder (train/, test/), no NORMAL/ and PNEUMONIA/ "
                                      "folders and no PneumoniaMNIST .npz")
        else:
            kind = {".npz": "medmnist", ".csv": "csv"}.get(path.suffix.lower(), "")
            if not kind:
                raise DataSourceError(f"{path}: expected a folder, a .npz or a .csv file")
    elif kind == "medmnist" and path.is_dir():
        candidates = sorted(path.rglob("pneumoniamnist*.npz"))
        if not candidates:
            raise DataSourceError(f"{path}: no pneumoniamnist*.npz inside")
        path = candidates[0]
    readers = {"kermany": read_kermany, "medmnist": read_medmnist, "csv": read_csv_manifest,
               "folders": read_class_folders}
    return readers[kind](path)
