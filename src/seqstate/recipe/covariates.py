"""Covariates: calendar features from the time column, and known future values.

A recurrent model cannot tell January from July unless it is told: calendar features give
each step the position of its time in the year, week and day as a point on a circle, so that
December and January are neighbours::

    month_sin, month_cos     = sin, cos(2 pi (month - 1) / 12)
    weekday_sin, weekday_cos = sin, cos(2 pi weekday / 7)          (Monday = 0)
    hour_sin, hour_cos       = sin, cos(2 pi (hour + minute / 60) / 24)

They are known in the future, so a forecast feeds them for every step it rolls out
(``seqstate.forecast(..., covariates=...)``): :func:`calendar_features` of the forecast's
timestamps. Other known-future columns (prices, holidays) come from a table of future rows,
read by :func:`future_covariates`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "CALENDAR_KINDS",
    "Future",
    "calendar_features",
    "calendar_names",
    "future_covariates",
    "match_future",
    "parse_calendar",
    "read_future",
    "with_calendar",
]

CALENDAR_KINDS = ("month", "weekday", "hour")
_PERIODS = {"month": 12.0, "weekday": 7.0, "hour": 24.0}


def parse_calendar(value: Any) -> tuple[str, ...]:
    """``"month,weekday"`` / ``["month"]`` / ``None`` -> a checked tuple of kinds."""
    if value is None or value == "" or value == "none":
        return ()
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple):
        raise TypeError(
            "calendar must be a list of calendar features (or one comma-separated string) "
            f"from {list(CALENDAR_KINDS)}; received {type(value).__name__} {value!r}."
        )
    kinds = tuple(value)
    unknown = [kind for kind in kinds if kind not in CALENDAR_KINDS]
    if unknown:
        raise ValueError(
            f"unknown calendar feature(s) {unknown}; choose from {list(CALENDAR_KINDS)} "
            "(e.g. --calendar month for monthly data, month,weekday,hour for hourly data)."
        )
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"calendar names a feature twice: {list(kinds)}.")
    return kinds


def calendar_names(kinds: Sequence[str]) -> tuple[str, ...]:
    """The feature column names, ``("month_sin", "month_cos", ...)``."""
    return tuple(f"{kind}_{part}" for kind in kinds for part in ("sin", "cos"))


def calendar_features(times: Any, kinds: Sequence[str]) -> np.ndarray:
    """``[L, 2K]`` float32 sin/cos features of ``times`` (``[L]`` datetime64) for ``kinds``."""
    import pandas as pd

    kinds = parse_calendar(list(kinds))
    values = np.asarray(times)
    if not np.issubdtype(values.dtype, np.datetime64):
        raise ValueError(
            f"calendar features {list(kinds)} need dates and times in the time column; it holds "
            f"{values.dtype} values (like {values[:1].tolist()}). Give the time column as dates "
            "(e.g. 2024-01-31, or 2024-01 for months), or drop --calendar."
        )
    stamps = pd.DatetimeIndex(values)
    columns = []
    for kind in kinds:
        if kind == "month":
            position = stamps.month.to_numpy() - 1.0
        elif kind == "weekday":
            position = stamps.day_of_week.to_numpy().astype(np.float64)
        else:
            position = stamps.hour.to_numpy() + stamps.minute.to_numpy() / 60.0
        angle = 2.0 * np.pi * position / _PERIODS[kind]
        columns += [np.sin(angle), np.cos(angle)]
    if not columns:
        return np.zeros((len(values), 0), dtype=np.float32)
    return np.stack(columns, axis=-1).astype(np.float32)


def with_calendar(table: Any, kinds: Sequence[str]) -> Any:
    """``table`` (a :class:`seqstate.recipe.sources.SequenceTable`) with calendar feature columns
    appended after its features (computed from each series' times)."""
    kinds = parse_calendar(list(kinds))
    if not kinds:
        return table
    names = calendar_names(kinds)
    clash = [name for name in names if name in table.columns.features]
    if clash:
        raise ValueError(
            f"the table already has feature column(s) {clash}; rename them or drop --calendar."
        )
    features = [
        np.concatenate([values, calendar_features(times, kinds)], axis=1)
        for values, times in zip(table.features, table.times, strict=True)
    ]
    columns = dataclasses.replace(table.columns, features=(*table.columns.features, *names))
    return dataclasses.replace(table, columns=columns, features=features)


def future_covariates(
    source: Any,
    names: Sequence[str],
    table: Any,
    horizon: int,
    stamps: Sequence[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Known future values of the columns ``names`` for each series of ``table``.

    Args:
        source: a DataFrame or a .csv/.tsv/.parquet path with the table's id and time columns
            and the ``names`` columns, holding rows *after* each series' last time.
        names: the covariate columns, in the order the model reads them.
        table: the forecast's context (a :class:`seqstate.recipe.sources.SequenceTable`).
        horizon: the forecast's steps.
        stamps: each series' forecast times (``[horizon]``, as
            :func:`seqstate.recipe.calendar.forecast_stamps` gives them): row h is the row at
            exactly that time, and a time the file lacks is refused; None: the first
            ``horizon`` rows after the series' last time.

    Returns:
        One ``[horizon, K]`` float32 array per series of ``table``: row h holds the values at
        forecast step h.

    Raises:
        ValueError naming the series when it has fewer than ``horizon`` future rows, and any
        error :func:`seqstate.recipe.sources.read_table` raises for the file (missing columns, NaN,
        duplicate times).
    """
    future = read_future(source, names, table)
    return match_future(future, names, table, horizon, stamps).values


def read_future(source: Any, names: Sequence[str], table: Any) -> Any:
    """The future rows in ``source`` (a DataFrame or a .csv/.tsv/.parquet path) read like
    ``table``: its id and time columns, and the columns ``names``."""
    from seqstate.recipe.sources import read_table

    if table.columns.time is None:
        raise ValueError(
            "future covariates are matched to the forecast by time, and the run has no time "
            "column; train with --time to forecast with future covariates."
        )
    return read_table(
        source,
        features=list(names),
        id_column=table.columns.id,
        time_column=table.columns.time,
        require_targets=False,
    )


class Future(NamedTuple):
    """What :func:`match_future` found for each series: ``values [horizon, K]`` float32 and
    the ``times [horizon]`` of those rows."""

    values: list[np.ndarray]
    times: list[np.ndarray]


def match_future(
    future: Any,
    names: Sequence[str],
    table: Any,
    horizon: int,
    stamps: Sequence[np.ndarray] | None = None,
) -> Future:
    """The columns ``names`` of ``future`` (a table of rows after the history's) for each
    series of ``table``: matched by series id and column name, never by position; with
    ``stamps`` (each series' forecast times), the rows at exactly those times; else, with a
    time column, the first ``horizon`` rows after each series' last time, else its first rows.

    Raises ValueError naming the column, the series or the row where ``future`` lacks one or
    holds NaN.
    """
    columns = table.columns
    held = list(future.columns.features)
    missing = [name for name in names if name not in held]
    if missing:
        raise ValueError(
            f"{future.source} has no column(s) {missing}; the forecast needs the future values "
            f"of {list(names)} (it holds {held})."
        )
    picked = [held.index(name) for name in names]
    by_id = {str(key): index for index, key in enumerate(future.ids)}
    values, times = [], []
    for index, series_id in enumerate(table.ids):
        owner = f"series {series_id!r}" if columns.id else "the series"
        row = by_id.get(str(series_id))
        last = table.times[index][-1]
        if row is None:
            raise ValueError(
                f"{future.source} has no rows for {owner}; it needs the {horizon} rows after "
                f"its last time ({_shown(last)})."
            )
        rows, held_times = np.asarray(future.features[row]), np.asarray(future.times[row])
        if stamps is not None:
            wanted = np.asarray(stamps[index])
            rows, held_times = _rows_at(rows, held_times, wanted, owner, future, last)
        elif columns.time is not None:
            after = held_times > last
            rows, held_times = rows[after], held_times[after]
        found = rows[:horizon][:, picked]
        if len(found) < horizon:
            raise ValueError(
                f"{future.source} has {len(found)} row(s) after the last time "
                f"({_shown(last)}) of {owner}; the forecast of {horizon} step(s) needs "
                f"{horizon}, one per forecast step."
            )
        bad = ~np.isfinite(found.astype(np.float64))
        if bad.any():
            step, column = (int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{future.source} holds {found[step, column]} in {names[column]!r} of {owner} "
                f"at {_shown(held_times[step])} (forecast step {step + 1}); the known future "
                "values must be finite."
            )
        values.append(found.astype(np.float32))
        times.append(held_times[:horizon])
    return Future(values, times)


def _rows_at(
    rows: np.ndarray, held: np.ndarray, wanted: np.ndarray, owner: str, future: Any, last: Any
) -> tuple[np.ndarray, np.ndarray]:
    """The rows of one series at exactly the times ``wanted`` (its forecast steps); a time
    the series' rows lack is refused by name (its rows are sorted by time)."""
    held = held.astype(wanted.dtype, copy=False)
    at = np.searchsorted(held, wanted).clip(max=max(len(held) - 1, 0))
    hit = (held[at] == wanted) if held.size else np.zeros(len(wanted), dtype=bool)
    if not hit.all():
        step = int(np.flatnonzero(~hit)[0])
        raise ValueError(
            f"{future.source} has no row for {owner} at {_shown(wanted[step])}, forecast step "
            f"{step + 1}; the forecast steps on the series' calendar after its last time "
            f"({_shown(last)}): {', '.join(_shown(t) for t in wanted[:3])}"
            f"{', ...' if len(wanted) > 3 else ''}, and each needs its row (matched by time, "
            "never by position)."
        )
    return rows[at], held[at]


def _shown(value: Any) -> str:
    from seqstate.recipe.calendar import format_time

    return format_time(value)  # a datetime64's .item() would be raw nanoseconds
