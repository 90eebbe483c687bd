"""One self-contained HTML page per run: ``RUN/report.html``.

Everything is inside the file (figures as base64 data URIs, inline CSS, no script), so it
opens from disk with no server and no network. A Content-Security-Policy forbids any
other source, so a stray external link could not load even by mistake. Every number shown
from ``metrics.json`` carries ``data-metric="test.accuracy"`` (its key path) and
``data-value`` (its exact JSON value), so a test can check the page against the file.
"""
from __future__ import annotations

import base64
import json
import math
from html import escape
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from ..data.sources import CLASS_NAMES
from ..paths import atomic_write_text
from ..runs import Run, RunError
from .plots import PLOT_FILES, draw_plots, read_table

REPORTED_SPLITS = ("val", "test", "kaggle_val")
SPLIT_ORDER = ("train", "val", "test", "kaggle_val")
SPLIT_NOTES = {
    "train": "fitted on",
    "val": "carved from train, grouped by patient; chooses epoch, temperature and threshold",
    "test": "official test split, reported only",
    "kaggle_val": "Kermany's 16-image val folder, for information only",
}
METRIC_COLUMNS = (  # (key in metrics.json, column title)
    ("n", "n"), ("accuracy", "accuracy"), ("sensitivity", "sensitivity"), ("specificity", "specificity"),
    ("precision", "precision"), ("f1", "F1"), ("balanced_accuracy", "balanced acc."),
    ("roc_auc", "ROC-AUC"), ("pr_auc", "PR-AUC"),
)
ALTERNATIVE_COLUMNS = (("threshold", "threshold"), ("accuracy", "accuracy"), ("sensitivity", "sensitivity"),
                       ("specificity", "specificity"), ("f1", "F1"), ("balanced_accuracy", "balanced acc."))
FIGURES = {  # file -> (heading, caption)
    "training_curves.png": ("Training curves", "Accuracy, loss and ROC-AUC per epoch on train and val."),
    "confusion_matrix.png": ("Confusion matrix", "Test split at the chosen threshold: counts and row percentages."),
    "roc_pr.png": ("ROC and precision-recall", "Val and test curves; the dot is the chosen operating point, "
                   "the dotted lines the pneumonia prevalence."),
    "calibration.png": ("Calibration", "Reliability diagrams before and after temperature scaling."),
    "sample_predictions.png": ("Sample predictions", "Test images with actual and predicted label and "
                               "P(pneumonia); mistakes in red. A seeded pick, a third of them mistakes."),
    "gradcam_grid.png": ("Grad-CAM", "Where the model found evidence for pneumonia: the most confident true "
                         "positives, false positives and false negatives of the test split."),
}
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1100px;
 padding:1rem 1.5rem 3rem;color:#1f2328;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.25rem;border-bottom:1px solid #d0d7de;
 padding-bottom:.2rem;margin-top:2rem}h3{font-size:1.05rem}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.9rem}
