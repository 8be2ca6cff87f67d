"""What evaluation needs from a trained model: the :class:`Forecaster` protocol (a run seen on
tables, in raw units), :class:`ModelForecaster` over a bare model, and the blind recursive
horizon forecasts that warm evaluation and the backtest both score.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Forecaster", "ModelForecaster", "forecast_columns", "why_not_forecastable"]


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
    calendar covariates need. ``predict`` may also take ``context`` (a table of the first rows
    of the same series): evaluation then passes each series' warm-up rows, so that whatever
    the forecaster reads from a series' history (a series it never saw is scaled by it) ends
    at the cut.
    """

    def predict(self, table: Any) -> list[np.ndarray]: ...

    def forecast(self, table: Any, horizon: int, future: Any) -> np.ndarray: ...


@dataclasses.dataclass
class ModelForecaster:
    """A :class:`Forecaster` over a model that holds its own normalisation and the table
    columns it was trained on (``seqstate.predict`` / ``seqstate.forecast``)."""

    model: Any  # a seqstate.SequenceModel (or the same protocol)

    def predict(self, table: Any) -> list[np.ndarray]:
        from seqstate.inference.prediction import predict

        return list(predict(self.model, list(table.features)))

    def forecast(self, table: Any, horizon: int, future: Any) -> np.ndarray:
        from seqstate.inference.prediction import forecast

        feed = forecast_columns(table.columns)
        if feed is None:
            raise ValueError(why_not_forecastable(table.columns))
        fed, others = feed
        covariates = [f[:, others] for f in future.features] if others else None
        return forecast(
            self.model, list(table.features), horizon, covariates=covariates, target_features=fed
        )


def why_not_forecastable(columns: Any) -> str | None:
    """Why a run over ``columns`` cannot forecast, or None when it can: the one rule (and the
    one message) behind ``forecast``, ``evaluate``'s horizon scores and ``backtest``.

    A recursive forecast feeds each prediction back as the next input, so the run must be a
    regression trained with shift 1 (its output at step t is the targets at t + 1) whose
    targets are all among its inputs.
    """
    feeds = "a forecast feeds each prediction back as the next input"
    if columns.task != "regression" or columns.shift != 1:
        return (
            f"{feeds}, which needs a regression run trained with shift 1; this run has task "
            f"{columns.task!r} and shift {columns.shift}"
        )
    missing = [name for name in columns.targets if name not in columns.features]
    if missing:
        return (
            f"{feeds}, which needs every target among the inputs; this run forecasts "
            f"{list(columns.targets)} from {list(columns.features)}: the targets {missing} are "
            "not inputs"
        )
    return None


def forecast_columns(columns: Any) -> tuple[list[int], list[int]] | None:
    """(input columns the targets feed, the other input columns), or None when the run cannot
    forecast (:func:`why_not_forecastable` says why)."""
    if why_not_forecastable(columns) is not None:
        return None
    features = list(columns.features)
    fed = [features.index(name) for name in columns.targets]
    return fed, [i for i in range(len(features)) if i not in fed]


def horizon_forecasts(
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
