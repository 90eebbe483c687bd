"""Decision thresholds, chosen on the validation split only.

Default rule, ``sensitivity:0.95``: the highest threshold whose validation sensitivity
is at least 95%. The reasons, fixed before any test-split result was looked at:
- pneumoscan is a screening aid, so the operating point is set by a sensitivity target;
- among thresholds that meet it, the highest gives the most specificity, and specificity
  is what suffers under dataset shift: the validation split carved from train is much
  easier than the official test, whose NORMAL images are the hard part, so a threshold
  that merely maximises a validation statistic (Youden's J) tends to sit too low.
Other rules are reported beside it (``alternatives`` in metrics.json) for comparison.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_curve

RULES = ("sensitivity:<target>", "youden", "balanced_accuracy", "fixed:<value>")


def choose_threshold(y_true, prob, rule: str) -> float:
    y = np.asarray(y_true).astype(int)
    p = np.asarray(prob, dtype=float)
    name, _, arg = rule.partition(":")
    if name == "fixed":
        return _parse(arg, rule)
    if not 0 < int(y.sum()) < len(y):
        raise ValueError("threshold selection needs both classes in the validation split")
    if name == "sensitivity":
        target = _parse(arg, rule)
        positives = np.sort(p[y == 1])
        # Highest t with mean(positives >= t) >= target: keep ceil(target * n) positives above.
        keep = int(np.ceil(target * len(positives) - 1e-9))
        return float(positives[len(positives) - keep]) if keep > 0 else 1.0
    if name in ("youden", "balanced_accuracy"):
        # Both maximise TPR - FPR; they differ only in how ties are broken (see below).
        fpr, tpr, thr = roc_curve(y, p)
        j = tpr - fpr
        best = np.flatnonzero(np.isclose(j, j.max()))
        pick = best[0] if name == "youden" else best[len(best) // 2]
        return float(min(thr[pick], 1.0))
    raise ValueError(f"unknown threshold rule {rule!r}; use one of {', '.join(RULES)}")


def _parse(arg: str, rule: str) -> float:
    try:
        value = float(arg)
    except ValueError:
        raise ValueError(f"threshold rule {rule!r} needs a number after ':'") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"threshold rule {rule!r}: value must be within [0, 1]")
    return value


ALTERNATIVES = ("fixed:0.5", "youden", "sensitivity:0.95", "sensitivity:0.98")
