"""The state store interface: per-stream records, read in bulk, committed atomically with CAS.

Every write gives the record a fresh random ``generation``; a commit names the generation it
read (or None: the stream must be absent) and is refused when the stored one differs. The seq
alone is not enough: a DELETE and re-create by another replica can bring the same seq back with
a different state, and a commit computed from the old state must then lose (see
``docs/serving.md``, "Replicas and the compare-and-set").

Each record also carries a checksum over its stream id and every field, computed when a
durable store first writes it and checked when it is read back, so a flipped byte in a stored
state becomes that stream's 409 instead of a silently wrong answer. (The memory store holds
the very records the engine built: intact by construction, never checksummed.)
"""

from __future__ import annotations

import abc
import hashlib
import os
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from seqstate.serve import jsonio

if TYPE_CHECKING:  # (memory.py imports this module)
    from seqstate.serve.stores.memory import ColumnTable, ColumnWrite

__all__ = [
    "Record",
    "RowShape",
    "StateStore",
    "StoreError",
    "StoreFullError",
    "Update",
    "history_entries",
    "kept_answer",
    "kept_answers",
    "kept_digest",
    "new_record",
    "pack_history",
    "step_digest",
]


class StoreError(RuntimeError):
    """The store could not be reached or refused an operation (reported as HTTP 503)."""


class StoreFullError(StoreError):
    """The store is out of space: nothing was written (HTTP 507, /healthz says so)."""


class Record:
    """What the server keeps per stream: enough to continue it and to answer a retry.

    Immutable by convention (the stores share records between threads; nothing assigns a
    field after construction). A record built by :func:`new_record` knows the stream it was
    built for: its checksum is computed only when a durable store asks for it (the memory
    store never does), and it is intact for that stream by construction. A record read back
    from bytes carries the stored checksum, which :meth:`intact` checks once.
    """

    __slots__ = (  # noqa: RUF023 - the fields' order, then the private caches
        "seq", "state", "output", "digest", "updated", "generation", "history", "_sum",
        "_built_for", "_intact_for", "row_label",
    )  # fmt: skip

    seq: int  # last applied step number
    state: bytes  # the stream's stored state row after step ``seq``
    output: bytes  # JSON of the answer ``y`` to step ``seq`` (returned again on a retry)
    digest: bytes  # fingerprint of step ``seq``'s request (x and start), to recognise a retry
    updated: float  # unix time step ``seq`` was applied (for TTL expiry)
    generation: bytes  # random per write: what the compare-and-set compares
    # the answers of the steps just before ``seq`` (see :func:`kept_answers`), so a client
    # that pipelined several steps and lost its connection gets each of them replayed
    history: bytes
    # what the engine that built the record knows of its state row without parsing it: (the
    # row codec, the series it is bound to); None: read from ``state``. Not a stored field
    # (neither compared nor checksummed)
    row_label: tuple[object, str | None] | None

    def __init__(
        self,
        seq: int,
        state: bytes,
        output: bytes,
        digest: bytes,
        updated: float,
        generation: bytes = b"",
        checksum: bytes = b"",
        history: bytes = b"",
    ) -> None:
        self.seq = seq
        self.state = state
        self.output = output
        self.digest = digest
        self.updated = updated
        self.generation = generation
        self.history = history
        self._sum: bytes | None = checksum
        self._built_for: str | None = None  # set by new_record: the checksum is then lazy
        self._intact_for: tuple[str, bool] | None = None
        self.row_label = None

    @property
    def checksum(self) -> bytes:
        """blake2b over the stream id and the fields above (and history); b"": none stored."""
        if self._sum is None:  # built by new_record: computed once, when first asked
            if self._built_for is None:
                raise RuntimeError("a record without a checksum must come from new_record")
            self._sum = self._sum_for(self._built_for)
        return self._sum

    def intact(self, stream: str) -> bool:
        """Whether the stored bytes are what the engine wrote for ``stream`` (computed once
        per record and stream: the rules and the engine both ask)."""
        if self._built_for is not None and self._built_for == stream:
            return True  # built in this process for this stream: its checksum is its own
        known = self._intact_for
        if known is not None and known[0] == stream:
            return known[1]
        ok = bool(self.checksum) and self.checksum == self._sum_for(stream)
        self._intact_for = (stream, ok)  # a cache, not a field
        return ok

    def _sum_for(self, stream: str) -> bytes:
        return _checksum(
            stream,
            self.seq,
            self.state,
            self.output,
            self.digest,
            self.updated,
            self.generation,
            self.history,
        )

    def earlier(self, seq: int) -> tuple[bytes, bytes] | None:
        """``(digest, output)`` of step ``seq < self.seq`` if its answer is still kept."""
        for entry_seq, digest, output in _entries(self.history):
            if entry_seq == seq:
                return digest, output
        return None

    def _fields(self) -> tuple[object, ...]:
        return (
            self.seq, self.state, self.output, self.digest, self.updated, self.generation,
            self.checksum, self.history,
        )  # fmt: skip

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:  # a value, as the frozen dataclass it replaces
        return hash(self._fields())

    def __repr__(self) -> str:
        return (
            f"Record(seq={self.seq!r}, state=<{len(self.state)} bytes>, output={self.output!r}, "
            f"digest={self.digest!r}, updated={self.updated!r}, generation={self.generation!r}, "
            f"checksum={self.checksum!r}, history=<{len(self.history)} bytes>)"
        )


