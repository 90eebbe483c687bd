"""Threshold rules against brute force, and temperature scaling on logits with a known temperature."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pneumoscan.evaluation.calibration import apply_temperature, expected_calibration_error, fit_temperature
from pneumoscan.evaluation.threshold import choose_threshold


def validation_scores(seed: int, n: int = 400, decimals: int | None = None):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.6).astype(int)
    p = 1 / (1 + np.exp(-(rng.normal(size=n) * 1.3 + 1.2 * (2 * y - 1))))
    if decimals is not None:  # coarse scores: many ties, as a saturated model gives
        p = np.round(p, decimals)
    return y, p


def rates(y, p, t):
    pred = p >= t
    return pred[y == 1].mean(), pred[y == 0].mean()  # sensitivity, false-positive rate


@pytest.mark.parametrize("seed, target, decimals", [
    (0, 0.95, None), (1, 0.95, 2), (2, 0.98, None), (3, 0.90, 1), (4, 0.95, None),
])
def test_sensitivity_rule_is_the_highest_threshold_meeting_the_target(seed, target, decimals):
    y, p = validation_scores(seed, decimals=decimals)
    chosen = choose_threshold(y, p, f"sensitivity:{target}")
    candidates = np.unique(np.append(p, 1.0))
    meeting = [t for t in candidates if rates(y, p, t)[0] >= target]
    assert chosen == pytest.approx(max(meeting))
    assert rates(y, p, chosen)[0] >= target
    higher = candidates[candidates > chosen]
    assert all(rates(y, p, t)[0] < target for t in higher)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_youden_rule_maximises_sensitivity_plus_specificity(seed):
    y, p = validation_scores(seed, decimals=2 if seed == 2 else None)
    chosen = choose_threshold(y, p, "youden")
    j = {t: np.subtract(*rates(y, p, t)) for t in np.unique(p)}
    assert np.subtract(*rates(y, p, chosen)) == pytest.approx(max(j.values()))


def test_fixed_rule_returns_its_value():
    y, p = validation_scores(0)
    assert choose_threshold(y, p, "fixed:0.5") == 0.5
    assert choose_threshold(y, p, "fixed:0.137") == pytest.approx(0.137)


@pytest.mark.parametrize("rule, message", [
    ("sensitivity", "needs a number after ':'"),
    ("sensitivity:high", "needs a number after ':'"),
    ("sensitivity:1.5", "within \\[0, 1\\]"),
    ("fixed:-0.1", "within \\[0, 1\\]"),
    ("best", "unknown threshold rule 'best'"),
    ("", "unknown threshold rule ''"),
])
def test_bad_rules_raise_a_clear_value_error(rule, message):
    y, p = validation_scores(0)
    with pytest.raises(ValueError, match=message) as err:
        choose_threshold(y, p, rule)
    assert repr(rule) in str(err.value)


def test_threshold_needs_both_classes():
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold([1, 1, 1], [0.2, 0.5, 0.9], "sensitivity:0.95")


@pytest.fixture(scope="module")
def overconfident():
    """Labels drawn from sigmoid(z) but probabilities sigmoid(3z): three times too confident."""
    rng = np.random.default_rng(42)
    z = rng.normal(size=20000)
    y = (rng.random(z.size) < 1 / (1 + np.exp(-z))).astype(int)
    return y, 1 / (1 + np.exp(-3 * z))


def test_fitted_temperature_recovers_the_true_one(overconfident):
    y, p = overconfident
    assert fit_temperature(y, p) == pytest.approx(3.0, rel=0.08)


def test_calibration_lowers_ece_and_keeps_the_ranking(overconfident):
    y, p = overconfident
    calibrated = apply_temperature(p, fit_temperature(y, p))
    before, after = expected_calibration_error(y, p), expected_calibration_error(y, calibrated)
    assert after < before / 3 and after < 0.02
    assert roc_auc_score(y, calibrated) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert np.array_equal(np.argsort(calibrated, kind="stable"), np.argsort(p, kind="stable"))


def test_temperature_one_changes_nothing_and_well_calibrated_stays_near_one():
    rng = np.random.default_rng(7)
    z = rng.normal(size=20000)
    y = (rng.random(z.size) < 1 / (1 + np.exp(-z))).astype(int)
    p = 1 / (1 + np.exp(-z))
    assert np.allclose(apply_temperature(p, 1.0), p)
    assert fit_temperature(y, p) == pytest.approx(1.0, rel=0.08)
