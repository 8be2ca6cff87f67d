"""The SQLite store's rows of arrays answer and store exactly what the memory store's row
table does, with the SQLite guarantees: durable across a reopen, a compare-and-set per row
between two writers of one file, a flipped byte refused, and a file of records only (the
previous format) continued with its kept answers.

The reference for bits is the memory store's row table fed the same batches (the same model
calls on the same rows): the same answer frames and the same stored records (answers, kept
answers, digests, state). The per-stream path (a records-only store) gives the same outcome
for every step (applied, replayed, refused with the same code).
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import OUTPUTS
from seqstate.serve import jsonio
from seqstate.serve.engine import Engine, FrameOutcome, FrameSteps, StepRequest, StepResult
from seqstate.serve.frames import decode
from seqstate.serve.stores import MemoryStore, SQLiteStore
from seqstate.serve.stores.base import Update, new_record
from seqstate.serve.websocket import _frame_answers

STREAMS = [f"s{i}" for i in range(8)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _stored(store, streams=STREAMS) -> list:
    """Every stream's record, less its generation and checksum (random per store)."""
    return [
        None if r is None else (r.seq, r.state, r.output, r.digest, r.updated, r.history)
        for r in store.get_many(streams)
    ]


def _frame(streams: list[str], seq: int, x: np.ndarray) -> FrameSteps:
    return FrameSteps(streams, np.full(len(streams), seq, np.int64), x)


def _answer(engine: Engine, frame: FrameSteps) -> bytes:
    (outcome,) = engine.process([frame])
    assert type(outcome) is FrameOutcome
    return _frame_answers(frame, outcome, OUTPUTS, [0, 0, 0])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    window=st.sampled_from([1, 2, 16]),
    batches=st.lists(
        st.tuples(
            st.lists(
                st.tuples(
                    st.sampled_from(STREAMS),
                    st.sampled_from([1, 1, 1, 1, 0, -1, -3, 2]),  # next, retry, older, gap
                    st.sampled_from([0.5, 0.5, -1.0]),  # a retry with the same or another x
                    st.sampled_from([0, 0, 0, 1]),  # in the frame, or a plain restart
                ),
                min_size=1,
                max_size=8,
                unique_by=lambda step: step[0],
            ),
            st.sampled_from([0.0, 0.0, 1.0, 30.0]),  # clock advance (TTL 20 s)
            st.sampled_from([None, None, None, "s0", "s3"]),  # a stream deleted before
            st.booleans(),  # the SQLite store reopened before the batch
        ),
        max_size=8,
    ),
)
def test_sqlite_rows_answer_and_store_as_the_memory_row_table(model, window, batches):
    clock = Clock()
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "rows.sqlite"
        sqlite = SQLiteStore(path)
        memory, plain = MemoryStore(), MemoryStore(columns=False)

        def engine(store):
            return Engine(model, store, ttl_s=20.0, clock=clock, replay_window=window)

        on_sqlite, on_memory, reference = engine(sqlite), engine(memory), engine(plain)
        assert on_sqlite.table is not None
        last = dict.fromkeys(STREAMS, 0)
        for batch, dt, deleted, reopen in batches:
            clock.now += dt
            if reopen:  # what was acknowledged is what a new process reads
                sqlite.close()
                sqlite = SQLiteStore(path)
                on_sqlite = engine(sqlite)
            if deleted is not None:
                assert len({store.delete(deleted) for store in (sqlite, memory, plain)}) == 1
                last[deleted] = 0
            steps, restarts = [], []
            for stream, offset, value, group in batch:
                x = np.full((1, 3), value, np.float32)
                seq = max(last[stream] + offset, 1)
                request = StepRequest(stream, seq, x, single=True, start=group == 1)
                (restarts if group else steps).append(request)
            items: list = list(restarts)
            if steps:
                items.append(
                    FrameSteps(
                        [r.stream for r in steps],
                        np.array([r.seq for r in steps], np.int64),
                        np.stack([r.x for r in steps]),
                    )
                )
            got = on_sqlite.process(items)
            want = on_memory.process(items)
            plain_outcomes = reference.process([*restarts, *steps])
            assert got[: len(restarts)] == want[: len(restarts)]
            if steps:
                frame = items[-1]
                answer = _frame_answers(frame, got[-1], OUTPUTS, [0, 0, 0])
                # bits: the memory row table's answer frame, byte for byte
                assert answer == _frame_answers(frame, want[-1], OUTPUTS, [0, 0, 0])
                header, _ = decode(answer)
                for k, outcome in enumerate(plain_outcomes[len(restarts) :]):
                    status = 200 if hasattr(outcome, "replayed") else outcome.status
                    assert header["status"][k] == status
                    if status == 200:
                        assert header["replayed"][k] == outcome.replayed
            for request, outcome in zip([*restarts, *steps], plain_outcomes, strict=True):
                if getattr(outcome, "replayed", True) is False:
                    last[request.stream] = request.seq
            assert _stored(sqlite) == _stored(memory)
            assert sqlite.count() == memory.count() == plain.count()
        sqlite.close()


