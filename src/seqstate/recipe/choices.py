"""Settings chosen from the data, each with the reason it was chosen.

Two kinds of choice, one idea: what a table calls for, computed once, so that what
``seqstate train`` applies and what ``seqstate doctor`` prints are one computation.

**Layout and epoch budget** (:func:`choose`, :func:`apply`). Fixed defaults fit one kind of
table and fail others: 32 lanes and windows of 64 steps suit a panel of many series, but cut
one long series into 32 short segments with 2 windows per epoch and 39% padding, and 10 epochs
of 2 windows are 20 optimiser steps. Here the layout and the epoch budget follow from the
number and lengths of the series:

    lanes, window   enough windows per epoch (>= MIN_WINDOWS) for the optimiser to make
                    progress within an epoch, little padding, at most MAX_LANES lanes;
                    a single series gets fewer lanes (longer segments, fewer cold starts)
    epochs          an optimiser-step budget (UPDATE_BUDGET) spread over the epoch length,
                    clamped to [MIN_EPOCHS, MAX_EPOCHS]; early stopping ends it sooner
    patience        PATIENCE epochs without a better validation loss, then the best epoch's
                    weights are restored
    validation      the last part of every series (its tail, by time), so the score is about
                    the future of the series the model trained on

A value the user gave is kept and reported as given. :func:`choose` returns every choice.

**Scaling, transforms and calendar features** (:func:`suggest`), applied by ``train`` when the
settings say ``auto`` (the default):

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
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from seqstate.recipe.scaling import ScaleMethod, ScalingConfig

__all__ = [
    "LOG_SPAN",
    "SEASONAL_ACF",
    "Choice",
    "Choices",
    "Defaults",
    "Suggestion",
    "apply",
    "choose",
    "layout_cost",
    "season_of",
    "suggest",
]

#: Most lanes chosen automatically (batch rows); more rarely helps a small recurrent model.
MAX_LANES = 32
#: Longest window chosen automatically (steps of truncated backpropagation).
MAX_WINDOW = 64
#: Shortest window chosen automatically.
MIN_WINDOW = 8
#: Windows an epoch should have at least (optimiser steps per epoch).
MIN_WINDOWS = 8
#: Optimiser steps the epoch budget aims for.
UPDATE_BUDGET = 2000
MIN_EPOCHS, MAX_EPOCHS = 20, 500
#: Early-stopping patience in epochs.
PATIENCE = 20


@dataclasses.dataclass(frozen=True)
class Choice:
    """One setting: its value, whether the data chose it, and why."""

    name: str  # the setting, as in run.toml: "lanes", "window", "epochs", ...
    value: Any
    reason: str
    given: bool = False  # True: the user set it (kept as given)

    def line(self) -> str:
        source = "given" if self.given else "chosen"
        return f"{self.name} = {self.value} ({source}: {self.reason})"


@dataclasses.dataclass(frozen=True)
class Choices:
    """Every choice :func:`choose` made, by name."""

    choices: tuple[Choice, ...]

    def __getitem__(self, name: str) -> Any:
        for choice in self.choices:
            if choice.name == name:
                return choice.value
        raise KeyError(f"no default named {name!r}; known: {[c.name for c in self.choices]}")

    def text(self) -> str:
        return "\n".join(choice.line() for choice in self.choices)

    def to_dict(self) -> dict[str, Any]:
        return {c.name: {"value": c.value, "reason": c.reason, "given": c.given} for c in self}

    def __iter__(self) -> Any:
        return iter(self.choices)


def layout_cost(lengths: Sequence[int] | np.ndarray, lanes: int, window: int) -> tuple[int, float]:
    """(windows per epoch, padding fraction) of laying series of ``lengths`` out in ``lanes``
    lanes of ``window`` steps, as :meth:`SequenceTable.lanes` would (a single series is cut
    into ``lanes`` segments; many are packed longest first into the least-loaded lane)."""
    sizes = np.asarray(lengths, dtype=np.int64)
    total = int(sizes.sum())
    if len(sizes) == 1:
        lanes = min(lanes, total)
        longest = -(-total // lanes)
    else:
        lanes = min(lanes, len(sizes))
        loads = np.zeros(lanes, dtype=np.int64)
        for size in np.sort(sizes)[::-1]:
            loads[int(np.argmin(loads))] += size
        longest = int(loads.max())
    windows = -(-longest // window)
    return windows, 1.0 - total / (lanes * window * windows)


def _check_lengths(lengths: Any) -> np.ndarray:
    sizes = np.asarray(lengths)
    if sizes.ndim != 1 or len(sizes) == 0 or sizes.dtype.kind not in "iu" or (sizes < 1).any():
        raise ValueError(
            "lengths must be a non-empty list of series lengths (ints >= 1); received "
            f"{np.asarray(lengths).tolist()!r}"[:200]
        )
    return sizes.astype(np.int64)


def _choose_layout(
    sizes: np.ndarray, lanes: int | None, window: int | None, share: int = 1
) -> list[Choice]:
    n, total = len(sizes), int(sizes.sum())
    what = "one series" if n == 1 else f"{n} series"
    if window is None:
        # As long as MAX_WINDOW, but short enough that one lane's steps give MIN_WINDOWS.
        per_lane = total / min(lanes or MAX_LANES, n if n > 1 else MAX_LANES)
        window_value = int(np.clip(per_lane // MIN_WINDOWS, MIN_WINDOW, MAX_WINDOW))
        if n == 1:
            window_value = int(np.clip(total // MIN_WINDOWS, MIN_WINDOW, MAX_WINDOW))
    else:
        window_value = window
    if lanes is None:
        ceiling = max(1, min(MAX_LANES, total // (window_value * MIN_WINDOWS)))
        if n > 1:
            ceiling = min(ceiling, n)
        # Among the lane counts from half the ceiling up, the least padding (ties: more lanes).
        candidates = range(max(1, ceiling // 2), ceiling + 1)
        lanes_value = min(
            candidates, key=lambda b: (round(layout_cost(sizes, b, window_value)[1], 3), -b)
        )
        # a distributed run's processes each take an equal part of the lanes
        lanes_value = share * -(-lanes_value // share)
    else:
        lanes_value = lanes
    windows, padding = layout_cost(sizes, lanes_value, window_value)
    effect = f"{windows} windows per epoch, {padding:.0%} padding"
    if lanes is None and share > 1:
        effect += f"; a multiple of the {share} processes, which share them equally"
    if lanes is None:
        if n == 1:
            why = (
                f"{what} of {total} steps cut into {lanes_value} segment(s) of about "
                f"{-(-total // lanes_value)} steps: {effect}"
            )
        else:
            why = f"{what}, {total} steps packed: {effect}"
        lanes_choice = Choice("lanes", lanes_value, why)
    else:
        lanes_choice = Choice("lanes", lanes_value, effect, given=True)
    if window is None:
        window_choice = Choice(
            "window",
            window_value,
            f"at most {MAX_WINDOW} steps, short enough for >= {MIN_WINDOWS} windows per lane "
            "when the data allows",
        )
    else:
        window_choice = Choice("window", window_value, "truncated-BPTT length", given=True)
    return [lanes_choice, window_choice]


def choose(
    lengths: Sequence[int] | np.ndarray,
    *,
    lanes: int | None = None,
    window: int | None = None,
    epochs: int | None = None,
    patience: int | None = None,
    validation: bool = True,
    share: int = 1,
) -> Choices:
    """Choose the layout and epoch budget for training series of ``lengths`` (the part that
    will be trained on); a value given here is kept and reported as given.

    Args:
        lengths: ``[n]`` steps per series.
        lanes, window, epochs, patience: the user's values, or None to choose.
        validation: whether there is a validation set (early stopping needs one).
        share: a chosen lane count is a multiple of this (the processes of a distributed run,
            each taking an equal part of the lanes).
    """
    sizes = _check_lengths(lengths)
    choices = _choose_layout(sizes, lanes, window, share)
    windows, _ = layout_cost(sizes, choices[0].value, choices[1].value)
    if epochs is None:
        value = int(np.clip(math.ceil(UPDATE_BUDGET / windows), MIN_EPOCHS, MAX_EPOCHS))
        stop = " (early stopping ends it sooner)" if validation else ""
        choices.append(
            Choice(
                "epochs",
                value,
                f"a budget of about {UPDATE_BUDGET} optimiser steps at {windows} windows per "
                f"epoch, within [{MIN_EPOCHS}, {MAX_EPOCHS}]{stop}",
            )
        )
    else:
        choices.append(Choice("epochs", epochs, "passes over the data", given=True))
    if patience is None and validation:
        choices.append(
            Choice(
                "patience",
                PATIENCE,
                f"stop after {PATIENCE} epochs without a better validation loss, then restore "
                "the best epoch's weights",
            )
        )
    elif patience is not None:
        choices.append(Choice("patience", patience, "epochs without progress", given=True))
    else:
        choices.append(Choice("patience", None, "no validation set: no early stopping"))
    return Choices(tuple(choices))


def apply(settings: dict[str, dict[str, Any]], lengths: Sequence[int] | np.ndarray) -> Choices:
    """Fill the unset layout and training settings of ``settings`` (the recipe's sections:
    ``[layout] lanes/window`` None, ``[fit] epochs/patience`` absent) from the training
    ``lengths`` (steps per training sequence, after ``shift``), in place; returns every choice.

    Early stopping is chosen only when there is a validation set (``[split] by != "none"``).
    """
    layout, fit = settings["layout"], settings["fit"]
    validation = settings.get("split", {}).get("by") != "none"
    defaults = choose(
        lengths,
        lanes=layout.get("lanes"),
        window=layout.get("window"),
        epochs=fit.get("epochs"),
        patience=fit.get("patience") if "patience" in fit else None,
        validation=validation,
        share=_processes(),
    )
    layout["lanes"], layout["window"] = defaults["lanes"], defaults["window"]
    fit["epochs"] = defaults["epochs"]
    if defaults["patience"] is not None:
        fit["patience"] = defaults["patience"]
    return defaults


def _processes() -> int:
    """The processes of the distributed run this one belongs to (1 outside one)."""
    import sys

    if "torch" not in sys.modules:  # (doctor: nothing imported torch, so nothing is running)
        return 1
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return int(dist.get_world_size())
    return 1


#: The name :class:`Choices` had before (``seqstate.recipe.defaults.Defaults``).
Defaults = Choices


# Scaling, transforms and calendar features.

SEASONAL_ACF = 0.3  # the median lag-m autocorrelation of differences that calls a season
# The share of the detrended variance that a season's mean profile must hold (the seasonal
# strength of a classical decomposition, Wang, Smith & Hyndman 2006) for the calendar features
# alone, in seasons of at least LONG_SEASON steps: a smooth daily profile changes little from
# one step to the next, so in 5-minute counts the noise of each step swamps it in the changes
# while the level shows it (bank calls: validation MASE 0.885 -> 0.617 with the hour and
# weekday). Monthly series that fail the changes' test lost with the month as a feature
# (elecequip 0.648 -> 0.741, deaths 0.510 -> 0.700 on the test years), so shorter seasons keep
# the changes' test alone.
SEASONAL_PROFILE = 0.6
LONG_SEASON = 24
LOG_SPAN = 10.0  # p95 / p5 of a positive series above which a log is suggested
_DRIFT = 20.0  # a level range over this many median step sizes suggests lag-1 differences


@dataclasses.dataclass(frozen=True)
class Suggestion:
    """What fits a table, with one reason per choice (printed by ``seqstate doctor``)."""

    scaling: ScalingConfig  # applied by ``train`` for ``auto`` settings
    calendar: tuple[str, ...]  # calendar features applied for ``auto``
    reasons: tuple[str, ...]  # why each choice was made
    hints: tuple[str, ...]  # transforms worth trying that are not applied by default


def season_of(times: np.ndarray) -> tuple[int, tuple[str, ...]]:
    """``(period, calendar features)`` of datetime ``times`` ``[L]``: the main season of
    :func:`seqstate.recipe.calendar.observed_seasons` (the one evaluation and the baselines
    use) and the calendar's features; ``(0, ())`` when the times are numbers or their
    calendar has no season.

    Data kept to part of its calendar (business hours) gets the calendar's features when its
    forecasts step through the same hours (:func:`~seqstate.recipe.calendar.observed_frequency`
    found its slots): otherwise they would be stamped through the night, with features of
    hours the model never saw, so the features are left out."""
    from seqstate.recipe.calendar import (
        calendar_kinds,
        observed_frequency,
        observed_seasons,
        season_lengths,
    )

    values = np.asarray(times)
    if not np.issubdtype(values.dtype, np.datetime64) or len(values) < 2:
        return 0, ()
    frequency = observed_frequency(values)
    seasons = observed_seasons(values, frequency)
    if not seasons or frequency is None:
        return 0, ()
    stamped = bool(frequency.slots) or seasons == season_lengths(frequency)
    return seasons[0], calendar_kinds(frequency) if stamped else ()


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
            profile = float("nan")
            if period >= LONG_SEASON:
                profiles = [_seasonal_strength(v[:, 0], period) for v in values]
                measured = [p for p in profiles if np.isfinite(p)]
                profile = float(np.median(measured)) if measured else profile
            changes = (
                f"the changes' lag-{period} autocorrelation exceeds the half-season one by "
                f"{strength:.2f} <= {SEASONAL_ACF}"
            )
            if profile > SEASONAL_PROFILE and calendar:  # (NaN below LONG_SEASON)
                reasons.append(
                    f"season: calendar {list(calendar)}, no seasonal differences (the season's "
                    f"mean profile holds {profile:.2f} > {SEASONAL_PROFILE} of the variance "
                    f"around the trend, but {changes}: the noise of each step hides the season "
                    "in the changes)"
                )
            else:
                profile_note = (
                    f", and the season's mean profile holds {profile:.2f} <= "
                    f"{SEASONAL_PROFILE} of the variance around the trend"
                    if np.isfinite(profile)
                    else ""
                )
                reasons.append(
                    f"season: none ({changes}{profile_note}: no seasonal pattern of period "
                    f"{period})"
                )
                calendar = ()
    else:
        reasons.append(
            "season: none (the time column holds no calendar with a season: not dates, "
            "years, or no regular steps)"
        )

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
    if drift > _DRIFT and not season and _last_value_wins(table, values):
        hints.append(
            f"transform: lag-1 differences (the level ranges over {drift:.0f} typical steps: "
            "a trend or wandering level): --difference 1"
        )
    config = ScalingConfig(method=method, season=season)
    return Suggestion(config, tuple(calendar), tuple(reasons), tuple(hints))


def _last_value_wins(table: Any, values: list[np.ndarray]) -> bool:
    """A quick validation of the lag-1 differences hint: a differenced model starts from the
    last value, so the hint is offered only when the last value forecasts the end of the
    series (two seasons, or 8 steps) better than seasonal naive at every season of the
    calendar (on half-hourly load, the daily season wins and differencing tripled the error)."""
    from seqstate.recipe.baselines import baseline_forecasts
    from seqstate.recipe.evaluation_checks import infer_seasons

    seasons = [m for m in infer_seasons(table) if m > 1]
    if not seasons:
        return True
    horizon = 2 * seasons[0]
    kept = [v[:, 0] for v in values if len(v) > horizon + seasons[0]]
    if not kept:
        return True
    history = [v[:-horizon] for v in kept]

    def error(name: str) -> float:
        paths = baseline_forecasts(name, history, horizon)
        return float(
            np.mean([np.mean(np.abs(p - v[-horizon:])) for p, v in zip(paths, kept, strict=True)])
        )

    last = error("seasonal_naive_1")
    return all(last < error(f"seasonal_naive_{m}") for m in seasons)


def _seasonal_strength(series: np.ndarray, period: int) -> float:
    """The share of ``series``' variance around its trend that the season's mean profile
    holds: 1 - var(remainder) / var(detrended), the trend a centred moving average of one
    season (a 2 x m average for even m), the profile the mean of each phase. NaN when the
    series is shorter than two seasons or flat around its trend."""
    if period < 2 or len(series) < 2 * period + 1:
        return float("nan")
    if period % 2:
        kernel = np.full(period, 1.0 / period)
    else:
        kernel = np.r_[0.5, np.ones(period - 1), 0.5] / period
    half = len(kernel) // 2
    detrended = series[half : len(series) - half] - np.convolve(series, kernel, "valid")
    phase = (np.arange(len(detrended)) + half) % period
    counts = np.bincount(phase, minlength=period)
    profile = np.bincount(phase, detrended, minlength=period) / np.maximum(counts, 1)
    spread = float(detrended.var())
    if spread == 0:
        return float("nan")
    return max(0.0, 1.0 - float((detrended - profile[phase]).var()) / spread)


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
