"""The compact binary WebSocket frame: many steps of many streams, numbers as float32.

A binary WebSocket message carries the same thing as a JSON ``{"op": "steps", "steps":
[...]}`` frame, with the numbers as one little-endian float32 array instead of JSON text::

    bytes 0..3     b"SQS1"            magic and format version
    bytes 4..7     uint32 LE  H       length of the header
    bytes 8..8+H   UTF-8 JSON header  (below)
    bytes 8+H..    float32 LE array   C order, shape = header["shape"]

Steps (client -> server); ``n`` items of ``k`` steps of the run's ``F`` raw inputs each::

    {"op": "steps", "stream": [n ids], "seq": [n ints], "shape": [n, k, F],
     "start": [n bools]?, "series": [n strings or null]?, "time": [n lists of k]?}
    array: x [n, k, F]

Answers (server -> client), in the order of the items::

    {"op": "steps", "stream": [n ids], "seq": [n ints], "status": [n ints],
     "replayed": [n bools], "errors": {"i": {"code", "message", ...}}, "shape": [n, k, O]}
    array: y [n, k, O]; NaN where an item has no answer (its status is not 200, or a
    differenced stream's first steps, which JSON answers with null)

With ``k == 1`` an item is the step ``x: [F]`` of a JSON frame (same digest, so a retry may
switch encodings). No pickle, nothing but JSON and raw float32: any language reads it with a
JSON parser and a float array view (``numpy.frombuffer(..., "<f4")``).
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from seqstate.serve import jsonio
from seqstate.serve.errors import ApiError

__all__ = ["MAGIC", "BinarySteps", "decode", "decode_steps", "encode", "encode_answers"]

MAGIC = b"SQS1"
_LENGTH = struct.Struct("<I")
_FLOAT = np.dtype("<f4")


@dataclasses.dataclass(frozen=True)
class BinarySteps:
    """A decoded binary steps frame: ``x [n, k, F]`` float32 and the per-item fields."""

    stream: list[str]
    seq: list[int]
    x: np.ndarray  # [n, k, F] float32
    start: list[bool]
    series: list[str | None]
    time: list[Any] | None  # n lists of k times (Unix seconds or text), or None


def encode(header: dict[str, Any], array: np.ndarray) -> bytes:
    """``MAGIC + len + JSON header + float32 LE array`` (``header["shape"]`` is set here)."""
    data = np.ascontiguousarray(array, dtype=_FLOAT)
    # the header holds ids, ints, bools and error texts, never a float: no NaN to refuse
    text = jsonio.dumps_finite({**header, "shape": list(data.shape)})
    return MAGIC + _LENGTH.pack(len(text)) + text + data.tobytes()


def decode(raw: bytes) -> tuple[dict[str, Any], np.ndarray]:
    """``(header, array)`` of a binary frame; ApiError 400 ``invalid_frame`` when malformed."""
    if len(raw) < 8 or raw[:4] != MAGIC:
        raise _invalid(
            f"a binary frame must start with {MAGIC!r} and the header length; received "
            f"{bytes(raw[:4])!r}"
        )
    (length,) = _LENGTH.unpack_from(raw, 4)
    if 8 + length > len(raw):
        raise _invalid(f"the header length {length} runs past the frame ({len(raw)} bytes)")
    try:
        header = jsonio.loads(raw[8 : 8 + length])
    except (ValueError, RecursionError):
        raise _invalid("the header is not valid JSON") from None
    if not isinstance(header, dict):
        raise _invalid(f"the header must be a JSON object; received a {type(header).__name__}")
    shape = header.get("shape")
    if not (
        isinstance(shape, list)
        and len(shape) == 3
        and all(type(s) is int and s >= 0 for s in shape)
    ):
        raise _invalid(f"header.shape must be [n, k, F] (ints >= 0); received {shape!r}")
    count = shape[0] * shape[1] * shape[2]
    body = memoryview(raw)[8 + length :]
    if len(body) != 4 * count:
        raise _invalid(
            f"the array must hold n*k*F = {count} float32 values ({4 * count} bytes) for shape "
            f"{shape}; received {len(body)} bytes"
        )
    return header, np.frombuffer(body, dtype=_FLOAT).reshape(shape)


#: The keys of a client's steps frame header.
_STEPS_KEYS = frozenset({"op", "stream", "seq", "shape", "start", "series", "time"})


def decode_steps(raw: bytes, features: int, max_items: int, max_steps: int) -> BinarySteps:
    """A client's binary steps frame, checked (ApiError 400/413/422 naming the field)."""
    header, x = decode(raw)
    n, k, f = x.shape
    if header.get("op") != "steps":
        raise _invalid(f'header.op must be "steps"; received {header.get("op")!r}')
    unknown = sorted(set(header) - _STEPS_KEYS)
    if unknown:  # (as a JSON frame's unknown field: a misspelt "serie" is not dropped)
        raise _invalid(
            f"header.{unknown[0]} is not a steps frame's key; the keys are {sorted(_STEPS_KEYS)}"
        )
    if n < 1 or k < 1:
        raise ApiError(422, "invalid_request", f"shape must have n >= 1 and k >= 1; got {[n, k]}")
    if n > max_items:
        raise ApiError(
            413, "too_many_streams", f"a frame may hold at most {max_items} items; received {n}"
        )
    if k > max_steps:
        raise ApiError(
            413, "too_many_steps", f"an item may hold at most {max_steps} steps; received {k}"
        )
    if f != features:
        raise ApiError(
            422,
            "invalid_x",
            f"shape[2] must be the run's {features} raw inputs (GET /v1/model); received {f}",
        )
    stream = _column(header, "stream", n, str, required=True)
    seq = _column(header, "seq", n, int, required=True)
    start = _column(header, "start", n, bool) or [False] * n
    series = _column(header, "series", n, str, nullable=True) or [None] * n
    time = header.get("time")
    if time is not None and (not isinstance(time, list) or len(time) != n):
        raise _invalid(f"header.time must hold n={n} lists of k={k} times; received {time!r:.80}")
    return BinarySteps(stream, seq, x, start, series, time)


