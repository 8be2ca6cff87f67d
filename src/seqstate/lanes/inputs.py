"""Reading what Lanes are built from: sequences, per-step targets, labels (validated once).

Everything here runs at the public boundary of :class:`seqstate.Lanes`: it checks the user's
arrays (shapes, dtypes, NaN/inf, with messages naming the argument) and turns them into a
:data:`Source` (gathers the rows a window needs, nothing more) and a :class:`TargetSpec` (how
``y`` and the loss mask are derived). :func:`read_targets` is the one target parser of both
constructors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch

from seqstate._validate import check_int

# Rows per chunk when scanning a (possibly memory-mapped) array for NaN/inf: bounded memory.
_SCAN_ELEMENTS = 1 << 22


# --------------------------------------------------------------------------------------------
# Input validation (at the public boundary only)
# --------------------------------------------------------------------------------------------


def to_array(value: Any, name: str) -> np.ndarray:
    """NumPy view of ``value`` without copying arrays (a memmap stays a memmap)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as error:
        raise TypeError(
            f"{name} must be an array (numpy array, numpy.memmap or torch tensor); "
            f"received {type(value).__name__} that NumPy cannot turn into one ({error})."
        ) from None


def check_numeric(array: np.ndarray, name: str) -> None:
    if array.dtype.kind not in "biuf":
        raise TypeError(
            f"{name} must hold numbers (bool, int or float); received dtype {array.dtype}. "
            "Convert it first, e.g. with .astype('float32')."
        )


