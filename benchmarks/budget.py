"""Quality per CPU-minute: the original notebook's recipe and pneumoscan's default recipe, given
the same wall-clock budget on the same machine, one after the other in one run.

    python benchmarks/budget.py --data ../shared/data [--minutes 15] [--out runs/budget]

- **pneumoscan**: `pneumoscan train` with the default config (the pre-registered recipe:
  pneumonet, cached uint8 pipeline, acquisition augmentation, EMA, cosine schedule,
  `--precision auto`) and `--max-minutes` set to the budget, from an empty image cache, so
  the one-time decoding counts against it.
- **original**: the first notebook's recipe at pneumoscan's image size, so that only the
  recipe differs: `seed_cnn` (Conv+ReLU, MaxPool, BatchNorm blocks, Dense, Dropout, softmax;
  pixels / 255), `keras.utils.image_dataset_from_directory` decoding and resizing every JPEG
  again each epoch, augmentation RandomFlip(horizontal) + RandomRotation(0.1) +
  RandomZoom(0.1), Adam at 1e-3, categorical cross-entropy, batch 32, no class weights. It
  trains on the same train patients and is validated each epoch on the same validation
  patients as pneumoscan (its own loader reads them), keeping its best-validation weights
  (as pneumoscan does), until the budget is spent.

Both are then scored on validation and test with the same threshold rule (pneumoscan's
`sensitivity:0.95`, chosen on validation). Time to reach the original's final validation
ROC-AUC is read off each one's per-epoch validation curve, counted from process start.

Writes benchmarks/results/budget.md (and budget.json).
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
from child import run_child  # benchmarks/ is on sys.path when this script runs

RESULTS = Path(__file__).parent / "results"
CLASSES = ("NORMAL", "PNEUMONIA")


# ------------------------------------------------------------------ the original recipe (child process)
def linked_folders(splits_csv: Path, root: Path) -> dict[str, Path]:
    """split -> a folder of NORMAL/ and PNEUMONIA/ symlinks, the layout the notebook's loader reads."""
    import pandas as pd

    splits = pd.read_csv(splits_csv)
    folders = {}
    for split in ("train", "val", "test"):
        for label, name in enumerate(CLASSES):
            target = root / split / name
            target.mkdir(parents=True)
            part = splits[(splits["split"] == split) & (splits["label"] == label)]
            for i, path in enumerate(part["path"]):
                os.symlink(path, target / f"{i:05d}-{Path(path).name}")
        folders[split] = root / split
    return folders


