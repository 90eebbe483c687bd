"""Export a trained run's model to ONNX, a TensorFlow SavedModel or TFLite.

Every export folder also gets ``preprocessing.json``: the contract a program outside
pneumoscan needs to use the model correctly (input size and type, how images are turned
into that input, how to calibrate the output, the decision threshold, the class names).

The model takes the preprocessed image itself, (N, S, S, 1) float32 in 0..255, and scales
it inside, so a caller only has to reproduce grayscale + squashed resize.
"""
from __future__ import annotations

import hashlib
import shutil
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path

from .paths import atomic_write, atomic_write_json
from .runs import Run, RunError

FORMATS = ("onnx", "savedmodel", "tflite")
MODEL_FILES = {"onnx": "model.onnx", "savedmodel": "savedmodel", "tflite": "model.tflite"}
CONTRACT_FILE = "preprocessing.json"
INPUT_NAME = "image"


class ExportError(RuntimeError):
    """An export could not be written; the message says which format and why."""


def default_export_dir(run: Run) -> Path:
    return run.root / "export"


def model_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_id(run: Run) -> str:
    """The run folder's name plus a short hash of its model.keras: names exactly one model."""
    if not run.model_file.is_file():
        raise RunError(f"{run.model_file}: not found; training of {run.root} has not finished")
    return f"{run.root.name}-{model_sha256(run.model_file)[:12]}"


def export(run_dir: str | Path, fmt: str, out: str | Path | None = None) -> Path:
    """Write ``run_dir``'s model in format ``fmt`` into ``out`` (default RUN/export/).

    Returns the path of the written model (a file, or a folder for a SavedModel);
    ``preprocessing.json`` is written beside it.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    run = Run(Path(run_dir))
    out_dir = Path(out) if out is not None else default_export_dir(run)
    contract = _contract(run)  # reads config/metrics first: a broken run fails before any work
    model = run.load_model()
    target = out_dir / MODEL_FILES[fmt]
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = {"onnx": _write_onnx, "savedmodel": _write_savedmodel, "tflite": _write_tflite}[fmt]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf2onnx and the TFLite converter warn about their own internals
            writer(model, target)
    except (ImportError, ModuleNotFoundError) as exc:
        raise ExportError(f"{fmt} export needs a package that is not installed ({exc}); "
                          "run `bash scripts/setup.sh`") from None
    except Exception as exc:  # converters raise many types; the user needs one line naming the format
        raise ExportError(f"{fmt} export of {run.model_file} failed: {type(exc).__name__}: {exc}") from None
    _record_export(out_dir, contract, fmt, target)
    return target


def ensure_onnx(run: Run) -> Path:
    """RUN/export/model.onnx, exported on first use and again whenever model.keras changes."""
    if not run.model_file.is_file():
        raise RunError(f"{run.model_file}: not found; training of {run.root} has not finished")
    out_dir = default_export_dir(run)
    target = out_dir / MODEL_FILES["onnx"]
    recorded = read_contract(out_dir).get("exports", {}).get("onnx", {})
    if target.is_file() and recorded.get("model_sha256") == model_sha256(run.model_file):
        return target
    return export(run.root, "onnx", out_dir)


def read_contract(out_dir: str | Path) -> dict:
    import json

    path = Path(out_dir) / CONTRACT_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError:
        return {}  # a damaged contract is rewritten by the next export


def _input_spec(model):
    import tensorflow as tf

    size = int(model.inputs[0].shape[1])
    # Batch left open (None): one file serves batch 1 and batch 32 alike.
    return [tf.TensorSpec((None, size, size, 1), tf.float32, name=INPUT_NAME)]


def _write_onnx(model, target: Path) -> None:
    # Keras 3 exports ONNX itself (through tf2onnx.convert.from_function on a traced
    # tf.function); tf2onnx.convert.from_keras does not work with Keras 3 models.
    atomic_write(target, lambda tmp: model.export(str(tmp), format="onnx", verbose=False,
                                                  input_signature=_input_spec(model)))


def _write_savedmodel(model, target: Path) -> None:
    # A folder cannot be renamed over an existing one atomically: build beside it, then swap.
    staging = Path(tempfile.mkdtemp(prefix=".tmp-savedmodel-", dir=target.parent))
    try:
        model.export(str(staging / "m"), format="tf_saved_model", verbose=False, input_signature=_input_spec(model))
        if target.exists():
            shutil.rmtree(target)
        (staging / "m").rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_tflite(model, target: Path) -> None:
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix=".tmp-tflite-", dir=target.parent) as staging:
        model.export(staging + "/m", format="tf_saved_model", verbose=False, input_signature=_input_spec(model))
        flatbuffer = tf.lite.TFLiteConverter.from_saved_model(staging + "/m").convert()
    atomic_write(target, lambda tmp: tmp.write_bytes(flatbuffer))


def _contract(run: Run) -> dict:
    from . import __version__
    from .data.preprocess import PREPROCESS_VERSION
    from .data.sources import CLASS_NAMES

    cfg, metrics = run.config(), run.metrics()
    size = cfg.data.image_size
    threshold = metrics["threshold"]
    return {
        "pneumoscan_version": __version__,
        "run_id": run.root.name,
        "model_sha256": model_sha256(run.model_file) if run.model_file.is_file() else None,
        "model_name": cfg.model.name,
        "input": {
            "name": INPUT_NAME, "shape": [None, size, size, 1], "dtype": "float32", "channels": 1,
            "value_range": [0, 255],
            "scaling": "inside the model: feed raw 0..255 pixel values, do not divide by 255",
        },
        "preprocessing": {
            "image_size": size, "color": "grayscale (8-bit; 16-bit stretched to its own min..max)",
            "resize": "squash to image_size x image_size without keeping the aspect ratio, bilinear",
            "reference": "pneumoscan.data.preprocess.load_preprocessed", "version": PREPROCESS_VERSION,
        },
        "output": {
            "shape": [None, 2], "meaning": "softmax over class_names; column 1 is the raw PNEUMONIA probability",
            "class_names": list(CLASS_NAMES), "positive_index": 1,
        },
        "calibration": {
            "temperature": float(metrics.get("calibration", {}).get("temperature", 1.0)),
            "formula": "p = 1 / (1 + exp(-logit(p_raw) / temperature)), logit(p) = ln(p / (1 - p))",
        },
        "threshold": {"value": float(threshold["value"]), "rule": threshold.get("rule"),
                      "applies_to": "calibrated probability: PNEUMONIA when p >= value"},
    }


def _record_export(out_dir: Path, contract: dict, fmt: str, target: Path) -> None:
    """Rewrite preprocessing.json, keeping the entries of the other formats in this folder."""
    exports = {name: entry for name, entry in read_contract(out_dir).get("exports", {}).items()
               if name in MODEL_FILES and name != fmt and (out_dir / MODEL_FILES[name]).exists()}
    exports[fmt] = {"file": target.name, "model_sha256": contract["model_sha256"],
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    atomic_write_json(out_dir / CONTRACT_FILE, {**contract, "exports": dict(sorted(exports.items()))})
