"""The memory store's row table and the engine's bulk path equal the per-stream path.

The reference is the same engine on a records-only store (``MemoryStore(columns=False)``):
every step read as a record, decided by the rules, applied, written as a record. The bulk
path must give the same outcomes (answers, replays, errors) and leave the same records (state
row, answer, digest, kept answers), whatever mix of continuations, retries, gaps, restarts,
multi-step requests, deletes and expiries a batch holds.
"""

from __future__ import annotations

import json

import numpy as np
from equivalence import close_answers, same_outcomes, same_records
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import OUTPUTS
from seqstate.serve import jsonio
from seqstate.serve.engine import Engine, StepRequest, StepResult
from seqstate.serve.rules import Reject
from seqstate.serve.stores import MemoryStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _x(value: float, steps: int) -> np.ndarray:
    return np.full((steps, 3), value, np.float32)


STREAMS = [f"s{i}" for i in range(6)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    window=st.sampled_from([1, 2, 4]),
    batches=st.lists(
        st.tuples(
            st.lists(
                st.tuples(
                    st.sampled_from(STREAMS),
                    st.sampled_from([1, 1, 1, 1, 0, -1, -4, 2]),  # next, retry, older, gap
                    st.sampled_from([False, False, False, True]),  # start
                    st.sampled_from([0.5, 0.5, -1.0]),  # a retry with the same or another x
                    st.sampled_from([1, 1, 1, 2]),  # timesteps
                    st.booleans(),  # sent as one step [F] (when one timestep)
                ),
                min_size=1,
                max_size=6,
                unique_by=lambda step: step[0],
            ),
            st.sampled_from([0.0, 0.0, 1.0, 30.0]),  # clock advance (TTL 20 s)
            st.sampled_from([None, None, None, "s0", "s3"]),  # a stream deleted before
        ),
        max_size=10,
    ),
)
def test_the_bulk_path_answers_and_stores_as_the_per_stream_path(model, window, batches):
    clock = Clock()
    table_store, plain_store = MemoryStore(), MemoryStore(columns=False)
    bulk = Engine(model, table_store, ttl_s=20.0, clock=clock, replay_window=window)
    plain = Engine(model, plain_store, ttl_s=20.0, clock=clock, replay_window=window)
    assert bulk.table is not None and plain.table is None
    last = dict.fromkeys(STREAMS, 0)
    for batch, dt, deleted in batches:
        clock.now += dt
        if deleted is not None:
            assert table_store.delete(deleted) == plain_store.delete(deleted)
            last[deleted] = 0
        requests = [
            StepRequest(
                stream,
                max(last[stream] + offset, 1),
                _x(value, steps),
                single=single and steps == 1,
                start=start,
            )
            for stream, offset, start, value, steps, single in batch
        ]
        got, want = bulk.process(requests), plain.process(requests)
        same_outcomes(got, want)
        for request, outcome in zip(requests, got, strict=True):
            if isinstance(outcome, StepResult):  # [O] for a step sent as [F], else [k][O]
                parsed = json.loads(outcome.output)
                shape = (OUTPUTS,) if request.single else (request.x.shape[0], OUTPUTS)
                assert np.asarray(parsed, dtype=np.float64).shape == shape
                assert outcome.output == jsonio.dumps_finite(parsed)  # as one dumps writes it
        for request, outcome in zip(requests, got, strict=True):
            if isinstance(outcome, StepResult) and not outcome.replayed:
                last[request.stream] = request.seq
        same_records(bulk.codec, table_store, plain_store, STREAMS)
        assert table_store.count() == plain_store.count()
    assert table_store.expire(clock.now + 100, 20.0) == plain_store.expire(clock.now + 100, 20.0)
    assert table_store.count() == plain_store.count() == 0


