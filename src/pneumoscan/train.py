"""Train a model and write a complete run directory.

    from pneumoscan import train
    from pneumoscan.config import resolve
    run = train(resolve(overrides={"train": {"epochs": 3}}), data="path/to/chest_xray", out="runs/demo")
"""
from __future__ import annotations

import sys
from pathlib import Path

import keras
import numpy as np

from .checkpointing import RunCheckpoint
from .config import Config
from .data.augment import build_augmenter
from .data.dataset import prepare
from .data.locate import resolve_data_path
from .data.pipeline import eval_dataset, training_dataset
from .evaluate import evaluate_prepared
from .models import PneumoniaAUC, build_model
from .paths import atomic_write, atomic_write_json, atomic_write_text
from .runs import Run, RunError, environment


def class_weights(labels: np.ndarray, mode: str) -> dict[int, float] | None:
    """'balanced': n / (2 * n_class), so both classes weigh the same in the loss."""
    if mode == "none":
        return None
    counts = np.bincount(labels, minlength=2)
    return {c: float(len(labels) / (2 * counts[c])) for c in range(2) if counts[c]}


def compile_model(model: keras.Model, cfg: Config, steps_per_epoch: int) -> None:
    t = cfg.train
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=t.learning_rate / 10,
        warmup_target=t.learning_rate,
        warmup_steps=steps_per_epoch,
        decay_steps=max(1, steps_per_epoch * (t.epochs - 1)),
        alpha=0.01,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(schedule, weight_decay=t.weight_decay or None),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=t.label_smoothing),
        metrics=["accuracy", PneumoniaAUC(name="auc")],
    )


def train(cfg: Config, data: str | Path | None = None, out: str | Path = "runs/latest", resume: bool = False,
          verbose: int | None = None) -> Run:
    """Train ``cfg`` on ``data`` into the run directory ``out``; returns the finished Run.

    With ``resume=True`` the run continues from its last completed epoch, using the
    config saved in ``out`` (``cfg`` is ignored).
    """
    run = Run(Path(out))
    state = None
    if resume:
        cfg = run.config()
        state = RunCheckpoint.load_state(run)
        if state and state.get("complete"):
            print(f"pneumoscan: {run.root} already finished; nothing to resume")
            return run
    elif run.config_file.exists():
        raise RunError(f"{run.root}: already holds a run; use --resume {run.root} or another --out")
    data_path = resolve_data_path(data or cfg.data.path, cfg.data.source).resolve()
    cfg.data.path = str(data_path)
    keras.utils.set_random_seed(cfg.train.seed)

    prepared = prepare(cfg.data, data_path)
    for path, reason in prepared.collection.skipped:
        print(f"pneumoscan: skipped {path}: {reason}", file=sys.stderr)
    if "val" not in prepared.images or "train" not in prepared.images:
        raise RunError(f"{data_path}: need both train and val images (found {', '.join(prepared.images)})")
    run.root.mkdir(parents=True, exist_ok=True)
    if not resume or not run.config_file.exists():
        atomic_write_text(run.config_file, cfg.to_json() + "\n")
    atomic_write(run.splits_file, lambda tmp: prepared.splits.to_csv(tmp, index=False))
    atomic_write_json(run.environment_file, environment())

    t = cfg.train
    x_train, y_train = prepared.images["train"], prepared.labels["train"]
    steps = int(np.ceil(len(x_train) / t.batch_size))
    checkpoint = RunCheckpoint(run, t.monitor, t.patience, t.max_minutes, state)
    if state is not None and checkpoint.last_file.is_file():
        model = keras.saving.load_model(checkpoint.last_file)  # weights and optimizer state
        initial_epoch = state["epoch"] + 1
        print(f"pneumoscan: resuming {run.root} after epoch {initial_epoch}")
    else:
        model = build_model(cfg.model, cfg.data.image_size)
        compile_model(model, cfg, steps)
        initial_epoch = 0

    if initial_epoch < t.epochs and not checkpoint.state.get("stopped"):
        model.fit(
            training_dataset(x_train, y_train, t.batch_size, build_augmenter(cfg.augment, t.seed), t.seed + initial_epoch),
            validation_data=eval_dataset(prepared.images["val"], prepared.labels["val"], 128),
            epochs=t.epochs,
            initial_epoch=initial_epoch,
            class_weight=class_weights(y_train, t.class_weight),
            callbacks=[checkpoint],
            shuffle=False,  # the dataset shuffles itself, seeded
            verbose=verbose if verbose is not None else (1 if sys.stdout.isatty() else 2),
        )

    final = build_model(cfg.model, cfg.data.image_size)
    final.load_weights(checkpoint.best_file)
    atomic_write(run.model_file, lambda tmp: final.save(tmp))
    evaluate_prepared(run, final, prepared, cfg, training=checkpoint.state)
    checkpoint.state["complete"] = True
    atomic_write_json(checkpoint.state_file, checkpoint.state)
    write_report_or_warn(run)
    return run


def write_report_or_warn(run: Run) -> None:
    """Figures and report.html for a finished run; a failure here must never cost the trained run."""
    try:
        from .report import write_report

        write_report(run.root)
    except Exception as exc:  # the model and metrics are already saved: warn and go on
        print(f"pneumoscan: warning: could not write {run.root / 'report.html'} ({type(exc).__name__}: {exc}); "
              f"the run itself is complete. Retry with: pneumoscan report {run.root}", file=sys.stderr)
