"""Validation split carved out of train: grouped by patient, stratified by class, seeded."""
from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold


def grouped_holdout(labels, groups, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the rows to hold out (about ``fraction`` of them).

    Every row of a patient lands on the same side, and each side keeps the class ratio
    as closely as whole patients allow. Same inputs and seed give the same mask.
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    if len(labels) != len(groups):
        raise ValueError("labels and groups must have the same length")
    n_groups = len(np.unique(groups))
    n_splits = int(round(1.0 / fraction))
    if n_groups < n_splits or len(np.unique(labels)) < 2:
        raise ValueError(
            f"cannot hold out {fraction:.0%} by patient: {n_groups} patients, "
            f"{len(np.unique(labels))} classes"
        )
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, held = next(folds.split(np.zeros(len(labels)), labels, groups))
    mask = np.zeros(len(labels), dtype=bool)
    mask[held] = True
    return mask
