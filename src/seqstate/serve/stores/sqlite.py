"""SQLite store: the embedded default. One file, WAL journal, one transaction per batch.

Durability: every batch is one ``BEGIN IMMEDIATE … COMMIT``; with ``synchronous=FULL`` (the
default) the commit returns only after the WAL is fsync'ed, so an acknowledged step survives
``kill -9`` and power loss. ``synchronous=NORMAL`` survives ``kill -9`` (not power loss) and
is faster on slow disks.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from seqstate.serve.stores.base import Record, StateStore, StoreError, Update

__all__ = ["SQLiteStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    state BLOB NOT NULL,
    output BLOB NOT NULL,
    digest BLOB NOT NULL,
    updated REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS streams_updated ON streams (updated);
"""
_CHUNK = 500  # ids per SELECT … IN (…), well under SQLite's bound-variable limit


class SQLiteStore(StateStore):
    def __init__(self, path: str | Path, *, synchronous: str = "FULL") -> None:
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError(f"synchronous must be FULL, NORMAL or EXTRA; received {synchronous!r}")
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # autocommit mode: transactions are explicit (BEGIN IMMEDIATE in commit)
            self._db = sqlite3.connect(
                str(self.path), timeout=30, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as error:
            raise StoreError(f"cannot open SQLite store {str(self.path)!r}: {error}") from None
        self._lock = threading.Lock()

    def get_many(self, streams: Sequence[str]) -> list[Record | None]:
        found: dict[str, Record] = {}
        with self._lock, _errors("read"):
            for i in range(0, len(streams), _CHUNK):
                chunk = list(dict.fromkeys(streams[i : i + _CHUNK]))
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    "SELECT id, seq, state, output, digest, updated FROM streams "
                    f"WHERE id IN ({marks})",
                    chunk,
                )
                for stream, seq, state, output, digest, updated in rows:
                    found[stream] = Record(seq, bytes(state), bytes(output), bytes(digest), updated)
        return [found.get(stream) for stream in streams]

    def commit(self, updates: Sequence[Update]) -> list[bool]:
        written = []
        with self._lock, _errors("commit"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for update in updates:
                    r = update.record
                    if update.expected_seq is None:
                        cursor = self._db.execute(
                            "INSERT INTO streams (id, seq, state, output, digest, updated) "
                            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO NOTHING",
                            (update.stream, r.seq, r.state, r.output, r.digest, r.updated),
                        )
                    else:
                        cursor = self._db.execute(
                            "UPDATE streams SET seq=?, state=?, output=?, digest=?, updated=? "
                            "WHERE id=? AND seq=?",
                            (
                                r.seq,
                                r.state,
                                r.output,
                                r.digest,
                                r.updated,
                                update.stream,
                                update.expected_seq,
                            ),
                        )
                    written.append(cursor.rowcount == 1)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return written

    def delete(self, stream: str) -> bool:
        with self._lock, _errors("delete"):
            return self._db.execute("DELETE FROM streams WHERE id=?", (stream,)).rowcount == 1

    def expire(self, older_than: float) -> int:
        with self._lock, _errors("expire"):
            return self._db.execute("DELETE FROM streams WHERE updated < ?", (older_than,)).rowcount

    def count(self) -> int:
        with self._lock, _errors("count"):
            return self._db.execute("SELECT COUNT(*) FROM streams").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _errors:
    """Turn sqlite3 errors into StoreError (a 503 for the client, a metric for the operator)."""

    def __init__(self, operation: str) -> None:
        self.operation = operation

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, traceback) -> bool:
        if isinstance(error, sqlite3.Error):
            raise StoreError(f"SQLite {self.operation} failed: {error}") from error
        return False
