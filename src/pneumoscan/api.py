"""The public Python API: train a run, load it, predict.

    import numpy as np
    from PIL import Image
    import pneumoscan
    run = pneumoscan.train(data="path/to/chest_xray", out="runs/x", config="quick")
    model = pneumoscan.load("runs/x", engine="onnx")
    pil_image = Image.open("a.jpeg")
    uint8_array = np.asarray(pil_image)
    model.predict(["a.jpeg", uint8_array, pil_image])     # DataFrame: path, probability, label, ood_score, in_scope, error, warning
    model.predict_proba([uint8_array])                     # ndarray (1, 2): P(NORMAL), P(PNEUMONIA)
    site = pneumoscan.adapt("runs/x", data="site.csv", out="runs/x-site")  # recalibrated for a new hospital

``train`` runs the whole flow: data -> training -> evaluation (metrics.json) -> report
(figures and report.html). The command line's ``pneumoscan train`` calls it too.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping

from .config import Config, merge, resolve
from .inference.predictor import Predictor, load
from .runs import Run

__all__ = ["train", "adapt", "load", "load_data", "open_run", "Predictor", "Run"]


def as_config(config: Config | str | Path | Mapping | None = None,
              overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Config:
    """A Config from a Config, a named config (``"quick"``), a config file, or {section: {key: value}}."""
    if isinstance(config, Config):
        cfg = config
    elif isinstance(config, Mapping):
        cfg = resolve(None, config)
    else:
        cfg = resolve(config)
    return merge(cfg, overrides, from_text=True) if overrides else cfg


def train(data: str | Path | None = None, out: str | Path = "runs/latest",
          config: Config | str | Path | Mapping | None = None, *,
          overrides: Mapping[str, Mapping[str, Any]] | None = None, resume: bool = False,
          verbose: int | None = None, placement=None) -> Run:
    """Train, evaluate and report: returns the finished :class:`~pneumoscan.runs.Run`.

    ``config``: a :class:`Config`, a named config (``"default"``, ``"quick"``), a TOML/JSON
    file, or {section: {key: value}}; ``overrides`` are applied on top. ``resume=True``
    continues the interrupted run in ``out`` with its saved config (``config`` is ignored).
    ``placement`` (:mod:`pneumoscan.training.strategy`) says where to train.
    """
    from .evaluation import evaluate_prepared
    from .training.loop import fit, mark_complete

    cfg = None if resume else as_config(config, overrides)
    fitted = fit(cfg, data=data, out=out, resume=resume, verbose=verbose, placement=placement)
    if fitted.prepared is None or fitted.model is None:
        return fitted.run  # already complete, or a worker that is not the chief
    evaluate_prepared(fitted.run, fitted.model, fitted.prepared, fitted.config, training=fitted.state)
    mark_complete(fitted)
    write_report_or_warn(fitted.run)
    return fitted.run


def adapt(run: str | Path, data: str | Path, out: str | Path, *, finetune: bool = False, holdout: float = 0.3,
          seed: int = 0, epochs: int = 10, skip_unreadable: bool = False, parent_data: str | Path | None = None) -> Run:
    """Adapt a finished run to a new site (:mod:`pneumoscan.training.adapt`): recalibrate (and with
    ``finetune`` fine-tune) on the site's labelled images in ``data`` (a CSV or NORMAL/ and
    PNEUMONIA/ folders), held-out patients measured before and after; returns the new run."""
    from .training.adapt import AdaptSettings, adapt_run

    settings = AdaptSettings(holdout=holdout, seed=seed, finetune=finetune, epochs=epochs,
                             skip_unreadable=skip_unreadable, parent_data=str(parent_data) if parent_data else None)
    new = adapt_run(run, data, out, settings)
    write_report_or_warn(new)
    return new


def load_data(data: str | Path | None = None, config: Config | str | Path | Mapping | None = None):
    """The data set as a run would see it: images per split (as the model sees them), labels,
    the patient-grouped splits and a summary (``.collection.summary()``, ``.counts()``)."""
    from .data.dataset import prepare
    from .data.locate import resolve_data_path

    cfg = as_config(config)
    return prepare(cfg.data, resolve_data_path(data or cfg.data.path, cfg.data.source))


def open_run(run_dir: str | Path) -> Run:
    """A run directory, to read back: ``.metrics()``, ``.history()``, ``.predictions()``, ``.config()``."""
    run = Run(Path(run_dir))
    run.config()  # fails now, naming the file, on a folder that is no run
    return run


def write_report_or_warn(run: Run) -> None:
    """Figures and report.html for a finished run; a failure here must never cost the trained run."""
    try:
        from .report import write_report

        write_report(run.root)
    except Exception as exc:  # the model and metrics are already saved: warn and go on
        print(f"pneumoscan: warning: could not write {run.report_file} ({type(exc).__name__}: {exc}); "
              f"the run itself is complete. Retry with: pneumoscan report {run.root}", file=sys.stderr)
