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

import hashlib
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, cast

import numpy as np
import torch

from seqstate.lanes.inputs import (
    FlatSource,
    Source,
    TargetSpec,
    check_int,
    check_numeric,
    describe,
    first_nonfinite,
    read_labels,
    read_sequences,
    read_targets,
    target_range,
    to_array,
)
from seqstate.lanes.layout import Plan, packed_plan, segment_plan
from seqstate.lanes.window import Window, select_lanes, window_arrays, window_timeline

__all__ = ["Lanes", "Window"]

ArrayLike = np.ndarray | torch.Tensor | Sequence[Any]


class _DefaultNext(str):
    """The default ``targets="next"``; distinguishable from an explicit "next" so that
    ``labels=`` can replace the default without the two being silently mixed."""

    __slots__ = ()


_NEXT = _DefaultNext("next")


class _Unset:
    """The default of a deprecated keyword: tells "not given" from every value, None too."""


_UNSET = _Unset()


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
        _source: Source,
        _lengths: np.ndarray,
        _num_features: int,
        _targets: TargetSpec,
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
        self._plans: dict[int, Plan] = {}

    def data_digest(self) -> str:
        """A digest of the data itself: every sequence's valid input rows, its targets or
        labels, and its length (a resumed fit must find the data its checkpoint was trained
        on, not only the same layout). Reads all of it: computed where a checkpoint needs it."""
        hasher = hashlib.blake2b(digest_size=16)
        lengths = np.ascontiguousarray(self._lengths, dtype=np.int64)
        hasher.update(lengths.tobytes())
        self._source.digest(hasher, lengths)
        targets = self._targets
        hasher.update(f"{targets.kind}:{targets.shift}:{targets.num_outputs}".encode())
        if targets.source is not None:
            # per-step targets cover each sequence's steps, as its inputs do
            targets.source.digest(hasher, lengths)
        if targets.labels is not None:
            hasher.update(np.ascontiguousarray(targets.labels, dtype=targets.dtype).tobytes())
        return hasher.hexdigest()

    # ---- constructors ----------------------------------------------------------------------

    @classmethod
    def from_series(
        cls,
        series: ArrayLike,
        *,
        lanes: int,
        window: int,
        targets: str | int | ArrayLike | None = _NEXT,
        target: str | int | ArrayLike | _Unset | None = _UNSET,
    ) -> Lanes:
        """Split one long series into ``lanes`` contiguous segments, one per lane.

        Args:
            series: ``(N,)`` or ``(N, F)`` numbers: numpy array, ``numpy.memmap`` (read only
                where a window needs it) or torch tensor.
            lanes: ``B``, number of segments / batch rows. Segment lengths differ by at most 1
                (the first ``N % lanes`` segments are one step longer).
            window: ``T``, steps per window (the truncated-BPTT length).
            targets: what ``y`` holds (the same keyword as :meth:`from_sequences`; the old
                name ``target=`` still works for one release, with a DeprecationWarning):

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
        if not isinstance(target, _Unset):
            if targets is not _NEXT:
                raise TypeError(
                    "pass targets=... only; target= is its deprecated old name, and both were given"
                )
            warnings.warn(
                "Lanes.from_series(target=...) is deprecated and will be removed in the next "
                "release; use targets=... (the keyword of Lanes.from_sequences)",
                DeprecationWarning,
                stacklevel=2,
            )
            targets = target
        lanes = check_int(lanes, "lanes", 1, "It is the number of parallel rows (batch size).")
        window = check_int(window, "window", 1, "It is the number of steps per window.")
        data = to_array(series, "series")
        if data.ndim not in (1, 2) or (data.ndim == 2 and data.shape[1] == 0):
            raise ValueError(
                f"series must have shape (N,) or (N, F) with F >= 1; received shape "
                f"{tuple(data.shape)}. For many separate sequences use Lanes.from_sequences."
            )
        check_numeric(data, "series")
        N = int(data.shape[0])
        if lanes > N:
            raise ValueError(
                f"series has {N} steps, fewer than lanes={lanes}: every lane needs at least one "
                f"step. Use lanes <= {N}."
            )
        bad = first_nonfinite(data)
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
        source = FlatSource(data, starts, np.dtype(np.float32))

        target_spec = read_targets(targets, source, lengths, num_features, series=True)
        return cls(
            _source=source,
            _lengths=lengths,
            _num_features=num_features,
            _targets=target_spec,
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
        lanes = check_int(lanes, "lanes", 1, "It is the number of parallel rows (batch size).")
        window = check_int(window, "window", 1, "It is the number of steps per window.")
        if not isinstance(shuffle, bool | np.bool_):
            raise TypeError(f"shuffle must be True or False; received {shuffle!r}.")
        seed = check_int(seed, "seed", 0)

        source, seq_lengths, num_features = read_sequences(sequences, lengths)
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
                    f"received targets={describe(targets)} and labels. Drop targets when "
                    "giving labels."
                )
            target_spec = read_labels(labels, n)
        else:
            target_spec = read_targets(targets, source, seq_lengths, num_features)
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

    def target_range(self) -> tuple[float, float] | None:
        """(smallest, largest) target over the steps that have one (None without targets):
        what ``fit`` checks a loss's domain against before training (class labels in
        ``[0, C)``, counts ``>= 0``). Reads the targets once, in bounded chunks."""
        return target_range(self._targets, self.lengths)

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
        return cast(FlatSource, self._source).offsets.copy()  # a series is one flat array

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
        plan = self._plan(check_int(epoch, "epoch", 0))
        total = plan.num_windows * self._window * self._num_lanes
        return 1.0 - float(self._lengths.sum()) / total

    def __len__(self) -> int:
        """Windows per epoch for epoch 0 (see :meth:`num_windows`)."""
        return self._plan(0).num_windows

    def num_windows(self, epoch: int = 0) -> int:
        """Windows in ``epoch``: ``ceil(longest lane / T)``. Constant without shuffle; with
        shuffle the longest lane, hence this count, may change a little between epochs."""
        return self._plan(check_int(epoch, "epoch", 0)).num_windows

    def assignment(self, epoch: int = 0) -> list[np.ndarray]:
        """For each lane, the indices of its sequences in the order the lane plays them."""
        return self._plan(check_int(epoch, "epoch", 0)).assignment()

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
        epoch = check_int(epoch, "epoch", 0)
        start = check_int(start, "start", 0, "It counts windows already consumed.")
        plan = self._plan(epoch)
        if start > plan.num_windows:
            raise ValueError(
                f"start={start} is past the end of epoch {epoch}, which has {plan.num_windows} "
                "windows. Was the cursor saved for different data, lanes, window or seed?"
            )
        lane_rows = select_lanes(rows, self._num_lanes)
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
        plan = self._plan(check_int(epoch, "epoch", 0))
        all_rows = np.arange(self._num_lanes)
        expected = (self._num_lanes, self._window)
        flat: np.ndarray | None = None
        count = 0
        for k, output in enumerate(outputs):
            if k >= plan.num_windows:
                raise ValueError(
                    f"outputs has more than the {plan.num_windows} windows of epoch {epoch}."
                )
            array = to_array(output, f"outputs[{k}]")
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
            seq, step, valid = plan.locate(k, all_rows)
            flat[self._flat_offsets[seq[valid]] + step[valid]] = array[valid]
            count += 1
        if count != plan.num_windows or flat is None:
            raise ValueError(
                f"outputs has {count} windows; epoch {epoch} has {plan.num_windows}. Pass the "
                "outputs of every window, in order."
            )
        return np.split(flat, np.cumsum(self._lengths)[:-1])

    # ---- internals -------------------------------------------------------------------------

    def _plan(self, epoch: int) -> Plan:
        key = epoch if self._shuffle else 0
        plan = self._plans.get(key)
        if plan is None:
            if self._series_length is not None:
                plan = segment_plan(self._lengths, self._window)
            else:
                plan = packed_plan(
                    self._lengths,
                    self._num_lanes,
                    self._window,
                    shuffle=self._shuffle,
                    seed=self._seed,
                    epoch=key,
                )
            if len(self._plans) >= 4:  # a few epochs are enough: trainer + validation + resume
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def _build(self, plan: Plan, k: int, lane_rows: np.ndarray) -> Window:
        arrays = window_arrays(
            plan,
            k,
            lane_rows,
            source=self._source,
            lengths=self._lengths,
            num_features=self._num_features,
            targets=self._targets,
            series_length=self._series_length,
        )
        tensors = {name: torch.from_numpy(array) for name, array in arrays.items()}
        # the timeline plan, once per window here rather than in every layer's forward
        timeline = window_timeline(tensors["reset"], tensors["seq"])
        return Window(**tensors, timeline=timeline)