def _column(
    header: dict[str, Any],
    name: str,
    n: int,
    kind: type,
    *,
    required: bool = False,
    nullable: bool = False,
) -> list[Any]:
    values = header.get(name)
    if values is None:
        if required:
            raise _invalid(f"header.{name} is required: one {kind.__name__} per item")
        return []
    ok = isinstance(values, list) and len(values) == n
    if ok:
        # bool is an int in Python: a seq must be a real int, a start a real bool (the
        # types of all values at once: a frame holds thousands)
        types = set(map(type, values))
        if nullable:
            types.discard(type(None))
        ok = types <= {kind}
    if not ok:
        raise _invalid(
            f"header.{name} must hold n={n} values of type {kind.__name__}; received {values!r:.80}"
        )
    return values


def encode_answers(
    streams: Sequence[str | None],
    seqs: Sequence[int | None],
    results: Sequence[tuple[int, bytes | None, bool, dict[str, Any] | None]],
    steps: int,
    outputs: int,
) -> bytes:
    """The answer frame: per item ``(status, JSON of y or None, replayed, error body)``."""
    y = np.full((len(results), steps, outputs), np.nan, dtype=_FLOAT)
    errors: dict[str, Any] = {}
    answered, texts = [], []
    for i, (_, output, _, error) in enumerate(results):
        if output is not None:
            answered.append(i)
            texts.append(output)
        if error is not None:
            errors[str(i)] = error
    if answered:  # every answer parsed in one call: [answer, answer, ...]; null -> nan
        parsed = jsonio.loads(b"[" + b",".join(texts) + b"]")
        try:  # answers nest alike ([O] for one step, [k][O] for k)
            values = np.asarray(parsed, dtype=np.float64)
        except ValueError:  # not alike (one step sent as [[x]]): each answer alone
            values = np.stack([np.asarray(v, dtype=np.float64).reshape(-1) for v in parsed])
        y[answered] = values.reshape(len(answered), steps, outputs)
    header = {
        "op": "steps",
        "stream": list(streams),
        "seq": list(seqs),
        "status": [r[0] for r in results],
        "replayed": [r[2] for r in results],
        "errors": errors,
    }
    return encode(header, y)


def _invalid(message: str) -> ApiError:
    return ApiError(400, "invalid_frame", message)
