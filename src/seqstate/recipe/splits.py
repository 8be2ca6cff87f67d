"""Splits and normalisation of a :class:`~seqstate.recipe.table.SequenceTable`.

Splits are by series (a seeded fraction of the ids) or by time (the last fraction of every
series); normalisation is fitted on the training split only (:meth:`Normalization.fit`) and
stored in the model (:meth:`Normalization.apply`), so it is saved with the weights. Every public
name here is importable from :mod:`seqstate.recipe.sources` too.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np

from seqstate._validate import check_int
from seqstate.recipe.table import SequenceTable

__all__ = ["Normalization", "constant_columns", "split_table"]

SplitBy = Literal["series", "time"]


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def split_table(
    table: SequenceTable, *, by: SplitBy = "series", fraction: float = 0.2, seed: int = 0
) -> tuple[SequenceTable, SequenceTable]:
    """Split into (train, validation).

    Args:
        by: ``"series"``: a seeded random ``fraction`` of the series (at least one, never all)
            goes to validation whole. ``"time"``: the last ``fraction`` of every series goes to
            validation; validation then starts from a zero state at the split point, so keep
            its part long compared to the model's memory.
        fraction: share of series (``by="series"``) or of each series' steps (``"time"``), in
            ``(0, 1)``.
        seed: seed of the series permutation (``by="series"``).
    """
    if not isinstance(table, SequenceTable):
        raise TypeError(
            f"table must be a SequenceTable (from read_table); received {type(table).__name__}. "
            "Read a DataFrame or file with seqstate.read_table(..., targets=..., id_column=...)."
        )
    if by not in ("series", "time"):
        raise ValueError(f"by must be 'series' or 'time'; received {by!r}.")
    check_int(seed, "seed", 0)
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, int | float)
        or not (0.0 < fraction < 1.0)
    ):
        error = ValueError if isinstance(fraction, int | float) else TypeError
        raise error(
            f"fraction must be a number strictly between 0 and 1; received "
            f"{type(fraction).__name__} {fraction!r}."
        )
    if by == "series":
        n = len(table)
        if n < 2:
            raise ValueError(
                f"{table.source} has {n} series; splitting by series needs at least 2. Split by "
                "time instead (by='time', --split time)."
            )
        count = min(n - 1, max(1, round(fraction * n)))
        permutation = np.random.default_rng(seed).permutation(n)
        validation = np.sort(permutation[:count])
        train = np.sort(permutation[count:])
        return table.select(train.tolist()), table.select(validation.tolist())
    shift = table.columns.shift
    lengths = table.lengths
    cuts = np.floor(lengths * (1.0 - fraction)).astype(np.int64)
    for i, (length, cut) in enumerate(zip(lengths.tolist(), cuts.tolist(), strict=True)):
        if cut <= shift or length - cut <= shift:
            owner = f"series {table.ids[i]!r}" if table.columns.id else "the series"
            raise ValueError(
                f"{owner} has {length} steps: splitting its last {fraction:.0%} off leaves "
                f"{cut} for training and {length - cut} for validation, and each part needs more "
                f"than shift={shift}. Use a different fraction, split by series, or drop short "
                "series."
            )
    return table.slice_steps(0, cuts.tolist()), table.slice_steps(cuts.tolist(), lengths.tolist())


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Normalization:
    """Per-column mean and std, fitted on training data only: the model's input layer.

    Not a second copy of :class:`seqstate.recipe.scaling.Scaling`; the two act at different
    layers and are each stored once:

    - ``Scaling`` belongs to the *run* (raw units <-> run space): per-series robust location
      and scale, log and differencing, with exact inverses. It is a cell of the run's step
      function (``scaling.json`` + ``scaling.safetensors``); a bare model knows nothing of it.
    - ``Normalization`` belongs to the *model*: it standardises the columns the network reads
      (run-space values, and the calendar columns appended after ``Scaling``, in their own
      units) so that every input has unit spread for the optimiser. It is kept in the
      model's buffers (saved with its weights, so a bare ``load_model`` predicts correctly);
      the ``normalization`` entry of a run's metadata only describes it.
    """

    input_mean: tuple[float, ...]  # per feature
    input_std: tuple[float, ...]  # per feature (0 for a constant feature; the model uses 1)
    output_mean: tuple[float, ...] | None = None  # per target column (regression only)
    output_std: tuple[float, ...] | None = None  # per target column (regression only)

    @classmethod
    def fit(cls, table: SequenceTable) -> Normalization:
        """Statistics of ``table``'s rows: pass the *training* split, never validation."""
        features = np.concatenate(table.features).astype(np.float64)
        input_mean, input_std = features.mean(axis=0), features.std(axis=0)
        if table.columns.task != "regression" or not table.columns.targets:
            return cls(_floats(input_mean), _floats(input_std))
        targets = np.concatenate(table.targets).astype(np.float64)
        return cls(
            _floats(input_mean),
            _floats(input_std),
            _floats(targets.mean(axis=0)),
            _floats(targets.std(axis=0)),
        )

    def apply(self, model: Any) -> None:
        """Store the statistics in ``model``'s buffers (saved with its weights)."""
        model.set_normalization(self.input_mean, self.input_std, self.output_mean, self.output_std)

    def to_dict(self) -> dict[str, Any]:
        return {
            k: (list(v) if v is not None else None) for k, v in dataclasses.asdict(self).items()
        }


def _floats(values: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def constant_columns(table: SequenceTable) -> list[str]:
    """Feature columns whose value never changes (they carry no information)."""
    features = np.concatenate(table.features)
    spread = features.max(axis=0) - features.min(axis=0)
    return [name for name, s in zip(table.columns.features, spread, strict=True) if s == 0]
