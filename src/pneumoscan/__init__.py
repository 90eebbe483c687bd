"""pneumoscan: pneumonia detection on chest X-rays with convolutional neural networks.

The public API (:mod:`pneumoscan.api`): ``train``, ``adapt`` (a run recalibrated for a new site), ``load`` (a :class:`Predictor` with
``predict`` and ``predict_proba``), ``load_data``, ``open_run``, ``write_report``,
``gradcam`` and ``overlay``.

Stages, one subpackage each (see README, "Architecture"): ``imaging`` (a file -> pixels),
``data`` (data sets, splits, cache), ``models``, ``training``, ``evaluation``, ``report``
(figures, report.html, Grad-CAM), ``inference`` (predictor, engines), ``deploy`` (export,
web app).
"""
from __future__ import annotations

import os

# Keep TensorFlow's C++ start-up chatter out of the command line's and the notebook's output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"

__all__ = ["__version__", "train", "adapt", "load", "load_data", "open_run", "write_report", "gradcam", "overlay",
           "Config", "resolve_config", "Predictor", "Run"]


def __getattr__(name: str):
    # Lazy: ``import pneumoscan`` stays fast and TensorFlow loads only when a model is needed.
    if name in ("train", "adapt", "load", "load_data", "open_run", "Predictor", "Run"):
        from . import api

        return getattr(api, name)
    if name == "write_report":
        from .report import write_report

        return write_report
    if name in ("gradcam", "overlay"):
        from .report import gradcam

        return getattr(gradcam, name)
    if name == "Config":
        from .config import Config

        return Config
    if name == "resolve_config":
        from .config import resolve

        return resolve
    raise AttributeError(f"module 'pneumoscan' has no attribute {name!r}")
