"""SQLite store: the embedded default. One file, WAL journal, one transaction per batch.

Durability: every batch is one ``BEGIN IMMEDIATE … COMMIT``; with ``synchronous=FULL`` (the
default) the commit returns only after the WAL is fsync'ed, so an acknowledged step survives
``kill -9`` and power loss. ``synchronous=NORMAL`` survives ``kill -9`` (not power loss) and
is faster on slow disks. Several processes (``--workers N``, or two servers on one file) share
the file safely: writes are serialised by SQLite's lock and guarded by the generation CAS.

Reads: the store keeps the records it committed (at most ``known_records`` of them, the most
recently written). A read asks the file for each stream's generation alone; where that is the
generation of a kept record, the kept record is the stored one (a generation is 16 random
bytes, written once), so its wide fields are not read back, copied or checksummed again.
Every other stream (written by another process, deleted, never kept) is read in full as
before: what a read returns is what the file holds, the cache only saves the copy.
"""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from seqstate.serve.stores.base import (
    Record,
    RowShape,
    StateStore,
    StoreError,
    StoreFullError,
    Update,
)
from seqstate.serve.stores.memory import ColumnTable, ColumnWrite
from seqstate.serve.stores.sqlite_rows import ROWS_SCHEMA, SQLiteRows, row_record

