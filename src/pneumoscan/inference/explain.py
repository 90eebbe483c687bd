"""``pneumoscan explain``: predict like ``predict`` and save a Grad-CAM picture per image.

It streams exactly as ``predict`` does (:meth:`Predictor.iter_batches`: inputs expanded
lazily, one batch of images in memory) and shares its labelling, so the probability and
label of an image are the same in both.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import keras
import numpy as np
import pandas as pd

from ..paths import atomic_write
from ..report.gradcam import GradCam, overlay
from .predictor import Predictor

COLUMNS = ["path", "probability", "label", "heatmap_png", "error"]
BATCH_SIZE = 32


def iter_explain(run_dir_or_predictor, inputs, out_dir: str | Path, layer: str | None = None,
                 batch_size: int = BATCH_SIZE) -> Iterator[pd.DataFrame]:
    """Explain ``inputs`` one batch at a time: yields a table per batch (path, probability,
    label, heatmap_png, error) after writing that batch's PNGs into ``out_dir``."""
    predictor = (run_dir_or_predictor if isinstance(run_dir_or_predictor, Predictor)
                 else Predictor.from_run(run_dir_or_predictor))
    if not isinstance(predictor.model, keras.Model):
        raise ValueError(f"Grad-CAM needs the run's Keras model, not {getattr(predictor.model, 'name', predictor.model)!r}")
    explainer = GradCam(predictor.classifier, layer=layer)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    for batch in predictor.iter_batches(inputs, batch_size):
        for row in batch.rows:
            row["heatmap_png"] = ""
        maps = explainer(batch.images) if len(batch.images) else []
        for row, image, heat in zip(batch.readable, batch.images, maps):
            png = out_dir / _png_name(row["path"], taken)
            _save_panel(png, image, heat, f"{Path(row['path']).name}: {row['label']} "
                        f"(p(pneumonia) = {row['probability']:.3f}, threshold {predictor.threshold:.3f})")
            row["heatmap_png"] = str(png)
        yield pd.DataFrame(batch.rows, columns=COLUMNS)


def explain_paths(run_dir_or_predictor, inputs, out_dir: str | Path, layer: str | None = None) -> pd.DataFrame:
    """Predict and explain images (paths, folders, globs, arrays...); one overlay PNG per image in ``out_dir``.

    Returns one row per input: path, probability (calibrated), label (at the run's threshold),
    heatmap_png, error. An input that cannot be read gets an error row; the rest are processed.
    """
    tables = list(iter_explain(run_dir_or_predictor, inputs, out_dir, layer))
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=COLUMNS)


def _save_panel(path: Path, image: np.ndarray, heatmap: np.ndarray, title: str) -> None:
    """X-ray | Grad-CAM overlay side by side, with the prediction in the title."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    evidence = "Grad-CAM: evidence for PNEUMONIA" if heatmap.max() > 0 else "Grad-CAM: no evidence for PNEUMONIA"
    for ax, picture, caption in zip(fig.subplots(1, 2), (image, overlay(image, heatmap)),
                                    ("X-ray (as the model sees it)", evidence)):
        ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=255)
        ax.set_title(caption, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def _png_name(path: str, taken: set[str]) -> str:
    """``<stem>_gradcam.png``, numbered when two inputs share a stem."""
    stem = re.sub(r"[^\w.-]+", "_", Path(path).stem) or "image"
    name, n = f"{stem}_gradcam.png", 1
    while name in taken:
        n += 1
        name = f"{stem}_{n}_gradcam.png"
    taken.add(name)
    return name
