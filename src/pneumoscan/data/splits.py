"""Validation split carved out of train: grouped by patient, stratified by class, seeded."""
from __future__ import annotations

import numpy as np
import pandas as pd


def grouped_holdout(labels, groups, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the rows to hold out: ``fraction`` of the images of each class.

    Every row of a patient lands on the same side. Within each class (a patient's class is
    the majority label of their images), patients are taken in a seeded random order until
    the held-out image count is as close to ``fraction`` of that class as whole patients
    allow, so each class is off by less than one patient's images. Same inputs and seed
    give the same mask.
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    if len(labels) != len(groups):
        raise ValueError("labels and groups must have the same length")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the held-out fraction must be between 0 and 1, not {fraction}")
    table = pd.DataFrame({"group": groups, "label": labels})
    patients = table.groupby("group", sort=True)["label"].agg(images="size", label=lambda y: int(round(y.mean())))
    if patients["label"].nunique() < 2 or (patients["label"].value_counts() < 2).any():
        raise ValueError(f"cannot hold out {fraction:.0%} by patient: each class needs at least 2 patients "
                         f"({len(patients)} patients, {table['label'].nunique()} classes)")
    rng = np.random.default_rng(seed)
    held: list = []
    for _, part in patients.groupby("label", sort=True):
        order = rng.permutation(len(part))
        names, sizes = part.index.to_numpy()[order], part["images"].to_numpy()[order]
        reached = np.concatenate([[0], np.cumsum(sizes)])
        count = int(np.argmin(np.abs(reached - fraction * sizes.sum())))
        held.extend(names[:min(max(count, 1), len(part) - 1)])  # at least one patient on each side
    return np.isin(groups, np.asarray(held, dtype=groups.dtype))
