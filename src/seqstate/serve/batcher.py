"""Cross-stream micro-batcher: concurrent steps of different streams share one model call.

Like Triton's sequence batcher: steps queue up; the collector takes the oldest steps, at most
one per stream and at most ``max_batch``, waiting at most ``max_wait_s`` after the oldest
arrived for more to join, and hands the batch to a single worker thread (the event loop never
runs the model). While the worker is busy the next batch fills up, so under load batches grow
by themselves and ``max_wait_s`` only matters when traffic is light.

A second step of a stream already in the batch stays queued for a later batch, in arrival
order: steps of one stream are applied one after another, never together.

With ``batching=False`` every submitted step is its own model call on the same worker thread
(the baseline the benchmark compares against).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from seqstate.serve.engine import Outcome, StepRequest

__all__ = ["Batcher"]

Process = Callable[[Sequence[StepRequest]], list[Outcome]]


class Batcher:
    def __init__(
        self,
        process: Process,
        *,
        max_batch: int = 256,
        max_wait_s: float = 0.002,
        batching: bool = True,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self._process = process
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.batching = batching
        self._on_batch = on_batch
        self._queue: collections.deque[tuple[StepRequest, asyncio.Future[Outcome], float]] = (
            collections.deque()
        )
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="seqstate-model")
        self._collector: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.batching and self._collector is None:
            self._collector = asyncio.create_task(self._collect(), name="seqstate-batcher")

    async def stop(self) -> None:
        """Finish what is queued, then stop the collector and the worker thread."""
        if self._collector is not None:
            while self._queue:
                await self._run_batch(self._take())
            self._collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._collector
            self._collector = None
        self._executor.shutdown(wait=True)

    def enqueue(self, request: StepRequest) -> asyncio.Future[Outcome]:
        """Queue one step without awaiting it: the future completes when its new state is
        durable (or it was refused). Steps of one stream complete in the order queued."""
        if not self.batching:
            return asyncio.ensure_future(self.submit(request))
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._queue.append((request, future, time.monotonic()))
        self._arrived.set()
        return future

    async def submit(self, request: StepRequest) -> Outcome:
        """Apply one step; returns when its new state is durable (or it was refused)."""
        loop = asyncio.get_running_loop()
        if not self.batching:
            started = time.perf_counter()
            (outcome,) = await loop.run_in_executor(self._executor, self._process, [request])
            if self._on_batch is not None:
                self._on_batch(1, time.perf_counter() - started)
            return outcome
        future: asyncio.Future[Outcome] = loop.create_future()
        self._queue.append((request, future, time.monotonic()))
        self._arrived.set()
        return await future

    def _take(self) -> list[tuple[StepRequest, asyncio.Future[Outcome], float]]:
        """The oldest queued steps, one per stream, at most max_batch; the rest stay queued."""
        batch: list[tuple[StepRequest, asyncio.Future[Outcome], float]] = []
        later: list[tuple[StepRequest, asyncio.Future[Outcome], float]] = []
        seen: set[str] = set()
        while self._queue and len(batch) < self.max_batch:
            item = self._queue.popleft()
            if item[0].stream in seen:
                later.append(item)
            else:
                seen.add(item[0].stream)
                batch.append(item)
        self._queue.extendleft(reversed(later))  # back in front, order kept
        return batch

    async def _collect(self) -> None:
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            deadline = self._queue[0][2] + self.max_wait_s
            while len(self._queue) < self.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            await self._run_batch(self._take())

    async def _run_batch(
        self, batch: list[tuple[StepRequest, asyncio.Future[Outcome], float]]
    ) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            outcomes = await loop.run_in_executor(
                self._executor, self._process, [request for request, _, _ in batch]
            )
        except Exception as error:  # the whole batch failed (e.g. the store is down)
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(error)
            return
        if self._on_batch is not None:
            self._on_batch(len(batch), time.perf_counter() - started)
        for (_, future, _), outcome in zip(batch, outcomes, strict=True):
            if not future.done():  # the client may have gone away; the step is applied anyway
                future.set_result(outcome)
