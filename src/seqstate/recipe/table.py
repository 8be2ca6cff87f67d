"""SequenceTable: validated sequences, one entry per series, and the Columns that name them.

:func:`seqstate.recipe.sources.read_table` builds a :class:`SequenceTable` from a long-format table;
:mod:`seqstate.recipe.splits` splits one into train and validation. Both classes are importable from
:mod:`seqstate.recipe.sources` too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

__all__ = ["Columns", "SequenceTable"]

Task = Literal["regression", "classification"]


@dataclasses.dataclass(frozen=True)
class Columns:
    """Which columns of a table mean what."""

    features: tuple[str, ...]  # input columns, in the order the model reads them (F)
    targets: tuple[str, ...] = ()  # target columns (O); may repeat features when forecasting
    id: str | None = None  # series id column; None: the whole table is one series
    time: str | None = None  # column to sort each series by; None: rows are already in order
    shift: int = 1  # y at step t = target columns at step t + shift (0: the same step)
    task: Task = "regression"  # classification: one integer target column of class indices

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": list(self.features),
            "targets": list(self.targets),
            "id": self.id,
            "time": self.time,
            "shift": self.shift,
            "task": self.task,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Columns:
        return cls(
            features=tuple(data["features"]),
            targets=tuple(data.get("targets", ())),
            id=data.get("id"),
            time=data.get("time"),
            shift=int(data.get("shift", 1)),
            task=data.get("task", "regression"),
        )


@dataclasses.dataclass(frozen=True, eq=False)
class SequenceTable:
    """Validated sequences read from a table, one entry per series, sorted by time.

    Attributes:
        columns: the :class:`Columns` it was read with.
        ids: one id per series (``None`` for a table without an id column).
        features: one ``[L_i, F]`` float32 array per series.
        targets: one ``[L_i, O]`` array per series (float32, or int64 class indices), the target
            columns *at the same row*; empty ``[L_i, 0]`` when no targets were read. Use
            :meth:`pairs` for the (input, target) pairs after ``shift``.
        times: one ``[L_i]`` array per series: the time column (numeric or datetime64), or the
            row position inside the series when there is no time column.
        source: where the rows came from, for messages (``"data.csv"``, ``"DataFrame"``).
        rows: one ``[L_i]`` int64 array per series: the 0-based position in the read table
            of each step (None when the table was not read by ``read_table``).
        time_format: how a text time column was written (``"%YQ%q"`` for ``1998Q1``, see
            :func:`seqstate.recipe.calendar.written_format`), or the zone of a column of
            zone-aware datetimes (``"tz:Europe/Berlin"``, read as UTC), so output times keep
            it; None for numbers, naive datetimes and forms no pattern writes back exactly.
    """

    columns: Columns
    ids: list[Any]
    features: list[np.ndarray]
    targets: list[np.ndarray]
    times: list[np.ndarray]
    source: str = "table"
    # One [L_i] int64 array per series: each step's 0-based row in the table it was read from
    # (read_table sets it; None for tables built otherwise). Writers use it to answer in the
    # input's row order.
    rows: list[np.ndarray] | None = None

    def __post_init__(self) -> None:
        # A table derived with other steps (transformed, differenced) has no row map: drop it
        # rather than carry positions that no longer match the steps.
        if self.rows is not None and (
            len(self.rows) != len(self.features)
            or any(len(r) != len(f) for r, f in zip(self.rows, self.features, strict=True))
        ):
            object.__setattr__(self, "rows", None)

    time_format: str | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        """``(n,)`` int64 steps per series."""
        return np.array([len(f) for f in self.features], dtype=np.int64)

    @property
    def num_features(self) -> int:
        return len(self.columns.features)

    @property
    def num_outputs(self) -> int:
        """``O`` target columns, or the number of classes for classification."""
        if self.columns.task == "classification":
            top = max((int(t.max()) for t in self.targets if t.size), default=-1)
            return max(2, top + 1)
        return len(self.columns.targets)

    def pairs(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """``(inputs, targets)``: for each series ``x [L_i - shift, F]`` and
        ``y [L_i - shift, O]`` with ``y[t]`` = the target columns at step ``t + shift``.

        The last ``shift`` steps have no target and are left out (their state would never be
        scored); :func:`read_table` guarantees every series is longer than ``shift``.
        """
        if not self.columns.targets:
            raise ValueError(
                f"{self.source} was read without target columns; pass targets=[...] to "
                "read_table to train or evaluate on it."
            )
        shift = self.columns.shift
        inputs = [f[: len(f) - shift] for f in self.features]
        targets = [t[shift:] for t in self.targets]
        return inputs, targets

    def lanes(
        self,
        *,
        lanes: int,
        window: int,
        shuffle: bool = False,
        seed: int = 0,
        segments: bool = True,
    ) -> Any:
        """:class:`seqstate.Lanes` of :meth:`pairs`.

        Several series are packed into ``min(lanes, series)`` lanes
        (:meth:`Lanes.from_sequences`). With ``segments`` a table of *one* series is instead
        cut into ``lanes`` contiguous segments (:meth:`Lanes.from_series`), so training still
        runs ``lanes`` rows side by side; give ``segments=False`` for evaluation, where the
        series should be played whole from one zero state.
        """
        from seqstate.lanes.lanes import Lanes

        inputs, targets = self.pairs()
        if segments and len(inputs) == 1:
            steps = len(inputs[0])
            return Lanes.from_series(
                inputs[0], lanes=min(lanes, steps), window=window, targets=targets[0]
            )
        return Lanes.from_sequences(
            inputs,
            targets,
            lanes=min(lanes, len(inputs)),
            window=window,
            shuffle=shuffle,
            seed=seed,
        )

    def select(self, indices: Sequence[int]) -> SequenceTable:
        """A table holding only the series at ``indices`` (in that order)."""
        picked = [int(i) for i in indices]
        return dataclasses.replace(
            self,
            ids=[self.ids[i] for i in picked],
            features=[self.features[i] for i in picked],
            targets=[self.targets[i] for i in picked],
            times=[self.times[i] for i in picked],
            rows=None if self.rows is None else [self.rows[i] for i in picked],
        )

    def slice_steps(self, begin: int | Sequence[int], end: int | Sequence[int]) -> SequenceTable:
        """Each series cut to ``[begin_i : end_i]`` (ints apply to every series)."""
        n = len(self)
        begins = [begin] * n if isinstance(begin, int) else list(begin)
        ends = [end] * n if isinstance(end, int) else list(end)
        return dataclasses.replace(
            self,
            features=[f[b:e] for f, b, e in zip(self.features, begins, ends, strict=True)],
            targets=[t[b:e] for t, b, e in zip(self.targets, begins, ends, strict=True)],
            times=[t[b:e] for t, b, e in zip(self.times, begins, ends, strict=True)],
            rows=None
            if self.rows is None
            else [r[b:e] for r, b, e in zip(self.rows, begins, ends, strict=True)],
        )

    def describe(self) -> dict[str, Any]:
        """Counts for messages and run metadata."""
        lengths = self.lengths
        return {
            "source": self.source,
            "series": len(self),
            "steps": int(lengths.sum()),
            "length_min": int(lengths.min()),
            "length_median": float(np.median(lengths)),
            "length_max": int(lengths.max()),
        }
