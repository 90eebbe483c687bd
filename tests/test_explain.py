"""Grad-CAM on real chest X-rays: shape and range, determinism, the weight-randomisation
sanity check (Adebayo et al., 2018), every kind of architecture, layer choice, and the
explain command's per-image PNGs and error rows."""
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from pneumoscan.models import load_run_model
from pneumoscan.cli import main
from pneumoscan.config import ModelConfig
from pneumoscan.imaging import load_image
from pneumoscan.inference.explain import explain_paths
from pneumoscan.report.gradcam import find_last_conv_layer, gradcam, overlay, spatial_layer_names
from pneumoscan.models import build_model
from pneumoscan.inference.predictor import Predictor

SIZE = 64  # the tiny_run fixture's image size


@pytest.fixture(scope="module")
def xray_paths(tiny_run):
    """Three test X-rays of each class, those the tiny model scores most confidently as pneumonia:
    a model trained for two epochs has evidence to show on those, whichever way its training went."""
    import pandas as pd

    test = pd.read_csv(tiny_run.predictions_file).query("split == 'test'")
    picked = [test[test["label"] == label].nlargest(3, "probability")["path"] for label in (0, 1)]
    return [Path(p) for p in pd.concat(picked)]


@pytest.fixture(scope="module")
def xrays(xray_paths):
    return np.stack([load_image(p, SIZE).array for p in xray_paths])


@pytest.fixture(scope="module")
def trained(tiny_run):
    return load_run_model(tiny_run)


@pytest.fixture(scope="module")
def trained_maps(trained, xrays):
    return gradcam(trained, xrays)


def _check_maps(maps, n):
    assert maps.shape == (n, SIZE, SIZE) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0.0 and maps.max() <= 1.0
    peaks = maps.max(axis=(1, 2))
    assert np.all((peaks == 0) | np.isclose(peaks, 1.0)), peaks  # each map scaled to its own maximum


def test_maps_have_the_image_size_values_in_0_1_and_are_deterministic(trained, xrays, trained_maps):
    _check_maps(trained_maps, len(xrays))
    assert (trained_maps.max(axis=(1, 2)) > 0).any(), "a trained model finds pneumonia evidence somewhere"
    assert np.array_equal(trained_maps, gradcam(trained, xrays))


def test_map_is_where_the_evidence_is_and_a_class_without_evidence_gets_zeros(xrays):
    # A model whose pneumonia score is the mean brightness: its feature map is the image itself,
    # so Grad-CAM must give back the X-ray scaled to its maximum.
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(1, 1, use_bias=False, kernel_initializer="ones", name="brightness")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    head = keras.layers.Dense(2, activation="softmax", name="probs")
    model = keras.Model(inputs, head(x))
    head.set_weights([np.array([[-4.0, 4.0]], dtype=np.float32), np.zeros(2, dtype=np.float32)])

    maps = gradcam(model, xrays)
    expected = xrays / xrays.max(axis=(1, 2), keepdims=True).astype(np.float32)
    np.testing.assert_allclose(maps, expected, atol=1e-4)
    # Brightness is evidence *against* NORMAL everywhere: nothing to show, and no NaN from 0/0.
    assert np.array_equal(gradcam(model, xrays, class_index=0), np.zeros_like(maps))


def test_map_changes_when_the_weights_are_randomised(trained, xrays, trained_maps):
    keras.utils.set_random_seed(1)
    randomised = keras.models.clone_model(trained)  # same architecture, freshly initialised weights
    before, after = trained_maps, gradcam(randomised, xrays)
    assert np.abs(before - after).mean() > 0.15
    # Where both maps show something they must not show the same thing. The bound is loose
    # because at 64 px the last feature map is 2x2: any two maps are smooth, similar blobs.
    both = (before.max(axis=(1, 2)) > 0) & (after.max(axis=(1, 2)) > 0)
    assert both.any()
    assert np.corrcoef(before[both].ravel(), after[both].ravel())[0, 1] < 0.95


