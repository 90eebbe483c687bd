"""Predict on new images with a trained run.

    import numpy as np
    from PIL import Image
    import pneumoscan
    model = pneumoscan.load("runs/default")                 # or engine="onnx"
    xray = Image.open("xray.jpeg")
    model.predict(["xray.jpeg", "folder/", xray])           # DataFrame: path, probability, label, ood_score, in_scope, error, warning
    model.predict_proba([xray, np.asarray(xray)])           # (2, 2) calibrated [P(NORMAL), P(PNEUMONIA)]
    model.class_names, model.threshold, model.image_size

Inputs may be paths (files, folders searched recursively, globs), the bytes of an image
file, PIL images or numpy arrays, mixed in one list. Paths are expanded lazily and images
decoded one batch at a time, so memory stays bounded whatever the number of images.
"""
from __future__ import annotations

import itertools
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd

from ..data.inputs import iter_inputs
from ..errors import ImageReadError, RunError
from ..evaluation.calibration import apply_temperature
from ..imaging.loader import ImageSource, LoadedImage, load_image
from ..models.predict import predict_outputs
from ..options import CLASS_NAMES, ENGINES
from ..runs import Run

COLUMNS = ["path", "probability", "label", "ood_score", "in_scope", "error", "warning"]
WARNING_SEPARATOR = "; "  # several warnings share the one ``warning`` cell


@dataclass
class Entry:
    """One image to predict: how it is named in the results, and where its pixels come from."""

    name: str
    source: ImageSource | None = None
    error: str = ""  # set when the input could not even be found (missing file, empty folder, ...)


@dataclass
class Batch:
    """One batch of results: every row, and the pixels of the rows that were read."""

    rows: list[dict]
    images: np.ndarray  # (n, S, S) uint8, in the order of ``readable``
    readable: list[dict] = field(default_factory=list)  # the rows of ``images``, with probability and label

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=COLUMNS)


def iter_entries(inputs, names: Sequence[str] | None = None) -> Iterator[Entry]:
    """The images named by ``inputs``, lazily: paths are expanded (folders, globs), anything
    else (bytes, PIL images, arrays) is one image. With ``names``, every input is one image
    named by its entry in ``names``."""
    inputs = _as_list(inputs)
    if names is not None:
        names = list(names)
        if len(names) != len(inputs):
            raise ValueError(f"{len(names)} names for {len(inputs)} inputs: give one name per input")
        yield from (Entry(str(name), source) for name, source in zip(names, inputs))
        return
    for index, item in enumerate(inputs):
        if isinstance(item, (str, Path)):
            for path, error in iter_inputs([item]):
                yield Entry(path, None if error else path, error)
        else:
            kind = {np.ndarray: "array", bytes: "bytes", bytearray: "bytes"}.get(type(item), "image")
            yield Entry(f"<{kind} {index}>", item)


def _as_list(inputs) -> list:
    if isinstance(inputs, (str, Path, bytes, bytearray)) or _is_pil(inputs):
        return [inputs]
    if isinstance(inputs, np.ndarray):
        # (H, W) or (H, W, 3|4): one image; (N, H, W) or (N, H, W, C): N images.
        one = inputs.ndim == 2 or (inputs.ndim == 3 and inputs.shape[-1] in (3, 4))
        return [inputs] if one else list(inputs)
    return list(inputs)


def _is_pil(value) -> bool:
    from PIL import Image

    return isinstance(value, Image.Image)


