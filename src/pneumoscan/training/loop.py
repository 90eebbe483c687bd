"""Fit a model and save it into a run directory: data, model, checkpoints, ``model.keras``.

Evaluation and the report come after, in :func:`pneumoscan.train` (``pneumoscan/api.py``),
which is what users call; this module is the training step alone.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from sklearn.utils.class_weight import compute_class_weight

from ..config import Config
from ..data.dataset import PreparedData, prepare
from ..data.locate import resolve_data_path
from ..errors import ConfigError, RunError
from ..imaging.augment import build_augmenter
from ..models import PneumoniaAUC, build_model
from ..paths import atomic_write, atomic_write_json, atomic_write_text
from ..runs import Run, environment
from .checkpointing import RunCheckpoint
from .pipeline import eval_dataset, training_dataset
from .precision import dtype_policy, resolve_jit, resolve_precision
from .precision_probe import measured_cpu_precision
from .sharding import shard, training_input, validation_input
from .strategy import Placement, placement_for, synchronize_batchnorm
from .watchdog import agree_to_stop, is_worker_failure, progress_callback, worker_lost


@dataclass
class Fitted:
    """What training leaves for evaluation: the run, its config, the data and the best model."""

    run: Run
    config: Config
    prepared: PreparedData | None = None  # None: nothing left to do (the run was already complete)
    model: keras.Model | None = None  # float32, best epoch's weights; None on a non-chief worker
    state: dict | None = None  # the checkpoint state (epochs, best score, time)


def class_weights(labels: np.ndarray, mode: str) -> dict[int, float] | None:
    """'balanced': n / (2 * n_class), so both classes weigh the same in the loss."""
    if mode == "none":
        return None
    classes = np.unique(labels)
    weights = compute_class_weight("balanced", classes=classes, y=labels)
    return {int(c): float(w) for c, w in zip(classes, weights)}


def ema_momentum(ema: float | None, total_steps: int) -> float | None:
    """The weight-average momentum for a run of ``total_steps``: at most ``ema``, and short enough
    that the average spans a tenth of the run at most (an average over more steps than a short
    run has would keep the untrained starting weights); None when averaging is off."""
    if ema is None:
        return None
    momentum = min(ema, 1.0 - 10.0 / max(total_steps, 1))
    return momentum if momentum > 0 else None


def compile_model(model: keras.Model, cfg: Config, steps_per_epoch: int, replicas: int = 1,
                  jit_compile: bool | str = "auto") -> None:
    t = cfg.train
    ema = ema_momentum(t.ema, steps_per_epoch * t.epochs)
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
        optimizer=keras.optimizers.Adam(schedule, weight_decay=t.weight_decay or None,
                                        use_ema=ema is not None, ema_momentum=ema or 0.99),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=t.label_smoothing),
        metrics=["accuracy", PneumoniaAUC(name="auc")],
        jit_compile=jit_compile,
    )


def fit(cfg: Config | None, data: str | Path | None = None, out: str | Path = "runs/latest", resume: bool = False,
        verbose: int | None = None, placement: Placement | None = None) -> Fitted:
    """Train ``cfg`` on ``data`` into the run directory ``out`` and save ``model.keras``.

    With ``resume=True`` the run continues from its last completed epoch, using the
    config saved in ``out`` (``cfg`` is ignored). ``placement`` (:mod:`.strategy`) says where
    to train; by default the one ``cfg.train.strategy`` asks for. Under ``multiworker`` only
    the chief writes ``out``; the other workers write into a temporary directory they
    delete, and read ``out`` only to resume.
    """
    run = Run(Path(out))
    if resume:
        cfg = run.config()
    if cfg.train.tensorboard:
        require_tensorboard()
    # Before any TensorFlow op runs: MultiWorkerMirroredStrategy must be created first.
    placement = placement or placement_for(cfg.train)
    state = None
    if resume:
        _remove_stale_temporaries(run)
        state = RunCheckpoint.load_state(run)
        if state and state.get("complete"):
            print(f"pneumoscan: {run.root} already finished; nothing to resume")
            return Fitted(run, cfg)
    elif placement.is_chief and run.config_file.exists():
        raise RunError(f"{run.root}: already holds a run; use --resume {run.root} or another --out")
    write_root = placement.writable_root(run.root)
    try:
        fitted = _fit(cfg, data, run, Run(write_root), resume, state, verbose, placement)
        # The other workers wait for the chief to finish writing: a worker that left early
        # would look like a crashed one to TensorFlow's coordination service.
        placement.barrier()
        return fitted
    finally:
        placement.stop_watchdog()
        placement.release(write_root, run.root)


def require_tensorboard() -> None:
    """Fail before training, not after the first epoch, when the logs cannot be written."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("train.tensorboard needs the tensorboard package, which is not installed: "
                          "pip install 'pneumoscan[tensorboard]' (or pip install tensorboard)")


