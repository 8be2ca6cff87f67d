"""Every store honours the same contract: bulk reads, atomic CAS on a generation, delete, expiry."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqstate.serve.stores import Record, SQLiteStore, StoreError, Update, open_store
from seqstate.serve.stores.base import StoreFullError, new_record


def record(stream: str, seq: int, updated: float = 100.0) -> Record:
    return new_record(
        stream, seq=seq, state=b"state-%d" % seq, output=b"[%d]" % seq, digest=b"d", updated=updated
    )


def open_kind(kind: str, request, tmp_path, ttl_s: float = 0.0):
    if kind == "memory":
        return open_store("memory://")
    if kind == "sqlite":
        return open_store(f"sqlite:///{tmp_path / 'streams.sqlite'}")
    opened = open_store(request.getfixturevalue("redis_url"), ttl_s=ttl_s)
    opened.prefix = f"test:{tmp_path.name}:"  # isolate from other tests sharing the server
    return opened


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request, tmp_path):
    opened = open_kind(request.param, request, tmp_path)
    yield opened
    opened.close()


@pytest.fixture(params=["sqlite", "redis"])
def two_handles(request, tmp_path):
    """Two handles on one shared store: what two replicas (or two servers) hold."""
    handles = [open_kind(request.param, request, tmp_path) for _ in range(2)]
    yield handles
    for handle in handles:
        handle.close()


def test_commit_is_compare_and_set_on_the_generation(store):
    assert store.get_many(["a", "b"]) == [None, None]
    a1, b1 = record("a", 1), record("b", 1)
    assert store.commit([Update("a", None, a1), Update("b", None, b1)]) == [True, True]
    assert store.commit([Update("a", None, record("a", 1))]) == [False]  # exists already
    a2 = record("a", 2)
    ok = store.commit([Update("a", a1.generation, a2), Update("b", b"other", record("b", 8))])
    assert ok == [True, False]
    a, b, c = store.get_many(["a", "b", "c"])
    assert a == a2 and b == b1 and c is None
    assert a.intact("a") and not a.intact("b")  # the checksum covers the stream id
    assert store.count() == 2


def test_a_stale_commit_loses_to_a_delete_and_recreate_at_the_same_seq(two_handles):
    """The lost step across replicas: replica 1 reads S at seq 1; replica 2 deletes S and
    re-creates it with a different step 1; replica 1's step 2 (from the old state) must lose,
    although the stored seq is 1 again."""
    one, two = two_handles
    first = record("s", 1)
    assert one.commit([Update("s", None, first)]) == [True]
    (read,) = one.get_many(["s"])  # replica 1 reads seq 1
    assert two.delete("s")
    recreated = new_record("s", seq=1, state=b"new", output=b"[new]", digest=b"e", updated=1.0)
    assert two.commit([Update("s", None, recreated)]) == [True]  # acknowledged elsewhere
    stale = record("s", 2)
    assert one.commit([Update("s", read.generation, stale)]) == [False]  # refused
    assert one.get_many(["s"]) == [recreated]  # the new step 1 is kept


def test_delete_and_expire_including_records_from_the_future(store):
    store.commit(
        [
            Update("old", None, record("old", 1, updated=10.0)),
            Update("new", None, record("new", 1, updated=50.0)),
            Update("future", None, record("future", 1, updated=1e12)),
        ]
    )
    removed = store.expire(now=50.0, ttl_s=30.0)
    if store.url.startswith("redis"):
        assert removed == 0  # Redis expires keys itself; reads check `updated`
    else:
        assert removed == 2 and store.get_many(["old", "future"]) == [None, None]
    assert store.delete("new") is True
    assert store.delete("new") is False
    assert store.get_many(["new"]) == [None]


def test_redis_ttl_0_replica_clears_an_expiry_left_by_a_ttl_replica(request, tmp_path):
    with_ttl = open_kind("redis", request, tmp_path, ttl_s=60.0)
    without = open_kind("redis", request, tmp_path, ttl_s=0.0)
    try:
        first = record("s", 1)
        with_ttl.commit([Update("s", None, first)])
        key = with_ttl.prefix + "s"
        assert with_ttl._client.pttl(key) > 0
        without.commit([Update("s", first.generation, record("s", 2))])
        assert without._client.pttl(key) == -1  # PERSIST: no expiry left behind
    finally:
        with_ttl.close()
        without.close()


def test_sqlite_commits_survive_reopening(tmp_path):
    path = tmp_path / "s.sqlite"
    first = SQLiteStore(path)
    one = record("a", 1)
    first.commit([Update("a", None, one)])
    two = record("a", 2)
    first.commit([Update("a", one.generation, two)])
    first.close()
    again = SQLiteStore(path)
    assert again.get_many(["a"]) == [two]
    journal = again._db.execute("PRAGMA journal_mode").fetchone()[0]
    again.close()
    assert journal == "wal"


def test_sqlite_batch_commit_is_all_or_nothing(tmp_path):
    store = SQLiteStore(tmp_path / "s.sqlite")
    one = record("a", 1)
    store.commit([Update("a", None, one)])
    broken = Record(2, state=None, output=b"", digest=b"", updated=1.0)  # type: ignore[arg-type]
    with pytest.raises(StoreError):
        store.commit([Update("a", one.generation, record("a", 2)), Update("b", None, broken)])
    assert store.get_many(["a", "b"]) == [one, None]  # the first update rolled back
    assert store.write_problem is None  # a refused row is not a store that cannot write
    store.close()


def test_sqlite_disk_full_is_reported_as_such_and_clears_when_space_returns(tmp_path):
    store = SQLiteStore(tmp_path / "s.sqlite")
    store.commit([Update("a", None, record("a", 1))])
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count={pages}")  # the file may not grow: "disk full"
    big = new_record("b", seq=1, state=b"x" * 200_000, output=b"[]", digest=b"", updated=1.0)
    with pytest.raises(StoreFullError, match="full"):
        store.commit([Update("b", None, big)])
    assert store.write_problem is not None and "full" in store.write_problem
    assert store.get_many(["b"]) == [None]
    store._db.execute("PRAGMA max_page_count=1073741823")
    store.check_writable()
    assert store.write_problem is None
    store.close()


def test_sqlite_files_from_before_generations_are_upgraded_not_trusted(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE streams (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, state BLOB NOT NULL, "
        "output BLOB NOT NULL, digest BLOB NOT NULL, updated REAL NOT NULL) WITHOUT ROWID"
    )
    db.execute("INSERT INTO streams VALUES ('s', 3, x'00', '[1]', x'00', 1.0)")
    db.commit()
    db.close()
    store = SQLiteStore(path)
    (old,) = store.get_many(["s"])
    assert old is not None and not old.intact("s")  # no checksum: the engine answers 409
    store.close()


@pytest.mark.parametrize("url", ["postgres://x", "sqlite:///", "", "memory"])
def test_unknown_store_urls_are_refused(url):
    with pytest.raises(ValueError, match="store"):
        open_store(url)


def test_the_record_checksum_format_is_fixed():
    """Records already stored must stay intact: the checksum of known fields is pinned."""
    from seqstate.serve.stores.base import Record, _checksum

    fields = ("s1", 7, b"state", b"[1.0]", b"d" * 16, 1700000000.5, b"g" * 16)
    assert _checksum(*fields).hex() == "e11f960b7963de877f35d12d5325036b"
    assert _checksum(*fields, b"hist").hex() == "89a1fc05a81ff0c9f00fa3a88cfb0cc1"
    assert _checksum(*fields[:5], 17, b"g" * 16).hex() == "2813b24d5fe57dac058fac3da82e3c9c"
    assert _checksum("s1", 7, "not bytes", b"", b"", 1.0, b"") == b"-"  # type: ignore[arg-type]
    record = Record(*fields[1:], checksum=_checksum(*fields))  # type: ignore[misc]
    assert record.intact("s1") and not record.intact("s2") and record.intact("s1")


def _kept_answers_reference(previous, keep: int) -> bytes:
    """The plain rule: unpack every entry, add the record's own, keep the newest ``keep``."""
    import struct

    from seqstate.serve.stores.base import _entries

    if keep <= 0:
        return b""
    entry = struct.Struct("<qHI")
    entries = [*_entries(previous.history), (previous.seq, previous.digest, previous.output)]
    return b"".join(
        entry.pack(seq, len(digest), len(output)) + digest + output
        for seq, digest, output in entries[-keep:]
    )


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(st.tuples(st.binary(max_size=20), st.binary(max_size=40)), max_size=12),
    keeps=st.lists(st.integers(0, 6), min_size=12, max_size=12),
)
def test_kept_answers_equal_the_plain_rule(steps, keeps):
    from seqstate.serve.stores.base import Record, kept_answers

    record = Record(0, b"", b"[0]", b"d0", 0.0)
    for seq, ((digest, output), keep) in enumerate(zip(steps, keeps, strict=False), start=1):
        history = kept_answers(record, keep)
        assert history == _kept_answers_reference(record, keep)
        record = Record(seq, b"", output, digest, 0.0, history=history)
        if keep:  # the step before is always among the kept answers
            assert record.earlier(seq - 1) == (steps[seq - 2] if seq > 1 else (b"d0", b"[0]"))


