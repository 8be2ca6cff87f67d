"""What warm evaluation and the backtest check and say about a table: its season, its task,
its series names and times as text."""

from __future__ import annotations

from typing import Any

import numpy as np

from seqstate.recipe.calendar import covered_seasons, observed_seasons

__all__ = ["infer_season", "infer_seasons", "interval_lines", "interval_table_of"]


def infer_seasons(table: Any) -> tuple[int, ...]:
    """Every seasonal period of ``table``'s calendar, the shortest first: ``(12,)`` for
    months, ``(48, 336)`` for half hours, the steps of a usual day and week for business hours
    (:func:`~seqstate.recipe.calendar.observed_seasons`) that the longest series holds at
    least twice (:func:`~seqstate.recipe.calendar.covered_seasons`); ``()`` when the series
    disagree or have none."""
    found = set()
    for times in table.times[:50]:
        if np.issubdtype(np.asarray(times).dtype, np.datetime64) and len(times) >= 3:
            found.add(observed_seasons(times))
    if len(found) != 1:
        return ()
    return covered_seasons(found.pop(), max(len(times) for times in table.times))


def infer_season(table: Any) -> int:
    """The main seasonal period of ``table``'s calendar (12 for months, 48 for half hours,
    the shortest of :func:`infer_seasons`), 1 when unknown."""
    seasons = infer_seasons(table)
    return seasons[0] if seasons else 1


def check_season(season: Any, table: Any) -> int:
    if season is None:
        return infer_season(table)
    if isinstance(season, bool) or not isinstance(season, int | np.integer) or season < 1:
        wrong_type = isinstance(season, bool) or not isinstance(season, int | np.integer)
        raise (TypeError if wrong_type else ValueError)(
            f"season must be an int >= 1 (steps per season, e.g. 12 for monthly data) or None "
            f"to infer it from the time column; received {season!r}"
        )
    return int(season)


def check_regression(table: Any, what: str) -> None:
    if table.columns.task != "regression":
        raise ValueError(
            f"{what} scores forecasts of numbers, which needs a regression run; this table's "
            "task is classification. Use seqstate.evaluate on lanes (or `seqstate evaluate` "
            "without --warmup-until)"
        )
    if not table.columns.targets or any(t.shape[1] == 0 for t in table.targets):
        raise ValueError(f"{what} needs the target columns in the table; none were read")


def time_text(times: np.ndarray, index: int) -> str:
    from seqstate.recipe.calendar import format_time

    return format_time(times[index])


def gap_lines(gaps: Any, season: int) -> list[str]:
    """The note on series with gaps in time (:func:`seqstate.recipe.calendar.gapped_series`),
    or none."""
    if not len(gaps):
        return []
    shown = ", ".join(repr(g) for g in list(gaps)[:3]) + (" ..." if len(gaps) > 3 else "")
    lag = f"the MASE's lag of {season} rows and seasonal naive" if season > 1 else "the scores"
    return [
        f"  note: {len(gaps)} series have gaps in time ({shown}): {lag} count rows, not "
        "calendar steps, so their scores compare other times; resample them to a regular "
        "calendar for comparable scores"
    ]


def time_bounds(stamps: Any) -> tuple[str, str]:
    """(earliest, latest) of raw times, as text: compared as times (9 before 10), never as
    their text."""
    from seqstate.recipe.calendar import format_time

    values = np.asarray(stamps)
    return format_time(values.min()), format_time(values.max())


def series_name(table: Any, index: int) -> Any:
    return table.ids[index] if table.columns.id is not None else "(the series)"


def interval_table_of(forecaster: Any) -> Any:
    """The forecaster's calibrated :class:`~seqstate.recipe.intervals.IntervalTable` (a run's
    ``interval_table()``), or None: a bare model, or a run trained without one."""
    getter = getattr(forecaster, "interval_table", None)
    return getter() if callable(getter) else None


def interval_lines(summary: dict[str, Any], prefix: str) -> list[str]:
    """The summary line of the interval scores under ``prefix`` (none when not scored)."""
    if f"{prefix}coverage_80" not in summary:
        return []
    s = {key[len(prefix) :]: value for key, value in summary.items() if key.startswith(prefix)}
    return [
        f"  intervals (the run's calibrated quantiles around its forecast): coverage "
        f"{s['coverage_80']:.1%} of the 80% interval, {s.get('coverage_95', float('nan')):.1%} "
        f"of the 95%; mean width {s['width_80']:.3g} (80%, MASE-scaled); CRPS "
        f"{s['crps']:.4g}, pinball {s['pinball']:.4g} (MASE-scaled)"
    ]