@pytest.mark.parametrize("name", ["seed_cnn", "pneumonet", "mobilenetv3small"])
def test_every_kind_of_architecture(name, xrays):
    keras.utils.set_random_seed(0)
    # x / 255 input scaling: at random initialisation, per-image standardization can leave every
    # ReLU of seed_cnn's dense layer off for an image, and then no gradient reaches any map.
    model = build_model(ModelConfig(name=name, width=8, normalize="scale"), SIZE)
    layer = find_last_conv_layer(model)
    if name == "seed_cnn":
        assert layer == "bn4"
    elif name == "pneumonet":
        assert layer == "stage4_block1_out"
    else:  # nested keras.applications backbone: the map its global pooling reads
        backbone = next(op for op in model.layers if isinstance(op, keras.Model))
        assert backbone.get_layer(layer).output is backbone.get_layer("avg_pool").input
        assert spatial_layer_names(model)[-1] == f"{backbone.name}/{layer}"
    maps = gradcam(model, xrays[:4], class_index=1)
    _check_maps(maps, 4)
    # Untrained, a model may see evidence only against pneumonia; but never for neither class.
    either = maps + gradcam(model, xrays[:4], class_index=0)
    assert np.allclose(either.max(axis=(1, 2)), 1.0)


def test_named_layer_and_unknown_layer(trained, xrays, trained_maps):
    earlier = gradcam(trained, xrays, layer="stage3_block1_out")
    _check_maps(earlier, len(xrays))
    assert not np.array_equal(earlier, trained_maps)
    with pytest.raises(ValueError, match=r"no spatial layer named 'no_such_layer'.*stage4_block1_out"):
        gradcam(trained, xrays, layer="no_such_layer")


def test_overlay_is_an_rgb_image_of_the_xray(xrays):
    heat = np.zeros((SIZE, SIZE), dtype=np.float32)
    heat[:8, :8] = 1.0
    rgb = overlay(xrays[0], heat, alpha=0.4)
    assert rgb.shape == (SIZE, SIZE, 3) and rgb.dtype == np.uint8
    assert rgb[:8, :8, 0].mean() > rgb[:8, :8, 2].mean()  # jet: hot is red
    assert rgb[20:, 20:, 2].mean() > rgb[20:, 20:, 0].mean()  # cold is blue
    assert np.array_equal(overlay(xrays[0], heat, alpha=0.0), np.repeat(xrays[0][..., None], 3, axis=2))


def test_explain_paths_writes_a_png_per_good_image_and_an_error_row_per_bad_one(tiny_run, xray_paths, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    twins = [shutil.copy(xray_paths[0], tmp_path / d / "same.jpeg") for d in ("a", "b")]
    corrupt = tmp_path / "corrupt.jpeg"
    corrupt.write_text("not an image")
    inputs = [str(xray_paths[3]), str(corrupt), *map(str, twins), str(tmp_path / "missing.jpeg")]
    predictor = Predictor.from_run(tiny_run.root)

    table = explain_paths(predictor, inputs, tmp_path / "out")

    assert list(table.columns) == ["path", "probability", "label", "heatmap_png", "error"]
    assert len(table) == 5
    bad = table[table["error"] != ""]
    assert set(bad["path"]) == {str(corrupt), str(tmp_path / "missing.jpeg")}
    assert (bad["heatmap_png"] == "").all() and bad["probability"].isna().all()
    assert "not a readable image" in bad.loc[bad["path"] == str(corrupt), "error"].item()
    good = table[table["error"] == ""]
    pngs = sorted((tmp_path / "out").glob("*.png"))
    assert len(pngs) == 3 and sorted(good["heatmap_png"]) == sorted(map(str, pngs))  # twins do not overwrite
    for png in pngs:
        with Image.open(png) as im:
            assert im.format == "PNG" and im.width > SIZE
    expected = predictor.predict(list(good["path"]))
    np.testing.assert_allclose(good["probability"], expected["probability"], rtol=1e-6)
    assert list(good["label"]) == list(expected["label"])


def test_cli_explain(tiny_run, xray_paths, tmp_path, capsys):
    good = [str(p) for p in xray_paths[2:4]]
    assert main(["explain", str(tiny_run.root), *good, "--out", str(tmp_path / "ok")]) == 0
    assert len(list((tmp_path / "ok").glob("*.png"))) == 2

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert main(["explain", str(tiny_run.root), str(broken), good[0], "--out", str(tmp_path / "mixed")]) == 1
    assert len(list((tmp_path / "mixed").glob("*.png"))) == 1
    assert "1 of 2 inputs failed" in capsys.readouterr().err

    assert main(["explain", str(tiny_run.root), good[0], "--out", str(tmp_path / "x"), "--layer", "nope"]) == 2
    assert "no spatial layer named 'nope'" in capsys.readouterr().err