@settings(max_examples=50, deadline=None)
@given(
    stream=st.text(min_size=1, max_size=10),
    seq=st.integers(1, 2**40),
    state=st.binary(max_size=64),
    output=st.binary(max_size=16),
    history=st.binary(max_size=32),
)
def test_a_built_record_checksums_as_the_stored_format(stream, seq, state, output, history):
    """A record built in process computes its checksum only when asked (a durable store's
    commit); it is the checksum of the pinned format, and a record read back from its fields
    is intact exactly where the built one is."""
    from seqstate.serve.stores.base import _checksum

    built = new_record(
        stream, seq=seq, state=state, output=output, digest=b"d", updated=2.5, history=history
    )
    fields = (seq, state, output, b"d", 2.5, built.generation)
    assert built.checksum == _checksum(stream, *fields, history)
    read = Record(*fields, checksum=built.checksum, history=history)
    assert read == built
    for other in (stream, stream + "x"):
        assert built.intact(other) == read.intact(other) == (other == stream)
    damaged = Record(seq, state + b"\0", output, b"d", 2.5, built.generation, built.checksum)
    assert not damaged.intact(stream)


def test_a_caller_drawn_generation_must_be_16_bytes():
    drawn = new_record("s", seq=1, state=b"", output=b"[]", digest=b"", updated=0.0,
                       generation=b"g" * 16)  # fmt: skip
    assert drawn.generation == b"g" * 16 and drawn.intact("s")
    for bad in (b"short", "g" * 16):
        with pytest.raises(ValueError, match="generation must be 16 random bytes"):
            new_record("s", seq=1, state=b"", output=b"[]", digest=b"", updated=0.0,
                       generation=bad)  # type: ignore[arg-type]  # fmt: skip


