"""The request coalescer: images from concurrent requests for one model version share one call.

Each model version has one `Batcher`: a bounded queue of images and one worker task that takes
up to `max_batch_size` queued images, runs the model on them and hands each request its rows.
While the model is busy, new requests queue up and form the next batch on their own;
`max_wait_us` lets a batch wait a little longer for company, but only under load, so a lone
request on an idle server is never delayed.

The model runs in an executor thread, except a call whose batch size has recently taken at
most `inline_us` (a small model on a few images): handing that to a thread and back costs
about as much as the call itself, so it runs on the event loop. Each call is timed per batch
size (a moving average), so a size that slows down goes back to the thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from service.errors import InferenceFailed, ModelNotReady, QueueFull, TooManyImages

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Item:
    array: np.ndarray
    future: asyncio.Future


class Batcher:
    """Coalesces single images into batches for `run_batch`.

    Args:
        run_batch: blocking function, `(n, ...)` array in, `(n, ...)` array out (row i for image i).
        executor: where `run_batch` runs.
        max_batch_size: most images per call.
        max_wait_us: how long a batch that is not full may wait for more images, once the
            previous batch showed concurrent traffic.
        max_queue_size: most images waiting; beyond it `submit` raises `QueueFull`.
        retry_after_seconds: the Retry-After hint of `QueueFull`.
        on_queue_depth: called with the number of waiting images when it changes.
        on_batch: called with (batch size, seconds) after each call.
        workers: batches of this version that may run at once (each in its own executor
            thread; useful with single-threaded TF ops on several cores).
        inline_us: a batch size whose calls have recently taken at most this long runs on the
            event loop, not in `executor` (0: never).
    """

    def __init__(
        self,
        run_batch: Callable[[np.ndarray], np.ndarray],
        executor: Executor,
        *,
        max_batch_size: int,
        max_wait_us: int,
        max_queue_size: int,
        retry_after_seconds: int = 1,
        on_queue_depth: Callable[[int], None] | None = None,
        on_batch: Callable[[int, float], None] | None = None,
        workers: int = 1,
        inline_us: int = 0,
    ) -> None:
        self._run_batch = run_batch
        self._inline_seconds = inline_us / 1e6
        self._call_seconds: dict[int, float] = {}  # batch size -> moving average of its calls
        self._executor = executor
        self.max_batch_size = max_batch_size
        self._max_wait = max_wait_us / 1e6
        self.max_queue_size = max_queue_size
        self._retry_after = retry_after_seconds
        self._on_queue_depth = on_queue_depth or (lambda n: None)
        self._on_batch = on_batch or (lambda n, s: None)
        self._queue: deque[_Item] = deque()
        self._has_items = asyncio.Event()
        self._closing = False
        self._worker_count = workers
        self._workers: list[asyncio.Task] = []

    @property
    def depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        """Start the workers on the running event loop."""
        if not self._workers:
            loop = asyncio.get_running_loop()
            self._workers = [loop.create_task(self._work(), name="batcher") for _ in range(self._worker_count)]

    async def submit(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """Queue `arrays` (one image each) and wait for their rows, in order.

        Raises:
            QueueFull: not enough room in the queue for all of them (nothing is queued then).
            ModelNotReady: the batcher is closing.
            ArithmeticError: the model gave a non-finite value for one of them (a bug of the
                model's: the error handler makes it a logged 500, and JSON never carries a NaN).
        """
        if self._closing or not self._workers:
            # closing: unloaded, or replaced by a version that serves the retry
            raise ModelNotReady("this model version is not accepting requests", self._retry_after)
        if len(arrays) > self.max_queue_size:
            raise TooManyImages(f"{len(arrays)} images; at most {self.max_queue_size} can wait for this model")
        if len(self._queue) + len(arrays) > self.max_queue_size:
            raise QueueFull(
                f"queue full ({len(self._queue)} images waiting); retry in {self._retry_after}s", self._retry_after
            )
        loop = asyncio.get_running_loop()
        items = [_Item(array, loop.create_future()) for array in arrays]
        self._queue.extend(items)
        self._has_items.set()
        self._on_queue_depth(len(self._queue))
        rows = await asyncio.gather(*(item.future for item in items))
        return np.stack(rows)

    def replace(self, run_batch: Callable[[np.ndarray], np.ndarray]) -> None:
        """Send the next batches to `run_batch` (a batch running now finishes on the old one)."""
        self._run_batch = run_batch
        self._call_seconds = {}

    def _timed_call(self, inputs: np.ndarray) -> np.ndarray:
        run_batch = self._run_batch
        started = time.perf_counter()
        outputs = run_batch(inputs)
        seconds = time.perf_counter() - started
        if run_batch is self._run_batch:  # not a call to a runtime replaced meanwhile
            previous = self._call_seconds.get(len(inputs))
            self._call_seconds[len(inputs)] = seconds if previous is None else 0.8 * previous + 0.2 * seconds
        return outputs

    async def close(self) -> None:
        """Refuse new images, serve those already queued, then stop the workers."""
        self._closing = True
        self._has_items.set()
        await asyncio.gather(*self._workers)

    def _take(self, limit: int) -> list[_Item]:
        taken: list[_Item] = []
        while self._queue and len(taken) < limit:
            item = self._queue.popleft()
            if not item.future.done():  # done: its request was cancelled (client went away)
                taken.append(item)
        self._on_queue_depth(len(self._queue))
        if self._queue:
            self._has_items.set()  # more than one batch waiting: wake another worker
        return taken

    async def _wait_for_items(self, timeout: float | None) -> bool:
        self._has_items.clear()
        if self._queue or self._closing:
            return True
        try:
            await asyncio.wait_for(self._has_items.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        under_load = False
        while True:
            if not self._queue:
                if self._closing:
                    return
                await self._wait_for_items(None)
                continue
            batch = self._take(self.max_batch_size)
            if under_load and self._max_wait > 0:
                deadline = loop.time() + self._max_wait
                while len(batch) < self.max_batch_size and not self._closing:
                    remaining = deadline - loop.time()
                    if remaining <= 0 or not await self._wait_for_items(remaining):
                        break
                    batch += self._take(self.max_batch_size - len(batch))
            if not batch:
                continue
            under_load = len(batch) > 1 or bool(self._queue)
            await self._run(loop, batch)

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        started = time.perf_counter()
        try:
            inputs = np.stack([item.array for item in batch])
            if self._call_seconds.get(len(inputs), float("inf")) <= self._inline_seconds:
                outputs = self._timed_call(inputs)
            else:
                outputs = await loop.run_in_executor(self._executor, self._timed_call, inputs)
        except Exception:
            log.exception("model call failed on a batch of %d", len(batch))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(InferenceFailed("the model failed on this batch"))
            return
        self._on_batch(len(batch), time.perf_counter() - started)
        finite = np.isfinite(outputs).all(axis=tuple(range(1, outputs.ndim)))
        for item, row, ok in zip(batch, outputs, finite, strict=True):
            if item.future.done():
                continue
            if ok:
                item.future.set_result(row)
            else:  # the model's fault, never the client's: a 500 with its traceback, for this image's request only
                item.future.set_exception(ArithmeticError("the model gave a non-finite probability"))
