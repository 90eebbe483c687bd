"""Micro-batching: images of requests that arrive together are predicted in one model call.

One worker thread owns the model. It takes the first waiting image, then keeps collecting
until ``max_batch`` images are in hand or ``max_wait_ms`` has passed since the first, and
scores them together: on a CPU a batch of 8 costs far less than 8 batches of 1. Requests
decode their images in their own threads meanwhile, so decoding and inference overlap.

The queue is bounded (``max_queue`` images): when it is full, :meth:`BatchQueue.submit`
raises :class:`Overloaded` at once, and the app answers 503 with ``Retry-After`` instead
of letting latency grow without limit.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..options import SERVE_MAX_BATCH as DEFAULT_MAX_BATCH
from ..options import SERVE_MAX_QUEUE as DEFAULT_MAX_QUEUE
from ..options import SERVE_MAX_WAIT_MS as DEFAULT_MAX_WAIT_MS

log = logging.getLogger(__name__)

class Overloaded(Exception):
    """The queue cannot take more images now; try again shortly."""


class TooManyImages(ValueError):
    """One request holds more images than the queue can ever take."""


@dataclass
class _Item:
    image: np.ndarray
    future: Future


class BatchQueue:
    """``score(images) -> (probabilities, ood_scores or None)`` behind a bounded queue and one worker."""

    def __init__(self, score: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]],
                 max_batch: int = DEFAULT_MAX_BATCH, max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
                 max_queue: int = DEFAULT_MAX_QUEUE, pad: bool = False):
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and max_queue must be at least 1 and max_wait_ms not negative")
        self.score, self.max_batch, self.max_wait = score, max_batch, max_wait_ms / 1000.0
        self.max_queue = max_queue
        # A traced graph (Keras) is traced again for every new batch size: padding each batch to
        # a power of two (or max_batch) bounds that to a handful of sizes, all traced by warm_up().
        powers = [2 ** i for i in range(max_batch.bit_length()) if 2 ** i < max_batch]
        self.sizes = powers + [max_batch] if pad else []  # the batch sizes the model is called with
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._room = threading.BoundedSemaphore(max_queue)  # images queued or being scored
        self.batches = self.images = 0  # counters for /health and the benchmark
        self._worker = threading.Thread(target=self._run, name="pneumoscan-batcher", daemon=True)
        self._worker.start()

    def submit(self, images: np.ndarray) -> list[Future]:
        """One future per image, resolved to (probability, ood score or None). All or none are queued."""
        if len(images) > self.max_queue:
            raise TooManyImages(f"{len(images)} images in one request, more than the queue holds ({self.max_queue})")
        taken = 0
        try:
            for _ in range(len(images)):
                if not self._room.acquire(blocking=False):
                    raise Overloaded(f"{self.max_queue} images already waiting")
                taken += 1
        except Overloaded:
            for _ in range(taken):
                self._room.release()
            raise
        futures = []
        for image in images:
            future: Future = Future()
            self._queue.put(_Item(image, future))
            futures.append(future)
        return futures

    def warm_up(self, image_shape: tuple[int, ...]) -> None:
        """Call the model once at every batch size it will see, before the first request."""
        for size in self.sizes:
            self.score(np.zeros((size, *image_shape), np.uint8))

    def _padded(self, images: np.ndarray) -> np.ndarray:
        if not self.sizes:
            return images
        size = next(s for s in self.sizes if s >= len(images))
        if size == len(images):
            return images
        return np.concatenate([images, np.zeros((size - len(images), *images.shape[1:]), images.dtype)])

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=10)

    def _collect(self, first: _Item) -> list[_Item]:
        items = [first]
        deadline = time.monotonic() + self.max_wait
        while len(items) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:  # closing: finish this batch, then stop
                self._queue.put(None)
                break
            items.append(item)
        return items

    def _run(self) -> None:
        while (first := self._queue.get()) is not None:
            items = self._collect(first)
            try:
                probs, ood = self.score(self._padded(np.stack([item.image for item in items])))
                for i, item in enumerate(items):
                    item.future.set_result((float(probs[i]), None if ood is None else float(ood[i])))
            except Exception as exc:  # every waiting request learns of it; the worker goes on
                log.exception("batch of %d images failed", len(items))
                for item in items:
                    item.future.set_exception(exc)
            finally:
                self.batches += 1
                self.images += len(items)
                for _ in items:
                    self._room.release()
