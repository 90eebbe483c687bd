"""The public Python API: one loader for every kind of input, predict/predict_proba, named
configs, the image size's single source of truth, and streaming explain."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import pneumoscan
from pneumoscan.errors import RunError
from pneumoscan.inference.predictor import COLUMNS


@pytest.fixture(scope="module")
def model(tiny_run):
    return pneumoscan.load(tiny_run.root)


@pytest.fixture(scope="module")
def xrays(kermany_dir) -> list[Path]:
    return [sorted((kermany_dir / "test" / cls).glob("*.jpeg"))[i] for cls in ("NORMAL", "PNEUMONIA") for i in (0, 1)]


def test_the_public_surface(model, tiny_run):
    assert model.class_names == ("NORMAL", "PNEUMONIA")
    assert model.threshold == pytest.approx(tiny_run.metrics()["threshold"]["value"])
    assert model.image_size == 64 == model.model.inputs[0].shape[1]
    assert "engine='keras'" in repr(model)
    for name in ("train", "load", "load_data", "open_run", "write_report", "gradcam", "overlay", "Config"):
        assert callable(getattr(pneumoscan, name)), name
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        pneumoscan.nothing  # noqa: B018


def test_paths_bytes_pil_images_and_arrays_give_the_same_probability(model, xrays):
    path = xrays[2]
    pil = Image.open(path)
    inputs = [str(path), path.read_bytes(), pil, np.asarray(pil), np.asarray(pil.convert("L"))]
    table = model.predict(inputs)
    assert list(table.columns) == COLUMNS and len(table) == 5 and (table["error"] == "").all()
    p = table["probability"].to_numpy()
    assert np.ptp(p) < 1e-6, p
    assert list(table["path"]) == [str(path), "<bytes 1>", "<image 2>", "<array 3>", "<array 4>"]
    proba = model.predict_proba(inputs)
    assert proba.shape == (5, 2)
    np.testing.assert_allclose(proba[:, 1], p, atol=1e-9)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def test_names_label_in_memory_images(model, xrays):
    table = model.predict([p.read_bytes() for p in xrays], names=[f"upload-{i}.jpeg" for i in range(4)])
    assert list(table["path"]) == [f"upload-{i}.jpeg" for i in range(4)]
    with pytest.raises(ValueError, match="2 names for 4 inputs"):
        model.predict([p.read_bytes() for p in xrays], names=["a", "b"])


def test_a_stack_of_arrays_is_a_batch_of_images(model, xrays):
    stack = np.stack([np.asarray(Image.open(p).convert("L")) for p in xrays])  # (4, 224, 224)
    assert model.predict_proba(stack).shape == (4, 2)
    assert model.predict_proba(stack[0]).shape == (1, 2)  # one 2-D array: one image


def test_bad_inputs_are_named_and_the_rest_still_predicted(model, xrays, tmp_path):
    broken = tmp_path / "broken.jpeg"
    broken.write_bytes(b"not an image")
    inputs = [xrays[0], broken, b"", np.zeros((4, 4), np.uint8), np.full((64, 64), np.nan), object(), xrays[1]]
    table = model.predict(inputs)
    errors = list(table["error"])
    assert errors[0] == "" and errors[-1] == ""
    assert "not a readable image" in errors[1]
    assert errors[2] == "empty file"
    assert "image too small" in errors[3]
    assert "NaN" in errors[4]
    assert "cannot read a object" in errors[5]
    with pytest.warns(UserWarning, match=f"{broken}: not a readable image"):
        proba = model.predict_proba([xrays[0], broken])
    assert np.isfinite(proba[0]).all() and np.isnan(proba[1]).all()


def test_onnx_engine_through_load(tiny_run, xrays, model):
    onnx = pneumoscan.load(tiny_run.root, engine="onnx")
    assert onnx.engine == "onnx" and onnx.image_size == 64
    np.testing.assert_allclose(onnx.predict_proba(xrays), model.predict_proba(xrays), atol=1e-4)
    with pytest.raises(ValueError, match="unknown engine 'torch'"):
        pneumoscan.load(tiny_run.root, engine="torch")


def test_the_saved_model_is_the_truth_about_the_image_size(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run.root, run, ignore=shutil.ignore_patterns("checkpoints", "export"))
    config = json.loads((run / "config.json").read_text())
    config["data"]["image_size"] = 96
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunError, match="the model takes 64 px images but .*config.json says data.image_size = 96"):
        pneumoscan.load(run)


def test_explain_streams_one_batch_at_a_time(tiny_run, xrays, tmp_path, monkeypatch):
    import pneumoscan.inference.predictor as predictor_module
    from pneumoscan.inference.explain import iter_explain

    loaded = []
    real = predictor_module.load_image
    monkeypatch.setattr(predictor_module, "load_image", lambda s, size, name=None: loaded.append(name) or real(s, size, name))
    folder = tmp_path / "in"
    folder.mkdir()
    for i, src in enumerate(xrays * 3):  # 12 images
        shutil.copy(src, folder / f"x{i:02d}.jpeg")
    batches = iter_explain(tiny_run.root, [folder], tmp_path / "out", batch_size=5)
    first = next(batches)
    assert len(first) == 5 and len(loaded) == 5  # nothing beyond the first batch was read
    rest = list(batches)
    assert [len(t) for t in rest] == [5, 2] and len(loaded) == 12
    table = pd.concat([first, *rest])
    assert all(Path(p).is_file() for p in table["heatmap_png"])
    # The same labelling code as predict: the same probabilities and labels.
    predicted = pneumoscan.load(tiny_run.root).predict([folder])
    np.testing.assert_allclose(table["probability"].to_numpy(), predicted["probability"].to_numpy(), atol=1e-6)
    assert list(table["label"]) == list(predicted["label"])


def test_open_run_reads_a_run_back(tiny_run, tmp_path):
    run = pneumoscan.open_run(tiny_run.root)
    assert run.history()["epoch"].tolist() == [1, 2]
    assert set(run.predictions()["split"]) >= {"val", "test"}
    with pytest.raises(RunError, match="config.json: not found"):
        pneumoscan.open_run(tmp_path)


def test_load_data_matches_what_training_used(tiny_run, shared_data):
    from conftest import TINY_OVERRIDES

    data = pneumoscan.load_data(shared_data, TINY_OVERRIDES)
    splits = pd.read_csv(tiny_run.splits_file)
    assert data.counts()["test"] == {"NORMAL": 40, "PNEUMONIA": 40}
    assert list(data.splits["path"]) == list(splits["path"])
    assert data.images["val"].shape[1:] == (64, 64)


def test_named_configs_are_found_by_name_and_installed_with_the_package(tmp_path):
    from pneumoscan.config import named_configs, resolve

    assert {"default", "fast", "quick"} <= set(named_configs())
    assert resolve("default") == resolve()
    assert resolve("quick").model.name == "pneumonet_small"
    with pytest.raises(pneumoscan.config.ConfigError, match="not a named config: default, fast, quick"):
        resolve("no-such-config")
    # A wheel built from the source holds the configs, the page and the report template.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(Path(__file__).resolve().parents[1])], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("pneumoscan-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("pneumoscan/configs/default.toml", "pneumoscan/configs/quick.toml", "pneumoscan/configs/fast.toml",
                   "pneumoscan/deploy/static/index.html", "pneumoscan/report/templates/report.html.j2"):
        assert needed in names, needed


def test_sixteen_bit_images_follow_the_exported_contract(tiny_run, tmp_path):
    """preprocessing.json says exactly what the loader does with 16-bit images."""
    from pneumoscan.imaging.loader import PREPROCESSING, load_image
    from pneumoscan.inference.contract import build_contract

    contract = build_contract(tiny_run)
    for key, text in PREPROCESSING.items():
        assert contract["preprocessing"][key] == text
    assert "65535 = white" in contract["preprocessing"]["color"]
    assert "under 4096" in contract["preprocessing"]["color"]
    # Full-range 16-bit: scaled by the bit depth (a mid-gray stays mid-gray, whatever the image's own range).
    full = np.full((64, 64), 32768, np.uint16)
    full[:, :32] = 40000
    png = tmp_path / "full.png"
    Image.fromarray(full).save(png)
    pixels = load_image(png, 64).array
    assert pixels[0, 0] == round(40000 / 65535 * 255) and pixels[0, 63] == round(32768 / 65535 * 255)
    # Raw detector values (all under 4096): stretched to the image's own min..max.
    raw = np.full((64, 64), 1000, np.uint16)
    raw[:, :32] = 3000
    Image.fromarray(raw).save(png)
    pixels = load_image(png, 64).array
    assert pixels[0, 0] == 255 and pixels[0, 63] == 0
    buffer = io.BytesIO()
    Image.fromarray(raw).save(buffer, format="PNG")
    np.testing.assert_array_equal(load_image(buffer.getvalue(), 64).array, pixels)  # bytes: the same pixels
    np.testing.assert_array_equal(load_image(raw, 64).array, pixels)  # a uint16 array: the same pixels
    np.testing.assert_array_equal(load_image(raw.astype(">u2"), 64).array, pixels)  # big-endian too
