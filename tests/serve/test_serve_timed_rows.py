"""Steps sent with their time continue in bulk on a row table that keeps the times, and answer
and store what the per-stream path does.

A run with calendar features (it needs each step's time) and a bare model (time optional,
sent on some steps and not on others) are each stepped through three engines fed the same
batches:

* the bulk path (``MemoryStore()``: a timed row table), steps as StepRequests and frames as
  arrays (:class:`FrameSteps` with their times);
* the same engine and store given the frames' steps as StepRequests, in the same batch
  composition: the same model calls on the same rows, so the same bytes (answer frames,
  records: answers, kept answers, digests, state);
* the per-stream path (``MemoryStore(columns=False)``): the same outcome for every step
  (applied, replayed, refused with the same code and expected seq), the same digests, seqs,
  times and kept answers' seqs, numbers equal to float32 rounding (a batch's composition
  moves the last bit).

Batches mix continuations, retries of the last and older steps (with the same or another time
or x), gaps, times not after the stream's last, missing times, first steps with and without
their series, restarts, two-step requests, deletes and TTL expiry.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import websockets.sync.client
from equivalence import same_outcomes, same_records
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from served_runs import trained_runs

from conftest import AUTH, ServerProcess
from seqstate.recipe.step import NO_TIME, RunStep
from seqstate.serve.engine import Engine, FrameOutcome, FrameSteps, StepRequest, StepResult
from seqstate.serve.frames import decode, decode_steps, encode
from seqstate.serve.preprocess import RunRowCodec
from seqstate.serve.rules import Reject
from seqstate.serve.stores import MemoryStore, SQLiteStore
from seqstate.serve.stores.base import RowShape, step_digest
from seqstate.serve.websocket import _binary_answers, _frame_answers, _frame_steps

STREAMS = [f"s{i}" for i in range(6)]
SLOW = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]  # (fixtures read only)
HOUR = 3600
T0 = 1709424000  # 2024-03-03T00:00:00 UTC: the hourly table's days
# the time a step is sent at, from its stream's base time: on time, on the last step's time,
# before it, between two steps (fine), or none
JITTER = [0, 0, 0, 0, -HOUR, -2 * HOUR, HOUR // 2, None]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def calendar_dir(tmp_path_factory) -> Path:
    run, *_ = trained_runs(tmp_path_factory.mktemp("runs"))("hourly_calendar_covariate")
    return run


@pytest.fixture(scope="module")
def calendar_run(calendar_dir) -> RunStep:
    from seqstate.recipe.run import Run

    function = Run.load(calendar_dir).step_function()
    assert function.needs_time and function.needs_series
    return function


@pytest.fixture(params=["calendar", "bare"])
def served(request, calendar_run, model):
    """(the step function or model, its raw input count, series per stream or None)."""
    if request.param == "calendar":
        return calendar_run, 2, {stream: f"h{i % 2}" for i, stream in enumerate(STREAMS)}
    return model, 3, None


def _request(stream, seq, value, features, jitter, steps=1, start=False, series=None):
    x = np.full((steps, features), value, np.float32)
    x[:, 0] += 10.0 * seq  # (a calendar run's scale: another value per step)
    time = None
    if jitter is not None:
        time = T0 + HOUR * seq + jitter + 60 * np.arange(steps, dtype=np.int64)
    return StepRequest(stream, seq, x, single=steps == 1, start=start, series=series, time=time)


def _stored(store: MemoryStore) -> list:
    """Every stream's record, less its generation and checksum (random per store)."""
    return [
        None if r is None else (r.seq, r.state, r.output, r.digest, r.updated, r.history)
        for r in store.get_many(STREAMS)
    ]


def _same_records(codec: RunRowCodec, table_store: MemoryStore, plain_store: MemoryStore):
    same_records(codec, table_store, plain_store, STREAMS, exact=("time",))


