"""Prediction tables written as they come, and read back to resume an interrupted job.

By the output's name:
- ``.jsonl``: JSON Lines, one object per image, appended and flushed per batch;
- ``.json``: one JSON array, written (atomically) when the job ends; the rows wait in memory
  until then (rows only, a few hundred bytes each, never images);
- anything else (``.csv``): CSV with a header, appended and flushed per batch.
CSV and JSON Lines survive an interruption: every finished batch is on disk, and ``resume``
reads the paths already there (dropping a last line cut mid-write) so they are not redone.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pandas as pd

from ..paths import atomic_write_text


class PredictionFile:
    """One output file: ``done`` (paths already in it when resuming), ``write(table)``, ``close()``."""

    def __init__(self, path: str | Path, columns: list[str], resume: bool = False):
        self.path, self.columns = Path(path), list(columns)
        self.format = {".jsonl": "jsonl", ".json": "json"}.get(self.path.suffix.lower(), "csv")
        existing = _read_existing(self.path, self.format, self.columns) if resume and self.path.exists() else None
        self.done: set[str] = {str(row["path"]) for row in existing or []}
        self._rows: list[dict] = list(existing or [])  # for .json only: written at close()
        self._fh = None
        if self.format == "json":
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if existing is not None:
            # Rewrite what was read: a line cut mid-write by a kill must not stay in the file.
            atomic_write_text(self.path, _serialise(existing, self.format, self.columns, header=True))
        self._fh = open(self.path, "a" if existing is not None else "w", newline="", encoding="utf-8")
        if existing is None and self.format == "csv":
            self._fh.write(_serialise([], "csv", self.columns, header=True))
            self._fh.flush()

    def write(self, table: pd.DataFrame) -> None:
        rows = _records(table[self.columns])
        if self._fh is None:
            self._rows += rows
            return
        self._fh.write(_serialise(rows, self.format, self.columns, header=False))
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        elif self.format == "json":
            atomic_write_text(self.path, json.dumps(self._rows, indent=2) + "\n")

    def __enter__(self) -> "PredictionFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _records(table: pd.DataFrame) -> list[dict]:
    # NaN (no probability) becomes None: JSON null, an empty CSV cell.
    return [{k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}
            for row in table.to_dict("records")]


def _serialise(rows: list[dict], fmt: str, columns: list[str], header: bool) -> str:
    if fmt == "jsonl":
        return "".join(json.dumps(row) + "\n" for row in rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _read_existing(path: Path, fmt: str, columns: list[str]) -> list[dict]:
    """The complete rows of an earlier output file; a row cut by an interruption is dropped."""
    text = path.read_text(encoding="utf-8")
    if fmt == "json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError:
            raise ValueError(f"{path}: cannot resume, not a complete JSON array (a .json output is written only "
                             "at the end; use .csv or .jsonl for output that survives an interruption)") from None
        return [row for row in rows if isinstance(row, dict) and "path" in row]
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # the last line was being written when the job stopped
    if fmt == "jsonl":
        return [row for row in map(_json_or_none, text.splitlines()) if isinstance(row, dict) and "path" in row]
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if text and reader.fieldnames != columns:
        raise ValueError(f"{path}: cannot resume, its columns are {reader.fieldnames}, expected {columns}")
    return [row for row in reader if None not in row and None not in row.values()]


def _json_or_none(line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None
