"""A binary frame's steps carried as arrays (:class:`FrameSteps`) answer and store exactly
what the same steps sent as StepRequests do.

Two references, fed the same batches:

* the same engine and store given the frame's steps as StepRequests, in the same batch
  composition: the same model calls on the same rows, so the answer frame must be the same
  bytes and every stored record the same bytes (answers, kept answers, digests, state);
* the per-stream path (a records-only store), one model call per batch of its own: the same
  outcome for every step (applied, replayed, refused with the same code and expected seq)
  and answers equal to float32 rounding (a batch's composition moves the last bit).

The batches mix continuations, retries of the last and older steps, gaps, first steps, steps
of deleted and expired streams, two frames and restarts sent as plain steps in one batch.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import OUTPUTS
from seqstate.serve.engine import Engine, FrameOutcome, FrameSteps, StepRequest
from seqstate.serve.frames import decode
from seqstate.serve.stores import MemoryStore
from seqstate.serve.websocket import _binary_answers, _frame_answers

STREAMS = [f"s{i}" for i in range(8)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _stored(store: MemoryStore) -> list:
    """Every stream's record, less its generation and checksum (random per store)."""
    return [
        None if r is None else (r.seq, r.state, r.output, r.digest, r.updated, r.history)
        for r in store.get_many(STREAMS)
    ]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    window=st.sampled_from([1, 2, 16]),
    batches=st.lists(
        st.tuples(
            st.lists(
                st.tuples(
                    st.sampled_from(STREAMS),
                    st.sampled_from([1, 1, 1, 1, 0, -1, -3, 2]),  # next, retry, older, gap
                    st.sampled_from([0.5, 0.5, -1.0]),  # a retry with the same or another x
                    st.sampled_from([0, 0, 0, 1, 2]),  # frame A, frame B, a plain restart
                ),
                min_size=1,
                max_size=8,
                unique_by=lambda step: step[0],
            ),
            st.sampled_from([0.0, 0.0, 1.0, 30.0]),  # clock advance (TTL 20 s)
            st.sampled_from([None, None, None, "s0", "s3"]),  # a stream deleted before
        ),
        max_size=8,
    ),
)
def test_a_frame_as_arrays_answers_and_stores_as_its_steps(model, window, batches):
    clock = Clock()
    stores = MemoryStore(), MemoryStore(), MemoryStore(columns=False)
    arrays, steps, plain = (
        Engine(model, store, ttl_s=20.0, clock=clock, replay_window=window) for store in stores
    )
    last = dict.fromkeys(STREAMS, 0)
    for batch, dt, deleted in batches:
        clock.now += dt
        if deleted is not None:
            assert len({store.delete(deleted) for store in stores}) == 1
            last[deleted] = 0
        groups: list[list[StepRequest]] = [[], [], []]
        for stream, offset, value, group in batch:
            x = np.full((1, 3), value, np.float32)
            seq = max(last[stream] + offset, 1)
            groups[group].append(StepRequest(stream, seq, x, single=True, start=group == 2))
        frames = [
            FrameSteps(
                [r.stream for r in group],
                np.array([r.seq for r in group], np.int64),
                np.stack([r.x for r in group]),
            )
            for group in groups[:2]
            if group
        ]
        # the batcher's order: the plain steps first here, then each frame's steps
        requests = [*groups[2], *groups[0], *groups[1]]
        got = arrays.process([*groups[2], *frames])
        want = steps.process(requests)
        reference = plain.process(requests)
        assert got[: len(groups[2])] == want[: len(groups[2])]  # the plain steps: the same
        at = len(groups[2])
        for frame, outcome in zip(frames, got[len(groups[2]) :], strict=True):
            assert type(outcome) is FrameOutcome
            n = len(frame.streams)
            ones = [frame.request(k) for k in range(n)]
            for one, request in zip(ones, requests[at : at + n], strict=True):
                assert (one.stream, one.seq, one.x.tobytes()) == (
                    request.stream,
                    request.seq,
                    request.x.tobytes(),
                )
            answer = _frame_answers(frame, outcome, OUTPUTS, [0, 0, 0])
            # bits: the answer frame of the same steps as StepRequests, byte for byte
            assert answer == _binary_answers(ones, want[at : at + n], OUTPUTS)
            # the rules: as the per-stream path
            header, y = decode(answer)
            expected, y_expected = decode(_binary_answers(ones, reference[at : at + n], OUTPUTS))
            assert header["status"] == expected["status"]
            assert header["replayed"] == expected["replayed"]
            assert header["errors"] == expected["errors"]
            np.testing.assert_allclose(y, y_expected, rtol=1e-5, atol=1e-6)
            at += n
        for request, outcome in zip(requests, want, strict=True):
            if getattr(outcome, "replayed", True) is False:
                last[request.stream] = request.seq
        assert _stored(stores[0]) == _stored(stores[1])
        assert stores[0].count() == stores[1].count() == stores[2].count()