_STEP = st.tuples(
    st.sampled_from(STREAMS),
    st.sampled_from([1, 1, 1, 1, 0, -1, -3, 2]),  # next, retry, older, gap
    st.sampled_from(JITTER),
    st.sampled_from([0.5, 0.5, -1.0]),  # a retry with the same or another x
    st.sampled_from([0, 0, 0, 0, 0, 1, 2, 3]),  # plain, two steps, restart, series named
)
_BATCH = (
    st.lists(_STEP, min_size=1, max_size=6, unique_by=lambda step: step[0]),
    st.sampled_from([0.0, 0.0, 1.0, 30.0]),  # clock advance (TTL 20 s)
    st.sampled_from([None, None, None, "s0", "s3"]),  # a stream deleted before
)
_BATCHES = st.lists(st.tuples(*_BATCH), max_size=10)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(window=st.sampled_from([1, 2, 4]), batches=_BATCHES)
def test_timed_steps_in_bulk_answer_and_store_as_the_per_stream_path(served, window, batches):
    function, features, series = served
    clock = Clock()
    table_store, plain_store = MemoryStore(), MemoryStore(columns=False)
    bulk = Engine(function, table_store, ttl_s=20.0, clock=clock, replay_window=window)
    plain = Engine(function, plain_store, ttl_s=20.0, clock=clock, replay_window=window)
    assert bulk.table is not None and bulk.table.timed and plain.table is None
    last = dict.fromkeys(STREAMS, 0)
    for batch, dt, deleted in batches:
        clock.now += dt
        if deleted is not None:
            assert table_store.delete(deleted) == plain_store.delete(deleted)
            last[deleted] = 0
        requests = []
        for stream, offset, jitter, value, kind in batch:
            seq = max(last[stream] + offset, 1)
            # a first step names its series (else 422 series_required, some of the time)
            named = series is not None and (kind == 3 or (seq == 1 and value > 0))
            requests.append(
                _request(
                    stream,
                    seq,
                    value,
                    features,
                    jitter,
                    steps=2 if kind == 1 else 1,
                    start=kind == 2,
                    series=series[stream] if named else None,
                )
            )
        got, want = bulk.process(requests), plain.process(requests)
        same_outcomes(got, want)
        for request, outcome in zip(requests, got, strict=True):
            if isinstance(outcome, StepResult) and not outcome.replayed:
                last[request.stream] = request.seq
        _same_records(bulk.codec, table_store, plain_store)
        assert table_store.count() == plain_store.count()
    assert table_store.expire(clock.now + 100, 20.0) == plain_store.expire(clock.now + 100, 20.0)
    assert table_store.count() == plain_store.count() == 0


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(window=st.sampled_from([1, 2, 16]), batches=_BATCHES)
def test_a_frame_with_times_as_arrays_answers_and_stores_as_its_steps(served, window, batches):
    """Frame A carries its steps' times; frame B carries them unless one of its steps has
    none (then none of its steps does); restarts, steps naming a series and two-step
    requests go as plain steps in the same batch."""
    function, features, series = served
    outputs = len(Engine(function, MemoryStore(columns=False), ttl_s=0).function.targets)
    clock = Clock()
    stores = MemoryStore(), MemoryStore(), MemoryStore(columns=False)
    arrays, steps, plain = (
        Engine(function, store, ttl_s=20.0, clock=clock, replay_window=window) for store in stores
    )
    last = dict.fromkeys(STREAMS, 0)
    for batch, dt, deleted in batches:
        clock.now += dt
        if deleted is not None:
            assert len({store.delete(deleted) for store in stores}) == 1
            last[deleted] = 0
        groups: list[list] = [[], [], []]  # frame A, frame B, plain steps
        for stream, offset, jitter, value, kind in batch:
            seq = max(last[stream] + offset, 1)
            if kind >= 2 or (series is not None and seq == 1 and value > 0):
                # never a step the bulk path takes (its model call would join the frames')
                named = series[stream] if series is not None else None
                k = 2 if kind == 3 and named is None else 1
                groups[2].append(
                    _request(stream, seq, value, features, jitter, k, start=kind == 2, series=named)
                )
            else:
                groups[kind].append((stream, seq, value, jitter))
        untimed_b = any(jitter is None for *_, jitter in groups[1])
        for g, timed in ((0, True), (1, not untimed_b)):
            groups[g] = [
                _request(stream, seq, value, features, (jitter or 0) if timed else None)
                for stream, seq, value, jitter in groups[g]
            ]
        frames = [
            FrameSteps(
                [r.stream for r in group],
                np.array([r.seq for r in group], np.int64),
                np.stack([r.x for r in group]),
                None if group[0].time is None else np.concatenate([r.time for r in group]),
            )
            for group in groups[:2]
            if group
        ]
        requests = [*groups[2], *groups[0], *groups[1]]  # the batcher's order
        got = arrays.process([*groups[2], *frames])
        want = steps.process(requests)
        reference = plain.process(requests)
        plain_count = len(groups[2])
        assert got[:plain_count] == want[:plain_count]
        same_outcomes(want, reference)
        at = plain_count
        for frame, outcome in zip(frames, got[plain_count:], strict=True):
            assert type(outcome) is FrameOutcome
            n = len(frame.streams)
            ones = [frame.request(k) for k in range(n)]
            for one, request in zip(ones, requests[at : at + n], strict=True):
                assert one.digest == request.digest  # the same step, time included
            answer = _frame_answers(frame, outcome, outputs, [0, 0, 0])
            assert answer == _binary_answers(ones, want[at : at + n], outputs)  # bits
            header, y = decode(answer)
            expected, y_expected = decode(_binary_answers(ones, reference[at : at + n], outputs))
            for key in ("status", "replayed", "errors"):
                assert header[key] == expected[key]
            np.testing.assert_allclose(y, y_expected, rtol=1e-5, atol=1e-6)
            at += n
        for request, outcome in zip(requests, want, strict=True):
            if isinstance(outcome, StepResult) and not outcome.replayed:
                last[request.stream] = request.seq
        assert _stored(stores[0]) == _stored(stores[1])
        _same_records(arrays.codec, stores[0], stores[2])
        assert stores[0].count() == stores[1].count() == stores[2].count()


