"""Every store honours the same contract: bulk reads, atomic CAS commits, delete, expiry."""

from __future__ import annotations

import pytest

from seqstate.serve.stores import Record, SQLiteStore, StoreError, Update, open_store


def record(seq: int, updated: float = 100.0) -> Record:
    return Record(
        seq, state=b"state-%d" % seq, output=b"[%d]" % seq, digest=b"d%d" % seq, updated=updated
    )


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "memory":
        opened = open_store("memory://")
    elif request.param == "sqlite":
        opened = open_store(f"sqlite:///{tmp_path / 'streams.sqlite'}")
    else:
        opened = open_store(request.getfixturevalue("redis_url"), ttl_s=0)
        opened.prefix = f"test:{tmp_path.name}:"  # isolate from other tests sharing the server
    yield opened
    opened.close()


def test_commit_is_compare_and_set_on_seq(store):
    assert store.get_many(["a", "b"]) == [None, None]
    assert store.commit([Update("a", None, record(1)), Update("b", None, record(1))]) == [
        True,
        True,
    ]
    assert store.commit([Update("a", None, record(1))]) == [False]  # exists already
    ok = store.commit([Update("a", 1, record(2)), Update("b", 7, record(8))])
    assert ok == [True, False]
    a, b, c = store.get_many(["a", "b", "c"])
    assert a == record(2) and b == record(1) and c is None
    assert store.count() == 2


def test_delete_and_expire(store):
    store.commit(
        [Update("old", None, record(1, updated=10.0)), Update("new", None, record(1, updated=50.0))]
    )
    removed = store.expire(older_than=20.0)
    if store.url.startswith("redis"):
        assert removed == 0  # Redis expires keys itself
    else:
        assert removed == 1 and store.get_many(["old"]) == [None]
    assert store.delete("new") is True
    assert store.delete("new") is False
    assert store.get_many(["new"]) == [None]


def test_sqlite_commits_survive_reopening(tmp_path):
    path = tmp_path / "s.sqlite"
    first = SQLiteStore(path)
    first.commit([Update("a", None, record(1))])
    first.commit([Update("a", 1, record(2))])
    first.close()
    again = SQLiteStore(path)
    assert again.get_many(["a"]) == [record(2)]
    journal = again._db.execute("PRAGMA journal_mode").fetchone()[0]
    again.close()
    assert journal == "wal"


def test_sqlite_batch_commit_is_all_or_nothing(tmp_path):
    store = SQLiteStore(tmp_path / "s.sqlite")
    store.commit([Update("a", None, record(1))])
    broken = Record(2, state=None, output=b"", digest=b"", updated=1.0)  # type: ignore[arg-type]
    with pytest.raises(StoreError):
        store.commit([Update("a", 1, record(2)), Update("b", None, broken)])  # NOT NULL fails
    assert store.get_many(["a", "b"]) == [record(1), None]  # the first update rolled back
    store.close()


@pytest.mark.parametrize("url", ["postgres://x", "sqlite:///", "", "memory"])
def test_unknown_store_urls_are_refused(url):
    with pytest.raises(ValueError, match="store"):
        open_store(url)
