"""Prediction with the tiny trained run: files, folders, globs, bad inputs, the CLI and `evaluate`."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumoscan.cli import main
from pneumoscan.inference.predictor import Predictor

BASE_COLUMNS = ["path", "probability", "label", "ood_score", "in_scope", "error"]

# Each bad input and a pattern its error must match (case-insensitive).
BAD_INPUTS = {
    "missing.jpeg": "not found",
    "empty.jpeg": "empty",
    "text.jpeg": "not a readable image",
    "truncated.jpeg": "truncated|cannot decode",
    "no_images": "no .*images",
}


@pytest.fixture(scope="module")
def predictor(tiny_run) -> Predictor:
    return Predictor.from_run(tiny_run.root)


@pytest.fixture(scope="module")
def test_rows(tiny_run) -> pd.DataFrame:
    """Three of the run's own test images with the probabilities evaluation gave them."""
    table = pd.read_csv(tiny_run.predictions_file)
    return table[table["split"] == "test"].sort_values("path").iloc[[0, 20, 40]]


@pytest.fixture
def bad_inputs(tmp_path, kermany_dir) -> dict[str, Path]:
    """One of each kind of broken input, made from a real X-ray where it matters."""
    folder = tmp_path / "bad"
    folder.mkdir()
    real = sorted((kermany_dir / "test" / "NORMAL").glob("*.jpeg"))[0].read_bytes()
    (folder / "empty.jpeg").write_bytes(b"")
    (folder / "text.jpeg").write_text("Patient notes, not an image.\n")
    (folder / "truncated.jpeg").write_bytes(real[: len(real) // 2])
    (folder / "no_images").mkdir()
    (folder / "no_images" / "readme.txt").write_text("nothing to see")
    return {name: folder / name for name in BAD_INPUTS}


def assert_error_rows(table: pd.DataFrame, bad: dict[str, Path]) -> None:
    for name, pattern in BAD_INPUTS.items():
        row = table[table["path"] == str(bad[name])]
        assert len(row) == 1, name
        assert re.search(pattern, row["error"].iloc[0], re.IGNORECASE), (name, row["error"].iloc[0])
        assert pd.isna(row["probability"].iloc[0]) and not row["label"].iloc[0], name


def assert_labels_follow_threshold(table: pd.DataFrame, threshold: float) -> None:
    good = table[table["error"] == ""]
    assert good["probability"].between(0, 1).all()
    expected = np.where(good["probability"] >= threshold, "PNEUMONIA", "NORMAL")
    assert list(good["label"]) == list(expected)


def test_predictor_matches_the_runs_own_evaluation(predictor, test_rows, tiny_run):
    table = predictor.predict(list(test_rows["path"]))
    assert list(table.columns[:6]) == BASE_COLUMNS
    assert list(table["path"]) == list(test_rows["path"])
    assert (table["error"] == "").all()
    # Same preprocessing, model, temperature: the same calibrated probability as in predictions.csv.
    assert np.allclose(table["probability"], test_rows["probability"], atol=1e-5)
    assert predictor.threshold == tiny_run.metrics()["threshold"]["value"]
    assert_labels_follow_threshold(table, predictor.threshold)


def test_files_folders_and_globs(predictor, tmp_path, copy_real_images, test_rows):
    folder = copy_real_images("test", "NORMAL", 2, tmp_path / "folder" / "nested")
    (tmp_path / "folder" / "notes.txt").write_text("not an image")
    (tmp_path / "folder" / ".hidden.jpeg").write_bytes(b"")
    globbed = copy_real_images("test", "PNEUMONIA", 3, tmp_path / "scans")
    single = test_rows["path"].iloc[0]
    table = predictor.predict([single, tmp_path / "folder", str(tmp_path / "scans" / "*.jpeg")])
    assert list(table["path"]) == [single] + [str(p) for p in folder] + [str(p) for p in sorted(globbed)]
    assert (table["error"] == "").all()
    assert_labels_follow_threshold(table, predictor.threshold)


def test_bad_inputs_get_error_rows_and_good_ones_are_still_predicted(predictor, bad_inputs, test_rows):
    good = test_rows["path"].iloc[1]
    table = predictor.predict([bad_inputs["missing.jpeg"], good, *[bad_inputs[n] for n in BAD_INPUTS if n != "missing.jpeg"]])
    assert len(table) == 1 + len(BAD_INPUTS)
    assert_error_rows(table, bad_inputs)
    row = table[table["path"] == good]
    assert row["error"].iloc[0] == "" and row["probability"].iloc[0] == pytest.approx(test_rows["probability"].iloc[1], abs=1e-5)
    # A glob that matches nothing is an error row too, naming the pattern.
    pattern = str(bad_inputs["no_images"] / "*.png")
    assert predictor.predict([pattern])["error"].iloc[0] == "pattern matches no files"


def test_cli_predict_writes_csv_and_json_and_exits_1_on_any_failure(tiny_run, bad_inputs, test_rows, tmp_path, capsys):
    good = list(test_rows["path"].iloc[:2])
    inputs = [*good, *map(str, bad_inputs.values())]
    out_csv, out_json = tmp_path / "x.csv", tmp_path / "x.json"
    assert main(["predict", str(tiny_run.root), *inputs, "--output", str(out_csv)]) == 1
    printed = capsys.readouterr()
    assert all(path in printed.out for path in good)
    assert "failed" in printed.err

    table = pd.read_csv(out_csv, keep_default_na=False)
    assert list(table.columns[:6]) == BASE_COLUMNS
    assert len(table) == len(inputs)
    table["probability"] = pd.to_numeric(table["probability"])
    assert_error_rows(table, bad_inputs)
    assert_labels_follow_threshold(table, tiny_run.metrics()["threshold"]["value"])

    assert main(["predict", str(tiny_run.root), *good, "--output", str(out_json)]) == 0
    rows = json.loads(out_json.read_text())
    assert [r["path"] for r in rows] == good
    assert all(set(BASE_COLUMNS) <= set(r) and not r["error"] for r in rows)
    assert [r["probability"] for r in rows] == pytest.approx(list(test_rows["probability"].iloc[:2]), abs=1e-5)


def test_cli_evaluate_reproduces_the_runs_test_metrics(tiny_run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(tiny_run.root, copy, ignore=shutil.ignore_patterns("checkpoints"))
    (copy / "metrics.json").unlink()
    assert main(["evaluate", str(copy)]) == 0
    recomputed = json.loads((copy / "metrics.json").read_text())
    original = tiny_run.metrics()
    assert recomputed["test"]["accuracy"] == original["test"]["accuracy"]
    assert recomputed["test"]["confusion_matrix"] == original["test"]["confusion_matrix"]
    assert recomputed["threshold"]["value"] == pytest.approx(original["threshold"]["value"])
    assert f"{original['test']['accuracy']:.3f}" in capsys.readouterr().out
