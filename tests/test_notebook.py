"""The notebook runs end to end on the real data (tiny config), and is committed without outputs."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "pneumonia_detection.ipynb"


def test_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and "jupyter notebook notebooks/pneumonia_detection.ipynb" in first.source


def test_notebook_runs_end_to_end(shared_data, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    monkeypatch.setenv("PNEUMOSCAN_DATA", str(shared_data))
    monkeypatch.setenv("PNEUMOSCAN_NOTEBOOK_QUICK", "1")  # 64 px, 40 images per class and split, 1 epoch
    monkeypatch.setenv("PNEUMOSCAN_NOTEBOOK_RUN", str(run_dir))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # Raises CellExecutionError, with the cell and its traceback, on the first cell that fails.
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert json.loads((run_dir / "config.json").read_text())["train"]["epochs"] == 1
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"threshold {metrics['threshold']['value']:.4f}" in text
    assert f"open {(run_dir / 'report.html').as_uri()}" in text
    pictures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pictures) >= 9  # balance, samples, curves, confusion, ROC/PR, calibration, predictions, Grad-CAM x2
    for name in ("training_curves", "confusion_matrix", "roc_pr", "calibration", "sample_predictions", "gradcam_grid"):
        assert (run_dir / "plots" / f"{name}.png").is_file(), name
