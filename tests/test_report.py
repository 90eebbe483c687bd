"""Figures and report.html of a real (tiny) run, checked on disk and in a real headless browser."""
from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pneumoscan.cli import main
from pneumoscan.report.plots import PLOT_FILES, select_gradcam_cases, select_samples

from conftest import CHROMIUM_ARGS


def copy_run(run, tmp_path) -> Path:
    """A private copy of the shared run, so a test may break or redraw it."""
    out = tmp_path / "run"
    shutil.copytree(run.root, out, ignore=shutil.ignore_patterns("checkpoints"))
    return out


def assert_png(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG", path
        image.load()  # decodes every pixel: a truncated file fails here
        assert min(image.size) >= 150, (path, image.size)
    assert path.stat().st_size < 600_000, f"{path} is {path.stat().st_size} bytes"


def test_training_writes_every_figure_and_the_report(tiny_run):
    for name in PLOT_FILES:
        assert_png(tiny_run.root / "plots" / name)
    html = (tiny_run.root / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == len(PLOT_FILES)
    assert "figure not drawn" not in html


def test_report_is_self_contained(tiny_run):
    html = (tiny_run.root / "report.html").read_text()
    sources = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']*)', html, flags=re.IGNORECASE)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources), sources[:5]
    assert not re.search(r"https?://", html), re.search(r".{40}https?://.{40}", html)
    assert "<script" not in html.lower() and "<link" not in html.lower() and "@import" not in html


def metric_at(metrics: dict, path: str):
    """Follow a dotted key path; keys may hold dots themselves (``at_0.5``, ``fixed:0.5``)."""
    node = metrics
    while path:
        key = next((k for k in sorted(node, key=len, reverse=True) if path == k or path.startswith(k + ".")), None)
        assert key is not None, f"no key for {path!r} among {list(node)}"
        node, path = node[key], path[len(key) + 1:]
    return node


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def test_report_in_a_real_browser(tiny_run, chromium):
    from playwright.sync_api import sync_playwright

    metrics = json.loads(tiny_run.metrics_file.read_text())
    problems, requests = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto((tiny_run.root / "report.html").as_uri(), wait_until="load")
            widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.alt, i.complete, i.naturalWidth])")
            cells = page.eval_on_selector_all(
                "[data-metric]", "els => els.map(e => [e.dataset.metric, e.dataset.value, e.textContent])")
            title = page.title()
        finally:
            browser.close()
    assert problems == []
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
    assert len(widths) == len(PLOT_FILES) and all(done and w > 0 for _, done, w in widths), widths
    assert tiny_run.root.name in title
    shown = {name for name, _, _ in cells}
    for key in ("threshold.value", "test.accuracy", "test.ci95.accuracy", "test.at_0.5.accuracy", "val.roc_auc",
                "kaggle_val.sensitivity", "calibration.temperature", "calibration.ece.test.after",
                "alternatives.youden.test.specificity", "alternatives.fixed:0.5.val.accuracy"):
        assert key in shown, key
    for name, value, text in cells:
        expected = metric_at(metrics, name)
        assert same(json.loads(value), expected), (name, value, expected)
        if isinstance(expected, float):  # the number a person reads is the same one, rounded
            assert text == ("n/a" if math.isnan(expected) else f"{expected:.3f}"), (name, text, expected)


def test_report_command_redraws_everything(tiny_run, tmp_path, capsys):
    run_dir = copy_run(tiny_run, tmp_path)
    shutil.rmtree(run_dir / "plots")
    (run_dir / "report.html").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert str(run_dir / "report.html") in capsys.readouterr().out
    for name in PLOT_FILES:
        assert_png(run_dir / "plots" / name)
    assert (run_dir / "report.html").read_text().count("data:image/png;base64,") == len(PLOT_FILES)


def test_a_broken_input_costs_one_figure_not_the_report(tiny_run, tmp_path, capsys):
    run_dir = copy_run(tiny_run, tmp_path)
    (run_dir / "history.csv").unlink()
    assert main(["report", str(run_dir)]) == 1
    captured = capsys.readouterr()
    assert f"{run_dir / 'history.csv'}: not found" in captured.err
    assert "training_curves.png" in captured.out
    assert not (run_dir / "plots" / "training_curves.png").exists()  # the old picture is not kept either
    for name in PLOT_FILES[1:]:
        assert_png(run_dir / "plots" / name)
    html = (run_dir / "report.html").read_text()
    assert "figure not drawn" in html and "history.csv: not found" in html
    assert html.count("data:image/png;base64,") == len(PLOT_FILES) - 1


def test_report_of_a_folder_that_is_no_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert f"{tmp_path / 'config.json'}: not found" in capsys.readouterr().err


def test_a_failing_report_never_costs_the_trained_run(tiny_run, tmp_path, capsys):
    from pneumoscan.runs import Run
    from pneumoscan.api import write_report_or_warn

    run_dir = copy_run(tiny_run, tmp_path)
    (run_dir / "metrics.json").write_text("{ truncated")
    write_report_or_warn(Run(run_dir))  # warns, does not raise
    err = capsys.readouterr().err
    assert "warning: could not write" in err and f"pneumoscan report {run_dir}" in err
    assert (run_dir / "model.keras").is_file()