def new_record(
    stream: str,
    *,
    seq: int,
    state: bytes,
    output: bytes,
    digest: bytes,
    updated: float,
    history: bytes = b"",
    generation: bytes | None = None,
) -> Record:
    """A record for ``stream`` with a fresh generation (``generation``: 16 random bytes drawn
    by the caller, e.g. a batch's at once); its checksum is computed when a store first asks
    for it (a durable store, on commit)."""
    if generation is None:
        generation = os.urandom(16)
    elif type(generation) is not bytes or len(generation) != 16:
        raise ValueError(f"generation must be 16 random bytes; received {generation!r:.40}")
    record = Record(seq, state, output, digest, updated, generation, b"", history)
    record._sum = None
    record._built_for = stream
    return record


# history: entries (seq, digest, output), oldest first, each a fixed header then the bytes
_ENTRY = struct.Struct("<qHI")  # seq, len(digest), len(output)


def kept_answers(previous: Record, keep: int) -> bytes:
    """The history of the record that follows ``previous``: its history plus its own step,
    the newest ``keep`` entries (``keep`` = the replay window - 1; 0 keeps none). Once per
    step: the kept entries are sliced as they are stored, never unpacked and packed again."""
    if keep <= 0:
        return b""
    own = (
        _ENTRY.pack(previous.seq, len(previous.digest), len(previous.output))
        + previous.digest
        + previous.output
    )
    history = previous.history
    if len(history) < _ENTRY.size:
        return own
    # The stored entries are the steps just before previous.seq, consecutive (a step applies
    # only on top of the one before it, and each history is cut from the one before): their
    # count follows from the first one's seq, so the usual case (the window full: drop the
    # oldest) reads one header instead of walking every entry.
    first, digest_size, output_size = _ENTRY.unpack_from(history, 0)
    drop = (previous.seq - first) + 1 - keep
    if drop <= 0:
        return history + own
    if drop == 1:
        return history[_ENTRY.size + digest_size + output_size :] + own
    starts, at = [], 0  # where each stored entry starts; at: the end of the last whole one
    while at + _ENTRY.size <= len(history):
        _, digest_size, output_size = _ENTRY.unpack_from(history, at)
        if at + _ENTRY.size + digest_size + output_size > len(history):
            break  # a cut entry: dropped, as _entries drops it
        starts.append(at)
        at += _ENTRY.size + digest_size + output_size
    drop = len(starts) + 1 - keep  # entries (the stored ones and our own) past the newest keep
    if drop <= 0:
        return history[:at] + own
    if drop >= len(starts):
        return own
    return history[starts[drop] : at] + own


def history_entries(history: bytes) -> list[tuple[int, bytes, bytes]]:
    """The ``(seq, digest, output)`` entries of a record's ``history``, oldest first."""
    return _entries(history)


