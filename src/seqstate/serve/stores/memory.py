"""In-process store: records under a lock, the usual streams as rows of arrays. Not durable.

Two homes for a stream, never both:

* ``records``: a dict of the :class:`Record` objects the engine built (a stream's first step,
  a restart, anything the per-stream path applies). Nothing is serialised or checksummed (a
  record built in this process is intact by construction, see ``Record``).
* a :class:`RowTable`: the streams the engine's columnar path continues, one row each of
  arrays shared by all of them (state bodies ``[rows, body_bytes]``, last seq, updated,
  generation, the replay window's answers ``[rows, W, O]`` as numbers, their JSON written only
  when a record of the row is asked for; a timed table also keeps each kept step's time, which
  its digest covers). A batch is read with one gather and
  written with one scatter per array, under one lock, with its compare-and-set on the
  generations as one array comparison::

      read:   rows = index[stream ...]; bodies = body[rows]; seq[rows], version[rows] ...
      write:  ok = version[rows] == expected; body[rows[ok]] = new; seq[rows[ok]] = ...

Every :class:`StateStore` method sees both homes: ``get_many`` builds a table row's record
(state, answer, digest and kept answers as the per-stream path would have stored them), and a
``commit`` of a record moves a table stream back to ``records``.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import struct
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from seqstate.serve.stores.base import (
    Record,
    RowShape,
    StateStore,
    Update,
    history_entries,
    kept_answer,
    kept_digest,
    new_record,
    pack_history,
)

__all__ = ["ColumnTable", "ColumnWrite", "MemoryStore", "RowTable", "TableRead"]

_VERSION = struct.Struct("<q")
_FIRST_ROWS = 64


@dataclasses.dataclass(frozen=True)
class TableRead:
    """What :meth:`RowTable.read` found for ``n`` streams, consistent under one lock."""

    rows: np.ndarray  # [n] int64: the stream's table row, -1: not in this table
    version: np.ndarray  # [n] int64: the row's generation counter (the CAS), -1: no row
    seq: np.ndarray  # [n] int64: last applied seq, -1: no row
    updated: np.ndarray  # [n] float64: when it was applied
    bodies: np.ndarray  # [n, body_bytes] uint8: the state bodies (zeros: no row)
    records: list[Record | None]  # where rows < 0: the stream's record (None: absent)
    # what a durable table read of each row besides (its stored row, which the write keeps
    # but for the new step); None: the table holds it in memory
    extra: np.ndarray | None = None


@dataclasses.dataclass
class ColumnWrite:
    """One batch of continued streams to write (:meth:`RowTable.write`), ``m`` items."""

    streams: list[str]
    rows: np.ndarray  # [m] int64: the row read (-1: the stream is moved in from ``records``)
    version: np.ndarray  # [m] int64: the version read (the CAS)
    moved: list[Record | None]  # per item with rows < 0: the record read (must still be there)
    prefixes: list[bytes]  # per item: the stored row's header and label (kept as they were)
    seq: np.ndarray  # [m] int64: the applied seq
    bodies: np.ndarray  # [m, body_bytes] uint8: the new state bodies
    y: np.ndarray  # [m, O] float64: each answer (a NaN row: no answer yet, JSON null)
    x: np.ndarray  # [m, F] float32: each step's input (its digest is derived on demand)
    single: np.ndarray  # [m] bool: the step was sent as [F]
    updated: float
    extra: np.ndarray | None = None  # [m]: ``TableRead.extra`` of the items (None: none)
    # [m] int64: each step's time as sent (Unix seconds); None: the steps were sent without
    # one (a timed table only takes a write with times)
    time: np.ndarray | None = None


class ColumnTable(Protocol):
    """Streams of one row layout held as rows of arrays: a batch read with one gather, written
    with one compare-and-set per row (:class:`RowTable` in memory; the SQLite store's rows)."""

    #: whether the rows keep each kept step's time (the table takes steps sent with a time)
    timed: bool

    def read(self, streams: Sequence[str]) -> TableRead:
        """The rows of ``streams`` and, for those without one, their records."""

    def write(self, batch: ColumnWrite) -> list[bool]:
        """Write every item whose compare-and-set holds; per item, whether written."""


class RowTable:
    """The streams of one row layout (the served run's, with its replay window ``window``)
    as rows of preallocated arrays, grown by doubling. Every method runs under the store's
    lock; the arrays are only read or written there. ``timed``: each kept step's time is kept
    too (and whether one was sent), so the steps of a run that reads times come here."""

    def __init__(self, store: MemoryStore, shape: RowShape) -> None:
        if shape.window < 1:
            raise ValueError(f"window must be >= 1 answers kept; received {shape.window}")
        self._store = store
        self.body_bytes, self.features, self.window, self.outputs, self.timed = shape
        self.index: dict[str, int] = {}
        self._free: list[int] = []
        self._streams: list[str | None] = []
        self._prefix: list[bytes] = []  # per row: the stored row's header and label
        self._allocate(_FIRST_ROWS)

    def _allocate(self, rows: int) -> None:
        self.body = np.zeros((rows, self.body_bytes), np.uint8)
        self.seq = np.full(rows, -1, np.int64)
        self.updated = np.zeros(rows, np.float64)
        self.version = np.full(rows, -1, np.int64)  # -1: a free row (never a live version)
        # the replay window: step s of a row sits in slot s % window
        self.kept_seq = np.full((rows, self.window), -1, np.int64)
        self.kept_output = np.empty((rows, self.window), object)  # None: derive from kept_y
        self.kept_y = np.zeros((rows, self.window, self.outputs), np.float64)
        self.kept_digest = np.empty((rows, self.window), object)  # None: derive from kept_x
        self.kept_x = np.zeros((rows, self.window, self.features), np.float32)
        self.kept_single = np.zeros((rows, self.window), bool)
        # a timed table's kept steps' times (kept_timed False: sent without one)
        self.kept_time = np.zeros((rows, self.window if self.timed else 0), np.int64)
        self.kept_timed = np.zeros((rows, self.window if self.timed else 0), bool)
        self._free = list(range(rows - 1, -1, -1))
        self._streams = [None] * rows
        self._prefix = [b""] * rows

    def _grow(self) -> None:
        """Double every array (the old rows keep their index)."""
        old = len(self.seq)
        arrays = (
            "body", "seq", "updated", "version", "kept_seq", "kept_output", "kept_y",
            "kept_digest", "kept_x", "kept_single", "kept_time", "kept_timed",
        )  # fmt: skip
        kept = {name: getattr(self, name) for name in arrays}
        streams, prefixes = self._streams, self._prefix
        self._allocate(2 * old)
        for name, values in kept.items():
            getattr(self, name)[:old] = values
        self._streams[:old], self._prefix[:old] = streams, prefixes
        self._free = list(range(2 * old - 1, old - 1, -1))

    def _take_row(self, stream: str) -> int:
        if not self._free:
            self._grow()
        row = self._free.pop()
        self.kept_seq[row] = -1
        self.kept_output[row] = None
        self.kept_digest[row] = None
        self.index[stream] = row
        self._streams[row] = stream
        return row

    def release(self, stream: str) -> bool:
        """Remove ``stream``'s row; whether it had one."""
        row = self.index.pop(stream, None)
        if row is None:
            return False
        self.version[row] = -1
        self.seq[row] = -1
        self._streams[row] = None
        self._prefix[row] = b""
        self.kept_output[row] = None
        self.kept_digest[row] = None
        self._free.append(row)
        return True

    def expire(self, now: float, ttl_s: float) -> int:
        """Release the rows idle (or ahead of ``now``) by more than ``ttl_s``; how many."""
        live = self.version >= 0
        stale = np.flatnonzero(live & (np.abs(now - self.updated) > ttl_s))
        for row in stale.tolist():
            stream = self._streams[row]
            if stream is not None:
                self.release(stream)
        return len(stale)

    def generation(self, row: int) -> bytes:
        """The 16-byte generation a record of ``row`` carries: the store's random salt and the
        row's version (a counter no two writes share)."""
        return self._store.salt + _VERSION.pack(int(self.version[row]))

    def record(self, stream: str, row: int) -> Record:
        """``stream``'s record as the per-stream path would have stored it."""
        last = int(self.seq[row])
        entries = []
        for seq in range(last, max(last - self.window, 0), -1):  # newest first, consecutive
            slot = seq % self.window
            if self.kept_seq[row, slot] != seq:
                break
            digest = self.kept_digest[row, slot]
            if digest is None:
                x = self.kept_x[row, slot][None, :]
                sent = None
                if self.timed and self.kept_timed[row, slot]:
                    sent = int(self.kept_time[row, slot])
                digest = kept_digest(x, bool(self.kept_single[row, slot]), sent)
            output = self.kept_output[row, slot]
            if output is None:  # (derived only when a record of the row is asked for)
                output = kept_answer(self.kept_y[row, slot], bool(self.kept_single[row, slot]))
            entries.append((seq, digest, output))
        (_, digest, output), history = entries[0], entries[:0:-1]
        return new_record(
            stream,
            seq=last,
            state=self._prefix[row] + self.body[row].tobytes(),
            output=output,
            digest=digest,
            updated=float(self.updated[row]),
            history=pack_history(history),
            generation=self.generation(row),
        )

    def read(self, streams: Sequence[str]) -> TableRead:
        """The rows of ``streams`` (one gather per array) and, for those without one, their
        records. Takes the store's lock."""
        with self._store.lock:
            found = map(self.index.get, streams, itertools.repeat(-1))
            rows = np.fromiter(found, np.int64, len(streams))
            present = rows >= 0
            safe = np.where(present, rows, 0)
            version = np.where(present, self.version[safe], -1)
            seq = np.where(present, self.seq[safe], -1)
            updated = self.updated[safe]
            bodies = self.body[safe]
            records: list[Record | None] = [None] * len(streams)
            if not present.all():
                held = self._store.records
                for k in np.flatnonzero(~present).tolist():
                    records[k] = held.get(streams[k])
            return TableRead(rows, version, seq, updated, bodies, records)

    def write(self, batch: ColumnWrite) -> list[bool]:
        """Write every item whose compare-and-set holds (its row still holds the version read;
        a moved-in stream still holds the very record read); per item, whether written."""
        if batch.time is not None and not self.timed:
            raise ValueError("an untimed table cannot keep steps' times: ask table(timed=True)")
        with self._store.lock:
            rows = batch.rows.copy()
            present = rows >= 0
            ok = np.zeros(len(rows), bool)
            ok[present] = self.version[rows[present]] == batch.version[present]
            held = self._store.records
            for k in np.flatnonzero(~present).tolist():
                stream, moved = batch.streams[k], batch.moved[k]
                current = held.get(stream)
                if moved is None or current is None or current is not moved:
                    continue  # written or deleted since it was read: the CAS is lost
                del held[stream]
                rows[k] = row = self._take_row(stream)
                self._prefix[row] = batch.prefixes[k]
                self._keep(row, current)
                ok[k] = True
            if not ok.any():
                return ok.tolist()
            take = np.flatnonzero(ok)
            target = rows[take]
            store = self._store
            self.body[target] = batch.bodies[take]
            seq = batch.seq[take]
            self.seq[target] = seq
            self.updated[target] = batch.updated
            self.version[target] = store.next_versions(len(target))
            slot = seq % self.window
            self.kept_seq[target, slot] = seq
            self.kept_output[target, slot] = None
            self.kept_y[target, slot] = batch.y[take]
            self.kept_digest[target, slot] = None
            self.kept_x[target, slot] = batch.x[take]
            self.kept_single[target, slot] = batch.single[take]
            if self.timed:
                times = batch.time
                self.kept_timed[target, slot] = times is not None
                self.kept_time[target, slot] = 0 if times is None else times[take]
            return ok.tolist()

    def _keep(self, row: int, record: Record) -> None:
        """Fill ``row``'s replay window with ``record``'s answer and kept answers."""
        kept = [*history_entries(record.history), (record.seq, record.digest, record.output)]
        for seq, digest, output in kept[-self.window :]:
            slot = seq % self.window
            self.kept_seq[row, slot] = seq
            self.kept_output[row, slot] = output
            self.kept_digest[row, slot] = digest


class MemoryStore(StateStore):
    """Records held as the objects the engine built, and the streams the engine continues in
    bulk as rows of arrays (:class:`RowTable`, one per row layout: see the module)."""

    slow_commit = False  # a dict under a lock: committed on the model thread

    def __init__(self, *, columns: bool = True) -> None:
        self.url = "memory://"
        self.records: dict[str, Record] = {}
        self.lock = threading.Lock()
        self.columns = columns  # False: records only (the per-stream path, for comparison)
        self.salt = os.urandom(8)  # the first half of every table row's generation
        self._versions = 0
        self._tables: dict[Any, RowTable] = {}

    def table(self, layout: Any, shape: RowShape) -> RowTable | None:
        """The row table of ``layout`` and ``shape`` (created on first use); None when
        ``columns`` is off."""
        if not self.columns:
            return None
        with self.lock:
            table = self._tables.get((layout, shape))
            if table is None:
                table = self._tables[(layout, shape)] = RowTable(self, shape)
            return table

    def next_versions(self, count: int) -> np.ndarray:
        """``count`` fresh versions (under the lock)."""
        start = self._versions
        self._versions += count
        return np.arange(start, start + count, dtype=np.int64)

    def _find(self, stream: str) -> tuple[RowTable, int] | None:
        for table in self._tables.values():
            row = table.index.get(stream)
            if row is not None:
                return table, row
        return None

    def get_many(self, streams: Sequence[str]) -> list[Record | None]:
        with self.lock:
            found: list[Record | None] = []
            for stream in streams:
                record = self.records.get(stream)
                if record is None and self._tables:
                    place = self._find(stream)
                    if place is not None:
                        record = place[0].record(stream, place[1])
                found.append(record)
            return found

    def commit(self, updates: Sequence[Update]) -> list[bool]:
        written = []
        with self.lock:
            for update in updates:
                current = self.records.get(update.stream)
                generation = current.generation if current else None
                place = self._find(update.stream) if current is None and self._tables else None
                if place is not None:
                    generation = place[0].generation(place[1])
                ok = generation == update.expected
                if ok:
                    if place is not None:
                        place[0].release(update.stream)
                    self.records[update.stream] = update.record
                written.append(ok)
        return written

    def delete(self, stream: str) -> bool:
        with self.lock:
            if self.records.pop(stream, None) is not None:
                return True
            return any(table.release(stream) for table in self._tables.values())

    def expire(self, now: float, ttl_s: float) -> int:
        with self.lock:
            old = [k for k, r in self.records.items() if abs(now - r.updated) > ttl_s]
            for k in old:
                del self.records[k]
            removed = len(old)
            for table in self._tables.values():
                removed += table.expire(now, ttl_s)
            return removed

    def count(self) -> int:
        with self.lock:
            return len(self.records) + sum(len(t.index) for t in self._tables.values())
