"""Rolling-origin backtests of a trained model on a table, and their plot.

A backtest repeats the horizon score at ``folds`` origins at the end of each series
(``L - folds*H``, ..., ``L - H``), next to the seasonal-naive forecast on the same folds, with
the model trained once on the data before the first origin, or refitted before each origin.

Each origin's horizon is forecast blind from the warm state (recipe/evaluation.py), through
a :class:`~seqstate.recipe.forecaster.Forecaster`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from seqstate._validate import check_int
from seqstate.recipe.calendar import gapped_series
from seqstate.recipe.evaluation_checks import (
    check_regression,
    check_season,
    gap_lines,
    interval_lines,
    interval_table_of,
    series_name,
    time_bounds,
    time_text,
)
from seqstate.recipe.forecaster import (
    Forecaster,
    forecast_columns,
    horizon_forecasts,
    why_not_forecastable,
)
from seqstate.recipe.intervals import path_quantiles, score_path
from seqstate.recipe.metrics import mean_metrics, seasonal_naive, series_metrics

__all__ = ["Backtest", "TrainFunction", "backtest", "plot_backtest"]


@dataclasses.dataclass
class Backtest:
    """Rolling-origin results.

    Attributes:
        rows: one dict per (fold, series, target): ``fold``, ``id``, ``target``, ``origin``
            (the first forecast time), ``model_<metric>`` and ``naive_<metric>``.
        folds: per fold, the means over its rows (``fold``, ``origin_from``/``origin_to``).
        summary: the mean over folds of each fold mean, and the counts.
        forecasts: ``{(fold, series index): (model [H, O], naive [H, O])}`` for plots.
        origins: series index -> its ``folds`` origins (step positions).
        bands: ``{(fold, series index): [O, H, 4]}`` the 2.5, 10, 90 and 97.5% quantiles
            around the model's forecast, where the forecaster has intervals (for plots).
    """

    rows: list[dict[str, Any]]
    folds: list[dict[str, Any]]
    summary: dict[str, Any]
    forecasts: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]
    origins: dict[int, list[int]]
    skipped: list[tuple[Any, str]]
    horizon: int
    season: int
    refit: bool
    bands: dict[tuple[int, int], np.ndarray] = dataclasses.field(default_factory=dict)
    gaps: tuple[Any, ...] = ()  # ids of the scored series with gaps in time

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary,
            "folds": self.folds,
            "series": self.rows,
            "skipped": [{"id": i, "reason": r} for i, r in self.skipped],
            "series_with_gaps": list(self.gaps),
        }

    def text(self) -> str:
        s = self.summary
        trained = (
            "refitted before each fold on the data before its origin"
            if self.refit
            else "trained once on the data before the first origin"
        )
        lines = [
            f"backtest: {len(self.folds)} fold(s) of {self.horizon} step(s) at the end of each of "
            f"{s['series']} series; the model was {trained}, and warmed up on each series up to "
            f"each origin. Seasonal naive (season {self.season}) on the same folds.",
            f"    {'fold':<6}{'origins':<27}"
            + "".join(f"{name:>13}" for name in ("mase", "naive mase", "smape", "naive smape")),
        ]
        for fold in self.folds:
            origins = fold["origin_from"]
            if fold["origin_to"] != fold["origin_from"]:
                origins = f"{fold['origin_from']} .. {fold['origin_to']}"
            lines.append(
                f"    {fold['fold']:<6}{origins:<27}{fold['model_mase']:>13.4g}"
                f"{fold['naive_mase']:>13.4g}{fold['model_smape']:>13.4g}"
                f"{fold['naive_smape']:>13.4g}"
            )
        lines.append(
            f"    {'mean':<6}{'':<27}{s['model_mase']:>13.4g}{s['naive_mase']:>13.4g}"
            f"{s['model_smape']:>13.4g}{s['naive_smape']:>13.4g}"
        )
        lines += interval_lines(s, "model_")
        undefined = max(int(f.get("naive_undefined", 0)) for f in self.folds)
        if undefined:
            lines.append(
                f"  MASE is undefined for {undefined} series' target(s) of a fold (a history "
                "that never changed at the season's lag has no scale); the means leave them out"
            )
        if math.isfinite(s["model_mase"]) and math.isfinite(s["naive_mase"]):
            verdict = "beats" if s["model_mase"] < s["naive_mase"] else "does not beat"
            lines.append(
                f"  the model {verdict} seasonal naive on mean MASE "
                f"({s['model_mase']:.4g} vs {s['naive_mase']:.4g})"
            )
        else:
            lines.append(
                "  no verdict against seasonal naive: no series has a MASE (every history is "
                "constant at the season's lag); compare the MAE in backtest.csv"
            )
        lines += gap_lines(self.gaps, self.season)
        for series, why in self.skipped[:5]:
            lines.append(f"  skipped {series!r}: {why}")
        return "\n".join(lines)


TrainFunction = Callable[[Any], Forecaster]
#: The quantiles a backtest keeps for its plot: the 95% and the 80% bands.
PLOTTED_LEVELS = (0.025, 0.1, 0.9, 0.975)


def backtest(
    table: Any,
    model: Forecaster | TrainFunction,
    *,
    folds: int,
    horizon: int,
    refit: bool = False,
    season: int | None = None,
) -> Backtest:
    """Score ``folds`` rolling origins of ``horizon`` steps at the end of each series.

    Series i of length L has origins ``L - folds*H, L - (folds-1)*H, ..., L - H``; at each the
    model warms up on the series before the origin and forecasts H steps, scored against the
    actual values and against the seasonal-naive forecast from the same history.

    Args:
        table: a :class:`seqstate.recipe.sources.SequenceTable` with targets (whole series).
        model: ``train(table) -> Forecaster``, called on the table cut before the first origin
            (or before each fold's origin with ``refit``); or a trained :class:`Forecaster`,
            used as it is (then it must not have seen the folds, or the scores flatter it).
        folds: origins per series, >= 1.
        horizon: H, steps forecast at each origin, >= 1.
        refit: train again before every fold (needs ``model`` to be a train function).
        season: the seasonal-naive / MASE period (default: from the calendar).
    """
    check_regression(table, "backtest")
    check_int(folds, "folds", 1)
    check_int(horizon, "horizon", 1)
    if not isinstance(refit, bool):
        raise TypeError(f"refit must be True or False; received {refit!r}")
    trained = isinstance(model, Forecaster)
    if not trained and not callable(model):
        raise TypeError(
            "model must be a Forecaster (predict/forecast) or a function train(table) -> "
            f"Forecaster; received {type(model).__name__}"
        )
    if refit and trained:
        raise ValueError(
            "refit=True needs model to be a function train(table) -> Forecaster, not an "
            "already trained Forecaster"
        )
    feed = forecast_columns(table.columns)
    if feed is None:
        raise ValueError(f"backtest: {why_not_forecastable(table.columns)}")
    season = check_season(season, table)
    folds, horizon = int(folds), int(horizon)
    # The first origin must leave enough history for training and for the naive baselines.
    least = max(2, table.columns.shift + 1)
    kept, skipped = [], []
    for i, length in enumerate(table.lengths.tolist()):
        first = length - folds * horizon
        if first < least:
            skipped.append(
                (
                    series_name(table, i),
                    f"{length} steps leave {first} before the first origin "
                    f"({folds} fold(s) x {horizon}); at least {least} are needed",
                )
            )
        else:
            kept.append(i)
    if not kept:
        raise ValueError(
            f"no series is long enough for {folds} fold(s) of horizon {horizon} (the longest "
            f"has {int(table.lengths.max())} steps; it needs more than {folds * horizon + 1}). "
            "Use fewer folds or a shorter horizon"
        )
    origins = {
        i: [int(table.lengths[i]) - (folds - f) * horizon for f in range(folds)] for i in kept
    }

    forecaster: Forecaster | None = model if trained else None  # type: ignore[assignment]
    rows: list[dict[str, Any]] = []
    fold_rows: list[dict[str, Any]] = []
    stored: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    bands: dict[tuple[int, int], np.ndarray] = {}
    for fold in range(folds):
        cut = [origins[i][fold] if i in origins else 0 for i in range(len(table))]
        if forecaster is None or refit:
            history = table.select(kept).slice_steps(0, [cut[i] for i in kept])
            forecaster = model(history)  # type: ignore[operator]
            if not isinstance(forecaster, Forecaster):
                raise TypeError(
                    "the train function must return a Forecaster (predict/forecast); it "
                    f"returned {type(forecaster).__name__}"
                )
        paths = horizon_forecasts(forecaster, table, kept, cut, horizon, feed)
        intervals = interval_table_of(forecaster)
        these: list[dict[str, Any]] = []
        for i in kept:
            targets, origin = table.targets[i], cut[i]
            actual = targets[origin : origin + horizon]
            naive = np.stack(
                [
                    seasonal_naive(targets[:origin, o], horizon, season)
                    for o in range(targets.shape[1])
                ],
                axis=1,
            )
            stored[(fold, i)] = (paths[i], naive)
            scores: list[dict[str, float]] = []
            if intervals is not None:
                scores = score_path(actual, paths[i], targets[:origin], intervals, season)
                bands[(fold, i)] = path_quantiles(
                    paths[i], targets[:origin], intervals, PLOTTED_LEVELS
                )
            for o, name in enumerate(table.columns.targets):
                history_o = targets[:origin, o]
                row = {
                    "fold": fold,
                    "id": series_name(table, i),
                    "target": name,
                    "origin": time_text(table.times[i], origin),
                }
                model_metrics = series_metrics(actual[:, o], paths[i][:, o], history_o, season)
                naive_metrics = series_metrics(actual[:, o], naive[:, o], history_o, season)
                row |= {f"model_{k}": v for k, v in model_metrics.items()}
                row |= {f"naive_{k}": v for k, v in naive_metrics.items()}
                if scores:
                    row |= {f"model_{k}": v for k, v in scores[o].items()}
                these.append(row)
        rows += these
        first, last = time_bounds([table.times[i][cut[i]] for i in kept])
        fold_summary: dict[str, Any] = {"fold": fold, "origin_from": first, "origin_to": last}
        fold_summary |= mean_metrics(these, "model_")
        fold_summary |= mean_metrics(these, "naive_")
        fold_rows.append(fold_summary)

    summary: dict[str, Any] = {"series": len(kept), "folds": folds, "horizon": horizon}
    for key in fold_rows[0]:
        if key.endswith("undefined"):  # (the most of any fold: a series' history only grows)
            summary[key] = max(int(f[key]) for f in fold_rows)
        elif key.startswith(("model_", "naive_")):
            values = [f[key] for f in fold_rows if math.isfinite(f[key])]
            summary[key] = float(np.mean(values)) if values else math.nan
    gaps = tuple(gapped_series(table.select(kept)))
    return Backtest(
        rows, fold_rows, summary, stored, origins, skipped, horizon, season, refit, bands, gaps
    )


def plot_backtest(result: Backtest, table: Any, path: Any, *, series: int = 4) -> bool:
    """Draw the actual values and each fold's forecasts for the first ``series`` series into
    ``path`` (a .png); returns False when matplotlib (seqstate[plot]) is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    shown = list(result.origins)[:series]
    figure = Figure(figsize=(9, 2.6 * len(shown)), layout="constrained")
    FigureCanvasAgg(figure)
    for row, i in enumerate(shown):
        axes = figure.add_subplot(len(shown), 1, row + 1)
        first = result.origins[i][0]
        start = max(0, first - 3 * result.horizon)
        times = table.times[i]
        target = table.targets[i][:, 0]
        axes.plot(times[start:], target[start:], color="black", label="actual")
        for fold, origin in enumerate(result.origins[i]):
            model_path, naive_path = result.forecasts[(fold, i)]
            span = times[origin : origin + result.horizon]
            band = result.bands.get((fold, i))
            if band is not None:  # [O, H, 4]: 2.5, 10, 90, 97.5%
                first = fold == 0
                axes.fill_between(
                    span, band[0, :, 0], band[0, :, 3], color="tab:blue", alpha=0.12,
                    linewidth=0, label="95% interval" if first else None,
                )  # fmt: skip
                axes.fill_between(
                    span, band[0, :, 1], band[0, :, 2], color="tab:blue", alpha=0.25,
                    linewidth=0, label="80% interval" if first else None,
                )  # fmt: skip
            axes.plot(
                span, model_path[:, 0], color="tab:blue", label="model" if fold == 0 else None
            )
            axes.plot(
                span,
                naive_path[:, 0],
                color="tab:orange",
                linestyle="--",
                label="seasonal naive" if fold == 0 else None,
            )
            axes.axvline(times[origin], color="grey", linewidth=0.5)
        axes.set_title(f"{series_name(table, i)}: {table.columns.targets[0]}")
        if row == 0:
            axes.legend(loc="upper left")
    figure.savefig(path, dpi=90)
    return True