def original_child(splits_csv: Path, minutes: float, out: Path, seed: int) -> None:
    import keras
    import tensorflow as tf
    from sklearn.metrics import roc_auc_score

    from pneumoscan.config import ModelConfig
    from pneumoscan.models import build_model

    started = float(os.environ["BUDGET_START"])
    budget = minutes * 60
    keras.utils.set_random_seed(seed)
    size = 160
    with tempfile.TemporaryDirectory() as tmp:
        folders = linked_folders(splits_csv, Path(tmp))

        def load(split: str, shuffle: bool):
            return keras.utils.image_dataset_from_directory(
                folders[split], labels="inferred", label_mode="categorical", class_names=list(CLASSES),
                color_mode="grayscale", image_size=(size, size), batch_size=32, shuffle=shuffle, seed=seed, verbose=False)

        augment = keras.Sequential([keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.1),
                                    keras.layers.RandomZoom(0.1)])
        train = load("train", True).map(lambda x, y: (augment(x, training=True), y)).prefetch(tf.data.AUTOTUNE)
        val, test = load("val", False), load("test", False)
        labels = {s: np.concatenate([np.argmax(y, axis=1) for _, y in d]) for s, d in (("val", val), ("test", test))}
        model = build_model(ModelConfig(name="seed_cnn", normalize="scale"), size)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", metrics=["accuracy"])
        history, best = [], {"auc": -1.0, "weights": None}
        train_images = sum(1 for _ in Path(folders["train"]).rglob("*.jp*g"))

        class Budget(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if time.time() - started > budget:
                    self.model.stop_training = True

            def on_epoch_end(self, epoch, logs=None):
                p = self.model.predict(val, verbose=0)[:, 1]
                auc = float(roc_auc_score(labels["val"], p))
                history.append({"epoch": epoch + 1, "seconds": time.time() - started, "val_auc": auc})
                if auc > best["auc"]:
                    best.update(auc=auc, weights=self.model.get_weights())
                print(f"original: epoch {epoch + 1} val ROC-AUC {auc:.4f} at {history[-1]['seconds']:.0f} s", flush=True)

        fit_start = time.time()
        model.fit(train, epochs=1000, callbacks=[Budget()], verbose=0)
        train_seconds = time.time() - fit_start
        model.set_weights(best["weights"])
        probs = {s: model.predict(d, verbose=0)[:, 1].tolist() for s, d in (("val", val), ("test", test))}
    # An epoch cut short by the budget still counts the images it saw; images/s is over the whole fit.
    json.dump({"history": history, "probs": probs, "labels": {k: v.tolist() for k, v in labels.items()},
               "train_seconds": train_seconds, "epochs": len(history), "train_images": train_images,
               "images_per_s": train_images * len(history) / train_seconds}, open(out, "w"))


# ------------------------------------------------------------------ the benchmark
def first_reaching(history: list[dict], target: float) -> float | None:
    return next((h["seconds"] for h in history if h["val_auc"] >= target - 1e-12), None)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("PNEUMOSCAN_DATA"))
    parser.add_argument("--minutes", type=float, default=15.0, help="wall-clock budget of each recipe")
    parser.add_argument("--out", default="runs/budget")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--child-original", nargs=2, metavar=("SPLITS_CSV", "OUT_JSON"), help=argparse.SUPPRESS)
    parser.add_argument("--render-only", action="store_true", help="rewrite budget.md from budget.json")
    args = parser.parse_args(argv)
    if args.child_original:
        original_child(Path(args.child_original[0]), args.minutes, Path(args.child_original[1]), args.seed)
        return 0
    state_file = RESULTS / "budget.json"
    if not args.render_only:
        state_file.write_text(json.dumps(measure(args, argv), indent=1) + "\n")
    (RESULTS / "budget.md").write_text(render(json.loads(state_file.read_text())))
    print((RESULTS / "budget.md").read_text())
    return 0


def measure(args, argv) -> dict:
    import pandas as pd

    from pneumoscan.config import resolve
    from pneumoscan.evaluation import compute_metrics
    from pneumoscan.runs import cpu_model

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(tempfile.mkdtemp(prefix="pneumoscan-budget-cache-"))
    env = {**os.environ, "PNEUMOSCAN_CACHE": str(cache)}  # empty: decoding the images counts
    state = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
             "command": "python " + shlex.join([sys.argv[0], *(argv or sys.argv[1:])]),
             "machine": f"{os.cpu_count()} CPU cores ({cpu_model()}), {platform.system()} {platform.machine()}, no GPU",
             "minutes": args.minutes}

    print("budget: pneumoscan default recipe ...", flush=True)
    run = out / "pneumoscan"
    cli = Path(sys.executable).parent / "pneumoscan"
    command = [str(cli), "train", "--data", args.data, "--out", str(run), "--source", "kermany",
               "--max-minutes", str(args.minutes), "--seed", str(args.seed)]
    started = time.time()
    wall, rss = run_child("pneumoscan train", command, out / "pneumoscan.log", env)
    metrics = json.loads((run / "metrics.json").read_text())
    created = datetime.fromisoformat(json.loads((run / "environment.json").read_text())["created"]).timestamp()
    history = pd.read_csv(run / "history.csv")
    setup = created - started  # process start to the start of training: imports, decoding, precision probe
    curve = [{"epoch": int(r.epoch), "seconds": setup + float(r.seconds), "val_auc": float(r.val_auc)}
             for r in history.itertuples()]
    splits = pd.read_csv(run / "splits.csv")
    train_images = int((splits["split"] == "train").sum())
    training = metrics["training"]
    state["pneumoscan"] = {
        "command": shlex.join(command), "wall_seconds": wall, "peak_rss_gb": rss, "setup_seconds": setup,
        "train_seconds": training["train_seconds"], "epochs": training["epochs_run"], "history": curve,
        "images_per_s": train_images * training["epochs_run"] / training["train_seconds"],
        "val": metrics["val"], "test": metrics["test"], "threshold": metrics["threshold"]}

    print("budget: original recipe ...", flush=True)
    child = out / "original.json"
    command = [sys.executable, __file__, "--child-original", str(run / "splits.csv"), str(child),
               "--minutes", str(args.minutes), "--seed", str(args.seed)]
    wall, rss = run_child("original recipe", command, out / "original.log", {**env, "BUDGET_START": str(time.time())})
    original = json.loads(child.read_text())
    cfg = resolve()
    labels = {s: np.asarray(v) for s, v in original["labels"].items()}
    scored = compute_metrics(labels, {s: np.asarray(v) for s, v in original["probs"].items()}, cfg)
    state["original"] = {"command": shlex.join(command), "wall_seconds": wall, "peak_rss_gb": rss,
                         "train_seconds": original["train_seconds"], "epochs": original["epochs"],
                         "history": original["history"], "images_per_s": original["images_per_s"],
                         "val": scored["val"], "test": scored["test"], "threshold": scored["threshold"]}
    return state


