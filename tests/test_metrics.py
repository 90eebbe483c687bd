"""Classification metrics against values worked out by hand, and the bootstrap intervals."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pneumoscan.evaluation.metrics import CI_METRICS, bootstrap_ci, classification_metrics

# Ten images, four NORMAL (0) then six PNEUMONIA (1).
Y = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
P = [0.10, 0.30, 0.60, 0.20, 0.90, 0.80, 0.40, 0.70, 0.55, 0.35]


def test_metrics_match_a_hand_computed_confusion_matrix():
    # At 0.5: NORMAL 0.10, 0.30, 0.20 -> TN = 3; 0.60 -> FP = 1.
    #         PNEUMONIA 0.90, 0.80, 0.70, 0.55 -> TP = 4; 0.40, 0.35 -> FN = 2.
    m = classification_metrics(Y, P, 0.5)
    assert m["confusion_matrix"] == [[3, 1], [2, 4]]
    assert m["n"] == 10 and m["threshold"] == 0.5
    assert m["accuracy"] == pytest.approx(7 / 10)          # (TP + TN) / n
    assert m["precision"] == pytest.approx(4 / 5)          # TP / (TP + FP)
    assert m["recall"] == pytest.approx(4 / 6)             # TP / (TP + FN)
    assert m["sensitivity"] == m["recall"]
    assert m["specificity"] == pytest.approx(3 / 4)        # TN / (TN + FP)
    assert m["f1"] == pytest.approx(8 / 11)                # 2TP / (2TP + FP + FN)
    assert m["balanced_accuracy"] == pytest.approx(17 / 24)  # (4/6 + 3/4) / 2
    # ROC-AUC: of the 6 x 4 (positive, negative) pairs, the positive scores higher in
    # 4 + 4 + 3 + 4 + 3 + 3 = 21 (0.40, 0.55 and 0.35 beat only 0.10, 0.20 and 0.30).
    assert m["roc_auc"] == pytest.approx(21 / 24)
    # PR-AUC (average precision): ranked 0.9P 0.8P 0.7P 0.6N 0.55P 0.4P 0.35P ...; precision at each
    # positive is 1, 1, 1, 4/5, 5/6, 6/7, each adding 1/6 of recall: (3 + 4/5 + 5/6 + 6/7) / 6.
    assert m["pr_auc"] == pytest.approx(1153 / 1260)


def test_threshold_is_inclusive():
    # At 0.6 the NORMAL image scored exactly 0.60 counts as PNEUMONIA: TP = 3 (0.9, 0.8, 0.7),
    # FP = 1, FN = 3, TN = 3.
    m = classification_metrics(Y, P, 0.6)
    assert m["confusion_matrix"] == [[3, 1], [3, 3]]
    assert m["accuracy"] == pytest.approx(6 / 10)
    assert m["precision"] == pytest.approx(3 / 4)


def test_undefined_metrics_are_nan_not_errors():
    # No PNEUMONIA at all: sensitivity and the AUCs have no meaning; nothing predicted positive.
    m = classification_metrics([0, 0, 0], [0.1, 0.2, 0.3], 0.5)
    assert m["confusion_matrix"] == [[3, 0], [0, 0]]
    assert m["accuracy"] == 1.0 and m["specificity"] == 1.0 and m["f1"] == 0.0
    assert math.isnan(m["recall"]) and math.isnan(m["precision"]) and math.isnan(m["roc_auc"])


def synthetic_scores(n: int, seed: int):
    """Labels (30% NORMAL) and scores that separate them imperfectly, like a fair model's."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.7).astype(int)
    score = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.5 * (2 * y - 1))))
    return y, score


def test_bootstrap_interval_holds_the_point_estimate_and_is_seeded():
    y, p = synthetic_scores(300, seed=1)
    point = classification_metrics(y, p, 0.5)
    ci = bootstrap_ci(y, p, 0.5, n_boot=200, seed=3)
    assert set(ci) == set(CI_METRICS)
    for name, (lo, hi) in ci.items():
        assert 0.0 <= lo < point[name] < hi <= 1.0, name
    assert bootstrap_ci(y, p, 0.5, n_boot=200, seed=3) == ci
    assert bootstrap_ci(y, p, 0.5, n_boot=200, seed=4) != ci


def test_bootstrap_interval_narrows_with_more_data():
    small = bootstrap_ci(*synthetic_scores(100, seed=5), 0.5, n_boot=200, seed=0)
    large = bootstrap_ci(*synthetic_scores(2000, seed=5), 0.5, n_boot=200, seed=0)
    for name in CI_METRICS:
        width_small = small[name][1] - small[name][0]
        width_large = large[name][1] - large[name][0]
        # sqrt(2000 / 100) = 4.5 times narrower in theory; ask for clearly narrower.
        assert width_large < width_small / 2.5, name


def test_bootstrap_without_both_classes_gives_nan_intervals():
    ci = bootstrap_ci([1, 1, 1], [0.2, 0.6, 0.9], 0.5, n_boot=50)
    assert all(math.isnan(lo) and math.isnan(hi) for lo, hi in ci.values())
