"""Lanes: lay sequences out as B parallel lanes cut into windows of T steps.

A stateful recurrent model carries each batch row's hidden state from one batch to the next, so
row ``i`` of window ``k + 1`` must continue row ``i`` of window ``k``. :class:`Lanes` builds that
layout once, correctly, and yields :class:`Window` batches of shape ``(B, T, ...)`` with
``B = lanes`` and ``T = window``.

One long series (``Lanes.from_series``), ``lanes=3, window=4``, N = 29 steps::

    series  a0 a1 .. a9 b0 b1 .. b9 c0 c1 .. c8       cut into 3 contiguous segments (10, 10, 9)

                 window 0         window 1         window 2
    lane 0    [a0 a1 a2 a3]    [a4 a5 a6 a7]    [a8 a9 .  . ]
    lane 1    [b0 b1 b2 b3]    [b4 b5 b6 b7]    [b8 b9 .  . ]
    lane 2    [c0 c1 c2 c3]    [c4 c5 c6 c7]    [c8 .  .  . ]
               ^ reset: each segment starts from a zero state

    . = padding: x = 0, mask = False, reset = False, seq = -1, step = -1 (nothing is dropped)

The state a model returns after window 0 is exactly the state it needs for window 1: carry it,
detach it, never re-initialise it between windows. (Cutting the series into batch-sized chunks
*across* rows instead, ``x.view(-1, T)``, scrambles the state; that is the classic bug.)

Many sequences (``Lanes.from_sequences``), ``lanes=2, window=4``: p (6 steps), q (3), r (4), s (2)
packed longest-first into the least-loaded lane, so padding stays minimal::

                 window 0         window 1
    lane 0    [p0 p1 p2 p3]    [p4 p5 s0 s1]
    lane 1    [q0 q1 q2 r0]    [r1 r2 r3 . ]
               ^        ^              ^ reset = True where a sequence begins: the model zeroes
                                         that row's state *before* consuming the step.

Windows are gathered lazily from an index plan (for each lane: which sequences, in which
order), never from a padded copy of the data, so memory stays proportional to the data and a
``numpy.memmap`` is read only where a window needs it. The layout is a pure function of
(data, lanes, window, seed, epoch).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

__all__ = ["Lanes", "Window"]

ArrayLike = np.ndarray | torch.Tensor | Sequence[Any]

# Rows per chunk when scanning a (possibly memory-mapped) array for NaN/inf: bounded memory.
_SCAN_ELEMENTS = 1 << 22


class _DefaultNext(str):
    """The default ``targets="next"``; distinguishable from an explicit "next" so that
    ``labels=`` can replace the default without the two being silently mixed."""

    __slots__ = ()


_NEXT = _DefaultNext("next")


# --------------------------------------------------------------------------------------------
# Window
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Window:
    """One batch of ``T`` steps for each of ``B`` lanes (all tensors on one device).

    Attributes:
        x: ``(B, T, F)`` float32 inputs; zeros on padding.
        y: ``(B, T, O)`` targets: float32, or int64 when the given targets are integer-typed
            (class labels, ``O = 1``). ``O = 0`` when the lanes have no targets. Zeros on padding.
        mask: ``(B, T)`` bool, True where this step's target counts in the loss.
        reset: ``(B, T)`` bool, True where a new sequence begins; the row's state is zeroed
            *before* the step is consumed.
        seq: ``(B, T)`` int64 index of the sequence each step belongs to, ``-1`` on padding.
        step: ``(B, T)`` int64 position inside that sequence, ``-1`` on padding.

    Give the model ``mask=window.valid`` (which steps hold real input) and the loss
    ``window.mask`` (which targets count). They differ: with "next" targets a sequence's last
    step is valid input but has no target; with per-sequence labels only the last step counts.
    """

    x: torch.Tensor
    y: torch.Tensor
    mask: torch.Tensor
    reset: torch.Tensor
    seq: torch.Tensor
    step: torch.Tensor

    @property
    def valid(self) -> torch.Tensor:
        """``(B, T)`` bool: the step holds real input (``seq >= 0``), i.e. it is not padding."""
        return self.seq >= 0

    @property
    def batch_size(self) -> int:
        """``B``, the number of lanes (rows) in this window."""
        return int(self.x.shape[0])

    @property
    def length(self) -> int:
        """``T``, the number of steps in this window."""
        return int(self.x.shape[1])

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> Window:
        """A copy with every tensor moved to ``device``."""
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
            for f in fields(self)
        }
        return Window(**moved)

    def __repr__(self) -> str:
        B, T, F = self.x.shape
        return (
            f"Window(B={B}, T={T}, F={F}, O={self.y.shape[2]}, y={self.y.dtype}, "
            f"valid={int(self.valid.sum())}, mask={int(self.mask.sum())}, "
            f"resets={int(self.reset.sum())})"
        )


# --------------------------------------------------------------------------------------------
# Input validation (at the public boundary only)
# --------------------------------------------------------------------------------------------


def _check_int(value: Any, name: str, minimum: int, hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(
            f"{name} must be an int >= {minimum}; received {type(value).__name__} {value!r}."
            + (f" {hint}" if hint else "")
        )
    if value < minimum:
        raise ValueError(
            f"{name} must be an int >= {minimum}; received {value}." + (f" {hint}" if hint else "")
        )
    return int(value)


def _to_array(value: Any, name: str) -> np.ndarray:
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


def _check_numeric(array: np.ndarray, name: str) -> None:
    if array.dtype.kind not in "biuf":
        raise TypeError(
            f"{name} must hold numbers (bool, int or float); received dtype {array.dtype}. "
            "Convert it first, e.g. with .astype('float32')."
        )


def _first_nonfinite(array: np.ndarray) -> int:
    """Index along axis 0 of the first row holding NaN/inf, or -1. Scans in chunks so a memmap
    is never loaded whole."""
    if array.dtype.kind != "f" or len(array) == 0:
        return -1
    per_row = max(1, math.prod(array.shape[1:]))
    chunk = max(1, _SCAN_ELEMENTS // per_row)
    for begin in range(0, len(array), chunk):
        block = np.asarray(array[begin : begin + chunk])
        bad = ~np.isfinite(block.astype(np.float32, copy=False))
        bad = bad.reshape(len(block), -1).any(axis=1)
        if bad.any():
            return begin + int(np.argmax(bad))
    return -1


def _first_nonfinite_padded(array: np.ndarray, lengths: np.ndarray) -> tuple[int, int]:
    """(sequence, step) of the first NaN/inf inside the valid part of an (n, L, ...) array."""
    if array.dtype.kind != "f":
        return -1, -1
    n, L = array.shape[:2]
    per_row = max(1, math.prod(array.shape[1:]))
    chunk = max(1, _SCAN_ELEMENTS // per_row)
    for begin in range(0, n, chunk):
        block = np.asarray(array[begin : begin + chunk])
        bad = ~np.isfinite(block.astype(np.float32, copy=False))
        bad = bad.reshape(len(block), L, -1).any(axis=2)
        bad &= np.arange(L)[None, :] < lengths[begin : begin + len(block), None]
        if bad.any():
            where = np.argwhere(bad)[0]
            return begin + int(where[0]), int(where[1])
    return -1, -1


def _as_rows(array: np.ndarray) -> np.ndarray:
    """(L,) -> (L, 1); (L, D) unchanged."""
    return array.reshape(len(array), 1) if array.ndim == 1 else array


def _target_dtype(array: np.ndarray) -> np.dtype:
    # Integer targets are class indices for a cross-entropy loss: keep them integer.
    return np.dtype(np.int64) if array.dtype.kind in "iu" else np.dtype(np.float32)


# --------------------------------------------------------------------------------------------
# Data sources: gather the rows a window needs, nothing more
# --------------------------------------------------------------------------------------------


class _Flat:
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


class _Padded:
    """An ``(n, L)`` or ``(n, L, D)`` array; sequence ``i`` is ``data[i, :lengths[i]]``."""

    def __init__(self, data: np.ndarray, dtype: np.dtype) -> None:
        self.data = data
        self.dtype = dtype
        self.width = 1 if data.ndim == 2 else int(data.shape[2])

    def gather(self, seq: np.ndarray, step: np.ndarray) -> np.ndarray:
        rows = np.asarray(self.data[seq, step])
        return rows.reshape(len(seq), self.width).astype(self.dtype, copy=False)


_Source = _Flat | _Padded


@dataclass(frozen=True)
class _Targets:
    """How ``y`` and ``mask`` are derived.

    kind: None (no targets), "shift" (``y[t] = x[t + shift]``), "steps" (per-step array),
    "labels" (one per sequence, counted at its last step).
    """

    kind: str | None
    num_outputs: int
    dtype: np.dtype
    shift: int = 0
    source: _Source | None = None
    labels: np.ndarray | None = None  # (n, O)


@dataclass(frozen=True)
class _Plan:
    """Where every sequence sits for one epoch.

    Sequence ``order[j]`` starts at position ``keys[j] - lane[j] * span`` of lane ``lane[j]``,
    where ``span = num_windows * T``; ``keys`` is sorted, so the sequence under any (lane,
    position) is one ``searchsorted`` away.
    """

    num_windows: int
    order: np.ndarray  # (n,) sequence index, lane by lane, in lane order
    lane: np.ndarray  # (n,)
    keys: np.ndarray  # (n,) lane * span + start position in the lane
    lengths: np.ndarray  # (n,) lengths[order]


def _pack(lengths: np.ndarray, lanes: int, rng: np.random.Generator | None) -> list[list[int]]:
    """Sequences per lane: longest first into the least-loaded lane (LPT scheduling).

    With ``rng``, equal lengths are tie-broken at random and each block of ``lanes`` consecutive
    (similar-length) sequences is placed in random order, so the sequence-to-lane assignment
    changes every epoch while the lanes stay as balanced as plain LPT. Lane numbers and the
    order inside each lane are then permuted too.
    """
    n = len(lengths)
    if rng is None:
        order = np.argsort(-lengths, kind="stable")
    else:
        order = np.lexsort((rng.random(n), -lengths))
        order = order[np.lexsort((rng.random(n), np.arange(n) // lanes))]
    heap = [(0, lane) for lane in range(lanes)]
    members: list[list[int]] = [[] for _ in range(lanes)]
    sizes = lengths.tolist()
    for index in order.tolist():
        load, lane = heapq.heappop(heap)
        members[lane].append(index)
        heapq.heappush(heap, (load + sizes[index], lane))
    if rng is None:
        return [sorted(m) for m in members]  # original order inside a lane: easiest to read
    members = [members[lane] for lane in rng.permutation(lanes).tolist()]
    return [[m[i] for i in rng.permutation(len(m)).tolist()] for m in members]


def _plan_from_members(members: list[list[int]], lengths: np.ndarray, window: int) -> _Plan:
    loads = [int(lengths[m].sum()) for m in members]
    num_windows = max(1, -(-max(loads) // window))
    span = num_windows * window
    order = np.fromiter((i for m in members for i in m), dtype=np.int64, count=len(lengths))
    lane = np.repeat(np.arange(len(members), dtype=np.int64), [len(m) for m in members])
    ordered = lengths[order]
    keys = lane * span
    if len(order):
        # start inside the lane = cumulative length of the sequences before it in that lane
        cumulative = np.cumsum(ordered) - ordered
        lane_first = np.searchsorted(lane, lane, side="left")
        keys = keys + cumulative - cumulative[lane_first]
    return _Plan(num_windows=num_windows, order=order, lane=lane, keys=keys, lengths=ordered)


# --------------------------------------------------------------------------------------------
# Lanes
# --------------------------------------------------------------------------------------------


class Lanes:
    """Sequences laid out as ``B`` lanes of windows of ``T`` steps (see the module docstring).

    Build with :meth:`from_series` (one long series) or :meth:`from_sequences` (many
    variable-length sequences); iterate with :meth:`windows`. Nothing is dropped: the
    remainder of the last window is padding, masked out.

    Example::

        lanes = Lanes.from_sequences(sequences, lanes=32, window=64, shuffle=True)
        for epoch in range(10):
            state = None
            for window in lanes.windows(epoch):  # (B, T, F) batches, B = 32, T = 64
                y, state = model(window.x, state, reset=window.reset, mask=window.valid)
                loss = masked_loss(y, window.y, window.mask)
                state = state.detach()
    """

    def __init__(
        self,
        *,
        _source: _Source,
        _lengths: np.ndarray,
        _num_features: int,
        _targets: _Targets,
        _lanes: int,
        _window: int,
        _shuffle: bool = False,
        _seed: int = 0,
        _series_length: int | None = None,
    ) -> None:
        # Private: use Lanes.from_series or Lanes.from_sequences, which validate their input.
        self._source = _source
        self._lengths = _lengths
        self._lengths.setflags(write=False)
        self._num_features = _num_features
        self._targets = _targets
        self._num_lanes = _lanes
        self._window = _window
        self._shuffle = _shuffle
        self._seed = _seed
        self._series_length = _series_length
        # Where each sequence starts in the concatenation of all sequences (for `collect`).
        self._flat_offsets = np.concatenate([[0], np.cumsum(_lengths)[:-1]]).astype(np.int64)
        self._plans: dict[int, _Plan] = {}

    # ---- constructors ----------------------------------------------------------------------

    @classmethod
    def from_series(
        cls,
        series: ArrayLike,
        *,
        lanes: int,
        window: int,
        target: str | int | ArrayLike | None = "next",
    ) -> Lanes:
        """Split one long series into ``lanes`` contiguous segments, one per lane.

        Args:
            series: ``(N,)`` or ``(N, F)`` numbers: numpy array, ``numpy.memmap`` (read only
                where a window needs it) or torch tensor.
            lanes: ``B``, number of segments / batch rows. Segment lengths differ by at most 1
                (the first ``N % lanes`` segments are one step longer).
            window: ``T``, steps per window (the truncated-BPTT length).
            target: what ``y`` holds:

                - ``"next"``: ``y[t] = series[t + 1]`` (``O = F``), computed on the whole series
                  before it is cut, so a segment's last step targets the first value of the next
                  segment and only the series' very last step is masked.
                - int ``k >= 1``: ``y[t] = series[t + k]``; the last ``k`` steps are masked.
                - an array ``(N,)`` or ``(N, O)``: per-step targets (integer arrays stay int64).
                - ``None``: no targets, for prediction only: ``y`` is ``(B, T, 0)`` and ``mask``
                  is all False; feed the model ``mask=window.valid``.

        Each segment is a sequence: ``seq`` is its segment index, ``step`` the offset inside
        it, and ``reset`` is True at its first step. See :attr:`segment_starts`.
        """
        lanes = _check_int(lanes, "lanes", 1, "It is the number of parallel rows (batch size).")
        window = _check_int(window, "window", 1, "It is the number of steps per window.")
        data = _to_array(series, "series")
        if data.ndim not in (1, 2) or (data.ndim == 2 and data.shape[1] == 0):
            raise ValueError(
                f"series must have shape (N,) or (N, F) with F >= 1; received shape "
                f"{tuple(data.shape)}. For many separate sequences use Lanes.from_sequences."
            )
        _check_numeric(data, "series")
        N = int(data.shape[0])
        if lanes > N:
            raise ValueError(
                f"series has {N} steps, fewer than lanes={lanes}: every lane needs at least one "
                f"step. Use lanes <= {N}."
            )
        bad = _first_nonfinite(data)
        if bad >= 0:
            raise ValueError(
                f"series holds NaN or inf at step {bad} (row {bad} of shape {tuple(data.shape)}). "
                "Fill or drop missing values first."
            )
        num_features = 1 if data.ndim == 1 else int(data.shape[1])
        base, extra = divmod(N, lanes)
        lengths = np.full(lanes, base, dtype=np.int64)
        lengths[:extra] += 1
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        source = _Flat(data, starts, np.dtype(np.float32))

        if isinstance(target, str):
            if target != "next":
                raise ValueError(
                    f"target must be 'next', an int horizon >= 1, an array (N,) or (N, O), or "
                    f"None; received the string {target!r}."
                )
            target = 1
        if target is None:
            targets = _Targets(None, 0, np.dtype(np.float32))
        elif isinstance(target, int | np.integer) and not isinstance(target, bool):
            k = _check_int(target, "target", 1, "An int target is the horizon k: y[t] = x[t+k].")
            if k >= N:
                raise ValueError(
                    f"target horizon k={k} leaves no targets in a series of {N} steps; use "
                    f"k < {N}, or target=None for prediction only."
                )
            targets = _Targets("shift", num_features, np.dtype(np.float32), shift=k, source=source)
        elif isinstance(target, np.ndarray | torch.Tensor | list | tuple):
            array = _to_array(target, "target")
            if (
                array.ndim not in (1, 2)
                or len(array) != N
                or (array.ndim == 2 and not array.shape[1])
            ):
                raise ValueError(
                    f"target must have shape ({N},) or ({N}, O) to match series of {N} steps; "
                    f"received shape {tuple(array.shape)}."
                )
            _check_numeric(array, "target")
            bad = _first_nonfinite(array)
            if bad >= 0:
                raise ValueError(f"target holds NaN or inf at step {bad}. Fill or mask it first.")
            dtype = _target_dtype(array)
            width = 1 if array.ndim == 1 else int(array.shape[1])
            targets = _Targets("steps", width, dtype, source=_Flat(array, starts, dtype))
        else:
            raise TypeError(
                f"target must be 'next', an int horizon >= 1, an array (N,) or (N, O), or None; "
                f"received {type(target).__name__}."
            )
        return cls(
            _source=source,
            _lengths=lengths,
            _num_features=num_features,
            _targets=targets,
            _lanes=lanes,
            _window=window,
            _series_length=N,
        )

    @classmethod
    def from_sequences(
        cls,
        sequences: ArrayLike,
        targets: str | int | ArrayLike | None = _NEXT,
        *,
        lanes: int,
        window: int,
        labels: ArrayLike | None = None,
        lengths: ArrayLike | None = None,
        shuffle: bool = False,
        seed: int = 0,
    ) -> Lanes:
        """Pack many variable-length sequences into ``lanes`` lanes with minimal padding.

        Args:
            sequences: a list of arrays ``(L_i,)`` or ``(L_i, F)`` (numpy or torch), or one
                array ``(n, L, F)`` (a ``numpy.memmap`` is read only where needed). For an
                ``(n, L, F)`` array padded at the end, give the real ``lengths``.
            targets: per-step targets ``y``:

                - ``"next"`` (default): ``y[t] = x[t + 1]`` within each sequence; its last step
                  is masked.
                - int ``k >= 1``: ``y[t] = x[t + k]``; each sequence's last ``k`` steps masked.
                - a list of arrays ``(L_i,)`` or ``(L_i, O)``, or an array ``(n, L)`` /
                  ``(n, L, O)``: explicit per-step targets. Integer arrays stay int64.
                - ``None``: no targets (prediction): ``y`` is ``(B, T, 0)``, ``mask`` all False.
            lanes: ``B``, the batch size. Must be ``<= n``: a lane with no sequence would be
                pure padding.
            window: ``T``, steps per window.
            labels: one target per *sequence* instead of ``targets``: ``(n,)`` (integer class
                indices stay int64) or ``(n, O)``. ``y`` holds the label at every step of its
                sequence, but ``mask`` is True only at the sequence's last step, after the model
                has read it whole. Leave ``targets`` at its default (or None) when giving labels.
            lengths: ``(n,)`` real lengths of the rows of a 3-D ``sequences`` array; the steps
                after them are ignored (they may be anything, even NaN).
            shuffle: permute which sequences go to which lane, and their order inside the lane,
                every epoch (deterministic from ``seed`` and ``epoch``). Steps inside a sequence
                are never reordered. Padding stays close to the unshuffled packing, but the
                number of windows may differ between epochs: see :meth:`num_windows`.
            seed: seed of the per-epoch shuffle.

        Without shuffle the layout is the same every epoch, and a lane holds its sequences in
        their original order.
        """
        lanes = _check_int(lanes, "lanes", 1, "It is the number of parallel rows (batch size).")
        window = _check_int(window, "window", 1, "It is the number of steps per window.")
        if not isinstance(shuffle, bool | np.bool_):
            raise TypeError(f"shuffle must be True or False; received {shuffle!r}.")
        seed = _check_int(seed, "seed", 0)

        source, seq_lengths, num_features = _read_sequences(sequences, lengths)
        n = len(seq_lengths)
        if lanes > n:
            raise ValueError(
                f"lanes={lanes} is more than the {n} sequences given: {lanes - n} lane(s) would "
                f"be all padding. Use lanes <= {n}, or split long sequences into more pieces."
            )

        if labels is not None:
            if targets is not _NEXT and targets is not None:
                raise TypeError(
                    "pass either targets (per step) or labels (one per sequence), not both; "
                    f"received targets={_describe(targets)} and labels. Drop targets when "
                    "giving labels."
                )
            target_spec = _read_labels(labels, n)
        else:
            target_spec = _read_targets(targets, source, seq_lengths, num_features)
        return cls(
            _source=source,
            _lengths=seq_lengths,
            _num_features=num_features,
            _targets=target_spec,
            _lanes=lanes,
            _window=window,
            _shuffle=bool(shuffle),
            _seed=seed,
        )

    # ---- description -----------------------------------------------------------------------

    @property
    def num_lanes(self) -> int:
        """``B``, rows per window."""
        return self._num_lanes

    @property
    def window(self) -> int:
        """``T``, steps per window."""
        return self._window

    @property
    def num_features(self) -> int:
        """``F``, the last dimension of ``x``."""
        return self._num_features

    @property
    def num_outputs(self) -> int:
        """``O``, the last dimension of ``y`` (0 without targets)."""
        return self._targets.num_outputs

    @property
    def target_kind(self) -> str | None:
        """``"next"``, ``"horizon"`` (see :attr:`horizon`), ``"steps"`` (explicit per-step
        targets), ``"labels"`` (one per sequence) or None (no targets)."""
        spec = self._targets
        if spec.kind == "shift":
            return "next" if spec.shift == 1 else "horizon"
        return spec.kind

    @property
    def horizon(self) -> int:
        """``k`` for ``"next"`` (1) and horizon targets (``y[t] = x[t + k]``), else 0."""
        return self._targets.shift

    @property
    def target_dtype(self) -> torch.dtype:
        """``torch.int64`` for integer (class) targets, else ``torch.float32``."""
        return torch.int64 if self._targets.dtype == np.int64 else torch.float32

    @property
    def num_sequences(self) -> int:
        """Number of sequences (segments, for :meth:`from_series`)."""
        return len(self._lengths)

    @property
    def lengths(self) -> np.ndarray:
        """``(n,)`` int64 length of each sequence, in the original order (read-only)."""
        return self._lengths

    @property
    def segment_starts(self) -> np.ndarray | None:
        """``(B,)`` index in the series where each lane's segment starts (:meth:`from_series`
        only; None for :meth:`from_sequences`)."""
        if self._series_length is None:
            return None
        return self._source.offsets.copy()  # type: ignore[union-attr]

    @property
    def shuffle(self) -> bool:
        return self._shuffle

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def padding_fraction(self) -> float:
        """Padded steps / all steps in epoch 0."""
        return self.padding_fraction_for(0)

    def padding_fraction_for(self, epoch: int) -> float:
        """Padded steps / all steps in ``epoch`` (differs from epoch 0 only with shuffle)."""
        plan = self._plan(_check_int(epoch, "epoch", 0))
        total = plan.num_windows * self._window * self._num_lanes
        return 1.0 - float(self._lengths.sum()) / total

    def __len__(self) -> int:
        """Windows per epoch for epoch 0 (see :meth:`num_windows`)."""
        return self._plan(0).num_windows

    def num_windows(self, epoch: int = 0) -> int:
        """Windows in ``epoch``: ``ceil(longest lane / T)``. Constant without shuffle; with
        shuffle the longest lane, hence this count, may change a little between epochs."""
        return self._plan(_check_int(epoch, "epoch", 0)).num_windows

    def assignment(self, epoch: int = 0) -> list[np.ndarray]:
        """For each lane, the indices of its sequences in the order the lane plays them."""
        plan = self._plan(_check_int(epoch, "epoch", 0))
        bounds = np.searchsorted(plan.lane, np.arange(self._num_lanes + 1))
        return [plan.order[a:b].copy() for a, b in itertools.pairwise(bounds)]

    def __repr__(self) -> str:
        kind = self.target_kind
        if kind == "horizon":
            kind = f"horizon {self.horizon}"
        return (
            f"Lanes(lanes={self._num_lanes}, window={self._window}, "
            f"sequences={self.num_sequences}, steps={int(self._lengths.sum())}, "
            f"F={self._num_features}, O={self.num_outputs}, targets={kind!r}, "
            f"windows={len(self)}, padding={self.padding_fraction:.1%}, shuffle={self._shuffle})"
        )

    # ---- iteration -------------------------------------------------------------------------

    def windows(
        self,
        epoch: int = 0,
        *,
        start: int = 0,
        rows: slice | Sequence[int] | np.ndarray | torch.Tensor | None = None,
    ) -> Iterator[Window]:
        """Yield the windows of ``epoch`` in order, built lazily one at a time.

        Args:
            epoch: selects the shuffle (ignored without shuffle).
            start: skip the first ``start`` windows without building them (resume from a
                checkpoint cursor). ``start == num_windows(epoch)`` yields nothing.
            rows: only these lanes (a slice, lane indices or a boolean mask of length ``B``),
                e.g. one rank's share in distributed training. Equals slicing every full
                window with ``[rows]``.
        """
        epoch = _check_int(epoch, "epoch", 0)
        start = _check_int(start, "start", 0, "It counts windows already consumed.")
        plan = self._plan(epoch)
        if start > plan.num_windows:
            raise ValueError(
                f"start={start} is past the end of epoch {epoch}, which has {plan.num_windows} "
                "windows. Was the cursor saved for different data, lanes, window or seed?"
            )
        lane_rows = self._rows(rows)
        return (self._build(plan, k, lane_rows) for k in range(start, plan.num_windows))

    def collect(
        self, outputs: Iterable[np.ndarray | torch.Tensor], epoch: int = 0
    ) -> list[np.ndarray]:
        """Map per-window outputs back to per-sequence arrays.

        Args:
            outputs: one array ``(B, T, ...)`` per window of ``epoch``, in order (e.g. the model
                outputs for each window of :meth:`windows`).
            epoch: the epoch whose layout produced ``outputs``.

        Returns:
            One array ``(L_i, ...)`` per sequence, in the original order. For
            :meth:`from_series` these are the segments; ``np.concatenate`` them for the series.
        """
        plan = self._plan(_check_int(epoch, "epoch", 0))
        all_rows = np.arange(self._num_lanes)
        expected = (self._num_lanes, self._window)
        flat: np.ndarray | None = None
        count = 0
        for k, output in enumerate(outputs):
            if k >= plan.num_windows:
                raise ValueError(
                    f"outputs has more than the {plan.num_windows} windows of epoch {epoch}."
                )
            array = _to_array(output, f"outputs[{k}]")
            if array.shape[:2] != expected or (
                flat is not None and array.shape[2:] != flat.shape[1:]
            ):
                want = expected + (() if flat is None else tuple(flat.shape[1:]))
                raise ValueError(
                    f"outputs[{k}] must have shape (B, T, ...) = {want}; received "
                    f"{tuple(array.shape)}. Pass every window, with all lanes (rows=None)."
                )
            if flat is None:
                flat = np.zeros((int(self._lengths.sum()), *array.shape[2:]), dtype=array.dtype)
            seq, step, valid = self._locate(plan, k, all_rows)
            flat[self._flat_offsets[seq[valid]] + step[valid]] = array[valid]
            count += 1
        if count != plan.num_windows or flat is None:
            raise ValueError(
                f"outputs has {count} windows; epoch {epoch} has {plan.num_windows}. Pass the "
                "outputs of every window, in order."
            )
        return np.split(flat, np.cumsum(self._lengths)[:-1])

    # ---- internals -------------------------------------------------------------------------

    def _plan(self, epoch: int) -> _Plan:
        key = epoch if self._shuffle else 0
        plan = self._plans.get(key)
        if plan is None:
            if self._series_length is not None:
                members = [[lane] for lane in range(self._num_lanes)]
            else:
                rng = np.random.default_rng([self._seed, key]) if self._shuffle else None
                members = _pack(self._lengths, self._num_lanes, rng)
            plan = _plan_from_members(members, self._lengths, self._window)
            if len(self._plans) >= 4:  # a few epochs are enough: trainer + validation + resume
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def _rows(self, rows: Any) -> np.ndarray:
        B = self._num_lanes
        if rows is None:
            return np.arange(B)
        if isinstance(rows, slice):
            return np.arange(B)[rows]
        array = _to_array(rows, "rows")
        if array.dtype.kind == "b":
            if array.shape != (B,):
                raise ValueError(
                    f"rows as a boolean mask must have shape ({B},), one per lane; received "
                    f"shape {tuple(array.shape)}."
                )
            return np.flatnonzero(array)
        if array.ndim != 1 or (array.dtype.kind not in "iu" and array.size):
            raise TypeError(
                f"rows must be a slice, a 1-D array of lane indices or a boolean mask of "
                f"length {B}; received {array.dtype} array of shape {tuple(array.shape)}."
            )
        array = array.astype(np.int64)
        if array.size and (array.min() < -B or array.max() >= B):
            raise ValueError(
                f"rows must be lane indices in [0, {B}) (or negative from the end); received "
                f"values from {array.min()} to {array.max()}."
            )
        return array % B

    def _locate(
        self, plan: _Plan, k: int, lane_rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``seq``, ``step`` (-1 on padding) and ``valid`` for window ``k``, each ``(B, T)``."""
        T = self._window
        span = plan.num_windows * T
        keys = lane_rows[:, None] * span + (k * T + np.arange(T))[None, :]  # (B, T)
        j = np.searchsorted(plan.keys, keys, side="right") - 1
        jc = np.maximum(j, 0)
        # The candidate may end before this position, or belong to an earlier lane: padding.
        valid = (j >= 0) & (keys < plan.keys[jc] + plan.lengths[jc])
        seq = np.where(valid, plan.order[jc], -1)
        step = np.where(valid, keys - plan.keys[jc], -1)
        return seq, step, valid

    def _build(self, plan: _Plan, k: int, lane_rows: np.ndarray) -> Window:
        seq, step, valid = self._locate(plan, k, lane_rows)
        B, T = seq.shape
        seq_valid, step_valid = seq[valid], step[valid]

        x = np.zeros((B, T, self._num_features), dtype=np.float32)
        x[valid] = self._source.gather(seq_valid, step_valid)

        spec = self._targets
        y = np.zeros((B, T, spec.num_outputs), dtype=spec.dtype)
        mask = np.zeros((B, T), dtype=bool)
        if spec.kind == "shift":
            if self._series_length is not None:
                # Targets index the whole series, so they cross segment boundaries.
                position = self._source.offsets[seq_valid] + step_valid  # type: ignore[union-attr]
                has_target = position + spec.shift < self._series_length
            else:
                has_target = step_valid + spec.shift < self._lengths[seq_valid]
            rows = np.zeros((len(seq_valid), spec.num_outputs), dtype=spec.dtype)
            rows[has_target] = self._source.gather(
                seq_valid[has_target], step_valid[has_target] + spec.shift
            )
            y[valid] = rows
            mask[valid] = has_target
        elif spec.kind == "steps":
            y[valid] = spec.source.gather(seq_valid, step_valid)  # type: ignore[union-attr]
            mask = valid.copy()
        elif spec.kind == "labels":
            y[valid] = spec.labels[seq_valid]  # type: ignore[index]
            mask[valid] = step_valid == self._lengths[seq_valid] - 1

        return Window(
            x=torch.from_numpy(x),
            y=torch.from_numpy(y),
            mask=torch.from_numpy(mask),
            reset=torch.from_numpy(valid & (step == 0)),
            seq=torch.from_numpy(seq.astype(np.int64, copy=False)),
            step=torch.from_numpy(step.astype(np.int64, copy=False)),
        )


