"""Site recalibration benchmark: `pneumoscan adapt` on a simulated new site.

    python benchmarks/adapt_site.py --run runs/scope-42 --data ../shared/data

The simulated site: the parent run's **validation** images (Kermany train patients the model
never trained on; never the test split), each passed through one fixed acquisition change,
a softer detector: a Gaussian blur of radius width/40 (5.6 px on the 224 px files), saved as
PNG with its patient id. The change is strong enough that the parent model, with its own
temperature and threshold, loses most of its specificity there.

For each of several random draws, the site's patients are split: about 100 images adapt, the
rest are held out; `adapt` runs once without and once with `--finetune`, and the parent
(before) and adapted (after) models are measured on the held-out images. Target: after adapt,
specificity at the run's sensitivity rule within 3 points of the parent's in-distribution
validation specificity. Also: the share of held-out site images and of adult X-rays
(shared/data/adult_cxr_ccby) flagged out of scope, before and after.

Writes the "Site recalibration" section of benchmarks/results/scope.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

RESULTS = Path(__file__).parent / "results"
BEGIN, END = "<!-- site recalibration: written by benchmarks/adapt_site.py -->", "<!-- end of site recalibration -->"
ADAPT_IMAGES = 100


def soft_detector(image: Image.Image) -> Image.Image:
    """The simulated site's acquisition change: a Gaussian blur of radius width / 40."""
    return image.convert("L").filter(ImageFilter.GaussianBlur(radius=image.width / 40))


def build_site(parent, folder: Path) -> Path:
    """The parent's validation images through the change, as PNG files and a CSV with patient ids."""
    splits = pd.read_csv(parent.splits_file)
    val = splits[splits["split"] == "val"].reset_index(drop=True)
    rows = []
    for i, row in val.iterrows():
        target = folder / f"{i:04d}-{Path(row['path']).stem}.png"
        with Image.open(row["path"]) as image:
            soft_detector(image).save(target)
        rows.append((target.name, "PNEUMONIA" if row["label"] == 1 else "NORMAL", row["patient_id"]))
    csv = folder / "site.csv"
    pd.DataFrame(rows, columns=["path", "label", "patient_id"]).to_csv(csv, index=False)
    return csv


def flagged(run_dir: Path, images: np.ndarray) -> float:
    import pneumoscan

    model = pneumoscan.load(run_dir)
    _, ood = model.scores(images)
    return float(np.mean(ood > model.scope_threshold))


def specificity_ceiling(run, rule: str) -> float:
    """The specificity the rule would give with its threshold chosen on the held-out images
    themselves: what this ranking allows at best (a ceiling, not a result)."""
    from pneumoscan.evaluation.threshold import choose_threshold

    table = pd.read_csv(run.predictions_file).query("split == 'test'")
    y, p = table["label"].to_numpy(), table["probability"].to_numpy()
    return float(np.mean(p[y == 0] < choose_threshold(y, p, rule)))


def mean_sd(values) -> str:
    values = np.asarray(values, dtype=float)
    return f"{values.mean():.3f} ± {values.std(ddof=1) if len(values) > 1 else 0:.3f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="the parent run (default recipe, with its scope fitted)")
    parser.add_argument("--data", default=os.environ.get("PNEUMOSCAN_DATA"), help="folder holding adult_cxr_ccby/")
    parser.add_argument("--draws", type=int, default=5)
    args = parser.parse_args(argv)

    import pneumoscan
    from pneumoscan.data.cache import load_images
    from pneumoscan.runs import Run, cpu_model

    parent = Run(Path(args.run))
    parent_metrics = parent.metrics()
    size = parent.config().data.image_size
    adults = sorted((Path(args.data) / "adult_cxr_ccby").rglob("*.png"))
    adult_images, _ = load_images([str(p) for p in adults], size)
    rows = []
    with tempfile.TemporaryDirectory(prefix="pneumoscan-site-") as tmp:
        site_dir = Path(tmp) / "site"
        site_dir.mkdir()
        csv = build_site(parent, site_dir)
        n_site = len(pd.read_csv(csv))
        holdout = 1.0 - ADAPT_IMAGES / n_site
        for draw in range(args.draws):
            for finetune in (False, True):
                out = Path(tmp) / f"draw{draw}-{'finetune' if finetune else 'recalibrate'}"
                start = time.perf_counter()
                run = pneumoscan.adapt(parent.root, csv, out, finetune=finetune, holdout=holdout, seed=draw)
                seconds = time.perf_counter() - start
                info = json.loads(run.adapt_file.read_text())
                splits = pd.read_csv(run.splits_file)
                held = splits[splits["split"] == "test"]["path"].tolist()
                ceiling = specificity_ceiling(run, parent_metrics["threshold"]["rule"])
                held_images, _ = load_images(held, size)
                rows.append({"draw": draw, "mode": info["mode"], "seconds": seconds,
                             "adapt_images": info["site"]["adapt_images"], "eval_images": info["site"]["eval_images"],
                             "calibration_images": info["site"]["calibration_images"],
                             "before": info["before"], "after": info["after"],
                             "site_flagged_before": flagged(parent.root, held_images),
                             "site_flagged_after": flagged(run.root, held_images),
                             "adults_flagged_after": flagged(run.root, adult_images),
                             "specificity_ceiling": ceiling})
                print(f"draw {draw} {info['mode']}: spec {info['before']['specificity']:.3f} -> "
                      f"{info['after']['specificity']:.3f}, {seconds:.0f} s", file=sys.stderr, flush=True)
    adults_before = flagged(parent.root, adult_images)
    write_results(args, parent, parent_metrics, n_site, rows, adults_before, len(adults), cpu_model())
    return 0


