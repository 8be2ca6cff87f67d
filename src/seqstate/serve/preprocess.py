"""A served stream is a run's step function: its stored row and the times its steps carry.

The server runs :class:`seqstate.recipe.step.RunStep` (``seqstate predict`` runs the same
function), so preprocessing is state like the recurrent state. What a stream's record keeps::

    row = header                         the run's layout (names, dtypes, shapes): a row of
                                         another run does not fit (409 state_incompatible)
          u16 length + series (UTF-8)    the series the stream was bound to on its first step
                                         (0xFFFF: none)
          transform tensors, one row     steps, time, each member's history/location/scale/...
          member states, one row each    the rows :class:`seqstate.serve.codec.StateCodec`
                                         writes, without their header

Encoding and decoding a batch is a few NumPy copies, like the model-state codec.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from seqstate.recipe.calendar import check_date_range
from seqstate.recipe.step import RunState, RunStep
from seqstate.recipe.step.state import as_array, entry_of
from seqstate.serve.codec import StateCodec
from seqstate.serve.errors import ApiError

__all__ = ["RunRowCodec", "model_step", "parse_step_times", "template_series"]

_MAGIC = b"seqstate-run-row/1 "
_NO_SERIES = 0xFFFF
_MAX_SERIES_BYTES = 0xFFFE
_LENGTH = struct.Struct("<H")
_LABELS_KEPT = 65536


def model_step(model: torch.nn.Module) -> RunStep:
    """A bare :class:`seqstate.SequenceModel` as a run without preprocessing (inputs ``x0..``,
    outputs ``y0..``): what the server serves when handed a model rather than a run."""
    from seqstate.recipe.table import Columns

    task: Any = getattr(getattr(model, "config", None), "task", "regression")
    columns = Columns(
        features=tuple(f"x{i}" for i in range(int(model.input_size))),  # type: ignore[arg-type]
        targets=tuple(f"y{j}" for j in range(int(model.output_size))),  # type: ignore[arg-type]
        task=task,
    )
    return RunStep([(model, None, ())], columns)


def template_series(function: RunStep) -> Any:
    """A series id every member can bind (for the row layout): a trained one, or None."""
    for member in function.members:
        scaling = getattr(member, "scaling", None)
        if scaling is not None and scaling.config.method == "series" and len(scaling.ids):
            return scaling.ids[0]
    return None


class RunRowCodec:
    """Encodes and decodes stream rows (series + one :class:`RunState` row) of one run."""

    def __init__(self, template: RunState) -> None:
        if template.batch_size != 1:
            raise ValueError(f"template must be a batch-1 RunState; received {template.batch_size}")
        #: per transform field: its name, torch dtype, shape and stored (little-endian) dtype
        self.transforms = [
            (
                name,
                t.dtype,
                tuple(t.shape[1:]),
                np.dtype(str(t.dtype).removeprefix("torch.")).newbyteorder("<"),
            )
            for name, t in template.transforms.items()
        ]
        self.models = [StateCodec(state) for state in template.models]
        spec = {
            "transforms": [[n, str(d), list(s)] for n, d, s, _ in self.transforms],
            "models": [codec.header.decode().strip() for codec in self.models],
        }
        self.header = _MAGIC + json.dumps(spec, separators=(",", ":")).encode() + b"\n"
        self.transform_bytes = [
            int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
            for _, _, shape, np_dtype in self.transforms
        ]
        self.model_bytes = [c.row_bytes - len(c.header) for c in self.models]
        self.body_bytes = sum(self.transform_bytes) + sum(self.model_bytes)
        self._header_array = np.frombuffer(self.header, np.uint8)
        #: where each row body holds its ``time`` field (one int64), or None: no such field
        self._time_at: int | None = None
        start = 0
        for (name, _, shape, stored), size in zip(
            self.transforms, self.transform_bytes, strict=True
        ):
            if name == "time" and not shape and stored == np.dtype("<i8"):
                self._time_at = start
            start += size
        self._labels: dict[str | None, bytes] = {}  # series -> its stored label

    def _series_end(self, blob: bytes) -> int | None:
        start = len(self.header)
        if len(blob) < start + 2 or not blob.startswith(self.header):
            return None
        (length,) = _LENGTH.unpack_from(blob, start)
        end = start + 2 + (0 if length == _NO_SERIES else length)
        return end if len(blob) == end + self.body_bytes else None

    def fits(self, blob: bytes) -> bool:
        """Whether ``blob`` is a row of this run (else: that stream's 409)."""
        return self._series_end(blob) is not None

    def read_label(self, blob: bytes) -> tuple[bool, str | None]:
        """``(fits, series)`` of ``blob`` in one read (series is None when it does not fit
        or was bound to none): the step path asks both for every stored row."""
        end = self._series_end(blob)
        if end is None:
            return False, None
        (length,) = _LENGTH.unpack_from(blob, len(self.header))
        if length == _NO_SERIES:
            return True, None
        return True, blob[len(self.header) + 2 : end].decode()

    def series(self, blob: bytes) -> str | None:
        """The series a fitting row was bound to."""
        start = len(self.header)
        (length,) = _LENGTH.unpack_from(blob, start)
        if length == _NO_SERIES:
            return None
        return blob[start + 2 : start + 2 + length].decode()

    def _label(self, bound: str | None) -> bytes:
        label = self._labels.get(bound)
        if label is None:
            if bound is None:
                label = _LENGTH.pack(_NO_SERIES)
            else:
                raw = bound.encode()
                if len(raw) > _MAX_SERIES_BYTES:
                    raise ValueError(f"series id of {len(raw)} bytes is too long to store")
                label = _LENGTH.pack(len(raw)) + raw
            if len(self._labels) >= _LABELS_KEPT:  # a bounded cache: series ids come from clients
                self._labels.clear()
            self._labels[bound] = label
        return label

    def encode(self, state: RunState, series: Sequence[str | None]) -> list[bytes]:
        """One row per batch row of ``state``, bound to ``series[row]``. The rows of one
        label length are written as one array (header, labels, bodies) and sliced."""
        n = state.batch_size
        table = self.encode_bodies(state)
        labels = [self._label(bound) for bound in series]
        by_length = _by_length(labels)
        rows: list[bytes] = [b""] * n
        head = len(self.header)
        for length, members in by_length.items():
            count, width = len(members), head + length + self.body_bytes
            block = np.empty((count, width), dtype=np.uint8)
            block[:, :head] = self._header_array
            joined = b"".join([labels[row] for row in members])
            block[:, head : head + length] = np.frombuffer(joined, np.uint8).reshape(count, length)
            block[:, head + length :] = table if count == n else table[members]
            data = block.tobytes()
            for k, row in enumerate(members):
                rows[row] = data[k * width : (k + 1) * width]
        return rows

    def encode_bodies(self, state: RunState) -> np.ndarray:
        """The bodies of :meth:`encode`'s rows (no header, no label): ``[n, body_bytes]``
        uint8, one row per batch row of ``state``."""
        n = state.batch_size
        columns = []
        transforms = state.transforms
        for name, _, _, stored in self.transforms:
            # the field as the step left it (an array, floats or a tensor): reading a fast
            # step's field as a tensor would make one per field only to read it back
            entry = entry_of(transforms, name)
            if isinstance(entry, torch.Tensor):
                entry = entry.detach().cpu()
            array = as_array(entry)
            if array.dtype != stored or not array.flags.c_contiguous:
                array = np.ascontiguousarray(array, dtype=stored)
            # (concatenate copies it into the rows: no copy of its own first)
            columns.append(array.reshape(n, -1).view(np.uint8))
        for codec, model_state in zip(self.models, state.models, strict=True):
            columns.append(codec.encode_rows(model_state))
        return np.concatenate(columns, axis=1) if columns else np.zeros((n, 0), np.uint8)

    def body_times(self, bodies: np.ndarray) -> np.ndarray:
        """The ``time`` transform (each row's last step's time, Unix seconds; ``NO_TIME``:
        none yet) of row bodies ``[n, body_bytes]``: ``[n]`` int64, read without decoding
        the rest."""
        at = self._time_at
        if at is None:
            raise ValueError(
                f"the run's rows hold no time of one int64 per row: {self.header[:80]!r}"
            )
        return bodies[:, at : at + 8].copy().view("<i8").reshape(-1).astype(np.int64, copy=False)

    def decode(self, blobs: Sequence[bytes]) -> RunState:
        """The batch state of ``blobs`` (each ``fits``): the rows of one length are read as
        one array (checked against the header and their label lengths at once)."""
        n = len(blobs)
        bodies = np.empty((n, self.body_bytes), dtype=np.uint8)
        by_length = _by_length(blobs)
        head = len(self.header)
        for width, members in by_length.items():
            count, length = len(members), width - head - 2 - self.body_bytes
            joined = b"".join([blobs[i] for i in members])
            block = np.frombuffer(joined, np.uint8).reshape(count, width) if length >= 0 else None
            ok = np.zeros(count, dtype=bool)
            if block is not None:  # each row: this run's header, a label as long as its room
                low, high = block[:, head].astype(np.int64), block[:, head + 1].astype(np.int64)
                stored = low | (high << 8)
                ok = (stored == length) | ((stored == _NO_SERIES) & (length == 0))
                ok &= (block[:, :head] == self._header_array).all(axis=1)
            if block is None or not bool(ok.all()):
                bad = members[int(np.argmin(ok))]
                raise ValueError(f"row {bad} is not a row of this run (check fits() first)")
            bodies[members if count < n else slice(None)] = block[:, width - self.body_bytes :]
        return self.decode_bodies(bodies)

    def decode_bodies(self, bodies: np.ndarray) -> RunState:
        """The batch state of row bodies ``[n, body_bytes]`` uint8 (rows without their
        header and label, as :meth:`encode_bodies` writes them)."""
        n = bodies.shape[0]
        transforms: dict[str, torch.Tensor] = {}
        start = 0
        for (name, _, shape, stored), size in zip(
            self.transforms, self.transform_bytes, strict=True
        ):
            # a copy of the field's bytes, aligned and the array's own (rows of a body may be
            # read from a shared buffer), read in the native byte order
            values = bodies[:, start : start + size].copy().view(stored).reshape(n, *shape)
            transforms[name] = torch.from_numpy(
                values if stored.isnative else values.astype(stored.newbyteorder("="))
            )
            start += size
        models = []
        for codec, size in zip(self.models, self.model_bytes, strict=True):
            models.append(codec.decode_rows(np.ascontiguousarray(bodies[:, start : start + size])))
            start += size
        return RunState(transforms, tuple(models))


def _by_length(items: Sequence[bytes]) -> dict[int, list[int]]:
    """The indices of ``items`` by their length (one group in the usual batch: its streams'
    series ids have one length, or none)."""
    lengths = list(map(len, items))
    if len(set(lengths)) == 1:
        return {lengths[0]: list(range(len(items)))}
    groups: dict[int, list[int]] = {}
    for i, length in enumerate(lengths):
        groups.setdefault(length, []).append(i)
    return groups


def parse_step_times(values: Any, steps: int) -> np.ndarray:
    """A request's ``time`` (one value, or one per step) -> ``[steps]`` int64 Unix seconds.

    Values are Unix seconds (integers) or dates written as the CSV reader reads them
    (``2024-01-31``, ``2024-01-31T12:00:00``, ``2024-01``, ``2024 Jan``, ``2024Q1``), of dates
    between 1677-09-21 and 2262-04-11 (what a calendar stamps; another integer is in other
    units, or past int64).

    Raises:
        ApiError 422 ``invalid_time``: wrong count, unreadable, out of range, or not
        increasing.
    """
    items = values if isinstance(values, list) else [values]
    if len(items) != steps:
        raise ApiError(
            422,
            "invalid_time",
            f"time must hold one value per step: {steps}; received {len(items)} (send one "
            "time for a one-step x, a list for k steps)",
        )
    if all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        try:  # (Python ints: one past int64 would raise OverflowError in numpy)
            check_date_range(min(items), max(items), "time")
        except ValueError as error:
            raise ApiError(422, "invalid_time", str(error)) from None
        seconds = np.asarray(items, dtype=np.int64)
    elif all(isinstance(v, str) for v in items):
        from seqstate.recipe.calendar import parse_times

        try:
            stamps = parse_times(items, "time")
        except ValueError as error:
            raise ApiError(422, "invalid_time", str(error)) from None
        seconds = stamps.astype("datetime64[s]").astype(np.int64)
    else:
        raise ApiError(
            422,
            "invalid_time",
            "time must be Unix seconds (integers) or dates as text (like 2024-01-31T12:00:00), "
            f"one kind for the whole request; received {items[:3]!r}",
        )
    if steps > 1 and not bool((np.diff(seconds) > 0).all()):
        t = int(np.flatnonzero(np.diff(seconds) <= 0)[0]) + 1
        raise ApiError(
            422,
            "invalid_time",
            f"time must increase from step to step (as a table's rows do); step {t} is at "
            f"{items[t]!r}, not after step {t - 1} at {items[t - 1]!r}",
        )
    return seconds


def iso_times(seconds: Sequence[int]) -> list[str]:
    """Unix seconds -> ``2024-01-31T12:00:00`` (the form the server reads back)."""
    return [str(np.datetime64(int(s), "s")) for s in seconds]
