"""Suggestions: the scaling, transforms and calendar features a table calls for, and why.

``seqstate train`` applies :func:`suggest` when the settings say ``auto`` (the default) and
``seqstate doctor`` prints it, so what is chosen and what is shown are one computation:

- **per-series scaling** whenever the table has an id column (series' scales differ; one
  global mean/std drowns the small ones);
- **seasonal differencing** at the period of the time column's calendar (12 for monthly
  data, 7 daily, 24 hourly, 4 quarterly, 52 weekly) when the seasonal pattern is strong: the
  lag-``m`` autocorrelation of the first differences, less that at half a season (so a smooth
  trend does not count), median over series, is above :data:`SEASONAL_ACF`, and every series
  holds at least three seasons;
- **calendar features** of that period (month, weekday, hour) with it;
- **log** and **lag-1 differences** are only suggested, never applied by default: a log for
  positive series whose own values span more than a factor :data:`LOG_SPAN`, differences for
  series whose level drifts far beyond their step-to-step changes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from seqstate.recipe.scaling import ScaleMethod, ScalingConfig

__all__ = ["LOG_SPAN", "SEASONAL_ACF", "Suggestion", "season_of", "suggest"]

SEASONAL_ACF = 0.3  # the median lag-m autocorrelation of differences that calls a season
LOG_SPAN = 10.0  # p95 / p5 of a positive series above which a log is suggested
_DRIFT = 20.0  # a level range over this many median step sizes suggests lag-1 differences

# Median spacing (in hours) -> (seasonal period in steps, calendar features).
_CALENDARS = (
    ((0.9, 1.1), 24, ("hour", "weekday")),
    ((23.0, 25.0), 7, ("weekday",)),
    ((24.0 * 6.5, 24.0 * 7.5), 52, ("month",)),
    ((24.0 * 27.5, 24.0 * 31.5), 12, ("month",)),
    ((24.0 * 88.0, 24.0 * 93.0), 4, ("month",)),
)


@dataclasses.dataclass(frozen=True)
class Suggestion:
    """What fits a table, with one reason per choice (printed by ``seqstate doctor``)."""

    scaling: ScalingConfig  # applied by ``train`` for ``auto`` settings
    calendar: tuple[str, ...]  # calendar features applied for ``auto``
    reasons: tuple[str, ...]  # why each choice was made
    hints: tuple[str, ...]  # transforms worth trying that are not applied by default


def season_of(times: np.ndarray) -> tuple[int, tuple[str, ...]]:
    """``(period, calendar features)`` of datetime ``times`` ``[L]``; ``(0, ())`` when the
    times are numbers or their spacing matches no calendar."""
    values = np.asarray(times)
    if not np.issubdtype(values.dtype, np.datetime64) or len(values) < 2:
        return 0, ()
    hours = float(np.median(np.diff(values).astype("timedelta64[s]").astype(np.float64))) / 3600
    for (low, high), period, calendar in _CALENDARS:
        if low <= hours <= high:
            return period, calendar
    return 0, ()


def suggest(table: Any) -> Suggestion:
    """The :class:`Suggestion` for a :class:`seqstate.recipe.sources.SequenceTable` (pass the
    training part: it looks at the targets' history only)."""
    columns = table.columns
    reasons, hints = [], []
    method: ScaleMethod = "series" if columns.id is not None and len(table) > 1 else "global"
    regression = columns.task == "regression" and bool(columns.targets)
    if not regression:
        reasons.append(
            f"scaling: {method} normalisation of the features (task {columns.task!r}: no "
            "transform of the targets)"
        )
        return Suggestion(ScalingConfig(method=method), (), tuple(reasons), ())

    values = [np.asarray(t, dtype=np.float64) for t in table.targets]
    medians = np.array([np.median(np.abs(v)) for v in values])
    if method == "series":
        spread = (medians.max() + 1e-12) / (medians.min() + 1e-12)
        reasons.append(
            f"scaling: per series ({len(table)} series; their typical sizes differ by a "
            f"factor {spread:.3g}), each on its own training part"
        )
    else:
        reasons.append("scaling: one location and scale (the table is one series)")

    period, calendar = season_of(table.times[0])
    season = 0
    shortest = int(table.lengths.min())
    if period:
        correlations = [_seasonal_correlation(v[:, 0], period) for v in values]
        known = [c for c in correlations if np.isfinite(c)]
        strength = float(np.median(known)) if known else float("nan")
        if shortest < 3 * period + 1:
            reasons.append(
                f"season: none (the shortest series has {shortest} steps, under three seasons "
                f"of {period})"
            )
            calendar = ()
        elif strength > SEASONAL_ACF:
            season = period
            reasons.append(
                f"season: differences at lag {period} and calendar {list(calendar)} (the "
                f"changes' lag-{period} autocorrelation exceeds the half-season one by "
                f"{strength:.2f} > {SEASONAL_ACF}: a strong seasonal pattern)"
            )
        else:
            reasons.append(
                f"season: none (the changes' lag-{period} autocorrelation exceeds the "
                f"half-season one by {strength:.2f} <= {SEASONAL_ACF}: no seasonal pattern of "
                f"period {period})"
            )
            calendar = ()
    else:
        reasons.append("season: none (the time column is not a calendar of regular steps)")

    positive = all(bool((v > 0).all()) for v in values)
    if positive:
        spans = [np.percentile(v, 95) / np.percentile(v, 5) for v in values]
        wide = float(np.median(spans))
        if wide > LOG_SPAN:
            hints.append(
                f"transform: log (every target is > 0 and a series' values typically span a "
                f"factor {wide:.3g}): --transform log"
            )
    drifts = []
    for v in values:
        steps = np.median(np.abs(np.diff(v[:, 0]))) if len(v) > 1 else 0.0
        level = np.percentile(v[:, 0], 95) - np.percentile(v[:, 0], 5)
        drifts.append(level / steps if steps > 0 else 0.0)
    drift = float(np.median(drifts))
    if drift > _DRIFT and not season:
        hints.append(
            f"transform: lag-1 differences (the level ranges over {drift:.0f} typical steps: "
            "a trend or wandering level): --difference 1"
        )
    config = ScalingConfig(method=method, season=season)
    return Suggestion(config, tuple(calendar), tuple(reasons), tuple(hints))


def _seasonal_correlation(series: np.ndarray, period: int) -> float:
    """How much more the changes correlate at lag ``period`` than half a season away: the
    lag-``period`` autocorrelation of the first differences minus the (positive part of the)
    lag-``period // 2`` one. A season makes the first large and the second negative; a smooth
    trend makes both large, so it does not count as a season. NaN when too short or flat."""
    changes = np.diff(series)
    if len(changes) <= period:
        return float("nan")
    centred = changes - changes.mean()
    energy = float((centred * centred).sum())
    if energy == 0:
        return float("nan")

    def correlation(lag: int) -> float:
        return float((centred[lag:] * centred[:-lag]).sum() / energy)

    return correlation(period) - max(0.0, correlation(max(1, period // 2)))
