"""Noticing a lost worker: a watchdog process, TensorFlow's failures in words, and the
callbacks that keep every worker stopping together."""
from __future__ import annotations

import os
import sys

from typing import TYPE_CHECKING

from ..errors import DistributeError

if TYPE_CHECKING:
    from .strategy import Placement

# The watchdog itself runs in a separate process: while TensorFlow waits inside C++ (for a
# worker to join, or in a collective) it can hold the GIL, so no Python thread of this process
# would run, and it catches SIGTERM. The child reads one line per sign of progress from a
# pipe; after `timeout` seconds without one it prints the error and SIGKILLs the trainer.
# When the trainer exits, the pipe closes and the child exits too.
_WATCHDOG_CHILD = r"""
import os, select, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the trainer
parent, timeout, who = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
what, last, pending = "starting", time.monotonic(), b""
while True:
    ready, _, _ = select.select([0], [], [], 1.0)
    if ready:
        data = os.read(0, 65536)
        if not data:
            sys.exit(0)
        *lines, pending = (pending + data).split(b"\n")
        for line in lines:
            if line == b"STOP":
                sys.exit(0)
            what, last = line.decode(errors="replace") or what, time.monotonic()
    elif time.monotonic() - last > timeout:
        print(f"pneumoscan: error: {who}: no progress for {timeout:g} s while {what}; another worker is down, "
              "hung or unreachable. The job stopped. Start every worker again with `pneumoscan train --resume "
              "RUN_DIR` (raise train.worker_timeout if the workers are only slow)", file=sys.stderr, flush=True)
        os.kill(parent, signal.SIGKILL)  # files are written atomically: nothing is left half-written
        sys.exit(0)
"""


class Watchdog:
    """Ends this process with a clear message when it stops making progress for ``timeout`` s.

    TensorFlow reports a peer that dies within seconds (missed heartbeats, reset
    connections), but a peer that never joins, or hangs while still answering heartbeats,
    can leave the others waiting for a very long time.
    """

    def __init__(self, timeout: float, who: str):
        import subprocess

        read, self._pipe = os.pipe()
        self._child = subprocess.Popen([sys.executable, "-c", _WATCHDOG_CHILD, str(os.getpid()), str(float(timeout)), who],
                                       stdin=read, close_fds=True)
        os.close(read)

    def kick(self, what: str = "") -> None:
        self._send(what.replace("\n", " "))

    def stop(self) -> None:
        if self._pipe is not None:
            self._send("STOP")
            os.close(self._pipe)
            self._pipe = None
            self._child.wait()

    def _send(self, line: str) -> None:
        if self._pipe is None:
            return
        try:
            os.write(self._pipe, (line + "\n").encode())
        except OSError:  # the watchdog process is gone: nothing left to tell
            pass


_FAILURE_HINTS = (  # what TensorFlow's message says -> what happened, in words
    ("stopped sending heartbeats", "a worker stopped sending heartbeats (it crashed or was killed)"),
    ("Connection reset by peer", "a worker's connection was reset (it crashed or was killed)"),
    ("Failed to connect", "a worker could not be reached"),
    ("Connection refused", "a worker could not be reached"),
    ("leader task was preempted", "the chief went away"),
    ("timed out", "a collective operation timed out (train.worker_timeout)"),
    ("Deadline", "a collective operation timed out (train.worker_timeout)"),
)


def worker_lost(exc: Exception, placement: Placement) -> DistributeError:
    """A clear error for a collective that failed because another worker went away."""
    import re

    text = str(exc)
    what = next((words for hint, words in _FAILURE_HINTS if hint.lower() in text.lower()),
                f"{type(exc).__name__} in a collective operation")
    tasks = sorted(set(re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)", text)) - {("worker", str(placement.worker_index))})
    where = f" ({', '.join(f'{job} {task}' for job, task in tasks)})" if tasks else ""
    return DistributeError(
        f"lost contact with another worker: {what}{where}; the job stopped. Start every worker again "
        "with `pneumoscan train --resume RUN_DIR`: training continues from the chief's last completed epoch")


def is_worker_failure(exc: Exception) -> bool:
    import tensorflow as tf

    return isinstance(exc, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                            tf.errors.CancelledError, tf.errors.AbortedError, tf.errors.InternalError))


def agree_to_stop(placement: Placement):
    """A Keras callback (after the checkpoint callback) that stops every worker when any
    one decides to stop.

    The monitored metrics are all-reduced, so early stopping agrees by itself, but the time
    budget is measured on each host's clock; a worker that stopped alone would leave the
    others waiting in the next collective.
    """
    import keras
    import tensorflow as tf

    class AgreeToStop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            mine = tf.constant(1.0 if self.model.stop_training else 0.0)
            anyone = placement.strategy.reduce(tf.distribute.ReduceOp.SUM, mine, axis=None)
            self.model.stop_training = bool(float(anyone) > 0)

    return AgreeToStop()


def progress_callback(placement: Placement):
    """A Keras callback that kicks the watchdog after every batch and epoch."""
    import keras

    class Progress(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            placement.progress(f"training (batch {batch + 1})")

        def on_test_batch_end(self, batch, logs=None):
            placement.progress("validating")

        def on_epoch_end(self, epoch, logs=None):
            placement.progress(f"starting epoch {epoch + 2}")

    return Progress()
