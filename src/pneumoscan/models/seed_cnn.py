"""The original design: Conv+ReLU, MaxPool and BatchNorm blocks, then Dense, Dropout and a
2-way softmax. Kept by name (``seed_cnn``) as the baseline every other model must beat."""
from __future__ import annotations

import keras
from keras import layers

from .layers import input_scaling


def seed_cnn(image_size: int, dropout: float = 0.5, width: int = 32, normalize: str = "auto",
             **_) -> keras.Model:
    inputs = keras.Input((image_size, image_size, 1), name="image")
    x = input_scaling(normalize)(inputs)
    for i, filters in enumerate((width, width * 2, width * 4, width * 4)):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{i + 1}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
        x = layers.BatchNormalization(name=f"bn{i + 1}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name="dense")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    # float32 even under mixed precision: stable probabilities and loss.
    outputs = layers.Dense(2, activation="softmax", name="probs", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="seed_cnn")
