"""The robust-model levers: shift-stress validation, the accuracy ceiling, acquisition
augmentation and per-image standardization inside the model."""
from __future__ import annotations

import numpy as np
import pytest

from pneumoscan.evaluation.metrics import accuracy_ceiling
from pneumoscan.evaluation.shift import SHIFTS, cached_shifted_copies, shift_report, shifted_copies
from pneumoscan.imaging import load_image


@pytest.fixture(scope="module")
def xrays(kermany_dir) -> np.ndarray:
    files = [f for cls in ("NORMAL", "PNEUMONIA") for f in sorted((kermany_dir / "val" / cls).glob("*.jpeg"))[:3]]
    return np.stack([load_image(f, 96).array for f in files])


def test_every_change_is_deterministic_and_changes_the_images(xrays):
    first, again, other = shifted_copies(xrays, seed=0), shifted_copies(xrays, seed=0), shifted_copies(xrays, seed=1)
    assert list(first) == list(SHIFTS) and all("." not in name for name in SHIFTS)
    for name, images in first.items():
        assert images.shape == xrays.shape and images.dtype == np.uint8, name
        assert np.array_equal(images, again[name]), name
        assert np.abs(images.astype(int) - xrays).mean() > 0.5, f"{name} leaves the images as they were"
    assert not np.array_equal(first["noise"], other["noise"])  # the seed matters where chance does


def test_framing_changes_do_what_they_say(xrays):
    copies = shifted_copies(xrays)
    edge = int(round(0.1 * 96))
    assert (copies["collimation"][:, :, :edge] == 0).all() and (copies["collimation"][:, :edge] == 0).all()
    assert (copies["zoom_out"][:, 0, :] == 0).all()  # a black border appears around the film
    bright = copies["gamma_low"].astype(float).mean() > xrays.mean() > copies["gamma_high"].astype(float).mean()
    assert bright


def test_the_copies_are_cached_on_disk(xrays, tmp_path, monkeypatch):
    import pneumoscan.evaluation.shift as shift

    monkeypatch.setenv("PNEUMOSCAN_CACHE", str(tmp_path))
    built = cached_shifted_copies(xrays)
    assert len(list((tmp_path / "shift").glob("*.npz"))) == 1
    monkeypatch.setattr(shift, "shifted_copies", lambda *a: pytest.fail("rebuilt instead of read from the cache"))
    again = cached_shifted_copies(xrays)
    assert all(np.array_equal(built[k], again[k]) for k in SHIFTS)


def test_shift_report_pools_and_names_the_worst():
    labels = np.array([0, 0, 1, 1])
    probs = {"a": np.array([0.1, 0.2, 0.8, 0.9]), "b": np.array([0.6, 0.7, 0.8, 0.9]), "c": np.array([0.9, 0.2, 0.3, 0.8])}
    report = shift_report(labels, probs)
    assert report["roc_auc"] == {"a": 1.0, "b": 1.0, "c": 0.5}
    assert report["worst_shift"] == "c" and report["worst_roc_auc"] == 0.5
    assert report["mean_roc_auc"] == pytest.approx(2.5 / 3)
    assert report["pooled_roc_auc"] < report["mean_roc_auc"]  # b's normals outrank a's pneumonias when pooled


def test_the_accuracy_ceiling_is_the_best_threshold_on_the_split():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.4, 0.7, 0.35, 0.8, 0.9])
    ceiling = accuracy_ceiling(y, p)
    # Thresholds: at 0.8 -> 5/6 (only 0.35 missed); at 0.35 -> 4/6; nothing beats 5/6.
    assert ceiling["accuracy"] == pytest.approx(5 / 6) and ceiling["threshold"] == pytest.approx(0.8)
    assert np.isnan(accuracy_ceiling([1, 1], [0.2, 0.3])["accuracy"])


def test_training_runs_report_stress_and_ceiling(tiny_run):
    metrics = tiny_run.metrics()
    stress = metrics["shift_stress"]
    assert set(stress["roc_auc"]) == set(SHIFTS) and stress["n"] == metrics["val"]["n"]
    assert min(stress["roc_auc"].values()) == stress["worst_roc_auc"]
    assert 0 <= stress["pooled"]["specificity"] <= 1
    for split in ("val", "test"):
        assert metrics[split]["accuracy_ceiling"]["accuracy"] >= metrics[split]["accuracy"]
    html = tiny_run.report_file.read_text()
    assert "Shift-stress validation" in html and 'data-metric="shift_stress.pooled_roc_auc"' in html
    assert 'data-metric="test.accuracy_ceiling.accuracy"' in html


def test_acquisition_augmentation_changes_training_batches_only():
    import keras

    from pneumoscan.config import AugmentConfig
    from pneumoscan.imaging.augment import IntensityJitter, RandomBorders, build_augmenter

    x = np.random.default_rng(0).uniform(20, 235, (8, 64, 64, 1)).astype("float32")
    augmenter = build_augmenter(AugmentConfig(rotation_degrees=0, zoom=0, translate=0, contrast=0, brightness=0,
                                              zoom_in=0.25, borders=0.12, gamma=0.5, noise=6, blur=0.3,
                                              sharpness=0.3, erasing=0.25), seed=1)
    names = [layer.name for layer in augmenter.layers]
    assert any("zoom" in n for n in names) and any("borders" in n for n in names)
    out = np.asarray(augmenter(x, training=True))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 255 and not np.allclose(out, x)
    np.testing.assert_array_equal(np.asarray(augmenter(x, training=False)), x)
    borders = np.asarray(RandomBorders(0.2, seed=3)(np.full((64, 32, 32, 1), 100.0, "float32"), training=True))
    blanked = (borders == 0).reshape(64, -1).mean(axis=1)
    assert (blanked == 0).any() and (blanked > 0).any() and blanked.max() < 0.7  # about half the films, up to 20% a side
    jitter = np.asarray(IntensityJitter(gamma=0.5, seed=4)(np.full((16, 8, 8, 1), 128.0, "float32"), training=True))
    per_image = jitter.reshape(16, -1).mean(axis=1)
    lo, hi = 255 * (128 / 255) ** 1.5, 255 * (128 / 255) ** (1 / 1.5)
    assert lo - 0.01 <= per_image.min() < per_image.max() <= hi + 0.01
    assert isinstance(keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(RandomBorders(0.1))),
                      RandomBorders)


def test_per_image_standardization_makes_exposure_irrelevant():
    from pneumoscan.config import ModelConfig
    from pneumoscan.models import build_model

    model = build_model(ModelConfig(name="pneumonet_small", width=8, normalize="image"), 64)
    x = np.random.default_rng(0).uniform(30, 200, (4, 64, 64, 1)).astype("float32")
    darker = 0.6 * x + 20  # another exposure and contrast of the same films
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(model(darker)), atol=1e-5)
    plain = build_model(ModelConfig(name="pneumonet_small", width=8, normalize="scale"), 64)
    assert "standardize" in [layer.name for layer in model.layers] and "scale" in [l.name for l in plain.layers]
    with pytest.raises(ValueError, match="scales its input itself"):
        build_model(ModelConfig(name="mobilenetv3small", normalize="image"), 64)