def test_a_commit_naming_a_stream_twice_applies_its_updates_in_order(store):
    """Each update's CAS sees the ones before it in the same commit (the batched SQLite
    write reads back which held; a stream named twice goes one statement at a time)."""
    first, second, stale = record("t", 1), record("t", 2), record("t", 3)
    ok = store.commit(
        [Update("t", None, first), Update("t", first.generation, second), Update("t", b"x", stale)]
    )
    assert ok == [True, True, False]
    assert store.get_many(["t"]) == [second]
    mixed = [Update("t", second.generation, record("t", 3)), Update("u", None, record("u", 1))]
    assert store.commit([*mixed, Update("v", b"absent", record("v", 1))]) == [True, True, False]
    assert [r.seq if r else None for r in store.get_many(["t", "u", "v"])] == [3, 1, None]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("abcdef"), st.sampled_from(["insert", "held", "stale"])),
        min_size=1,
        max_size=6,
        unique_by=lambda op: op[0],
    ),
    st.sets(st.sampled_from("abcdef")),
)
def test_sqlite_batch_commit_equals_one_compare_and_set_per_update(tmp_path_factory, ops, present):
    """A batch of inserts and CAS updates, some of which must fail, reports and writes exactly
    what applying each update alone to a plain dict would (the all-held fast path and the
    readback both)."""
    store = SQLiteStore(tmp_path_factory.mktemp("cas") / "streams.sqlite")
    try:
        reference: dict[str, Record] = {}
        store.commit([Update(s, None, record(s, 1)) for s in sorted(present)])
        reference.update(zip(sorted(present), store.get_many(sorted(present)), strict=True))
        updates, expected = [], []
        for stream, kind in ops:
            new = record(stream, 2)
            before = reference.get(stream)
            if kind == "insert":
                update = Update(stream, None, new)
                ok = before is None
            else:
                generation = before.generation if before is not None else b"x" * 16
                update = Update(stream, generation if kind == "held" else b"y" * 16, new)
                ok = before is not None and kind == "held"
            updates.append(update)
            expected.append(ok)
            if ok:
                reference[stream] = new
        assert store.commit(updates) == expected
        streams = sorted(set(present) | {s for s, _ in ops})
        assert store.get_many(streams) == [reference.get(s) for s in streams]
    finally:
        store.close()


