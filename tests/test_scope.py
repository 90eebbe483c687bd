"""The out-of-scope score on real images: fitted on the tiny run's own features, adult X-rays
and non-chest images score far higher than the Kermany test X-rays, and the score inside the
graph (what the ONNX export holds) equals the numpy one."""
from __future__ import annotations

import numpy as np
import pytest

from pneumoscan.evaluation.scope import Scope, fit_model_scope, fit_scope
from pneumoscan.imaging import load_image


@pytest.fixture(scope="module")
def fitted(tiny_run, shared_data):
    import pneumoscan
    from conftest import TINY_OVERRIDES
    from pneumoscan.models import load_run_model

    model = load_run_model(tiny_run)
    data = pneumoscan.load_data(shared_data, TINY_OVERRIDES)
    from pneumoscan.models.features import extract_features

    features = {s: extract_features(model, data.images[s]) for s in ("val", "test")}
    scope, summary = fit_model_scope(model, data.images["train"], data.labels["train"], features)
    return model, scope, summary, data


def test_the_threshold_flags_about_the_quantile_of_validation(fitted):
    _, scope, summary, _ = fitted
    assert summary["quantile"] == 0.95
    assert 0.02 <= summary["flagged"]["val"] <= 0.08
    assert scope.threshold > 0 and len(scope.means) >= 2  # several resolution levels


def test_adult_and_non_chest_images_score_higher_than_kermany_test(fitted, shared_data):
    from pneumoscan.models.features import extract_features

    model, scope, summary, data = fitted
    size = model.inputs[0].shape[1]
    adults = sorted((shared_data / "adult_cxr_ccby").rglob("*.png"))[:40]
    adult_scores = scope.score(extract_features(model, np.stack([load_image(p, size).array for p in adults])))
    test_scores = scope.score(extract_features(model, data.images["test"]))
    from sklearn.metrics import roc_auc_score

    auc = roc_auc_score(np.r_[np.zeros(len(test_scores)), np.ones(len(adult_scores))], np.r_[test_scores, adult_scores])
    assert auc > 0.8, auc  # a two-epoch 64 px model whose statistics come from 80 images
    noise = np.random.default_rng(0).integers(0, 256, (4, size, size), dtype=np.uint8)
    flagged = scope.score(extract_features(model, noise)) > scope.threshold
    assert flagged.all()


def test_save_load_and_the_in_graph_score_agree(fitted, tmp_path):
    from pneumoscan.models.features import extract_features, scoped_model

    model, scope, _, data = fitted
    scope.save(tmp_path / "scope.npz")
    again = Scope.load(tmp_path / "scope.npz")
    images = data.images["test"][:16]
    features = extract_features(model, images)
    np.testing.assert_allclose(again.score(features), scope.score(features))
    assert again.threshold == scope.threshold
    from pneumoscan.evaluation.scope import ORIENTATION_WEIGHT

    assert scope.wrong is not None  # every fitted scope has the orientation term
    graph = scoped_model(model, scope.means, scope.whiteners, scope.scales, scope.wrong, ORIENTATION_WEIGHT)
    probs, score = graph.predict_on_batch(images.astype("float32")[..., None])
    np.testing.assert_allclose(score, scope.score(features), rtol=2e-3)
    np.testing.assert_allclose(probs, model.predict_on_batch(images.astype("float32")[..., None]), atol=1e-6)


def test_fit_scope_on_known_gaussians():
    rng = np.random.default_rng(0)
    train = [rng.normal(0, 1, (400, 3))]
    labels = np.r_[np.zeros(200), np.ones(200)]
    train[0][200:] += 5  # two classes, five apart
    val = [np.r_[rng.normal(0, 1, (100, 3)), rng.normal(0, 1, (100, 3)) + 5]]
    scope = fit_scope(train, labels, val, quantile=0.9)
    far = scope.score([np.full((1, 3), 40.0)])
    near = scope.score([np.zeros((1, 3))])
    assert far[0] > scope.threshold > near[0]
    assert np.mean(scope.score(val) > scope.threshold) == pytest.approx(0.1, abs=0.01)


def test_every_training_run_fits_and_saves_its_scope(tiny_run):
    metrics = tiny_run.metrics()
    scope = Scope.load(tiny_run.scope_file)
    assert metrics["scope"]["threshold"] == pytest.approx(scope.threshold)
    assert metrics["scope"]["quantile"] == pytest.approx(0.95)
    assert set(metrics["scope"]["flagged"]) >= {"val", "test"}
    assert 0.0 <= metrics["scope"]["flagged"]["test"] <= 1.0