def mark_complete(fitted: Fitted) -> None:
    """Record that the run is finished (after evaluation): ``--resume`` then has nothing to do."""
    fitted.state["complete"] = True
    atomic_write_json(fitted.run.checkpoint_state_file, fitted.state)


def _fit(cfg: Config, data, source: Run, run: Run, resume: bool, state: dict | None, verbose: int | None,
         placement: Placement) -> Fitted:
    """The training proper. ``run`` is where this process writes (the run directory on the
    chief, a temporary one elsewhere); ``source`` is the run directory itself."""
    data_path = resolve_data_path(data or cfg.data.path, cfg.data.source)
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
    last_file = source.last_checkpoint_file  # every worker resumes from the chief's
    placement.progress("building the model")
    with placement.strategy.scope():
        if state is not None and last_file.is_file():
            model = keras.saving.load_model(last_file)  # weights and optimizer state
            model.jit_compile = jit
            initial_epoch = state["epoch"] + 1
            print(f"pneumoscan: resuming {source.root} after epoch {initial_epoch}")
        else:
            # On one CPU replica "auto" is measured (precision_probe); several replicas agree on float32.
            precision = resolve_precision(t.precision, measure=(lambda: measured_cpu_precision(cfg)) if replicas == 1 else None)
            checkpoint.state["precision"] = precision
            with dtype_policy(precision):
                model = build_model(cfg.model, cfg.data.image_size)
            if replicas > 1 and t.sync_batchnorm:
                synchronize_batchnorm(model)
            compile_model(model, cfg, steps, replicas, jit)
            initial_epoch = 0

    if initial_epoch < t.epochs and not checkpoint.state.get("stopped"):
        # With EMA the averaged weights are swapped in for validation and at each epoch's end,
        # so the checkpoint (after the swap) keeps the averaged weights. A resumed run goes on
        # from the averaged weights of its last epoch.
        averaging = getattr(model.optimizer, "use_ema", False)
        callbacks = ([keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if averaging else []) + [checkpoint]
        if placement.multi_worker:
            callbacks += [agree_to_stop(placement), progress_callback(placement)]
        if t.tensorboard and placement.is_chief:
            # Scalars per epoch (the learning rate among them), appended across resumes.
            callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run.tensorboard_dir), write_graph=False,
                                                         update_freq="epoch", profile_batch=0))
        x_val, y_val = prepared.images["val"], prepared.labels["val"]
        x_mine, y_mine = shard(placement, x_train), shard(placement, y_train)  # all of it on one worker
        train_data, steps_per_epoch = training_input(placement, training_dataset(
            x_mine, y_mine, global_batch, build_augmenter(cfg.augment, t.seed), t.seed + initial_epoch),
            len(x_mine), global_batch)
        try:
            model.fit(
                train_data,
                steps_per_epoch=steps_per_epoch,
                validation_data=validation_input(placement, eval_dataset(shard(placement, x_val),
                                                                         shard(placement, y_val), 128)),
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
        return Fitted(source, cfg, prepared, None, checkpoint.state)

    final = build_model(cfg.model, cfg.data.image_size)  # float32 whatever the training precision
    final.load_weights(checkpoint.best_file)
    atomic_write(run.model_file, lambda tmp: final.save(tmp))
    return Fitted(run, cfg, prepared, final, checkpoint.state)


def _remove_stale_temporaries(run: Run) -> None:
    # A run killed mid-write leaves its atomic-write temporary (never the target) behind.
    for folder in (run.root, run.checkpoint_dir):
        for tmp in folder.glob(".tmp-*"):
            tmp.unlink(missing_ok=True)
