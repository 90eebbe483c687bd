"""Inference engines: what computes the raw softmax for a batch of preprocessed images.

``Predictor`` calls its engine like a Keras model, ``engine(batch, training=False)`` on
(B, S, S, 1) float32 in 0..255, and gets (B, 2) softmax rows. Calibration and the
threshold stay in ``Predictor``, so every engine yields the same calibrated output.

- ``keras``: the run's model.keras itself.
- ``onnx``: the same model exported to ONNX (cached in RUN/export/model.onnx) and run by
  ONNX Runtime, which needs neither TensorFlow's graph tracing nor Keras at inference time.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .export import ExportError, ensure_onnx
from .runs import Run

ENGINES = ("keras", "onnx")


class OnnxEngine:
    """An ONNX model run by ONNX Runtime on the CPU, called like a Keras model."""

    def __init__(self, path: str | Path, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ExportError("the onnx engine needs onnxruntime; run `bash scripts/setup.sh`") from None

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only: ORT's warnings about unused initializers are noise here
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.name = f"onnx:{self.path.name}"

    def __call__(self, batch, training: bool = False) -> np.ndarray:
        # ``training`` exists only to match the Keras call; an exported model has no training mode.
        return self.session.run(None, {self.input_name: np.asarray(batch, dtype=np.float32)})[0]


def load_engine(run: Run, engine: str = "keras"):
    """The object that computes raw probabilities for ``run``'s model with ``engine``."""
    if engine == "keras":
        return run.load_model()
    if engine == "onnx":
        return OnnxEngine(ensure_onnx(run))
    raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
