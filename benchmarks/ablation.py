"""Ablation of the robust-model levers, judged on validation and shift-stress validation only.

    python benchmarks/ablation.py --data ../shared/data --out runs/ablation [--only NAME ...] [--epochs 8]
    python benchmarks/ablation.py --out runs/ablation --reveal-test    # only after the recipe is committed

Each recipe trains from scratch in its own process (`pneumoscan train`), on the same data,
splits and seed, with a short protocol (the full cosine schedule squeezed into ``--epochs``),
so recipes are compared side by side on one machine. Recorded per recipe: validation ROC-AUC,
shift-stress ROC-AUC (mean, worst, pooled), pooled specificity at the chosen threshold,
training minutes, epochs and peak resident memory. Test figures are not shown unless
``--reveal-test`` is given, which is for after the chosen recipe and the reason are committed.

Writes benchmarks/results/ablation.json (the measurements) and benchmarks/results/ablation.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

from child import run_child  # benchmarks/ is on sys.path when this script runs
from pneumoscan.runs import cpu_model

RESULTS = Path(__file__).parent / "results"
FRAMING = ["augment.zoom_in=0.25", "augment.borders=0.12"]
INTENSITY = ["augment.gamma=0.5", "augment.noise=6", "augment.blur=0.3", "augment.sharpness=0.3"]
RECIPES = {  # name -> config overrides on top of the default config
    "baseline": [],
    "framing": FRAMING,
    "intensity": INTENSITY,
    "all": [*FRAMING, *INTENSITY, "model.normalize=image", "augment.erasing=0.25"],
    # Is bfloat16 (1.45x faster steps on this CPU) as good? And does a weight average steady it?
    "all_bf16": [*FRAMING, *INTENSITY, "model.normalize=image", "augment.erasing=0.25", "train.precision=mixed_bfloat16"],
    "all_bf16_ema": [*FRAMING, *INTENSITY, "model.normalize=image", "augment.erasing=0.25",
                     "train.precision=mixed_bfloat16", "train.ema=0.99"],
    # Second round, on top of the default config that all_bf16_ema became (precision auto,
    # which measures bfloat16 as faster on these CPUs): the levers the first round had no time for.
    "res224": ["data.image_size=224"],
    "smooth": ["train.label_smoothing=0.1"],
}
BASE = {"res224": "all_bf16_ema", "smooth": "all_bf16_ema"}  # recipe -> the recipe its default config equals


def run_recipe(name: str, overrides: list[str], data: str, out: Path, epochs: int) -> dict:
    """Train one recipe in a child process; its figures, time and peak memory."""
    cli = Path(sys.executable).parent / "pneumoscan"
    command = [str(cli), "train", "--data", data, "--out", str(out / name), "--source", "kermany",
               "--epochs", str(epochs), *[a for o in overrides for a in ("--set", o)]]
    wall, rss = run_child(name, command, out / f"{name}.log")
    metrics = json.loads((out / name / "metrics.json").read_text())
    stress, training = metrics["shift_stress"], metrics["training"]
    return {
        "recipe": name, "overrides": overrides, "epochs": epochs, "command": shlex.join(command),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "test_revealed": False, "base": BASE.get(name),
        "val_roc_auc": metrics["val"]["roc_auc"], "val_accuracy": metrics["val"]["accuracy"],
        "stress_mean_roc_auc": stress["mean_roc_auc"], "stress_worst_roc_auc": stress["worst_roc_auc"],
        "stress_worst_shift": stress["worst_shift"], "stress_pooled_roc_auc": stress["pooled_roc_auc"],
        "stress_pooled_specificity": stress["pooled"]["specificity"],
        "stress_roc_auc": stress["roc_auc"],
        "train_minutes": training["train_seconds"] / 60, "wall_minutes": wall / 60,
        "epochs_run": training["epochs_run"], "best_epoch": training["best_epoch"],
        "peak_rss_gb": rss,
        # Runs before the precision probe existed trained with auto = float32.
        "precision": training.get("precision") or "float32",
    }


def render(state: dict, out: Path) -> str:
    reveal_test = any(r.get("test_revealed") for r in state["recipes"].values())
    lines = ["# Ablation of the robust-model levers", "",
             f"- Machine: {state['machine']}", f"- Date: {state['date']}",
             *[f"- Command: `{c}`" for c in state.get("commands", [state.get("command")])],
             f"- Protocol: the default config of the time (pneumonet, seed 42) with the cosine schedule squeezed into "
             f"{state['epochs']} epochs; one process per recipe, run one after another on the same machine. "
             "Training minutes are indicative: other work (tests) shared the 2 cores during parts of some runs.",
             "- Chosen on: validation ROC-AUC and shift-stress validation (the validation images under 14 "
             "acquisition changes); the official test split played no part.", "",
             "| recipe | precision | val ROC-AUC | stress mean | stress worst (change) | stress pooled "
             "| pooled specificity | train min | epochs (best) | peak RSS GB |" + (" test ROC-AUC |" if reveal_test else ""),
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if reveal_test else "")]
    for r in state["recipes"].values():
        row = (f"| `{r['recipe']}` | {r.get('precision', 'float32')} | {r['val_roc_auc']:.4f} | {r['stress_mean_roc_auc']:.4f} | "
               f"{r['stress_worst_roc_auc']:.4f} ({r['stress_worst_shift']}) | {r['stress_pooled_roc_auc']:.4f} | "
               f"{100 * r['stress_pooled_specificity']:.1f}% | {r['train_minutes']:.1f} | {r['epochs_run']} "
               f"({r['best_epoch']}) | {r['peak_rss_gb']:.2f} |")
        if reveal_test and r.get("test_revealed"):
            test = json.loads((out / r["recipe"] / "metrics.json").read_text())["test"]["roc_auc"]
            row += f" {test:.4f} |"
        elif reveal_test:
            row += " not read |"
        lines.append(row)
    lines += ["", "Overrides per recipe:", ""]
    lines += [f"- `{r['recipe']}`: {' '.join(f'`{o}`' for o in r['overrides']) or '(none: the default config of the time)'}"
              + (f" on top of the default config that `{r['base']}` had become" if r.get("base") else "")
              + f" (`{r['command'].split('/')[-1]}`)" for r in state["recipes"].values()]
    lines += ["", "Shift-stress ROC-AUC per change:", "",
              "| change | " + " | ".join(state["recipes"]) + " |", "| --- |" + " ---: |" * len(state["recipes"])]
    changes = next(iter(state["recipes"].values()))["stress_roc_auc"] if state["recipes"] else {}
    for change in changes:
        lines.append(f"| {change} | " + " | ".join(f"{r['stress_roc_auc'][change]:.4f}"
                                                  for r in state["recipes"].values()) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("PNEUMOSCAN_DATA"), help="folder holding chest_xray_kermany_224/")
    parser.add_argument("--out", required=True, help="folder for the recipes' run directories")
    parser.add_argument("--only", nargs="*", choices=list(RECIPES), help="recipes to run (default: all)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--reveal-test", action="store_true",
                        help="show the test ROC-AUC of the --only recipes (all without --only); after pre-registration")
    parser.add_argument("--render-only", action="store_true", help="rewrite ablation.md from ablation.json, no training")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state_file = RESULTS / "ablation.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {"recipes": {}}
    if args.reveal_test:
        for name in args.only or state["recipes"]:
            state["recipes"][name]["test_revealed"] = True
        state_file.write_text(json.dumps(state, indent=2) + "\n")
    elif not args.render_only:
        if not args.data:
            parser.error("give --data or set PNEUMOSCAN_DATA")
        command = "python " + shlex.join([sys.argv[0], *(argv or sys.argv[1:])])
        state.update(machine=f"{os.cpu_count()} CPU cores ({cpu_model()}), {platform.system()} {platform.machine()}, no GPU",
                     date=datetime.now(timezone.utc).strftime("%Y-%m-%d"), epochs=args.epochs,
                     commands=[*state.get("commands", []), command])
        for name in args.only or RECIPES:
            print(f"ablation: {name} ...", flush=True)
            state["recipes"][name] = run_recipe(name, RECIPES[name], args.data, out, args.epochs)
            state_file.write_text(json.dumps(state, indent=2) + "\n")
            print(json.dumps({k: v for k, v in state["recipes"][name].items() if k != "stress_roc_auc"}), flush=True)
    (RESULTS / "ablation.md").write_text(render(state, out))
    print((RESULTS / "ablation.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