def test_a_calendar_run_continues_timed_steps_in_bulk_and_refuses_the_rest(calendar_run):
    """The usual timed step lands in the table (no record of its own); a time not after the
    last and a missing time are refused as the per-stream path refuses them, and change
    nothing; a retry answers the bytes first answered from the kept time and x."""
    store = MemoryStore()
    engine = Engine(calendar_run, store, ttl_s=0, replay_window=2)
    table = engine.table
    assert table is not None and table.timed
    first = [_request(f"c{i}", 1, 0.5, 2, 0, series=f"h{i % 2}") for i in range(3)]
    assert all(isinstance(o, StepResult) for o in engine.process(first))
    answers = {}
    for seq in (2, 3):
        steps = [_request(f"c{i}", seq, 0.5, 2, 0) for i in range(3)]
        outcomes = engine.process(steps)
        assert all(isinstance(o, StepResult) and not o.replayed for o in outcomes)
        answers[seq] = [o.output for o in outcomes]
        assert not store.records and len(table.index) == 3  # every stream a table row
    before = _stored_of(store, ["c0", "c1", "c2"])
    late = engine.process(
        [
            _request("c0", 4, 0.5, 2, -HOUR),  # the last step's time
            _request("c1", 4, 0.5, 2, -3 * HOUR),  # before it
            _request("c2", 4, 0.5, 2, None),  # none
        ]
    )
    assert [(o.status, o.code) for o in late] == [
        (422, "invalid_time"),
        (422, "invalid_time"),
        (422, "time_required"),
    ]
    assert _stored_of(store, ["c0", "c1", "c2"]) == before
    for seq in (2, 3):  # retries, the same time and x: replayed from the kept numbers
        again = engine.process([_request(f"c{i}", seq, 0.5, 2, 0) for i in range(3)])
        assert [o.output for o in again] == answers[seq]
        assert all(o.replayed for o in again)
    other = engine.process([_request("c0", 3, 0.5, 2, HOUR // 2)])  # another time: not a retry
    assert isinstance(other[0], Reject) and other[0].status == 409
    (record,) = store.get_many(["c0"])
    assert record.digest == step_digest(
        _request("c0", 3, 0.5, 2, 0).x, False, True, None, np.array([T0 + 3 * HOUR])
    )
    state = engine.codec.decode([record.state])
    assert int(state.transforms["time"][0]) == T0 + 3 * HOUR != NO_TIME
    # one step with its time among more without: the timed one still continues in bulk
    mixed = engine.process([_request(f"c{i}", 4, 0.5, 2, None if i else 0) for i in range(3)])
    assert isinstance(mixed[0], StepResult) and not mixed[0].replayed
    assert [o.code for o in mixed[1:]] == ["time_required"] * 2
    assert "c0" not in store.records and "c0" in table.index


def _stored_of(store: MemoryStore, streams: list[str]) -> list:
    return [
        (r.seq, r.state, r.output, r.digest, r.updated, r.history, r.generation)
        for r in store.get_many(streams)
    ]


def test_timed_and_untimed_tables_are_not_one(model):
    store = MemoryStore()
    shape = RowShape(8, 3, 1, 2)
    timed = store.table(b"layout", shape._replace(timed=True))
    untimed = store.table(b"layout", shape)
    assert timed is not None and untimed is not None and timed is not untimed
    assert timed.timed and not untimed.timed
    assert store.table(b"layout", shape._replace(timed=True)) is timed


def test_a_binary_frame_carries_its_times_as_arrays_when_each_item_sent_one_integer(
    calendar_run,
):
    class Resources:
        function = calendar_run

    x = np.zeros((3, 1, 2), np.float32)

    def frame(**fields):
        raw = encode({"op": "steps", "stream": ["a", "b", "c"], "seq": [2, 2, 2], **fields}, x)
        return _frame_steps(decode_steps(raw, 2, 100, 10), Resources)

    arrays = frame(time=[[T0], [T0 + 1], T0 + 2])  # [t] or t: one step's time
    assert arrays is not None and arrays.time is not None
    assert arrays.time.tolist() == [T0, T0 + 1, T0 + 2]
    assert arrays.request(2).time.tolist() == [T0 + 2]
    # dates as text, a bool, two times for one step, past int64, none for a run that reads
    # times: item by item (each parsed, or refused, as a JSON step is)
    for time in (
        [["2024-03-03"], [T0], [T0]],
        [[True], [T0], [T0]],
        [[T0, T0 + 1], [T0], [T0]],
        [[2**63], [T0], [T0]],
        None,
    ):
        assert frame(time=time) is None, time


def test_binary_frames_with_times_over_a_websocket_answer_as_the_per_stream_engine(
    calendar_dir, calendar_run
):
    """A real server of a calendar run: first steps as JSON (series and time), then binary
    frames with their times as Unix seconds (as arrays) or dates (item by item), a retry
    that switches encodings, a time not after the last, a frame without times. Every answer
    (status, replayed, y, the error's code) equals the per-stream engine's."""
    reference = Engine(calendar_run, MemoryStore(columns=False), ttl_s=0, replay_window=4)
    n = 40
    streams = [f"w{s}" for s in range(n)]
    server = ServerProcess(calendar_dir, "--store", "memory://", "--replay-window", "4")
    server.start()

    def x_of(seq: int) -> np.ndarray:
        return (50 + np.arange(2 * n, dtype=np.float32).reshape(n, 1, 2) + seq).astype(np.float32)

    def stamps(seq: int) -> np.ndarray:
        return T0 + HOUR * seq + np.arange(n, dtype=np.int64)

    def check(ws, raw: bytes, requests: list[StepRequest]) -> dict:
        ws.send(raw)
        header, y = decode(ws.recv(timeout=60))
        want = reference.process(requests)
        assert header["status"] == [200 if isinstance(o, StepResult) else o.status for o in want]
        assert header["replayed"] == [getattr(o, "replayed", False) for o in want]
        for k, outcome in enumerate(want):
            if isinstance(outcome, Reject):
                assert header["errors"][str(k)]["code"] == outcome.code
            else:
                expected = np.asarray(json.loads(outcome.output), dtype=np.float64)
                np.testing.assert_allclose(y[k, 0], expected, rtol=1e-5, atol=1e-5)
        return header

    def steps_of(seq: int, times: np.ndarray | None) -> list[StepRequest]:
        x = x_of(seq)
        return [
            StepRequest(
                stream, seq, x[k], single=True, start=False,
                time=None if times is None else times[k : k + 1],
            )
            for k, stream in enumerate(streams)
        ]  # fmt: skip

    try:
        url = f"ws://127.0.0.1:{server.port}/v1/ws"
        with websockets.sync.client.connect(url, additional_headers=AUTH) as ws:
            first = [
                {
                    "stream": stream, "seq": 1, "x": x_of(1)[k, 0].tolist(),
                    "time": int(stamps(1)[k]), "series": f"h{k % 2}",
                }
                for k, stream in enumerate(streams)
            ]  # fmt: skip
            ws.send(json.dumps({"op": "steps", "steps": first}))
            answer = json.loads(ws.recv(timeout=60))
            assert all("y" in item for item in answer["results"]), answer
            reference.process(
                [
                    StepRequest(s, 1, x_of(1)[k], True, False, f"h{k % 2}", stamps(1)[k : k + 1])
                    for k, s in enumerate(streams)
                ]
            )
            for seq in (2, 3, 4):  # as arrays, times as Unix seconds
                raw = encode(
                    {"op": "steps", "stream": streams, "seq": [seq] * n,
                     "time": [[int(t)] for t in stamps(seq)]},
                    x_of(seq),
                )  # fmt: skip
                check(ws, raw, steps_of(seq, stamps(seq)))
            # dates as text: item by item, the same steps; then its retry as seconds
            texts = [[str(np.datetime64(int(t), "s"))] for t in stamps(5)]
            raw = encode({"op": "steps", "stream": streams, "seq": [5] * n, "time": texts}, x_of(5))
            check(ws, raw, steps_of(5, stamps(5)))
            retry = encode(
                {"op": "steps", "stream": streams, "seq": [5] * n,
                 "time": [[int(t)] for t in stamps(5)]},
                x_of(5),
            )  # fmt: skip
            assert check(ws, retry, steps_of(5, stamps(5)))["replayed"] == [True] * n
            late = stamps(6)
            late[::3] = stamps(5)[::3]  # not after the last
            raw = encode(
                {"op": "steps", "stream": streams, "seq": [6] * n,
                 "time": [[int(t)] for t in late]},
                x_of(6),
            )  # fmt: skip
            header = check(ws, raw, steps_of(6, late))
            assert header["status"].count(422) == len(range(0, n, 3))
            # a frame without times: every item 422 time_required
            raw = encode({"op": "steps", "stream": streams, "seq": [7] * n}, x_of(7))
            ws.send(raw)
            header, _ = decode(ws.recv(timeout=60))
            assert header["status"] == [422] * n
            assert {e["code"] for e in header["errors"].values()} == {"time_required"}
    finally:
        server.stop()
        server.log.close()


@settings(max_examples=20, deadline=None, suppress_health_check=SLOW)
@given(
    window=st.sampled_from([1, 2, 16]),
    batches=st.lists(st.tuples(*_BATCH, st.booleans()), max_size=8),  # and a reopen before
)
def test_sqlite_timed_rows_answer_and_store_as_the_memory_row_table(
    served, tmp_path_factory, window, batches
):
    """The SQLite store's timed rows: the same bytes as the memory row table (answer frames,
    outcomes, stored records), across reopens of the file."""
    function, features, series = served
    outputs = len(Engine(function, MemoryStore(columns=False), ttl_s=0).function.targets)
    clock = Clock()
    path = tmp_path_factory.mktemp("timed") / "rows.sqlite"
    sqlite, memory = SQLiteStore(path), MemoryStore()

    def engine(store):
        return Engine(function, store, ttl_s=20.0, clock=clock, replay_window=window)

    on_sqlite, on_memory = engine(sqlite), engine(memory)
    assert on_sqlite.table is not None and on_sqlite.table.timed
    last = dict.fromkeys(STREAMS, 0)
    try:
        for batch, dt, deleted, reopen in batches:
            clock.now += dt
            if reopen:  # what was acknowledged is what a new process reads
                sqlite.close()
                sqlite = SQLiteStore(path)
                on_sqlite = engine(sqlite)
            if deleted is not None:
                assert sqlite.delete(deleted) == memory.delete(deleted)
                last[deleted] = 0
            plain, framed = [], []
            for stream, offset, jitter, value, kind in batch:
                seq = max(last[stream] + offset, 1)
                named = series is not None and (kind == 3 or (seq == 1 and value > 0))
                request = _request(
                    stream, seq, value, features, jitter, steps=2 if kind == 1 else 1,
                    start=kind == 2, series=series[stream] if named else None,
                )  # fmt: skip
                usual = kind == 0 and not named
                (framed if usual else plain).append(request)
            items: list = list(plain)
            if framed:
                timed = all(r.time is not None for r in framed)
                items.append(
                    FrameSteps(
                        [r.stream for r in framed],
                        np.array([r.seq for r in framed], np.int64),
                        np.stack([r.x for r in framed]),
                        np.concatenate([r.time for r in framed]) if timed else None,
                    )
                )
            got, want = on_sqlite.process(items), on_memory.process(items)
            assert got[: len(plain)] == want[: len(plain)]
            done = list(zip(plain, want, strict=False))
            if framed:
                frame = items[-1]
                answer = _frame_answers(frame, got[-1], outputs, [0, 0, 0])
                assert answer == _frame_answers(frame, want[-1], outputs, [0, 0, 0])
                header, _ = decode(answer)
                for k in range(len(framed)):
                    if header["status"][k] == 200 and not header["replayed"][k]:
                        last[frame.streams[k]] = int(frame.seq[k])
            for request, outcome in done:
                if isinstance(outcome, StepResult) and not outcome.replayed:
                    last[request.stream] = request.seq
            assert _stored(sqlite) == _stored(memory)
            assert sqlite.count() == memory.count()
    finally:
        sqlite.close()


class _UntimedSQLite(SQLiteStore):
    """A store that has only untimed rows (what the previous code wrote for every run)."""

    def table(self, layout, shape):
        return super().table(layout, shape._replace(timed=False))


def test_untimed_rows_of_an_earlier_file_are_continued_in_timed_rows(model, tmp_path):
    """A file whose rows were written untimed is continued in timed rows: each stream moves
    once, keeping its answers, which retries replay bit for bit."""
    path = tmp_path / "untimed.sqlite"
    engine = Engine(model, _UntimedSQLite(path), ttl_s=0, replay_window=4)
    assert engine.table is not None and not engine.table.timed
    streams = ["u", "v"]
    first = {}
    for seq in (1, 2, 3):
        first[seq] = engine.process([_request(s, seq, 0.5, 3, None) for s in streams])
    assert all(isinstance(o, StepResult) for o in first[3])
    engine.store.close()
    engine = Engine(model, SQLiteStore(path), ttl_s=0, replay_window=4)
    assert engine.table is not None and engine.table.timed
    retry = engine.process([_request(s, 3, 0.5, 3, None) for s in streams])
    assert [o.output for o in retry] == [o.output for o in first[3]] and retry[0].replayed
    fourth = engine.process([_request(s, 4, 0.5, 3, 0) for s in streams])  # with its time
    assert all(isinstance(o, StepResult) and not o.replayed for o in fourth)
    layouts = sqlite3.connect(path).execute("SELECT layout FROM rows").fetchall()
    assert [text.startswith("t") for (text,) in layouts] == [True, True]
    for seq in (2, 3, 4):  # kept before and after the move
        want = first[seq] if seq < 4 else fourth
        again = engine.process([_request(s, seq, 0.5, 3, None if seq < 4 else 0) for s in streams])
        assert [o.output for o in again] == [o.output for o in want]
        assert all(o.replayed for o in again)
    engine.store.close()
