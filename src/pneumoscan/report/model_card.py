"""``MODEL_CARD.md``: what a run's model is for, what it was trained on, how well it does
and where it fails (Mitchell et al., "Model Cards for Model Reporting", 2019).

Written with every report (so at the end of every training and every ``adapt``), shown in
``report.html`` and copied into every export. Every figure is read from the run's own
files (metrics.json, splits.csv, adapt.json), never typed in.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

from ..options import CLASS_NAMES, REPORTED_SPLITS
from ..paths import atomic_write_text
from ..runs import Run

KERMANY_PROVENANCE = (
    "Kermany et al. (2018), Guangzhou Women and Children's Medical Center: anterior-posterior chest X-rays of "
    "pediatric patients aged one to five, from routine care; labels graded by two expert physicians and checked by a "
    "third (Mendeley Data v2, doi:10.17632/rscbjbr9sj.2, CC BY 4.0). Sex and ethnicity are not published.")
MEDMNIST_PROVENANCE = ("PneumoniaMNIST (MedMNIST v2): the Kermany et al. (2018) pediatric X-rays above, "
                       "downsampled to 28 px; no patient ids, so splits are by image.")
USER_PROVENANCE = "The user's own images (a CSV manifest): provenance and demographics as the user recorded them."
SPLIT_ROLES = {"train": "fitted on", "val": "chose epoch, temperature, threshold and scope threshold",
               "test": "reported only", "kaggle_val": "16 images, for information"}
ADAPTED_ROLES = {"val": "site: adapted the model (temperature, threshold, scope; fine-tuning if any)",
                 "test": "site: held out by patient, reported only"}


def esc(value) -> str:
    """A value shown in the card: no markup (the report renders the card as HTML) and no table breaks."""
    return html.escape(str(value), quote=False).replace("|", "\\|")


def pct(value) -> str:
    return "n/a" if value is None else f"{100 * float(value):.1f}%"


def num(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{float(value):.{digits}f}"


def _with_ci(entry: dict, key: str, as_pct: bool) -> str:
    show = pct if as_pct else num
    ci = (entry.get("ci95") or {}).get(key)
    return f"{show(entry.get(key))} ({show(ci[0])}–{show(ci[1])})" if ci else show(entry.get(key))


def read_splits(run: Run) -> pd.DataFrame | None:
    """The run's splits.csv, or None when it is missing or unreadable (the card says so)."""
    try:
        return pd.read_csv(run.splits_file)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None


def provenance(run: Run, splits: pd.DataFrame | None) -> str:
    if run.adapt_file.is_file():
        parent = Run(Path(json.loads(run.adapt_file.read_text())["parent"]["run"]))
        origin = (provenance(parent, read_splits(parent)) if parent.splits_file.is_file()
                  else "the parent run's (see adapt.json)")
        return (f"The parent model was trained on: {origin} It was then adapted to a new site with that site's own "
                "labelled images (below: the site's images per split; see *Site adaptation*).")
    if splits is None:
        return "unknown (splits.csv is missing)"
    if (splits["split"] == "kaggle_val").any():
        return KERMANY_PROVENANCE
    if splits["path"].astype(str).str.contains(r"\.npz:", regex=True).any():
        return MEDMNIST_PROVENANCE
    return USER_PROVENANCE


def _data_rows(run: Run, splits: pd.DataFrame | None) -> list[str]:
    if splits is None:
        return []
    roles = ADAPTED_ROLES if run.adapt_file.is_file() else SPLIT_ROLES
    rows = ["| split | role | " + " | ".join(CLASS_NAMES) + " | patients |", "|---|---|" + "---:|" * (len(CLASS_NAMES) + 1)]
    for split, part in splits.groupby("split", sort=False):
        counts = " | ".join(str(int((part["label"] == i).sum())) for i in range(len(CLASS_NAMES)))
        rows.append(f"| {esc(split)} | {esc(roles.get(split, ''))} | {counts} | {part['patient_id'].nunique()} |")
    return rows


