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

Probabilistic forecasts (:func:`interval_metrics`), from sample paths ``s [S, H]`` or quantiles
``{level: q [H]}``, on the MASE scale ``d = mean |h[t] - h[t - m]|``::

    crps         = mean_t (E|s - a| - E|s - s'| / 2) / d      (from samples: exact for them)
                 = mean_t 2 * mean_levels pinball_q(a, q) / d  (from quantiles: its estimate)
    pinball      = mean_t mean_levels pinball_q(a, q) / d
                   pinball_q(a, v) = max(q (a - v), (q - 1)(a - v))
    coverage_80  = mean_t [q0.1 <= a <= q0.9]                  (each central interval present)
    width_80     = mean_t (q0.9 - q0.1) / d
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from seqstate._validate import check_int

__all__ = [
    "INTERVALS",
    "SCALE_FREE",
    "interval_metrics",
    "mase_scale",
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


def mase_scale(history: np.ndarray, season: int) -> float:
    """The MASE denominator of ``history [L]``: mean |h[t] - h[t - m]| (lag 1 when the
    history is too short or seasonally constant); NaN when it has no variation."""
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
    scale = mase_scale(h, int(season))
    spread = float(np.std(h)) if len(h) > 1 else math.nan
    return {
        "mase": mae / scale if math.isfinite(scale) else math.nan,
        "smape": float(100.0 * np.mean(ratio)),
        "scaled_rmse": rmse / spread if spread > 0 else math.nan,
        "mae": mae,
        "rmse": rmse,
    }


#: Central intervals scored by :func:`interval_metrics`: name -> (lower level, upper level).
INTERVALS: dict[str, tuple[float, float]] = {"80": (0.1, 0.9), "95": (0.025, 0.975)}
#: The levels read from sample paths.
SAMPLE_LEVELS = (0.025, 0.1, 0.5, 0.9, 0.975)
#: Twenty evenly spaced levels (0.025, 0.075, ..., 0.975): CRPS = 2 * the integral of the
#: pinball loss over the level, here by the midpoint rule.
CRPS_LEVELS = tuple(round(0.025 + 0.05 * k, 3) for k in range(20))
#: What ``evaluate`` and ``backtest`` ask a forecaster with intervals for: the CRPS levels and
#: the ends of every central interval of :data:`INTERVALS`.
SCORED_LEVELS = tuple(sorted({*CRPS_LEVELS, 0.1, 0.9}))
#: What :func:`interval_metrics` may return, in display order.
PROBABILISTIC = ("crps", "pinball", "coverage_80", "width_80", "coverage_95", "width_95")


def _crps_from_samples(samples: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """CRPS per step of the empirical distribution of ``samples [S, H]`` at ``actual [H]``:
    ``E|X - a| - E|X - X'| / 2``, the pair term from the sorted draws in O(S log S)."""
    count = samples.shape[0]
    first = np.mean(np.abs(samples - actual[None]), axis=0)
    ordered = np.sort(samples, axis=0)
    weights = (2 * np.arange(1, count + 1) - count - 1)[:, None]  # sum_i<j |x_j - x_i|
    pairs = 2.0 * np.sum(weights * ordered, axis=0) / count**2  # E|X - X'|
    return first - 0.5 * pairs


def _pinball(actual: np.ndarray, value: np.ndarray, level: float) -> np.ndarray:
    error = actual - value
    return np.maximum(level * error, (level - 1.0) * error)


def interval_metrics(
    actual: Any,
    history: Any,
    *,
    samples: Any = None,
    quantiles: Mapping[float, Any] | None = None,
    season: int = 1,
    score_levels: Sequence[float] | None = None,
) -> dict[str, float]:
    """Scaled CRPS, scaled pinball loss, coverage and width of each central interval
    (:data:`INTERVALS`) of one series' probabilistic forecast; see the module doc.

    Args:
        actual: ``[H]`` the values that happened.
        history: ``[L]`` the values before them (the scale, as for MASE).
        samples: ``[S, H]`` sample paths; or
        quantiles: ``{level: [H]}`` predicted quantiles (CRPS is then estimated from them).
        season: steps per season for the scale.
        score_levels: with ``quantiles``, the levels CRPS and the pinball loss average over
            (default: all of them; :data:`CRPS_LEVELS` for an even grid).
    """
    a = _vector(actual, "actual")
    h = _vector(history, "history")
    if (samples is None) == (quantiles is None):
        raise ValueError("interval_metrics: give either samples [S, H] or quantiles {level: [H]}")
    if quantiles is None:
        draws = np.asarray(samples, dtype=np.float64)
        if draws.ndim != 2 or draws.shape[1] != len(a) or draws.shape[0] < 1:
            raise ValueError(
                f"samples must have shape [S, H] with H={len(a)} (actual's length); received "
                f"{tuple(draws.shape)}"
            )
        levels = {q: np.quantile(draws, q, axis=0) for q in SAMPLE_LEVELS}
        crps = float(np.mean(_crps_from_samples(draws, a)))
    else:
        levels = {float(q): _vector(v, f"quantiles[{q}]") for q, v in quantiles.items()}
        if not levels or any(len(v) != len(a) for v in levels.values()):
            raise ValueError(f"quantiles must map levels to arrays [H] with H={len(a)}")
        scored = levels
        if score_levels is not None:
            scored = {q: v for q in score_levels if (v := _level(levels, float(q))) is not None}
            if len(scored) != len(score_levels):
                raise ValueError(
                    f"score_levels {list(score_levels)} must all be among the quantiles' "
                    f"levels {sorted(levels)}"
                )
        crps = float(np.mean([2.0 * np.mean(_pinball(a, v, q)) for q, v in scored.items()]))
    scale = mase_scale(h, int(check_int(season, "season", 1)))
    if quantiles is not None:
        pinball = float(np.mean([np.mean(_pinball(a, v, q)) for q, v in scored.items()]))
    else:
        pinball = float(np.mean([np.mean(_pinball(a, v, q)) for q, v in levels.items()]))
    result = {
        "crps": crps / scale if math.isfinite(scale) else math.nan,
        "pinball": pinball / scale if math.isfinite(scale) else math.nan,
    }
    for name, (low, high) in INTERVALS.items():
        lower, upper = _level(levels, low), _level(levels, high)
        if lower is None or upper is None:
            continue
        result[f"coverage_{name}"] = float(np.mean((lower <= a) & (a <= upper)))
        width = float(np.mean(upper - lower))
        result[f"width_{name}"] = width / scale if math.isfinite(scale) else math.nan
    return result


def _level(levels: Mapping[float, np.ndarray], level: float) -> np.ndarray | None:
    for key, value in levels.items():
        if math.isclose(key, level, abs_tol=1e-9):
            return value
    return None


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
    for name in (*METRICS, *PROBABILISTIC):
        values = [float(row[f"{prefix}{name}"]) for row in rows if f"{prefix}{name}" in row]
        finite = [v for v in values if math.isfinite(v)]
        if values:
            result[f"{prefix}{name}"] = float(np.mean(finite)) if finite else math.nan
    result[f"{prefix}undefined"] = undefined
    return result
