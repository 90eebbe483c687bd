"""Where training runs: one device, every local GPU, or several hosts (``tf.distribute``).

``train.strategy``:

- ``one``: the default device (what a plain CPU or single-GPU run uses).
- ``mirrored``: ``tf.distribute.MirroredStrategy`` over every local GPU, or over the
  devices named in ``train.devices`` (e.g. ``"/gpu:0,/gpu:1"``).
- ``multiworker``: ``tf.distribute.MultiWorkerMirroredStrategy`` over the hosts that
  ``TF_CONFIG`` describes; the chief (task ``chief``, else ``worker`` 0) alone writes the
  run directory.
- ``auto``: ``multiworker`` when ``TF_CONFIG`` lists more than one task, else ``mirrored``
  when there is more than one local GPU, else ``one``.

Scaling rule: ``train.batch_size`` is the batch of one replica and ``train.learning_rate``
the rate for that batch. With R replicas the global batch is ``batch_size * R`` and the
learning rate ``learning_rate * R`` (linear scaling, with the existing warm-up epoch).
Batch normalisation then averages its statistics over the global batch
(``train.sync_batchnorm``), so R replicas take exactly the step one device would take
with the global batch.

``MultiWorkerMirroredStrategy`` must exist before TensorFlow runs any operation, so the
command line builds the :class:`Placement` first and hands it to ``train``.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

STRATEGIES = ("auto", "one", "mirrored", "multiworker")


class DistributeError(RuntimeError):
    """A distributed setup is invalid, or a worker was lost; the message says what to do."""


def tf_config() -> dict | None:
    """The parsed ``TF_CONFIG`` environment variable, or None when it is unset."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        conf = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DistributeError(f"TF_CONFIG is not valid JSON ({exc})") from None
    if not isinstance(conf, dict) or not isinstance(conf.get("cluster"), dict) or not isinstance(conf.get("task"), dict):
        raise DistributeError('TF_CONFIG needs {"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": i}}')
    return conf


def cluster_size(conf: dict | None) -> int:
    """Training tasks (chief + workers) in a TF_CONFIG cluster."""
    if not conf:
        return 0
    return sum(len(conf["cluster"].get(job, [])) for job in ("chief", "worker"))


def resolve_strategy_name(name: str) -> str:
    if name not in STRATEGIES:
        raise DistributeError(f"train.strategy must be one of {', '.join(STRATEGIES)}, not {name!r}")
    if name != "auto":
        return name
    if cluster_size(tf_config()) > 1:
        return "multiworker"
    import tensorflow as tf

    return "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "one"


@dataclass
class Placement:
    """A strategy and this process's place in it."""

    strategy: object  # tf.distribute.Strategy
    kind: str  # one | mirrored | multiworker
    replicas: int = 1
    num_workers: int = 1
    worker_index: int = 0
    is_chief: bool = True
    worker_timeout: float | None = None
    _watchdog: "Watchdog | None" = field(default=None, repr=False)

    @property
    def multi_worker(self) -> bool:
        return self.num_workers > 1

    def shard(self, array):
        """This worker's share of an array: every ``num_workers``-th row.

        Each worker then shuffles, batches and augments only its own share, instead of
        every worker preparing the whole global batch and discarding the rest. Shares are
        made equal by repeating the first rows of the array (at most ``num_workers - 1``), so
        every worker runs the same number of steps.
        """
        if not self.multi_worker:
            return array
        import numpy as np

        short = -len(array) % self.num_workers
        padded = np.concatenate([array, array[:short]]) if short else array
        return padded[self.worker_index::self.num_workers]

    def training_input(self, dataset, examples: int, global_batch: int):
        """``(dataset, steps_per_epoch)`` for ``model.fit``, from a training dataset batched
        by ``global_batch`` over ``examples`` rows (this worker's :meth:`shard`).

        One replica: unchanged, and Keras counts the steps. Several: only full global
        batches are kept (a short last batch would leave some replica with fewer images or
        none, which synchronized batch norm cannot all-reduce; the shuffle drops different
        images each epoch), the dataset repeats, and the steps per epoch are given
        explicitly: Keras would count them on the dataset before distribution (wrong under
        multiworker) or, when unknown, run one empty step that still moves the optimizer.
        """
        if self.replicas == 1:
            return dataset, None
        import tensorflow as tf

        full_batches = examples // global_batch
        if full_batches < 1:
            raise DistributeError(f"{examples} training images per worker are fewer than one global batch "
                                  f"({global_batch} = batch_size x {self.replicas} replicas); lower train.batch_size")
        dataset = dataset.filter(lambda x, *_: tf.shape(x)[0] == global_batch).repeat()
        # Under multiworker each global batch is split over all replicas, and this worker
        # takes its local replicas' pieces: one global batch of its share lasts num_workers steps.
        return self._sharded(dataset), full_batches * self.num_workers

    def validation_input(self, dataset):
        """A validation dataset (from :meth:`shard` arrays) for ``model.fit``."""
        if not self.multi_worker:
            return dataset
        # Keras would count the steps before distribution, num_workers times too few; with
        # the count unknown it reads the distributed dataset to its end (an empty last
        # evaluation step changes nothing).
        return self._sharded(dataset).filter(lambda *_: True)

    def _sharded(self, dataset):
        """Tell tf.data each worker's dataset already holds only its own share."""
        if not self.multi_worker:
            return dataset
        import tensorflow as tf

        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return dataset.with_options(options)

    def barrier(self) -> None:
        """Wait until every worker gets here (a no-op on one worker).

        Used once training is over, so a failure here costs nothing already written: it is
        reported as a warning.
        """
        if not self.multi_worker:
            return
        import tensorflow as tf

        try:
            self.strategy.reduce(tf.distribute.ReduceOp.SUM, tf.constant(1.0), axis=None)
        except tf.errors.OpError as exc:
            print(f"pneumoscan: warning: worker {self.worker_index} could not wait for the others at the end "
                  f"({worker_lost(exc, self).args[0].split(';')[0]}); its own part is done", file=sys.stderr)

    def writable_root(self, run_root: Path) -> Path:
        """The chief writes into the run directory; other workers into a temporary one
        (their saves must still happen, as in the Keras multi-worker tutorial)."""
        if self.is_chief:
            return Path(run_root)
        return Path(tempfile.mkdtemp(prefix=f"pneumoscan-worker{self.worker_index}-"))

    def release(self, root: Path, run_root: Path) -> None:
        if Path(root) != Path(run_root):
            shutil.rmtree(root, ignore_errors=True)

    def progress(self, what: str = "") -> None:
        """Tell the watchdog this worker is still making progress."""
        if self._watchdog:
            self._watchdog.kick(what)

    def stop_watchdog(self) -> None:
        if self._watchdog:
            self._watchdog.stop()
            self._watchdog = None