def test_predict_reports_the_scope_and_abstains_on_request(tiny_run, shared_data, tmp_path):
    import pneumoscan

    adults = sorted((shared_data / "adult_cxr_ccby").rglob("*.png"))[:30]
    noise = np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)
    model = pneumoscan.load(tiny_run.root)
    assert model.scope_threshold == pytest.approx(tiny_run.metrics()["scope"]["threshold"])
    table = model.predict([*adults, noise])
    assert table["ood_score"].notna().all() and set(table["in_scope"]) <= {True, False}
    assert table["in_scope"].iloc[-1] == False  # noqa: E712  (noise is never a chest X-ray)
    flagged = table[table["in_scope"] == False]  # noqa: E712
    assert len(flagged) >= 1 and all("outside the model's scope" in w for w in flagged["warning"])
    assert (flagged["label"] != "").all()  # labelled unless asked to abstain
    abstaining = pneumoscan.load(tiny_run.root, abstain=True).predict([*adults, noise])
    assert (abstaining.loc[abstaining["in_scope"] == False, "label"] == "").all()  # noqa: E712
    assert abstaining["probability"].notna().all()  # the probability is still shown


def test_the_onnx_export_keeps_the_scope(tiny_run, shared_data):
    import pneumoscan

    images = [*sorted((shared_data / "chest_xray_kermany_224" / "test" / "NORMAL").glob("*.jpeg"))[:6],
              *sorted((shared_data / "adult_cxr_ccby").rglob("*.png"))[:6]]
    keras_table = pneumoscan.load(tiny_run.root).predict(images)
    onnx_table = pneumoscan.load(tiny_run.root, engine="onnx").predict(images)
    np.testing.assert_allclose(onnx_table["ood_score"], keras_table["ood_score"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(onnx_table["probability"], keras_table["probability"], atol=1e-4)
    assert list(onnx_table["in_scope"]) == list(keras_table["in_scope"])
    import json

    contract = json.loads((tiny_run.export_dir / "preprocessing.json").read_text())
    assert contract["scope"]["threshold"] == pytest.approx(tiny_run.metrics()["scope"]["threshold"])
    assert contract["exports"]["onnx"]["scope_sha256"] == contract["scope_sha256"]


def test_the_app_says_when_an_image_is_out_of_scope(tiny_run, shared_data):
    from fastapi.testclient import TestClient

    from pneumoscan.deploy.serve import create_app

    client = TestClient(create_app(tiny_run.root))
    assert client.get("/health").json()["scope_threshold"] == pytest.approx(tiny_run.metrics()["scope"]["threshold"])
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64), dtype=np.uint8)).save(buffer, format="PNG")
    response = client.post("/api/predict", files=[("file", ("noise.png", buffer.getvalue(), "image/png"))])
    (result,) = response.json()["results"]
    assert result["in_scope"] is False and result["ood_score"] > result["threshold"] * 0 and result["label"]
    assert any("outside the model's scope" in w for w in result["warnings"])


def test_the_orientation_term_on_known_gaussians():
    rng = np.random.default_rng(0)
    train = [rng.normal(0, 1, (400, 3))]
    labels = np.r_[np.zeros(200), np.ones(200)]
    val = [rng.normal(0, 1, (200, 3))]
    turned = [[rng.normal(0, 1, (100, 3)) + [0, 0, 4]]]  # the "upside-down" images sit nearby, on one side
    plain = fit_scope(train, labels, val, quantile=0.95)
    oriented = fit_scope(train, labels, val, quantile=0.95, wrong_features=turned)
    toward, away = np.array([[0.0, 0.0, 2.5]]), np.array([[0.0, 0.0, -2.5]])
    # Equally far from the training data either way: the plain score cannot tell them apart.
    assert plain.score([toward])[0] == pytest.approx(plain.score([away])[0], rel=0.1)
    assert plain.score([toward])[0] < plain.threshold
    # Nearer the upside-down images than the upright ones: far above the threshold.
    assert oriented.score([toward])[0] > 3 * oriented.threshold
    assert oriented.score([away])[0] == pytest.approx(plain.score([away])[0])
    assert oriented.score([away])[0] < oriented.threshold
    assert np.mean(oriented.score(val) > oriented.threshold) == pytest.approx(0.05, abs=0.01)


def test_upside_down_x_rays_score_higher_than_upright_ones(fitted):
    model, scope, _, data = fitted
    from pneumoscan.models.features import extract_features

    upright = scope.score(extract_features(model, data.images["test"]))
    turned = scope.score(extract_features(model, data.images["test"][:, ::-1, ::-1]))
    assert np.median(turned) > np.median(upright)
    assert np.mean(turned > scope.threshold) > np.mean(upright > scope.threshold)
