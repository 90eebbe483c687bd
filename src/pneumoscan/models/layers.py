"""Layers the models share: how the raw 0..255 input is brought to the network's scale.

Inside the model, so every export (ONNX, SavedModel, TFLite) carries it and no caller can
forget it or do it differently.
"""
from __future__ import annotations

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="pneumoscan")
class PerImageStandardization(layers.Layer):
    """Each image to zero mean and unit variance: a film's overall exposure and contrast,
    which differ between sites and machines, no longer reach the network."""

    def call(self, x):
        mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
        std = ops.sqrt(ops.mean(ops.square(x - mean), axis=(1, 2, 3), keepdims=True))
        return (x - mean) / ops.maximum(std, 1.0)  # 1 of 255: a blank image stays finite


def resolved_normalization(normalize: str = "auto") -> str:
    """What ``model.normalize`` means for pneumoscan's own CNNs: ``auto`` is ``image``."""
    if normalize in ("image", "auto"):
        return "image"
    if normalize == "scale":
        return "scale"
    raise ValueError(f"model.normalize must be scale or image, not {normalize!r}")


def input_scaling(normalize: str = "auto") -> layers.Layer:
    """``scale``: x / 255; ``image`` (and ``auto``): :class:`PerImageStandardization`."""
    if resolved_normalization(normalize) == "image":
        return PerImageStandardization(name="standardize")
    return layers.Rescaling(1.0 / 255, name="scale")
