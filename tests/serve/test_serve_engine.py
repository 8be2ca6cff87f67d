"""The engine under a lost compare-and-set: another writer advanced the stream in between."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqstate.core.model import SequenceModel
from seqstate.serve.engine import Engine, StepRequest, StepResult
from seqstate.serve.rules import Apply, Reject, Replay, decide
from seqstate.serve.stores import MemoryStore, Record


class RacingStore(MemoryStore):
    """Lets ``rival`` run right after our read, before our commit (a replica racing us).
    Records only: every step is read through ``get_many``."""

    def __init__(self) -> None:
        super().__init__(columns=False)
        self.rival = None

    def get_many(self, streams):
        records = super().get_many(streams)
        rival, self.rival = self.rival, None
        if rival is not None:
            rival()
        return records


def request(seq: int, value: float) -> StepRequest:
    x = np.full((1, 3), value, np.float32)
    return StepRequest("s", seq, x, single=True, start=False)


def test_a_lost_race_is_a_replay_for_the_same_body_and_a_409_otherwise(model):
    store = RacingStore()
    ours, theirs = Engine(model, store, ttl_s=0), Engine(model, store, ttl_s=0)
    ours.process([request(1, 0.5)])

    store.rival = lambda: theirs.process([request(2, 1.0)])
    (same,) = ours.process([request(2, 1.0)])
    assert isinstance(same, StepResult) and same.replayed  # the rival applied our exact step

    store.rival = lambda: theirs.process([request(3, 2.0)])
    (different,) = ours.process([request(3, -2.0)])
    assert isinstance(different, Reject)
    assert (different.status, different.code, different.expected_seq) == (409, "seq_race", 4)

    # applied once each: the stored state is the rival's steps 2 and 3 on top of step 1
    (record,) = store.get_many(["s"])
    with torch.no_grad():
        x = torch.tensor([[[0.5] * 3, [1.0] * 3, [2.0] * 3]])
        y, _ = model(x)
    assert record.seq == 3
    import json

    assert np.allclose(json.loads(record.output), y[0, 2].tolist(), atol=1e-5)


def test_a_state_from_another_model_is_refused_not_crashed(model):
    store = MemoryStore()
    engine = Engine(model, store, ttl_s=0)
    engine.process([request(1, 0.5)])
    other = SequenceModel(input_size=3, output_size=2, cell="lstm", hidden_size=16)  # wider
    (outcome,) = Engine(other, store, ttl_s=0).process([request(2, 0.5)])
    assert isinstance(outcome, Reject) and outcome.code == "state_incompatible"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FileLikeStore(MemoryStore):
    """Hands out each record as a durable store reads it back: rebuilt from its fields with
    its checksum (so nothing the engine cached on the built record is seen). Records only:
    the per-stream path, the reference the row table's bulk path is compared with."""

    def __init__(self) -> None:
        super().__init__(columns=False)

    def get_many(self, streams):
        records = super().get_many(streams)
        return [
            None
            if r is None
            else Record(
                r.seq, r.state, r.output, r.digest, r.updated, r.generation, r.checksum, r.history
            )
            for r in records
        ]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.lists(
        st.lists(
            st.tuples(
                st.sampled_from("abc"),
                st.sampled_from([1, 1, 1, 0, -1, -3, 2]),  # seq: next, retry, older, a gap
                st.booleans(),  # start
                st.sampled_from([0.5, 0.5, -1.0]),  # x: a retry with the same or another body
            ),
            min_size=1,
            max_size=3,
            unique_by=lambda step: step[0],
        ),
        max_size=8,
    ),
    advance=st.lists(st.sampled_from([0.0, 1.0, 30.0]), min_size=8, max_size=8),
)
def test_every_step_is_decided_as_the_rules_say(model, batches, advance):
    """The engine's outcomes (its inline next-step path included) are what ``decide`` says
    about the stored record, and its answers and records equal those of an engine that reads
    every record back from its fields (the plain path: rows parsed, checksums checked)."""
    clock = Clock()
    # records only: this compares the per-stream path's inline next step with the plain one,
    # bit for bit (the row table's bulk path runs its own model call: test_serve_columns)
    fast_store, plain_store = MemoryStore(columns=False), FileLikeStore()
    fast = Engine(model, fast_store, ttl_s=20.0, clock=clock, replay_window=3)
    plain = Engine(model, plain_store, ttl_s=20.0, clock=clock, replay_window=3)
    last = {"a": 0, "b": 0, "c": 0}
    for batch, dt in zip(batches, advance, strict=False):
        clock.now += dt
        requests = [
            StepRequest(
                stream,
                max(last[stream] + offset, 1),
                np.full((1, 3), v, np.float32),
                single=True,
                start=start,
            )
            for stream, offset, start, v in batch
        ]
        before = fast_store.get_many([r.stream for r in requests])
        expected = [
            decide(
                record,
                stream=r.stream,
                seq=r.seq,
                start=r.start,
                digest=r.digest,
                now=clock.now,
                ttl_s=20.0,
            )
            for r, record in zip(requests, before, strict=True)
        ]
        got = fast.process(requests)
        assert got == plain.process(requests)
        for r, want, outcome in zip(requests, expected, got, strict=True):
            if isinstance(want, Apply):
                assert isinstance(outcome, StepResult) and not outcome.replayed
                last[r.stream] = r.seq
            elif isinstance(want, Replay):
                assert outcome == StepResult(r.seq, want.output, replayed=True)
            else:
                assert isinstance(outcome, Reject) and outcome.code == want.code
        streams = list(last)
        for a, b in zip(fast_store.get_many(streams), plain_store.get_many(streams), strict=True):
            assert (a is None) == (b is None)
            if a is not None:
                assert (a.seq, a.state, a.output, a.digest, a.history) == (
                    b.seq,
                    b.state,
                    b.output,
                    b.digest,
                    b.history,
                )


def test_replicas_on_one_store_answer_as_one_engine_reading_every_row_back(model):
    """Two engines (replicas) on one store, steps of several streams in changing orders and
    subsets, each replica stepping streams the other wrote last (a record it did not build):
    every answer equals an engine that reads every record back from its fields."""
    shared, plain_store = MemoryStore(), FileLikeStore()
    replicas = [Engine(model, shared, ttl_s=0) for _ in range(2)]
    plain = Engine(model, plain_store, ttl_s=0)
    streams = [f"s{k}" for k in range(5)]
    seqs = dict.fromkeys(streams, 0)
    orders = [streams, streams[::-1], streams[1::2], streams[::2][::-1], streams[2:], streams]
    for step in range(12):
        engine = replicas[step % 3 % 2]  # A, B, A, A, B, A, ...: own rows, stale rows, both
        batch = orders[step % len(orders)]
        requests = []
        for stream in batch:
            seqs[stream] += 1
            value = int(stream[1:]) - 2 + step / 7
            x = np.full((1, 3), value, np.float32)
            requests.append(StepRequest(stream, seqs[stream], x, single=True, start=False))
        got = engine.process(requests)
        assert all(isinstance(o, StepResult) and not o.replayed for o in got)
        assert got == plain.process(requests)