def test_sample_and_gradcam_choices(tiny_run):
    table = pd.read_csv(tiny_run.predictions_file)
    test = table[table["split"] == "test"]
    picked = select_samples(test)
    assert list(picked["path"]) == list(select_samples(test)["path"])  # deterministic
    wrong = test["label"] != test["predicted"]
    n_wrong = int((picked["label"] != picked["predicted"]).sum())
    assert len(picked) == min(12, len(test))
    # a third of them mistakes, or more when there are too few correct ones to fill the grid
    assert n_wrong == max(min(int(wrong.sum()), len(picked) // 3), len(picked) - int((~wrong).sum()))
    cases = select_gradcam_cases(test)
    expected = {"true positives": (1, 1), "false positives": (0, 1), "false negatives": (1, 0)}
    for name, (label, predicted) in expected.items():
        rows = cases[name]
        assert len(rows) == min(4, int(((test["label"] == label) & (test["predicted"] == predicted)).sum()))
        assert (rows["label"] == label).all() and (rows["predicted"] == predicted).all()
    fp = cases["false positives"]["probability"].to_numpy()
    assert (np.diff(fp) <= 0).all()  # the most confident mistakes first


def test_report_images_come_from_medmnist_too(mnist_npz, capsys):
    from pneumoscan.config import resolve
    from pneumoscan.imaging import resize_square
    from pneumoscan.report.images import images_for_report

    cfg = resolve(overrides={"data": {"source": "medmnist", "path": str(mnist_npz), "image_size": 64}})
    images, kept = images_for_report(["pneumoniamnist.npz:test:3", "/no/such/xray.jpeg", "pneumoniamnist.npz:test:9999999"],
                               cfg)
    assert kept == [0] and images.shape == (1, 64, 64)
    with np.load(mnist_npz) as npz:
        assert np.array_equal(images[0], resize_square(npz["test_images"][3], 64))
    err = capsys.readouterr().err
    assert "/no/such/xray.jpeg: file not found" in err and "pneumoniamnist.npz:test:9999999" in err


def test_no_value_can_inject_markup_into_the_report(tiny_run, tmp_path):
    from pneumoscan.report.html import render_report

    run = copy_run(tiny_run, tmp_path)
    evil = "<script>alert('x')</script><img src=x onerror=alert(1)>"
    config = json.loads((run / "config.json").read_text())
    config["data"]["path"] = f"/data/{evil}"
    (run / "config.json").write_text(json.dumps(config))
    environment = json.loads((run / "environment.json").read_text())
    environment["command"] = f"pneumoscan train --out {evil}"
    (run / "environment.json").write_text(json.dumps(environment))
    from pneumoscan.report.model_card import write_model_card

    evil_dir = run.parent / "<img src=x onerror=alert(2)>"
    run.rename(evil_dir)
    run = evil_dir
    write_model_card(run)
    html = render_report(run)
    assert "<script" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(" in html  # shown as text, escaped
    assert html.count("<img ") == len(PLOT_FILES)  # only the figures


def test_every_run_writes_a_model_card_and_the_report_shows_it(tiny_run):
    card = (tiny_run.root / "MODEL_CARD.md").read_text()
    for heading in ("## Intended use", "## Training data", "## Performance", "## Out-of-scope detection",
                    "## Known failure modes", "## Adapting to a new site"):
        assert heading in card, heading
    metrics = tiny_run.metrics()
    assert "not a diagnosis" in card and "Guangzhou" in card  # the tiny run trains on the Kermany folder
    splits = pd.read_csv(tiny_run.splits_file)
    train = splits[splits["split"] == "train"]
    assert (f"| train | fitted on | {int((train['label'] == 0).sum())} | {int((train['label'] == 1).sum())} "
            f"| {train['patient_id'].nunique()} |") in card
    assert f"| test | {metrics['test']['n']} | {100 * metrics['test']['accuracy']:.1f}%" in card
    assert f"{100 * metrics['scope']['flagged']['test']:.1f}%" in card
    html = (tiny_run.root / "report.html").read_text()
    section = html[html.index('id="model-card"'):]
    assert "<h2>Intended use</h2>" in section and "<table>" in section


def test_report_scores_extra_folders_for_the_scope_figure(tiny_run, tmp_path, shared_data, capsys):
    run_dir = copy_run(tiny_run, tmp_path)
    adults = tmp_path / "adults"
    adults.mkdir()
    for source in sorted((shared_data / "adult_cxr_ccby").rglob("*.png"))[:12]:
        shutil.copy(source, adults / source.name)
    (adults / "broken.png").write_bytes(b"no image")
    assert main(["report", str(run_dir), "--scope-folder", str(adults)]) == 0
    captured = capsys.readouterr()
    assert "scored 12 images of adults" in captured.out and "broken.png" in captured.err
    extra = pd.read_csv(run_dir / "scope_extra.csv")
    assert list(extra["group"].unique()) == ["adults"] and len(extra) == 12
    assert_png(run_dir / "plots" / "scope_scores.png")
    assert "| adults (n=12" in (run_dir / "MODEL_CARD.md").read_text()
    # Scoring the same folder again replaces its rows rather than adding to them.
    assert main(["report", str(run_dir), "--scope-folder", str(adults)]) == 0
    assert len(pd.read_csv(run_dir / "scope_extra.csv")) == 12