def test_a_replay_answers_the_bits_first_answered_after_a_reopen(model, tmp_path):
    """Kept answers are numbers in the row; a retry of any step in the replay window, as a
    frame or as a plain step, answers the bytes first answered, also from a new process."""
    path = tmp_path / "replay.sqlite"
    engine = Engine(model, SQLiteStore(path), ttl_s=0, replay_window=4)
    streams = [f"r{i}" for i in range(5)]
    rng = np.random.default_rng(0)
    answers = {}
    for seq in range(1, 7):
        frame = _frame(streams, seq, rng.normal(size=(5, 1, 3)).astype(np.float32))
        answers[seq] = (frame, _answer(engine, frame))
        assert decode(answers[seq][1])[0]["status"] == [200] * 5
    engine.store.close()
    engine = Engine(model, SQLiteStore(path), ttl_s=0, replay_window=4)
    for seq in (6, 5, 3, 2):  # the last, older ones, one past the window of 4
        frame, first = answers[seq]
        again = _answer(engine, frame)
        header, y = decode(again)
        if seq == 2:
            assert header["status"] == [409] * 5
            continue
        assert header["replayed"] == [True] * 5
        np.testing.assert_array_equal(y, decode(first)[1])
        plain = engine.process([frame.request(k) for k in range(5)])
        assert all(outcome.replayed for outcome in plain)


def test_a_file_of_records_is_continued_with_its_kept_answers(model, tmp_path):
    """A stream stored as a record (the previous format, or the per-stream path) moves to a
    row on its next usual step; the answers it kept before are still replayed, bit for bit."""
    path = tmp_path / "old.sqlite"
    store = SQLiteStore(path)
    engine = Engine(model, store, ttl_s=0, replay_window=4)
    engine.table = None  # the per-stream path only: records, as the previous format wrote
    x = [np.full((1, 3), 0.1 * seq, np.float32) for seq in range(8)]
    first = {}
    for seq in (1, 2, 3):
        (outcome,) = engine.process([StepRequest("old", seq, x[seq], single=True, start=False)])
        first[seq] = outcome.output
    rows = sqlite3.connect(path).execute("SELECT COUNT(*) FROM rows").fetchone()[0]
    assert rows == 0 and store.count() == 1
    engine = Engine(model, store, ttl_s=0, replay_window=4)
    (outcome,) = engine.process([_frame(["old"], 4, x[4][None])])
    assert outcome.others == {} and np.isfinite(outcome.y).all()
    assert sqlite3.connect(path).execute("SELECT COUNT(*) FROM streams").fetchone()[0] == 0
    for seq in (3, 2, 1):  # kept before the move: replayed as stored
        (again,) = engine.process([StepRequest("old", seq, x[seq], single=True, start=False)])
        assert again.replayed and again.output == first[seq]
    (again,) = engine.process([StepRequest("old", 4, x[4], single=True, start=False)])
    assert again.replayed and again.output == jsonio.dumps_finite(outcome.y[0, 0].tolist())
    assert store.count() == 1


def test_two_writers_of_one_file_never_apply_a_step_twice(model, tmp_path):
    """Two stores (two processes' worth) on one file: a row written by one since the other
    read it fails the other's compare-and-set; that step is answered as a replay."""
    path = tmp_path / "shared.sqlite"
    one = Engine(model, SQLiteStore(path), ttl_s=0, replay_window=4)
    two = Engine(model, SQLiteStore(path), ttl_s=0, replay_window=4)
    streams = ["a", "b", "c"]
    x = np.full((3, 1, 3), 0.3, np.float32)
    for seq in (1, 2):
        _answer(one, _frame(streams, seq, x))
    _answer(two, _frame(streams, 3, x))  # two reads what one wrote
    prepared = one.prepare([_frame(streams, 4, x)])  # one reads seq 3 ...
    two.process([_frame(streams, 4, x)])  # ... two applies step 4 first
    (outcome,) = one.finish(prepared)
    assert np.isnan(outcome.y).all()
    assert all(o.replayed for o in outcome.others.values()) and len(outcome.others) == 3
    assert [r.seq for r in one.store.get_many(streams)] == [4, 4, 4]
    header, _ = decode(_answer(one, _frame(streams, 5, x)))  # one goes on from two's row
    assert header["status"] == [200] * 3


