"""tf.data pipelines over the cached uint8 arrays: no JPEG is decoded during training."""
from __future__ import annotations

import numpy as np
import tensorflow as tf


def as_model_input(images):
    """(N, S, S) uint8 -> (N, S, S, 1) float32 in 0..255; the model scales it."""
    return tf.cast(images, tf.float32)[..., tf.newaxis]


def training_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int, augmenter=None, seed: int = 0):
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    ds = ds.map(lambda x, y: (as_model_input(x), tf.one_hot(y, 2)), num_parallel_calls=tf.data.AUTOTUNE)
    if augmenter is not None:
        # Augmenting whole batches runs each Keras layer once per batch, not per image.
        ds = ds.map(lambda x, y: (augmenter(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def eval_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int):
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)
    return ds.map(lambda x, y: (as_model_input(x), tf.one_hot(y, 2))).prefetch(tf.data.AUTOTUNE)
