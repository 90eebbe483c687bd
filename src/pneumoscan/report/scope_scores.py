"""The out-of-scope score's distribution: validation, test, and any extra folder a user scores.

``score_folders`` scores the images of extra folders (say, a new hospital's X-rays) with the
run's model and saved scope, and keeps them in ``RUN/scope_extra.csv`` so every later report
shows them beside validation and test.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from ..data.cache import load_images
from ..data.inputs import iter_inputs
from ..errors import RunError
from ..paths import atomic_write
from ..runs import Run

EXTRA_COLUMNS = ("group", "path", "ood_score")


def run_scope(run: Run):
    from ..evaluation.scope import Scope

    if not run.scope_file.is_file():
        raise RunError(f"{run.scope_file}: not found; run `pneumoscan evaluate {run.root}` to fit the scope")
    return Scope.load(run.scope_file)


def score_folders(run_dir: str | Path, folders: Iterable[str | Path]) -> pd.DataFrame:
    """Score every image under each folder; rows (group = folder name, path, ood_score) are
    added to ``RUN/scope_extra.csv`` (a folder scored again replaces its rows). Unreadable
    images are named in a warning and left out; the others are still scored."""
    from ..models.features import extract_features
    from ..models.predict import load_run_model

    run = Run(Path(run_dir))
    size = run.config().data.image_size
    scope, model = run_scope(run), load_run_model(run)
    tables = []
    for folder in map(Path, folders):
        paths = []
        for path, error in iter_inputs([folder]):
            if error:
                raise RunError(f"{path}: {error}")
            paths.append(path)
        images, errors = load_images(paths, size)
        for index, problem in errors:
            print(f"pneumoscan: warning: {paths[index]}: {problem}; not scored", file=sys.stderr)
        failed = {i for i, _ in errors}
        kept = [p for i, p in enumerate(paths) if i not in failed]
        scores = scope.score(extract_features(model, images)) if len(images) else np.zeros(0)
        tables.append(pd.DataFrame({"group": folder.name or str(folder), "path": kept, "ood_score": scores}))
    new = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=EXTRA_COLUMNS)
    old = read_extra_scores(run)
    table = pd.concat([old[~old["group"].isin(set(new["group"]))], new], ignore_index=True)
    atomic_write(run.scope_extra_file, lambda tmp: table.to_csv(tmp, index=False))
    return new


def read_extra_scores(run: Run) -> pd.DataFrame:
    if not run.scope_extra_file.is_file():
        return pd.DataFrame(columns=EXTRA_COLUMNS)
    table = pd.read_csv(run.scope_extra_file)
    if list(table.columns) != list(EXTRA_COLUMNS):
        raise RunError(f"{run.scope_extra_file}: expected columns {', '.join(EXTRA_COLUMNS)}")
    return table


def plot_scope_scores(groups: Mapping[str, np.ndarray], threshold: float, out: str | Path) -> Path:
    """One histogram per group on a shared log-scaled axis, and the threshold line."""
    from .plots import _new_figure, _save, _styled

    def draw():
        fig = _new_figure(7.5, 3.6)
        ax = fig.add_subplot()
        values = np.concatenate([np.asarray(s, dtype=float) for s in groups.values()])
        low, high = max(values.min(), 1e-3), max(values.max(), threshold * 1.5)
        bins = np.geomspace(low, high, 40)
        for name, scores in groups.items():
            rate = np.mean(np.asarray(scores) > threshold)
            ax.hist(np.clip(scores, low, high), bins=bins, density=True, histtype="stepfilled", alpha=0.35,
                    label=f"{name} (n={len(scores)}, {rate:.0%} flagged)")
        ax.axvline(threshold, color="#cf222e", linestyle="--", label=f"threshold {threshold:.2f}")
        ax.set(xscale="log", xlabel="out-of-scope score (log scale)", ylabel="density",
               title="Out-of-scope score: above the threshold, an image is unlike the training data")
        ax.legend(fontsize=7)
        return fig
    return _save(_styled(draw), out)
