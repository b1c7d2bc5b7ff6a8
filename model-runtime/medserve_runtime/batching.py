"""Dynamic micro-batching: concurrent requests share one forward pass, run off the event loop.

Handlers `enqueue` their encoded rows and await the returned future. One worker task per model
version takes the queued jobs, forms a batch of up to `max_batch_size` rows, runs the forward in a
dedicated thread (so the event loop keeps parsing, validating and answering other requests) and
resolves each job's future with its slice of the output.

When to stop filling a batch is the whole trade-off. Waiting `max_latency_ms` for company on every
batch would add that much latency to a lone request, so the worker waits only while more requests
are on their way: `Arrivals` counts requests that a handler has started on but not yet enqueued.
With nobody arriving, whatever is queued runs at once; under load, requests pile up while the
previous batch runs and while the loop serves the others, which is where the batches come from, and
the wait for stragglers never exceeds `max_latency_ms`. Urgent jobs go to the front of the queue. A batch
whose forward is cheap runs on the event loop itself: while the last forward's time per row, times the
batch's rows, is under INLINE_S, the two thread switches and the future handed between threads would
cost more than the forward (on a one-core pod they are most of a small model's request); a wide network
goes to the thread, where the loop keeps parsing while torch computes without the GIL.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

Matrix = npt.NDArray[np.float32]
INLINE_S = 0.0005
"""A batch whose forward is expected to take less than this runs on the event loop."""


class BatcherClosed(RuntimeError):
    """The batcher was closed (its model version was swapped out or the server is stopping)."""


class Arrivals:
    """How many requests are between arriving and being enqueued: the batcher's hint to wait."""

    def __init__(self) -> None:
        self.count = 0

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        # Only ever touched from the event loop thread, so a plain int is enough.
        self.count += 1
        try:
            yield
        finally:
            self.count -= 1


@dataclasses.dataclass(slots=True)
class _Job:
    rows: Matrix
    future: asyncio.Future[Matrix]


class MicroBatcher:
    """Batches `forward` calls; `forward` maps [N, D] float32 to [N, C] and must be thread-safe."""

    def __init__(self, forward: Callable[[Matrix], Matrix], *, max_batch_size: int, max_latency_ms: float,
                 arrivals: Arrivals | None = None, name: str = "model",
                 on_batch: Callable[[int], None] | None = None) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_latency_ms < 0:
            raise ValueError(f"max_latency_ms must not be negative, got {max_latency_ms}")
        self.max_batch_size = max_batch_size
        self.max_latency = max_latency_ms / 1000.0
        self._forward = forward
        self._arrivals = arrivals or Arrivals()
        self._on_batch = on_batch
        self._queue: collections.deque[_Job] = collections.deque()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"forward-{name}")
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._row_s = 0.0
        """The last forward's seconds per row: what decides whether the next batch runs on the loop."""

    def enqueue(self, rows: Matrix, *, urgent: bool = False) -> asyncio.Future[Matrix]:
        """Queue `rows` [k, D]; the future resolves to their outputs [k, C]. Call from the event loop."""
        if self._closing:
            raise BatcherClosed("this model version is no longer serving")
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._task = loop.create_task(self._work(), name="micro-batcher")
        job = _Job(rows, loop.create_future())
        if urgent:
            self._queue.appendleft(job)
        else:
            self._queue.append(job)
        self._wakeup.set()
        return job.future

    async def run(self, rows: Matrix, *, urgent: bool = False) -> Matrix:
        return await self.enqueue(rows, urgent=urgent)

    async def close(self) -> None:
        """Stop taking jobs, finish every queued one, stop the worker and its thread."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        await asyncio.to_thread(self._executor.shutdown, wait=True)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            jobs = await self._collect(loop)
            await self._execute(jobs, loop)

    async def _collect(self, loop: asyncio.AbstractEventLoop) -> list[_Job]:
        jobs = [self._queue.popleft()]
        rows = len(jobs[0].rows)
        deadline = loop.time() + self.max_latency
        while rows < self.max_batch_size:
            if self._queue:
                if rows + len(self._queue[0].rows) > self.max_batch_size:
                    break
                job = self._queue.popleft()
                jobs.append(job)
                rows += len(job.rows)
                continue
            remaining = deadline - loop.time()
            if self._closing or self._arrivals.count <= 0 or remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
        return jobs

    async def _execute(self, jobs: list[_Job], loop: asyncio.AbstractEventLoop) -> None:
        x = jobs[0].rows if len(jobs) == 1 else np.concatenate([j.rows for j in jobs])
        try:
            if len(x) * self._row_s < INLINE_S and len(x) <= self.max_batch_size:
                y = self._timed_forward(x)  # cheap: on the loop (see the module docstring)
            else:
                y = await loop.run_in_executor(self._executor, self._forward_chunked, x)
        except Exception as exc:
            logger.exception("forward pass failed for a batch of %d rows", len(x))
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        if self._on_batch is not None:
            self._on_batch(len(x))
        offset = 0
        for job in jobs:
            n = len(job.rows)
            if not job.future.done():  # a cancelled request (client gone) leaves a done future
                job.future.set_result(y[offset:offset + n])
            offset += n

    def _timed_forward(self, x: Matrix) -> Matrix:
        started = time.perf_counter()
        y = self._forward(x)
        self._row_s = (time.perf_counter() - started) / max(len(x), 1)
        return y

    def _forward_chunked(self, x: Matrix) -> Matrix:
        # A single large job (batch_predict) still runs in max_batch_size pieces: bounded memory on a GPU.
        if len(x) <= self.max_batch_size:
            return self._timed_forward(x)
        return np.concatenate([self._forward(x[i:i + self.max_batch_size])
                               for i in range(0, len(x), self.max_batch_size)])
