"""Grad-CAM: where in the X-ray the model found its evidence (Selvaraju et al., 2017).

    import pneumoscan
    from pneumoscan.imaging import load_image
    from pneumoscan.report.gradcam import gradcam, overlay
    predictor = pneumoscan.load("runs/default")
    images = load_image("xray.jpeg", predictor.image_size).array[None]   # (1, S, S) uint8
    maps = gradcam(predictor.model, images)  # (N, S, S) float32 in [0, 1], evidence for PNEUMONIA
    rgb = overlay(images[0], maps[0])        # (S, S, 3) uint8: the X-ray under a jet colour map

The map is computed at a spatial feature map of the model (by default the last one, which
:func:`find_last_conv_layer` finds, looking inside ``keras.applications`` backbones that are
nested as one layer of the outer model) and resized to the image. The class score whose
gradient is taken is the class's log-odds computed from the logits, not its softmax
probability: a confident prediction saturates the probability to exactly 1.0 in float32,
whose gradient is then 0 and the map would be blank, while the log-odds keeps its gradient
(and for a 2-way softmax gives the same map the probability would, up to a positive factor).
"""
from __future__ import annotations

import functools
from typing import Callable, Iterator

import keras
import numpy as np
import tensorflow as tf

EXPLAINED_CLASS = 1  # PNEUMONIA: every map shows the evidence for pneumonia, whatever the label
BATCH_SIZE = 32
SHOWN_CANDIDATES = 20  # an unknown layer's error lists this many names nearest the head


# --- finding the feature map -------------------------------------------------------------

def _operations(model, prefix: str = "") -> Iterator[tuple[str, object]]:
    """(qualified name, operation) for every operation, nested models searched in place.

    Layers inside a nested model are named ``outer/inner``. ``operations`` rather than
    ``layers`` because a residual ``x + y`` (e.g. ConvNeXt's block outputs) is an
    operation, not a layer.
    """
    for op in getattr(model, "operations", model.layers):  # a Sequential has only layers
        if isinstance(op, keras.layers.InputLayer):
            continue
        name = f"{prefix}{op.name}"
        if isinstance(op, keras.Model):
            yield from _operations(op, prefix=f"{name}/")
        yield name, op


def _spatial_operations(model) -> list[tuple[str, object]]:
    """The operations with a 4-D (batch, height, width, channels) output, in graph order."""
    found = []
    for name, op in _operations(model):
        try:
            shape = op.output.shape
        except (AttributeError, ValueError):  # shared operations have no single output
            continue
        if len(shape) == 4:
            found.append((name, op))
    return found


def spatial_layer_names(model) -> list[str]:
    """Every name :func:`gradcam` accepts as ``layer``, input side first."""
    return [name for name, _ in _spatial_operations(model)]


def find_last_conv_layer(model) -> str:
    """The name of the last spatial (4-D) feature map: the one the classifier head pools.

    For a ``keras.applications`` backbone nested in the outer model this is a layer inside
    the backbone (e.g. EfficientNet's ``top_activation``); its plain name is returned.
    """
    names = spatial_layer_names(model)
    if not names:
        raise ValueError(f"model {model.name!r} has no layer with a spatial (4-D) output; Grad-CAM needs one")
    return names[-1].rsplit("/", 1)[-1]


def _resolve_layer(model, layer: str) -> list[str]:
    """A layer name (plain, or ``backbone/layer``) -> its path of names from the outer model."""
    names = spatial_layer_names(model)
    matches = [n for n in names if n == layer] or [n for n in names if n.rsplit("/", 1)[-1] == layer]
    if len(matches) == 1:
        return matches[0].split("/")
    if len(matches) > 1:
        raise ValueError(f"layer name {layer!r} is ambiguous in model {model.name!r}: {', '.join(matches)}")
    shown = names[-SHOWN_CANDIDATES:]
    earlier = f" (and {len(names) - len(shown)} earlier ones)" if len(names) > len(shown) else ""
    raise ValueError(f"model {model.name!r} has no spatial layer named {layer!r}; "
                     f"candidates, nearest the head last{earlier}: {', '.join(shown)}")


# --- the forward pass that exposes the feature map --------------------------------------

def _operation(model, name: str):
    return next(op for op in getattr(model, "operations", model.layers) if op.name == name)


def _head(model):
    """The tensor the scores are computed from, and how: logits from a softmax Dense head."""
    last = model.layers[-1]
    is_softmax_dense = (isinstance(last, keras.layers.Dense) and last.activation is keras.activations.softmax
                        and last.output is model.outputs[0])
    if is_softmax_dense:
        # float32 whatever the model computes in: under mixed precision h is float16.
        return last.input, lambda h: (tf.matmul(tf.cast(h, tf.float32), tf.cast(last.kernel, tf.float32))
                                      + (tf.cast(last.bias, tf.float32) if last.use_bias else 0.0))
    # Any other head: logits recovered from the probabilities, up to a constant per image.
    return model.outputs[0], lambda p: tf.math.log(tf.maximum(tf.cast(p, tf.float32), 1e-12))


