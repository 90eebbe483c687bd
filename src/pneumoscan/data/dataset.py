"""From a data source to the arrays a run trains and evaluates on.

Splits (column ``split`` of ``splits.csv``):
- ``train``: the source's train split minus the carved validation patients.
- ``val``: carved out of train, grouped by patient and stratified by class. Every choice
  (best epoch, threshold, temperature) is made here.
- ``test``: the source's official test split, used for final reporting only.
- ``kaggle_val``: Kermany's own 16-image val folder. Too small to choose anything with,
  so it is only evaluated and reported, for information.
MedMNIST ships an official (image-level) val split, which is used as ``val`` as is.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import DataConfig
from ..options import SPLITS
from .cache import load_collection
from .sources import Collection, read_source
from .splits import grouped_holdout


@dataclass
class PreparedData:
    collection: Collection
    images: dict[str, np.ndarray]  # split -> (N, S, S) uint8
    labels: dict[str, np.ndarray]  # split -> (N,) int 0/1
    splits: pd.DataFrame  # path, label, split, patient_id

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            s: {"NORMAL": int((y == 0).sum()), "PNEUMONIA": int((y == 1).sum())}
            for s, y in self.labels.items()
        }


def assign_splits(collection: Collection, cfg: DataConfig) -> pd.DataFrame:
    """The source's splits plus a patient-grouped validation split carved from train."""
    recs = collection.records.copy()
    if collection.kind == "kermany":
        recs.loc[recs["split"] == "val", "split"] = "kaggle_val"
    train = recs["split"] == "train"
    if "val" not in set(recs["split"]):
        held = grouped_holdout(recs.loc[train, "label"], recs.loc[train, "patient_id"], cfg.val_fraction, cfg.split_seed)
        recs.loc[recs.index[train][held], "split"] = "val"
    if "test" not in set(recs["split"]):
        # A user's CSV without a test split: hold out patients for final reporting.
        train = recs["split"] == "train"
        held = grouped_holdout(recs.loc[train, "label"], recs.loc[train, "patient_id"], 0.15, cfg.split_seed + 1)
        recs.loc[recs.index[train][held], "split"] = "test"
    return recs


def subsample(recs: pd.DataFrame, per_class: int, seed: int) -> pd.DataFrame:
    """At most ``per_class`` images of each class in each split (seeded), for quick runs."""
    parts = [
        group.sample(n=min(per_class, len(group)), random_state=seed)
        for _, group in recs.groupby(["split", "label"], sort=True)
    ]
    return pd.concat(parts).sort_index()


def prepare(cfg: DataConfig, path: str | Path, use_cache: bool = True) -> PreparedData:
    collection = read_source(path, cfg.source)
    recs = assign_splits(collection, cfg)
    if cfg.max_per_class:
        recs = subsample(recs, cfg.max_per_class, cfg.split_seed)
    collection.records = recs.reset_index(drop=True)
    images = load_collection(collection, cfg.image_size, use_cache=use_cache)
    recs = collection.records
    out_images, out_labels = {}, {}
    for split in SPLITS:
        mask = (recs["split"] == split).to_numpy()
        if mask.any():
            out_images[split] = images[mask]
            out_labels[split] = recs.loc[mask, "label"].to_numpy(dtype=np.int64)
    splits = recs[["path", "label", "split", "patient_id"]]
    return PreparedData(collection, out_images, out_labels, splits)