# --------------------------------------------------------------------------------------------
# Reading sequences and targets
# --------------------------------------------------------------------------------------------


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray | torch.Tensor):
        return f"{type(value).__name__} of shape {tuple(value.shape)}"
    if isinstance(value, list | tuple):
        return f"{type(value).__name__} of {len(value)} items"
    return repr(value)


def _read_sequences(sequences: Any, lengths: Any) -> tuple[_Source, np.ndarray, int]:
    """Validate ``sequences`` and return (source, lengths (n,), F)."""
    if isinstance(sequences, np.ndarray | torch.Tensor):
        array = _to_array(sequences, "sequences")
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


def _read_sequence_list(items: list[Any], lengths: Any) -> tuple[_Source, np.ndarray, int]:
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
        array = _to_array(item, f"sequences[{i}]")
        if array.ndim not in (1, 2):
            raise ValueError(
                f"sequences[{i}] must have shape (L,) or (L, F); received shape "
                f"{tuple(array.shape)}."
            )
        _check_numeric(array, f"sequences[{i}]")
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
        arrays.append(_as_rows(array))
    if num_features == 0:
        raise ValueError("sequences have 0 features (shape (L, 0)); give at least one feature.")
    seq_lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    # One float32 copy of the data (proportional to it, not to the padded layout).
    flat = np.concatenate(arrays).astype(np.float32, copy=False)
    offsets = np.concatenate([[0], np.cumsum(seq_lengths)[:-1]]).astype(np.int64)
    bad = _first_nonfinite(flat)
    if bad >= 0:
        i = int(np.searchsorted(offsets, bad, side="right") - 1)
        raise ValueError(
            f"sequences[{i}] holds NaN or inf at step {bad - offsets[i]} (after conversion to "
            "float32). Fill or drop missing values first."
        )
    return _Flat(flat, offsets, np.dtype(np.float32)), seq_lengths, num_features