def _tap(model, path: list[str], output) -> Callable:
    """A function x -> (feature map at ``path``, ``output``) over ``model``'s graph.

    A feature map inside a nested model cannot be reached from the outer input in one
    Keras graph, so the outer graph is cut around the nested model: before -> (the nested
    model, tapped recursively) -> after. Gradients flow through all three pieces.
    """
    op = _operation(model, path[0])
    if len(path) == 1:
        tapped = keras.Model(model.inputs, [op.output, output])
        return lambda x: tapped(x, training=False)
    if len(op._inbound_nodes) != 1:
        raise ValueError(f"cannot look inside {op.name!r}: it is called {len(op._inbound_nodes)} times in the model")
    node = op._inbound_nodes[0]
    try:
        before = keras.Model(model.inputs, node.input_tensors[0])
        after = keras.Model(node.output_tensors[0], output)
    except ValueError as exc:
        raise ValueError(f"cannot look inside {op.name!r}: the model's graph does not pass through it alone ({exc})") from None
    inner = _tap(op, path[1:], op.outputs[0])

    def run(x):
        features, y = inner(before(x, training=False))
        return features, after(y, training=False)

    return run


class GradCam:
    """Grad-CAM for one model and layer, built once and applied to any number of images."""

    def __init__(self, model, layer: str | None = None, class_index: int = EXPLAINED_CLASS):
        n_classes = int(model.outputs[0].shape[-1])
        if not 0 <= class_index < n_classes:
            raise ValueError(f"class_index {class_index} out of range: the model has {n_classes} classes")
        self.model, self.class_index = model, class_index
        self.layer = layer or find_last_conv_layer(model)
        head_input, self._logits = _head(model)
        self._forward = _tap(model, _resolve_layer(model, self.layer), head_input)
        self.image_size = model.inputs[0].shape[1]
        # A traced graph, never eager ops, although tracing costs a few seconds:
        # - the graph computes only the gradient it is asked for. Eager backprop also runs every
        #   convolution's filter gradient, and TF 2.21's oneDNN kernel for it corrupts memory
        #   and aborts the process on some batch sizes (seen with 1, 3 and 5 images);
        # - Keras runs grouped convolutions (ConvNeXt) through an XLA function that eager mode
        #   recompiles on every call. One signature for any batch size: traced once.
        spec = tf.TensorSpec((None, self.image_size, self.image_size, 1), tf.float32)
        # A partial, not the method: TF counts the traces of one code object across all
        # explainers and would warn of "excessive retracing" from the sixth explainer on.
        self._cam = tf.function(functools.partial(GradCam._raw_cam, self), input_signature=[spec])

    def __call__(self, images) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 3 or images.shape[1] != images.shape[2]:
            raise ValueError(f"expected images of shape (N, S, S), got {images.shape}")
        if self.image_size is not None and images.shape[1] != self.image_size:
            raise ValueError(f"images are {images.shape[1]} px but model {self.model.name!r} takes {self.image_size} px")
        maps = [self._batch(images[i:i + BATCH_SIZE]) for i in range(0, len(images), BATCH_SIZE)]
        return np.concatenate(maps) if maps else np.zeros(images.shape, dtype=np.float32)

    def _batch(self, images: np.ndarray) -> np.ndarray:
        x = tf.convert_to_tensor(images, dtype=tf.float32)[..., tf.newaxis]
        return _normalise(self._cam(x).numpy())

    def _raw_cam(self, x):
        with tf.GradientTape() as tape:
            features, head = self._forward(x)
            score = _log_odds(self._logits(head), self.class_index)
        # Images are independent (inference mode), so one gradient of the sum serves all.
        grads = tf.cast(tape.gradient(score, features), tf.float32)
        features = tf.cast(features, tf.float32)
        weights = tf.reduce_mean(grads, axis=(1, 2))                        # (N, K): importance per channel
        cam = tf.nn.relu(tf.einsum("nhwk,nk->nhw", features, weights))      # only evidence *for* the class
        return tf.image.resize(cam[..., tf.newaxis], tf.shape(x)[1:3], method="bilinear")[..., 0]


def _log_odds(logits, class_index: int):
    """log p(class) - log p(not class), from logits: finite however confident the model is."""
    others = tf.concat([logits[:, :class_index], logits[:, class_index + 1:]], axis=1)
    return logits[:, class_index] - tf.reduce_logsumexp(others, axis=1)


def _normalise(maps: np.ndarray) -> np.ndarray:
    """Scale each map to a maximum of 1; a map with no positive evidence stays all zeros."""
    maps = np.nan_to_num(np.maximum(maps, 0.0), nan=0.0, posinf=0.0)
    peak = maps.max(axis=(1, 2), keepdims=True)
    out = np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def gradcam(model, images, layer: str | None = None, class_index: int = EXPLAINED_CLASS) -> np.ndarray:
    """Grad-CAM maps for (N, S, S) uint8 images (as :func:`pneumoscan.imaging.load_image` gives them).

    Returns (N, S, S) float32 in [0, 1], each map scaled to its own maximum; deterministic.
    ``layer``: a spatial layer's name (default: :func:`find_last_conv_layer`); a layer inside
    a nested backbone may be named plainly or as ``backbone/layer``.
    """
    return GradCam(model, layer=layer, class_index=class_index)(images)


# --- pictures ----------------------------------------------------------------------------

def overlay(image, heatmap, alpha: float = 0.4) -> np.ndarray:
    """The grayscale image under the heatmap in the jet colour map: (S, S, 3) uint8.

    A heatmap of another size than the image is resized to it.
    """
    from matplotlib import colormaps
    from PIL import Image

    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {image.shape}")
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.shape != image.shape:
        heat = np.asarray(Image.fromarray(heat, mode="F").resize(image.shape[::-1], Image.Resampling.BILINEAR))
    colour = colormaps["jet"](np.clip(heat, 0.0, 1.0))[..., :3]
    gray = np.repeat(image.astype(np.float32)[..., None] / 255.0, 3, axis=2)
    blended = (1.0 - alpha) * gray + alpha * colour
    return np.round(np.clip(blended, 0.0, 1.0) * 255.0).astype(np.uint8)
