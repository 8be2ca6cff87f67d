"""The micro-batcher: one call for concurrent streams, never two steps of a stream together."""

from __future__ import annotations

import asyncio

import numpy as np

from seqstate.serve.batcher import Batcher
from seqstate.serve.engine import StepRequest, StepResult


def request(stream: str, seq: int) -> StepRequest:
    return StepRequest(stream, seq, np.zeros((1, 3), np.float32), single=True, start=False)


def recorder():
    calls: list[list[tuple[str, int]]] = []

    def process(requests):
        calls.append([(r.stream, r.seq) for r in requests])
        return [StepResult(r.seq, b"[]", replayed=False) for r in requests]

    return calls, process


async def submit_all(batcher: Batcher, requests: list[StepRequest]):
    await batcher.start()
    try:
        return await asyncio.gather(*(batcher.submit(r) for r in requests))
    finally:
        await batcher.stop()


def test_concurrent_steps_of_different_streams_share_one_call():
    calls, process = recorder()
    batcher = Batcher(process, max_batch=64, max_wait_s=0.0)
    results = asyncio.run(submit_all(batcher, [request(f"s{i}", 1) for i in range(10)]))
    assert calls == [[(f"s{i}", 1) for i in range(10)]]
    assert [r.seq for r in results] == [1] * 10


def test_steps_of_one_stream_never_share_a_call_and_keep_their_order():
    calls, process = recorder()
    batcher = Batcher(process, max_batch=64, max_wait_s=0.0)
    requests = [request("a", 1), request("a", 2), request("b", 1), request("a", 3), request("b", 2)]
    asyncio.run(submit_all(batcher, requests))
    assert calls == [[("a", 1), ("b", 1)], [("a", 2), ("b", 2)], [("a", 3)]]


def test_max_batch_bounds_a_call():
    calls, process = recorder()
    batcher = Batcher(process, max_batch=4, max_wait_s=0.0)
    asyncio.run(submit_all(batcher, [request(f"s{i}", 1) for i in range(10)]))
    assert [len(c) for c in calls] == [4, 4, 2]


def test_unbatched_mode_makes_one_call_per_step():
    calls, process = recorder()
    batcher = Batcher(process, batching=False)
    asyncio.run(submit_all(batcher, [request(f"s{i}", 1) for i in range(5)]))
    assert sorted(calls) == [[(f"s{i}", 1)] for i in range(5)]


def test_a_failing_batch_fails_its_steps_only():
    attempts = []

    def process(requests):
        attempts.append(len(requests))
        if len(attempts) == 1:
            raise RuntimeError("store down")
        return [StepResult(r.seq, b"[]", replayed=False) for r in requests]

    async def main():
        batcher = Batcher(process, max_batch=2, max_wait_s=0.0)
        await batcher.start()
        try:
            first = await asyncio.gather(
                *(batcher.submit(request(f"s{i}", 1)) for i in range(3)), return_exceptions=True
            )
        finally:
            await batcher.stop()
        return first

    first = asyncio.run(main())
    assert [type(r).__name__ for r in first] == ["RuntimeError", "RuntimeError", "StepResult"]


def test_the_commit_of_a_batch_overlaps_the_next_batch_but_never_shares_a_stream():
    """Two stages: batches are prepared while a commit runs, and committed together next
    (group commit); a stream being committed waits, so each stream's steps are prepared
    only after its previous step is durable."""
    import threading
    import time

    log: list[tuple[str, list[tuple[str, int]]]] = []
    committed: set[tuple[str, int]] = set()
    commit_started, release_commit = threading.Event(), threading.Event()
    overlapped: list[bool] = []
    groups: list[int] = []  # batches per commit

    def prepare(requests):
        for r in requests:  # the previous step of this stream is already durable
            assert r.seq == 1 or (r.stream, r.seq - 1) in committed
        time.sleep(0.05)  # a model call
        overlapped.append(commit_started.is_set())  # a commit is running meanwhile
        log.append(("prepare", [(r.stream, r.seq) for r in requests]))
        return requests

    def finish(batches):
        commit_started.set()
        release_commit.wait(timeout=0.2)  # a slow fsync
        release_commit.set()
        groups.append(len(batches))
        for requests in batches:
            committed.update((r.stream, r.seq) for r in requests)
        commit_started.clear()
        release_commit.clear()
        return [[StepResult(r.seq, b"[]", replayed=False) for r in rs] for rs in batches]

    async def main():
        batcher = Batcher(None, max_batch=4, max_wait_s=0.001, stages=(prepare, finish))
        await batcher.start()
        try:
            streams = [f"s{i}" for i in range(12)]  # 3 batches: 2 prepared during a commit
            futures = [batcher.enqueue(request(s, seq)) for seq in (1, 2, 3) for s in streams]
            return await asyncio.gather(*futures)
        finally:
            await batcher.stop()

    outcomes = asyncio.run(main())
    assert [o.seq for o in outcomes] == [seq for seq in (1, 2, 3) for _ in range(12)]
    assert len(committed) == 36
    assert any(overlapped)  # some batch was prepared while another one was committing
    assert sum(groups) == len(log) and len(groups) < len(log)  # some commits held several


def test_an_idle_batcher_answers_a_lone_step_without_waiting_for_more():
    """No commit in flight: the queued steps go at once, whatever max_wait_s says (an hour
    here: a wait would time the test out)."""
    calls, process = recorder()

    async def main():
        batcher = Batcher(process, max_batch=64, max_wait_s=3600.0)
        await batcher.start()
        try:
            first = await asyncio.wait_for(batcher.submit(request("a", 1)), 60)
            second = await asyncio.wait_for(batcher.submit(request("a", 2)), 60)
        finally:
            await batcher.stop()
        return first, second

    first, second = asyncio.run(main())
    assert (first.seq, second.seq) == (1, 2) and calls == [[("a", 1)], [("a", 2)]]


