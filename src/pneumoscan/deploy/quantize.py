"""int8 ONNX: the exported model with its convolutions statically quantized, kept only if it
still gives the float model's answers.

    pneumoscan export RUN --format onnx --quantize int8     # RUN/export/model.int8.onnx
    pneumoscan predict RUN x.jpeg --engine onnx-int8

ONNX Runtime's static quantization (QDQ format, int8 weights per channel, uint8 activations)
is calibrated on validation images. Only the convolutions are quantized: they hold almost all
of the arithmetic, while the small dense head and the out-of-scope distances (sums of squares
of whitened features, which int8 would coarsen) stay float32. The quantized model is then run
on every validation image beside the float ONNX model; it is written only when the labels
agree on at least ``min_agreement`` of them and the validation ROC-AUC moves by at most
``max_auc_change``. Both figures go into ``preprocessing.json``.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ..errors import ExportError
from ..evaluation.calibration import apply_temperature
from ..inference.contract import MODEL_FILES, build_contract, record_export
from ..inference.engines import OnnxEngine
from ..models.predict import predict_outputs
from ..runs import Run

MIN_AGREEMENT = 0.99
MAX_AUC_CHANGE = 0.003
CALIBRATION_IMAGES = 200


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over batches of validation images."""

    def __init__(self, name: str, images: np.ndarray, batch: int = 16):
        self._batches = iter([{name: np.asarray(images[i:i + batch], np.float32)[..., None]}
                              for i in range(0, len(images), batch)])

    def get_next(self):
        return next(self._batches, None)


def validation_set(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """The run's validation images and labels, every one of them (the int8 check needs them all)."""
    import pandas as pd

    from ..report.images import images_for_report

    val = pd.read_csv(run.splits_file).query("split == 'val'")
    images, kept = images_for_report(val["path"].tolist(), run.config())
    if len(kept) < 20:
        raise ExportError(f"int8 calibration needs the run's validation images; only {len(kept)} of {len(val)} "
                          f"listed in {run.splits_file} could be read (has the data moved?)")
    if len(kept) != len(val):
        raise ExportError(f"{run.splits_file}: {len(val) - len(kept)} validation images could not be read; "
                          "the int8 check needs every one")
    return images, val["label"].to_numpy()


def quantize_int8(run_dir: str | Path, out: str | Path | None = None, min_agreement: float = MIN_AGREEMENT,
                  max_auc_change: float = MAX_AUC_CHANGE, calibration: np.ndarray | None = None) -> Path:
    """Write ``model.int8.onnx`` beside the float export, or raise ExportError with the measured
    figures when it does not hold quality (nothing is written then). ``calibration``: (N, S, S)
    uint8 images to calibrate on instead of a sample of the validation split."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from sklearn.metrics import roc_auc_score

    from .export import export

    run = Run(Path(run_dir))
    out_dir = Path(out) if out is not None else run.export_dir
    float_path = export(run.root, "onnx", out_dir)
    metrics = run.metrics()
    temperature, threshold = metrics["calibration"]["temperature"], metrics["threshold"]["value"]
    images, labels = validation_set(run)
    rng = np.random.default_rng(0)
    sample = images[np.sort(rng.permutation(len(images))[:CALIBRATION_IMAGES])] if calibration is None else calibration
    float_engine = OnnxEngine(float_path)
    target = out_dir / MODEL_FILES["onnx-int8"]
    with tempfile.TemporaryDirectory(prefix=".tmp-int8-", dir=out_dir) as tmp:
        staged = Path(tmp) / target.name
        try:
            quantize_static(str(float_path), str(staged), _Reader(float_engine.input_name, sample),
                            quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"], per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
        except Exception as exc:  # the quantizer raises many types; one line naming the step
            raise ExportError(f"int8 quantization of {float_path} failed: {type(exc).__name__}: {exc}") from None
        p_float, ood_float = predict_outputs(float_engine, images)
        p_int8, ood_int8 = predict_outputs(OnnxEngine(staged), images)
        p_float, p_int8 = apply_temperature(p_float, temperature), apply_temperature(p_int8, temperature)
        check = {
            "images": int(len(images)), "calibration_images": int(len(sample)),
            "label_agreement": float(np.mean((p_float >= threshold) == (p_int8 >= threshold))),
            "roc_auc_float": float(roc_auc_score(labels, p_float)), "roc_auc_int8": float(roc_auc_score(labels, p_int8)),
            "max_probability_difference": float(np.max(np.abs(p_float - p_int8))),
            "min_agreement": min_agreement, "max_auc_change": max_auc_change, "measured_on": "val",
        }
        check["roc_auc_change"] = check["roc_auc_int8"] - check["roc_auc_float"]
        if ood_float is not None and ood_int8 is not None and "scope" in metrics:
            limit = metrics["scope"]["threshold"]
            check["in_scope_agreement"] = float(np.mean((ood_float <= limit) == (ood_int8 <= limit)))
        if check["label_agreement"] < min_agreement or abs(check["roc_auc_change"]) > max_auc_change:
            raise ExportError(
                f"int8 model refused (not written): on {check['images']} validation images its labels agree with the "
                f"float model's on {check['label_agreement']:.2%} (needs >= {min_agreement:.0%}) and its ROC-AUC "
                f"changes by {check['roc_auc_change']:+.4f} (allowed ±{max_auc_change}); use the float ONNX export")
        staged.replace(target)
    record_export(out_dir, build_contract(run), "onnx-int8", target, details={"check": check})
    return target

