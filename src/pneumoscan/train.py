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
from .distribute import (Placement, agree_to_stop, is_worker_failure, placement_for, progress_callback,
                         synchronize_batchnorm, worker_lost)
from .evaluate import evaluate_prepared
from .models import PneumoniaAUC, build_model
from .paths import atomic_write, atomic_write_json, atomic_write_text
from .precision import dtype_policy, resolve_jit, resolve_precision
from .runs import Run, RunError, environment


def class_weights(labels: np.ndarray, mode: str) -> dict[int, float] | None:
    """'balanced': n / (2 * n_class), so both classes weigh the same in the loss."""
    if mode == "none":
        return None
    counts = np.bincount(labels, minlength=2)
    return {c: float(len(labels) / (2 * counts[c])) for c in range(2) if counts[c]}


def compile_model(model: keras.Model, cfg: Config, steps_per_epoch: int, replicas: int = 1,
                  jit_compile: bool | str = "auto") -> None:
    t = cfg.train
    # Linear scaling rule: R replicas train on a global batch R times larger, at R times the rate.
    learning_rate = t.learning_rate * replicas
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=learning_rate / 10,
        warmup_target=learning_rate,
        warmup_steps=steps_per_epoch,
        decay_steps=max(1, steps_per_epoch * (t.epochs - 1)),
        alpha=0.01,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(schedule, weight_decay=t.weight_decay or None),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=t.label_smoothing),
        metrics=["accuracy", PneumoniaAUC(name="auc")],
        jit_compile=jit_compile,
    )


def train(cfg: Config, data: str | Path | None = None, out: str | Path = "runs/latest", resume: bool = False,
          verbose: int | None = None, placement: Placement | None = None) -> Run:
    """Train ``cfg`` on ``data`` into the run directory ``out``; returns the finished Run.

    With ``resume=True`` the run continues from its last completed epoch, using the
    config saved in ``out`` (``cfg`` is ignored). ``placement`` (pneumoscan.distribute)
    says where to train; by default the one ``cfg.train.strategy`` asks for. Under
    ``multiworker`` only the chief writes ``out``; the other workers write into a
    temporary directory they delete, and read ``out`` only to resume.
    """
    run = Run(Path(out))
    if resume:
        cfg = run.config()
    # Before any TensorFlow op runs: MultiWorkerMirroredStrategy must be created first.
    placement = placement or placement_for(cfg.train)
    state = None
    if resume:
        _remove_stale_temporaries(run)
        state = RunCheckpoint.load_state(run)
        if state and state.get("complete"):
            print(f"pneumoscan: {run.root} already finished; nothing to resume")
            return run
    elif placement.is_chief and run.config_file.exists():
        raise RunError(f"{run.root}: already holds a run; use --resume {run.root} or another --out")
    write_root = placement.writable_root(run.root)
    try:
        finished = _train(cfg, data, run, Run(write_root), resume, state, verbose, placement)
        # The other workers wait for the chief to finish writing: a worker that left early
        # would look like a crashed one to TensorFlow's coordination service.
        placement.barrier()
        return finished
    finally:
        placement.stop_watchdog()
        placement.release(write_root, run.root)


def _train(cfg: Config, data, source: Run, run: Run, resume: bool, state: dict | None, verbose: int | None,
           placement: Placement) -> Run:
    """The training proper. ``run`` is where this process writes (the run directory on the
    chief, a temporary one elsewhere); ``source`` is the run directory itself."""
    data_path = resolve_data_path(data or cfg.data.path, cfg.data.source).resolve()
    cfg.data.path = str(data_path)
    keras.utils.set_random_seed(cfg.train.seed)

    placement.progress("preparing the data")
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
    replicas = placement.replicas
    global_batch = t.batch_size * replicas  # batch_size is per replica
    x_train, y_train = prepared.images["train"], prepared.labels["train"]
    steps = int(np.ceil(len(x_train) / global_batch))
    jit = resolve_jit(t.jit_compile, replicas)
    checkpoint = RunCheckpoint(run, t.monitor, t.patience, t.max_minutes, state)
    last_file = source.checkpoint_dir / checkpoint.last_file.name  # every worker resumes from the chief's
    placement.progress("building the model")
    with placement.strategy.scope():
        if state is not None and last_file.is_file():
            model = keras.saving.load_model(last_file)  # weights and optimizer state
            model.jit_compile = jit
            initial_epoch = state["epoch"] + 1
            print(f"pneumoscan: resuming {source.root} after epoch {initial_epoch}")
        else:
            with dtype_policy(resolve_precision(t.precision)):
                model = build_model(cfg.model, cfg.data.image_size)
            if replicas > 1 and t.sync_batchnorm:
                synchronize_batchnorm(model)
            compile_model(model, cfg, steps, replicas, jit)
            initial_epoch = 0

    if initial_epoch < t.epochs and not checkpoint.state.get("stopped"):
        callbacks = [checkpoint]
        if placement.multi_worker:
            callbacks += [agree_to_stop(placement), progress_callback(placement)]
        x_val, y_val = prepared.images["val"], prepared.labels["val"]
        x_mine, y_mine = placement.shard(x_train), placement.shard(y_train)  # all of it on one worker
        train_data, steps_per_epoch = placement.training_input(training_dataset(
            x_mine, y_mine, global_batch, build_augmenter(cfg.augment, t.seed), t.seed + initial_epoch),
            len(x_mine), global_batch)
        try:
            model.fit(
                train_data,
                steps_per_epoch=steps_per_epoch,
                validation_data=placement.validation_input(eval_dataset(placement.shard(x_val), placement.shard(y_val), 128)),
                epochs=t.epochs,
                initial_epoch=initial_epoch,
                class_weight=class_weights(y_train, t.class_weight),
                callbacks=callbacks,
                shuffle=False,  # the dataset shuffles itself, seeded
                verbose=0 if not placement.is_chief else verbose if verbose is not None else (1 if sys.stdout.isatty() else 2),
            )
        except Exception as exc:
            if placement.multi_worker and is_worker_failure(exc):
                raise worker_lost(exc, placement) from None
            raise
    placement.stop_watchdog()  # what follows runs on the chief alone, without collectives
    if not placement.is_chief:
        return source

    final = build_model(cfg.model, cfg.data.image_size)
    final.load_weights(checkpoint.best_file)
    atomic_write(run.model_file, lambda tmp: final.save(tmp))
    evaluate_prepared(run, final, prepared, cfg, training=checkpoint.state)
    checkpoint.state["complete"] = True
    atomic_write_json(checkpoint.state_file, checkpoint.state)
    write_report_or_warn(run)
    return run


def _remove_stale_temporaries(run: Run) -> None:
    # A run killed mid-write leaves its atomic-write temporary (never the target) behind.
    for folder in (run.root, run.checkpoint_dir):
        for tmp in folder.glob(".tmp-*"):
            tmp.unlink(missing_ok=True)


def write_report_or_warn(run: Run) -> None:
    """Figures and report.html for a finished run; a failure here must never cost the trained run."""
    try:
        from .report import write_report

        write_report(run.root)
    except Exception as exc:  # the model and metrics are already saved: warn and go on
        print(f"pneumoscan: warning: could not write {run.root / 'report.html'} ({type(exc).__name__}: {exc}); "
              f"the run itself is complete. Retry with: pneumoscan report {run.root}", file=sys.stderr)
