"""Each worker's share of the data, and the datasets ``model.fit`` needs under a strategy.

One replica: every function here returns its input unchanged.
"""
from __future__ import annotations

from ..errors import DistributeError
from .strategy import Placement


def shard(placement: Placement, array):
    """This worker's share of an array: every ``num_workers``-th row.

    Each worker then shuffles, batches and augments only its own share, instead of
    every worker preparing the whole global batch and discarding the rest. Shares are
    made equal by repeating the first rows of the array (at most ``num_workers - 1``), so
    every worker runs the same number of steps.
    """
    if not placement.multi_worker:
        return array
    import numpy as np

    short = -len(array) % placement.num_workers
    padded = np.concatenate([array, array[:short]]) if short else array
    return padded[placement.worker_index::placement.num_workers]


def training_input(placement: Placement, dataset, examples: int, global_batch: int):
    """``(dataset, steps_per_epoch)`` for ``model.fit``, from a training dataset batched
    by ``global_batch`` over ``examples`` rows (this worker's :func:`shard`).

    One replica: unchanged, and Keras counts the steps. Several: only full global
    batches are kept (a short last batch would leave some replica with fewer images or
    none, which synchronized batch norm cannot all-reduce; the shuffle drops different
    images each epoch), the dataset repeats, and the steps per epoch are given
    explicitly: Keras would count them on the dataset before distribution (wrong under
    multiworker) or, when unknown, run one empty step that still moves the optimizer.
    """
    if placement.replicas == 1:
        return dataset, None
    import tensorflow as tf

    full_batches = examples // global_batch
    if full_batches < 1:
        raise DistributeError(f"{examples} training images per worker are fewer than one global batch "
                              f"({global_batch} = batch_size x {placement.replicas} replicas); lower train.batch_size")
    dataset = dataset.filter(lambda x, *_: tf.shape(x)[0] == global_batch).repeat()
    # Under multiworker each global batch is split over all replicas, and this worker
    # takes its local replicas' pieces: one global batch of its share lasts num_workers steps.
    return _sharded(placement, dataset), full_batches * placement.num_workers


def validation_input(placement: Placement, dataset):
    """A validation dataset (from :func:`shard` arrays) for ``model.fit``."""
    if not placement.multi_worker:
        return dataset
    # Keras would count the steps before distribution, num_workers times too few; with
    # the count unknown it reads the distributed dataset to its end (an empty last
    # evaluation step changes nothing).
    return _sharded(placement, dataset).filter(lambda *_: True)


def _sharded(placement: Placement, dataset):
    """Tell tf.data each worker's dataset already holds only its own share."""
    if not placement.multi_worker:
        return dataset
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options)