def write_results(args, parent, parent_metrics, n_site, rows, adults_before, n_adults, cpu) -> None:
    val_spec = parent_metrics["val"]["specificity"]
    lines = [BEGIN, "## Site recalibration (`pneumoscan adapt`)", "",
             f"- Date: {datetime.now(timezone.utc):%Y-%m-%d}",
             f"- Command: `python benchmarks/adapt_site.py {shlex.join(sys.argv[1:])}`",
             f"- Machine: {os.cpu_count()} CPU cores ({cpu}), {platform.system()} {platform.machine()}",
             f"- Parent run: `{parent.root}` (threshold rule `{parent_metrics['threshold']['rule']}`); its in-distribution "
             f"validation specificity: **{val_spec:.3f}**, so the target is ≥ {val_spec - 0.03:.3f} after adapt.",
             f"- Simulated site: the parent's {n_site} validation images (Kermany train patients held out of training; "
             "never the test split) through a softer detector, a Gaussian blur of radius width/40, saved as PNG with "
             f"patient ids. Per draw, about {ADAPT_IMAGES} images adapt (patient-grouped; with `--finetune`, half of "
             "them fine-tune and half recalibrate) and the rest are held out. Figures below are on the held-out images.",
             "- The adult figures rest on `adult_cxr_ccby` alone (246 adult COVID-19 pneumonia X-rays, one class).", "",
             "Mean ± standard deviation over draws; in brackets, the mean of the per-draw 95% bootstrap intervals.", "",
             "| mode | draws | ROC-AUC before | ROC-AUC after | accuracy before | accuracy after | specificity before "
             "| specificity after | specificity ceiling* | sensitivity after | seconds |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    table = pd.DataFrame(rows)

    def cell(part, when, key):
        values = [r[key] for r in part[when]]
        lo = np.mean([r["ci95"][key][0] for r in part[when]])
        hi = np.mean([r["ci95"][key][1] for r in part[when]])
        return f"{mean_sd(values)} [{lo:.3f}–{hi:.3f}]"

    for mode, part in table.groupby("mode", sort=False):
        lines.append(f"| {mode} | {len(part)} | {cell(part, 'before', 'roc_auc')} | {cell(part, 'after', 'roc_auc')} | "
                     f"{cell(part, 'before', 'accuracy')} | {cell(part, 'after', 'accuracy')} | "
                     f"{cell(part, 'before', 'specificity')} | {cell(part, 'after', 'specificity')} | "
                     f"{mean_sd(part['specificity_ceiling'])} | {cell(part, 'after', 'sensitivity')} | "
                     f"{part['seconds'].mean():.0f} |")
    lines += ["", "\\* the specificity the same rule would give with its threshold chosen on the held-out images "
              "themselves: what the adapted model's ranking allows at best (a ceiling, not a result).", "",
              "Out of scope (share flagged, mean over draws):", "",
              "| mode | held-out site images, parent scope | held-out site images, adapted scope | adults, adapted scope "
              f"(parent scope: {adults_before:.1%} of {n_adults}) |", "| --- | ---: | ---: | ---: |"]
    for mode, part in table.groupby("mode", sort=False):
        lines.append(f"| {mode} | {part['site_flagged_before'].mean():.1%} | {part['site_flagged_after'].mean():.1%} | "
                     f"{part['adults_flagged_after'].mean():.1%} |")
    lines += ["", "Per draw (held-out specificity before -> after):", ""]
    for row in rows:
        lines.append(f"- draw {row['draw']}, {row['mode']}: {row['adapt_images']} adapting "
                     f"({row['calibration_images']} recalibrate) / {row['eval_images']} held out; "
                     f"specificity {row['before']['specificity']:.3f} -> {row['after']['specificity']:.3f}, ROC-AUC "
                     f"{row['before']['roc_auc']:.4f} -> {row['after']['roc_auc']:.4f}")
    lines += ["", END]
    path = RESULTS / "scope.md"
    text = path.read_text() if path.is_file() else "# Out-of-scope benchmark\n"
    if BEGIN in text:
        text = text[:text.index(BEGIN)] + text[text.index(END) + len(END):].lstrip("\n")
    path.write_text(text.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n")
    (RESULTS / "site.json").write_text(json.dumps(rows, indent=1, default=float) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
