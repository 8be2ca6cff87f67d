"""The errors a run's intervals are calibrated on: its own point forecast, warm, at rolling
origins in the validation part of every series (:mod:`seqstate.recipe.intervals` turns them
into the run's table).

::

    series i:  ... train rows ... | c_i  o_1   o_2  ...  o_k        L_i
                                  | origins spread evenly over the validation tail; from
                                  | each, a forecast of up to H steps (fewer near the end)
    e[w, h] = (actual - point) / d   d: the MASE scale of the series before the origin

Beside them, :func:`naive_errors`: the seasonal naive's mean scaled error per step from every
origin of the whole series, which the table leans on where the validation holds few paths.

The forecaster is the one the run answers with: the network trained on the training part
(never on the validation rows), with the validation's selection applied (a baseline or a
combination), so the intervals belong to whatever point forecast the run gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "MAX_HORIZON",
    "MAX_ORIGINS",
    "ORIGIN_BUDGET",
    "calibrate",
    "calibration_horizon",
    "collect_errors",
    "independent_paths",
    "naive_errors",
    "validation_series",
]

#: Origins per series at most (each is one warm forecast of every series that has it).
MAX_ORIGINS = 24
#: Forecast windows in all (series x origins) beyond which fewer origins per series are used.
ORIGIN_BUDGET = 2400


#: Most steps the errors are collected for (the table's power law carries on past them).
MAX_HORIZON = 256


def calibration_horizon(season: int, tails: Sequence[int]) -> int:
    """Steps the errors are collected for: two seasons, at least 8 (the selection's horizon),
    or half the longest validation tail when that is longer (a forecast far past the data
    drifts in ways the first steps do not show), at most :data:`MAX_HORIZON`."""
    longest = max((int(t) for t in tails), default=0)
    return min(max(2 * int(season), 8, longest // 2), MAX_HORIZON)


def validation_series(raw: Any, validation: Any) -> tuple[Any, list[int]] | None:
    """(the raw series holding validation rows, per series the first validation row), or None.

    Split by time the validation is each series' tail (:class:`~seqstate.recipe.holdout.Tail`);
    split by series, the second half of each held-out series (the network never saw them).
    """
    from seqstate.recipe.holdout import Tail

    if validation is None:
        return None
    if isinstance(validation, Tail):
        return raw, [int(c) for c in validation.cuts]
    positions = {identity: i for i, identity in enumerate(raw.ids)}
    table = raw.select([positions[identity] for identity in validation.ids])
    return table, [int(length) // 2 for length in table.lengths]


def collect_errors(
    forecaster: Any,
    table: Any,
    cuts: Sequence[int],
    *,
    season: int,
    horizon: int,
    max_origins: int = MAX_ORIGINS,
    budget: int = ORIGIN_BUDGET,
    with_series: bool = False,
) -> Any:
    """Scaled errors ``[W, horizon]`` (NaN past a series' end) of ``forecaster``'s warm
    forecasts from rolling origins in ``[cuts[i], L_i)`` of each series of the raw ``table``;
    W = windows x targets. ``[0, horizon]`` when no series has a validation row. With
    ``with_series``: (those errors, ``[W]`` the series x target each window belongs to, a
    series' windows in origin order), what the table counts independent draws by."""
    from seqstate.recipe.forecaster import forecast_columns, horizon_forecasts
    from seqstate.recipe.intervals import series_scales

    empty = np.zeros((0, horizon))
    feed = forecast_columns(table.columns)
    series = [i for i, cut in enumerate(cuts) if 2 <= cut < int(table.lengths[i])]
    if feed is None or not series:
        return (empty, np.zeros(0, dtype=np.int64)) if with_series else empty
    per_series = max(2, min(max_origins, budget // len(series)))
    origins: dict[int, list[int]] = {}
    for i in series:
        length, cut = int(table.lengths[i]), int(cuts[i])
        count = min(per_series, length - cut)
        origins[i] = sorted(set(np.rint(np.linspace(cut, length - 1, count)).astype(int).tolist()))
    rows: list[np.ndarray] = []
    owners: list[int] = []  # series x target of each row
    for j in range(max(len(o) for o in origins.values())):
        chosen = [i for i in series if j < len(origins[i])]
        at = [0] * len(table)
        for i in chosen:
            at[i] = origins[i][j]
        paths = horizon_forecasts(forecaster, table, chosen, at, horizon, feed)
        for i in chosen:
            targets = np.asarray(table.targets[i], dtype=np.float64)
            origin, path = at[i], paths[i]
            actual = targets[origin : origin + len(path)]
            scales = series_scales([targets[:origin, o] for o in range(targets.shape[1])], season)
            for o in range(targets.shape[1]):
                row = np.full(horizon, np.nan)
                if scales[o] > 0:
                    row[: len(path)] = (actual[:, o] - path[:, o]) / scales[o]
                rows.append(row)
                owners.append(i * targets.shape[1] + o)
    errors = np.stack(rows) if rows else empty
    return (errors, np.asarray(owners, dtype=np.int64)) if with_series else errors


def calibrate(
    raw: Any, model: Any, prepared: Any, validation: Any, chosen: Any, seasons: Sequence[int]
) -> Any:
    """The :class:`~seqstate.recipe.intervals.IntervalTable` of a network ``model`` trained on
    the training part (with its ``prepared`` scaling and calendar) and the validation's
    ``chosen`` selection (or None), from the rolling validation origins of the raw table; None
    when there is no validation part or the run cannot forecast recursively."""
    from seqstate.recipe.intervals import fit_table
    from seqstate.recipe.run_forecaster import RunForecaster, RunMember

    found = validation_series(raw, validation)
    if found is None or raw.columns.task != "regression":
        return None
    table, cuts = found
    season = int(seasons[0]) if len(seasons) else 1
    metadata = {"selection": chosen.to_dict()} if chosen is not None else {}
    forecaster = RunForecaster(
        [RunMember(model, prepared.scaling, tuple(prepared.preparation.calendar), metadata)]
    )
    tails = [int(n) - c for n, c in zip(table.lengths, cuts, strict=True)]
    horizon = calibration_horizon(season, tails)
    errors, series = collect_errors(
        forecaster, table, cuts, season=season, horizon=horizon, with_series=True
    )
    return fit_table(
        errors,
        season,
        paths=independent_paths(cuts, table.lengths, horizon),
        naive=naive_errors(table, season, horizon),
        series=series,
    )


def naive_errors(table: Any, season: int, horizon: int) -> np.ndarray | None:
    """``[horizon]`` the mean absolute error of the seasonal-naive forecast h = 1..horizon
    steps ahead, from every origin of every series (training and validation rows alike), over
    each series' MASE scale; NaN at a step no series is long enough for; None when no series
    has an error at the first step.

    The naive's errors over the whole history say how fast this data drifts away from its
    last season as the horizon grows (flat for a stable seasonal series, like sqrt(h) for a
    random walk, faster for a trend), seen from far more origins than the validation part
    holds; :func:`~seqstate.recipe.intervals.fit_table` leans on them where the validation
    windows are few paths."""
    from seqstate.recipe.intervals import series_scales

    totals, counts = np.zeros(horizon), np.zeros(horizon)
    for targets in table.targets:
        targets = np.asarray(targets, dtype=np.float64)
        for column in targets.T:  # [L] per target
            lag = int(season) if len(column) > int(season) else 1
            scale = series_scales([column[np.isfinite(column)]], lag)[0]
            if not scale > 0 or len(column) <= lag:
                continue
            for step in range(min(horizon, len(column) - lag)):
                origins = np.arange(lag, len(column) - step)  # first forecast row o
                errors = column[origins + step] - column[origins - lag + step % lag]
                seen = np.isfinite(errors)  # (a missing value spoils only its own errors)
                totals[step] += float(np.abs(errors[seen]).sum()) / scale
                counts[step] += int(seen.sum())
    if counts[0] == 0:
        return None
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, totals / np.maximum(counts, 1), np.nan)


def independent_paths(cuts: Sequence[int], lengths: Sequence[int], horizon: int) -> float | None:
    """How many independent error paths the rolling windows of :func:`collect_errors` hold:
    per series with validation rows, its validation length over ``horizon / 2`` (windows that
    far apart share no step at the errors' mean step), summed; None when there is none.

    A random walk's naive forecast (Student-t(4) steps), its table fitted on 24 such windows
    per series and scored on fresh paths, covers 0.78-0.82 / 0.94-0.97 of its 80% / 95%
    intervals with this count, from one series two horizons long to fifty series (without it:
    0.70 / 0.88 for the one series); a mean-reverting AR(1) (phi 0.8), whose errors decorrelate
    sooner, 0.80-0.81 / 0.94-0.96 for panels but 0.84-0.85 / 0.98 for one series (without it:
    0.77-0.79 / 0.93): the count errs on the wide side when errors forget fast, so
    :func:`calibrate` also gives the table each window's series, and the table measures the
    draws from the errors' autocorrelation instead
    (:func:`seqstate.recipe.intervals.independent_draws`)."""
    total = sum(
        (int(length) - int(cut)) / (horizon / 2)
        for cut, length in zip(cuts, lengths, strict=True)
        if 2 <= int(cut) < int(length)
    )
    return float(total) if total > 0 else None
