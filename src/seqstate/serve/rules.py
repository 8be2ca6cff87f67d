"""The sequence rules of a stream, as one pure function (no I/O, no model).

A stream's record remembers its last applied step ``seq`` and that step's answer. A request
for step ``seq`` (with ``start`` and a body fingerprint ``digest``) is decided like this::

    stored record corrupt (checksum mismatch, undecodable fields):
        start=true                -> apply from a zero state        (overwrites the bad record)
        otherwise                 -> 409 state_incompatible
    stream absent (never created, ended, or idle past the TTL):
        start=true, any seq >= 1  -> apply from a zero state        (a stream (re)starts at any seq)
        seq == 1                  -> apply from a zero state
        otherwise                 -> 404 stream_not_found            (expected_seq 1)
    stream present, last applied L:
        seq == L + 1              -> apply (from zero if start=true)
        seq == L, same body       -> replay: the stored answer, nothing applied
        seq == L, different body  -> 409 seq_conflict                (expected_seq L + 1)
        seq >  L + 1              -> 409 seq_gap                     (expected_seq L + 1)
        seq <  L, answer kept     -> replay (same body) or 409 seq_conflict
        seq <  L, older           -> 409 seq_stale                   (expected_seq L + 1)

The answers of the last W steps are kept (the replay window: W - 1 in ``record.history``),
so a client that had several steps of a stream in flight when its connection dropped gets
every one of them replayed.

Numbering never goes back for a live stream, even on ``start``: a delayed duplicate of an old
request can then never be mistaken for a new one. To number from 1 again, end the stream
(DELETE) first.
"""

from __future__ import annotations

import dataclasses

from seqstate.serve.stores.base import Record

__all__ = ["Apply", "Decision", "Reject", "Replay", "decide", "is_expired"]


@dataclasses.dataclass(frozen=True)
class Apply:
    from_zero: bool  # start from a zero state (new stream or start=true)
    expected: bytes | None  # the stored generation the commit must still find; None: absent
    creates: bool  # the stream is absent (or expired): this step adds a live stream


@dataclasses.dataclass(frozen=True)
class Replay:
    output: bytes  # the stored answer (JSON of y)


@dataclasses.dataclass(frozen=True)
class Reject:
    status: int  # HTTP status
    code: str  # machine-readable error code
    message: str
    expected_seq: int  # the seq the server would apply next


Decision = Apply | Replay | Reject


def is_expired(record: Record, now: float, ttl_s: float) -> bool:
    """Idle past the TTL, or ``updated`` more than the TTL in the future (a skewed or forged
    clock must not make a stream immortal)."""
    return ttl_s > 0 and abs(now - record.updated) > ttl_s


def decide(
    record: Record | None,
    *,
    stream: str,
    seq: int,
    start: bool,
    digest: bytes,
    now: float,
    ttl_s: float,
) -> Decision:
    """What to do with step ``seq`` of ``stream`` whose stored record is ``record``."""
    # An expired or corrupt record is absent for the rules, but the CAS still names its
    # generation so that re-creating the stream overwrites exactly that record.
    stored = record.generation if record is not None else None
    if record is not None and not record.intact(stream):
        if start:
            return Apply(from_zero=True, expected=stored, creates=False)
        return Reject(
            409,
            "state_incompatible",
            "the stored record of this stream is damaged (checksum mismatch or undecodable "
            "fields); nothing was applied. End the stream (DELETE) or restart it with "
            "start=true",
            1,
        )
    if record is not None and is_expired(record, now, ttl_s):
        record = None
    if record is None:
        if start or seq == 1:
            return Apply(from_zero=True, expected=stored, creates=True)
        return Reject(
            404,
            "stream_not_found",
            f"stream does not exist (never started, ended, or expired after the TTL); "
            f"received seq {seq}: send seq 1, or start=true to (re)start it at any seq",
            1,
        )
    last = record.seq
    if seq == last + 1:
        return Apply(from_zero=start, expected=record.generation, creates=False)
    kept = (record.digest, record.output) if seq == last else record.earlier(seq)
    if kept is not None:
        if kept[0] == digest:
            return Replay(kept[1])
        return Reject(
            409,
            "seq_conflict",
            f"step {seq} was already applied with a different body; a retry must repeat the "
            f"request exactly. The next seq is {last + 1}",
            last + 1,
        )
    if seq > last:
        return Reject(
            409,
            "seq_gap",
            f"expected seq {last + 1} (seq counts requests, one per request however many steps "
            f"it holds); received {seq}. Send the request numbered {last + 1} next",
            last + 1,
        )
    return Reject(
        409,
        "seq_stale",
        f"step {seq} is older than the answers kept for this stream (the last applied is "
        f"{last}); expected seq {last + 1}",
        last + 1,
    )