def test_a_settled_stream_is_forgotten_once_answered():
    """The batcher keeps each stream's last unanswered step (what a read waits for) and
    forgets it when answered, failed or not: nothing is kept per stream after that."""
    _, process = recorder()

    def failing(requests):
        raise RuntimeError("store down")

    async def main():
        kept = []
        for work in (process, failing):
            batcher = Batcher(work, max_batch=64, max_wait_s=0.0)
            await batcher.start()
            try:
                futures = [batcher.enqueue(request(s, 1)) for s in ("a", "b")]
                await asyncio.gather(*futures, return_exceptions=True)
                await batcher.settled("a")
                kept.append(dict(batcher._latest))
            finally:
                await batcher.stop()
        return kept

    assert asyncio.run(main()) == [{}, {}]


def test_a_block_joins_a_call_whole_and_keeps_every_stream_in_order():
    """Steps and blocks (a frame's steps of distinct streams, one future) queued at once: a
    stream's steps are applied in the order queued whatever carries them, a block is never
    split, one larger than max_batch goes alone, and each block is answered with its
    outcomes in order. Equal to the plain reference: queue order, one step per stream per
    call, calls filled in order."""
    calls, process = recorder()
    batcher = Batcher(process, max_batch=5, max_wait_s=0.0)

    async def main():
        await batcher.start()
        try:
            queued = [
                batcher.enqueue(request("a", 1)),
                batcher.enqueue_block([request("b", 1), request("c", 1)]),
                batcher.enqueue_block([request("a", 2), request("d", 1)]),  # behind a 1
                batcher.enqueue(request("d", 2)),  # behind its block
                batcher.enqueue(request("e", 1)),
                batcher.enqueue_block([request(f"w{i}", 1) for i in range(6)]),  # > max_batch
                batcher.enqueue(request("b", 2)),
            ]
            return await asyncio.gather(*queued)
        finally:
            await batcher.stop()

    results = asyncio.run(main())
    for call in calls:  # never two steps of a stream in one call
        assert len({stream for stream, _ in call}) == len(call)
    applied = [step for call in calls for step in call]
    for stream in "abcde":
        seqs = [seq for name, seq in applied if name == stream]
        assert seqs == sorted(seqs) and len(seqs) == len(set(seqs)), (stream, calls)
    wide = [call for call in calls if ("w0", 1) in call]
    assert wide == [[(f"w{i}", 1) for i in range(6)]]  # whole, alone
    block_calls = [call for call in calls if ("b", 1) in call]
    assert ("c", 1) in block_calls[0]  # never split
    assert [r.seq for r in results[1]] == [1, 1] and [r.seq for r in results[2]] == [2, 1]
    assert results[3].seq == 2 and results[6].seq == 2
    assert sorted(applied) == sorted(
        [("a", 1), ("b", 1), ("c", 1), ("a", 2), ("d", 1), ("d", 2), ("e", 1), ("b", 2)]
        + [(f"w{i}", 1) for i in range(6)]
    )
    assert batcher._latest == {}  # every stream forgotten once answered


def test_a_frame_as_arrays_is_one_item_queued_and_answered_like_a_block():
    """A FrameSteps (a frame's steps as arrays) reaches the engine as one item, joins a call
    whole or goes alone past max_batch, holds back the later steps of its streams, and is
    answered with the one outcome the engine gives it; unbatched, it is one call too."""
    from seqstate.serve.engine import FrameSteps

    calls: list[list] = []

    def process(requests):
        calls.append(
            [
                ("frame", tuple(r.streams)) if type(r) is FrameSteps else (r.stream, r.seq)
                for r in requests
            ]
        )
        return [
            ("outcome", tuple(r.streams))
            if type(r) is FrameSteps
            else StepResult(r.seq, b"[]", replayed=False)
            for r in requests
        ]

    def frame(*streams: str, seq: int = 1) -> FrameSteps:
        n = len(streams)
        return FrameSteps(list(streams), np.full(n, seq, np.int64), np.zeros((n, 1, 3), np.float32))

    async def main(batching: bool):
        batcher = Batcher(process, max_batch=4, max_wait_s=0.0, batching=batching)
        await batcher.start()
        try:
            queued = [
                batcher.enqueue(request("a", 1)),
                batcher.enqueue_block(frame("a", "b", seq=2)),  # behind a 1
                batcher.enqueue(request("b", 3)),  # behind the frame
                batcher.enqueue_block(frame("c", "d", "e", "f", "g")),  # > max_batch: alone
                batcher.enqueue(request("h", 1)),
            ]
            results = await asyncio.gather(*queued)
            return results, dict(batcher._latest)
        finally:
            await batcher.stop()

    results, latest = asyncio.run(main(True))
    assert results[1] == ("outcome", ("a", "b")) and results[3] == ("outcome", tuple("cdefg"))
    assert results[2].seq == 3 and latest == {}
    order = [step for call in calls for step in call]
    assert order.index(("a", 1)) < order.index(("frame", ("a", "b"))) < order.index(("b", 3))
    assert [("frame", tuple("cdefg"))] in calls  # whole, alone
    for call in calls:  # never a stream twice in a call
        streams = [s for item in call for s in (item[1] if item[0] == "frame" else [item[0]])]
        assert len(streams) == len(set(streams))
    calls.clear()
    results, _ = asyncio.run(main(False))
    assert results[1] == ("outcome", ("a", "b")) and [("frame", ("a", "b"))] in calls