def render(state: dict) -> str:
    pn, og = state["pneumoscan"], state["original"]
    final = og["history"][-1]["val_auc"]
    t_og, t_pn = first_reaching(og["history"], final), first_reaching(pn["history"], final)
    ratio = t_og / t_pn if t_og and t_pn else None
    rows = [("validation ROC-AUC", "val", "roc_auc"), ("test ROC-AUC", "test", "roc_auc"),
            ("test accuracy", "test", "accuracy"), ("test sensitivity", "test", "sensitivity"),
            ("test specificity", "test", "specificity"), ("test F1", "test", "f1"),
            ("test precision", "test", "precision"), ("test balanced accuracy", "test", "balanced_accuracy")]
    ahead = all(pn["test"][k] >= og["test"][k] for _, s, k in rows if s == "test")
    lines = [
        "# Quality per CPU-minute: the original recipe against pneumoscan's default", "",
        f"- Date: {state['date']}", f"- Command: `{state['command']}`", f"- Machine: {state['machine']}",
        f"- Budget: {state['minutes']:g} minutes of wall clock each, one after the other in this one run "
        "(pneumoscan first, from an empty image cache; then the original).",
        f"- pneumoscan: `{pn['command']}`", f"- original: `{og['command']}` (the recipe is in the script's docstring)",
        "- Both keep their best-validation epoch and are scored with the same rule, `sensitivity:0.95` chosen on "
        "validation. The test split was scored once per recipe; nothing here was chosen on it.", "",
        "| | original recipe | pneumoscan default |", "| --- | ---: | ---: |",
    ]
    for title, split, key in rows:
        lines.append(f"| {title} | {og[split][key]:.4f} | {pn[split][key]:.4f} |")
    lines += [
        f"| test accuracy ceiling (best any threshold gives; not a result) | {og['test']['accuracy_ceiling']['accuracy']:.4f} "
        f"| {pn['test']['accuracy_ceiling']['accuracy']:.4f} |",
        f"| epochs completed | {og['epochs']} | {pn['epochs']} |",
        f"| training images/s | {og['images_per_s']:.0f} | {pn['images_per_s']:.0f} |",
        f"| training seconds | {og['train_seconds']:.0f} | {pn['train_seconds']:.0f} |",
        f"| process wall seconds (with evaluation and report) | {og['wall_seconds']:.0f} | {pn['wall_seconds']:.0f} |",
        f"| peak resident memory (GB) | {og['peak_rss_gb']:.2f} | {pn['peak_rss_gb']:.2f} |", "",
        f"**Time to reach the original recipe's final validation ROC-AUC ({final:.4f})**, from process start: "
        f"original {t_og:.0f} s, pneumoscan " + (f"{t_pn:.0f} s" if t_pn else "never within the budget") +
        (f": **{ratio:.1f}x less time** (target: >= 10x, {'met' if ratio >= 10 else 'missed'})." if ratio else "."), "",
        f"At equal budget pneumoscan is {'ahead on every test metric above' if ahead else 'not ahead on every test metric'} "
        "(target: ahead on every one).", "",
        "## Validation ROC-AUC per epoch (seconds from process start)", "",
        "| epoch | original s | original val ROC-AUC | pneumoscan s | pneumoscan val ROC-AUC |",
        "| ---: | ---: | ---: | ---: | ---: |"]
    for i in range(max(len(og["history"]), len(pn["history"]))):
        a = og["history"][i] if i < len(og["history"]) else None
        b = pn["history"][i] if i < len(pn["history"]) else None
        lines.append(f"| {i + 1} | {a['seconds']:.0f} | {a['val_auc']:.4f} | " if a else f"| {i + 1} | | | ")
        lines[-1] += f"{b['seconds']:.0f} | {b['val_auc']:.4f} |" if b else " | |"
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
