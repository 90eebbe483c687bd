"""Quality benchmark: train the default config from scratch on the Kermany set, report test metrics.

    python benchmarks/quality.py --data ../shared/data [--config FILE] [--set train.epochs=30]

Writes benchmarks/results/quality.md. Every choice (best epoch, threshold) is made on the
patient-grouped validation split carved from train; the official test split is only scored.
Targets (on a 2-core CPU): test accuracy >= 92% and ROC-AUC >= 0.96 at the
validation-chosen threshold, in <= 30 minutes of training.
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

from pneumoscan.config import parse_overrides, resolve
from pneumoscan.api import train

TARGETS = {"accuracy": 0.92, "roc_auc": 0.96, "minutes": 30.0}


def pct(x):
    return f"{100 * x:.1f}%"


def ci(entry, key, scale=100, fmt="{:.1f}"):
    lo, hi = entry["ci95"][key]
    return f"{fmt.format(scale * lo)}–{fmt.format(scale * hi)}"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def render(metrics: dict, run: Path, wall: float, command: str) -> str:
    test, tr, thr = metrics["test"], metrics["training"], metrics["threshold"]
    minutes = tr["train_seconds"] / 60
    checks = {
        "test accuracy >= 92%": (test["accuracy"] >= TARGETS["accuracy"], f"{pct(test['accuracy'])} ({100 * (test['accuracy'] - TARGETS['accuracy']):+.1f} points)"),
        "test ROC-AUC >= 0.96": (test["roc_auc"] >= TARGETS["roc_auc"], f"{test['roc_auc']:.4f} ({test['roc_auc'] - TARGETS['roc_auc']:+.4f})"),
        "training <= 30 min": (minutes <= TARGETS["minutes"], f"{minutes:.1f} min"),
    }
    lines = [
        "# Quality benchmark",
        "",
        f"- Date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Command: `{command}`",
        f"- Machine: {os.cpu_count()} CPU cores ({cpu_name()}), {platform.system()} {platform.machine()}, no GPU",
        f"- Model: `{metrics['model']}` at {metrics['image_size']} px, trained from scratch (no pretrained weights)",
        f"- Epochs run: {tr['epochs_run']} (best on validation: {tr['best_epoch']}); stop reason: {tr['stopped'] or 'planned epochs done'}",
        f"- Training time: {minutes:.1f} min; whole benchmark (data, training, evaluation) {wall / 60:.1f} min wall",
        f"- Threshold: {thr['value']:.4f}, rule `{thr['rule']}`, chosen on the patient-grouped validation split (never on test)",
        "",
        "## Official test split (624 images: 234 NORMAL, 390 PNEUMONIA)",
        "",
        "| metric | at the chosen threshold | 95% CI | at 0.5 |",
        "| --- | ---: | ---: | ---: |",
        f"| accuracy | {pct(test['accuracy'])} | {ci(test, 'accuracy')}% | {pct(test['at_0.5']['accuracy'])} |",
        f"| sensitivity (recall) | {pct(test['sensitivity'])} | {ci(test, 'sensitivity')}% | {pct(test['at_0.5']['sensitivity'])} |",
        f"| specificity | {pct(test['specificity'])} | {ci(test, 'specificity')}% | {pct(test['at_0.5']['specificity'])} |",
        f"| precision | {pct(test['precision'])} | | {pct(test['at_0.5']['precision'])} |",
        f"| F1 | {test['f1']:.4f} | | {test['at_0.5']['f1']:.4f} |",
        f"| ROC-AUC | {test['roc_auc']:.4f} | {ci(test, 'roc_auc', 1, '{:.4f}')} | (threshold-free) |",
        f"| PR-AUC | {test['pr_auc']:.4f} | | (threshold-free) |",
        "",
        f"Confusion matrix at the chosen threshold, rows actual NORMAL / PNEUMONIA: `{test['confusion_matrix']}`",
        "",
        "## Targets",
        "",
        "| target | met | measured |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {k} | {'yes' if ok else '**no**'} | {v} |" for k, (ok, v) in checks.items()]
    lines += ["", "## Other threshold rules (all chosen on validation; reported, not used)", "",
              "| rule | threshold | val accuracy | test accuracy | test sensitivity | test specificity |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for rule, entry in metrics["alternatives"].items():
        lines.append(f"| `{rule}` | {entry['test']['threshold']:.4f} | {pct(entry['val']['accuracy'])} | "
                     f"{pct(entry['test']['accuracy'])} | {pct(entry['test']['sensitivity'])} | {pct(entry['test']['specificity'])} |")
    val = metrics["val"]
    lines += ["", f"Validation split ({val['n']} images): accuracy {pct(val['accuracy'])}, ROC-AUC {val['roc_auc']:.4f}."]
    if "kaggle_val" in metrics:
        kv = metrics["kaggle_val"]
        lines.append(f"Kaggle's 16-image val folder (information only): accuracy {pct(kv['accuracy'])}, ROC-AUC {kv['roc_auc']:.4f}.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("PNEUMOSCAN_DATA"), help="folder holding chest_xray_kermany_224/")
    parser.add_argument("--config", help="config file (default: built-in defaults)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--out", help="run directory (default: a temporary one)")
    parser.add_argument("--results", default=str(Path(__file__).parent / "results" / "quality.md"))
    args = parser.parse_args(argv)
    if not args.data:
        parser.error("give --data or set PNEUMOSCAN_DATA")
    cfg = resolve(args.config, parse_overrides(args.set))
    cfg.data.source = "kermany"
    out = Path(args.out or tempfile.mkdtemp(prefix="pneumoscan-quality-"))
    start = time.perf_counter()
    run = train(args.data, out / "run" if not args.out else out, config=cfg)
    wall = time.perf_counter() - start
    metrics = json.loads(run.metrics_file.read_text())
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    Path(args.results).write_text(render(metrics, run.root, wall, command))
    print(Path(args.results).read_text())
    print(f"run directory: {run.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
