"""Warm-started evaluation and rolling-origin backtests of a trained model on a table.

A stateful model's prediction at step t depends on everything before t, so scoring a held-out
tail from a zero state measures a model that forgot the series. Here each series runs through
its own history with the carried state (the warm-up), and only the steps after the cut are
scored, two ways::

    series i:  h0 h1 h2 ... h(c-1) | a(c) a(c+1) ... a(L-1)
               ------ warm-up ---- | ------- scored --------
    one step ahead:  p(j) = the model's output after the actual inputs up to step j - shift
    horizon:         p(c..c+H-1) = forecast from the warm state after h(c-1), each step's
                     forecast fed back as the next input (no actual value after the cut is seen)

Three things evaluate, each named for what it scores: :func:`seqstate.evaluate` a model on
lanes (training's loss and errors, from a zero state); :func:`evaluate_forecaster` here a
forecaster (a trained run) on a table, warm; the ``seqstate evaluate`` command calls the
second for regression runs and the first for classification runs.

The rolling-origin backtest is in :mod:`seqstate.recipe.backtest` (re-exported here).

Everything runs through a :class:`Forecaster` (:mod:`seqstate.recipe.forecaster`): the run-level
predict/forecast path (with the run's own preprocessing) that the CLI uses, so what is scored
is what users get.
"""

from __future__ import annotations

import dataclasses
import datetime
import inspect
import math
import warnings
from typing import Any

import numpy as np

from seqstate._validate import check_int
from seqstate.recipe.backtest import Backtest, backtest
from seqstate.recipe.backtest import TrainFunction as TrainFunction
from seqstate.recipe.backtest import plot_backtest as plot_backtest
from seqstate.recipe.calendar import gapped_series, parse_times
from seqstate.recipe.evaluation_checks import (
    check_regression,
    check_season,
    gap_lines,
    infer_season,
    interval_lines,
    interval_table_of,
    series_name,
    time_bounds,
    time_text,
)
from seqstate.recipe.forecaster import (
    Forecaster,
    ModelForecaster,
    forecast_columns,
    horizon_forecasts,
    why_not_forecastable,
)
from seqstate.recipe.intervals import score_path
from seqstate.recipe.metrics import SCALE_FREE, mean_metrics, seasonal_naive, series_metrics

__all__ = [
    "Backtest",
    "Evaluation",
    "Forecaster",
    "ModelForecaster",
    "backtest",
    "evaluate_forecaster",
    "evaluate_forecaster_in_sample",
    "evaluate_in_sample",
    "evaluate_warm",
    "infer_season",
]


def _one_step(forecaster: Any, table: Any, cuts: list[int]) -> list[np.ndarray]:
    """``forecaster.predict(table)``; where it takes a ``context``, the rows before each
    series' cut: a series the run never saw is then scaled by its warm-up alone, so no
    score reads a row after its cut."""
    if "context" in inspect.signature(forecaster.predict).parameters:
        return list(forecaster.predict(table, context=table.slice_steps(0, cuts)))
    return list(forecaster.predict(table))


def _cut_at(table: Any, until: Any) -> list[int]:
    """Per series, the number of steps whose time is <= ``until``."""
    cuts = []
    for times in table.times:
        times = np.asarray(times)
        if np.issubdtype(times.dtype, np.datetime64):
            if isinstance(until, str):
                bound = parse_times([until], "warmup_until")[0]
            elif isinstance(until, np.datetime64 | datetime.date):  # (datetime too)
                value: Any = until
                bound = np.datetime64(value, "ns")
            else:
                raise TypeError(
                    "warmup_until must be a date (a string like '2020-01-31', a datetime or "
                    "numpy datetime64) like the time column; received "
                    f"{type(until).__name__} {until!r}"
                )
            cuts.append(int(np.searchsorted(times.astype("datetime64[ns]"), bound, "right")))
        else:
            if isinstance(until, str):
                try:
                    bound = float(until)
                except ValueError:
                    raise ValueError(
                        f"warmup_until={until!r} is not a number, but the time column holds "
                        "numbers (or, without a time column, step positions 0, 1, ...)"
                    ) from None
            elif isinstance(until, bool) or not isinstance(until, int | float | np.number):
                raise TypeError(
                    f"warmup_until must be a number like the time column; received "
                    f"{type(until).__name__}"
                )
            else:
                bound = float(until)
            cuts.append(int(np.searchsorted(times.astype(np.float64), bound, "right")))
    return cuts