def test_a_replay_of_a_frame_answers_its_answer_bits_from_the_kept_arrays(model):
    """Kept answers are arrays in the row table; a retry of any step in the replay window,
    as a frame or as a plain step, answers the bytes first answered."""
    engine = Engine(model, MemoryStore(), ttl_s=0, replay_window=4)
    streams = [f"r{i}" for i in range(5)]
    rng = np.random.default_rng(0)
    answers = {}
    for seq in range(1, 6):
        x = rng.normal(size=(5, 1, 3)).astype(np.float32)
        frame = FrameSteps(streams, np.full(5, seq, np.int64), x)
        (outcome,) = engine.process([frame])
        answers[seq] = (frame, _frame_answers(frame, outcome, OUTPUTS, [0, 0, 0]))
        assert decode(answers[seq][1])[0]["status"] == [200] * 5
    for seq in (5, 4, 2, 1):  # the last, older ones, one past the window of 4
        frame, first = answers[seq]
        (outcome,) = engine.process([frame])
        again = _frame_answers(frame, outcome, OUTPUTS, [0, 0, 0])
        ones = [frame.request(k) for k in range(5)]
        plain = engine.process(ones)  # the same retry as plain steps: the same bytes
        assert _binary_answers(ones, plain, OUTPUTS) == again
        header, y = decode(again)
        if seq == 1:  # out of the window: refused, as the per-stream path refuses it
            assert header["status"] == [409] * 5
            continue
        assert header["replayed"] == [True] * 5
        np.testing.assert_array_equal(y, decode(first)[1])


def test_a_frame_must_hold_each_stream_once(model):
    engine = Engine(model, MemoryStore(), ttl_s=0)
    x = np.zeros((2, 1, 3), np.float32)
    frame = FrameSteps(["a", "a"], np.array([1, 2], np.int64), x)
    try:
        engine.process([frame])
    except ValueError as error:
        assert "one step per stream" in str(error)
    else:
        raise AssertionError("a frame with a stream twice was accepted")


def test_kept_answers_written_on_demand_are_the_bytes_first_answered(model):
    """The row table keeps answers as numbers; the JSON it writes for a replay (or a read of
    the record) is byte for byte the answer first sent, for a step sent as [F] or [[F]]."""
    store = MemoryStore()
    engine = Engine(model, store, ttl_s=0, replay_window=3)
    rng = np.random.default_rng(1)
    sent: dict[int, list[StepRequest]] = {}
    first: dict[tuple[str, int], bytes] = {}
    for seq in range(1, 5):
        sent[seq] = [
            StepRequest(f"k{i}", seq, rng.normal(size=(1, 3)).astype(np.float32), single=i == 0,
                        start=False)
            for i in range(2)
        ]  # fmt: skip
        for request, outcome in zip(sent[seq], engine.process(sent[seq]), strict=True):
            assert outcome.replayed is False
            first[(request.stream, seq)] = outcome.output
    assert engine.table is not None and len(engine.table.index) == 2  # continued in bulk
    for seq in (4, 3, 2):  # the window of 3
        for request, outcome in zip(sent[seq], engine.process(sent[seq]), strict=True):
            assert outcome.replayed is True
            assert outcome.output == first[(request.stream, seq)]
    for i, record in enumerate(store.get_many(["k0", "k1"])):
        assert record is not None and record.output == first[(f"k{i}", 4)]