@settings(max_examples=40, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["commit", "other", "delete", "expire", "damage"]),
            st.lists(st.sampled_from("abcd"), min_size=1, max_size=4, unique=True),
            st.booleans(),  # commit: on the generation read (True) or a stale one (False)
        ),
        max_size=12,
    ),
    limit=st.sampled_from([1, 2, 65536]),
)
def test_sqlite_reads_with_kept_records_equal_reads_of_the_file(tmp_path_factory, ops, limit):
    """A store that keeps its committed records reads exactly what a store that keeps none
    reads from the same file, whatever other handles (replicas) wrote, deleted or damaged;
    only a kept record whose generation the file still holds is not read back."""
    path = tmp_path_factory.mktemp("kept") / "s.sqlite"
    kept = SQLiteStore(path, known_records=limit)
    other = SQLiteStore(path, known_records=0)
    plain = SQLiteStore(path, known_records=0)
    seq = 0
    for op, streams, fresh in ops:
        seq += 1
        if op in ("commit", "other"):
            writer = kept if op == "commit" else other
            current = writer.get_many(streams)
            updates = [
                Update(s, (r.generation if r else None) if fresh else b"x" * 16, record(s, seq))
                for s, r in zip(streams, current, strict=True)
            ]
            writer.commit(updates)
        elif op == "delete":
            kept.delete(streams[0])
        elif op == "expire":
            other.expire(100.0 + seq, ttl_s=seq - 0.5)  # removes the records of early seqs
        else:  # damage the stored state (the generation unchanged)
            with sqlite3.connect(path) as db:
                db.execute("UPDATE streams SET state=x'00' WHERE id=?", (streams[0],))
        ids = list("abcd")
        for stream, read, truth in zip(ids, kept.get_many(ids), plain.get_many(ids), strict=True):
            if truth is None or read is None:
                assert read is None and truth is None
                continue
            assert (read.seq, read.output, read.generation, read.history) == (
                truth.seq, truth.output, truth.generation, truth.history
            )  # fmt: skip
            if read.state != truth.state:  # damaged in the file: the kept copy is the written
                assert truth.state == b"\x00" and not truth.intact(stream)
                assert read.state == b"state-%d" % read.seq and read.intact(stream)
        assert len(kept._known) <= limit
    for handle in (kept, other, plain):
        handle.close()


def test_sqlite_new_files_hold_a_row_per_page_and_old_files_keep_their_pages(tmp_path):
    """New files use 8 KiB pages (a stored row stays on its leaf page); a file written with
    another page size opens, reads and commits as before, its pages unchanged."""
    fresh = SQLiteStore(tmp_path / "new.sqlite")
    assert fresh._db.execute("PRAGMA page_size").fetchone() == (8192,)
    fresh.close()
    with sqlite3.connect(tmp_path / "old.sqlite") as db:
        db.execute("PRAGMA page_size=4096")
        db.execute("CREATE TABLE other (a)")
    old = SQLiteStore(tmp_path / "old.sqlite")
    assert old.commit([Update("a", None, record("a", 1))]) == [True]
    old.close()
    reopened = SQLiteStore(tmp_path / "old.sqlite", known_records=0)
    assert reopened._db.execute("PRAGMA page_size").fetchone() == (4096,)
    (a,) = reopened.get_many(["a"])
    assert a is not None and a.seq == 1 and a.intact("a")
    reopened.close()


def test_an_unreachable_redis_cluster_opens_and_answers_store_errors():
    # The cluster client finds its nodes when it is made: made at open, an unreachable
    # cluster ended the server's start with the client's traceback; a plain redis:// starts
    # and answers 503 until the store is up, and so does a cluster now.
    pytest.importorskip("redis")
    store = open_store("redis+cluster://127.0.0.1:1?replicas=0", ttl_s=0)
    with pytest.raises(StoreError, match="cannot reach Redis Cluster"):
        store.get_many(["a"])
