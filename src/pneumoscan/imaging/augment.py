"""Training-time augmentation with Keras preprocessing layers (never used at inference)."""
from __future__ import annotations

import keras

from ..config import AugmentConfig


def build_augmenter(cfg: AugmentConfig, seed: int) -> keras.Sequential | None:
    """Small geometric and intensity jitter; ``None`` when augmentation is off."""
    if not cfg.enabled:
        return None
    layers = []
    if cfg.horizontal_flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if cfg.rotation_degrees > 0:
        layers.append(keras.layers.RandomRotation(cfg.rotation_degrees / 360.0, fill_mode="constant", seed=seed + 1))
    if cfg.zoom > 0:
        layers.append(keras.layers.RandomZoom(cfg.zoom, fill_mode="constant", seed=seed + 2))
    if cfg.translate > 0:
        layers.append(keras.layers.RandomTranslation(cfg.translate, cfg.translate, fill_mode="constant", seed=seed + 3))
    if cfg.contrast > 0:
        layers.append(keras.layers.RandomContrast(cfg.contrast, value_range=(0, 255), seed=seed + 4))
    if cfg.brightness > 0:
        layers.append(keras.layers.RandomBrightness(cfg.brightness, value_range=(0, 255), seed=seed + 5))
    return keras.Sequential(layers, name="augment") if layers else None