# --------------------------------------------------------------------------------------------
# Warm evaluation
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Evaluation:
    """What :func:`evaluate_forecaster` warmed, what it scored, and how well.

    Attributes:
        rows: one dict per (series, target): ``id``, ``target``, ``warmup_steps``,
            ``warmup_from``/``warmup_to`` (times), ``scored_steps``, ``scored_from``/
            ``scored_to``, ``one_step_<metric>``, ``horizon``, ``horizon_<metric>`` and
            ``naive_<metric>`` (seasonal naive over the same horizon), metrics as in
            :mod:`seqstate.recipe.metrics`.
        summary: each metric's mean over the rows (never pooled across series in raw units),
            and the counts.
        skipped: ``(series id, why)`` for series that could not be scored.
        horizon_note: why there is no horizon score, when there is none.
    """

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    skipped: list[tuple[Any, str]]
    season: int
    horizon_note: str | None = None
    in_sample: bool = (
        False  # evaluate_forecaster_in_sample: every row from a zero state, no warm-up
    )
    gaps: tuple[Any, ...] = ()  # ids of the scored series with gaps in time

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary,
            "series": self.rows,
            "skipped": [{"id": i, "reason": r} for i, r in self.skipped],
            "season": self.season,
            "horizon_note": self.horizon_note,
            "series_with_gaps": list(self.gaps),
        }

    def to_frame(self) -> Any:
        """The per-series rows as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.rows)

    def text(self) -> str:
        s = self.summary
        if self.in_sample:
            return self._in_sample_text()
        lines = [
            f"warmed {s['series']} series on {s['warmup_steps']} steps (each series from a zero "
            f"state through its history, {s['warmup_from']} .. {s['warmup_to']}), then scored "
            f"{s['scored_steps']} later steps ({s['scored_from']} .. {s['scored_to']})",
            "  one step ahead: each prediction sees the actual inputs up to the step before",
        ]
        if self.horizon_note is None:
            lines.append(
                f"  horizon: a recursive forecast of up to {s['horizon']} steps from the warm "
                "state (no actual value after the cut is seen); seasonal naive (season "
                f"{self.season}) on the same steps for comparison"
            )
        else:
            lines.append(f"  horizon: not scored ({self.horizon_note})")
        lines.append(
            "  means over series (mase, smape in %, scaled_rmse = rmse / the series' std):"
        )
        header = f"    {'':<10}" + "".join(f"{name:>13}" for name in (*SCALE_FREE, "mae", "rmse"))
        lines.append(header)
        for label, prefix in (
            ("one step", "one_step_"),
            ("horizon", "horizon_"),
            ("naive", "naive_"),
        ):
            if f"{prefix}mase" not in s:
                continue
            values = "".join(
                f"{s[f'{prefix}{name}']:>13.4g}" for name in (*SCALE_FREE, "mae", "rmse")
            )
            lines.append(f"    {label:<10}{values}")
        lines += interval_lines(s, "horizon_")
        if s.get("one_step_undefined"):
            lines.append(
                f"  {s['one_step_undefined']} series had a history too short or constant for a "
                "seasonal-naive scale: MASE/scaled RMSE undefined, left out of the means"
            )
        if s.get("naive_short_series"):
            lines.append(
                f"  {s['naive_short_series']} series warmed on fewer steps than the season "
                f"({self.season}): their seasonal naive repeats the last value"
            )
        lines += gap_lines(self.gaps, self.season)
        for series, why in self.skipped[:5]:
            lines.append(f"  skipped {series!r}: {why}")
        if len(self.skipped) > 5:
            lines.append(f"  ... and {len(self.skipped) - 5} more series skipped")
        return "\n".join(lines)

    def _in_sample_text(self) -> str:
        s = self.summary
        names = (*SCALE_FREE, "mae", "rmse")
        values = "".join(f"{s[f'one_step_{name}']:>13.4g}" for name in names)
        return "\n".join(
            [
                f"scored every row of {s['series']} series ({s['scored_steps']} steps) one step "
                "ahead, each series from a zero state: no hold-out, no warm-up. To score a "
                "held-out tail after warming up on the history, give --warmup-until TIME "
                "(or --tail N)",
                "  means over series (mase, smape in %, scaled_rmse = rmse / the series' std):",
                f"    {'':<10}" + "".join(f"{name:>13}" for name in names),
                f"    {'one step':<10}{values}",
            ]
        )


def evaluate_forecaster(
    forecaster: Forecaster,
    table: Any,
    *,
    warmup_until: Any = None,
    tail: int | None = None,
    horizon: int | None = None,
    season: int | None = None,
) -> Evaluation:
    """Warm each series up on its history, then score the steps after the cut.

    Args:
        forecaster: the trained run (:class:`ModelForecaster` for a model in hand).
        table: a :class:`seqstate.recipe.sources.SequenceTable` with targets, the *whole* series
            (history and the part to score).
        warmup_until: the last time of the warm-up (inclusive), like the time column: a date
            (``"1959-12"``, ``"1959 Dec"``, a datetime) or a number; without a time column, the
            last step position. Give this or ``tail``.
        tail: score the last ``tail`` steps of every series instead.
        horizon: the longest recursive forecast scored (default: the whole scored tail).
        season: the MASE / seasonal-naive period (default: from the time column's calendar).

    Returns:
        An :class:`Evaluation`; ``.text()`` says what was warmed and what was scored.
    """
    check_regression(table, "evaluate_forecaster")
    if (warmup_until is None) == (tail is None):
        raise ValueError(
            "give exactly one of warmup_until (the last time of the history, e.g. "
            "'2019-12') or tail (steps to score at the end of each series)"
        )
    if tail is not None:
        check_int(tail, "tail", 1, hint="tail counts the steps to score at the end of each series.")
        cuts = [len(f) - int(tail) for f in table.features]
    else:
        cuts = _cut_at(table, warmup_until)
    if horizon is not None:
        check_int(horizon, "horizon", 1, hint="None scores the whole tail.")
    season = check_season(season, table)
    shift = table.columns.shift

    kept: list[int] = []
    skipped: list[tuple[Any, str]] = []
    for i, (features, cut) in enumerate(zip(table.features, cuts, strict=True)):
        if cut < max(1, shift):
            short = f"only {max(cut, 0)} step(s) to warm up on"
            if tail is not None:
                short += f" (it has {len(features)} steps; a tail under {len(features)} scores it)"
            skipped.append((series_name(table, i), short))
        elif cut >= len(features):
            skipped.append((series_name(table, i), "no step after the cut to score"))
        else:
            kept.append(i)
    if not kept:
        where = f"warmup_until={warmup_until!r}" if tail is None else f"tail={tail}"
        longest = max(len(f) for f in table.features)
        fix = (
            "Pick a time inside the series"
            if tail is None
            else f"Use a tail shorter than the longest series ({longest} steps), so that some "
            "history remains to warm up on"
        )
        raise ValueError(
            f"{where} leaves no series with both a history and steps to score "
            f"({len(table)} series; e.g. {skipped[0][0]!r}: {skipped[0][1]}). {fix}"
        )

    outputs = _one_step(forecaster, table.select(kept), [cuts[i] for i in kept])
    feed = forecast_columns(table.columns)
    horizon_note = why_not_forecastable(table.columns)
    forecasts = horizon_forecasts(forecaster, table, kept, cuts, horizon, feed)
    intervals = interval_table_of(forecaster)

    rows: list[dict[str, Any]] = []
    for position, i in enumerate(kept):
        cut, times, targets = cuts[i], table.times[i], table.targets[i]
        length = len(targets)
        predicted = outputs[position][cut - shift : length - shift]  # [L - c, O]
        bands: list[dict[str, float]] = []
        if i in forecasts and intervals is not None:
            steps = len(forecasts[i])
            bands = score_path(
                targets[cut : cut + steps], forecasts[i], targets[:cut], intervals, season
            )
        for o, name in enumerate(table.columns.targets):
            history = targets[:cut, o]
            row: dict[str, Any] = {
                "id": series_name(table, i),
                "target": name,
                "warmup_steps": cut,
                "warmup_from": time_text(times, 0),
                "warmup_to": time_text(times, cut - 1),
                "scored_steps": length - cut,
                "scored_from": time_text(times, cut),
                "scored_to": time_text(times, length - 1),
            }
            one_step = _scored(targets[cut:, o], predicted[:, o], history, season)
            row |= {f"one_step_{k}": v for k, v in one_step.items()}
            if i in forecasts:
                path = forecasts[i][:, o]
                steps = len(path)
                actual = targets[cut : cut + steps, o]
                naive = seasonal_naive(history, steps, season)
                row["horizon"] = steps
                row |= {
                    f"horizon_{k}": v
                    for k, v in series_metrics(actual, path, history, season).items()
                }
                row |= {
                    f"naive_{k}": v
                    for k, v in series_metrics(actual, naive, history, season).items()
                }
                if bands:
                    row |= {f"horizon_{k}": v for k, v in bands[o].items()}
            rows.append(row)

    summary: dict[str, Any] = {
        "series": len(kept),
        "skipped_series": len(skipped),
        "warmup_steps": int(sum(cuts[i] for i in kept)),
        "scored_steps": int(sum(len(table.features[i]) - cuts[i] for i in kept)),
        "warmup_from": time_bounds([table.times[i][0] for i in kept])[0],
        "warmup_to": time_bounds([table.times[i][cuts[i] - 1] for i in kept])[1],
        "scored_from": time_bounds([table.times[i][cuts[i]] for i in kept])[0],
        "scored_to": time_bounds([table.times[i][-1] for i in kept])[1],
        "season": season,
        # seasonal naive repeats the last value where the warm-up is shorter than the season
        "naive_short_series": sum(1 for i in kept if i in forecasts and cuts[i] < season),
    }
    summary |= mean_metrics(rows, "one_step_")
    if forecasts:
        summary["horizon"] = max(int(r["horizon"]) for r in rows if "horizon" in r)
        summary |= mean_metrics(rows, "horizon_")
        summary |= mean_metrics(rows, "naive_")
    gaps = tuple(gapped_series(table.select(kept)))
    return Evaluation(rows, summary, skipped, season, horizon_note, gaps=gaps)


def _scored(actual: np.ndarray, predicted: np.ndarray, history: np.ndarray, season: int) -> dict:
    """:func:`series_metrics` over the steps that have a prediction: a run that differences
    its targets has none (NaN) for the first rows the differencing consumes."""
    has = np.isfinite(predicted)
    if not has.any():
        return {name: math.nan for name in ("mase", "smape", "scaled_rmse", "mae", "rmse")}
    return series_metrics(actual[has], predicted[has], history, season)


def evaluate_forecaster_in_sample(
    forecaster: Forecaster, table: Any, *, season: int | None = None
) -> Evaluation:
    """Score every row of every series one step ahead, each series from a zero state.

    No warm-up and no hold-out: on the training table this is an in-sample fit. MASE and the
    scaled RMSE take their scale from the whole series. Prefer :func:`evaluate_forecaster`.
    """
    check_regression(table, "evaluate_forecaster_in_sample")
    season = check_season(season, table)
    shift = table.columns.shift
    outputs = forecaster.predict(table)
    rows: list[dict[str, Any]] = []
    for i, (targets, output) in enumerate(zip(table.targets, outputs, strict=True)):
        length = len(targets)
        if length <= shift:
            continue
        predicted = output[: length - shift]
        for o, name in enumerate(table.columns.targets):
            metrics = _scored(targets[shift:, o], predicted[:, o], targets[:, o], season)
            row: dict[str, Any] = {
                "id": series_name(table, i),
                "target": name,
                "scored_steps": length - shift,
            }
            rows.append(row | {f"one_step_{k}": v for k, v in metrics.items()})
    summary: dict[str, Any] = {
        "series": len({r["id"] for r in rows}),
        "scored_steps": int(sum(len(t) - shift for t in table.targets if len(t) > shift)),
        "season": season,
        **mean_metrics(rows, "one_step_"),
    }
    return Evaluation(rows, summary, [], season, "no warm-up point was given", in_sample=True)


def evaluate_warm(forecaster: Forecaster, table: Any, **options: Any) -> Evaluation:
    """Deprecated name of :func:`evaluate_forecaster` (goes away in the next release)."""
    warnings.warn(
        "evaluate_warm is now evaluate_forecaster (seqstate.recipe.evaluation); the old name "
        "goes away in the next release",
        DeprecationWarning,
        stacklevel=2,
    )
    return evaluate_forecaster(forecaster, table, **options)


def evaluate_in_sample(forecaster: Forecaster, table: Any, **options: Any) -> Evaluation:
    """Deprecated name of :func:`evaluate_forecaster_in_sample` (goes away in the next
    release)."""
    warnings.warn(
        "evaluate_in_sample is now evaluate_forecaster_in_sample (seqstate.recipe.evaluation); "
        "the old name goes away in the next release",
        DeprecationWarning,
        stacklevel=2,
    )
    return evaluate_forecaster_in_sample(forecaster, table, **options)