def pack_history(entries: Sequence[tuple[int, bytes, bytes]]) -> bytes:
    """The ``history`` bytes of ``entries`` ``(seq, digest, output)``, oldest first (what
    :func:`kept_answers` builds step by step)."""
    return b"".join(
        _ENTRY.pack(seq, len(digest), len(output)) + digest + output
        for seq, digest, output in entries
    )


def _entries(history: bytes) -> list[tuple[int, bytes, bytes]]:
    entries, at = [], 0
    while at + _ENTRY.size <= len(history):
        seq, digest_size, output_size = _ENTRY.unpack_from(history, at)
        at += _ENTRY.size
        digest = history[at : at + digest_size]
        output = history[at + digest_size : at + digest_size + output_size]
        at += digest_size + output_size
        entries.append((seq, digest, output))
    return entries


def _checksum(
    stream: str,
    seq: int,
    state: bytes,
    output: bytes,
    digest: bytes,
    updated: float,
    generation: bytes,
    history: bytes = b"",
) -> bytes:
    """blake2b over the lengths of the parts, seq, updated, then the parts. Once per record
    written and read, so written without generators (the format is fixed: stored records)."""
    name = stream.encode()
    if (
        type(state) is not bytes
        or type(output) is not bytes
        or type(digest) is not bytes
        or type(generation) is not bytes
        or (history and type(history) is not bytes)
        or type(seq) is not int
        or not isinstance(updated, float | int)
    ):
        return b"-"  # a field of the wrong type was read: never matches
    hasher = _RECORD_HASH.copy()  # (a copy of the keyed-up hasher: cheaper than a new one)
    if history:  # absent: the checksum of every record written before histories were kept
        hasher.update(
            _LENGTHS_6.pack(
                len(name), len(state), len(output), len(digest), len(generation), len(history),
                seq, float(updated),
            )
        )  # fmt: skip
    else:
        hasher.update(
            _LENGTHS_5.pack(
                len(name), len(state), len(output), len(digest), len(generation), seq,
                float(updated),
            )
        )  # fmt: skip
    hasher.update(b"".join((name, state, output, digest, generation, history)))
    return hasher.digest()


_LENGTHS_5, _LENGTHS_6 = struct.Struct("<5Qqd"), struct.Struct("<6Qqd")
_RECORD_HASH = hashlib.blake2b(digest_size=16, person=b"seqstate-rec/1")  # never updated


_DIGEST_PREFIXES: dict[tuple[bool, bool, int], Any] = {}


def step_digest(
    x: np.ndarray,
    start: bool,
    single: bool,
    series: str | None = None,
    time: np.ndarray | None = None,
) -> bytes:
    """Fingerprint of a step request (``x [k, F]`` float32, its ``start`` and ``single``
    flags, the ``series`` and ``time [k]`` sent), to tell a retry from a different step: a
    record's ``digest``."""
    kind = (start, single, x.shape[0])
    prefix = _DIGEST_PREFIXES.get(kind)
    if prefix is None:
        prefix = hashlib.blake2b(digest_size=16)
        prefix.update(b"%d:%d:%d:" % kind)
        if len(_DIGEST_PREFIXES) < 4096:  # (k is bounded by --max-steps)
            _DIGEST_PREFIXES[kind] = prefix
    h = prefix.copy()  # the hash of the prefix, copied: several times cheaper than anew
    if x.dtype != np.float32 or not x.flags.c_contiguous:
        x = np.ascontiguousarray(x, dtype=np.float32)
    h.update(x.data)  # the buffer itself: no copy
    if series is not None:  # absent: the digest of every request before series were sent
        h.update(b":series:" + series.encode())
    if time is not None:
        h.update(b":time:" + np.ascontiguousarray(time, dtype="<i8").tobytes())
    return h.digest()


def kept_digest(x: np.ndarray, single: bool, time: int | None = None) -> bytes:
    """The digest of a step continued in bulk (``x [1, F]``, no start or series, its
    ``time`` in Unix seconds or None: none sent), kept as numbers: what its request's digest
    was."""
    if time is None:
        return step_digest(x, False, single)
    return step_digest(x, False, single, None, np.array([time], "<i8"))


