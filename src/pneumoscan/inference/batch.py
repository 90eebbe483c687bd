"""``pneumoscan predict`` on any number of images: batches in, rows out as they come.

Memory stays bounded: inputs are expanded lazily and one batch of images is decoded at a
time. Each batch is appended to the output file (see :mod:`pneumoscan.inference.files`)
and printed before the next one is read, so an interrupted job keeps its finished batches
and ``resume`` carries on from there.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pandas as pd

from ..data.inputs import iter_inputs
from .files import PredictionFile
from .predictor import COLUMNS, Predictor


@dataclass
class BatchSummary:
    rows: int = 0  # rows written in this call (images and failed inputs)
    failed: int = 0
    warned: int = 0
    out_of_scope: int = 0
    already_done: int = 0  # paths found in the output file and not predicted again


def predict_to_output(predictor: Predictor, inputs: Iterable[str | Path], *, batch_size: int = 32,
                      output: str | Path | None = None, resume: bool = False, progress: bool = False,
                      echo: bool = True) -> BatchSummary:
    """Predict ``inputs`` batch by batch, writing each batch to ``output`` and stdout as it is done."""
    inputs = list(inputs)  # the user's arguments (a few paths or patterns), not the images
    if resume and not output:
        raise ValueError("--resume needs --output FILE: the output of the interrupted job")
    summary = BatchSummary()
    with (PredictionFile(output, COLUMNS, resume=resume) if output else _NoFile()) as out:
        summary.already_done = len(out.done)
        bar = _progress_bar(inputs, out.done) if progress else None
        try:
            for table in predictor.iter_predict(inputs, batch_size, skip=out.done):
                out.write(table)
                if echo:
                    _print(format_rows(table, header=summary.rows == 0), bar)
                summary.rows += len(table)
                summary.failed += int((table["error"] != "").sum())
                summary.warned += int((table["warning"] != "").sum())
                summary.out_of_scope += int((table["in_scope"] == False).sum())  # noqa: E712 (None: no score)
                if bar is not None:
                    bar.update(len(table))
        finally:
            if bar is not None:
                bar.close()
    return summary


def format_rows(table: pd.DataFrame, header: bool) -> str:
    """Fixed-width lines (probability, label, path, then the error or warning if any)."""
    lines = [f"{'probability':>11}  {'label':<9}  path"] if header else []
    for row in table.itertuples(index=False):
        probability = "" if math.isnan(row.probability) else f"{row.probability:.4f}"
        note = f"error: {row.error}" if row.error else (f"warning: {row.warning}" if row.warning else "")
        lines.append(f"{probability:>11}  {row.label or '-':<9}  {row.path}" + (f"  ({note})" if note else ""))
    return "\n".join(lines)


def _progress_bar(inputs: list, done: set[str]):
    from tqdm import tqdm

    # Counting walks the folders once more (names only) so the bar can show an ETA.
    total = sum(1 for path, _ in iter_inputs(inputs) if path not in done)
    return tqdm(total=total, unit="image", file=sys.stderr, dynamic_ncols=True)


def _print(text: str, bar) -> None:
    if bar is None:
        print(text, flush=True)
    else:
        bar.write(text, file=sys.stdout)  # clears and redraws the bar around the lines


class _NoFile:
    """Stands in for an output file when there is none."""

    done: frozenset[str] = frozenset()

    def write(self, table) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass
