"""The SQLite store's rows of arrays: the streams the engine continues in bulk, one table row
each, its fixed-size part read and written as one numpy record per stream.

A stream lives in ``streams`` (a :class:`Record`: a first step, a restart, anything the
per-stream path wrote) or in ``rows``, never both. A row is::

    id, generation (16 random bytes, the CAS), updated (for expiry),
    data: one record of ``row_dtype`` -- seq, updated, the state body, and the replay window
          (step s in slot s % W: its seq, answer y [O] float64, input x [F] float32, whether
          it was sent as [F]; in a timed layout also its time int64 and whether one was
          sent); the answers' JSON and the steps' digests are derived from these numbers
          only when a record of the row is asked for (a replay, a gap)
    checksum: blake2b over id, generation and data (rewritten with every step)
    layout: written once, on move-in
    and in ``row_labels``, written once, on move-in (a row's record is rewritten whole by
    every UPDATE, so what never changes lives apart): label (the state row's header and
    series), older (the kept answers the stream had when it moved in, as a record's history),
    fixed_sum (blake2b over id, layout, label and older)

so a step writes ~1 KB of numbers made by one vectorised pass over the batch, and never
re-serialises its replay window. Reading a row back as a :class:`Record` gives the bytes the
per-stream path would have stored (the same JSON answers and digests).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import sqlite3
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from seqstate.serve.stores.base import (
    Record,
    RowShape,
    history_entries,
    kept_answer,
    kept_digest,
    new_record,
    pack_history,
)
from seqstate.serve.stores.memory import ColumnWrite, TableRead

if TYPE_CHECKING:
    from seqstate.serve.stores.sqlite import SQLiteStore

__all__ = ["ROWS_SCHEMA", "SQLiteRows", "row_dtype", "row_record"]

ROWS_SCHEMA = """
CREATE TABLE IF NOT EXISTS rows (
    id TEXT PRIMARY KEY,
    generation BLOB NOT NULL,
    updated REAL NOT NULL,
    data BLOB NOT NULL,
    checksum BLOB NOT NULL,
    layout TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rows_updated ON rows (updated);
CREATE TABLE IF NOT EXISTS row_labels (
    id TEXT PRIMARY KEY,
    label BLOB NOT NULL,
    older BLOB NOT NULL,
    fixed_sum BLOB NOT NULL
) WITHOUT ROWID;
"""
_READ = "SELECT id, generation, data, checksum, layout FROM rows WHERE id IN ({marks})"
_GENERATIONS = "SELECT id, generation FROM rows WHERE id IN ({marks})"
_UPDATE = "UPDATE rows SET generation=?, updated=?, data=?, checksum=? WHERE id=? AND generation=?"
_MOVE_OUT = "DELETE FROM streams WHERE id=? AND generation=?"
# a row of another layout (the server restarted with another replay window) read as a record
_RELAYOUT = (
    "UPDATE rows SET generation=?, updated=?, data=?, checksum=?, layout=? "
    "WHERE id=? AND generation=?"
)
_INSERT = "INSERT INTO rows (id, generation, updated, data, checksum, layout) VALUES (?,?,?,?,?,?)"
_INSERT_LABEL = (
    "INSERT OR REPLACE INTO row_labels (id, label, older, fixed_sum) VALUES (?, ?, ?, ?)"
)
_CHUNK = 500
_ROW_HASH = hashlib.blake2b(digest_size=16, person=b"seqstate-rows/1")  # never updated
_FIXED_HASH = hashlib.blake2b(digest_size=16, person=b"seqstate-rowf/1")


def row_dtype(shape: RowShape) -> np.dtype:
    """The numpy record of a row's ``data`` (little-endian, packed); a timed shape's with each
    kept step's time and whether one was sent."""
    body_bytes, features, window, outputs, timed = shape
    fields = [
        ("seq", "<i8"),
        ("updated", "<f8"),
        ("body", "u1", (body_bytes,)),
        ("kept_seq", "<i8", (window,)),
        ("kept_y", "<f8", (window, outputs)),
        ("kept_x", "<f4", (window, features)),
        ("kept_single", "u1", (window,)),
    ]
    if timed:
        fields += [("kept_time", "<i8", (window,)), ("kept_timed", "u1", (window,))]
    return np.dtype(fields)


def layout_text(layout: bytes, shape: RowShape) -> str:
    """What a row stores of its layout: the sizes of its data, and a digest of the state row's
    header (a row of another run or window is never continued in bulk). A timed layout's
    text starts with ``t`` (a reader that knows only untimed rows reads none of it)."""
    digest = hashlib.blake2b(layout, digest_size=8).hexdigest()
    sizes = ",".join(str(size) for size in shape[:4])
    return f"{'t' if shape.timed else ''}{sizes},{digest}"


def _read_layout(layout: str) -> RowShape:
    """The :class:`RowShape` of a layout text (ValueError: not one)."""
    parts = layout.removeprefix("t").split(",")[:4]
    body_bytes, features, window, outputs = (int(part) for part in parts)
    return RowShape(body_bytes, features, window, outputs, layout.startswith("t"))


def _row_sum(name: bytes, generation: bytes, data: bytes) -> bytes:
    """(The generation's and the data's sizes are fixed by the layout: no lengths hashed.)"""
    hasher = _ROW_HASH.copy()
    hasher.update(generation + data + name)  # (one call: cheaper than three)
    return hasher.digest()


def _fixed_sum(name: bytes, layout: str, label: bytes, older: bytes) -> bytes:
    hasher = _FIXED_HASH.copy()
    text = layout.encode()
    hasher.update(b"%d,%d,%d," % (len(name), len(text), len(label)) + name + text + label + older)
    return hasher.digest()


def row_record(
    stream: str,
    fields: Sequence[object],
) -> Record:
    """The :class:`Record` of a stored row (``_FULL``'s fields after the id): what the
    per-stream path would have stored. A row whose checksums fail (or unreadable here) gives a
    record that is not ``intact``, so its stream answers as a corrupt record does."""
    generation, data, checksum, layout, label, older, fixed_sum = fields
    if not isinstance(generation, bytes):
        generation = b""
    corrupt = Record(-1, b"", b"", b"", 0.0, generation, b"")
    if (
        not isinstance(data, bytes)
        or not isinstance(label, bytes)
        or not isinstance(older, bytes)
        or not isinstance(layout, str)
    ):
        return corrupt  # (a row without its label, a field of the wrong type)
    name = stream.encode()
    if checksum != _row_sum(name, generation, data) or fixed_sum != _fixed_sum(
        name, layout, label, older
    ):
        return corrupt
    try:
        shape = _read_layout(layout)
        window, timed = shape.window, shape.timed
        dtype = row_dtype(shape)
        if len(data) != dtype.itemsize:
            return corrupt
        row = np.frombuffer(data, dtype)[0]
    except (ValueError, TypeError):
        return corrupt
    last = int(row["seq"])
    earlier = {seq: (digest, output) for seq, digest, output in history_entries(older)}
    entries = []
    for seq in range(last, max(last - window, 0), -1):  # newest first, consecutive
        slot = seq % window
        if int(row["kept_seq"][slot]) == seq:
            single = bool(row["kept_single"][slot])
            sent = None
            if timed and row["kept_timed"][slot]:
                sent = int(row["kept_time"][slot])
            digest = kept_digest(row["kept_x"][slot][None, :], single, sent)
            output = kept_answer(row["kept_y"][slot], single)
        elif seq in earlier:  # kept before the stream moved in
            digest, output = earlier[seq]
        else:
            break
        entries.append((seq, digest, output))
    if not entries:
        return corrupt
    (_, digest, output), history = entries[0], entries[:0:-1]
    return new_record(
        stream,
        seq=last,
        state=label + row["body"].tobytes(),
        output=output,
        digest=digest,
        updated=float(row["updated"]),
        history=pack_history(history),
        generation=generation,
    )


class SQLiteRows:
    """The SQLite store's rows of one layout (see the module). Reads and writes run on the
    store's connections under its locks; a write inside a group commit runs in its
    transaction (:meth:`SQLiteStore.commit_with_rows`)."""

    def __init__(self, store: SQLiteStore, layout: bytes, shape: RowShape) -> None:
        if shape.window < 1:
            raise ValueError(f"window must be >= 1 answers kept; received {shape.window}")
        self._store = store
        # (timed: the rows keep each kept step's time)
        self.body_bytes, self.features, self.window, self.outputs, self.timed = shape
        self.dtype = row_dtype(shape)
        self.layout = layout_text(layout, shape)
        # stream -> (generation, data) of the rows this table wrote last, oldest first: a row
        # whose stored generation is still that one is not read (nor checksummed) again
        self._written: dict[str, tuple[bytes, bytes]] = {}
        self._written_lock = threading.Lock()

    def read(self, streams: Sequence[str]) -> TableRead:
        """The rows of ``streams`` of this layout whose checksum holds; the records of the
        others (from ``streams``, or built from a row of another layout or a corrupt one)."""
        n = len(streams)
        found: dict[str, tuple[bytes, bytes]] = {}
        store, layout = self._store, self.layout
        size = self.dtype.itemsize
        written = self._written
        with store.reading() as reader:
            for i in range(0, n, _CHUNK):
                chunk = streams[i : i + _CHUNK]
                kept = [stream for stream in chunk if stream in written] if written else []
                if kept:  # their generations first: a row this table wrote need not be read
                    marks = ",".join("?" * len(kept))
                    held = dict(reader.execute(_GENERATIONS.format(marks=marks), kept))
                    for stream in kept:
                        mine = written.get(stream)
                        if mine is not None and held.get(stream) == mine[0]:
                            found[stream] = mine
                    chunk = [stream for stream in chunk if stream not in found]
                if not chunk:
                    continue
                marks = ",".join("?" * len(chunk))
                for stream, generation, data, checksum, row_layout in reader.execute(
                    _READ.format(marks=marks), chunk
                ):
                    if (
                        row_layout == layout
                        and type(data) is bytes
                        and len(data) == size
                        and type(generation) is bytes
                        and len(generation) == 16
                        and checksum == _row_sum(stream.encode(), generation, data)
                    ):
                        found[stream] = (generation, data)
        if len(found) == n:  # the usual batch: every stream a row of this layout
            rows = np.zeros(n, np.int64)
            hits = [found[stream] for stream in streams]
            version = np.frombuffer(b"".join([g for g, _ in hits]), np.uint8).reshape(n, 16)
            extra = np.frombuffer(bytearray(b"".join([d for _, d in hits])), self.dtype)
        else:
            rows = np.full(n, -1, np.int64)
            version = np.zeros((n, 16), np.uint8)
            extra = np.zeros(n, self.dtype)
            if found:
                at = [k for k, stream in enumerate(streams) if stream in found]
                hits = [found[streams[k]] for k in at]
                rows[at] = 0
                version[at] = np.frombuffer(b"".join([g for g, _ in hits]), np.uint8).reshape(
                    -1, 16
                )
                extra[at] = np.frombuffer(b"".join([d for _, d in hits]), self.dtype)
        records: list[Record | None] = [None] * n
        missing = np.flatnonzero(rows < 0).tolist()
        if missing:
            for k, record in zip(
                missing, store.get_many([streams[k] for k in missing]), strict=True
            ):
                records[k] = record
        seq = np.where(rows >= 0, extra["seq"], -1)
        return TableRead(
            rows, version, seq, extra["updated"].copy(), extra["body"].copy(), records, extra
        )

    def write(self, batch: ColumnWrite) -> list[bool]:
        """Write ``batch`` in a transaction of its own."""
        with self._store.transaction() as db:
            return self.write_in(db, batch)

    def write_in(self, db: sqlite3.Connection, batch: ColumnWrite) -> list[bool]:
        """Write every item whose compare-and-set holds, in the open transaction of ``db``: a
        row still holding the generation read, or a moved-in stream's record still holding its
        own; per item, whether written."""
        m = len(batch.streams)
        data = np.zeros(m, self.dtype) if batch.extra is None else batch.extra.copy()
        present = batch.rows >= 0
        if not present.all():  # moved in: an empty window (its earlier answers go in ``older``)
            data["kept_seq"][~present] = -1
        seq = batch.seq
        data["seq"] = seq
        data["updated"] = batch.updated
        data["body"] = batch.bodies
        items = np.arange(m)
        slot = seq % self.window
        data["kept_seq"][items, slot] = seq
        data["kept_y"][items, slot] = batch.y
        data["kept_x"][items, slot] = batch.x
        data["kept_single"][items, slot] = batch.single
        if self.timed:
            sent = batch.time is not None
            data["kept_timed"][items, slot] = sent
            data["kept_time"][items, slot] = batch.time if sent else 0
        elif batch.time is not None:
            raise ValueError("an untimed table cannot keep steps' times: ask table(timed=True)")
        size = self.dtype.itemsize
        buffer = data.tobytes()
        generations = os.urandom(16 * m)
        names = [stream.encode() for stream in batch.streams]
        updated = float(batch.updated)
        row_sum = _row_sum
        new_rows = [
            (generation, blob, row_sum(name, generation, blob))
            for name, generation, blob in zip(
                names,
                [generations[at : at + 16] for at in range(0, 16 * m, 16)],
                [buffer[at : at + size] for at in range(0, size * m, size)],
                strict=True,
            )
        ]
        version = batch.version.tobytes()  # [m, 16] generations read, the CAS
        moves = np.flatnonzero(~present).tolist()
        updates = [
            (new[0], updated, new[1], new[2], stream, version[16 * k : 16 * k + 16])
            for k, (new, stream) in enumerate(zip(new_rows, batch.streams, strict=True))
            if not moves or present[k]
        ]
        written = [False] * m
        changed = db.executemany(_UPDATE, updates).rowcount if updates else 0
        if changed == len(updates):
            for k in np.flatnonzero(present).tolist():
                written[k] = True
        else:  # some CAS lost: which ones holds the new generation now
            held: dict[str, bytes] = {}
            streams = [batch.streams[k] for k in np.flatnonzero(present).tolist()]
            for i in range(0, len(streams), _CHUNK):
                chunk = streams[i : i + _CHUNK]
                marks = ",".join("?" * len(chunk))
                held.update(db.execute(_GENERATIONS.format(marks=marks), chunk))
            for k in np.flatnonzero(present).tolist():
                written[k] = held.get(batch.streams[k]) == new_rows[k][0]
        for k in moves:
            record = batch.moved[k]
            if record is None:
                continue
            stream = batch.streams[k]
            generation, blob, checksum = new_rows[k]
            if db.execute(_MOVE_OUT, (stream, record.generation)).rowcount == 1:
                db.execute(_INSERT, (stream, generation, updated, blob, checksum, self.layout))
            elif (
                db.execute(
                    _RELAYOUT,
                    (generation, updated, blob, checksum, self.layout, stream, record.generation),
                ).rowcount
                != 1
            ):
                continue  # written or deleted since it was read: the CAS is lost
            label = batch.prefixes[k]
            kept = [*history_entries(record.history), (record.seq, record.digest, record.output)]
            older = pack_history(kept[-(self.window - 1) :] if self.window > 1 else [])
            fixed_sum = _fixed_sum(names[k], self.layout, label, older)
            db.execute(_INSERT_LABEL, (stream, label, older, fixed_sum))
            written[k] = True
        if moves:
            self._store.forget([batch.streams[k] for k in moves])
        self._remember(batch.streams, new_rows, written)
        return written

    def _remember(
        self, streams: list[str], rows: list[tuple[bytes, bytes, bytes]], written: list[bool]
    ) -> None:
        """Keep the rows just written (a transaction that then fails leaves generations the
        file never held: never matched, so never used)."""
        limit = self._store.known_records
        if limit == 0:
            return
        with self._written_lock:
            kept = self._written
            if all(written):  # (a stream kept before stays in its place: a cache, not an LRU)
                fresh = [(generation, blob) for generation, blob, _ in rows]
                kept.update(zip(streams, fresh, strict=True))
            else:
                for stream, (generation, blob, _), ok in zip(streams, rows, written, strict=True):
                    kept.pop(stream, None)
                    if ok:
                        kept[stream] = (generation, blob)
            excess = len(kept) - limit
            if excess > 0:
                for stream in list(itertools.islice(kept, excess)):
                    del kept[stream]
