"""Evaluate a trained model on every split and write ``metrics.json`` and ``predictions.csv``.

Order of operations, all fitted on ``val`` and then applied unchanged to ``test`` and
``kaggle_val``: temperature scaling (:mod:`.calibration`), then the decision threshold on
the calibrated probabilities (:mod:`.threshold`). Metrics at 0.5 and at the other
threshold rules are reported beside the chosen one.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..config import Config
from ..data.dataset import PreparedData, prepare
from ..errors import RunError
from ..models.features import extract_outputs
from ..models.predict import load_run_model, predict_probabilities
from ..options import REPORTED_SPLITS
from ..paths import atomic_write, atomic_write_json
from ..runs import Run
from .calibration import apply_temperature, expected_calibration_error, fit_temperature
from .metrics import CI_METRICS, accuracy_ceiling, bootstrap_ci, classification_metrics
from .scope import fit_model_scope
from .shift import cached_shifted_copies, shift_report
from .threshold import ALTERNATIVES, choose_threshold


def split_report(y, p, threshold: float, cfg: Config) -> dict:
    entry = classification_metrics(y, p, threshold)
    entry["ci95"] = bootstrap_ci(y, p, threshold, cfg.evaluate.bootstrap, cfg.evaluate.seed)
    entry["accuracy_ceiling"] = accuracy_ceiling(y, p)  # best any threshold gives: a ceiling, not a result
    entry["at_0.5"] = classification_metrics(y, p, 0.5)
    entry["at_0.5"]["ci95"] = bootstrap_ci(y, p, 0.5, cfg.evaluate.bootstrap, cfg.evaluate.seed)
    return entry


def calibrate(labels: dict[str, np.ndarray], raw: dict[str, np.ndarray]) -> tuple[float, dict, dict]:
    """Fit T on val; return T, the calibrated probabilities and ECE before/after per split."""
    temperature = fit_temperature(labels["val"], raw["val"])
    probs = {s: apply_temperature(p, temperature) for s, p in raw.items()}
    ece = {s: {"before": expected_calibration_error(labels[s], raw[s]),
               "after": expected_calibration_error(labels[s], probs[s])} for s in raw}
    return temperature, probs, ece


def compute_metrics(labels: dict[str, np.ndarray], probs: dict[str, np.ndarray], cfg: Config) -> dict:
    """metrics.json content from per-split labels and (calibrated) PNEUMONIA probabilities."""
    rule = cfg.evaluate.threshold_rule
    threshold = choose_threshold(labels["val"], probs["val"], rule)
    out: dict = {"threshold": {"rule": rule, "value": threshold, "chosen_on": "val"}}
    for split in REPORTED_SPLITS:
        if split in probs:
            out[split] = split_report(labels[split], probs[split], threshold, cfg)
    out["alternatives"] = {}
    for alt in ALTERNATIVES:
        t = choose_threshold(labels["val"], probs["val"], alt)
        out["alternatives"][alt] = {
            split: {k: v for k, v in classification_metrics(labels[split], probs[split], t).items()
                    if k in ("threshold", "accuracy", "sensitivity", "specificity", "f1", "balanced_accuracy")}
            for split in ("val", "test") if split in probs
        }
    return out


def evaluate_prepared(run: Run, model, prepared: PreparedData, cfg: Config, training: dict | None = None) -> dict:
    # One pass per split gives the probabilities and the features the scope reads.
    outputs = {s: extract_outputs(model, prepared.images[s]) for s in REPORTED_SPLITS if s in prepared.images}
    raw = {s: probs for s, (probs, _) in outputs.items()}
    features = {s: f for s, (_, f) in outputs.items()}
    temperature, probs, ece = calibrate(prepared.labels, raw)
    metrics = compute_metrics(prepared.labels, probs, cfg)
    metrics["calibration"] = {"method": "temperature", "temperature": temperature, "fitted_on": "val", "ece": ece}
    metrics["shift_stress"] = shift_stress(model, prepared, temperature, metrics["threshold"]["value"])
    # Refitted with every evaluation: the scope belongs to these very weights.
    scope, metrics["scope"] = fit_model_scope(model, prepared.images["train"], prepared.labels["train"], features,
                                              quantile=1.0 - cfg.evaluate.scope_flag_rate)
    scope.save(run.scope_file)
    metrics["model"] = cfg.model.name
    metrics["image_size"] = cfg.data.image_size
    if training:
        metrics["training"] = {k: training.get(k) for k in ("best_epoch", "best", "train_seconds", "stopped", "precision")}
        metrics["training"]["epochs_run"] = training.get("epoch", -1) + 1
    elif run.metrics_file.is_file():
        metrics["training"] = run.metrics().get("training")
    atomic_write_json(run.metrics_file, metrics)
    ood = {split: scope.score(features[split]) for split in probs}
    write_predictions(run, prepared.splits, probs, raw, ood, metrics["threshold"]["value"])
    return metrics


def write_predictions(run: Run, splits: pd.DataFrame, probs: dict, raw: dict, ood: dict, threshold: float) -> None:
    """predictions.csv: one row per evaluated image of ``splits`` (path, label, split), in its order."""
    rows = []
    for split, p in probs.items():
        part = splits[splits["split"] == split]
        rows.append(pd.DataFrame({
            "path": part["path"].to_numpy(), "split": split, "label": part["label"].to_numpy(), "probability": p,
            "raw_probability": raw[split], "predicted": (p >= threshold).astype(int), "ood_score": ood[split],
        }))
    table = pd.concat(rows, ignore_index=True)
    atomic_write(run.predictions_file, lambda tmp: table.to_csv(tmp, index=False))


def shift_stress(model, prepared: PreparedData, temperature: float, threshold: float) -> dict:
    """The validation images under acquisition changes (:mod:`.shift`): ROC-AUC per change, mean,
    worst and pooled, and the pooled metrics at the chosen threshold."""
    copies = cached_shifted_copies(prepared.images["val"])
    probs = {name: apply_temperature(predict_probabilities(model, images), temperature)
             for name, images in copies.items()}
    return stress_figures(prepared.labels["val"], probs, threshold)


def stress_figures(labels: np.ndarray, probs: dict[str, np.ndarray], threshold: float) -> dict:
    """:func:`.shift.shift_report` of calibrated probabilities per change, plus the pooled metrics at ``threshold``."""
    report = shift_report(labels, probs)
    pooled = classification_metrics(np.tile(labels, len(probs)), np.concatenate(list(probs.values())), threshold)
    report["pooled"] = {k: pooled[k] for k in ("accuracy", "sensitivity", "specificity", "balanced_accuracy")}
    return report


def evaluate_run(run_dir: str | Path, data: str | Path | None = None) -> dict:
    """Re-evaluate a finished run (optionally on data moved to ``data``)."""
    run = Run(Path(run_dir))
    cfg = run.config()
    if run.adapt_file.is_file():
        raise RunError(f"{run.root} was made by `pneumoscan adapt` ({run.adapt_file}): its figures are the site's; "
                       "run adapt again to refit them")
    model = load_run_model(run)
    prepared = prepare(cfg.data, data or cfg.data.path)
    saved = pd.read_csv(run.splits_file)
    same = (len(saved) == len(prepared.splits)
            and (saved["split"].to_numpy() == prepared.splits["split"].to_numpy()).all()
            and [Path(p).name for p in saved["path"]] == [Path(p).name for p in prepared.splits["path"]])
    if not same:
        raise RunError(f"{run.splits_file}: the data at {data or cfg.data.path} does not give the run's splits")
    return evaluate_prepared(run, model, prepared, cfg)


__all__ = ["evaluate_run", "compute_metrics", "stress_figures", "classification_metrics", "bootstrap_ci", "choose_threshold", "CI_METRICS"]
