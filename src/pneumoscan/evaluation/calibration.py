"""Temperature scaling (Guo et al. 2017), fitted on the validation split.

One scalar T divides the logit of the PNEUMONIA probability. It changes how confident
the probabilities are, never their order, so ROC-AUC is unchanged.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

_EPS = 1e-7


def logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def apply_temperature(prob, temperature: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logit(prob) / temperature))


def fit_temperature(y_true, prob) -> float:
    """The T in [0.05, 20] that minimises the validation negative log-likelihood."""
    y = np.asarray(y_true, dtype=np.float64)
    z = logit(prob)

    def nll(log_t: float) -> float:
        q = np.clip(1.0 / (1.0 + np.exp(-z / np.exp(log_t))), _EPS, 1 - _EPS)
        return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))

    result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def expected_calibration_error(y_true, prob, bins: int = 15) -> float:
    """ECE of the PNEUMONIA probability over ``bins`` equal-width bins."""
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(prob, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(p[mask].mean() - y[mask].mean())
    return float(ece)
