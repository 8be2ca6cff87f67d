"""Cross-stream micro-batcher: concurrent steps of different streams share one model call.

Like Triton's sequence batcher: steps queue up; the collector takes the oldest steps, at most
one per stream and at most ``max_batch``, and hands the batch to a single model thread (the
event loop never runs the model). An idle batcher takes what is queued at once (a lone step
is answered without waiting); while a commit is in flight it waits for that commit, at most
``max_wait_s`` after the oldest step arrived, for more to join. While the model runs, the
next batch fills up, so under load batches grow by themselves.

A second step of a stream already in a batch stays queued for a later batch, in arrival
order: steps of one stream are applied one after another, never together.

With ``stages=(prepare, commit)`` the durable commit (an fsync for SQLite) runs on its own
thread while the model thread prepares the next batches, a two-stage pipeline with group
commit: every batch prepared while a commit runs waits for the next one, and ``commit``
writes them all at once (``commit`` takes a list of prepared batches and returns their
outcomes, one list per batch)::

    model thread:   prepare k | prepare k+1 | prepare k+2 | prepare k+3
    commit thread:            | commit [k]                | commit [k+1, k+2] ...

A batch never holds a stream that an earlier batch is still committing (those steps wait),
so every read sees the committed state it continues; at most one commit is in flight, and a
step is answered only when the commit holding it has returned.

A block (:meth:`Batcher.enqueue_block`: the steps of one frame, of distinct streams) is one
queue item with one future for all its steps: it joins a batch whole (or waits whole, and
holds back the later steps of its streams), so a frame of many streams costs one future and
one callback, not one per step. A binary frame's usual steps come as one
:class:`~seqstate.serve.engine.FrameSteps` (arrays, no object per step): queued and taken like
a block, handed to the engine whole, answered with one :class:`~seqstate.serve.engine.FrameOutcome`.

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
from typing import Any

from seqstate.serve.engine import FrameSteps, Outcome, StepRequest

__all__ = ["Batcher"]

Process = Callable[[Sequence[StepRequest | FrameSteps]], list[Any]]
# a step, a block of steps of distinct streams or a frame's steps as arrays, its future (a
# block's: the list of its outcomes; a frame's: its FrameOutcome), when it was queued
Item = tuple["StepRequest | Block | FrameSteps", "asyncio.Future[Any]", float]


class Block(tuple[StepRequest, ...]):
    """The steps of one frame, of distinct streams, queued and answered together."""

    __slots__ = ()


def _streams(step: StepRequest | Block | FrameSteps) -> list[str]:
    kind = type(step)
    if kind is FrameSteps:
        return step.streams  # type: ignore[union-attr]
    return [r.stream for r in step] if kind is Block else [step.stream]  # type: ignore[union-attr]


def _size(step: StepRequest | Block | FrameSteps) -> int:
    """How many steps ``step`` holds."""
    kind = type(step)
    if kind is FrameSteps:
        return len(step.streams)  # type: ignore[union-attr]
    return len(step) if kind is Block else 1  # type: ignore[arg-type]


def _flatten(batch: list[Item]) -> list[StepRequest | FrameSteps]:
    requests: list[StepRequest | FrameSteps] = []
    for step, _, _ in batch:
        if isinstance(step, Block):
            requests.extend(step)
        else:
            requests.append(step)
    return requests


class Batcher:
    def __init__(
        self,
        process: Process,
        *,
        max_batch: int = 256,
        max_wait_s: float = 0.002,
        batching: bool = True,
        on_batch: Callable[[int, float], None] | None = None,
        stages: tuple[
            Callable[[Sequence[StepRequest | FrameSteps]], Any],
            Callable[[list[Any]], list[list[Any]]],
        ]
        | None = None,
    ) -> None:
        self._process = process
        self._stages = stages
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.batching = batching
        self._on_batch = on_batch
        self._queue: collections.deque[Item] = collections.deque()
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="seqstate-model")
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="seqstate-commit")
        self._committing: set[str] = set()  # streams prepared and not yet committed
        self._ready: list[tuple[list[Item], Any, float]] = []  # prepared, awaiting a commit
        self._commit: asyncio.Task[None] | None = None
        self._collector: asyncio.Task[None] | None = None
        # each stream's last step not yet completed: what a read of the stream waits for
        self._latest: dict[str, asyncio.Future[Outcome]] = {}

    async def start(self) -> None:
        if self.batching and self._collector is None:
            self._collector = asyncio.create_task(self._collect(), name="seqstate-batcher")

    async def stop(self) -> None:
        """Finish what is queued, then stop the collector and the worker threads."""
        if self._collector is not None:
            self._collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._collector
            self._collector = None
            while self._queue or self._commit is not None:
                await self._await_commit()
                if self._queue:
                    await self._run_batch(self._take())
        self._executor.shutdown(wait=True)
        self._committer.shutdown(wait=True)

    def enqueue(self, request: StepRequest) -> asyncio.Future[Outcome]:
        """Queue one step without awaiting it: the future completes when its new state is
        durable (or it was refused). Steps of one stream complete in the order queued."""
        future: asyncio.Future[Outcome]
        if not self.batching:
            future = asyncio.ensure_future(self._submit_alone(request))
            self._track(request.stream, future)
        else:  # _resolve and _fail forget it (no callback per step)
            future = asyncio.get_running_loop().create_future()
            self._queue.append((request, future, time.monotonic()))
            self._arrived.set()
            self._latest[request.stream] = future
        return future

    def enqueue_block(self, requests: Sequence[StepRequest] | FrameSteps) -> asyncio.Future[Any]:
        """Queue the steps of distinct streams as one block: one future, completed with their
        outcomes (in order; a FrameOutcome for a FrameSteps) when all of them are durable (or
        refused). Each stream's earlier queued steps go first, as with :meth:`enqueue`."""
        block = requests if type(requests) is FrameSteps else Block(requests)  # type: ignore[arg-type]
        streams = _streams(block)
        if len(set(streams)) != len(streams):
            raise ValueError("a block must hold at most one step per stream")
        future: asyncio.Future[Any]
        if not self.batching:
            future = asyncio.ensure_future(self._submit_block_alone(block))
        else:
            future = asyncio.get_running_loop().create_future()
            self._queue.append((block, future, time.monotonic()))
            self._arrived.set()
        self._latest.update(dict.fromkeys(streams, future))
        if not self.batching:
            future.add_done_callback(lambda done: self._forget([(block, done, 0.0)]))
        return future

    async def _submit_block_alone(self, block: Block | FrameSteps) -> Any:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        frame = type(block) is FrameSteps
        requests: list[StepRequest | FrameSteps] = [block] if frame else list(block)  # type: ignore[list-item,arg-type]
        outcomes = await loop.run_in_executor(self._executor, self._process, requests)
        if self._on_batch is not None:
            self._on_batch(_size(block), time.perf_counter() - started)
        return outcomes[0] if frame else outcomes

    def _forget(self, batch: list[Item]) -> None:
        """Drop the batch's steps from ``_latest`` where they are their stream's last."""
        latest = self._latest
        for step, future, _ in batch:
            for stream in _streams(step):
                if latest.get(stream) is future:
                    del latest[stream]

    def _track(self, stream: str, future: asyncio.Future[Outcome]) -> None:
        self._latest[stream] = future

        def forget(done: asyncio.Future[Outcome]) -> None:
            if self._latest.get(stream) is done:
                del self._latest[stream]

        future.add_done_callback(forget)

    async def settled(self, stream: str) -> None:
        """Return once every step of ``stream`` queued so far is durable (or refused or
        failed): steps of one stream complete in order, so waiting for its last one is
        enough. A read that follows sees the state they leave."""
        latest = self._latest.get(stream)
        if latest is not None and not latest.done():  # done: cancelled by its waiter
            with contextlib.suppress(Exception):
                await asyncio.shield(latest)

    async def submit(self, request: StepRequest) -> Outcome:
        """Apply one step; returns when its new state is durable (or it was refused)."""
        return await self.enqueue(request)

    async def _submit_alone(self, request: StepRequest) -> Outcome:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        (outcome,) = await loop.run_in_executor(self._executor, self._process, [request])
        if self._on_batch is not None:
            self._on_batch(1, time.perf_counter() - started)
        return outcome

    def _eligible(self) -> Item | None:
        """The oldest queued step (or block) whose streams are not being committed."""
        committing = self._committing
        if not committing:
            return self._queue[0] if self._queue else None
        for item in self._queue:
            if committing.isdisjoint(_streams(item[0])):
                return item
        return None

    def _take(self) -> list[Item]:
        """The oldest eligible steps, one per stream, at most max_batch steps (a block joins
        whole; one larger than max_batch goes alone); the rest stay queued."""
        batch: list[Item] = []
        later: list[Item] = []
        seen: set[str] = set(self._committing)
        size = 0
        while self._queue and size < self.max_batch:
            item = self._queue.popleft()
            step = item[0]
            if type(step) is Block or type(step) is FrameSteps:
                streams = _streams(step)
                steps = _size(step)
                full = size > 0 and size + steps > self.max_batch
                if full or not seen.isdisjoint(streams):
                    later.append(item)
                    seen.update(streams)  # the later steps of its streams wait behind it
                    if full:
                        break  # the block goes first next time
                    continue
                seen.update(streams)
                batch.append(item)
                size += steps
            elif step.stream in seen:  # type: ignore[union-attr]
                later.append(item)
            else:
                seen.add(step.stream)  # type: ignore[union-attr]
                batch.append(item)
                size += 1
        self._queue.extendleft(reversed(later))  # back in front, order kept
        return batch

    async def _collect(self) -> None:
        while True:
            while (first := self._eligible()) is None:
                self._arrived.clear()
                await self._arrived.wait()
            # Idle (no commit in flight): the steps queued now go at once; those arriving
            # meanwhile make the next batch, so batches grow with the load by themselves.
            # Busy: wait for the commit (or max_wait_s after the oldest step), so that the
            # steps it holds back and the ones arriving join this batch.
            commit = self._commit
            remaining = first[2] + self.max_wait_s - time.monotonic()
            if commit is not None and remaining > 0 and len(self._queue) < self.max_batch:
                await asyncio.wait({commit}, timeout=remaining)
            batch = self._take()
            if batch:
                await self._run_batch(batch)

    async def _await_commit(self) -> None:
        if self._commit is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._commit)
            self._commit = None

    async def _run_batch(self, batch: list[Item]) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        requests = _flatten(batch)
        try:
            if self._stages is None:
                outcomes = await loop.run_in_executor(self._executor, self._process, requests)
            else:
                prepared = await loop.run_in_executor(self._executor, self._stages[0], requests)
        except Exception as error:  # the whole batch failed (e.g. the store is down)
            self._fail(batch, error)
            return
        if self._stages is None:
            self._resolve(batch, outcomes, started)
            return
        for step, _, _ in batch:
            self._committing.update(_streams(step))
        self._ready.append((batch, prepared, started))
        if self._commit is None:  # else the running commit takes it next, with the others
            self._commit = asyncio.create_task(self._commit_ready())

    async def _commit_ready(self) -> None:
        """Commit every prepared batch, several at once (one write, one fsync) when several
        were prepared while the previous commit ran."""
        loop = asyncio.get_running_loop()
        try:
            while self._ready:
                group, self._ready = self._ready, []
                try:
                    results = await loop.run_in_executor(
                        self._committer,
                        self._stages[1],  # type: ignore[index]
                        [prepared for _, prepared, _ in group],
                    )
                except Exception as error:
                    for batch, _, _ in group:
                        self._fail(batch, error)
                else:
                    for (batch, _, started), outcomes in zip(group, results, strict=True):
                        self._resolve(batch, outcomes, started)
                finally:
                    for batch, _, _ in group:
                        for step, _, _ in batch:
                            self._committing.difference_update(_streams(step))
                    self._arrived.set()  # steps that waited for this commit may now be taken
        finally:
            self._commit = None

    def _resolve(self, batch: list[Item], outcomes: list[Any], started: float) -> None:
        if self._on_batch is not None:
            steps = sum(_size(step) for step, _, _ in batch)
            self._on_batch(steps, time.perf_counter() - started)
        self._forget(batch)
        at = 0
        for step, future, _ in batch:
            if type(step) is Block:
                result: Any = outcomes[at : at + len(step)]
                at += len(step)
            else:  # a step, or a frame's steps: one outcome
                result = outcomes[at]
                at += 1
            if not future.done():  # the client may have gone away; the step is applied anyway
                future.set_result(result)
        if at != len(outcomes):
            raise RuntimeError(f"internal error: {len(outcomes)} outcomes for {at} steps")

    def _fail(self, batch: list[Item], error: Exception) -> None:
        self._forget(batch)
        for _, future, _ in batch:
            if not future.done():
                future.set_exception(error)
