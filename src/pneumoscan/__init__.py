"""pneumoscan: pneumonia detection on chest X-rays with convolutional neural networks."""
from __future__ import annotations

import os

# Keep TensorFlow's C++ start-up chatter out of the command line's output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"


def load(run_dir):
    """A Predictor for a finished run: ``pneumoscan.load("runs/x").predict("xray.jpeg")``."""
    from .predict import load as _load

    return _load(run_dir)

