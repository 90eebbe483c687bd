"""One self-contained HTML page per run: ``RUN/report.html``.

Everything is inside the file (figures as base64 data URIs, inline CSS, no script), so it
opens from disk with no server and no network. A Content-Security-Policy forbids any
other source, so a stray external link could not load even by mistake. The page is rendered
by Jinja2 from ``templates/report.html.j2`` with autoescaping on, so no value (a file name,
a config string) can inject markup. Every number shown from ``metrics.json`` carries
``data-metric="test.accuracy"`` (its key path) and ``data-value`` (its exact JSON value), so
a test can check the page against the file.
"""
from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any, Iterable

from jinja2 import Environment, PackageLoader, select_autoescape

from ..errors import RunError
from ..options import CLASS_NAMES, REPORTED_SPLITS, SPLITS, parse_threshold_rule
from ..paths import atomic_write_text
from ..runs import PLOT_FILES, Run
from .model_card import write_model_card
from .plots import draw_plots, read_table

SPLIT_NOTES = {
    "train": "fitted on",
    "val": "carved from train, grouped by patient; chooses epoch, temperature and threshold",
    "test": "official test split, reported only",
    "kaggle_val": "Kermany's 16-image val folder, for information only",
}
ADAPTED_SPLIT_NOTES = {  # a run made by `pneumoscan adapt`: every split is the new site's
    "val": "site images that adapted the model (temperature, threshold, scope; with --finetune also "
           "batch norm and head, cross-fitted)",
    "test": "site images held out by patient, reported only",
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
    "scope_scores.png": ("Out-of-scope score", "Distribution of the out-of-scope score on val, test and any "
                         "folder scored with `pneumoscan report RUN --scope-folder DIR`; the dashed line is the "
                         "threshold (fitted on val), above which predict warns and --abstain leaves the label empty."),
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


def fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def _environment_jinja() -> Environment:
    env = Environment(loader=PackageLoader("pneumoscan.report", "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = fmt
    env.filters["tojson_attr"] = json.dumps  # escaped by autoescape like every other value
    return env


def _in_split_order(keys: Iterable[str]) -> list[str]:
    keys = list(keys)
    return [s for s in SPLITS if s in keys] + sorted(set(keys) - set(SPLITS))


def describe_rule(rule: str) -> str:
    """A threshold rule in words."""
    name, value = parse_threshold_rule(rule)
    if name == "sensitivity":
        return f"the highest threshold whose validation sensitivity is at least {value:.0%}"
    if name == "fixed":
        return f"a fixed threshold of {value:g}"
    return "the threshold that maximises sensitivity + specificity - 1 (Youden's J) on validation"


def _metric_block(metrics: dict, block: str | None) -> list[dict]:
    """One row per split of the metrics at the chosen threshold (``block`` None) or in ``block`` (at_0.5)."""
    rows = []
    for split in REPORTED_SPLITS:
        if split not in metrics:
            continue
        prefix = [split] + ([block] if block else [])
        values = metrics[split][block] if block else metrics[split]
        ci = values.get("ci95", {})
        cells = [{"path": prefix + [key], "value": values.get(key), "ci": ci.get(key),
                  "ci_path": prefix + ["ci95", key]} for key, _ in METRIC_COLUMNS]
        rows.append({"split": split, "cells": cells, "confusion": values["confusion_matrix"],
                     "confusion_path": prefix + ["confusion_matrix"]})
    return rows


def _alternatives(metrics: dict) -> list[dict]:
    chosen = metrics["threshold"]["rule"]
    return [{"name": f"{rule} (chosen)" if rule == chosen else rule, "split": split,
             "cells": [{"path": ["alternatives", rule, split, key], "value": per_split[split].get(key)}
                       for key, _ in ALTERNATIVE_COLUMNS]}
            for rule, per_split in (metrics.get("alternatives") or {}).items()
            for split in _in_split_order(per_split)]


def _calibration(metrics: dict) -> dict | None:
    cal = metrics.get("calibration")
    if not cal:
        return None
    ece = cal.get("ece") or {}
    return {"method": cal.get("method", ""), "fitted_on": cal.get("fitted_on", "val"),
            "temperature": cal.get("temperature"),
            "rows": [{"split": s, "before": ece[s].get("before"), "after": ece[s].get("after")}
                     for s in _in_split_order(ece)]}


def _data_table(run: Run) -> dict:
    try:
        splits = read_table(run.splits_file, ("label", "split", "patient_id"))
    except RunError as exc:
        return {"data_error": str(exc)}
    rows = []
    notes = ADAPTED_SPLIT_NOTES if run.adapt_file.is_file() else SPLIT_NOTES
    for split in _in_split_order(set(splits["split"])):
        part = splits[splits["split"] == split]
        cells = [split, notes.get(split, "")]
        for label in (0, 1):
            of_class = part[part["label"] == label]
            cells += [len(of_class), of_class["patient_id"].nunique()]
        rows.append(cells + [len(part), part["patient_id"].nunique()])
    headers = ["split", "role"] + [f"{c} {w}" for c in CLASS_NAMES for w in ("images", "patients")] + ["images", "patients"]
    return {"data_error": None, "splits_file": run.splits_file.name, "data_headers": headers, "data_rows": rows}


def _training(metrics: dict) -> list[dict]:
    training = metrics.get("training") or {}
    items = [("epochs run", "epochs_run"), ("best epoch", "best_epoch"), ("best val ROC-AUC", "best"),
             ("training seconds", "train_seconds"), ("stopped", "stopped")]
    return [{"title": title, "key": key, "value": training[key],
             "text": "no: ran every epoch" if key == "stopped" and training[key] is None else None}
            for title, key in items if key in training]


def _figures(run: Run, failures: dict[str, str]) -> list[dict]:
    figures = []
    for name in PLOT_FILES:
        heading, caption = FIGURES[name]
        file = run.plot_file(name)
        data = base64.b64encode(file.read_bytes()).decode("ascii") if file.is_file() else None
        figures.append({"heading": heading, "caption": caption, "data": data,
                        "why": failures.get(name, f"{file} not found")})
    return figures


def _environment(run: Run) -> dict:
    try:
        return json.loads(run.environment_file.read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # only shown for information; its absence must not stop a report


def _model_card_html(run: Run):
    """MODEL_CARD.md as HTML. The card escapes every value it shows, so its markup is its own."""
    import markdown
    from markupsafe import Markup

    if not run.model_card_file.is_file():
        return None
    return Markup(markdown.markdown(run.model_card_file.read_text(), extensions=["tables", "fenced_code"]))


def render_report(run_dir: str | Path, failures: dict[str, str] | None = None) -> str:
    """The report page of a run as one HTML string (figures taken from ``RUN/plots/``)."""
    run = Run(Path(run_dir))
    metrics = run.metrics()
    if "threshold" not in metrics:
        raise RunError(f"{run.metrics_file}: no threshold; run `pneumoscan evaluate {run.root}`")
    environment = _environment(run)
    threshold = {"chosen_on": "val", **metrics["threshold"]}
    facts = [f"model {metrics.get('model', '?')}", f"{metrics.get('image_size', '?')} px"]
    if environment.get("created"):
        facts.append(f"created {environment['created']}")
    config = run.config().to_dict()
    env_rows = [[k, environment[k]] for k in ("python", "platform", "cpu_count", "command") if k in environment]
    env_rows += [[k, v] for k, v in (environment.get("packages") or {}).items() if v]
    context = {
        "css": CSS, "csp": CSP, "run_name": run.root.name, "run_path": str(run.root.resolve()), "facts": facts,
        "threshold": threshold, "threshold_words": describe_rule(threshold["rule"]),
        "metric_columns": METRIC_COLUMNS, "alternative_columns": ALTERNATIVE_COLUMNS,
        "metric_blocks": [{"title": None, "rows": _metric_block(metrics, None)},
                          {"title": "At 0.5", "rows": _metric_block(metrics, "at_0.5")}],
        "ceilings": [{"split": s, "accuracy": metrics[s]["accuracy"], "ceiling": metrics[s]["accuracy_ceiling"]["accuracy"],
                      "threshold": metrics[s]["accuracy_ceiling"]["threshold"]}
                     for s in REPORTED_SPLITS if "accuracy_ceiling" in metrics.get(s, {})],
        "shift": metrics.get("shift_stress"),
        "alternatives": _alternatives(metrics), "calibration": _calibration(metrics),
        "training": _training(metrics), "figures": _figures(run, failures or {}),
        "config_file": str(run.config_file), "config_file_name": run.config_file.name,
        "config_rows": [[f"{section}.{key}", json.dumps(value)]
                        for section, values in config.items() for key, value in values.items()],
        "environment_rows": env_rows, "model_card": _model_card_html(run),
        **_data_table(run),
    }
    return _environment_jinja().get_template("report.html.j2").render(context)


def write_report(run_dir: str | Path, draw: bool = True) -> Path:
    """Draw the run's figures (unless ``draw=False``) and write ``RUN/report.html``; returns its path."""
    run = Run(Path(run_dir))
    run.config(), run.metrics()  # fail early, naming the file, on a folder that is no (finished) run
    failures = draw_plots(run.root)[1] if draw else {}
    write_model_card(run.root)
    return atomic_write_text(run.report_file, render_report(run.root, failures))
