"""Out-of-scope score: how unlike the training X-rays an image is, from the model's own features.

Class-conditional Mahalanobis distance (Lee et al., 2018) at every resolution level of the
network (:mod:`pneumoscan.models.features`): per level, the class means of the training
features and one shared Ledoit-Wolf covariance; an image's distance at a level is its
distance to the nearest class mean, divided by the median of that distance on validation so
that levels weigh alike; the score is the mean over levels. The threshold is the
``quantile`` of the validation scores (0.95: about 5% of validation images flagged).

Orientation: an upside-down or vertically flipped X-ray keeps most of its texture and
statistics, so its distance alone flags only some of them. The training images turned that
way give one more mean per level; an image whose mean-level distance to those (``wrong``) is
below its distance to the upright class means gets ``ORIENTATION_WEIGHT`` times the
difference added to its score, which puts it far above the threshold. Upright images, nearer
the upright means, keep their plain distance.

Fitted at the end of training on train (statistics) and validation (scales, threshold),
saved in the run (``scope.npz``), and compiled into the exported ONNX model as a second
output, so an exported model keeps its scope.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ..paths import atomic_write_npz

DEFAULT_QUANTILE = 0.95
ORIENTATION_WEIGHT = 10.0
ORIENTATION_IMAGES = 500  # training images turned over for the wrong-orientation means


@dataclass
class Scope:
    """Per level: class means (C, D) and the shared precision matrix (D, D); the validation
    median distance per level; the threshold on the score."""

    means: list[np.ndarray]
    precisions: list[np.ndarray]
    scales: np.ndarray
    threshold: float
    quantile: float
    wrong: list[np.ndarray] | None = None  # per level, (K, D) means of wrongly oriented training images

    @cached_property  # the precisions never change after fitting; every score needs these
    def whiteners(self) -> list[np.ndarray]:
        """Per level, L with precision = L L^T: the distance is then |(f - m) L|^2, a sum of
        squares, which float32 graphs (Keras, ONNX Runtime) compute alike; the quadratic form
        (f - m) P (f - m) cancels badly in float32 when P is ill-conditioned."""
        return [np.linalg.cholesky(p) for p in self.precisions]

    def _nearest(self, features: list[np.ndarray], means: list[np.ndarray]) -> np.ndarray:
        """(N, L) squared Mahalanobis distance to the nearest of ``means`` (per level), over the scales."""
        out = []
        for f, m, whitener in zip(features, means, self.whiteners):
            f = np.asarray(f, dtype=np.float64)
            out.append(np.min([np.sum(((f - mean) @ whitener) ** 2, axis=1) for mean in m], axis=0))
        return np.stack(out, axis=1) / self.scales

    def distances(self, features: list[np.ndarray]) -> np.ndarray:
        """(N, L) squared Mahalanobis distance to the nearest class mean, per level."""
        return self._nearest(features, self.means) * self.scales

    def combine(self, upright: np.ndarray, features: list[np.ndarray]) -> np.ndarray:
        """The score from the (N,) mean scaled distance to the upright means, plus the orientation term."""
        if not self.wrong:
            return upright
        turned = self._nearest(features, self.wrong).mean(axis=1)
        return upright + ORIENTATION_WEIGHT * np.maximum(upright - turned, 0.0)

    def score(self, features: list[np.ndarray]) -> np.ndarray:
        """The out-of-scope score of each image: higher is further from the training data."""
        return self.combine(self._nearest(features, self.means).mean(axis=1), features)

    def with_site(self, features: list[np.ndarray], labels: np.ndarray) -> tuple["Scope", np.ndarray]:
        """This scope widened to a new site: the site's class means join the training ones (the
        covariance and scales stay), and the threshold rises, if need be, to the ``quantile`` of
        the site images' leave-one-out scores (each scored with its own class mean computed
        without it, as an unseen image of the site would be). Returns the scope and those scores."""
        labels = np.asarray(labels)
        classes = np.unique(labels)
        site_means = [np.stack([np.asarray(f, np.float64)[labels == c].mean(axis=0) for c in classes])
                      for f in features]
        widened = Scope([np.concatenate([m, s]) for m, s in zip(self.means, site_means)], self.precisions,
                        self.scales, self.threshold, self.quantile, self.wrong)
        # Nearest of the training means, or of the site's means with each image's own class left out.
        per_level = self._nearest(features, self.means)
        for level, (f, site, whitener, scale) in enumerate(zip(features, site_means, self.whiteners, self.scales)):
            f = np.asarray(f, np.float64)
            for k, c in enumerate(classes):
                own, n = labels == c, int(np.sum(labels == c))
                # Leave-one-out mean of the image's own class: (n m - f) / (n - 1).
                loo = np.where(own[:, None], (n * site[k] - f) / max(n - 1, 1), site[k])
                per_level[:, level] = np.minimum(per_level[:, level], np.sum(((f - loo) @ whitener) ** 2, axis=1) / scale)
        scores = widened.combine(per_level.mean(axis=1), features)
        widened.threshold = max(self.threshold, float(np.quantile(scores, self.quantile)))
        return widened, scores

    def save(self, path: str | Path) -> Path:
        arrays = {"scales": self.scales, "threshold": np.float64(self.threshold),
                  "quantile": np.float64(self.quantile), "levels": np.int64(len(self.means))}
        for i, (m, p) in enumerate(zip(self.means, self.precisions)):
            arrays[f"means_{i}"], arrays[f"precision_{i}"] = m, p
        for i, w in enumerate(self.wrong or []):
            arrays[f"wrong_{i}"] = w
        return atomic_write_npz(path, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> "Scope":
        with np.load(path) as data:
            levels = int(data["levels"])
            # Scopes fitted before the orientation term have no wrong_* arrays: plain distances.
            wrong = [data[f"wrong_{i}"] for i in range(levels)] if "wrong_0" in data.files else None
            return cls([data[f"means_{i}"] for i in range(levels)], [data[f"precision_{i}"] for i in range(levels)],
                       data["scales"], float(data["threshold"]), float(data["quantile"]), wrong)


def fit_scope(train_features: list[np.ndarray], train_labels: np.ndarray, val_features: list[np.ndarray],
              quantile: float = DEFAULT_QUANTILE, wrong_features: list[list[np.ndarray]] | None = None) -> Scope:
    """Statistics on train, then scales and the threshold on validation. ``wrong_features``:
    per wrong orientation, the features of training images turned that way."""
    from sklearn.covariance import LedoitWolf

    labels = np.asarray(train_labels)
    classes = np.unique(labels)
    means, precisions = [], []
    for f in train_features:
        f = np.asarray(f, dtype=np.float64)
        class_means = np.stack([f[labels == c].mean(axis=0) for c in classes])
        centred = f - class_means[np.searchsorted(classes, labels)]
        precisions.append(LedoitWolf(assume_centered=True).fit(centred).precision_)
        means.append(class_means)
    wrong = None
    if wrong_features:
        wrong = [np.stack([np.asarray(turned[level], np.float64).mean(axis=0) for turned in wrong_features])
                 for level in range(len(means))]
    scope = Scope(means, precisions, np.ones(len(means)), 0.0, quantile, wrong)
    scope.scales = np.maximum(np.median(scope.distances(val_features), axis=0), 1e-12)
    scope.threshold = float(np.quantile(scope.score(val_features), quantile))
    return scope


def fit_model_scope(model, train_images: np.ndarray, train_labels: np.ndarray, features: dict[str, list[np.ndarray]],
                    quantile: float = DEFAULT_QUANTILE, max_train: int = 2000, seed: int = 0) -> tuple[Scope, dict]:
    """Fit the scope of ``model`` on its training images (at most ``max_train``, stratified and
    seeded) and the validation features (``features["val"]``, from
    :func:`pneumoscan.models.features.extract_outputs`); returns the scope and a summary for
    metrics.json (the share of each split in ``features`` flagged, and the score's quantiles)."""
    from ..models.features import extract_features

    rng = np.random.default_rng(seed)
    train_labels = np.asarray(train_labels)
    keep = np.sort(np.concatenate([
        rng.permutation(np.flatnonzero(train_labels == c))[: int(round(max_train * np.mean(train_labels == c)))]
        for c in np.unique(train_labels)]))
    turned = train_images[keep[rng.permutation(len(keep))[:ORIENTATION_IMAGES]]]
    wrong = [extract_features(model, images) for images in (turned[:, ::-1, ::-1], turned[:, ::-1, :])]
    scope = fit_scope(extract_features(model, train_images[keep]), train_labels[keep], features["val"], quantile, wrong)
    summary = {"method": "class-conditional Mahalanobis, Ledoit-Wolf, every resolution level; orientation term "
                         "(upside-down and top-to-bottom flipped training images)",
               "threshold": scope.threshold, "quantile": quantile, "fitted_on": {"statistics": "train", "threshold": "val"},
               "train_images": int(len(keep)),
               **flag_summary(scope, {split: scope.score(f) for split, f in features.items()})}
    return scope, summary


def flag_summary(scope: Scope, scores: dict[str, np.ndarray]) -> dict:
    """For metrics.json: the share of each split's images flagged, and the score's quantiles."""
    return {"flagged": {split: float(np.mean(s > scope.threshold)) for split, s in scores.items()},
            "score_quantiles": {split: {q: float(np.quantile(s, float(q))) for q in ("0.05", "0.5", "0.95")}
                                for split, s in scores.items()}}