def _read_sequence_array(array: np.ndarray, lengths: Any) -> tuple[_Source, np.ndarray, int]:
    _check_numeric(array, "sequences")
    n, L, F = (int(s) for s in array.shape)
    if n == 0 or L == 0 or F == 0:
        raise ValueError(
            f"sequences array (n, L, F) must have n, L, F >= 1; received shape {(n, L, F)}."
        )
    if lengths is None:
        seq_lengths = np.full(n, L, dtype=np.int64)
    else:
        given = _to_array(lengths, "lengths")
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
    i, t = _first_nonfinite_padded(array, seq_lengths)
    if i >= 0:
        raise ValueError(
            f"sequences[{i}] holds NaN or inf at step {t}. Fill or drop missing values first "
            "(or give lengths= if the row is padded with NaN after its end)."
        )
    return _Padded(array, np.dtype(np.float32)), seq_lengths, F


_TARGET_KINDS = (
    "targets must be 'next', an int horizon k >= 1, per-step arrays (a list of (L_i,) or "
    "(L_i, O), or an array (n, L) / (n, L, O)), or None"
)


def _read_targets(
    targets: Any, source: _Source, seq_lengths: np.ndarray, num_features: int
) -> _Targets:
    n = len(seq_lengths)
    if targets is None:
        return _Targets(None, 0, np.dtype(np.float32))
    if isinstance(targets, str):
        if targets != "next":
            raise ValueError(f"{_TARGET_KINDS}; received the string {targets!r}.")
        return _Targets("shift", num_features, np.dtype(np.float32), shift=1, source=source)
    if isinstance(targets, int | np.integer) and not isinstance(targets, bool):
        k = _check_int(targets, "targets", 1, "An int target is the horizon k: y[t] = x[t+k].")
        return _Targets("shift", num_features, np.dtype(np.float32), shift=k, source=source)
    if isinstance(targets, np.ndarray | torch.Tensor):
        array = _to_array(targets, "targets")
        if array.ndim == 1 and array.dtype != object:
            raise ValueError(
                f"targets has shape {tuple(array.shape)}, one value per sequence; per-sequence "
                "targets go in labels=..., e.g. Lanes.from_sequences(seqs, labels=y, ...)."
            )
        if array.ndim in (2, 3) and isinstance(source, _Padded):
            return _read_padded_targets(array, seq_lengths, source.data.shape[1])
        if array.ndim in (2, 3) or (array.dtype == object and array.ndim == 1):
            targets = list(array)
        else:
            raise ValueError(f"{_TARGET_KINDS}; received an array of shape {tuple(array.shape)}.")
    if not isinstance(targets, list | tuple):
        raise TypeError(f"{_TARGET_KINDS}; received {type(targets).__name__}.")
    if len(targets) != n:
        raise ValueError(
            f"targets has {len(targets)} items but there are {n} sequences; give one per-step "
            "target array per sequence, in the same order."
        )
    arrays: list[np.ndarray] = []
    width = -1
    for i, item in enumerate(targets):
        array = _to_array(item, f"targets[{i}]")
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
        _check_numeric(array, f"targets[{i}]")
        this_width = 1 if array.ndim == 1 else int(array.shape[1])
        if width < 0:
            width = this_width
        elif this_width != width:
            raise ValueError(
                f"targets[{i}] has {this_width} outputs but targets[0] has {width}; every "
                "sequence's targets need the same number of outputs O."
            )
        arrays.append(_as_rows(array))
    if width == 0:
        raise ValueError("targets have 0 outputs (shape (L, 0)); use targets=None for no targets.")
    kinds = {a.dtype.kind in "iu" for a in arrays}
    if len(kinds) > 1:
        raise TypeError(
            "targets mix integer and float arrays; make them all integer (class indices) or all "
            "float, e.g. with .astype('float32')."
        )
    dtype = _target_dtype(arrays[0])
    flat = np.concatenate(arrays).astype(dtype, copy=False)
    offsets = np.concatenate([[0], np.cumsum(seq_lengths)[:-1]]).astype(np.int64)
    bad = _first_nonfinite(flat)
    if bad >= 0:
        i = int(np.searchsorted(offsets, bad, side="right") - 1)
        raise ValueError(
            f"targets[{i}] holds NaN or inf at step {bad - offsets[i]}. Fill it, or for "
            "unknown targets use labels/None and mask in the loss."
        )
    return _Targets("steps", width, dtype, source=_Flat(flat, offsets, dtype))