def test_a_flipped_byte_in_a_row_is_refused_not_answered(model, tmp_path):
    path = tmp_path / "flip.sqlite"
    store = SQLiteStore(path)
    engine = Engine(model, store, ttl_s=0, replay_window=2)
    x = np.full((2, 1, 3), 0.2, np.float32)
    for seq in (1, 2, 3):
        _answer(engine, _frame(["p", "q"], seq, x))
    with sqlite3.connect(path) as db:
        (data,) = db.execute("SELECT data FROM rows WHERE id='p'").fetchone()
        flipped = bytearray(data)
        flipped[100] ^= 1
        db.execute("UPDATE rows SET data=? WHERE id='p'", (bytes(flipped),))
    engine = Engine(model, SQLiteStore(path), ttl_s=0, replay_window=2)
    header, _ = decode(_answer(engine, _frame(["p", "q"], 4, x)))
    assert header["status"] == [409, 200]
    (record,) = engine.store.get_many(["p"])
    assert record is not None and not record.intact("p")


def test_a_record_written_for_a_row_moves_it_back_and_delete_and_expire_see_rows(model, tmp_path):
    store = SQLiteStore(tmp_path / "moves.sqlite")
    clock = Clock()
    engine = Engine(model, store, ttl_s=0, replay_window=3, clock=clock)
    x = np.full((2, 1, 3), 0.4, np.float32)
    for seq in (1, 2, 3):
        _answer(engine, _frame(["m", "n"], seq, x))
    (held,) = store.get_many(["m"])
    assert held is not None and held.seq == 3 and held.intact("m")
    # a create for a stream held as a row is refused (it is not absent)
    fresh = new_record("m", seq=1, state=held.state, output=b"[0]", digest=b"", updated=1.0)
    assert store.commit([Update("m", None, fresh)]) == [False]
    # a restart: the per-stream path writes a record over the row it read
    (outcome,) = engine.process([StepRequest("m", 4, x[0], single=True, start=True)])
    assert getattr(outcome, "replayed", outcome) is False
    (moved,) = store.get_many(["m"])
    assert moved is not None and moved.seq == 4
    with sqlite3.connect(store.path) as db:
        assert db.execute("SELECT COUNT(*) FROM rows WHERE id='m'").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM row_labels WHERE id='m'").fetchone()[0] == 0
    assert store.count() == 2
    assert store.delete("n") and not store.delete("n")
    assert store.get_many(["n"]) == [None]
    _answer(engine, _frame(["m"], 5, x[:1]))  # back to a row
    assert store.count() == 1
    assert store.expire(clock.now + 100.0, 10.0) == 1 and store.count() == 0


def test_rows_of_another_replay_window_are_continued_with_their_kept_answers(model, tmp_path):
    """A server restarted with another replay window reads the rows the previous one wrote
    as records, continues them, and replays the answers they kept, bit for bit."""
    path = tmp_path / "window.sqlite"
    engine = Engine(model, SQLiteStore(path), ttl_s=0, replay_window=4)
    x = np.full((2, 1, 3), 0.6, np.float32)
    first = {}
    for seq in (1, 2, 3):
        frame = _frame(["u", "v"], seq, x)
        first[seq] = engine.process([frame.request(k) for k in range(2)])
    engine.store.close()
    for window in (2, 6):
        engine = Engine(model, SQLiteStore(path), ttl_s=0, replay_window=window)
        retry = engine.process([_frame(["u", "v"], 3, x).request(k) for k in range(2)])
        assert [o.output for o in retry] == [o.output for o in first[3]]
        assert all(o.replayed for o in retry)
        seq = 4 if window == 2 else 5
        header, _ = decode(_answer(engine, _frame(["u", "v"], seq, x)))
        assert header["status"] == [200, 200]
        (record,) = engine.store.get_many(["u"])
        assert record is not None and record.seq == seq and record.intact("u")
        if window == 6:  # step 3, kept under window 4, is still replayed
            (again,) = engine.process([_frame(["u"], 3, x[:1]).request(0)])
            assert again.replayed and again.output == first[3][0].output
        engine.store.close()


def test_a_record_another_writer_moved_to_a_row_is_read_from_the_row(model, tmp_path):
    """A writer keeps the record it wrote; another writer of the file continues the stream
    as a row (the record leaves ``streams``): the first writer then reads the row, not an
    absent stream."""
    path = tmp_path / "two.sqlite"
    first = Engine(model, SQLiteStore(path), ttl_s=0)
    second = Engine(model, SQLiteStore(path), ttl_s=0)
    x = np.full((1, 3), 0.4, np.float32)
    (one,) = first.process([StepRequest("m", 1, x, single=True, start=False)])
    (two,) = second.process([StepRequest("m", 2, x, single=True, start=False)])
    assert not one.replayed and not two.replayed
    (record,) = first.store.get_many(["m"])
    assert record is not None and record.seq == 2 and record.intact("m")
    # a step the per-stream path applies (two timesteps) continues it
    (three,) = first.process([StepRequest("m", 3, np.repeat(x, 2, 0), single=False, start=False)])
    assert isinstance(three, StepResult) and not three.replayed
    first.store.close()
    second.store.close()
