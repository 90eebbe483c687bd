"""Binary classification metrics with 95% bootstrap confidence intervals.

Pneumonia is the positive class: recall is sensitivity, specificity is the recall of
NORMAL. ``confusion_matrix`` is [[TN, FP], [FN, TP]] (rows: actual NORMAL, PNEUMONIA).
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

CI_METRICS = ("accuracy", "sensitivity", "specificity", "roc_auc")


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else float("nan")


def _both_classes(y: np.ndarray) -> bool:
    return 0 < int(y.sum()) < len(y)


def classification_metrics(y_true, prob, threshold: float) -> dict:
    """Every metric of one split at one threshold (probability >= threshold is PNEUMONIA)."""
    y = np.asarray(y_true).astype(int)
    p = np.asarray(prob, dtype=float)
    pred = (p >= threshold).astype(int)
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    precision, recall, specificity = _ratio(tp, tp + fp), _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    return {
        "n": int(len(y)),
        "threshold": float(threshold),
        "accuracy": _ratio(tp + tn, len(y)),
        "precision": precision,
        "recall": recall,
        "sensitivity": recall,
        "specificity": specificity,
        "f1": _ratio(2 * precision * recall, precision + recall) if tp else 0.0,
        "balanced_accuracy": (recall + specificity) / 2,
        "roc_auc": float(roc_auc_score(y, p)) if _both_classes(y) else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if _both_classes(y) else float("nan"),
        "confusion_matrix": [[tn, fp], [fn, tp]],
    }


def accuracy_ceiling(y_true, prob) -> dict:
    """The best accuracy any threshold gives on this split, and that threshold.

    A ceiling, not a result: the threshold is chosen on the very labels it is scored on. Set
    beside the accuracy at the validation-chosen threshold, it shows how much of an error
    rate is the ranking (ROC-AUC) and how much the threshold.
    """
    y = np.asarray(y_true).astype(int)
    p = np.asarray(prob, dtype=float)
    if not _both_classes(y):
        return {"accuracy": float("nan"), "threshold": float("nan")}
    fpr, tpr, thresholds = roc_curve(y, p)
    positives, negatives = int(y.sum()), int(len(y) - y.sum())
    accuracy = (tpr * positives + (1 - fpr) * negatives) / len(y)
    best = int(np.argmax(accuracy))
    return {"accuracy": float(accuracy[best]), "threshold": float(min(thresholds[best], 1.0))}


def bootstrap_ci(y_true, prob, threshold: float, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile bootstrap intervals for accuracy, sensitivity, specificity and ROC-AUC.

    Resamples are stratified by class, so every resample has both classes and the
    class mix of the split; that keeps sensitivity and specificity defined.
    """
    y = np.asarray(y_true).astype(int)
    p = np.asarray(prob, dtype=float)
    if not _both_classes(y) or n_boot < 1:
        return {m: [float("nan"), float("nan")] for m in CI_METRICS}
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    stats = {m: np.empty(n_boot) for m in CI_METRICS}
    for b in range(n_boot):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        yb, pb = y[idx], p[idx]
        pred = pb >= threshold
        stats["accuracy"][b] = np.mean(pred == yb)
        stats["sensitivity"][b] = np.mean(pred[yb == 1])
        stats["specificity"][b] = np.mean(~pred[yb == 0])
        stats["roc_auc"][b] = roc_auc_score(yb, pb)
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    return {m: [float(np.percentile(v, lo)), float(np.percentile(v, hi))] for m, v in stats.items()}
