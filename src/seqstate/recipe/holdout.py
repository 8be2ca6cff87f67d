"""Warm validation on the tail of every series: play each series whole, score only its tail.

Splitting every series at a time ``cut`` and validating on the part after it from a zero state
scores a model that forgot the series (its state starts empty at the cut). Here the validation
lanes hold each *whole* series, so the state is warmed up on the history exactly as it is at
prediction time, but only the targets from the cut on count::

    series i, pairs t = 0 .. L_i - shift - 1 (input row t, target row t + shift)
        t <  first_i   warm-up: run, not scored       first_i = cut_i - shift
        t >= first_i   scored: its target row is >= cut_i, never trained on

Training uses the rows before ``cut_i`` only (:func:`split_tail`), so no scored target is ever
seen in training; the validation inputs after the cut are the actual values (one step ahead).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from seqstate.lanes.lanes import Lanes, Window

__all__ = ["ScoredFrom", "Tail", "split_tail"]


class ScoredFrom(Lanes):
    """:class:`Lanes` whose ``window.loss_mask`` counts a sequence's steps only from ``first[i]``
    on (the warm-up before it runs but is not scored). Everything else is the base layout."""

    def __init__(self, base: Lanes, first: Sequence[int] | np.ndarray) -> None:
        first_steps = np.asarray(first, dtype=np.int64)
        if first_steps.shape != (base.num_sequences,):
            raise ValueError(
                f"first must hold one step per sequence, ({base.num_sequences},); received "
                f"shape {first_steps.shape}"
            )
        if (first_steps < 0).any() or (first_steps >= base.lengths).any():
            raise ValueError(
                "first[i] must be a step inside sequence i (0 <= first[i] < length[i]); "
                f"received {first_steps.tolist()} for lengths {base.lengths.tolist()}"
            )
        self.__dict__.update(base.__dict__)  # the same layout, plans and data
        self._first = torch.from_numpy(first_steps)

    @property
    def first(self) -> np.ndarray:
        """``(n,)`` the first scored step of each sequence."""
        return self._first.numpy()

    def windows(
        self,
        epoch: int = 0,
        *,
        start: int = 0,
        rows: slice | Sequence[int] | np.ndarray | torch.Tensor | None = None,
    ) -> Iterator[Window]:
        for window in super().windows(epoch, start=start, rows=rows):
            real = window.seq >= 0
            first = self._first.to(window.seq.device)[window.seq.clamp(min=0)]
            scored = real & (window.step >= first)
            yield dataclasses.replace(window, loss_mask=window.loss_mask & scored)

    def __repr__(self) -> str:
        return f"ScoredFrom({super().__repr__()}, scored steps from {self.first.tolist()[:5]}...)"


@dataclasses.dataclass(frozen=True)
class Tail:
    """The validation side of a tail split: the whole series, scored from ``cuts`` on.

    Reads like a validation table where the recipe and doctor need one: ``len`` counts the
    series, ``lengths`` the steps held out, ``ids`` names them; :meth:`lanes` gives the
    warm :class:`ScoredFrom` lanes.
    """

    table: Any  # the whole SequenceTable
    cuts: np.ndarray  # (n,) rows of each series before its held-out tail

    def __len__(self) -> int:
        return len(self.table)

    @property
    def ids(self) -> list[Any]:
        return list(self.table.ids)

    @property
    def lengths(self) -> np.ndarray:
        """``(n,)`` the rows of each series held out (scored)."""
        return np.asarray(self.table.lengths - self.cuts, dtype=np.int64)

    def lanes(self, *, lanes: int, window: int, segments: bool = False, **_: Any) -> ScoredFrom:
        """Warm validation lanes: each whole series, scored from its cut (``segments`` is
        accepted for the table interface; whole series are never cut into segments here)."""
        whole = self.table.lanes(lanes=lanes, window=window, segments=False)
        return ScoredFrom(whole, self.cuts - self.table.columns.shift)


def split_tail(table: Any, fraction: float) -> tuple[Any, Tail]:
    """(the training table: each series' rows before its cut; the held-out :class:`Tail`,
    whose lanes warm up on each whole series and score the targets from the cut on).

    Args:
        table: a :class:`seqstate.recipe.sources.SequenceTable` with targets.
        fraction: share of each series' rows at its end held out, in ``(0, 1)``.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction < 1:
        error = ValueError if isinstance(fraction, int | float) else TypeError
        raise error(
            f"fraction must be a number strictly between 0 and 1; received "
            f"{type(fraction).__name__} {fraction!r}"
        )
    shift = table.columns.shift
    lengths = table.lengths
    cuts = np.floor(lengths * (1.0 - fraction)).astype(np.int64)
    for i, (length, cut) in enumerate(zip(lengths.tolist(), cuts.tolist(), strict=True)):
        if cut <= shift or length - cut < 1:
            owner = f"series {table.ids[i]!r}" if table.columns.id else "the series"
            raise ValueError(
                f"{owner} has {length} steps: holding out its last {fraction:.0%} leaves {cut} "
                f"for training and {length - cut} to validate; training needs more than "
                f"shift={shift} and validation at least 1. Use a different fraction, split by "
                "series, or drop short series."
            )
    return table.slice_steps(0, cuts.tolist()), Tail(table, cuts)