_PLACEMENTS: dict[tuple, Placement] = {}


def make_placement(name: str = "auto", devices: str | None = None, worker_timeout: float | None = 600.0) -> Placement:
    """Build the strategy for ``train.strategy`` = ``name`` (once per process)."""
    kind = resolve_strategy_name(name)
    key = (kind, devices)
    if key in _PLACEMENTS:
        return _PLACEMENTS[key]
    import tensorflow as tf

    if kind == "one":
        placement = Placement(tf.distribute.get_strategy(), "one")
    elif kind == "mirrored":
        device_list = [d.strip() for d in devices.split(",") if d.strip()] if devices else None
        try:
            strategy = tf.distribute.MirroredStrategy(devices=device_list)
        except (ValueError, RuntimeError) as exc:
            raise DistributeError(f"cannot build MirroredStrategy over {devices or 'the local GPUs'}: {exc}") from None
        placement = Placement(strategy, "mirrored", replicas=strategy.num_replicas_in_sync)
    else:
        placement = _multiworker(worker_timeout)
    _PLACEMENTS[key] = placement
    return placement


def _multiworker(worker_timeout: float | None) -> Placement:
    import tensorflow as tf

    conf = tf_config()
    if cluster_size(conf) < 1:
        raise DistributeError("train.strategy=multiworker needs TF_CONFIG describing the cluster and this task "
                              "(see README, 'Scaling out')")
    task = conf["task"]
    index = int(task.get("index", 0))
    watchdog = None
    if worker_timeout:
        watchdog = Watchdog(worker_timeout, f"{task.get('type')} {index}")
        watchdog.kick("waiting for every worker in TF_CONFIG to join")
    # A collective that waits longer than this fails instead of hanging forever.
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=worker_timeout or None)
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    except RuntimeError as exc:
        raise DistributeError(f"cannot start MultiWorkerMirroredStrategy: {exc}. It must be created before "
                              "TensorFlow runs anything; build it with pneumoscan.distribute.make_placement "
                              "at the start of the program") from None
    _fix_keras_multiworker()
    # Validation is read to its end (Placement.validation_input), which Keras reports once
    # per run as running out of data: expected here, and only confusing.
    warnings.filterwarnings("ignore", message="Your input ran out of data")
    resolver = strategy.cluster_resolver
    return Placement(
        strategy, "multiworker", replicas=strategy.num_replicas_in_sync,
        num_workers=cluster_size(conf), worker_index=_worker_rank(conf, resolver.task_type, resolver.task_id),
        is_chief=bool(strategy.extended.should_checkpoint), worker_timeout=worker_timeout, _watchdog=watchdog,
    )


def _worker_rank(conf: dict, task_type: str, task_id: int) -> int:
    """0..n-1 over chief then workers: which share of the data this task trains on."""
    chiefs = len(conf["cluster"].get("chief", []))
    return task_id if task_type == "chief" else chiefs + task_id


def placement_for(train_cfg) -> Placement:
    """The placement a TrainConfig asks for."""
    return make_placement(train_cfg.strategy, train_cfg.devices, train_cfg.worker_timeout)


# ------------------------------------------------------------------ models under a strategy
def synchronize_batchnorm(model) -> int:
    """Make every BatchNormalization layer average its statistics over all replicas.

    With it, R replicas of batch B take the step one device takes with batch R*B, which
    is what the scaling rule promises; without it each replica normalises by its own B
    images. Returns the number of layers changed.
    """
    import keras

    changed = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized:
            layer.synchronized = True  # read on every call (and saved in the config)
            changed += 1
    return changed


_KERAS_FIXED = False


def _fix_keras_multiworker() -> None:
    """Work around two Keras 3 bugs that stop ``model.fit`` under MultiWorkerMirroredStrategy
    (keras-team/keras#20585, open as of Keras 3.15):

    1. ``_maybe_symbolic_build`` calls ``strategy.reduce`` on the whole (x, y) structure;
    2. ``reduce_per_replica`` averages scalar metrics with ``axis=0``.

    Both fixes are plain corrections of those two functions and change nothing for the
    other strategies.
    """
    global _KERAS_FIXED
    if _KERAS_FIXED:
        return
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as tf_trainer

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if strategy is None:
            return
        if iterator is not None:
            for _, _, it in iterator:
                batch = next(it)
                # Only shapes matter here: the first local replica's batch will do.
                data_batch = tf.nest.map_structure(
                    lambda v: strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues) else v, batch)
                break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    original_reduce = tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy):
            return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original_reduce(values, strategy, reduction)

    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    tf_trainer.reduce_per_replica = reduce_per_replica
    _KERAS_FIXED = True


# ------------------------------------------------------------------ failures
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
