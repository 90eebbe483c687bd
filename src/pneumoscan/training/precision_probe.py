"""Measure, do not assume: which precision trains this model faster on this processor.

A few training steps of the run's own model (same size and batch) in float32 and in
mixed_bfloat16, on random data; bfloat16 is chosen only when it is at least
:data:`MIN_SPEEDUP` faster, since it rounds more. The answer is kept in the cache per
processor, TensorFlow version, model, width, image size and batch, so the probe runs once.
"""
from __future__ import annotations

import json
import time

import numpy as np

from ..config import Config
from ..paths import atomic_write_json, cache_dir
from ..runs import cpu_model

MIN_SPEEDUP = 1.10
CANDIDATES = ("float32", "mixed_bfloat16")


def _cache_file():
    return cache_dir() / "precision.json"


def probe_key(cfg: Config) -> str:
    import tensorflow as tf

    return (f"{cpu_model()}|tf{tf.__version__}|{cfg.model.name}|w{cfg.model.width}|{cfg.model.normalize}|"
            f"{cfg.data.image_size}px|b{cfg.train.batch_size}")


def step_milliseconds(cfg: Config, policy: str, steps: int = 4) -> float:
    """Median milliseconds of one training step of ``cfg``'s model under ``policy``."""
    import keras

    from ..models import build_model
    from .precision import dtype_policy

    size, batch = cfg.data.image_size, cfg.train.batch_size
    with dtype_policy(policy):
        model = build_model(cfg.model, size)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, size, size, 1)).astype("float32")
    y = np.eye(2, dtype="float32")[rng.integers(0, 2, batch)]
    model.train_on_batch(x, y)  # builds and traces the step
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(1000 * (time.perf_counter() - start))
    return float(np.median(times))


def measured_cpu_precision(cfg: Config, measure=step_milliseconds) -> str:
    """float32 or mixed_bfloat16 for ``cfg`` on this CPU, measured once and then read from the cache."""
    key = probe_key(cfg)
    file = _cache_file()
    try:
        known = json.loads(file.read_text()) if file.is_file() else {}
    except ValueError:
        known = {}  # a damaged cache is measured again
    if key not in known:
        times = {policy: measure(cfg, policy) for policy in CANDIDATES}
        faster = times["float32"] / times["mixed_bfloat16"] >= MIN_SPEEDUP
        known[key] = {"ms_per_step": times, "choice": "mixed_bfloat16" if faster else "float32"}
        atomic_write_json(file, known)
        print(f"pneumoscan: precision auto: float32 {times['float32']:.0f} ms/step, mixed_bfloat16 "
              f"{times['mixed_bfloat16']:.0f} ms/step on this CPU -> {known[key]['choice']}")
    return known[key]["choice"]
