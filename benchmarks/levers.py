"""Inference-time levers on trained runs, judged on validation and shift-stress validation only:
test-time augmentation (TTA) and an ensemble of independently trained seeds.

    python benchmarks/levers.py --data ../shared/data/chest_xray_kermany_224 \
        --runs runs/quality/seed-42 runs/quality/seed-43 runs/quality/seed-44
    python benchmarks/levers.py ... --reveal-test     # only after the choice is committed

No training: every run's own model scores the validation images and their shift-stress copies
(the cached set every recipe is judged on). Each member's probabilities are calibrated with the
temperature its run fitted on validation; an ensemble averages them; the threshold of every
variant is chosen on validation with the runs' rule. TTA averages a fixed set of views
(``VIEWS``: small zooms and a shift, none that a training augmentation could not produce).
Test figures are not computed unless ``--reveal-test`` is given.

Writes benchmarks/results/levers.json and levers.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from pneumoscan.data.dataset import prepare
from pneumoscan.evaluation import choose_threshold, classification_metrics, stress_figures
from pneumoscan.evaluation.calibration import apply_temperature
from pneumoscan.evaluation.shift import cached_shifted_copies, translate, zoom
from pneumoscan.models.predict import load_run_model, predict_probabilities
from pneumoscan.runs import Run, cpu_model

RESULTS = Path(__file__).parent / "results"
# The shift-stress changes' own zoom and translation, at gentler settings (an argument-less rng).
VIEWS = {"identity": lambda x: x, "zoom_0.9": lambda x: zoom(0.9)(x, None), "zoom_1.1": lambda x: zoom(1.1)(x, None),
         "shift_4pct": lambda x: translate(x, round(0.04 * x.shape[0]), round(0.04 * x.shape[0]))}


def member_probabilities(run_dir: Path, sets: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """Calibrated PNEUMONIA probabilities of one run for every image set: plain, and averaged over ``VIEWS``."""
    run = Run(run_dir)
    model = load_run_model(run)
    temperature = run.metrics()["calibration"]["temperature"]
    plain, tta = {}, {}
    for name, images in sets.items():
        per_view = {view: apply_temperature(predict_probabilities(model, np.stack([change(x) for x in images])),
                                            temperature) for view, change in VIEWS.items()}
        plain[name], tta[name] = per_view["identity"], np.mean(list(per_view.values()), axis=0)
    return plain, tta


def judge(labels: dict[str, np.ndarray], probs: dict[str, np.ndarray], rule: str, reveal_test: bool) -> dict:
    """Validation, shift-stress and (when revealed) test figures of one variant's probabilities."""
    from sklearn.metrics import roc_auc_score

    threshold = choose_threshold(labels["val"], probs["val"], rule)
    stress = stress_figures(labels["val"], {k[len("stress:"):]: p for k, p in probs.items() if k.startswith("stress:")},
                            threshold)
    row = {"threshold": threshold, "val_roc_auc": float(roc_auc_score(labels["val"], probs["val"])),
           "stress_mean_roc_auc": stress["mean_roc_auc"], "stress_worst_roc_auc": stress["worst_roc_auc"],
           "stress_worst_shift": stress["worst_shift"], "stress_pooled_roc_auc": stress["pooled_roc_auc"],
           "stress_pooled_specificity": stress["pooled"]["specificity"]}
    if reveal_test:
        test = classification_metrics(labels["test"], probs["test"], threshold)
        row["test"] = {k: test[k] for k in ("roc_auc", "accuracy", "sensitivity", "specificity")}
    return row


def render(state: dict) -> str:
    reveal = any("test" in r for r in state["variants"].values())
    lines = ["# Inference-time levers: test-time augmentation and seed ensembles", "",
             f"- Machine: {state['machine']}", f"- Date: {state['date']}", f"- Command: `{state['command']}`",
             f"- Runs: {', '.join(f'`{r}`' for r in state['runs'])} (the default config, one seed each)",
             f"- TTA views: {', '.join(state['views'])} (probabilities averaged)",
             "- Chosen on: validation ROC-AUC and shift-stress validation; test figures only where shown, "
             "after the choice was committed.", "",
             "| variant | val ROC-AUC | stress mean | stress worst (change) | stress pooled | pooled specificity "
             "| inference cost |" + (" test ROC-AUC | test accuracy | test specificity |" if reveal else ""),
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: | ---: | ---: |" if reveal else "")]
    for name, r in state["variants"].items():
        row = (f"| {name} | {r['val_roc_auc']:.4f} | {r['stress_mean_roc_auc']:.4f} | {r['stress_worst_roc_auc']:.4f} "
               f"({r['stress_worst_shift']}) | {r['stress_pooled_roc_auc']:.4f} | "
               f"{100 * r['stress_pooled_specificity']:.1f}% | {r['cost']}x |")
        if reveal:
            t = r.get("test")
            row += (f" {t['roc_auc']:.4f} | {100 * t['accuracy']:.1f}% | {100 * t['specificity']:.1f}% |"
                    if t else " not read | | |")
        lines.append(row)
    lines += ["", f"Scoring time on this machine: {state['seconds']:.0f} s for everything above."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("PNEUMOSCAN_DATA"), help="the runs' data folder")
    parser.add_argument("--runs", nargs="+", required=True, help="run directories of one config, one seed each")
    parser.add_argument("--reveal-test", action="store_true", help="also score the test split (after the choice is committed)")
    args = parser.parse_args(argv)
    if not args.data:
        parser.error("give --data or set PNEUMOSCAN_DATA")
    started = time.perf_counter()
    runs = [Path(r) for r in args.runs]
    cfg = Run(runs[0]).config()
    prepared = prepare(cfg.data, args.data)
    sets = {"val": prepared.images["val"],
            **{f"stress:{k}": v for k, v in cached_shifted_copies(prepared.images["val"]).items()}}
    labels = {"val": prepared.labels["val"]}
    if args.reveal_test:
        sets["test"], labels["test"] = prepared.images["test"], prepared.labels["test"]
    rule = cfg.evaluate.threshold_rule
    plain, tta = {}, {}
    for r in runs:
        plain[r.name], tta[r.name] = member_probabilities(r, sets)
    variants = {}
    for name in plain:
        variants[f"{name}"] = {**judge(labels, plain[name], rule, args.reveal_test), "cost": 1}
        variants[f"{name} + TTA"] = {**judge(labels, tta[name], rule, args.reveal_test), "cost": len(VIEWS)}
    mean = lambda members: {k: np.mean([m[k] for m in members], axis=0) for k in sets}  # noqa: E731
    variants[f"ensemble of {len(runs)}"] = {**judge(labels, mean(list(plain.values())), rule, args.reveal_test),
                                             "cost": len(runs)}
    variants[f"ensemble of {len(runs)} + TTA"] = {**judge(labels, mean(list(tta.values())), rule, args.reveal_test),
                                                   "cost": len(runs) * len(VIEWS)}
    state = {"machine": f"{os.cpu_count()} CPU cores ({cpu_model()}), {platform.system()} {platform.machine()}, no GPU",
             "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
             "command": "python " + shlex.join([sys.argv[0], *(argv or sys.argv[1:])]),
             "runs": [str(r) for r in runs], "views": list(VIEWS), "variants": variants,
             "seconds": time.perf_counter() - started}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "levers.json").write_text(json.dumps(state, indent=2) + "\n")
    (RESULTS / "levers.md").write_text(render(state))
    print((RESULTS / "levers.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
