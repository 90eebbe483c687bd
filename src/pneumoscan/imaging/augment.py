"""Training-time augmentation with Keras preprocessing layers (never used at inference).

Beside the geometric and intensity jitter of the first round, the acquisition levers of the
robust-model work (each off unless its config value is above 0): intensity curves (gamma) and
detector noise, blur and sharpening, zooming *in* (a tighter field of view, the lungs filling
the frame), collimator borders, and random erasing.
"""
from __future__ import annotations

import math

import keras
from keras import ops

from ..config import AugmentConfig


@keras.saving.register_keras_serializable(package="pneumoscan")
class IntensityJitter(keras.layers.Layer):
    """Per-image gamma curve (exponent in [1/(1+gamma), 1+gamma], log-uniform) and Gaussian
    detector noise (std ``noise`` on the 0..255 scale), clipped back to 0..255."""

    def __init__(self, gamma: float = 0.0, noise: float = 0.0, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.gamma, self.noise, self.seed = float(gamma), float(noise), seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=True):
        if not training:
            return x
        batch = ops.shape(x)[0]
        if self.gamma > 0:
            bound = math.log1p(self.gamma)
            exponent = ops.exp(keras.random.uniform((batch, 1, 1, 1), -bound, bound, seed=self.seed_generator))
            x = 255.0 * ops.power(ops.clip(x / 255.0, 0.0, 1.0), exponent)
        if self.noise > 0:
            scale = keras.random.uniform((batch, 1, 1, 1), 0.0, self.noise, seed=self.seed_generator)
            x = x + scale * keras.random.normal(ops.shape(x), seed=self.seed_generator)
        return ops.clip(x, 0.0, 255.0)

    def get_config(self):
        return {**super().get_config(), "gamma": self.gamma, "noise": self.noise, "seed": self.seed}


@keras.saving.register_keras_serializable(package="pneumoscan")
class RandomBorders(keras.layers.Layer):
    """Collimator edges: with probability 1/2 per image, each side loses a random band of up
    to ``fraction`` of the image (set to black), as a tightly coned film looks."""

    def __init__(self, fraction: float = 0.1, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.fraction, self.seed = float(fraction), seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=True):
        if not training or self.fraction <= 0:
            return x
        batch, height, width = ops.shape(x)[0], ops.shape(x)[1], ops.shape(x)[2]
        bands = keras.random.uniform((batch, 4), 0.0, self.fraction, seed=self.seed_generator)
        apply = ops.cast(keras.random.uniform((batch, 1), seed=self.seed_generator) < 0.5, "float32")
        bands = bands * apply
        rows = ops.reshape(ops.cast(ops.arange(height), "float32") / ops.cast(height, "float32"), (1, -1, 1, 1))
        cols = ops.reshape(ops.cast(ops.arange(width), "float32") / ops.cast(width, "float32"), (1, 1, -1, 1))
        top, bottom, left, right = (ops.reshape(bands[:, i], (-1, 1, 1, 1)) for i in range(4))
        keep = (rows >= top) & (rows < 1.0 - bottom) & (cols >= left) & (cols < 1.0 - right)
        return x * ops.cast(keep, x.dtype)

    def get_config(self):
        return {**super().get_config(), "fraction": self.fraction, "seed": self.seed}


def build_augmenter(cfg: AugmentConfig, seed: int) -> keras.Sequential | None:
    """The training augmentation of ``cfg``; ``None`` when augmentation is off."""
    if not cfg.enabled:
        return None
    layers = []
    if cfg.horizontal_flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if cfg.rotation_degrees > 0:
        layers.append(keras.layers.RandomRotation(cfg.rotation_degrees / 360.0, fill_mode="constant", seed=seed + 1))
    if cfg.zoom > 0 or cfg.zoom_in > 0:
        # Negative factors zoom in: the range reaches zoom_in further in than out.
        layers.append(keras.layers.RandomZoom((-(cfg.zoom + cfg.zoom_in), cfg.zoom), fill_mode="constant", seed=seed + 2))
    if cfg.translate > 0:
        layers.append(keras.layers.RandomTranslation(cfg.translate, cfg.translate, fill_mode="constant", seed=seed + 3))
    if cfg.borders > 0:
        layers.append(RandomBorders(cfg.borders, seed=seed + 6))
    if cfg.contrast > 0:
        layers.append(keras.layers.RandomContrast(cfg.contrast, value_range=(0, 255), seed=seed + 4))
    if cfg.brightness > 0:
        layers.append(keras.layers.RandomBrightness(cfg.brightness, value_range=(0, 255), seed=seed + 5))
    if cfg.blur > 0:
        layers.append(keras.layers.RandomGaussianBlur(cfg.blur, kernel_size=5, sigma=1.0, value_range=(0, 255),
                                                      seed=seed + 7))
    if cfg.sharpness > 0:
        layers.append(keras.layers.RandomSharpness(cfg.sharpness, value_range=(0, 255), seed=seed + 8))
    if cfg.gamma > 0 or cfg.noise > 0:
        layers.append(IntensityJitter(cfg.gamma, cfg.noise, seed=seed + 9))
    if cfg.erasing > 0:
        layers.append(keras.layers.RandomErasing(cfg.erasing, scale=(0.02, 0.15), fill_value=0.0,
                                                 value_range=(0, 255), seed=seed + 10))
    return keras.Sequential(layers, name="augment") if layers else None
