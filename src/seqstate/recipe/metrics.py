"""Forecast accuracy per series: raw and scale-free, and the seasonal-naive baseline.

Pooling squared errors in raw units over a panel lets the largest series decide the score (a
series in millions drowns one in units). Every metric here is computed *per series and target
column*, then averaged over them; the scale-free ones (MASE, sMAPE, scaled RMSE) are the ones
to compare across series and datasets.

For one series with history ``h [L]`` (what the model saw before the scored steps), actual
values ``a [H]`` and predictions ``p [H]``::

    mae          = mean |a - p|
    rmse         = sqrt(mean (a - p)^2)
    smape        = 100 * mean 2|a - p| / (|a| + |p|)          (0/0 counts as 0), in [0, 200]
    mase         = mae / mean |h[t] - h[t - m]|              (m: the season, 1 if h is short)
    scaled_rmse  = rmse / std(h)                              (RMSE on the series' own scale)

The denominators come from the history only, never from the scored steps. A history with no
variation (constant) leaves MASE and scaled RMSE undefined (NaN); they are then left out of
the means and counted in ``undefined``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from seqstate._validate import check_int

__all__ = [
    "SCALE_FREE",
    "mean_metrics",
    "seasonal_naive",
    "series_metrics",
]

#: Metrics comparable across series of any scale.
SCALE_FREE = ("mase", "smape", "scaled_rmse")
#: Every metric :func:`series_metrics` returns, in display order.
METRICS = ("mase", "smape", "scaled_rmse", "mae", "rmse")


def _vector(value: Any, name: str) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one series [L]; received shape {tuple(array.shape)}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or inf; fill or drop missing values first")
    return array


def seasonal_naive(history: Any, horizon: int, season: int = 1) -> np.ndarray:
    """Repeat the last ``season`` values of ``history [L]`` over ``horizon`` steps.

    ``season=1`` is the naive last-value forecast. A history shorter than ``season`` falls
    back to the last value.
    """
    values = _vector(history, "history")
    if len(values) == 0:
        raise ValueError("history is empty; the seasonal naive forecast needs at least one step")
    check_int(season, "season", 1, hint="It counts the steps per season, e.g. 12 for monthly data.")
    check_int(horizon, "horizon", 1)
    period = int(season) if len(values) >= season else 1
    last = values[-period:]
    return np.resize(last, int(horizon))  # last[0], last[1], ..., wrapping around


def _mase_scale(history: np.ndarray, season: int) -> float:
    period = season if len(history) > season else 1
    if len(history) <= period:
        return math.nan
    scale = float(np.mean(np.abs(history[period:] - history[:-period])))
    if scale == 0.0 and period > 1:  # seasonally constant: fall back to the one-step scale
        scale = float(np.mean(np.abs(np.diff(history))))
    return scale if scale > 0.0 else math.nan


def series_metrics(actual: Any, predicted: Any, history: Any, season: int = 1) -> dict[str, float]:
    """Metrics of one series' ``predicted [H]`` against ``actual [H]``; see the module doc.

    Args:
        history: ``[L]`` the values before the scored steps (the scale of MASE and scaled RMSE).
        season: steps per season for the MASE denominator (12 for monthly data).
    """
    a = _vector(actual, "actual")
    p = _vector(predicted, "predicted")
    h = _vector(history, "history")
    if a.shape != p.shape:
        raise ValueError(
            f"actual and predicted must have the same length; received {len(a)} and {len(p)}"
        )
    if len(a) == 0:
        raise ValueError("actual is empty; there is nothing to score")
    error = a - p
    mae = float(np.mean(np.abs(error)))
    rmse = float(np.sqrt(np.mean(error**2)))
    denominator = np.abs(a) + np.abs(p)
    ratio = np.divide(2.0 * np.abs(error), denominator, out=np.zeros_like(a), where=denominator > 0)
    scale = _mase_scale(h, int(season))
    spread = float(np.std(h)) if len(h) > 1 else math.nan
    return {
        "mase": mae / scale if math.isfinite(scale) else math.nan,
        "smape": float(100.0 * np.mean(ratio)),
        "scaled_rmse": rmse / spread if spread > 0 else math.nan,
        "mae": mae,
        "rmse": rmse,
    }


def mean_metrics(rows: Iterable[Mapping[str, Any]], prefix: str = "") -> dict[str, float | int]:
    """The mean of each metric over ``rows`` (one per series and target), NaN left out.

    Returns ``{prefix + name: mean}`` for every metric in :data:`METRICS` present in the rows,
    plus ``{prefix + "undefined": count}`` of rows whose MASE or scaled RMSE was undefined.
    """
    rows = list(rows)
    result: dict[str, float | int] = {}
    undefined = 0
    for row in rows:
        if any(
            isinstance(row.get(f"{prefix}{name}"), float) and math.isnan(row[f"{prefix}{name}"])
            for name in ("mase", "scaled_rmse")
        ):
            undefined += 1
    for name in METRICS:
        values = [float(row[f"{prefix}{name}"]) for row in rows if f"{prefix}{name}" in row]
        finite = [v for v in values if math.isfinite(v)]
        if values:
            result[f"{prefix}{name}"] = float(np.mean(finite)) if finite else math.nan
    result[f"{prefix}undefined"] = undefined
    return result
