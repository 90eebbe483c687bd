"""``pneumonet``: a small residual CNN built for accuracy per CPU second.

A strided stem and a stride-2 first block shrink the image 4x before any wide layer,
where most of a CNN's CPU time would otherwise go; plain 3x3 convolutions (fast in
oneDNN, unlike depthwise ones on CPU) and global average pooling keep it small.
"""
from __future__ import annotations

import keras
from keras import layers

from .layers import input_scaling


def _block(x, filters: int, stride: int, name: str):
    shortcut = x
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = layers.BatchNormalization(name=f"{name}_bn2")(y)
    if stride != 1 or shortcut.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_proj")(shortcut)
        shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def pneumonet(image_size: int, dropout: float = 0.3, width: int = 32, depth: tuple[int, ...] = (1, 2, 2, 1),
              normalize: str = "auto", **_) -> keras.Model:
    inputs = keras.Input((image_size, image_size, 1), name="image")
    x = input_scaling(normalize)(inputs)
    x = layers.Conv2D(width, 5, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    for stage, blocks in enumerate(depth):
        filters = width * 2**stage
        for b in range(blocks):
            x = _block(x, filters, 2 if b == 0 else 1, f"stage{stage + 1}_block{b + 1}")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    # float32 even under mixed precision: stable probabilities and loss.
    outputs = layers.Dense(2, activation="softmax", name="probs", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="pneumonet")