th,td{border:1px solid #d0d7de;padding:.25rem .55rem;text-align:right;vertical-align:top}
th{background:#f6f8fa}td.name,th.name{text-align:left}
small{color:#57606a;white-space:nowrap}.note{color:#57606a;font-size:.9rem}
.missing{color:#cf222e}figure{margin:1rem 0}figure img{max-width:100%;height:auto;border:1px solid #d0d7de}
figcaption{color:#57606a;font-size:.9rem}code{background:#f6f8fa;padding:0 .25rem}
.disclaimer{background:#fff8c5;border:1px solid #d4a72c;padding:.5rem .8rem;font-size:.9rem}
"""
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


# ----------------------------------------------------------------------- small pieces
def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def _metric(path: Sequence[str], value: Any, text: str | None = None, tag: str = "span") -> str:
    """An element showing ``value`` that names its key path in metrics.json and holds its exact value."""
    return (f'<{tag} data-metric="{escape(".".join(path))}" data-value="{escape(json.dumps(value))}">'
            f"{escape(_fmt(value) if text is None else text)}</{tag}>")


def _table(headers: Iterable[str], rows: Iterable[Iterable[str]], name_columns: int = 1) -> str:
    """Cells are HTML already (each escaped where it was made)."""
    head = "".join(f'<th class="name">{h}</th>' if i < name_columns else f"<th>{h}</th>" for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td class="name">{c}</td>' if i < name_columns else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(title: str, *parts: str) -> str:
    return f"<section><h2>{escape(title)}</h2>{''.join(parts)}</section>"


def _p(text: str, cls: str | None = None) -> str:
    return f'<p class="{cls}">{escape(text)}</p>' if cls else f"<p>{escape(text)}</p>"


def _in_split_order(keys: Iterable[str]) -> list[str]:
    keys = list(keys)
    return [s for s in SPLIT_ORDER if s in keys] + sorted(set(keys) - set(SPLIT_ORDER))


def describe_rule(rule: str) -> str:
    """A threshold rule in words."""
    name, _, arg = rule.partition(":")
    if name == "sensitivity":
        return f"the highest threshold whose validation sensitivity is at least {float(arg):.0%}"
    if name == "fixed":
        return f"a fixed threshold of {arg}"
    if name in ("youden", "balanced_accuracy"):
        return "the threshold that maximises sensitivity + specificity - 1 (Youden's J) on validation"
    return rule


# ------------------------------------------------------------------------------ sections
def _header(run: Run, metrics: dict, environment: dict) -> str:
    thr = metrics["threshold"]
    facts = [f"model {metrics.get('model', '?')}", f"{metrics.get('image_size', '?')} px"]
    if environment.get("created"):
        facts.append(f"created {environment['created']}")
    return (f"<h1>pneumoscan report: {escape(run.root.name)}</h1>"
            f'<p class="note">{escape(str(run.root.resolve()))}<br>{escape(" · ".join(facts))}</p>'
            f"<p>Decision threshold {_metric(['threshold', 'value'], thr['value'])} "
            f"(rule <code>{escape(thr['rule'])}</code>, chosen on {escape(thr.get('chosen_on', 'val'))}).</p>"
            '<p class="disclaimer">pneumoscan is a research and screening aid, not a medical device.</p>')


def _data_summary(run: Run) -> str:
    try:
        splits = read_table(run.splits_file, ("label", "split", "patient_id"))
    except RunError as exc:
        return _section("Data", _p(f"not available: {exc}", "missing"))
    rows = []
    for split in _in_split_order(set(splits["split"])):
        part = splits[splits["split"] == split]
        cells = [escape(split), escape(SPLIT_NOTES.get(split, ""))]
        for label in (0, 1):
            of_class = part[part["label"] == label]
            cells += [str(len(of_class)), str(of_class["patient_id"].nunique())]
        cells += [str(len(part)), str(part["patient_id"].nunique())]
        rows.append(cells)
    headers = ["split", "role"] + [f"{c} {w}" for c in CLASS_NAMES for w in ("images", "patients")] + ["images", "patients"]
    return _section("Data", _p(f"From {run.splits_file.name}: images and patients per split and class. "
                               "No patient is in two splits."), _table(headers, rows, name_columns=2))


def _metric_rows(metrics: dict, block: str | None) -> list[list[str]]:
    """One row per split of the metrics at the chosen threshold (``block`` None) or in ``block`` (at_0.5)."""
    rows = []
    for split in REPORTED_SPLITS:
        if split not in metrics:
            continue
        prefix = [split] + ([block] if block else [])
        values = metrics[split][block] if block else metrics[split]
        ci = values.get("ci95", {})
        cells = [escape(split)]
        for key, _ in METRIC_COLUMNS:
            cell = _metric(prefix + [key], values.get(key))
            if key in ci:
                lo, hi = ci[key]
                cell += f"<br><small>{_metric(prefix + ['ci95', key], ci[key], f'{_fmt(lo)}–{_fmt(hi)}')}</small>"
            cells.append(cell)
        (tn, fp), (fn, tp) = values["confusion_matrix"]
        cells.append(_metric(prefix + ["confusion_matrix"], values["confusion_matrix"],
                             f"TN {tn} · FP {fp} · FN {fn} · TP {tp}"))
        rows.append(cells)
    return rows


def _metrics_section(metrics: dict) -> str:
    headers = ["split"] + [title for _, title in METRIC_COLUMNS] + ["confusion"]
    thr = metrics["threshold"]
    return _section(
        "Metrics",
        f"<h3>At the chosen threshold ({escape(_fmt(thr['value']))})</h3>",
        _p("Positive class: PNEUMONIA. Small print: 95% bootstrap confidence interval (stratified)."),
        _table(headers, _metric_rows(metrics, None)),
        "<h3>At 0.5</h3>",
        _table(headers, _metric_rows(metrics, "at_0.5")),
    )


def _threshold_section(metrics: dict) -> str:
    thr = metrics["threshold"]
    rows = []
    for rule, per_split in (metrics.get("alternatives") or {}).items():
        for split in _in_split_order(per_split):
            name = f"{rule} (chosen)" if rule == thr["rule"] else rule
            rows.append([escape(name), escape(split)] + [_metric(["alternatives", rule, split, key],
                                                                 per_split[split].get(key))
                                                         for key, _ in ALTERNATIVE_COLUMNS])
    parts = [_p(f"Rule {thr['rule']}: {describe_rule(thr['rule'])}, chosen on {thr.get('chosen_on', 'val')} "
                f"from the calibrated probabilities; an image is called PNEUMONIA when its probability "
                f"is at or above the threshold."),
             f"<p>Threshold: {_metric(['threshold', 'value'], thr['value'])}</p>"]
    if rows:
        parts += ["<h3>Other threshold rules</h3>",
                  _p("Each rule chooses its threshold on val; shown for comparison, never used to pick the one above."),
                  _table(["rule", "split"] + [t for _, t in ALTERNATIVE_COLUMNS], rows, name_columns=2)]
    return _section("Decision threshold", *parts)


def _calibration_section(metrics: dict) -> str:
    cal = metrics.get("calibration")
    if not cal:
        return _section("Calibration", _p("metrics.json holds no calibration.", "missing"))
    rows = [[escape(split), _metric(["calibration", "ece", split, "before"], ece.get("before")),
             _metric(["calibration", "ece", split, "after"], ece.get("after"))]
            for split, ece in ((s, cal["ece"][s]) for s in _in_split_order(cal.get("ece") or {}))]
    return _section(
        "Calibration",
        f"<p>Method: {escape(str(cal.get('method', '')))}, fitted on {escape(str(cal.get('fitted_on', 'val')))}; "
        f"temperature T = {_metric(['calibration', 'temperature'], cal.get('temperature'))}. "
        "T divides the logit, so it changes confidence but never the ranking (ROC-AUC is unchanged).</p>",
        _table(["split", "ECE before", "ECE after"], rows),
    )


def _training_section(metrics: dict) -> str:
    training = metrics.get("training")
    if not training:
        return ""
    items = [("epochs run", "epochs_run"), ("best epoch", "best_epoch"), ("best val ROC-AUC", "best"),
             ("training seconds", "train_seconds"), ("stopped", "stopped")]
    rows = [[escape(title), _metric(["training", key], training[key],
                                    "no: ran every epoch" if key == "stopped" and training[key] is None else None)]
            for title, key in items if key in training]
    return _section("Training", _table(["", "value"], rows))


def _figure(plots_dir: Path, name: str, failures: dict[str, str]) -> str:
    heading, caption = FIGURES[name]
    file = plots_dir / name
    if not file.is_file():
        why = failures.get(name, f"{file} not found")
        return f"<h3>{escape(heading)}</h3>" + _p(f"figure not drawn: {why}", "missing")
    data = base64.b64encode(file.read_bytes()).decode("ascii")
    return (f"<figure><h3>{escape(heading)}</h3><img src=\"data:image/png;base64,{data}\" alt=\"{escape(heading)}\">"
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def _config_section(run: Run, environment: dict) -> str:
    config = run.config().to_dict()
    rows = [[escape(f"{section}.{key}"), escape(json.dumps(value))]
            for section, values in config.items() for key, value in values.items()]
    env_rows = [[escape(k), escape(str(environment[k]))] for k in ("python", "platform", "cpu_count", "command")
                if k in environment]
    env_rows += [[escape(k), escape(str(v))] for k, v in (environment.get("packages") or {}).items() if v]
    parts = [_p(f"Resolved configuration ({run.config_file.name}); "
                f"`pneumoscan train --config {run.config_file} --out NEW` repeats this run."),
             _table(["key", "value"], rows, name_columns=2)]
    if env_rows:
        parts += ["<h3>Environment</h3>", _table(["", "value"], env_rows, name_columns=2)]
    return _section("Configuration", *parts)


def _environment(run: Run) -> dict:
    try:
        return json.loads(run.environment_file.read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # only shown for information; its absence must not stop a report


def render_report(run_dir: str | Path, failures: dict[str, str] | None = None) -> str:
    """The report page of a run as one HTML string (figures taken from ``RUN/plots/``)."""
    run = Run(Path(run_dir))
    metrics = run.metrics()
    if "threshold" not in metrics:
        raise RunError(f"{run.metrics_file}: no threshold; run `pneumoscan evaluate {run.root}`")
    environment = _environment(run)
    figures = "".join(_figure(run.root / "plots", name, failures or {}) for name in PLOT_FILES)
    body = "".join([
        _header(run, metrics, environment),
        _metrics_section(metrics),
        _threshold_section(metrics),
        _calibration_section(metrics),
        _data_summary(run),
        _training_section(metrics),
        _section("Figures", figures),
        _config_section(run, environment),
    ])
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>pneumoscan report: {escape(run.root.name)}</title><style>{CSS}</style></head>"
            f"<body>{body}</body></html>\n")


def write_report(run_dir: str | Path, draw: bool = True) -> Path:
    """Draw the run's figures (unless ``draw=False``) and write ``RUN/report.html``; returns its path."""
    run = Run(Path(run_dir))
    run.config(), run.metrics()  # fail early, naming the file, on a folder that is no (finished) run
    failures = draw_plots(run.root)[1] if draw else {}
    return atomic_write_text(run.root / "report.html", render_report(run.root, failures))