__all__ = ["SQLiteStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    state BLOB NOT NULL,
    output BLOB NOT NULL,
    digest BLOB NOT NULL,
    updated REAL NOT NULL,
    generation BLOB NOT NULL DEFAULT x'',
    checksum BLOB NOT NULL DEFAULT x'',
    history BLOB NOT NULL DEFAULT x''
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS streams_updated ON streams (updated);
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, at REAL);
"""
# files written before generations existed: their records have no checksum (so they answer
# state_incompatible until restarted), never a silent wrong state
_ADDED_COLUMNS = ("generation", "checksum", "history")
# a new stream: absent from both homes (``rows``: see sqlite_rows)
_INSERT = (
    "INSERT INTO streams (seq, state, output, digest, updated, generation, checksum, history, "
    "id) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9 WHERE NOT EXISTS (SELECT 1 FROM rows "
    "WHERE id=?9) "
    "ON CONFLICT(id) DO NOTHING"
)
# a record written for a stream held in ``rows`` (a restart, a step the per-stream path
# applied): it moves back to ``streams`` when the row still holds the generation read
_ROW_OUT = "DELETE FROM rows WHERE id=? AND generation=?"
_ROW_FULL = (
    "SELECT rows.id, generation, data, checksum, layout, label, older, fixed_sum "
    "FROM rows LEFT JOIN row_labels ON row_labels.id = rows.id WHERE rows.id IN ({marks})"
)
_UPDATE = (
    "UPDATE streams SET seq=?, state=?, output=?, digest=?, updated=?, generation=?, "
    "checksum=?, history=? WHERE id=? AND generation=?"
)
_GENERATIONS = "SELECT id, generation FROM streams WHERE id IN ({marks})"
_FULL = (
    "SELECT id, seq, state, output, digest, updated, generation, checksum, history "
    "FROM streams WHERE id IN ({marks})"
)
_PAGE_SIZE = 8192  # bytes, for new files (see SQLiteStore.__init__)
_CHUNK = 500  # ids per SELECT … IN (…), well under SQLite's bound-variable limit
# SQLite's primary result codes (sqlite3 names them only from Python 3.11)
_SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_FULL, _SQLITE_CANTOPEN = 8, 10, 13, 14
# errors that mean "this store cannot take writes now" (what /healthz reports)
_CANNOT_WRITE = (_SQLITE_FULL, _SQLITE_IOERR, _SQLITE_READONLY, _SQLITE_CANTOPEN)


class SQLiteStore(StateStore):
    """``known_records``: how many committed records are kept in memory to be recognised by
    their generation on the next read (0: none; every read then copies every field)."""

    def __init__(
        self, path: str | Path, *, synchronous: str = "FULL", known_records: int = 65536
    ) -> None:
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError(f"synchronous must be FULL, NORMAL or EXTRA; received {synchronous!r}")
        if type(known_records) is not int or known_records < 0:
            raise ValueError(f"known_records must be an int >= 0; received {known_records!r}")
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self.write_problem = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # autocommit mode: transactions are explicit (BEGIN IMMEDIATE in commit)
            self._db = sqlite3.connect(
                str(self.path), timeout=30, isolation_level=None, check_same_thread=False
            )
            # a new file's pages hold a whole stored row (state, answer, kept answers: ~1.5
            # KB for a small model with 16 answers kept): SQLite keeps at most ~1/4 of a page
            # of a row on its leaf page and writes the rest to an overflow page of its own, so
            # with the default 4 KiB pages every updated row wrote a whole 4 KiB overflow page
            # too (a commit of 1000 rows took twice as long). A file already written keeps its
            # page size (the pragma is ignored there): compatible both ways.
            self._db.execute(f"PRAGMA page_size={_PAGE_SIZE}")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self._db.executescript(_SCHEMA + ROWS_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(streams)")}
            for column in _ADDED_COLUMNS:
                if column not in columns:
                    self._db.execute(
                        f"ALTER TABLE streams ADD COLUMN {column} BLOB NOT NULL DEFAULT x''"
                    )
            # reads get their own connection: in WAL mode they see the last commit and never
            # wait for a writer's fsync (the batcher prepares batch k+1 while k commits)
            self._reader = sqlite3.connect(
                str(self.path), timeout=30, isolation_level=None, check_same_thread=False
            )
        except (sqlite3.Error, OSError) as error:
            raise StoreError(f"cannot open SQLite store {str(self.path)!r}: {error}") from None
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        # stream -> the last record this store committed for it, oldest write first
        self.known_records = known_records
        self._known: dict[str, Record] = {}
        self._known_lock = threading.Lock()
        self._tables: dict[Any, SQLiteRows] = {}

    def table(self, layout: Any, shape: RowShape) -> ColumnTable | None:
        """The rows of ``layout`` and ``shape`` (see :mod:`seqstate.serve.stores.sqlite_rows`)."""
        if not isinstance(layout, bytes):
            return None
        with self._known_lock:
            table = self._tables.get((layout, shape))
            if table is None:
                table = self._tables[(layout, shape)] = SQLiteRows(self, layout, shape)
            return table

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The read connection, under its lock (errors reported as StoreError)."""
        with self._read_lock, _errors("read"):
            yield self._reader

    def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT on the write connection (see ``_transaction``)."""
        return self._transaction()

    def forget(self, streams: Sequence[str]) -> None:
        """Drop the kept records of ``streams`` (moved to ``rows``)."""
        with self._known_lock:
            for stream in streams:
                self._known.pop(stream, None)

    def get_many(self, streams: Sequence[str]) -> list[Record | None]:
        found: dict[str, Record] = {}
        known = self._known
        with self._read_lock, _errors("read"):
            for i in range(0, len(streams), _CHUNK):
                chunk = list(dict.fromkeys(streams[i : i + _CHUNK]))
                kept = [stream for stream in chunk if stream in known] if known else []
                if kept:  # their generations first: a kept record need not be read again
                    marks = ",".join("?" * len(kept))
                    held = dict(self._reader.execute(_GENERATIONS.format(marks=marks), kept))
                    missing = []
                    for stream in chunk:
                        record = known.get(stream)
                        if record is not None and held.get(stream) == record.generation:
                            found[stream] = record
                        else:  # never kept, written since by another writer, or moved to
                            # ``rows`` (or deleted) by another writer: read in full
                            missing.append(stream)
                    chunk = missing
                if chunk:
                    marks = ",".join("?" * len(chunk))
                    for stream, *fields in self._reader.execute(_FULL.format(marks=marks), chunk):
                        found[stream] = _record(fields)
                    rest = [stream for stream in chunk if stream not in found]
                    if rest:  # held as rows
                        marks = ",".join("?" * len(rest))
                        for stream, *fields in self._reader.execute(
                            _ROW_FULL.format(marks=marks), rest
                        ):
                            found[stream] = row_record(stream, fields)
        return [found.get(stream) for stream in streams]

    def _keep(self, updates: Sequence[Update], written: Sequence[bool]) -> None:
        """Keep the records just committed (and forget the ones whose CAS lost: another
        writer holds that stream now)."""
        limit = self.known_records
        if limit == 0:
            return
        with self._known_lock:
            known = self._known
            for update, ok in zip(updates, written, strict=True):
                known.pop(update.stream, None)  # re-inserted last: the newest write
                if ok:
                    known[update.stream] = update.record
            excess = len(known) - limit
            if excess > 0:
                for stream in list(itertools.islice(known, excess)):
                    del known[stream]

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT; a failure rolls back and is reported as itself (a failed
        ROLLBACK, e.g. after SQLite already rolled back on SQLITE_FULL, must not hide it)."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as error:
                code = getattr(error, "sqlite_errorcode", None)  # Python >= 3.11
                if code is not None:
                    code &= 0xFF  # extended code -> primary code
                if code == _SQLITE_FULL or "full" in str(error):
                    self.write_problem = f"disk full ({self.path}): {error}"
                    raise StoreFullError(
                        f"SQLite store is full: disk full or size limit reached at "
                        f"{str(self.path)!r} ({error}); free space, nothing was written"
                    ) from None
                if code in _CANNOT_WRITE or (code is None and "disk" in str(error)):
                    self.write_problem = f"write failed: {error}"
                raise StoreError(f"SQLite write failed: {error}") from None
        self.write_problem = None

    def commit(self, updates: Sequence[Update]) -> list[bool]:
        """One transaction: each update's compare-and-set, then COMMIT (one fsync).

        The writes go as two ``executemany`` calls (inserts, then CAS updates) rather than a
        statement per stream. Each statement changes at most one row (distinct primary keys),
        and ``executemany`` sums the changes: when the sums equal the number of updates, every
        compare-and-set held (the usual case: no readback). Otherwise which of them held is
        read back in the same transaction: an update was written exactly when its stream now
        holds its new (random, 16-byte) generation."""
        if len({update.stream for update in updates}) != len(updates):
            return self._commit_each(updates)  # a stream twice: applied in order, one by one
        with self._transaction() as db:
            written = self._commit_in(db, updates)
        # committed: the transaction ended without an error
        self._keep(updates, written)
        return written

    def _commit_in(self, db: sqlite3.Connection, updates: Sequence[Update]) -> list[bool]:
        """:meth:`commit`'s writes of distinct streams, in the open transaction of ``db``."""
        inserts, changes = [], []
        for update in updates:
            values = _row(update)
            if update.expected is None:
                inserts.append(values)
            else:
                changes.append((*values, update.expected))
        changed = 0
        if inserts:
            changed += db.executemany(_INSERT, inserts).rowcount
        if changes:
            changed += db.executemany(_UPDATE, changes).rowcount
        if changed == len(updates):
            return [True] * len(updates)  # the usual case: no readback
        held: dict[str, bytes] = {}
        streams = [update.stream for update in updates]
        for i in range(0, len(streams), _CHUNK):
            chunk = streams[i : i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            held.update(db.execute(_GENERATIONS.format(marks=marks), chunk))
        written = []
        for update in updates:
            ok = held.get(update.stream) == update.record.generation
            if not ok and update.expected is not None:
                ok = self._move_out(db, update)
            written.append(ok)
        return written

    def _move_out(self, db: sqlite3.Connection, update: Update) -> bool:
        """Write ``update`` for a stream held in ``rows`` whose generation it read."""
        if db.execute(_ROW_OUT, (update.stream, update.expected)).rowcount != 1:
            return False
        db.execute("DELETE FROM row_labels WHERE id=?", (update.stream,))
        db.execute(_INSERT, _row(update))
        return True

    def commit_with_rows(
        self, updates: Sequence[Update], writes: Sequence[tuple[ColumnTable, ColumnWrite]]
    ) -> tuple[list[bool], list[list[bool]]]:
        """:meth:`commit` and the rows' writes in ONE transaction (one fsync)."""
        if len({update.stream for update in updates}) != len(updates) or not all(
            isinstance(table, SQLiteRows) for table, _ in writes
        ):
            return super().commit_with_rows(updates, writes)
        with self._transaction() as db:
            written = self._commit_in(db, updates) if updates else []
            rows = [table.write_in(db, write) for table, write in writes]  # type: ignore[attr-defined]
        self._keep(updates, written)
        return written, rows

    def _commit_each(self, updates: Sequence[Update]) -> list[bool]:
        written = []
        with self._transaction() as db:
            for update in updates:
                values = _row(update)
                if update.expected is None:
                    cursor = db.execute(_INSERT, values)
                    written.append(cursor.rowcount == 1)
                else:
                    cursor = db.execute(_UPDATE, (*values, update.expected))
                    written.append(cursor.rowcount == 1 or self._move_out(db, update))
        # a stream twice: keep its last write (only if that one held)
        last = {update.stream: i for i, update in enumerate(updates)}
        kept = list(last.values())
        self._keep([updates[i] for i in kept], [written[i] for i in kept])
        return written

    def delete(self, stream: str) -> bool:
        with self._transaction() as db:
            existed = db.execute("DELETE FROM streams WHERE id=?", (stream,)).rowcount == 1
            if db.execute("DELETE FROM rows WHERE id=?", (stream,)).rowcount == 1:
                db.execute("DELETE FROM row_labels WHERE id=?", (stream,))
                existed = True
        with self._known_lock:
            self._known.pop(stream, None)
        return existed

    def expire(self, now: float, ttl_s: float) -> int:
        with self._transaction() as db:
            removed = 0
            for table in ("streams", "rows"):
                removed += db.execute(
                    f"DELETE FROM {table} WHERE updated < ? OR updated > ?",
                    (now - ttl_s, now + ttl_s),
                ).rowcount
            if removed:
                db.execute("DELETE FROM row_labels WHERE id NOT IN (SELECT id FROM rows)")
        if removed:
            with self._known_lock:  # (a kept record not in the file is never returned anyway)
                self._known = {
                    stream: record
                    for stream, record in self._known.items()
                    if abs(now - record.updated) <= ttl_s
                }
        return removed

    def count(self) -> int:
        with self._lock, _errors("count"):
            query = "SELECT (SELECT COUNT(*) FROM streams) + (SELECT COUNT(*) FROM rows)"
            return self._db.execute(query).fetchone()[0]

    def check_writable(self) -> None:
        if self.write_problem is None:
            return
        # a real write that needs fresh pages (64 KiB), undone in the same transaction: it
        # succeeds only when a step's write would, and then clears the problem
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO probe (id, at) VALUES (1, zeroblob(65536))")
            db.execute("DELETE FROM probe")

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._db.close()
            self._reader.close()


def _row(update: Update) -> tuple[object, ...]:
    """The parameters of ``_INSERT`` (and the head of ``_UPDATE``'s) for ``update``."""
    r = update.record
    return (
        r.seq, r.state, r.output, r.digest, r.updated, r.generation, r.checksum, r.history,
        update.stream,
    )  # fmt: skip


def _record(fields: Sequence[object]) -> Record:
    seq, state, output, digest, updated, generation, checksum, history = fields
    try:
        return Record(
            int(seq),  # type: ignore[call-overload]
            bytes(state),  # type: ignore[call-overload]
            bytes(output),  # type: ignore[call-overload]
            bytes(digest),  # type: ignore[call-overload]
            float(updated),  # type: ignore[arg-type]
            bytes(generation),  # type: ignore[call-overload]
            bytes(checksum),  # type: ignore[call-overload]
            bytes(history),  # type: ignore[call-overload]
        )
    except (TypeError, ValueError):  # a field of the wrong type: a corrupt record, not a crash
        generation = generation if isinstance(generation, bytes) else b""
        return Record(-1, b"", b"", b"", 0.0, generation, b"")


class _errors:
    """Turn sqlite3 errors into StoreError (a 503 for the client, a metric for the operator)."""

    def __init__(self, operation: str) -> None:
        self.operation = operation

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        if isinstance(error, sqlite3.Error):
            raise StoreError(f"SQLite {self.operation} failed: {error}") from error
