"""The model's own features, for the out-of-scope score: one pooled vector per resolution level.

Deep layers say what the network concluded; shallow ones how the film looks (texture,
contrast, grain). An X-ray unlike the training data can pass the deep layers unnoticed (the
network still finds "lungs") but seldom the shallow ones, so the score reads both: the
global average of the last feature map at every spatial resolution, and the vector the
classifier head reads.
"""
from __future__ import annotations

import keras


def feature_layers(model: keras.Model) -> list[str]:
    """Names of the layers whose outputs are pooled: the last layer of each spatial resolution."""
    # Feature maps only: the input and its scaling (one channel, a per-image standardization
    # whose pooled mean is always 0) carry no statistics to model.
    spatial = [layer for layer in model.layers
               if not isinstance(layer, keras.layers.InputLayer) and hasattr(layer, "output")
               and len(layer.output.shape) == 4 and (layer.output.shape[-1] or 0) >= 4]
    chosen = []
    for i, layer in enumerate(spatial):
        following = spatial[i + 1] if i + 1 < len(spatial) else None
        if following is None or following.output.shape[1] != layer.output.shape[1]:
            chosen.append(layer.name)
    return chosen


def feature_model(model: keras.Model) -> keras.Model:
    """A model with the classifier's probabilities first, then one pooled feature vector per level
    and the head's input vector: ``[probs, f_1, ..., f_L, head]``."""
    pooled = [keras.layers.GlobalAveragePooling2D(name=f"scope_pool_{name}", dtype="float32")(model.get_layer(name).output)
              for name in feature_layers(model)]
    head = model.layers[-1].input
    return keras.Model(model.inputs, [model.outputs[0], *pooled, head], name=f"{model.name}_features")


@keras.saving.register_keras_serializable(package="pneumoscan")
class ScopeScore(keras.layers.Layer):
    """The out-of-scope score inside the graph, from fitted constants (see
    :mod:`pneumoscan.evaluation.scope`): per level the squared Mahalanobis distance to the
    nearest class mean, divided by the level's validation median, averaged over levels; plus
    ``orientation_weight`` times how much nearer the image is to the ``wrong`` (upside-down)
    means than to the upright ones, when it is."""

    def __init__(self, means, whiteners, scales, wrong=None, orientation_weight: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        import numpy as np

        self._means = [np.asarray(m, dtype="float32") for m in means]
        self._whiteners = [np.asarray(w, dtype="float32") for w in whiteners]  # precision = W W^T
        self._scales = np.asarray(scales, dtype="float32")
        self._wrong = [np.asarray(m, dtype="float32") for m in wrong] if wrong else None
        self._orientation_weight = float(orientation_weight)

    def _nearest(self, features, means_per_level):
        from keras import ops

        per_level = []
        for f, means, whitener, scale in zip(features, means_per_level, self._whiteners, self._scales):
            f = ops.cast(f, "float32")
            # |(f - m) W|^2: a sum of squares, stable in float32 (see Scope.whiteners).
            distances = [ops.sum(ops.square(ops.matmul(f - ops.convert_to_tensor(m), ops.convert_to_tensor(whitener))),
                                 axis=-1) for m in means]
            per_level.append(ops.min(ops.stack(distances, axis=-1), axis=-1) / float(scale))
        return ops.mean(ops.stack(per_level, axis=-1), axis=-1)

    def call(self, features):
        from keras import ops

        upright = self._nearest(features, self._means)
        if not self._wrong:
            return upright
        turned = self._nearest(features, self._wrong)
        return upright + self._orientation_weight * ops.maximum(upright - turned, 0.0)

    def get_config(self):
        return {**super().get_config(), "means": [m.tolist() for m in self._means],
                "whiteners": [w.tolist() for w in self._whiteners], "scales": self._scales.tolist(),
                "wrong": [m.tolist() for m in self._wrong] if self._wrong else None,
                "orientation_weight": self._orientation_weight}


def scoped_model(model: keras.Model, means, whiteners, scales, wrong=None, orientation_weight: float = 0.0) -> keras.Model:
    """``image -> [probs, ood_score]``: the classifier with its out-of-scope score, one graph
    (what the Keras engine runs and the ONNX export holds)."""
    probs, *features = feature_model(model).outputs
    score = ScopeScore(means, whiteners, scales, wrong, orientation_weight, name="ood_score")(features)
    return keras.Model(model.inputs, [probs, score], name=f"{model.name}_scoped")


def extract_outputs(model: keras.Model, images, batch_size: int = 128) -> tuple:
    """Raw PNEUMONIA probability (N,) and, per level, (N, D) float32 features of (N, S, S) uint8
    images, from one pass of the network."""
    import numpy as np

    extractor = feature_model(model)
    chunks: list[list] = [[] for _ in extractor.outputs]
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start:start + batch_size], dtype=np.float32)[..., None]
        for level, out in enumerate(extractor.predict_on_batch(batch)):
            chunks[level].append(np.asarray(out, dtype=np.float32))
    width = [int(o.shape[-1]) for o in extractor.outputs]
    probs, *features = [np.concatenate(c) if c else np.zeros((0, w), np.float32) for c, w in zip(chunks, width)]
    return probs[:, 1].astype(np.float64), features


def extract_features(model: keras.Model, images, batch_size: int = 128) -> list:
    """Per level, (N, D) float32 features of (N, S, S) uint8 images."""
    return extract_outputs(model, images, batch_size)[1]
