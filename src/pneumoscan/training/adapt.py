"""Adapt a trained run to a new site with a small labelled set of the site's images.

    pneumoscan adapt runs/default --data site.csv --out runs/site-a [--finetune]

The site's patients are split in two: one part adapts, the other is held out, and the
parent model (before) and the adapted one (after) are both measured on the held-out part,
so the site figures are honest. Adapting means, in order:

1. ``--finetune`` only: the batch-norm statistics and the classifier head are trained on the
   adapting images, everything else frozen. Calibrating on the very images a model was tuned
   on would make it look surer than it is, and keeping half of a hundred images aside would
   leave a threshold estimated from fifty: so the adapting patients are split in two folds,
   a model tuned on each fold scores the other (out-of-fold probabilities for every adapting
   image), and the model kept is tuned on both folds (cross-fitting).
2. Temperature and threshold are refitted, with the parent's threshold rule, on the adapting
   images (their out-of-fold probabilities with ``--finetune``).
3. The out-of-scope statistics take the site in (:meth:`Scope.with_site`). After fine-tuning
   the features have moved, so the parent's training images are scored again (the parent's
   data must be at hand); without it, nothing of the parent's data is needed.

The new run is a run like any other (model.keras, metrics.json with the site's adapting
images as ``val`` and held-out images as ``test``, predictions.csv, scope.npz) plus
``adapt.json``: the parent, the site data's hash and sizes, and the figures before and after.
Everything is written into a temporary folder first, so a failure leaves no half-written run.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.site import SiteData, read_site, split_site
from ..errors import RunError
from ..evaluation import calibrate, compute_metrics, split_report, write_predictions
from ..evaluation.calibration import apply_temperature
from ..evaluation.scope import Scope, fit_model_scope, flag_summary
from ..models.features import extract_outputs
from ..models.predict import load_run_model
from ..paths import atomic_write, atomic_write_json
from ..runs import Run, environment

# Which split of the adapted run each part of the site set becomes (splits.csv, metrics.json).
PART_SPLITS = {"adapt": "val", "fold1": "val", "fold2": "val", "eval": "test"}


@dataclass
class AdaptSettings:
    holdout: float = 0.3  # share of the site's images (by patient) held out to evaluate
    seed: int = 0
    finetune: bool = False
    epochs: int = 10  # fine-tuning only
    learning_rate: float = 3e-4
    skip_unreadable: bool = False
    parent_data: str | None = None  # fine-tuning only: where the parent's data is, if it moved


def adapt_run(parent_dir: str | Path, site_path: str | Path, out: str | Path,
              settings: AdaptSettings | None = None) -> Run:
    """Write the adapted run into ``out`` (which must not exist yet) and return it."""
    s = settings or AdaptSettings()
    parent, out = Run(Path(parent_dir)), Path(out)
    cfg, parent_metrics = parent.config(), parent.metrics()
    parent.require_model()
    if not parent.scope_file.is_file():
        raise RunError(f"{parent.scope_file}: not found; run `pneumoscan evaluate {parent.root}` to fit the scope first")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunError(f"{out}: already exists; adapt writes a new run, choose another --out")
    if not 0.05 <= s.holdout <= 0.9:
        raise RunError(f"holdout {s.holdout}: must be between 0.05 and 0.9 (the share of site images held out)")
    # Every check of the site data comes before any work or any file.
    site = split_site(read_site(site_path, cfg.data.image_size, s.skip_unreadable), s.holdout, s.seed, s.finetune)
    parent_prepared = _parent_data(parent, s) if s.finetune else None

    model = load_run_model(parent)
    x_eval, y_eval = site.part("eval")
    temperature = parent_metrics["calibration"]["temperature"]
    raw_before, _ = extract_outputs(model, x_eval)
    before = split_report(y_eval, apply_temperature(raw_before, temperature), parent_metrics["threshold"]["value"], cfg)

    history = None
    x_fit, y_fit = site.part("fold1", "fold2") if s.finetune else site.part("adapt")
    if s.finetune:
        model, raw_fit, history = _crossfit(parent, cfg, site, s)
        features = {"val": extract_outputs(model, parent_prepared.images["val"])[1]}
        base, _ = fit_model_scope(model, parent_prepared.images["train"], parent_prepared.labels["train"], features,
                                  quantile=Scope.load(parent.scope_file).quantile)
        features_fit = extract_outputs(model, x_fit)[1]
    else:
        base = Scope.load(parent.scope_file)
        raw_fit, features_fit = extract_outputs(model, x_fit)
    raw_eval, features_eval = extract_outputs(model, x_eval)
    labels, raw = {"val": y_fit, "test": y_eval}, {"val": raw_fit, "test": raw_eval}
    temperature, probs, ece = calibrate(labels, raw)
    metrics = compute_metrics(labels, probs, cfg)
    metrics["calibration"] = {"method": "temperature", "temperature": temperature, "fitted_on": "val", "ece": ece}
    scope, site_scores = base.with_site(features_fit, y_fit)
    ood = {"val": scope.score(features_fit), "test": scope.score(features_eval)}
    metrics["scope"] = {
        "method": "class-conditional Mahalanobis, Ledoit-Wolf, every resolution level; the site's class means added",
        "threshold": scope.threshold, "quantile": scope.quantile,
        "fitted_on": {"statistics": "parent train + site (val)", "threshold": "parent val, raised to the site's "
                      "leave-one-out quantile when that is higher"},
        "parent_threshold": base.threshold, **flag_summary(scope, ood),
        "flagged_leave_one_out": {"val": float(np.mean(site_scores > scope.threshold))},
    }
    metrics["model"], metrics["image_size"] = cfg.model.name, cfg.data.image_size
    metrics["training"] = parent_metrics.get("training")
    info = {
        "parent": {"run": str(parent.root.resolve()), "model_id": parent.model_id(), "model_sha256": parent.model_sha256()},
        "mode": "fine-tune + recalibrate" if s.finetune else "recalibrate",
        "settings": asdict(s), "site": {**site.summary(), "adapt_images": int((site.records["part"] != "eval").sum()),
                 "calibration_images": int(len(y_fit)), "eval_images": int(len(y_eval))},
        "calibration": ("temperature and threshold on the out-of-fold probabilities of the adapting images "
                        "(2 folds by patient)") if s.finetune else "temperature and threshold on the adapting images",
        "before": before, "after": metrics["test"],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    metrics["adapt"] = {"parent": info["parent"], "mode": info["mode"], "before": before}
    return _write_run(parent, out, model if s.finetune else None, site, metrics, probs, raw, ood, scope, info, history)


def _crossfit(parent: Run, cfg, site: SiteData, s: AdaptSettings):
    """(model tuned on both folds, out-of-fold raw probabilities of the adapting images in
    ``site.part("fold1", "fold2")`` order, the kept model's history)."""
    from .finetune import finetune

    adapting = site.records["part"].isin(("fold1", "fold2")).to_numpy()
    fold_of = site.records.loc[adapting, "part"].to_numpy()
    out_of_fold = np.zeros(int(adapting.sum()))
    for k, (tuned, scored) in enumerate((("fold1", "fold2"), ("fold2", "fold1"))):
        model = load_run_model(parent)
        finetune(model, cfg, site.part(tuned), site.part(scored), s.epochs, s.learning_rate, s.seed + k)
        out_of_fold[fold_of == scored] = extract_outputs(model, site.part(scored)[0])[0]
    model = load_run_model(parent)
    history = finetune(model, cfg, site.part("fold1", "fold2"), None, s.epochs, s.learning_rate, s.seed)
    return model, out_of_fold, history


def _parent_data(parent: Run, s: AdaptSettings):
    from ..data.dataset import prepare

    cfg = parent.config()
    path = s.parent_data or cfg.data.path
    if not path or not Path(path).exists():
        raise RunError(f"--finetune moves the model's features, so the out-of-scope statistics are refitted on the "
                       f"parent's training images, which are not at {path!r}; pass --parent-data PATH (or adapt "
                       "without --finetune, which needs only the site's images)")
    return prepare(cfg.data, path)


def _write_run(parent: Run, out: Path, model, site: SiteData, metrics: dict, probs: dict, raw: dict, ood: dict,
               scope: Scope, info: dict, history: pd.DataFrame | None) -> Run:
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Run(Path(tempfile.mkdtemp(prefix=f".tmp-adapt-{out.name}-", dir=out.parent)))
    try:
        shutil.copyfile(parent.config_file, staging.config_file)
        if model is None:
            shutil.copyfile(parent.model_file, staging.model_file)  # the same weights, recalibrated
        else:
            atomic_write(staging.model_file, lambda tmp: model.save(tmp))
        if history is not None:
            atomic_write(staging.history_file, lambda tmp: history.to_csv(tmp, index=False))
        elif parent.history_file.is_file():
            shutil.copyfile(parent.history_file, staging.history_file)
        records = site.records.assign(split=site.records["part"].map(PART_SPLITS))
        atomic_write(staging.splits_file, lambda tmp: records[["path", "label", "split", "patient_id"]].to_csv(tmp, index=False))
        write_predictions(staging, records, probs, raw, ood, metrics["threshold"]["value"])
        scope.save(staging.scope_file)
        atomic_write_json(staging.environment_file, environment())
        atomic_write_json(staging.metrics_file, metrics)
        atomic_write_json(staging.adapt_file, info)
        if out.exists():
            out.rmdir()  # an empty folder, checked before any work
        staging.root.rename(out)
    except BaseException:
        shutil.rmtree(staging.root, ignore_errors=True)
        raise
    return Run(out)


def describe(run: Run) -> str:
    """Before and after on the held-out site images, for the command line."""
    import json

    info = json.loads(run.adapt_file.read_text())
    lines = [f"adapted {info['parent']['run']} -> {run.root} ({info['mode']}); "
             f"{info['site']['adapt_images']} site images adapted, {info['site']['eval_images']} held out by patient",
             f"{'held-out site images':<24}{'ROC-AUC':>9}{'accuracy':>10}{'sens':>8}{'spec':>8}"]
    for name in ("before", "after"):
        m = info[name]
        lines.append(f"{name:<24}{m['roc_auc']:>9.4f}{m['accuracy']:>10.3f}{m['sensitivity']:>8.3f}{m['specificity']:>8.3f}")
    return "\n".join(lines)