def test_many_streams_move_to_the_table_and_grow_it(model):
    """200 streams (the table starts with 64 rows): the first step is a record, the second
    moves the stream into the table, later ones continue it in bulk, all equal to the
    per-stream path; a retry of every stream's last step is a replay of the same answer."""
    table_store, plain_store = MemoryStore(), MemoryStore(columns=False)
    clock = Clock()
    bulk = Engine(model, table_store, ttl_s=0, replay_window=3, clock=clock)
    plain = Engine(model, plain_store, ttl_s=0, replay_window=3, clock=clock)
    streams = [f"stream-{i}" for i in range(200)]
    rng = np.random.default_rng(0)
    sent = {}
    for seq in range(1, 6):
        x = sent[seq] = rng.normal(size=(len(streams), 1, 3)).astype(np.float32)
        requests = [
            StepRequest(s, seq, x[i], single=True, start=False) for i, s in enumerate(streams)
        ]
        got = bulk.process(requests)
        same_outcomes(got, plain.process(requests))
        assert all(isinstance(o, StepResult) and not o.replayed for o in got)
    assert bulk.table is not None and len(bulk.table.index) == len(streams)
    same_records(bulk.codec, table_store, plain_store, streams)
    retry = [StepRequest(s, 5, x[i], single=True, start=False) for i, s in enumerate(streams)]
    again = bulk.process(retry)
    assert all(isinstance(o, StepResult) and o.replayed for o in again)
    assert [o.output for o in again] == [o.output for o in got]
    older = [StepRequest(streams[0], 3, sent[3][0], single=True, start=False)]
    (kept,) = bulk.process(older)
    assert isinstance(kept, StepResult) and kept.replayed  # kept: window 3
    assert kept == plain.process(older)[0]  # the answer stored by either path's first step
    other = [StepRequest(streams[0], 3, sent[5][0], single=True, start=False)]
    (conflict,) = bulk.process(other)
    assert conflict == plain.process(other)[0] and conflict.code == "seq_conflict"
    stale = [StepRequest(streams[0], 2, sent[2][0], single=True, start=False)]
    assert bulk.process(stale)[0].code == "seq_stale"
    gap = bulk.process([StepRequest(streams[1], 9, x[1], single=True, start=False)])
    assert isinstance(gap[0], Reject) and gap[0].code == "seq_gap" and gap[0].expected_seq == 6


def test_a_bulk_step_that_loses_its_compare_and_set_is_a_replay_or_a_409(model):
    """Another writer between the bulk path's read and its write: the same step applied by
    it is a replay; a delete and re-create (the same seq, another state) wins, ours is 409."""
    store = MemoryStore()
    ours, theirs = Engine(model, store, ttl_s=0), Engine(model, store, ttl_s=0)
    for seq in (1, 2):
        ours.process([StepRequest("s", seq, _x(0.5, 1), single=True, start=False)])
    step3 = StepRequest("s", 3, _x(1.0, 1), single=True, start=False)
    prepared = ours.prepare([step3])
    assert prepared.columns is not None  # taken by the bulk path
    (theirs_outcome,) = theirs.process([step3])
    (same,) = ours.finish(prepared)
    assert same == StepResult(3, theirs_outcome.output, replayed=True)

    prepared = ours.prepare([StepRequest("s", 4, _x(2.0, 1), single=True, start=False)])
    assert store.delete("s")
    for seq in (1, 2, 3):
        theirs.process([StepRequest("s", seq, _x(-3.0, 1), single=True, start=False)])
    (stale,) = ours.finish(prepared)
    assert isinstance(stale, Reject) and (stale.code, stale.expected_seq) == ("seq_race", 4)
    (record,) = store.get_many(["s"])
    plain_store = MemoryStore(columns=False)
    plain = Engine(model, plain_store, ttl_s=0)
    for seq in (1, 2, 3):
        plain.process([StepRequest("s", seq, _x(-3.0, 1), single=True, start=False)])
    (want,) = plain_store.get_many(["s"])
    assert record.seq == want.seq == 3
    close_answers(record.output, want.output)


def test_a_record_committed_over_a_table_row_moves_the_stream_back(model):
    """A restart (per-stream path) of a stream held in the table: its compare-and-set names
    the row's generation, and the stream leaves the table for the records."""
    store = MemoryStore()
    engine = Engine(model, store, ttl_s=0, replay_window=2)
    for seq in (1, 2, 3):
        engine.process([StepRequest("s", seq, _x(0.5, 1), single=True, start=False)])
    assert engine.table is not None and "s" in engine.table.index
    (record,) = store.get_many(["s"])
    (restart,) = engine.process([StepRequest("s", 4, _x(0.5, 1), single=True, start=True)])
    assert isinstance(restart, StepResult) and not restart.replayed
    assert "s" not in engine.table.index and store.count() == 1
    (after,) = store.get_many(["s"])
    assert after.seq == 4 and after.generation != record.generation
    (replay,) = engine.process([StepRequest("s", 3, _x(0.5, 1), single=True, start=False)])
    assert replay == StepResult(3, record.output, replayed=True)  # kept across the move