def first_nonfinite(array: np.ndarray) -> int:
    """Index along axis 0 of the first row holding NaN/inf, or -1. Scans in chunks so a memmap
    is never loaded whole."""
    if array.dtype.kind != "f" or len(array) == 0:
        return -1
    per_row = max(1, math.prod(array.shape[1:]))
    chunk = max(1, _SCAN_ELEMENTS // per_row)
    for begin in range(0, len(array), chunk):
        block = np.asarray(array[begin : begin + chunk])
        nonfinite = ~np.isfinite(block.astype(np.float32, copy=False))
        bad = np.asarray(nonfinite.reshape(len(block), -1).any(axis=1))
        if bad.any():
            return begin + int(np.argmax(bad))
    return -1


def first_nonfinite_padded(array: np.ndarray, lengths: np.ndarray) -> tuple[int, int]:
    """(sequence, step) of the first NaN/inf inside the valid part of an (n, L, ...) array."""
    if array.dtype.kind != "f":
        return -1, -1
    n, L = array.shape[:2]
    per_row = max(1, math.prod(array.shape[1:]))
    chunk = max(1, _SCAN_ELEMENTS // per_row)
    for begin in range(0, n, chunk):
        block = np.asarray(array[begin : begin + chunk])
        nonfinite = ~np.isfinite(block.astype(np.float32, copy=False))
        bad = np.asarray(nonfinite.reshape(len(block), L, -1).any(axis=2))
        bad &= np.arange(L)[None, :] < lengths[begin : begin + len(block), None]
        if bad.any():
            where = np.argwhere(bad)[0]
            return begin + int(where[0]), int(where[1])
    return -1, -1


def target_range(spec: TargetSpec, lengths: np.ndarray) -> tuple[float, float] | None:
    """(smallest, largest) of the targets ``spec`` derives from sequences of ``lengths``
    (only the steps that have one: from ``shift`` on for horizon targets), read in bounded
    chunks like the NaN scan; None without targets or when no step has one."""
    if spec.kind is None:
        return None
    if spec.kind == "labels":
        labels = cast(np.ndarray, spec.labels)
        return (float(labels.min()), float(labels.max())) if labels.size else None
    source = cast(Source, spec.source)
    data = source.data
    low, high = math.inf, -math.inf
    if isinstance(source, FlatSource):
        counts = np.asarray(lengths, dtype=np.int64)
        position = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        rows = np.sort((np.repeat(source.offsets, counts) + position)[position >= spec.shift])
        chunk = max(1, _SCAN_ELEMENTS // max(1, source.width))
        for begin in range(0, len(rows), chunk):
            block = np.asarray(data[rows[begin : begin + chunk]])
            low, high = min(low, float(block.min())), max(high, float(block.max()))
    else:
        steps = np.arange(data.shape[1])
        chunk = max(1, _SCAN_ELEMENTS // max(1, data.shape[1] * source.width))
        for begin in range(0, len(data), chunk):
            block = np.asarray(data[begin : begin + chunk]).reshape(-1, data.shape[1], source.width)
            rows = lengths[begin : begin + len(block), None]
            kept = block[(steps[None, :] < rows) & (steps[None, :] >= spec.shift)]
            if kept.size:
                low, high = min(low, float(kept.min())), max(high, float(kept.max()))
    return (low, high) if low <= high else None


def as_rows(array: np.ndarray) -> np.ndarray:
    """(L,) -> (L, 1); (L, D) unchanged."""
    return array.reshape(len(array), 1) if array.ndim == 1 else array


def target_dtype(array: np.ndarray) -> np.dtype:
    # Integer targets are class indices for a cross-entropy loss: keep them integer.
    return np.dtype(np.int64) if array.dtype.kind in "iu" else np.dtype(np.float32)


# --------------------------------------------------------------------------------------------
# Data sources: gather the rows a window needs, nothing more
# --------------------------------------------------------------------------------------------


class FlatSource:
    """All sequences in one ``(M,)`` or ``(M, D)`` array; sequence ``i`` occupies rows
    ``offsets[i] : offsets[i] + lengths[i]``."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray, dtype: np.dtype) -> None:
        self.data = data
        self.offsets = offsets
        self.dtype = dtype
        self.width = 1 if data.ndim == 1 else int(data.shape[1])

    def gather(self, seq: np.ndarray, step: np.ndarray) -> np.ndarray:
        rows = np.asarray(self.data[self.offsets[seq] + step])  # fancy index: reads only these
        return rows.reshape(len(seq), self.width).astype(self.dtype, copy=False)

    def digest(self, hasher: Any, lengths: np.ndarray) -> None:
        """Feed ``hasher`` the valid rows of every sequence, in order (as ``dtype``)."""
        for start, length in zip(self.offsets.tolist(), lengths.tolist(), strict=True):
            hasher.update(_contiguous(self.data[start : start + length], self.dtype))


class PaddedSource:
    """An ``(n, L)`` or ``(n, L, D)`` array; sequence ``i`` is ``data[i, :lengths[i]]``."""

    def __init__(self, data: np.ndarray, dtype: np.dtype) -> None:
        self.data = data
        self.dtype = dtype
        self.width = 1 if data.ndim == 2 else int(data.shape[2])

    def gather(self, seq: np.ndarray, step: np.ndarray) -> np.ndarray:
        rows = np.asarray(self.data[seq, step])
        return rows.reshape(len(seq), self.width).astype(self.dtype, copy=False)

    def digest(self, hasher: Any, lengths: np.ndarray) -> None:
        """Feed ``hasher`` the valid rows of every sequence, in order (as ``dtype``): the
        padding past a sequence's length is not its data."""
        for index, length in enumerate(lengths.tolist()):
            hasher.update(_contiguous(self.data[index, :length], self.dtype))


def _contiguous(rows: Any, dtype: np.dtype) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(rows), dtype=dtype)


Source = FlatSource | PaddedSource


@dataclass(frozen=True)
class TargetSpec:
    """How ``y`` and ``mask`` are derived.

    kind: None (no targets), "shift" (``y[t] = x[t + shift]``), "steps" (per-step array),
    "labels" (one per sequence, counted at its last step).
    """

    kind: str | None
    num_outputs: int
    dtype: np.dtype
    shift: int = 0
    source: Source | None = None
    labels: np.ndarray | None = None  # (n, O)


# --------------------------------------------------------------------------------------------
# Reading sequences and targets
# --------------------------------------------------------------------------------------------


def describe(value: Any) -> str:
    if isinstance(value, np.ndarray | torch.Tensor):
        return f"{type(value).__name__} of shape {tuple(value.shape)}"
    if isinstance(value, list | tuple):
        return f"{type(value).__name__} of {len(value)} items"
    return repr(value)


def read_sequences(sequences: Any, lengths: Any) -> tuple[Source, np.ndarray, int]:
    """Validate ``sequences`` and return (source, lengths (n,), F)."""
    if isinstance(sequences, np.ndarray | torch.Tensor):
        array = to_array(sequences, "sequences")
        if array.dtype == object and array.ndim == 1:
            return _read_sequence_list(list(array), lengths)
        if array.ndim == 3:
            return _read_sequence_array(array, lengths)
        hint = (
            " A 2-D array is ambiguous: for one long series use Lanes.from_series; for n "
            "univariate sequences of equal length pass array[..., None] (shape (n, L, 1))."
            if array.ndim == 2
            else ""
        )
        raise ValueError(
            "sequences must be a list of arrays (L_i,) or (L_i, F), or one array (n, L, F); "
            f"received an array of shape {tuple(array.shape)}.{hint}"
        )
    if isinstance(sequences, list | tuple):
        return _read_sequence_list(list(sequences), lengths)
    raise TypeError(
        "sequences must be a list of arrays (L_i,) or (L_i, F), or one array (n, L, F); "
        f"received {type(sequences).__name__}."
    )


def _read_sequence_list(items: list[Any], lengths: Any) -> tuple[Source, np.ndarray, int]:
    if lengths is not None:
        raise TypeError(
            "lengths applies only to a 3-D sequences array (n, L, F) padded at the end; a list "
            "of sequences already carries each length. Drop lengths."
        )
    if not items:
        raise ValueError("sequences is empty; give at least one sequence.")
    arrays: list[np.ndarray] = []
    num_features = -1
    for i, item in enumerate(items):
        array = to_array(item, f"sequences[{i}]")
        if array.ndim not in (1, 2):
            raise ValueError(
                f"sequences[{i}] must have shape (L,) or (L, F); received shape "
                f"{tuple(array.shape)}."
            )
        check_numeric(array, f"sequences[{i}]")
        if len(array) == 0:
            raise ValueError(
                f"sequences[{i}] is empty (shape {tuple(array.shape)}); every sequence needs at "
                "least one step. Drop empty sequences first."
            )
        width = 1 if array.ndim == 1 else int(array.shape[1])
        if num_features < 0:
            num_features = width
        elif width != num_features:
            raise ValueError(
                f"sequences[{i}] has {width} features but sequences[0] has {num_features}; "
                f"received shape {tuple(array.shape)}. Every sequence needs the same features "
                "(same columns, in the same order)."
            )
        arrays.append(as_rows(array))
    if num_features == 0:
        raise ValueError("sequences have 0 features (shape (L, 0)); give at least one feature.")
    seq_lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    # One float32 copy of the data (proportional to it, not to the padded layout).
    flat = np.concatenate(arrays).astype(np.float32, copy=False)
    offsets = np.concatenate([[0], np.cumsum(seq_lengths)[:-1]]).astype(np.int64)
    bad = first_nonfinite(flat)
    if bad >= 0:
        i = int(np.searchsorted(offsets, bad, side="right") - 1)
        raise ValueError(
            f"sequences[{i}] holds NaN or inf at step {bad - offsets[i]} (after conversion to "
            "float32). Fill or drop missing values first."
        )
    return FlatSource(flat, offsets, np.dtype(np.float32)), seq_lengths, num_features


def _read_sequence_array(array: np.ndarray, lengths: Any) -> tuple[Source, np.ndarray, int]:
    check_numeric(array, "sequences")
    n, L, F = (int(s) for s in array.shape)
    if n == 0 or L == 0 or F == 0:
        raise ValueError(
            f"sequences array (n, L, F) must have n, L, F >= 1; received shape {(n, L, F)}."
        )
    if lengths is None:
        seq_lengths = np.full(n, L, dtype=np.int64)
    else:
        given = to_array(lengths, "lengths")
        if given.shape != (n,) or given.dtype.kind not in "iu":
            raise ValueError(
                f"lengths must be {n} ints, one per row of sequences {(n, L, F)}; received "
                f"{given.dtype} array of shape {tuple(given.shape)}."
            )
        seq_lengths = given.astype(np.int64)
        wrong = np.flatnonzero((seq_lengths < 1) | (seq_lengths > L))
        if wrong.size:
            i = int(wrong[0])
            raise ValueError(
                f"lengths[{i}]={seq_lengths[i]} must be between 1 and L={L} (sequences[{i}] "
                "would be empty or longer than its row). Drop empty sequences first."
            )
    i, t = first_nonfinite_padded(array, seq_lengths)
    if i >= 0:
        raise ValueError(
            f"sequences[{i}] holds NaN or inf at step {t}. Fill or drop missing values first "
            "(or give lengths= if the row is padded with NaN after its end)."
        )
    return PaddedSource(array, np.dtype(np.float32)), seq_lengths, F


_TARGET_KINDS = (
    "targets must be 'next', an int horizon k >= 1, per-step arrays (a list of (L_i,) or "
    "(L_i, O), or an array (n, L) / (n, L, O)), or None"
)
_SERIES_TARGET_KINDS = (
    "targets must be 'next', an int horizon >= 1, an array (N,) or (N, O), or None"
)


def read_targets(
    targets: Any,
    source: Source,
    seq_lengths: np.ndarray,
    num_features: int,
    *,
    series: bool = False,
) -> TargetSpec:
    """The one target parser of both Lanes constructors.

    ``None`` (no targets), ``"next"`` (= horizon 1) and an int horizon ``k`` mean the same for
    both; per-step arrays follow the shape of the input: one array ``(N,)``/``(N, O)`` for a
    series (``series=True``: ``source`` holds its lane segments, ``seq_lengths`` their
    lengths), one per sequence otherwise.
    """
    kinds = _SERIES_TARGET_KINDS if series else _TARGET_KINDS
    if targets is None:
        return TargetSpec(None, 0, np.dtype(np.float32))
    if isinstance(targets, str):
        if targets != "next":
            raise ValueError(f"{kinds}; received the string {targets!r}.")
        targets = 1
    if isinstance(targets, int | np.integer) and not isinstance(targets, bool):
        k = check_int(targets, "targets", 1, "An int target is the horizon k: y[t] = x[t+k].")
        N = int(seq_lengths.sum())
        if series and k >= N:
            raise ValueError(
                f"target horizon k={k} leaves no targets in a series of {N} steps; use "
                f"k < {N}, or targets=None for prediction only."
            )
        return TargetSpec("shift", num_features, np.dtype(np.float32), shift=k, source=source)
    if not isinstance(targets, np.ndarray | torch.Tensor | list | tuple):
        raise TypeError(f"{kinds}; received {type(targets).__name__}.")
    if series:
        segments = cast(FlatSource, source)  # from_series always cuts one flat array
        return _read_series_targets(targets, segments.offsets, int(seq_lengths.sum()))
    if isinstance(targets, np.ndarray | torch.Tensor):
        array = to_array(targets, "targets")
        if array.ndim == 1 and array.dtype != object:
            raise ValueError(
                f"targets has shape {tuple(array.shape)}, one value per sequence; per-sequence "
                "targets go in labels=..., e.g. Lanes.from_sequences(seqs, labels=y, ...)."
            )
        if array.ndim in (2, 3) and isinstance(source, PaddedSource):
            return _read_padded_targets(array, seq_lengths, source.data.shape[1])
        if array.ndim in (2, 3) or (array.dtype == object and array.ndim == 1):
            targets = list(array)
        else:
            raise ValueError(f"{_TARGET_KINDS}; received an array of shape {tuple(array.shape)}.")
    n = len(seq_lengths)
    if len(targets) != n:
        raise ValueError(
            f"targets has {len(targets)} items but there are {n} sequences; give one per-step "
            "target array per sequence, in the same order."
        )
    arrays: list[np.ndarray] = []
    width = -1
    for i, item in enumerate(targets):
        array = to_array(item, f"targets[{i}]")
        if array.ndim == 0:
            raise ValueError(
                f"targets[{i}] is a single value {array.item()!r}, not a per-step array; for one "
                "target per sequence pass labels=... instead of targets."
            )
        if array.ndim > 2 or len(array) != seq_lengths[i]:
            raise ValueError(
                f"targets[{i}] must have shape ({seq_lengths[i]},) or ({seq_lengths[i]}, O) to "
                f"match sequences[{i}] of {seq_lengths[i]} steps; received shape "
                f"{tuple(array.shape)}."
            )
        check_numeric(array, f"targets[{i}]")
        this_width = 1 if array.ndim == 1 else int(array.shape[1])
        if width < 0:
            width = this_width
        elif this_width != width:
            raise ValueError(
                f"targets[{i}] has {this_width} outputs but targets[0] has {width}; every "
                "sequence's targets need the same number of outputs O."
            )
        arrays.append(as_rows(array))
    if width == 0:
        raise ValueError("targets have 0 outputs (shape (L, 0)); use targets=None for no targets.")
    integer_or_not = {a.dtype.kind in "iu" for a in arrays}
    if len(integer_or_not) > 1:
        raise TypeError(
            "targets mix integer and float arrays; make them all integer (class indices) or all "
            "float, e.g. with .astype('float32')."
        )
    dtype = target_dtype(arrays[0])
    flat = np.concatenate(arrays).astype(dtype, copy=False)
    offsets = np.concatenate([[0], np.cumsum(seq_lengths)[:-1]]).astype(np.int64)
    bad = first_nonfinite(flat)
    if bad >= 0:
        i = int(np.searchsorted(offsets, bad, side="right") - 1)
        raise ValueError(
            f"targets[{i}] holds NaN or inf at step {bad - offsets[i]}. Fill it, or for "
            "unknown targets use labels/None and mask in the loss."
        )
    return TargetSpec("steps", width, dtype, source=FlatSource(flat, offsets, dtype))


def _read_padded_targets(array: np.ndarray, seq_lengths: np.ndarray, L: int) -> TargetSpec:
    n = len(seq_lengths)
    if array.shape[:2] != (n, L) or (array.ndim == 3 and array.shape[2] == 0):
        raise ValueError(
            f"targets must have shape ({n}, {L}) or ({n}, {L}, O) to match sequences "
            f"{(n, L)}; received shape {tuple(array.shape)}."
        )
    check_numeric(array, "targets")
    i, t = first_nonfinite_padded(array, seq_lengths)
    if i >= 0:
        raise ValueError(f"targets[{i}] holds NaN or inf at step {t}. Fill it first.")
    dtype = target_dtype(array)
    width = 1 if array.ndim == 2 else int(array.shape[2])
    return TargetSpec("steps", width, dtype, source=PaddedSource(array, dtype))


def read_labels(labels: Any, n: int) -> TargetSpec:
    array = to_array(labels, "labels")
    if array.ndim not in (1, 2) or len(array) != n or (array.ndim == 2 and not array.shape[1]):
        raise ValueError(
            f"labels must have shape ({n},) or ({n}, O), one label per sequence; received "
            f"shape {tuple(array.shape)}."
        )
    check_numeric(array, "labels")
    bad = first_nonfinite(array)
    if bad >= 0:
        raise ValueError(f"labels[{bad}] is NaN or inf. Fill it or drop that sequence.")
    dtype = target_dtype(array)
    rows = as_rows(np.asarray(array)).astype(dtype)
    return TargetSpec("labels", int(rows.shape[1]), dtype, labels=rows)


def _read_series_targets(target: Any, starts: np.ndarray, N: int) -> TargetSpec:
    """Per-step targets of one series of ``N`` steps cut into segments at ``starts``."""
    array = to_array(target, "targets")
    if array.ndim not in (1, 2) or len(array) != N or (array.ndim == 2 and not array.shape[1]):
        raise ValueError(
            f"targets must have shape ({N},) or ({N}, O) to match series of {N} steps; "
            f"received shape {tuple(array.shape)}."
        )
    check_numeric(array, "targets")
    bad = first_nonfinite(array)
    if bad >= 0:
        raise ValueError(f"targets holds NaN or inf at step {bad}. Fill or mask it first.")
    dtype = target_dtype(array)
    width = 1 if array.ndim == 1 else int(array.shape[1])
    return TargetSpec("steps", width, dtype, source=FlatSource(array, starts, dtype))
