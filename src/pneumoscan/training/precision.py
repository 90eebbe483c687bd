"""Numeric precision and XLA compilation for training, chosen per device.

``train.precision``: ``float32`` | ``mixed_float16`` | ``mixed_bfloat16`` | ``auto``.
``train.jit_compile``: ``on`` | ``off`` | ``auto``.

What ``auto`` picks, and why:

- CPU: no XLA, and float32 or mixed_bfloat16, **whichever trains faster on this processor**:
  :mod:`.precision_probe` times a few training steps of the run's model in both, once per
  processor, model and size (kept in the cache), and picks bfloat16 only when it is at least
  10% faster. It differs by processor: on a 2-core AMD EPYC (Zen 4) the default model took
  713 ms/step in float32 and 729 ms/step in mixed_bfloat16; Intel Xeons with AMX run
  bfloat16 steps 1.17-1.43x faster. XLA is 3-4x slower than TensorFlow's oneDNN kernels on
  CPU (float32 + XLA 2633 ms/step on that EPYC; Keras also leaves XLA off on CPU-only machines).
- GPU: ``mixed_float16`` with XLA on one GPU (the standard choice for tensor cores; not
  measured here, as no GPU was available). Under a multi-replica strategy XLA stays off,
  as in Keras' own ``auto`` rule; ``--jit-compile on`` forces it.

Under mixed precision the models keep their softmax output in float32, so probabilities
and the loss stay stable; variables are float32 in every policy. The model saved as
``model.keras`` is rebuilt in float32 for evaluation and inference whatever the training
precision.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

from ..options import JIT_MODES, PRECISIONS


def on_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def resolve_precision(name: str, gpu: bool | None = None, measure: Callable[[], str] | None = None) -> str:
    """``auto``: mixed_float16 on a GPU; on a CPU what ``measure`` finds fastest (see
    :mod:`.precision_probe`), else float32."""
    if name not in PRECISIONS:
        raise ValueError(f"train.precision must be one of {', '.join(PRECISIONS)}, not {name!r}")
    if name != "auto":
        return name
    if on_gpu() if gpu is None else gpu:
        return "mixed_float16"
    return measure() if measure else "float32"


def resolve_jit(mode: str, replicas: int = 1, gpu: bool | None = None) -> bool:
    if mode not in JIT_MODES:
        raise ValueError(f"train.jit_compile must be one of {', '.join(JIT_MODES)}, not {mode!r}")
    if mode != "auto":
        return mode == "on"
    return (on_gpu() if gpu is None else gpu) and replicas == 1


@contextmanager
def dtype_policy(name: str):
    """Build models under the Keras dtype policy ``name``, then restore the previous one.

    Only model construction sees the policy: the augmentation layers and the float32
    model rebuilt for evaluation are made outside it.
    """
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
