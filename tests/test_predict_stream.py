"""Streaming batch prediction: bounded memory, output written batch by batch, resume.

A folder of 40 real test-split X-rays is predicted with the shared tiny model; the
reference probabilities are computed directly from the loader and the model, without the
streaming code.
"""
import csv
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import pneumoscan.data.inputs as inputs_module
import pneumoscan.inference.predictor as predict_module
from pneumoscan.cli import main
from pneumoscan.imaging import load_image
from pneumoscan.inference.predictor import COLUMNS, Predictor


@pytest.fixture(scope="module")
def predictor(tiny_run) -> Predictor:
    return Predictor.from_run(tiny_run.root)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, kermany_dir):
    root = tmp_path_factory.mktemp("xrays")
    for cls in ("NORMAL", "PNEUMONIA"):
        (root / cls).mkdir()
        for path in sorted((kermany_dir / "test" / cls).glob("*.jpeg"))[:20]:
            shutil.copy(path, root / cls / path.name)
    return root


@pytest.fixture(scope="module")
def reference(predictor, folder) -> dict[str, float]:
    """path -> calibrated probability, straight from the loader and the model."""
    paths = sorted(str(p) for p in folder.rglob("*.jpeg"))
    images = np.stack([load_image(p, predictor.image_size).array for p in paths])
    return dict(zip(paths, predictor.probabilities(images)))


@pytest.fixture
def load_spy(monkeypatch):
    """Records every image the predictor loads, in order."""
    loaded = []
    real = predict_module.load_image

    def spy(source, size, name=None):
        loaded.append(str(source))
        return real(source, size, name=name)

    monkeypatch.setattr(predict_module, "load_image", spy)
    return loaded


def read_rows(path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, na_values={"probability": [""]})


def assert_matches_reference(table: pd.DataFrame, reference: dict, threshold: float) -> None:
    assert list(table.columns) == COLUMNS
    assert sorted(table["path"]) == sorted(reference) and table["path"].is_unique
    expected = table["path"].map(reference).to_numpy(dtype=float)
    np.testing.assert_allclose(table["probability"].to_numpy(dtype=float), expected, atol=1e-5)
    assert list(table["label"]) == ["PNEUMONIA" if p >= threshold else "NORMAL" for p in expected]
    assert (table["error"] == "").all()
    # Real Kermany test X-rays: no warning but, for the few the scope flags, the scope's own.
    assert all(w == "" or w.startswith("outside the model's scope") for w in table["warning"])


def test_cli_writes_each_batch_before_loading_the_next(monkeypatch, tmp_path, capsys, tiny_run, predictor,
                                                       folder, reference, load_spy):
    out = tmp_path / "predictions.csv"
    rows_on_disk, loaded_at_inference = [], []
    real_iter, real_scores = Predictor.iter_predict, Predictor.scores

    def iter_spy(self, *args, **kwargs):
        for table in real_iter(self, *args, **kwargs):
            rows_on_disk.append(len(read_rows(out)))  # what the file held when this batch was ready
            yield table

    def scores_spy(self, images):
        loaded_at_inference.append(len(load_spy))
        return real_scores(self, images)

    monkeypatch.setattr(Predictor, "iter_predict", iter_spy)
    monkeypatch.setattr(Predictor, "scores", scores_spy)
    assert main(["predict", str(tiny_run.root), str(folder), "--output", str(out), "--batch-size", "8"]) == 0

    assert rows_on_disk == [0, 8, 16, 24, 32]  # appended and flushed per batch
    assert loaded_at_inference == [8, 16, 24, 32, 40]  # never more than one batch of images in memory
    assert_matches_reference(read_rows(out), reference, predictor.threshold)
    stdout = capsys.readouterr().out.splitlines()
    assert stdout[0].split() == ["probability", "label", "path"] and len(stdout) == 41


def test_folders_are_expanded_lazily(monkeypatch, predictor, folder):
    walked = []
    real_walk = inputs_module.walk_images

    def walk_spy(root):
        for path in real_walk(root):
            walked.append(path)
            yield path

    monkeypatch.setattr(inputs_module, "walk_images", walk_spy)
    batches = predictor.iter_predict(folder, batch_size=8)
    assert len(next(batches)) == 8 and len(walked) == 8  # the other 32 files not even listed yet
    assert sum(len(t) for t in batches) == 32 and len(walked) == 40


