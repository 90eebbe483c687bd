"""Inference engines: what computes the raw softmax for a batch of preprocessed images.

``Predictor`` calls its engine like a Keras model, ``engine(batch, training=False)`` on
(B, S, S, 1) float32 in 0..255, and gets (B, 2) softmax rows. Calibration and the
threshold stay in ``Predictor``, so every engine yields the same calibrated output.

- ``keras``: the run's model.keras itself.
- ``onnx``: the same model exported to ONNX (cached in RUN/export/model.onnx, written again
  whenever model.keras changes) and run by ONNX Runtime, which needs neither TensorFlow's
  graph tracing nor Keras at inference time.
- ``onnx-int8``: the ONNX model with int8 convolutions (:mod:`pneumoscan.deploy.quantize`),
  made by ``pneumoscan export RUN --format onnx --quantize int8``.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..errors import ExportError
from ..models.predict import load_run_model, model_image_size
from ..options import ENGINES
from ..paths import atomic_write
from ..runs import Run
from .contract import INPUT_NAME, MODEL_FILES, build_contract, export_is_current, record_export


class OnnxEngine:
    """An ONNX model run by ONNX Runtime on the CPU, called like a Keras model."""

    def __init__(self, path: str | Path, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ExportError("the onnx engine needs onnxruntime; run `bash scripts/setup.sh`") from None

        options = ort.SessionOptions()
        if threads:
            # One model call at a time uses every core; a second pool would only compete with it.
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only: ORT's warnings about unused initializers are noise here
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.name = f"onnx:{self.path.name}"

    @property
    def image_size(self) -> int | None:
        side = self.session.get_inputs()[0].shape[1]
        return side if isinstance(side, int) else None

    def __call__(self, batch, training: bool = False):
        """(B, 2) softmax rows; with a scoped export, ``[rows, (B,) out-of-scope scores]``."""
        # ``training`` exists only to match the Keras call; an exported model has no training mode.
        outputs = self.session.run(None, {self.input_name: np.asarray(batch, dtype=np.float32)})
        return outputs if len(outputs) > 1 else outputs[0]


def engine_image_size(engine) -> int | None:
    """The square input size an engine's model takes, from the model itself."""
    return engine.image_size if isinstance(engine, OnnxEngine) else model_image_size(engine)


def load_scope(run: Run):
    """The run's fitted out-of-scope statistics, or None for a run trained before they existed."""
    from ..evaluation.scope import Scope

    return Scope.load(run.scope_file) if run.scope_file.is_file() else None


def keras_graph(run: Run):
    """``model.keras``, with its out-of-scope score as a second output when the run has one."""
    from ..evaluation.scope import ORIENTATION_WEIGHT
    from ..models.features import scoped_model

    model = load_run_model(run)
    scope = load_scope(run)
    return scoped_model(model, scope.means, scope.whiteners, scope.scales, scope.wrong, ORIENTATION_WEIGHT) if scope else model


def classifier(model):
    """The classifier alone (one output, the softmax head last), for Grad-CAM."""
    import keras

    if isinstance(model, keras.Model) and len(model.outputs) > 1:
        return keras.Model(model.inputs, model.outputs[0], name=model.name.removesuffix("_scoped"))
    return model


def load_engine(run: Run, engine: str = "keras", threads: int | None = None):
    """The object that computes raw probabilities (and the out-of-scope score) for ``run`` with ``engine``."""
    if engine == "keras":
        return keras_graph(run)
    if engine == "onnx":
        return OnnxEngine(ensure_onnx(run), threads=threads)
    if engine == "onnx-int8":
        return OnnxEngine(current_int8(run), threads=threads)
    raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")


def input_signature(model):
    import tensorflow as tf

    size = int(model.inputs[0].shape[1])
    # Batch left open (None): one file serves batch 1 and batch 32 alike.
    return [tf.TensorSpec((None, size, size, 1), tf.float32, name=INPUT_NAME)]


def write_onnx(model, target: Path) -> None:
    # Keras 3 exports ONNX itself (through tf2onnx.convert.from_function on a traced
    # tf.function); tf2onnx.convert.from_keras does not work with Keras 3 models.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf2onnx warns about its own internals
        atomic_write(target, lambda tmp: model.export(str(tmp), format="onnx", verbose=False,
                                                      input_signature=input_signature(model)))


def ensure_onnx(run: Run) -> Path:
    """RUN/export/model.onnx, exported on first use and again whenever model.keras or scope.npz changes."""
    target = run.export_dir / MODEL_FILES["onnx"]
    if export_is_current(run, "onnx"):
        return target
    contract = build_contract(run)
    run.export_dir.mkdir(parents=True, exist_ok=True)
    try:
        write_onnx(keras_graph(run), target)
    except (ImportError, ModuleNotFoundError) as exc:
        raise ExportError(f"onnx export needs a package that is not installed ({exc}); "
                          "run `bash scripts/setup.sh`") from None
    except Exception as exc:  # converters raise many types; the user needs one line naming the format
        raise ExportError(f"onnx export of {run.model_file} failed: {type(exc).__name__}: {exc}") from None
    record_export(run.export_dir, contract, "onnx", target)
    return target


def current_int8(run: Run) -> Path:
    """RUN/export/model.int8.onnx, when it was quantized from today's model.keras and scope.

    Never made on the fly: quantizing needs the validation images and may be refused."""
    target = run.export_dir / MODEL_FILES["onnx-int8"]
    how = f"run `pneumoscan export {run.root} --format onnx --quantize int8`"
    if not target.is_file():
        raise ExportError(f"{target}: not found; {how} first")
    if not export_is_current(run, "onnx-int8"):
        raise ExportError(f"{target} was quantized from an older model.keras or scope.npz; {how} again")
    return target
