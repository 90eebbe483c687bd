"""A new site's small labelled set, for ``pneumoscan adapt``: read, checked, hashed and split by patient.

The set is a CSV (``path,label[,patient_id]``) or a folder holding ``NORMAL/`` and
``PNEUMONIA/``. Everything is checked before anything is written: a set that cannot give
honest figures (one class, too few images or patients, unreadable files) is refused with
every problem named.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataSourceError
from ..options import CLASS_NAMES
from .cache import load_images
from .sources import is_benign_skip, read_source
from .splits import grouped_holdout

MIN_IMAGES = 50  # below this, a threshold and its held-out figures are mostly noise
MIN_PER_CLASS = 10
MIN_PATIENTS_PER_CLASS = 4  # two on each side of the patient-grouped split
SHOWN_PROBLEMS = 10


@dataclass
class SiteData:
    records: pd.DataFrame  # path, label, patient_id, part ("adapt" or "eval"; "fold1"/"fold2" with fine-tuning)
    images: np.ndarray  # (N, S, S) uint8, in records order
    source: str
    sha256: str
    skipped: list[tuple[str, str]]

    def part(self, *names: str) -> tuple[np.ndarray, np.ndarray]:
        mask = self.records["part"].isin(names).to_numpy()
        return self.images[mask], self.records.loc[mask, "label"].to_numpy(dtype=np.int64)

    def summary(self) -> dict:
        parts = {name: {"images": int(len(p)), "patients": int(p["patient_id"].nunique()),
                        **{c: int((p["label"] == i).sum()) for i, c in enumerate(CLASS_NAMES)}}
                 for name, p in self.records.groupby("part", sort=False)}
        return {"source": self.source, "sha256": self.sha256, "images": int(len(self.records)),
                "patients": int(self.records["patient_id"].nunique()), "parts": parts,
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped]}


def _problems(title: str, items: list[tuple[str, str]]) -> str:
    shown = "\n".join(f"  {path}: {reason}" for path, reason in items[:SHOWN_PROBLEMS])
    more = f"\n  ... and {len(items) - SHOWN_PROBLEMS} more" if len(items) > SHOWN_PROBLEMS else ""
    return f"{title}:\n{shown}{more}"


def content_sha256(records: pd.DataFrame) -> str:
    """One hash of the site set: every file's bytes and label, in a fixed order (not its paths)."""
    h = hashlib.sha256()
    for path, label in sorted(zip(records["path"], records["label"]), key=lambda r: str(r[0])):
        with open(path, "rb") as fh:
            h.update(hashlib.file_digest(fh, "sha256").digest())
        h.update(str(int(label)).encode())
    return h.hexdigest()


def read_site(path: str | Path, image_size: int, skip_unreadable: bool = False) -> SiteData:
    """The site's images as the model sees them, checked. Unreadable files are an error naming
    each of them, unless ``skip_unreadable``: then they are left out and listed in ``skipped``."""
    path = Path(path).expanduser()
    collection = read_source(path)
    if collection.kind not in ("csv", "folders"):
        raise DataSourceError(f"{path}: a site set is a CSV (path,label[,patient_id]) or a folder with NORMAL/ "
                              f"and PNEUMONIA/, not a {collection.kind} data set")
    records = collection.records[["path", "label", "patient_id"]].reset_index(drop=True)
    bad = [(p, r) for p, r in collection.skipped if not is_benign_skip(r)]
    images, errors = load_images(records["path"].tolist(), image_size)
    bad += [(records["path"].iloc[i], problem) for i, problem in errors]
    if bad and not skip_unreadable:
        raise DataSourceError(_problems(f"{path}: {len(bad)} site image(s) cannot be used (fix or remove them, or "
                                        "pass --skip-unreadable to leave them out)", bad))
    records = records.drop(index=[i for i, _ in errors]).reset_index(drop=True)
    check_site(path, records)
    return SiteData(records.assign(part="adapt"), images, str(path), content_sha256(records), bad)


def check_site(path: Path, records: pd.DataFrame) -> None:
    per_class = records.groupby("label").agg(images=("path", "size"), patients=("patient_id", "nunique"))
    problems = []
    missing = [CLASS_NAMES[c] for c in range(len(CLASS_NAMES)) if c not in per_class.index]
    if missing:
        problems.append(f"no {' or '.join(missing)} images: recalibration needs both classes")
    if len(records) < MIN_IMAGES:
        problems.append(f"{len(records)} usable images; at least {MIN_IMAGES} are needed")
    for label, row in per_class.iterrows():
        name = CLASS_NAMES[int(label)]
        if row["images"] < MIN_PER_CLASS:
            problems.append(f"{row['images']} {name} images; at least {MIN_PER_CLASS} are needed")
        if row["patients"] < MIN_PATIENTS_PER_CLASS:
            problems.append(f"{row['patients']} {name} patients; at least {MIN_PATIENTS_PER_CLASS} are needed to "
                            "hold some out by patient")
    if problems:
        raise DataSourceError(f"{path}: not enough site data for adapt: " + "; ".join(problems))


def split_site(site: SiteData, holdout: float, seed: int, finetune: bool) -> SiteData:
    """Patients held out to evaluate (``eval``); the rest adapt. With fine-tuning the adapting
    patients are split again into two folds (``fold1``, ``fold2``) for cross-fitting
    (:mod:`pneumoscan.training.adapt`)."""
    records = site.records.copy()
    labels, patients = records["label"].to_numpy(), records["patient_id"].to_numpy()
    try:
        held = grouped_holdout(labels, patients, holdout, seed)
        records["part"] = np.where(held, "eval", "adapt")
        if finetune:
            rest = ~held
            first = np.zeros(len(records), dtype=bool)
            first[rest] = grouped_holdout(labels[rest], patients[rest], 0.5, seed + 1)
            records.loc[first, "part"] = "fold1"
            records.loc[rest & ~first, "part"] = "fold2"
    except ValueError as exc:
        raise DataSourceError(f"{site.source}: {exc}") from None
    return SiteData(records, site.images, site.source, site.sha256, site.skipped)
