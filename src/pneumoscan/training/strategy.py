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

Beside this module: :mod:`.sharding` (each worker's share of the data), :mod:`.keras_patch`
(the Keras fixes multiworker needs) and :mod:`.watchdog` (noticing a lost worker).
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
from typing import TYPE_CHECKING

from ..errors import DistributeError
from ..options import STRATEGIES

if TYPE_CHECKING:
    from .watchdog import Watchdog


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

    def barrier(self) -> None:
        """Wait until every worker gets here (a no-op on one worker).

        Used once training is over, so a failure here costs nothing already written: it is
        reported as a warning.
        """
        if not self.multi_worker:
            return
        import tensorflow as tf

        from .watchdog import worker_lost

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
        from .watchdog import Watchdog

        watchdog = Watchdog(worker_timeout, f"{task.get('type')} {index}")
        watchdog.kick("waiting for every worker in TF_CONFIG to join")
    # A collective that waits longer than this fails instead of hanging forever.
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=worker_timeout or None)
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    except RuntimeError as exc:
        raise DistributeError(f"cannot start MultiWorkerMirroredStrategy: {exc}. It must be created before "
                              "TensorFlow runs anything; build it with pneumoscan.training.strategy.make_placement "
                              "at the start of the program") from None
    from .keras_patch import fix_keras_multiworker

    fix_keras_multiworker()
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
