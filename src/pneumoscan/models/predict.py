"""A model's PNEUMONIA probability for preprocessed images, and loading a run's model."""
from __future__ import annotations

import numpy as np

from ..runs import Run


def predict_outputs(model, images: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray | None]:
    """Raw probability of PNEUMONIA for each (S, S) uint8 image, and the out-of-scope score when
    the model computes one (a scoped model: outputs ``[probs, ood_score]``), with any engine.

    ``model``: a Keras model, or any callable ``model(batch, training=False)`` on (B, S, S, 1)
    float32 in 0..255 that returns (B, 2) softmax rows, or those and (B,) scores (the ONNX engine).
    """
    if len(images) == 0:
        return np.zeros(0, dtype=np.float64), None
    probs, scores = [], []
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start:start + batch_size], dtype=np.float32)[..., None]
        # A Keras model runs its compiled (graph-mode) predict step: calling it eagerly is
        # about 8x slower at batch 1. Other engines (ONNX) are plain callables.
        step = getattr(model, "predict_on_batch", None)
        out = step(batch) if step else model(batch, training=False)
        if isinstance(out, (list, tuple)):
            out, score = out[0], out[1]
            scores.append(np.asarray(score, dtype=np.float64).reshape(-1))
        probs.append(np.asarray(out)[:, 1])
    return np.concatenate(probs).astype(np.float64), np.concatenate(scores) if scores else None


def predict_probabilities(model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Raw probability of PNEUMONIA for each (S, S) uint8 image, with any engine."""
    return predict_outputs(model, images, batch_size)[0]


def load_run_model(run: Run):
    """The run's ``model.keras`` (compiled=False: inference only)."""
    import keras

    from . import auc  # noqa: F401  registers the custom metric class before loading

    return keras.saving.load_model(run.require_model(), compile=False)


def model_image_size(model) -> int | None:
    """The square input size a model takes, from its input shape (None when it is not fixed)."""
    shape = getattr(model, "inputs", None) and model.inputs[0].shape
    return int(shape[1]) if shape and shape[1] is not None else None