def test_resume_predicts_only_the_missing_images(tmp_path, capsys, tiny_run, predictor, folder, reference, load_spy):
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(tiny_run.root), str(folder), "-o", str(out), "--batch-size", "8"]) == 0
    full = read_rows(out)
    lines = out.read_text().splitlines(keepends=True)
    # Keep 27 rows, then half of the 28th: the job was killed while writing it.
    out.write_text("".join(lines[:28]) + lines[28][: len(lines[28]) // 2])
    load_spy.clear()
    capsys.readouterr()

    assert main(["predict", str(tiny_run.root), str(folder), "-o", str(out), "--batch-size", "8", "--resume"]) == 0
    assert sorted(load_spy) == sorted(full["path"][27:])  # only the 13 missing images were read
    assert "27 images already in" in capsys.readouterr().err
    resumed = read_rows(out)
    assert_matches_reference(resumed, reference, predictor.threshold)
    merged = resumed.set_index("path").loc[full["path"]]
    np.testing.assert_allclose(merged["probability"], full["probability"], atol=1e-6)


def test_json_lines_and_json_outputs(tmp_path, capsys, tiny_run, predictor, folder, reference, load_spy):
    subset = sorted(str(p) for p in folder.rglob("*.jpeg"))[:10]
    jsonl = tmp_path / "out.jsonl"
    assert main(["predict", str(tiny_run.root), *subset, "-o", str(jsonl), "--batch-size", "4", "--progress"]) == 0
    assert "10/10" in capsys.readouterr().err  # the progress bar, forced on although stderr is no terminal
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["path"] for r in rows] == subset and all(set(r) == set(COLUMNS) for r in rows)

    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows[:7]))
    load_spy.clear()
    assert main(["predict", str(tiny_run.root), *subset, "-o", str(jsonl), "--resume"]) == 0
    assert load_spy == subset[7:]
    resumed = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["path"] for r in resumed] == subset
    np.testing.assert_allclose([r["probability"] for r in resumed], [reference[p] for p in subset], atol=1e-5)

    array = tmp_path / "out.json"
    assert main(["predict", str(tiny_run.root), *subset, "-o", str(array), "--batch-size", "4"]) == 0
    assert [r["path"] for r in json.loads(array.read_text())] == subset


def test_bad_inputs_get_error_rows_and_the_rest_is_predicted(tmp_path, capsys, tiny_run, predictor, folder,
                                                             reference):
    good = sorted(str(p) for p in folder.rglob("*.jpeg"))[:3]
    import matplotlib

    gray = np.asarray(Image.open(good[0]).convert("L"))
    Image.fromarray((matplotlib.colormaps["jet"](gray)[..., :3] * 255).astype(np.uint8)).save(tmp_path / "heat.png")
    (tmp_path / "empty.jpeg").write_bytes(b"")
    (tmp_path / "notes.png").write_text("not an image")
    inputs = [good[0], str(tmp_path / "empty.jpeg"), good[1], str(tmp_path / "heat.png"),
              str(tmp_path / "notes.png"), str(tmp_path / "missing.png"), good[2]]

    table = predictor.predict(inputs, batch_size=2)
    assert list(table.columns) == COLUMNS and list(table["path"]) == inputs
    by_path = table.set_index("path")
    np.testing.assert_allclose(by_path.loc[good, "probability"], [reference[p] for p in good], atol=1e-5)
    assert by_path.loc[str(tmp_path / "empty.jpeg"), "error"] == "empty file"
    assert "not a readable image" in by_path.loc[str(tmp_path / "notes.png"), "error"]
    assert by_path.loc[str(tmp_path / "missing.png"), "error"] == "file not found"
    heat = by_path.loc[str(tmp_path / "heat.png")]
    assert heat["error"] == "" and "colourful" in heat["warning"] and 0 <= heat["probability"] <= 1
    assert table["probability"].isna().sum() == 3

    out = tmp_path / "mixed.csv"
    assert main(["predict", str(tiny_run.root), *inputs, "-o", str(out), "--batch-size", "2"]) == 1
    err = capsys.readouterr().err
    assert "3 of 7 inputs failed" in err and "images carry a warning" in err and "Traceback" not in err
    written = read_rows(out)
    assert list(written["path"]) == inputs and list(written["error"]) == list(table["error"])


def test_resume_needs_an_output_file(tiny_run, folder, capsys):
    assert main(["predict", str(tiny_run.root), str(folder), "--resume"]) == 2
    assert "--resume needs --output" in capsys.readouterr().err


def test_csv_output_round_trips_with_the_csv_module(tmp_path, tiny_run, folder):
    # Paths with commas and quotes stay one cell each.
    odd = tmp_path / 'odd, "name".jpeg'
    shutil.copy(next(folder.rglob("*.jpeg")), odd)
    out = tmp_path / "odd.csv"
    assert main(["predict", str(tiny_run.root), str(odd), "-o", str(out)]) == 0
    with open(out, newline="") as fh:
        [row] = list(csv.DictReader(fh))
    assert row["path"] == str(odd) and list(row) == COLUMNS