def _metric_rows(metrics: dict) -> list[str]:
    rows = ["| split | n | accuracy | sensitivity | specificity | ROC-AUC | accuracy ceiling* |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for split in REPORTED_SPLITS:
        if split in metrics:
            m = metrics[split]
            rows.append(f"| {split} | {m['n']} | {_with_ci(m, 'accuracy', True)} | {_with_ci(m, 'sensitivity', True)} | "
                        f"{_with_ci(m, 'specificity', True)} | {_with_ci(m, 'roc_auc', False)} | "
                        f"{pct((m.get('accuracy_ceiling') or {}).get('accuracy'))} |")
    return rows


def _scope_lines(run: Run, metrics: dict) -> list[str]:
    scope = metrics.get("scope")
    if not scope:
        return ["No out-of-scope score was fitted for this run (trained before pneumoscan had one): "
                "`pneumoscan evaluate RUN` fits it."]
    lines = [f"Method: {esc(scope['method'])}. Threshold {num(scope['threshold'])}, set so that "
             f"{pct(1 - scope['quantile'])} of validation images are flagged.", "",
             "| images | flagged out of scope |", "|---|---:|"]
    lines += [f"| {esc(split)} | {pct(rate)} |" for split, rate in scope.get("flagged", {}).items()]
    if run.scope_extra_file.is_file():
        extra = pd.read_csv(run.scope_extra_file)
        for group, part in extra.groupby("group"):
            lines.append(f"| {esc(group)} (n={len(part)}, scored by `pneumoscan report --scope-folder`) | "
                         f"{pct((part['ood_score'] > scope['threshold']).mean())} |")
    return lines


def _adapt_lines(run: Run) -> list[str]:
    if not run.adapt_file.is_file():
        return []
    info = json.loads(run.adapt_file.read_text())
    site, before, after = info["site"], info["before"], info["after"]
    lines = ["## Site adaptation", "",
             f"This run is `{esc(info['parent']['run'])}` (model {esc(info['parent']['model_id'])}) adapted to a new "
             f"site with `pneumoscan adapt` ({esc(info['mode'])}). Site data: {esc(site['source'])}, sha256 "
             f"`{esc(site['sha256'][:16])}`, {site['images']} images of {site['patients']} patients; "
             f"{site['adapt_images']} used to adapt, {site['eval_images']} held out (grouped by patient) to evaluate.", "",
             "| held-out site images | ROC-AUC | accuracy | sensitivity | specificity |", "|---|---:|---:|---:|---:|"]
    for name, m in (("before (parent model)", before), ("after adapt", after)):
        lines.append(f"| {name} | {_with_ci(m, 'roc_auc', False)} | {_with_ci(m, 'accuracy', True)} | "
                     f"{_with_ci(m, 'sensitivity', True)} | {_with_ci(m, 'specificity', True)} |")
    return lines + [""]


def render_model_card(run_dir: str | Path) -> str:
    run = Run(Path(run_dir))
    cfg, metrics, splits = run.config(), run.metrics(), read_splits(run)
    threshold = metrics["threshold"]
    training = metrics.get("training") or {}
    model_id = run.model_id() if run.model_file.is_file() else run.root.name
    lines = [
        f"# Model card: {esc(run.root.name)}", "",
        f"Model `{esc(model_id)}`: pneumoscan `{esc(cfg.model.name)}`, {cfg.data.image_size} px grayscale input, "
        f"NORMAL vs PNEUMONIA. Written by pneumoscan from this run's own files.", "",
        "## Intended use", "",
        "- A **screening aid** for frontal (PA/AP) chest X-rays like the training data: it ranks and flags images for "
        "a clinician to read first. It is **not a diagnosis** and not a medical device.",
        "- In scope: pediatric frontal chest X-rays from an acquisition like the training hospital's. "
        "Every prediction carries an out-of-scope score; an image above its threshold is outside what the model learned "
        "and its probability must not be trusted (`predict --abstain` leaves its label empty).",
        "- Out of scope: adults, lateral views, other body parts, other modalities, and any site whose images the "
        "model has not been checked on (see *Adapting to a new site*).", "",
        "## Training data", "", provenance(run, splits), "", *_data_rows(run, splits), "",
        "## Performance", "",
        f"Threshold {num(threshold['value'], 4)} (rule `{esc(threshold['rule'])}`, chosen on {esc(threshold.get('chosen_on', 'val'))}); "
        f"probabilities calibrated by temperature {num((metrics.get('calibration') or {}).get('temperature'))} fitted on val. "
        "95% bootstrap intervals in brackets.", "", *_metric_rows(metrics), "",
        "\\* the best accuracy any threshold would give, chosen on that split's own labels: a ceiling, not a result.", "",
    ]
    shift = metrics.get("shift_stress")
    if shift:
        lines += [f"Under simulated acquisition changes of the validation images (shift-stress validation): ROC-AUC mean "
                  f"{num(shift['mean_roc_auc'])}, worst {num(shift['worst_roc_auc'])} ({esc(shift['worst_shift'])}), "
                  f"pooled {num(shift['pooled_roc_auc'])}.", ""]
    lines += ["## Out-of-scope detection", "", *_scope_lines(run, metrics), "", *_adapt_lines(run),
              "## Known failure modes", "",
              "- **Adults and other hospitals.** Trained on one hospital's children: tried on adult X-rays from another "
              "country, an earlier default model called most healthy adults PNEUMONIA and ranked the groups worse than "
              "chance. The out-of-scope score flags such images (pneumoscan's benchmark: 98.4% of 246 adult X-rays "
              "flagged, against 4.3% of the Kermany test split; `benchmarks/results/scope.md`).",
              "- **Thresholds do not transfer between sites.** A new site's normal images often score higher: "
              "specificity drops first. Recalibrate (below) before use.",
              "- **Lateral views.** Not in the training data, and not measured (no openly licensed set was at hand); "
              "upside-down and top-to-bottom flipped X-rays are flagged (98.6% and 98.2% of the Kermany test images "
              "turned so, in the benchmark).",
              "- **Framing.** Tightly collimated normal X-rays (lungs filling the frame) are scored higher than "
              "loosely framed ones.", "",
              "## Adapting to a new site", "",
              "With 50-500 labelled images of the site (a CSV `path,label[,patient_id]` or NORMAL/ and PNEUMONIA/ "
              "folders):", "", "```", f"pneumoscan adapt {esc(run.root)} --data SITE --out NEW_RUN [--finetune]", "```", "",
              "It refits the temperature, the threshold (same rule) and the out-of-scope statistics on part of the site's "
              "images, evaluates on the rest (split by patient), and writes a new run with its own metrics, report and "
              "model card.", "",
              "## Training", "",
              f"Epochs run {training.get('epochs_run', 'n/a')}, best epoch {training.get('best_epoch', 'n/a')}, "
              f"{num((training.get('train_seconds') or 0) / 60, 1)} minutes, precision {esc(training.get('precision', 'n/a'))}. "
              f"The full configuration is `config.json`; the environment `environment.json`.", ""]
    return "\n".join(lines)


def write_model_card(run_dir: str | Path) -> Path:
    run = Run(Path(run_dir))
    return atomic_write_text(run.model_card_file, render_model_card(run.root))
