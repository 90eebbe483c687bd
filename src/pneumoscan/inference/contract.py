"""``preprocessing.json``: what a program outside pneumoscan needs to use an exported model
correctly (input size and type, how images become that input, how to calibrate the output,
the decision threshold, the class names), written beside every export.

The preprocessing text is :data:`pneumoscan.imaging.loader.PREPROCESSING` itself, so the
contract says exactly what the loader does.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from ..imaging.loader import PREPROCESS_VERSION, PREPROCESSING
from ..options import CLASS_NAMES, EXPORT_FORMATS
from ..paths import atomic_write_json
from ..runs import Run

CONTRACT_FILE = "preprocessing.json"
INPUT_NAME = "image"
# onnx-int8: the ONNX model quantized (``export --format onnx --quantize int8``).
MODEL_FILES = {"onnx": "model.onnx", "savedmodel": "savedmodel", "tflite": "model.tflite", "onnx-int8": "model.int8.onnx"}
assert set(MODEL_FILES) == set(EXPORT_FORMATS) | {"onnx-int8"}


def build_contract(run: Run) -> dict:
    """The contract of ``run``'s model (reads config and metrics: a broken run fails here)."""
    from .. import __version__
    from ..models import input_normalization

    cfg, metrics = run.config(), run.metrics()
    size = cfg.data.image_size
    threshold = metrics["threshold"]
    return {
        "pneumoscan_version": __version__,
        "run_id": run.root.name,
        "model_sha256": run.model_sha256() if run.model_file.is_file() else None,
        "model_name": cfg.model.name,
        "input": {
            "name": INPUT_NAME, "shape": [None, size, size, 1], "dtype": "float32", "channels": 1,
            "value_range": [0, 255],
            "scaling": "inside the model: feed raw 0..255 pixel values, do not divide by 255",
            "normalization": input_normalization(cfg.model),
        },
        "preprocessing": {
            "image_size": size, **PREPROCESSING,
            "reference": "pneumoscan.imaging.load_image", "version": PREPROCESS_VERSION,
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
        **_scope_contract(run, metrics),
    }


def _scope_contract(run: Run, metrics: dict) -> dict:
    """How an exported model says an image is out of scope (runs trained before scopes: nothing)."""
    digest = run.scope_sha256()
    if digest is None:
        return {}
    scope = metrics.get("scope", {})
    return {
        "scope_sha256": digest,
        "scope": {
            "output": "second output of model.onnx: ood_score, shape [None] (SavedModel and TFLite exports hold "
                      "the classifier only)",
            "threshold": scope.get("threshold"), "flag_rate_on_validation": scope.get("flagged", {}).get("val"),
            "meaning": ("out-of-scope score: class-conditional Mahalanobis distance of the model's own features "
                        "to the training images, every resolution level, scaled by its validation median, plus a "
                        "large term when the image is nearer the training images turned upside down than upright; "
                        "an image with ood_score > threshold is unlike the training data (pediatric frontal chest "
                        "X-rays of one hospital) and its probability should not be trusted"),
        },
    }


def export_is_current(run: Run, fmt: str) -> bool:
    """Whether RUN/export holds ``fmt``'s file made from the run's present model.keras and scope.npz."""
    recorded = read_contract(run.export_dir).get("exports", {}).get(fmt, {})
    return ((run.export_dir / MODEL_FILES[fmt]).exists() and recorded.get("model_sha256") == run.model_sha256()
            and recorded.get("scope_sha256") == run.scope_sha256())


def read_contract(out_dir: str | Path) -> dict:
    path = Path(out_dir) / CONTRACT_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError:
        return {}  # a damaged contract is rewritten by the next export


def record_export(out_dir: Path, contract: dict, fmt: str, target: Path, details: dict | None = None) -> None:
    """Rewrite preprocessing.json, keeping the entries of the other formats in this folder
    (``details``: more about this export, such as the int8 quality check)."""
    exports = {name: entry for name, entry in read_contract(out_dir).get("exports", {}).items()
               if name in MODEL_FILES and name != fmt and (out_dir / MODEL_FILES[name]).exists()}
    exports[fmt] = {"file": target.name, "model_sha256": contract["model_sha256"],
                    "scope_sha256": contract.get("scope_sha256"),
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **(details or {})}
    atomic_write_json(out_dir / CONTRACT_FILE, {**contract, "exports": dict(sorted(exports.items()))})