def _read_padded_targets(array: np.ndarray, seq_lengths: np.ndarray, L: int) -> _Targets:
    n = len(seq_lengths)
    if array.shape[:2] != (n, L) or (array.ndim == 3 and array.shape[2] == 0):
        raise ValueError(
            f"targets must have shape ({n}, {L}) or ({n}, {L}, O) to match sequences "
            f"{(n, L)}; received shape {tuple(array.shape)}."
        )
    _check_numeric(array, "targets")
    i, t = _first_nonfinite_padded(array, seq_lengths)
    if i >= 0:
        raise ValueError(f"targets[{i}] holds NaN or inf at step {t}. Fill it first.")
    dtype = _target_dtype(array)
    width = 1 if array.ndim == 2 else int(array.shape[2])
    return _Targets("steps", width, dtype, source=_Padded(array, dtype))


def _read_labels(labels: Any, n: int) -> _Targets:
    array = _to_array(labels, "labels")
    if array.ndim not in (1, 2) or len(array) != n or (array.ndim == 2 and not array.shape[1]):
        raise ValueError(
            f"labels must have shape ({n},) or ({n}, O), one label per sequence; received "
            f"shape {tuple(array.shape)}."
        )
    _check_numeric(array, "labels")
    bad = _first_nonfinite(array)
    if bad >= 0:
        raise ValueError(f"labels[{bad}] is NaN or inf. Fill it or drop that sequence.")
    dtype = _target_dtype(array)
    rows = _as_rows(np.asarray(array)).astype(dtype)
    return _Targets("labels", int(rows.shape[1]), dtype, labels=rows)
