"""``keras.applications`` backbones with a 2-way softmax head.

Only backbones that include their own input preprocessing are offered, so they take
the same 0..255 grayscale input as every pneumoscan model (the channel is repeated 3x).
"""
from __future__ import annotations

from pathlib import Path

import keras
from keras import layers

from ..errors import WeightsError

BACKBONES = {
    "efficientnetb0": keras.applications.EfficientNetB0,
    "efficientnetv2b0": keras.applications.EfficientNetV2B0,
    "mobilenetv3small": keras.applications.MobileNetV3Small,
    "mobilenetv3large": keras.applications.MobileNetV3Large,
    "convnexttiny": keras.applications.ConvNeXtTiny,
}


def backbone_model(name: str, image_size: int, dropout: float = 0.3, weights: str | None = None,
                   normalize: str = "scale", **_) -> keras.Model:
    """``weights``: None (random), ``"imagenet"`` (downloads: needs internet) or a weights file path."""
    if normalize not in ("auto", "scale"):
        raise ValueError(f"{name} scales its input itself (keras.applications preprocessing): "
                         f"model.normalize = {normalize!r} is for pneumonet and seed_cnn")
    factory = BACKBONES[name]
    load_imagenet = weights == "imagenet"
    if weights not in (None, "imagenet") and not Path(weights).is_file():
        raise WeightsError(f"{weights}: weights file not found")
    try:
        base = factory(include_top=False, weights="imagenet" if load_imagenet else None,
                       input_shape=(image_size, image_size, 3), pooling="avg")
    except Exception as exc:  # urllib/HTTP errors surface as several types
        if load_imagenet:
            raise WeightsError(
                f"{name}: could not download ImageNet weights ({exc}). This needs internet access; "
                "offline, download the Keras weights file elsewhere and pass its path as model.weights."
            ) from None
        raise
    if weights not in (None, "imagenet"):
        try:
            base.load_weights(weights, skip_mismatch=True)
        except Exception as exc:
            raise WeightsError(f"{weights}: cannot load into {name} ({exc})") from None
    inputs = keras.Input((image_size, image_size, 1), name="image")
    x = layers.Concatenate(name="to_rgb")([inputs, inputs, inputs])
    x = base(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    # float32 even under mixed precision: stable probabilities and loss.
    outputs = layers.Dense(2, activation="softmax", name="probs", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name)