class Predictor:
    """A trained model plus everything needed to use it: input size, temperature, threshold."""

    class_names = CLASS_NAMES

    def __init__(self, model, image_size: int, threshold: float, temperature: float = 1.0, name: str = "model",
                 engine: str = "keras", scope_threshold: float | None = None, abstain: bool = False):
        self.model, self.image_size, self.name, self.engine = model, int(image_size), name, engine
        self.threshold, self.temperature = float(threshold), float(temperature)
        # Out-of-scope score above this: the image is unlike the training data (None: no scope fitted).
        self.scope_threshold = None if scope_threshold is None else float(scope_threshold)
        self.abstain = abstain  # leave the label empty for out-of-scope images (the probability stays)

    @property
    def classifier(self):
        """The Keras classifier alone (for Grad-CAM), whatever the engine computes beside it."""
        from .engines import classifier

        return classifier(self.model)

    @classmethod
    def from_run(cls, run_dir: str | Path, engine: str = "keras", abstain: bool = False,
                 threads: int | None = None) -> "Predictor":
        """``engine``: "keras" (model.keras) or "onnx" (ONNX Runtime on RUN/export/model.onnx);
        ``abstain``: no label for images outside the model's scope; ``threads``: ONNX Runtime's
        intra-op threads (TensorFlow's are process-wide, see ``deploy.serve.set_threads``)."""
        from .engines import engine_image_size, load_engine

        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
        run = Run(Path(run_dir))
        cfg, metrics = run.config(), run.metrics()
        model = load_engine(run, engine, threads=threads)
        # The saved model's input shape is the truth; the config must agree with it.
        size = engine_image_size(model)
        if size is not None and size != cfg.data.image_size:
            raise RunError(f"{run.model_file}: the model takes {size} px images but {run.config_file} says "
                           f"data.image_size = {cfg.data.image_size}; the run directory is inconsistent")
        temperature = metrics.get("calibration", {}).get("temperature", 1.0)
        scope = metrics.get("scope", {}).get("threshold") if run.scope_file.is_file() else None
        return cls(model, size or cfg.data.image_size, metrics["threshold"]["value"], temperature,
                   name=str(run.root), engine=engine, scope_threshold=scope, abstain=abstain)

    # ------------------------------------------------------------------ arrays in, arrays out
    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Calibrated PNEUMONIA probability for (N, S, S) uint8 images already preprocessed."""
        return self.scores(images)[0]

    def scores(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Calibrated PNEUMONIA probability and out-of-scope score (None without a fitted scope)."""
        raw, scope = predict_outputs(self.model, images)
        return apply_temperature(raw, self.temperature), scope

    def predict_proba(self, inputs, batch_size: int = 32, names: Sequence[str] | None = None) -> np.ndarray:
        """(N, 2) calibrated probabilities, columns in ``class_names`` order, one row per image.

        An image that cannot be read gets a row of NaN and a warning naming it and the problem.
        """
        rows = pd.concat([b.table() for b in self.iter_batches(inputs, batch_size, names=names)] or
                         [pd.DataFrame(columns=COLUMNS)], ignore_index=True)
        for row in rows.itertuples(index=False):
            if row.error:
                warnings.warn(f"{row.path}: {row.error}", stacklevel=2)
        p = rows["probability"].to_numpy(dtype=np.float64)
        return np.stack([1.0 - p, p], axis=1)

    # ------------------------------------------------------------------ tables
    def predict(self, inputs, batch_size: int = 32, names: Sequence[str] | None = None) -> pd.DataFrame:
        """One row per image (path, probability, label, ood_score, in_scope, error, warning); unreadable inputs get an
        ``error`` and no probability, the others are still predicted."""
        tables = list(self.iter_predict(inputs, batch_size, names=names))
        return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=COLUMNS)

    def iter_predict(self, inputs, batch_size: int = 32, skip: Collection[str] = (),
                     names: Sequence[str] | None = None) -> Iterator[pd.DataFrame]:
        """``predict`` one batch at a time: a table of at most ``batch_size`` rows per step.

        Only one batch of images is ever in memory. Inputs named in ``skip`` (e.g. already in
        an output file) are left out without being read.
        """
        for batch in self.iter_batches(inputs, batch_size, skip, names):
            yield batch.table()

    def iter_batches(self, inputs, batch_size: int = 32, skip: Collection[str] = (),
                     names: Sequence[str] | None = None) -> Iterator[Batch]:
        """The labelling loop every consumer shares (``predict``, ``explain``, the app)."""
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        entries = (entry for entry in iter_entries(inputs, names) if entry.name not in skip)
        # Decoding threads: Pillow and numpy release the GIL while they work.
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            while chunk := list(itertools.islice(entries, batch_size)):
                yield self._batch(chunk, pool.map(self.load_entry, chunk))

    def load_entry(self, entry: Entry) -> LoadedImage | str:
        """The loaded image, or the reason it cannot be used."""
        if entry.error:
            return entry.error
        try:
            return load_image(entry.source, self.image_size, name=entry.name)
        except ImageReadError as exc:
            return exc.problem

    def _batch(self, chunk: list[Entry], loaded: Iterable[LoadedImage | str]) -> Batch:
        batch = self.unlabelled(chunk, loaded)
        if batch.readable:
            self.fill(batch.readable, *self.scores(batch.images))
        return batch

    def unlabelled(self, chunk: list[Entry], loaded: Iterable[LoadedImage | str]) -> Batch:
        """One row per entry, the unreadable ones with their error; the pixels of the readable
        ones, whose rows :meth:`fill` completes once the model has scored them."""
        rows, images, readable = [], [], []
        for entry, result in zip(chunk, loaded):
            row = {"path": entry.name, "probability": np.nan, "label": "", "ood_score": np.nan, "in_scope": None,
                   "error": "", "warning": ""}
            if isinstance(result, str):
                row["error"] = result
            else:
                row["warning"] = WARNING_SEPARATOR.join(result.warnings)
                images.append(result.array)
                readable.append(row)
            rows.append(row)
        stacked = np.stack(images) if images else np.zeros((0, self.image_size, self.image_size), np.uint8)
        return Batch(rows, stacked, readable)

    def fill(self, readable: list[dict], probs, ood) -> None:
        """Probability, label and scope of each readable row, from the model's scores."""
        for i, (row, p) in enumerate(zip(readable, probs)):
            row["probability"] = float(p)
            row["label"] = self.label(p)
            if ood is not None and self.scope_threshold is not None:
                row["ood_score"] = float(ood[i])
                row["in_scope"] = bool(ood[i] <= self.scope_threshold)
                if not row["in_scope"]:
                    note = (f"outside the model's scope (out-of-scope score {ood[i]:.2f} > {self.scope_threshold:.2f}): "
                            "unlike the pediatric frontal chest X-rays it learned from; do not trust the probability")
                    row["warning"] = WARNING_SEPARATOR.join(w for w in (row["warning"], note) if w)
                    if self.abstain:
                        row["label"] = ""

    def label(self, probability: float) -> str:
        """The class name at this model's threshold (PNEUMONIA when p >= threshold)."""
        return CLASS_NAMES[int(probability >= self.threshold)]

    def __repr__(self) -> str:
        return (f"Predictor({self.name!r}, engine={self.engine!r}, image_size={self.image_size}, "
                f"threshold={self.threshold:.4f}, temperature={self.temperature:.3f}, scope_threshold={self.scope_threshold})")


def load(run_dir: str | Path, engine: str = "keras", abstain: bool = False) -> Predictor:
    """A :class:`Predictor` for a finished run: ``pneumoscan.load("runs/x").predict("xray.jpeg")``."""
    return Predictor.from_run(run_dir, engine=engine, abstain=abstain)