def kept_answer(y: np.ndarray, single: bool) -> bytes:
    """The JSON answer of a step continued in bulk (``y [O]`` float64, a NaN row: no answer
    yet), kept as numbers: what the engine answered for it (``[O]``, or ``[[O]]`` for a step
    not sent as ``[F]``)."""
    values: list[Any] = y.tolist()
    if not np.isfinite(y).all():
        values = [None] * len(values)
    return jsonio.dumps_finite(values if single else [values])


class RowShape(NamedTuple):
    """The sizes of a row table's rows: the state body's bytes, the raw inputs ``x`` and
    targets kept per answer, the replay window, and whether each kept step's time is kept
    (``timed``: the table takes steps sent with a time as well as without; untimed, only
    steps without)."""

    body_bytes: int
    features: int
    window: int
    outputs: int
    timed: bool = False


class Update(NamedTuple):
    """Write ``record`` for ``stream`` if its stored generation is still ``expected``. (A
    named tuple, not a frozen dataclass: one per step, and building one costs several times
    less.)"""

    stream: str
    expected: bytes | None  # the generation read before applying; None: must be absent
    record: Record


class StateStore(abc.ABC):
    """Stream records keyed by id. Implementations must be safe to call from several threads.

    ``commit`` is the only write on the step path: all updates of one batch become durable in
    one atomic operation, each guarded by a compare-and-set on the generation that was read,
    so a step that raced with another writer (a replica, a DELETE and re-create, the expiry
    sweeper) is never applied on top of a state it did not start from.
    """

    url: str
    #: whether ``commit`` writes somewhere slow (a disk, a network): the server then commits
    #: on its own thread while the next batch is prepared (group commit); an in-process
    #: store commits on the model thread, one thread hop less per batch
    slow_commit: bool = True
    #: why the last write failed (e.g. "disk full"), None once a write succeeded again
    write_problem: str | None = None

    @abc.abstractmethod
    def get_many(self, streams: Sequence[str]) -> list[Record | None]:
        """The records of ``streams`` (None where absent), in order. A record whose fields
        cannot be decoded is returned with an empty checksum (so it is not ``intact``)."""

    @abc.abstractmethod
    def commit(self, updates: Sequence[Update]) -> list[bool]:
        """Durably write every update whose CAS holds; per update, whether it was written."""

    @abc.abstractmethod
    def delete(self, stream: str) -> bool:
        """Remove a stream; whether it existed."""

    @abc.abstractmethod
    def expire(self, now: float, ttl_s: float) -> int:
        """Remove streams idle for more than ``ttl_s`` at unix time ``now``, and streams whose
        ``updated`` lies more than ``ttl_s`` in the future (a skewed or forged clock must not
        keep a stream forever); how many."""

    @abc.abstractmethod
    def count(self) -> int:
        """Number of stored streams (expired ones not yet swept included)."""

    def table(self, layout: Any, shape: RowShape) -> ColumnTable | None:
        """The rows-of-arrays table the engine continues usual steps on in bulk, for streams of
        ``layout`` (the run's row header) with rows of ``shape``; None (the default): every
        step takes the per-stream path."""
        return None

    def commit_with_rows(
        self, updates: Sequence[Update], writes: Sequence[tuple[ColumnTable, ColumnWrite]]
    ) -> tuple[list[bool], list[list[bool]]]:
        """``commit(updates)``, then each table write (distinct streams throughout): per
        update and per write item, whether written. A durable store does it all in one
        transaction (one fsync for the group)."""
        written = self.commit(updates) if updates else []
        return written, [table.write(write) for table, write in writes]

    def ping(self) -> None:  # noqa: B027 - optional hook: health checks of remote stores
        """Raise :class:`StoreError` when the store is unreachable."""

    def check_writable(self) -> None:  # noqa: B027 - optional hook
        """Raise :class:`StoreError` when the store cannot take a write (clears write_problem
        when it can again)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and files."""
