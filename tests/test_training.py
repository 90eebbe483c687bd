"""A real (tiny) training run: every file of the run directory is there and the files agree."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_OVERRIDES

from pneumoscan.config import resolve
from pneumoscan.runs import RunError
from pneumoscan.api import train

PER_CLASS = TINY_OVERRIDES["data"]["max_per_class"]
REPORTED = ("val", "test", "kaggle_val")


@pytest.fixture(scope="module")
def splits(tiny_run) -> pd.DataFrame:
    return pd.read_csv(tiny_run.splits_file)


@pytest.fixture(scope="module")
def metrics(tiny_run) -> dict:
    return tiny_run.metrics()


@pytest.fixture(scope="module")
def predictions(tiny_run) -> pd.DataFrame:
    return pd.read_csv(tiny_run.predictions_file)


def test_run_directory_is_complete(tiny_run):
    for name in ("config.json", "model.keras", "history.csv", "splits.csv", "metrics.json",
                 "predictions.csv", "environment.json", "checkpoints/state.json"):
        assert (tiny_run.root / name).is_file(), name
    assert not [p.name for p in tiny_run.root.rglob(".tmp-*")]  # no leftovers of atomic writes
    state = json.loads((tiny_run.checkpoint_dir / "state.json").read_text())
    assert state["complete"] is True
    environment = json.loads(tiny_run.environment_file.read_text())
    assert environment["packages"]["keras"] and environment["python"]


def test_config_json_reproduces_the_config(tiny_run, shared_data):
    expected = resolve(overrides=TINY_OVERRIDES)
    expected.data.path = str(shared_data)  # the run records where its data was, as an absolute path
    assert tiny_run.config() == expected
    assert resolve(tiny_run.config_file) == expected  # `train --config RUN/config.json` repeats it


def test_splits_keep_patients_apart_and_follow_the_subset_size(splits):
    assert list(splits.columns) == ["path", "label", "split", "patient_id"]
    train_patients = set(splits.loc[splits["split"] == "train", "patient_id"])
    val_patients = set(splits.loc[splits["split"] == "val", "patient_id"])
    assert train_patients and val_patients and not train_patients & val_patients
    counts = splits.groupby(["split", "label"]).size().to_dict()
    assert counts == {(s, c): PER_CLASS for s in ("train", "val", "test") for c in (0, 1)} | {
        ("kaggle_val", 0): 8, ("kaggle_val", 1): 8}
    # test and kaggle_val are the official folders, untouched by the carving.
    folder = splits["path"].map(lambda p: Path(p).parent.parent.name)
    assert (folder[splits["split"] == "test"] == "test").all()
    assert (folder[splits["split"] == "kaggle_val"] == "val").all()
    assert (folder[splits["split"].isin(["train", "val"])] == "train").all()


def test_metrics_json_reports_every_metric_for_test(metrics, splits):
    test = metrics["test"]
    for key in ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc", "pr_auc",
                "confusion_matrix", "threshold", "ci95"):
        assert key in test, key
    (tn, fp), (fn, tp) = test["confusion_matrix"]
    assert tn + fp + fn + tp == test["n"] == (splits["split"] == "test").sum()
    assert tn + fp == PER_CLASS and fn + tp == PER_CLASS
    assert test["accuracy"] == pytest.approx((tn + tp) / test["n"])
    assert test["recall"] == pytest.approx(tp / (tp + fn))
    assert test["threshold"] == metrics["threshold"]["value"]
    assert metrics["threshold"]["chosen_on"] == "val"
    for name, (lo, hi) in test["ci95"].items():
        assert 0.0 <= lo <= hi <= 1.0, name
    assert test["ci95"]["accuracy"][0] <= test["accuracy"] <= test["ci95"]["accuracy"][1]
    assert {"val", "test", "kaggle_val", "alternatives", "calibration"} <= set(metrics)
    assert metrics["calibration"]["temperature"] > 0


def test_predictions_csv_agrees_with_splits_and_metrics(predictions, splits, metrics):
    for split in REPORTED:
        rows = predictions[predictions["split"] == split]
        assert len(rows) == (splits["split"] == split).sum() == metrics[split]["n"]
        assert set(rows["path"]) == set(splits.loc[splits["split"] == split, "path"])
    test = predictions[predictions["split"] == "test"]
    threshold = metrics["threshold"]["value"]
    assert ((test["probability"] >= threshold).astype(int) == test["predicted"]).all()
    assert np.mean(test["predicted"] == test["label"]) == pytest.approx(metrics["test"]["accuracy"])
    assert test["probability"].between(0, 1).all() and test["raw_probability"].between(0, 1).all()


def test_history_has_one_row_per_epoch(tiny_run, metrics):
    history = pd.read_csv(tiny_run.history_file)
    epochs = TINY_OVERRIDES["train"]["epochs"]
    assert list(history["epoch"]) == list(range(1, epochs + 1))
    assert {"loss", "val_loss", "val_auc", "learning_rate"} <= set(history.columns)
    assert history[["loss", "val_loss"]].notna().all().all()
    assert metrics["training"]["epochs_run"] == epochs
    assert metrics["training"]["best_epoch"] == int(history["val_auc"].idxmax()) + 1


def test_training_refuses_to_overwrite_a_run(tiny_run, shared_data):
    before = tiny_run.metrics_file.read_bytes()
    with pytest.raises(RunError, match="already holds a run") as err:
        train(shared_data, tiny_run.root, config=resolve(overrides=TINY_OVERRIDES), verbose=0)
    assert str(tiny_run.root) in str(err.value)
    assert tiny_run.metrics_file.read_bytes() == before


def test_class_weights_balance_the_classes():
    import numpy as np

    from pneumoscan.training.loop import class_weights

    labels = np.array([0] * 25 + [1] * 75)
    weights = class_weights(labels, "balanced")
    assert weights == pytest.approx({0: 100 / (2 * 25), 1: 100 / (2 * 75)})
    assert 25 * weights[0] == pytest.approx(75 * weights[1])  # each class weighs the same in the loss
    assert class_weights(labels, "none") is None


def test_tensorboard_logs_scalars_and_the_learning_rate(tiny_run):
    import tensorflow as tf

    scalars: dict[str, list[float]] = {}
    files = sorted(tiny_run.tensorboard_dir.rglob("events.out.tfevents.*"))
    assert files, f"no event files under {tiny_run.tensorboard_dir}"
    for file in files:
        split = file.parent.name  # train/ or validation/
        for record in tf.data.TFRecordDataset(str(file)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                number = tf.make_ndarray(value.tensor) if value.HasField("tensor") else value.simple_value
                scalars.setdefault(f"{split}/{value.tag}", []).append(float(number))
    for tag in ("train/epoch_loss", "train/epoch_accuracy", "train/epoch_auc", "train/epoch_learning_rate",
                "validation/epoch_loss", "validation/epoch_auc"):
        assert len(scalars.get(tag, [])) == 2, (tag, sorted(scalars))  # one per epoch
    history = tiny_run.history()
    assert scalars["train/epoch_loss"] == pytest.approx(history["loss"].tolist(), rel=1e-5)
    assert scalars["train/epoch_learning_rate"] == pytest.approx(history["learning_rate"].tolist(), rel=1e-5)


def test_the_tensorboard_flag_reaches_the_config():
    from pneumoscan.cli import _overrides, build_parser

    args = build_parser().parse_args(["train", "--out", "x", "--tensorboard"])
    assert resolve(overrides=_overrides(args)).train.tensorboard is True
    assert resolve(overrides=_overrides(build_parser().parse_args(["train", "--out", "x"]))).train.tensorboard is False


def test_tensorboard_without_its_package_fails_before_training(monkeypatch, tmp_path, shared_data):
    import importlib.util

    from pneumoscan.config import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'pneumoscan\[tensorboard\]'"):
        train(shared_data, tmp_path / "run", config=resolve(overrides=TINY_OVERRIDES))
    assert not (tmp_path / "run").exists()
