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

A backtest repeats the horizon score at ``folds`` origins at the end of each series
(``L - folds*H``, ..., ``L - H``), next to the seasonal-naive forecast on the same folds, with
the model trained once on the data before the first origin, or refitted before each origin.

Everything runs through a :class:`Forecaster`: the run-level predict/forecast path (with the
run's own preprocessing) that the CLI uses, so what is scored is what users get.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from seqstate.calendar import infer_frequency, parse_times, season_length
from seqstate.metrics import SCALE_FREE, mean_metrics, seasonal_naive, series_metrics

__all__ = [
    "Backtest",
    "Evaluation",
    "Forecaster",
    "ModelForecaster",
    "backtest",
    "evaluate_in_sample",
    "evaluate_warm",
    "infer_season",
]


# --------------------------------------------------------------------------------------------
# What evaluation needs from a trained model
# --------------------------------------------------------------------------------------------


@runtime_checkable
class Forecaster(Protocol):
    """A trained run seen from outside, on tables, in the table's raw units.

    ``predict(table)``: one ``[L_i, O]`` output per series, each from a zero state (row t:
    the prediction of the targets ``shift`` steps after row t).
    ``forecast(table, horizon, future)``: ``[n, H, O]``, warm up on each series of ``table``
    (the history), then roll out ``horizon`` steps. ``future`` holds the next ``horizon`` rows
    of each series (times, and the known future values of the input columns that are not
    forecast); the columns the forecast feeds are NaN there, so the answer cannot leak.

    Tables (not bare arrays) carry the series ids and times, which per-series scaling and
    calendar covariates need.
    """

    def predict(self, table: Any) -> list[np.ndarray]: ...

    def forecast(self, table: Any, horizon: int, future: Any) -> np.ndarray: ...


@dataclasses.dataclass
class ModelForecaster:
    """A :class:`Forecaster` over a model that holds its own normalisation and the table
    columns it was trained on (``seqstate.predict`` / ``seqstate.forecast``)."""

    model: Any  # a seqstate.SequenceModel (or the same protocol)

    def predict(self, table: Any) -> list[np.ndarray]:
        from seqstate.prediction import predict

        return list(predict(self.model, list(table.features)))

    def forecast(self, table: Any, horizon: int, future: Any) -> np.ndarray:
        from seqstate.prediction import forecast

        feed = _forecast_columns(table.columns)
        if feed is None:
            raise ValueError(
                "this run cannot forecast recursively: it needs shift 1 and every target among "
                "the features"
            )
        fed, others = feed
        covariates = [f[:, others] for f in future.features] if others else None
        return forecast(
            self.model, list(table.features), horizon, covariates=covariates, target_features=fed
        )


def _forecast_columns(columns: Any) -> tuple[list[int], list[int]] | None:
    """(input columns the targets feed, the other input columns), or None when the run cannot
    forecast recursively (a target that is not an input, or shift != 1)."""
    if columns.task != "regression" or columns.shift != 1:
        return None
    features = list(columns.features)
    if any(name not in features for name in columns.targets):
        return None
    fed = [features.index(name) for name in columns.targets]
    return fed, [i for i in range(len(features)) if i not in fed]


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def infer_season(table: Any) -> int:
    """The seasonal period of ``table``'s calendar (12 for months, ...), 1 when unknown."""
    seasons = set()
    for times in table.times[:50]:
        if np.issubdtype(np.asarray(times).dtype, np.datetime64) and len(times) >= 3:
            seasons.add(season_length(infer_frequency(times)))
    return seasons.pop() if len(seasons) == 1 else 1


def _check_season(season: Any, table: Any) -> int:
    if season is None:
        return infer_season(table)
    if isinstance(season, bool) or not isinstance(season, int | np.integer) or season < 1:
        raise ValueError(
            f"season must be an int >= 1 (steps per season, e.g. 12 for monthly data) or None "
            f"to infer it from the time column; received {season!r}"
        )
    return int(season)


def _check_regression(table: Any, what: str) -> None:
    if table.columns.task != "regression":
        raise ValueError(
            f"{what} scores forecasts of numbers, which needs a regression run; this table's "
            "task is classification. Use seqstate.evaluate on lanes (or `seqstate evaluate` "
            "without --warmup-until)"
        )
    if not table.columns.targets or any(t.shape[1] == 0 for t in table.targets):
        raise ValueError(f"{what} needs the target columns in the table; none were read")


def _time_text(times: np.ndarray, index: int) -> str:
    value = times[index]
    if np.issubdtype(np.asarray(times).dtype, np.datetime64):
        text = str(np.datetime_as_string(value, unit="s"))
        return text.removesuffix("T00:00:00")
    return str(value.item() if isinstance(value, np.generic) else value)


def _series_name(table: Any, index: int) -> Any:
    return table.ids[index] if table.columns.id is not None else "(the series)"


def _cut_at(table: Any, until: Any) -> list[int]:
    """Per series, the number of steps whose time is <= ``until``."""
    cuts = []
    for times in table.times:
        times = np.asarray(times)
        if np.issubdtype(times.dtype, np.datetime64):
            if isinstance(until, str):
                bound = parse_times([until], "warmup_until")[0]
            else:
                bound = np.datetime64(until, "ns")
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
    """What :func:`evaluate_warm` warmed, what it scored, and how well.

    Attributes:
        rows: one dict per (series, target): ``id``, ``target``, ``warmup_steps``,
            ``warmup_from``/``warmup_to`` (times), ``scored_steps``, ``scored_from``/
            ``scored_to``, ``one_step_<metric>``, ``horizon``, ``horizon_<metric>`` and
            ``naive_<metric>`` (seasonal naive over the same horizon), metrics as in
            :mod:`seqstate.metrics`.
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
    in_sample: bool = False  # evaluate_in_sample: every row from a zero state, no warm-up

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary,
            "series": self.rows,
            "skipped": [{"id": i, "reason": r} for i, r in self.skipped],
            "season": self.season,
            "horizon_note": self.horizon_note,
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
        if s.get("one_step_undefined"):
            lines.append(
                f"  {s['one_step_undefined']} series had a constant history: MASE/scaled RMSE "
                "undefined, left out of the means"
            )
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


def evaluate_warm(
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
        table: a :class:`seqstate.sources.SequenceTable` with targets, the *whole* series
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
    _check_regression(table, "evaluate_warm")
    if (warmup_until is None) == (tail is None):
        raise ValueError(
            "give exactly one of warmup_until (the last time of the history, e.g. "
            "'2019-12') or tail (steps to score at the end of each series)"
        )
    if tail is not None:
        if isinstance(tail, bool) or not isinstance(tail, int | np.integer) or tail < 1:
            raise ValueError(f"tail must be an int >= 1 (steps to score); received {tail!r}")
        cuts = [len(f) - int(tail) for f in table.features]
    else:
        cuts = _cut_at(table, warmup_until)
    if horizon is not None and (
        isinstance(horizon, bool) or not isinstance(horizon, int | np.integer) or horizon < 1
    ):
        raise ValueError(f"horizon must be an int >= 1 or None; received {horizon!r}")
    season = _check_season(season, table)
    shift = table.columns.shift

    kept: list[int] = []
    skipped: list[tuple[Any, str]] = []
    for i, (features, cut) in enumerate(zip(table.features, cuts, strict=True)):
        if cut < max(1, shift):
            skipped.append((_series_name(table, i), f"only {max(cut, 0)} step(s) to warm up on"))
        elif cut >= len(features):
            skipped.append((_series_name(table, i), "no step after the cut to score"))
        else:
            kept.append(i)
    if not kept:
        where = f"warmup_until={warmup_until!r}" if tail is None else f"tail={tail}"
        raise ValueError(
            f"{where} leaves no series with both a history and steps to score "
            f"({len(table)} series; e.g. {skipped[0][0]!r}: {skipped[0][1]}). Pick a time "
            "inside the series"
        )

    outputs = forecaster.predict(table.select(kept))
    feed = _forecast_columns(table.columns)
    horizon_note = None
    if feed is None:
        horizon_note = (
            "a recursive forecast feeds each prediction back as the next input, which needs "
            "shift 1 and every target among the features"
        )
    forecasts = _horizon_forecasts(forecaster, table, kept, cuts, horizon, feed)

    rows: list[dict[str, Any]] = []
    for position, i in enumerate(kept):
        cut, times, targets = cuts[i], table.times[i], table.targets[i]
        length = len(targets)
        predicted = outputs[position][cut - shift : length - shift]  # [L - c, O]
        for o, name in enumerate(table.columns.targets):
            history = targets[:cut, o]
            row: dict[str, Any] = {
                "id": _series_name(table, i),
                "target": name,
                "warmup_steps": cut,
                "warmup_from": _time_text(times, 0),
                "warmup_to": _time_text(times, cut - 1),
                "scored_steps": length - cut,
                "scored_from": _time_text(times, cut),
                "scored_to": _time_text(times, length - 1),
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
            rows.append(row)

    summary: dict[str, Any] = {
        "series": len(kept),
        "skipped_series": len(skipped),
        "warmup_steps": int(sum(cuts[i] for i in kept)),
        "scored_steps": int(sum(len(table.features[i]) - cuts[i] for i in kept)),
        "warmup_from": min(r["warmup_from"] for r in rows),
        "warmup_to": max(r["warmup_to"] for r in rows),
        "scored_from": min(r["scored_from"] for r in rows),
        "scored_to": max(r["scored_to"] for r in rows),
        "season": season,
    }
    summary |= mean_metrics(rows, "one_step_")
    if forecasts:
        summary["horizon"] = max(int(r["horizon"]) for r in rows if "horizon" in r)
        summary |= mean_metrics(rows, "horizon_")
        summary |= mean_metrics(rows, "naive_")
    return Evaluation(rows, summary, skipped, season, horizon_note)


def _scored(actual: np.ndarray, predicted: np.ndarray, history: np.ndarray, season: int) -> dict:
    """:func:`series_metrics` over the steps that have a prediction: a run that differences
    its targets has none (NaN) for the first rows the differencing consumes."""
    has = np.isfinite(predicted)
    if not has.any():
        return {name: math.nan for name in ("mase", "smape", "scaled_rmse", "mae", "rmse")}
    return series_metrics(actual[has], predicted[has], history, season)


def evaluate_in_sample(
    forecaster: Forecaster, table: Any, *, season: int | None = None
) -> Evaluation:
    """Score every row of every series one step ahead, each series from a zero state.

    No warm-up and no hold-out: on the training table this is an in-sample fit. MASE and the
    scaled RMSE take their scale from the whole series. Prefer :func:`evaluate_warm`.
    """
    _check_regression(table, "evaluate_in_sample")
    season = _check_season(season, table)
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
                "id": _series_name(table, i),
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


def _horizon_forecasts(
    forecaster: Forecaster,
    table: Any,
    kept: list[int],
    origins: Sequence[int],
    horizon: int | None,
    feed: tuple[list[int], list[int]] | None,
) -> dict[int, np.ndarray]:
    """Series index -> ``[H_i, O]`` recursive forecast from ``origins[i]``; series sharing a
    horizon run as one batch."""
    if feed is None:
        return {}
    fed, _ = feed
    groups: dict[int, list[int]] = {}
    for i in kept:
        room = len(table.features[i]) - origins[i]
        groups.setdefault(min(room, horizon) if horizon else room, []).append(i)
    result: dict[int, np.ndarray] = {}
    for steps, members in groups.items():
        chosen = table.select(members)
        starts = [origins[i] for i in members]
        history = chosen.slice_steps(0, starts)
        future = _blind(chosen.slice_steps(starts, [s + steps for s in starts]), fed)
        paths = np.asarray(forecaster.forecast(history, steps, future))
        expected = (len(members), steps, len(table.columns.targets))
        if paths.shape != expected:
            raise ValueError(
                f"the forecaster returned shape {paths.shape}; expected {expected} "
                "(series, horizon, targets)"
            )
        for position, i in enumerate(members):
            result[i] = paths[position]
    return result


def _blind(future: Any, fed: list[int]) -> Any:
    """``future`` with the columns a forecast feeds (and every target) set to NaN."""
    features = []
    for block in future.features:
        block = block.astype(np.float64, copy=True)
        block[:, fed] = np.nan
        features.append(block)
    targets = [np.full(t.shape, np.nan) for t in future.targets]
    return dataclasses.replace(future, features=features, targets=targets)


# --------------------------------------------------------------------------------------------
# Backtest
# --------------------------------------------------------------------------------------------


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary,
            "folds": self.folds,
            "series": self.rows,
            "skipped": [{"id": i, "reason": r} for i, r in self.skipped],
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
        verdict = "beats" if s["model_mase"] < s["naive_mase"] else "does not beat"
        lines.append(
            f"  the model {verdict} seasonal naive on mean MASE "
            f"({s['model_mase']:.4g} vs {s['naive_mase']:.4g})"
        )
        for series, why in self.skipped[:5]:
            lines.append(f"  skipped {series!r}: {why}")
        return "\n".join(lines)


TrainFunction = Callable[[Any], Forecaster]


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
        table: a :class:`seqstate.sources.SequenceTable` with targets (whole series).
        model: ``train(table) -> Forecaster``, called on the table cut before the first origin
            (or before each fold's origin with ``refit``); or a trained :class:`Forecaster`,
            used as it is (then it must not have seen the folds, or the scores flatter it).
        folds: origins per series, >= 1.
        horizon: H, steps forecast at each origin, >= 1.
        refit: train again before every fold (needs ``model`` to be a train function).
        season: the seasonal-naive / MASE period (default: from the calendar).
    """
    _check_regression(table, "backtest")
    for name, value in (("folds", folds), ("horizon", horizon)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be an int >= 1; received {value!r}")
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
    feed = _forecast_columns(table.columns)
    if feed is None:
        raise ValueError(
            "backtest forecasts recursively, feeding each prediction back as the next input: "
            "the run needs shift 1 and every target among the features"
        )
    season = _check_season(season, table)
    folds, horizon = int(folds), int(horizon)
    # The first origin must leave enough history for training and for the naive baselines.
    least = max(2, table.columns.shift + 1)
    kept, skipped = [], []
    for i, length in enumerate(table.lengths.tolist()):
        first = length - folds * horizon
        if first < least:
            skipped.append(
                (
                    _series_name(table, i),
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
        paths = _horizon_forecasts(forecaster, table, kept, cut, horizon, feed)
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
            for o, name in enumerate(table.columns.targets):
                history_o = targets[:origin, o]
                row = {
                    "fold": fold,
                    "id": _series_name(table, i),
                    "target": name,
                    "origin": _time_text(table.times[i], origin),
                }
                model_metrics = series_metrics(actual[:, o], paths[i][:, o], history_o, season)
                naive_metrics = series_metrics(actual[:, o], naive[:, o], history_o, season)
                row |= {f"model_{k}": v for k, v in model_metrics.items()}
                row |= {f"naive_{k}": v for k, v in naive_metrics.items()}
                these.append(row)
        rows += these
        fold_summary: dict[str, Any] = {
            "fold": fold,
            "origin_from": min(r["origin"] for r in these),
            "origin_to": max(r["origin"] for r in these),
        }
        fold_summary |= mean_metrics(these, "model_")
        fold_summary |= mean_metrics(these, "naive_")
        fold_rows.append(fold_summary)

    summary: dict[str, Any] = {"series": len(kept), "folds": folds, "horizon": horizon}
    for key in fold_rows[0]:
        if key.startswith(("model_", "naive_")) and not key.endswith("undefined"):
            values = [f[key] for f in fold_rows if math.isfinite(f[key])]
            summary[key] = float(np.mean(values)) if values else math.nan
    return Backtest(rows, fold_rows, summary, stored, origins, skipped, horizon, season, refit)


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
        axes.set_title(f"{_series_name(table, i)}: {table.columns.targets[0]}")
        if row == 0:
            axes.legend(loc="upper left")
    figure.savefig(path, dpi=90)
    return True
