"""Fine-tune a trained model on a few hundred images of a new site: batch-norm statistics and
the classifier head only.

Everything before the head is frozen except the batch-norm layers, which learn the site's
feature statistics (its exposure, grain, processing) with a faster momentum than in training;
the head relearns where the classes part. A few hundred images cannot retrain the
convolutions without overfitting them.
"""
from __future__ import annotations

import keras
import numpy as np
import pandas as pd

from ..config import Config
from ..imaging.augment import build_augmenter
from ..models.features import feature_layers
from .loop import class_weights
from .pipeline import eval_dataset, training_dataset

BATCHNORM_MOMENTUM = 0.9  # training used 0.99: a few dozen steps must be able to move the statistics


def finetune(model: keras.Model, cfg: Config, tune: tuple[np.ndarray, np.ndarray],
             check: tuple[np.ndarray, np.ndarray] | None, epochs: int, learning_rate: float, seed: int) -> pd.DataFrame:
    """Train ``model`` in place on ``tune`` (images, labels); ``check``, if given, is only
    watched (the curves), never used to choose. Returns the per-epoch history, as history.csv
    holds it."""
    keras.utils.set_random_seed(seed)
    names = [layer.name for layer in model.layers]
    head_start = names.index(feature_layers(model)[-1]) + 1
    for index, layer in enumerate(model.layers):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable, layer.momentum = True, BATCHNORM_MOMENTUM
        else:
            layer.trainable = index >= head_start
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.train.label_smoothing),
                  metrics=["accuracy"])
    x, y = tune
    batch = int(min(cfg.train.batch_size, max(8, len(x) // 4)))
    history = model.fit(training_dataset(x, y, batch, build_augmenter(cfg.augment, seed), seed),
                        validation_data=eval_dataset(*check, 128) if check else None, epochs=epochs,
                        class_weight=class_weights(y, "balanced"), verbose=0)
    for layer in model.layers:
        layer.trainable = True  # saved as an ordinary, fully trainable model
    table = pd.DataFrame(history.history)
    table.insert(0, "epoch", np.arange(len(table)))
    return table
