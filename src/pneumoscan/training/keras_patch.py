"""Two fixes to Keras 3 that ``model.fit`` needs under MultiWorkerMirroredStrategy
(keras-team/keras#20585). They replace private Keras functions, so they are applied only to
the Keras versions they were checked against; any other version fails with a clear message
instead of being patched blindly.
"""
from __future__ import annotations

from ..errors import DistributeError

# (lowest, highest) Keras version, inclusive, whose trainer these fixes were written for and tested on.
CHECKED_KERAS = ((3, 8), (3, 15))


def check_keras_version(version: str | None = None) -> tuple[int, int]:
    """The (major, minor) of Keras, or DistributeError when the fixes were not checked on it."""
    import keras

    version = version or keras.__version__
    try:
        major_minor = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        major_minor = ()
    low, high = CHECKED_KERAS
    if len(major_minor) != 2 or not low <= major_minor <= high:
        raise DistributeError(
            f"train.strategy=multiworker needs two fixes to Keras' trainer that were checked on Keras "
            f"{low[0]}.{low[1]} to {high[0]}.{high[1]}, not on the installed Keras {version}; install a Keras in "
            f"that range (pip install 'keras>={low[0]}.{low[1]},<{high[0]}.{high[1] + 1}') or use another strategy")
    return major_minor


_KERAS_FIXED = False


def fix_keras_multiworker() -> None:
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
    check_keras_version()
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
