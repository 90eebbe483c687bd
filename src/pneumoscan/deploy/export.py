"""Export a trained run's model to ONNX, a TensorFlow SavedModel or TFLite.

Every export folder also gets ``preprocessing.json`` (:mod:`pneumoscan.inference.contract`):
the contract a program outside pneumoscan needs to use the model correctly.

The model takes the preprocessed image itself, (N, S, S, 1) float32 in 0..255, and scales
it inside, so a caller only has to reproduce grayscale + squashed resize.
"""
from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path

from ..errors import ExportError
from ..inference.contract import MODEL_FILES, build_contract, record_export
from ..inference.engines import input_signature, keras_graph, write_onnx
from ..models.predict import load_run_model
from ..options import EXPORT_FORMATS
from ..paths import atomic_write
from ..runs import Run


def export(run_dir: str | Path, fmt: str, out: str | Path | None = None) -> Path:
    """Write ``run_dir``'s model in format ``fmt`` into ``out`` (default RUN/export/).

    Returns the path of the written model (a file, or a folder for a SavedModel);
    ``preprocessing.json`` is written beside it.
    """
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    run = Run(Path(run_dir))
    out_dir = Path(out) if out is not None else run.export_dir
    contract = build_contract(run)  # reads config/metrics first: a broken run fails before any work
    # ONNX carries the out-of-scope score as a second output; SavedModel and TFLite the classifier.
    model = keras_graph(run) if fmt == "onnx" else load_run_model(run)
    target = out_dir / MODEL_FILES[fmt]
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = {"onnx": write_onnx, "savedmodel": _write_savedmodel, "tflite": _write_tflite}[fmt]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the converters warn about their own internals
            writer(model, target)
    except (ImportError, ModuleNotFoundError) as exc:
        raise ExportError(f"{fmt} export needs a package that is not installed ({exc}); "
                          "run `bash scripts/setup.sh`") from None
    except Exception as exc:  # converters raise many types; the user needs one line naming the format
        raise ExportError(f"{fmt} export of {run.model_file} failed: {type(exc).__name__}: {exc}") from None
    record_export(out_dir, contract, fmt, target)
    _copy_model_card(run, out_dir)
    return target


def _copy_model_card(run: Run, out_dir: Path) -> None:
    """Every export carries the run's model card (written now if the run has none yet)."""
    from ..report.model_card import write_model_card

    card = run.model_card_file if run.model_card_file.is_file() else write_model_card(run.root)
    if card.resolve().parent != out_dir.resolve():
        shutil.copyfile(card, out_dir / card.name)


def _write_savedmodel(model, target: Path) -> None:
    # A folder cannot be renamed over an existing one atomically: build beside it, then swap.
    staging = Path(tempfile.mkdtemp(prefix=".tmp-savedmodel-", dir=target.parent))
    try:
        model.export(str(staging / "m"), format="tf_saved_model", verbose=False, input_signature=input_signature(model))
        if target.exists():
            shutil.rmtree(target)
        (staging / "m").rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_tflite(model, target: Path) -> None:
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix=".tmp-tflite-", dir=target.parent) as staging:
        model.export(staging + "/m", format="tf_saved_model", verbose=False, input_signature=input_signature(model))
        flatbuffer = tf.lite.TFLiteConverter.from_saved_model(staging + "/m").convert()
    atomic_write(target, lambda tmp: tmp.write_bytes(flatbuffer))
