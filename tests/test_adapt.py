"""`pneumoscan adapt` on real images: a small site CSV gives a complete, usable run; bad site
data is refused with every problem named and nothing written."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumoscan.cli import main
from pneumoscan.evaluation.scope import Scope

from conftest import make_site


@pytest.fixture(scope="module")
def site_csv(kermany_dir, tmp_path_factory) -> Path:
    return make_site(kermany_dir, tmp_path_factory.mktemp("site"))


@pytest.fixture(scope="module")
def adapted(tiny_run, site_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapted") / "site-run"
    assert main(["adapt", str(tiny_run.root), "--data", str(site_csv), "--out", str(out)]) == 0
    return out


def test_adapt_writes_a_complete_run_with_its_parent_and_site(adapted, tiny_run, site_csv):
    for name in ("model.keras", "config.json", "metrics.json", "predictions.csv", "splits.csv", "scope.npz",
                 "adapt.json", "MODEL_CARD.md", "report.html"):
        assert (adapted / name).is_file(), name
    info = json.loads((adapted / "adapt.json").read_text())
    assert info["parent"]["model_sha256"] == tiny_run.model_sha256()
    assert info["site"]["images"] == 60 and len(info["site"]["sha256"]) == 64
    assert info["site"]["adapt_images"] + info["site"]["eval_images"] == 60
    splits = pd.read_csv(adapted / "splits.csv")
    # Patient-grouped: no patient both adapts and evaluates.
    by_patient = splits.groupby("patient_id")["split"].nunique()
    assert (by_patient == 1).all()
    assert set(splits["split"]) == {"val", "test"}
    metrics = json.loads((adapted / "metrics.json").read_text())
    assert metrics["test"]["n"] == info["site"]["eval_images"]
    assert info["after"] == metrics["test"] and set(info["before"]) >= {"roc_auc", "specificity", "ci95"}
    # The threshold follows the parent's rule, refitted on the site's adapting images.
    assert metrics["threshold"]["rule"] == tiny_run.metrics()["threshold"]["rule"]
    card = (adapted / "MODEL_CARD.md").read_text()
    assert "## Site adaptation" in card and info["site"]["sha256"][:16] in card
    # Where the data came from: the parent's training set, then the site's own split table.
    assert "The parent model was trained on: " in card and "Guangzhou" in card and "| val | site: adapted the model" in card


def test_the_adapted_scope_takes_the_site_in(adapted, tiny_run):
    parent, scope = Scope.load(tiny_run.scope_file), Scope.load(adapted / "scope.npz")
    assert all(len(m) == len(p) + 2 for m, p in zip(scope.means, parent.means))  # the site's two classes
    assert scope.threshold >= parent.threshold
    metrics = json.loads((adapted / "metrics.json").read_text())
    assert metrics["scope"]["flagged_leave_one_out"]["val"] <= 0.1


def test_predict_and_export_work_on_the_adapted_run_unchanged(adapted, site_csv, tmp_path):
    import pneumoscan

    image = sorted(site_csv.parent.glob("*.png"))[0]
    keras_rows = pneumoscan.load(adapted).predict([image])
    onnx_rows = pneumoscan.load(adapted, engine="onnx").predict([image])
    assert keras_rows["label"].iloc[0] in ("NORMAL", "PNEUMONIA") and bool(keras_rows["in_scope"].iloc[0]) in (True, False)
    np.testing.assert_allclose(onnx_rows["probability"], keras_rows["probability"], atol=1e-4)
    np.testing.assert_allclose(onnx_rows["ood_score"], keras_rows["ood_score"], rtol=1e-4, atol=1e-4)
    metrics = json.loads((adapted / "metrics.json").read_text())
    assert pneumoscan.load(adapted).threshold == metrics["threshold"]["value"]
    # exports carry the model card
    assert main(["export", str(adapted), "--format", "onnx", "--out", str(tmp_path / "export")]) == 0
    assert (tmp_path / "export" / "MODEL_CARD.md").read_text() == (adapted / "MODEL_CARD.md").read_text()


def test_evaluate_refuses_an_adapted_run(adapted, capsys):
    assert main(["evaluate", str(adapted)]) == 2
    assert "pneumoscan adapt" in capsys.readouterr().err


def test_finetune_moves_the_weights_and_refits_the_scope(tiny_run, site_csv, tmp_path):
    import keras

    import pneumoscan

    run = pneumoscan.adapt(tiny_run.root, site_csv, tmp_path / "ft", finetune=True, epochs=2)
    info = json.loads(run.adapt_file.read_text())
    assert info["mode"] == "fine-tune + recalibrate"
    assert set(pd.read_csv(run.splits_file)["split"]) == {"val", "test"}
    assert "out-of-fold" in info["calibration"] and info["site"]["calibration_images"] == info["site"]["adapt_images"]
    parent = keras.saving.load_model(tiny_run.model_file, compile=False)
    child = keras.saving.load_model(run.model_file, compile=False)
    moved = [not np.allclose(a, b) for a, b in zip(parent.get_weights(), child.get_weights())]
    assert any(moved) and not all(moved)  # head and batch norm moved, the convolutions did not
    assert len(pd.read_csv(run.history_file)) == 2
    assert pneumoscan.load(run).predict([sorted(site_csv.parent.glob("*.png"))[0]])["error"].iloc[0] == ""


def bad_site(site_csv: Path, tmp_path: Path, keep) -> Path:
    table = pd.read_csv(site_csv)
    table["path"] = [str(site_csv.parent / p) for p in table["path"]]
    out = tmp_path / "bad.csv"
    keep(table).to_csv(out, index=False)
    return out


@pytest.mark.parametrize("case, keep, message", [
    ("one class", lambda t: t[t["label"] == "PNEUMONIA"], "no NORMAL images"),
    ("too few", lambda t: t.groupby("label").head(12), "24 usable images; at least 50"),
])
def test_bad_site_data_is_refused_and_nothing_is_written(tiny_run, site_csv, tmp_path, capsys, case, keep, message):
    csv = bad_site(site_csv, tmp_path, keep)
    out = tmp_path / "runs" / "new"
    assert main(["adapt", str(tiny_run.root), "--data", str(csv), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(csv) in err and "Traceback" not in err
    assert not out.exists() and not any((tmp_path / "runs").glob(".tmp-*")) if (tmp_path / "runs").exists() else True


def test_unreadable_site_images_are_named_and_can_be_skipped(tiny_run, site_csv, tmp_path, capsys):
    folder = tmp_path / "site"
    shutil.copytree(site_csv.parent, folder)
    broken = sorted(folder.glob("*.png"))[:2]
    broken[0].write_bytes(b"not an image at all")
    broken[1].write_bytes(broken[1].read_bytes()[:200])  # truncated
    out = tmp_path / "new"
    assert main(["adapt", str(tiny_run.root), "--data", str(folder / "site.csv"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "2 site image(s) cannot be used" in err and str(broken[0]) in err and str(broken[1]) in err
    assert "--skip-unreadable" in err and not out.exists()
    assert main(["adapt", str(tiny_run.root), "--data", str(folder / "site.csv"), "--out", str(out),
                 "--skip-unreadable"]) == 0
    info = json.loads((out / "adapt.json").read_text())
    assert info["site"]["images"] == 58 and {s["path"] for s in info["site"]["skipped"]} == set(map(str, broken))


def test_site_folders_with_normal_and_pneumonia_work_too(tiny_run, site_csv, tmp_path):
    import pneumoscan

    table = pd.read_csv(site_csv)
    for label, part in table.groupby("label"):
        (tmp_path / "site" / label).mkdir(parents=True)
        for name in part["path"]:
            shutil.copy(site_csv.parent / name, tmp_path / "site" / label / name)
    # What copying folders between machines leaves behind is not a problem with the site's images.
    (tmp_path / "site" / "NORMAL" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "site" / "PNEUMONIA" / "notes.txt").write_text("scanned on the ward printer\n")
    run = pneumoscan.adapt(tiny_run.root, tmp_path / "site", tmp_path / "new")
    assert json.loads(run.adapt_file.read_text())["site"]["images"] == 60


def test_an_existing_output_is_never_overwritten(tiny_run, site_csv, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    assert main(["adapt", str(tiny_run.root), "--data", str(site_csv), "--out", str(tmp_path / "taken")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


def test_with_site_on_known_gaussians():
    from pneumoscan.evaluation.scope import fit_scope

    rng = np.random.default_rng(0)
    train = [rng.normal(0, 1, (400, 3))]
    labels = np.r_[np.zeros(200), np.ones(200)]
    val = [rng.normal(0, 1, (200, 3))]
    scope = fit_scope(train, labels, val, quantile=0.95)
    site = [rng.normal(0, 1, (60, 3)) + 12]  # a site far from the training data
    site_labels = np.r_[np.zeros(30), np.ones(30)]
    assert np.mean(scope.score(site) > scope.threshold) == 1.0
    widened, loo = scope.with_site(site, site_labels)
    assert np.mean(loo > widened.threshold) <= 0.05 + 1e-9
    new_site = [rng.normal(0, 1, (100, 3)) + 12]
    assert np.mean(widened.score(new_site) > widened.threshold) < 0.15
    assert widened.score([np.full((1, 3), -30.0)])[0] > widened.threshold  # elsewhere is still out of scope
