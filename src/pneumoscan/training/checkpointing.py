"""Per-epoch checkpoints that make training resumable and early stopping restartable.

After every epoch, atomically: ``checkpoints/last.keras`` (weights and optimizer state),
``checkpoints/best.weights.h5`` when the monitored metric improved, ``history.csv``, and
``checkpoints/state.json`` (epoch, best score, patience counter, time spent). A killed
run resumes from the last completed epoch, so it loses at most the epoch in progress.
"""
from __future__ import annotations

import json
import math
import time

import keras
import pandas as pd

from ..paths import atomic_write, atomic_write_json
from ..runs import Run


def history_columns(keys) -> list[str]:
    """One column order for history.csv, however the rows were made (a resumed run reads its
    earlier rows back from JSON, in another key order): epoch, the training metrics, their
    validation twins, then learning rate and seconds."""
    keys = set(keys)
    tail = [k for k in ("learning_rate", "seconds") if k in keys]
    metrics = sorted(keys - {"epoch", *tail})
    return (["epoch"] if "epoch" in keys else []) + [m for m in metrics if not m.startswith("val_")] \
        + [m for m in metrics if m.startswith("val_")] + tail


def write_history(run: Run, history: list[dict]) -> None:
    table = pd.DataFrame(history)
    atomic_write(run.history_file, lambda tmp: table[history_columns(table.columns)].to_csv(tmp, index=False))


class RunCheckpoint(keras.callbacks.Callback):
    def __init__(self, run: Run, monitor: str, patience: int, max_minutes: float | None, state: dict | None = None):
        super().__init__()
        self.run, self.monitor, self.patience, self.max_minutes = run, monitor, patience, max_minutes
        self.state = state or {"epoch": -1, "best": -math.inf, "best_epoch": -1, "wait": 0,
                               "train_seconds": 0.0, "history": [], "stopped": None}

    @property
    def last_file(self):
        return self.run.last_checkpoint_file

    @property
    def best_file(self):
        return self.run.best_weights_file

    @property
    def state_file(self):
        return self.run.checkpoint_state_file

    @classmethod
    def load_state(cls, run: Run) -> dict | None:
        file = run.checkpoint_state_file
        return json.loads(file.read_text()) if file.is_file() else None

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def _next_epoch_would_overrun(self) -> bool:
        # Stop *before* an epoch that would cross the budget, judged by the slowest recent epoch,
        # so a budget of N minutes means at most N minutes of training.
        times = [b["seconds"] - a["seconds"] for a, b in zip([{"seconds": 0.0}] + self.state["history"], self.state["history"])]
        slowest = max(times[-3:]) if times else 0.0
        return self.state["train_seconds"] + slowest > 60 * self.max_minutes

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        s = self.state
        s["train_seconds"] += time.perf_counter() - self._t0
        lr = self.model.optimizer.learning_rate
        s["history"].append({"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()},
                             "learning_rate": float(keras.ops.convert_to_numpy(lr)),
                             "seconds": round(s["train_seconds"], 2)})
        score = logs.get(self.monitor)
        if score is None:
            raise KeyError(f"monitored metric {self.monitor!r} not in logs ({', '.join(logs)})")
        if score > s["best"]:
            s.update(best=float(score), best_epoch=epoch + 1, wait=0)
            atomic_write(self.best_file, lambda tmp: self.model.save_weights(tmp))
        else:
            s["wait"] += 1
        s["epoch"] = epoch
        if s["wait"] >= self.patience:
            s["stopped"] = f"early stopping: no {self.monitor} gain for {self.patience} epochs"
        elif self.max_minutes and self._next_epoch_would_overrun():
            s["stopped"] = f"time budget of {self.max_minutes:g} minutes: another epoch would not fit"
        atomic_write(self.last_file, lambda tmp: self.model.save(tmp))
        write_history(self.run, s["history"])
        atomic_write_json(self.state_file, s)
        if s["stopped"]:
            print(f"pneumoscan: {s['stopped']} (best epoch {s['best_epoch']})")
            self.model.stop_training = True
