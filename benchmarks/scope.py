"""Out-of-scope benchmark: does a trained run know which images are outside what it learned?

    python benchmarks/scope.py --run runs/quality/seed-42 --data ../shared/data

On one finished run (its model, its fitted scope, its threshold chosen on validation):
- adult frontal chest X-rays (shared/data/adult_cxr_ccby, 246 images, COVID-19 pneumonia,
  mostly one German hospital) against the Kermany test split: ROC-AUC of the score, and the
  share of each flagged at the run's threshold;
- non-chest images: photographs, an MRI slice, rendered documents, logos and noise;
- Kermany test X-rays inverted, rotated by 90 and 180 degrees, and flipped top to bottom (the
  score's orientation term knows training images turned those two ways, never test images);
- beside the run's score, the textbook baseline the issue names (class-conditional
  Mahalanobis on the pooled penultimate features alone, shared Ledoit-Wolf, 1,500 train
  images), fitted on the same model.

Writes benchmarks/results/scope.md.
"""
from __future__ import annotations

import argparse
import gzip
import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

RESULTS = Path(__file__).parent / "results"


def non_chest_images(size: int) -> dict[str, list[np.ndarray]]:
    """Obvious non-chest images that ship with the installed packages, or are made here."""
    import matplotlib
    import sklearn.datasets

    from pneumoscan.imaging import load_image

    sample = Path(matplotlib.get_data_path()) / "sample_data"
    photos = [load_image(p, size).array for p in sklearn.datasets.load_sample_images().filenames]
    photos.append(load_image(sample / "grace_hopper.jpg", size).array)
    mri = np.frombuffer(gzip.open(sample / "s1045.ima.gz").read(), dtype=">u2").reshape(256, 256).astype(np.uint16)
    rng = np.random.default_rng(0)
    documents = []
    for i in range(6):
        page = Image.new("L", (400, 520), 255)
        draw = ImageDraw.Draw(page)
        for line in range(24):
            draw.text((20, 15 + 20 * line), f"Patient record {i}-{line}: " + "lorem ipsum dolor " * 2, fill=0)
        documents.append(load_image(page, size).array)
    noise = [rng.integers(0, 256, (size, size), dtype=np.uint8) for _ in range(4)]
    noise += [np.clip(rng.normal(128, 40, (size, size)), 0, 255).astype(np.uint8) for _ in range(4)]
    return {"photographs (3)": photos, "MRI slice of a head (1)": [load_image(mri, size).array],
            "rendered documents (6)": documents, "logo (1)": [load_image(sample / "logo2.png", size).array],
            "noise (8)": noise}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a finished run directory (default recipe)")
    parser.add_argument("--data", default=os.environ.get("PNEUMOSCAN_DATA"), help="folder holding adult_cxr_ccby/")
    args = parser.parse_args(argv)

    from sklearn.metrics import roc_auc_score

    import pneumoscan
    from pneumoscan.evaluation.scope import fit_scope
    from pneumoscan.imaging import load_image
    from pneumoscan.models.features import extract_features
    from pneumoscan.runs import cpu_model

    run = pneumoscan.open_run(args.run)
    model = pneumoscan.load(args.run)
    keras_model = model.classifier
    size, threshold = model.image_size, model.scope_threshold
    data = pneumoscan.load_data(run.config().data.path, run.config())
    adults = sorted((Path(args.data) / "adult_cxr_ccby").rglob("*.png"))
    adult_pixels = np.stack([load_image(p, size).array for p in adults])

    def scores(pixels):
        return model.scores(pixels)[1]

    test, adult, val = scores(data.images["test"]), scores(adult_pixels), scores(data.images["val"])
    groups = {name: scores(np.stack(images)) for name, images in non_chest_images(size).items()}
    xrays = data.images["test"]
    transformed = {"inverted (624)": scores(255 - xrays), "rotated 90 degrees (624)": scores(np.rot90(xrays, 1, (1, 2))),
                   "rotated 180 degrees (624)": scores(xrays[:, ::-1, ::-1]),
                   "flipped top to bottom (624)": scores(xrays[:, ::-1, :])}

    # The baseline the issue names: penultimate features only, 1,500 train images.
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(len(data.images["train"]), 1500, replace=False))
    head = lambda pixels: [extract_features(keras_model, pixels)[-1]]  # noqa: E731
    base = fit_scope(head(data.images["train"][pick]), data.labels["train"][pick], head(data.images["val"]))
    base_test, base_adult = base.score(head(xrays)), base.score(head(adult_pixels))

    y = np.r_[np.zeros(len(test)), np.ones(len(adult))]
    auc, base_auc = roc_auc_score(y, np.r_[test, adult]), roc_auc_score(y, np.r_[base_test, base_adult])
    pct = lambda x: f"{100 * float(np.mean(x)):.1f}%"  # noqa: E731
    lines = [
        "# Out-of-scope benchmark", "",
        f"- Date: {datetime.now(timezone.utc).strftime('%Y-%m-%d')}",
        f"- Command: `python {shlex.join([sys.argv[0], *(argv or sys.argv[1:])])}`",
        f"- Machine: {os.cpu_count()} CPU cores ({cpu_model()}), {platform.system()} {platform.machine()}",
        f"- Run: `{run.root}` (model `{run.config().model.name}`, {size} px); scope threshold "
        f"{threshold:.3f}, the {100 * (1 - run.config().evaluate.scope_flag_rate):.0f}th percentile of validation "
        f"(flags {pct(val > threshold)} of validation)",
        "- Adult images: `adult_cxr_ccby` (246 adult frontal chest X-rays, COVID-19 pneumonia, one class, mostly "
        "one German hospital). **Every adult figure below rests on this set alone**: no openly licensed adult "
        "NORMAL set was found.", "",
        "## Adults against the Kermany test split", "",
        "| score | ROC-AUC (adult vs Kermany test) | adults flagged | Kermany test flagged |",
        "| --- | ---: | ---: | ---: |",
        f"| pneumoscan (every resolution level, orientation term) | {auc:.4f} | {pct(adult > threshold)} | {pct(test > threshold)} |",
        f"| textbook baseline (penultimate only, 1,500 train) | {base_auc:.4f} | {pct(base_adult > base.threshold)} | "
        f"{pct(base_test > base.threshold)} |", "",
        "## Images that are not frontal chest X-rays (share flagged)", "",
        "| images | flagged |", "| --- | ---: |"]
    lines += [f"| {name} | {pct(s > threshold)} |" for name, s in groups.items()]
    lines += [f"| Kermany test X-rays {name} | {pct(s > threshold)} |" for name, s in transformed.items()]
    lines += ["", "Lateral chest X-rays and X-rays of other body parts could not be measured: none is available "
              "on this machine (no network), and none was made up."]
    # benchmarks/adapt_site.py writes its own section of this file: keep it.
    old = (RESULTS / "scope.md").read_text() if (RESULTS / "scope.md").is_file() else ""
    marker = "<!-- site recalibration:"
    site_section = "\n" + old[old.index(marker):] if marker in old else ""
    (RESULTS / "scope.md").write_text("\n".join(lines) + "\n" + site_section)
    print((RESULTS / "scope.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
