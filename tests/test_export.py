"""Export to ONNX / SavedModel / TFLite and the ONNX Runtime engine, on the shared tiny run."""
import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest

import pneumoscan
from pneumoscan import cli
from pneumoscan.imaging import load_image
from pneumoscan.deploy.export import export
from pneumoscan.errors import ExportError
from pneumoscan.inference.engines import OnnxEngine, ensure_onnx, load_engine
from pneumoscan.models import load_run_model
from pneumoscan.inference.predictor import Predictor
from pneumoscan.runs import Run

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def test_images(kermany_dir):
    """50 real test-split X-rays, both classes."""
    paths = [p for cls in ("NORMAL", "PNEUMONIA") for p in sorted((kermany_dir / "test" / cls).glob("*.jpeg"))[:25]]
    assert len(paths) == 50
    return paths


@pytest.fixture(scope="module")
def arrays(tiny_run, test_images):
    size = tiny_run.config().data.image_size
    return np.stack([load_image(p, size).array for p in test_images])


@pytest.fixture(scope="module")
def keras_softmax(tiny_run, arrays):
    model = load_run_model(tiny_run)
    return np.asarray(model(arrays[..., None].astype(np.float32), training=False))


@pytest.fixture(scope="module")
def export_dir(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    for fmt in ("onnx", "savedmodel", "tflite"):
        export(tiny_run.root, fmt, out)
    return out


def test_onnx_matches_keras_on_real_images(export_dir, arrays, keras_softmax):
    onnx, scores = OnnxEngine(export_dir / "model.onnx")(arrays[..., None].astype(np.float32))
    assert onnx.shape == (50, 2) and scores.shape == (50,)  # softmax, and the out-of-scope score
    np.testing.assert_allclose(onnx, keras_softmax, atol=TOLERANCE, rtol=0)
    # The model is not constant: the check above would be empty if every image got the same output.
    assert np.ptp(keras_softmax[:, 1]) > 1e-4


def test_onnx_engine_predictor_matches_keras_calibrated(tiny_run, arrays):
    keras_p = Predictor.from_run(tiny_run.root).probabilities(arrays)
    onnx_p = Predictor.from_run(tiny_run.root, engine="onnx").probabilities(arrays)
    np.testing.assert_allclose(onnx_p, keras_p, atol=TOLERANCE, rtol=0)


def test_the_exported_graph_normalizes_each_image_as_its_contract_says(export_dir, arrays):
    """kind "image": a brightness and contrast change of the raw input leaves the probabilities as they are,
    so a program that feeds the ONNX model must not normalize the pixels itself."""
    contract = json.loads((export_dir / "preprocessing.json").read_text())
    assert contract["input"]["normalization"]["kind"] == "image"
    engine = OnnxEngine(export_dir / "model.onnx")
    x = arrays[:16, ..., None].astype(np.float32)
    probs, _ = engine(x)
    darker_flatter, _ = engine(0.6 * x + 40.0)  # stays inside 0..255
    np.testing.assert_allclose(darker_flatter[:, 1], probs[:, 1], atol=1e-3, rtol=0)
    assert np.ptp(probs[:, 1]) > 1e-4  # not a constant model


def test_savedmodel_export_loads_and_predicts_like_keras(export_dir, arrays, keras_softmax):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(export_dir / "savedmodel"))
    out = np.asarray(loaded.serve(tf.constant(arrays[..., None], dtype=tf.float32)))
    np.testing.assert_allclose(out, keras_softmax, atol=TOLERANCE, rtol=0)


def test_tflite_export_loads_and_predicts_like_keras(export_dir, arrays, keras_softmax):
    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter is deprecated in favour of LiteRT, still works
        interpreter = tf.lite.Interpreter(model_path=str(export_dir / "model.tflite"))
    inp = interpreter.get_input_details()[0]
    assert list(inp["shape_signature"]) == [-1, 64, 64, 1]
    interpreter.resize_tensor_input(inp["index"], [len(arrays), 64, 64, 1])
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], arrays[..., None].astype(np.float32))
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(out, keras_softmax, atol=TOLERANCE, rtol=0)


