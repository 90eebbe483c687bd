"""Kill a real `pneumoscan train` with SIGKILL after its second epoch, then `--resume` it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import pandas as pd

from pneumoscan.cli import main

EPOCHS = 4
CLI = Path(sys.executable).parent / "pneumoscan"
TINY_TRAIN = ["--image-size", "64", "--max-per-class", "40", "--model", "pneumonet_small", "--set", "model.width=8",
              "--epochs", str(EPOCHS), "--set", "train.max_minutes=none", "--set", "evaluate.bootstrap=50"]


def read_state(run: Path) -> dict | None:
    file = run / "checkpoints" / "state.json"
    return json.loads(file.read_text()) if file.is_file() else None  # written atomically: never half a file


def kill_after_epoch(proc: subprocess.Popen, run: Path, log: Path, epoch_index: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = read_state(run)
        if state and state["epoch"] >= epoch_index:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return
        assert proc.poll() is None, f"training ended before epoch {epoch_index + 1}:\n{log.read_text()}"
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no epoch {epoch_index + 1} within {timeout} s")


def assert_killed_run_is_consistent(run: Path, epochs_done: int) -> None:
    """What a run killed during training holds: whole files for the finished epochs, nothing of the end."""
    assert not (run / "model.keras").exists() and not (run / "metrics.json").exists()
    assert list(pd.read_csv(run / "history.csv")["epoch"]) == list(range(1, epochs_done + 1))
    assert len(pd.read_csv(run / "splits.csv")) > 0
    keras.saving.load_model(run / "checkpoints" / "last.keras")  # loads: written atomically


def assert_finished_run_is_complete(run: Path) -> None:
    keras.saving.load_model(run / "model.keras", compile=False)
    assert "test" in json.loads((run / "metrics.json").read_text())
    for name in ("history.csv", "splits.csv", "predictions.csv"):
        assert len(pd.read_csv(run / name)) > 0, name


def test_a_killed_run_resumes_after_its_last_completed_epoch(tmp_path, kermany_dir, capsys):
    run = tmp_path / "run"
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(CLI), "train", "--data", str(kermany_dir), "--out", str(run), *TINY_TRAIN],
                                stdout=out, stderr=subprocess.STDOUT)
        kill_after_epoch(proc, run, log, epoch_index=1)  # state epoch 1 = two epochs done
    assert proc.returncode == -signal.SIGKILL, log.read_text()

    killed = read_state(run)
    done = killed["epoch"] + 1  # epochs completed before the kill (2, or 3 if one more slipped in)
    assert 2 <= done < EPOCHS and not killed.get("complete")
    assert_killed_run_is_consistent(run, done)
    header_before = (run / "history.csv").read_text().splitlines()[0]

    # What a kill in the middle of an atomic write leaves behind: the temporary, never the target.
    (run / "checkpoints" / ".tmp-abc123-last.keras").write_bytes(b"half a checkpoint")
    # The same command in this process: it saves a second TensorFlow start-up.
    assert main(["train", "--resume", str(run)]) == 0
    assert not list(run.rglob(".tmp-*")), "resume must clear stale temporaries"
    output = "".join(capsys.readouterr())
    assert f"resuming {run} after epoch {done}" in output

    history = pd.read_csv(run / "history.csv")
    assert list(history["epoch"]) == list(range(1, EPOCHS + 1))  # each epoch once, numbering continuous
    # The resumed run reads its earlier epochs back from JSON: the columns keep their order.
    assert (run / "history.csv").read_text().splitlines()[0] == header_before
    assert header_before.startswith("epoch,")
    state = read_state(run)
    assert state["complete"] is True and state["epoch"] == EPOCHS - 1
    assert [h["epoch"] for h in state["history"]] == list(range(1, EPOCHS + 1))
    # The resumed epochs carry on the schedule rather than restarting it: the learning rate of
    # the first resumed epoch follows the killed run's last one on the same cosine decay.
    assert history["learning_rate"].iloc[done] < history["learning_rate"].iloc[done - 1]

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["training"]["epochs_run"] == EPOCHS
    assert metrics["test"]["n"] == 80
    for name in ("config.json", "model.keras", "splits.csv", "predictions.csv", "environment.json"):
        assert (run / name).is_file(), name
    assert_finished_run_is_complete(run)
