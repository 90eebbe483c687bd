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

from ..options import THRESHOLD_RULES_PLAIN, parse_threshold_rule


def choose_threshold(y_true, prob, rule: str) -> float:
    y = np.asarray(y_true).astype(int)
    p = np.asarray(prob, dtype=float)
    name, value = parse_threshold_rule(rule)
    if name == "fixed":
        return value
    if not 0 < int(y.sum()) < len(y):
        raise ValueError("threshold selection needs both classes in the validation split")
    if name == "sensitivity":
        target = value
        positives = np.sort(p[y == 1])
        # Highest t with mean(positives >= t) >= target: keep ceil(target * n) positives above.
        keep = int(np.ceil(target * len(positives) - 1e-9))
        return float(positives[len(positives) - keep]) if keep > 0 else 1.0
    if name in THRESHOLD_RULES_PLAIN:
        # Both maximise TPR - FPR; they differ only in how ties are broken (see below).
        fpr, tpr, thr = roc_curve(y, p)
        j = tpr - fpr
        best = np.flatnonzero(np.isclose(j, j.max()))
        pick = best[0] if name == "youden" else best[len(best) // 2]
        return float(min(thr[pick], 1.0))
    raise AssertionError(f"parse_threshold_rule accepted {rule!r} but choose_threshold has no case for it")


ALTERNATIVES = ("fixed:0.5", "youden", "sensitivity:0.95", "sensitivity:0.98")