def test_preprocessing_contract(export_dir, tiny_run):
    contract = json.loads((export_dir / "preprocessing.json").read_text())
    metrics, cfg = tiny_run.metrics(), tiny_run.config()
    assert contract["input"]["shape"] == [None, cfg.data.image_size, cfg.data.image_size, 1]
    assert contract["input"]["channels"] == 1
    assert contract["input"]["dtype"] == "float32"
    assert contract["input"]["value_range"] == [0, 255]
    assert contract["input"]["normalization"]["kind"] == "image"  # the tiny run's pneumonet default
    assert contract["preprocessing"]["image_size"] == cfg.data.image_size
    assert "grayscale" in contract["preprocessing"]["color"]
    assert "without keeping the aspect ratio" in contract["preprocessing"]["resize"]
    assert contract["threshold"]["value"] == pytest.approx(metrics["threshold"]["value"])
    assert contract["calibration"]["temperature"] == pytest.approx(metrics["calibration"]["temperature"])
    assert contract["output"]["class_names"] == ["NORMAL", "PNEUMONIA"]
    assert contract["run_id"] == tiny_run.root.name
    assert contract["pneumoscan_version"] == pneumoscan.__version__
    sha = tiny_run.model_sha256()
    assert {fmt: e["file"] for fmt, e in contract["exports"].items()} == {
        "onnx": "model.onnx", "savedmodel": "savedmodel", "tflite": "model.tflite"}
    assert all(e["model_sha256"] == sha for e in contract["exports"].values())


def test_onnx_cache_is_reused_then_refreshed_when_the_model_changes(tiny_run, arrays, tmp_path):
    run_copy = tmp_path / "run"
    shutil.copytree(tiny_run.root, run_copy, ignore=shutil.ignore_patterns("checkpoints", "export"))
    run = Run(run_copy)
    first = ensure_onnx(run)
    assert first == run_copy / "export" / "model.onnx"
    stamp = first.stat().st_mtime_ns
    assert ensure_onnx(run).stat().st_mtime_ns == stamp  # cached: not exported again

    model = load_run_model(run)  # a retrained model: same run, different weights
    dense = model.get_layer("probs")
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel, bias + np.array([1.0, -1.0], dtype=bias.dtype)])
    model.save(run.model_file)
    engine = load_engine(run, "onnx")  # must notice the new model.keras and export it again
    x = arrays[:8, ..., None].astype(np.float32)
    probs, _ = engine(x)  # the run has a scope: its score is the second output
    np.testing.assert_allclose(probs, np.asarray(model(x, training=False)), atol=TOLERANCE, rtol=0)
    recorded = json.loads((run_copy / "export" / "preprocessing.json").read_text())["exports"]["onnx"]
    assert recorded["model_sha256"] == run.model_sha256()


def test_unknown_format_and_missing_run_are_clear_errors(tiny_run, tmp_path, capsys):
    with pytest.raises(ExportError, match="unknown export format 'pt'"):
        export(tiny_run.root, "pt", tmp_path)
    assert cli.main(["export", str(tmp_path / "nothing"), "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "config.json: not found" in err and "Traceback" not in err


def test_predict_cli_onnx_engine_matches_keras(tiny_run, test_images, tmp_path, capsys):
    bad = tmp_path / "broken.jpeg"
    bad.write_bytes(b"not an image")
    inputs = [str(p) for p in test_images[:10]] + [str(bad)]
    tables = {}
    for engine in ("keras", "onnx"):
        out = tmp_path / f"{engine}.csv"
        status = cli.main(["predict", str(tiny_run.root), *inputs, "--engine", engine, "-o", str(out)])
        assert status == 1  # the broken file fails, the others are predicted
        tables[engine] = pd.read_csv(out, keep_default_na=False)
    keras, onnx = tables["keras"], tables["onnx"]
    assert list(keras["path"]) == list(onnx["path"]) == inputs
    good = keras["error"] == ""
    assert good.sum() == 10 and (onnx["error"] == "").sum() == 10
    assert "not a readable image" in onnx.loc[~good, "error"].item()
    kp, op = keras.loc[good, "probability"].astype(float), onnx.loc[good, "probability"].astype(float)
    np.testing.assert_allclose(op, kp, atol=TOLERANCE, rtol=0)
    # Labels agree wherever the probability is not within the tolerance of the threshold.
    threshold = tiny_run.metrics()["threshold"]["value"]
    clear = (kp - threshold).abs() > TOLERANCE
    assert (keras.loc[good, "label"][clear] == onnx.loc[good, "label"][clear]).all()
