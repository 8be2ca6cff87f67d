"""Calibrated forecast intervals around any point forecast, from its own held-out errors.

A run answers with one point forecast per step (the network, a baseline or their combination,
whatever validation chose). Its intervals come from how wrong that same forecast was on the
validation windows (:mod:`seqstate.recipe.calibration` collects the errors), not from a model
of the noise::

    validation windows w (rolling origins, warm):  e[w, h] = (actual - point) / d_w
        d_w: the series' in-sample seasonal-naive MAE before the origin (the MASE scale)
    scale per step:      s[h] = a smooth, non-decreasing fit of mean_w |e[w, h]|
                         (few windows at h: shrunk to a power law a * h^b, b in [0, 1]),
                         then leaned on the seasonal naive's errors g[h] over the whole
                         history as one more path: sqrt((P_h s[h]^2 + g[h]^2) / (P_h + 1))
    standardised errors: z = e[w, h] / s[h], pooled over every w and h
    table:               s[1..H], the growth b beyond H, and the quantiles of z on a grid of
                         levels (conformal finite-sample correction; a Laplace tail past the
                         data; the signed errors leaned on their mirror image when they hold
                         few independent paths), widened about their median by
                         t_nu(tau) / Phi^-1(tau) where the errors hold only nu independent
                         draws (measured from their autocorrelation, below), then each
                         level clipped to its side of 0: z_0.5 = 0
    forecast:            q_tau[i, h] = point[i, h] + d_i * s[h] * z_tau   (q_0.5: the point)

Pooling the standardised errors over the steps is what makes one short series usable: the
shape of the error distribution is estimated from every step at once, and only its width
varies with h. Rolling origins overlap, though: a series whose validation part is P horizons
long holds about P independent error paths however many origins it is cut at, and a width
estimated from few paths is too narrow on average (a random walk, one series, P = 2: 0.70 /
0.88 coverage of the 80% / 95% intervals). As for a normal sample's scale estimated from nu
independent draws, the quantiles are widened by the Student-t's at nu degrees of freedom over
the normal's (1.00-1.04x at 100, 1.5x / 2.2x for the 80% / 95% ends at 2). How many draws
the windows hold depends on how long the errors remember: a random walk's errors at step h
stay correlated over h origins (P = sum over series of validation length / (H / 2) paths,
the worst case and the count without the windows' series), a seasonal random walk's or an
AR(1)'s within a few, so nu is measured (:func:`independent_draws`): each step's errors over
their integrated autocorrelation across a series' origins, summed over the steps, over the
standardised errors' correlation time along a window's steps (a seasonal random walk, one
series, P = 4: nu in the hundreds, coverage 0.88 / 0.995 with t_4, 0.82 / 0.96 measured).
With the seasonal naive's errors beside them (below: every trained run) the degrees of
freedom are at least :data:`FLOOR_PATHS` = 3, where a t has a variance: a
validation part shorter than the horizon (P < 1: 36 months of history for a 24-month horizon)
is not widened by a Cauchy, its far steps' scale being mostly the history's: at the steps
no validation window reached (a validation part shorter than the horizon) the scale is the
naive's alone, up to its last step, rather than a power law fitted on the few steps seen
(souvenirs, 3 validation steps for 24: a growth of 0.93 from step 3). The same few
paths cannot tell a model's skill from a calm stretch of the data at long horizons: a
validation tail on a solar cycle's decline saw a sunspot forecast's errors stay flat for 54
months, and the next cycle's were four times larger. So
each step's scale also counts the seasonal naive's mean error at that step over the whole
history (every origin, training and validation rows) as one more independent path, beside
the validation's P_h = P (H / 2) / h at step h: it moves a panel's or a short horizon's scale
by a few percent and a single series' far steps towards how fast the data drift from their
last season (flat for a stable season, like sqrt(h) for a random walk). The 50% quantile is
the point forecast itself (:func:`median_at_zero`): the validation errors' median is a bias of
the forecaster trained without the validation rows, kept in the tails only, so the median's
error is the point's. The table is a small versioned entry of the run
(``metadata["intervals"]``, format :data:`FORMAT`); a run without one gives point forecasts
only.

:func:`answer_quantiles` is the one rule a run's answers get their quantiles by (``forecast``,
``predict``, ``RunStreams`` and the server all call it through
:meth:`seqstate.recipe.step.RunStep.interval_quantiles`): ``answer_quantiles(point [B, H, O],
scale [B, O], table, levels [Q]) -> [B, H, O, Q]``, each stream's MASE scale kept in its state
(:mod:`seqstate.recipe.step.history_scale`); a history that has not varied yet (NaN scale)
gets no width. :func:`quantiles` is its arithmetic on rows ``[S, H]``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_LEVELS",
    "FLOOR_PATHS",
    "FORMAT",
    "GRID",
    "IntervalTable",
    "answer_quantiles",
    "check_levels",
    "fit_table",
    "independent_draws",
    "lean_on_naive",
    "median_at_zero",
    "members_table",
    "merge_tables",
    "path_quantiles",
    "quantiles",
    "score_path",
    "series_scales",
    "t_widening",
]

#: The run-directory entry's format name; a later change to its fields bumps the number.
FORMAT = "seqstate.intervals/1"
#: The quantile levels ``forecast`` writes when none are asked for.
DEFAULT_LEVELS = (0.1, 0.9)
#: The levels at which the table stores the standardised error quantiles.
GRID = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5,
    0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.975, 0.99, 0.995,
)  # fmt: skip
#: Pseudo-windows of the power law a step's own mean error is shrunk to (few windows at a
#: step: mostly the law; many: mostly the step's own errors).
_SHRINK = 4.0
#: Independent paths at which the signed (possibly skewed) error quantiles and their mirror
#: image weigh the same; fewer lean on the symmetric version.
_SKEW_PATHS = 5.0
#: The growth exponent b when the errors cover a single step (a random walk's).
_DEFAULT_GROWTH = 0.5
#: The fewest degrees of freedom the widening for few paths takes when the scale also leans
#: on the seasonal naive's history-wide errors: the fewest at which a Student-t has a finite
#: variance. A validation part shorter than the horizon (P < 1) would otherwise be widened by
#: a Cauchy (t_1(0.975) / Phi^-1(0.975) = 6.5, 25x at the 0.995 level) although its scale at
#: far steps is mostly the naive's, measured from every origin of the history.
FLOOR_PATHS = 3.0


@dataclasses.dataclass(frozen=True)
class IntervalTable:
    """Per-step scale and standardised error quantiles of a run's point forecast.

    Attributes:
        scale: ``[H]`` s[h] for h = 1..H (in units of the series' MASE scale).
        growth: b: past H, ``s[h] = s[H] * (h / H) ** b``.
        levels: ``[G]`` the grid of levels (:data:`GRID`).
        z: ``[G]`` the standardised error quantile at each level, non-decreasing.
        season: the season of the MASE scale the errors were divided by.
        windows: validation windows the errors came from; errors: scaled errors in all.
        paths: the independent error paths those windows hold (validation length over the
            horizon, summed over series), which widened ``z``; None: not known, not widened.
    """

    scale: tuple[float, ...]
    growth: float
    levels: tuple[float, ...]
    z: tuple[float, ...]
    season: int
    windows: int
    errors: int
    paths: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IntervalTable | None:
        """The table of a run's entry, or None for an entry of another (later) format: such a
        run then forecasts without intervals rather than with misread ones."""
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            return None
        return cls(
            scale=tuple(float(v) for v in data["scale"]),
            growth=float(data["growth"]),
            levels=tuple(float(v) for v in data["levels"]),
            z=tuple(float(v) for v in data["z"]),
            season=int(data["season"]),
            windows=int(data["windows"]),
            errors=int(data["errors"]),
            paths=None if data.get("paths") is None else float(data["paths"]),
        )

    def step_scales(self, horizon: int) -> np.ndarray:
        """``[horizon]`` s[h] for h = 1..horizon, the power law past the table's steps."""
        known = np.asarray(self.scale, dtype=np.float64)
        steps = np.arange(1, horizon + 1, dtype=np.float64)
        last = len(known)
        beyond = known[-1] * (steps / last) ** self.growth
        return np.where(steps <= last, known[np.minimum(steps, last).astype(int) - 1], beyond)

    def standard_quantiles(self, levels: Sequence[float]) -> np.ndarray:
        """``[Q]`` z at ``levels``: interpolated on the grid, a Laplace tail past its ends."""
        grid = np.asarray(self.levels)
        z = np.asarray(self.z)
        wanted = np.asarray(levels, dtype=np.float64)
        inside = np.interp(wanted, grid, z)
        # Laplace tails: z(tau) = z(t0) + beta * log((1 - t0) / (1 - tau)) above the grid.
        top = (z[-1] - z[-2]) / max(math.log((1 - grid[-2]) / (1 - grid[-1])), 1e-12)
        bottom = (z[1] - z[0]) / max(math.log(grid[1] / grid[0]), 1e-12)
        with np.errstate(divide="ignore", invalid="ignore"):
            above = z[-1] + top * np.log((1 - grid[-1]) / (1 - wanted))
            below = z[0] - bottom * np.log(grid[0] / wanted)
        return np.where(wanted > grid[-1], above, np.where(wanted < grid[0], below, inside))


def check_levels(levels: Any, argument: str = "levels", *, sort: bool = True) -> tuple[float, ...]:
    """``levels`` as a tuple of floats in (0, 1) (sorted and distinct with ``sort``);
    TypeError/ValueError naming ``argument`` otherwise."""
    if isinstance(levels, str | bytes) or not isinstance(levels, Sequence | np.ndarray):
        raise TypeError(
            f"{argument} must be a sequence of levels in (0, 1) like (0.1, 0.9); received "
            f"{type(levels).__name__}"
        )
    values = []
    for level in levels:
        if isinstance(level, bool) or not isinstance(level, int | float | np.number):
            raise TypeError(
                f"{argument} must hold numbers in (0, 1); received {type(level).__name__}"
            )
        if not 0.0 < float(level) < 1.0:
            raise ValueError(
                f"{argument} must hold levels strictly between 0 and 1 (0.1 for the 10% "
                f"quantile); received {level!r}"
            )
        values.append(float(level))
    if not values:
        raise ValueError(f"{argument} is empty; give at least one level, like (0.1, 0.9)")
    return tuple(sorted(set(values))) if sort else tuple(values)


def series_scales(histories: Sequence[Any], season: int) -> np.ndarray:
    """``[S]`` the MASE scale of each history ``[L_i]``: the mean absolute difference at lag
    ``season`` (lag 1 when the history is too short or seasonally constant). A history with
    no variation at all takes the median scale of the others (0 when none has one)."""
    from seqstate.recipe.metrics import mase_scale

    scales = np.array(
        [mase_scale(np.asarray(h, dtype=np.float64), int(season)) for h in histories],
        dtype=np.float64,
    )
    finite = scales[np.isfinite(scales)]
    fallback = float(np.median(finite)) if finite.size else 0.0
    return np.where(np.isfinite(scales), scales, fallback)


def quantiles(point: Any, scale: Any, table: IntervalTable, levels: Sequence[float]) -> np.ndarray:
    """The ``levels`` quantiles of the forecasts ``point [S, H]`` (step h = column h - 1).

    Args:
        point: ``[S, H]`` point forecasts (S series, or series x targets flattened).
        scale: ``[S]`` each row's MASE scale (:func:`series_scales` of its history).
        table: the run's :class:`IntervalTable`.
        levels: ``[Q]`` levels in (0, 1).

    Returns:
        ``[S, H, Q]`` float64, non-decreasing along Q when ``levels`` is sorted.
    """
    point = np.asarray(point, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    if point.ndim != 2 or scale.shape != (point.shape[0],):
        raise ValueError(
            f"quantiles needs point [S, H] and scale [S]; received shapes {point.shape} and "
            f"{scale.shape}"
        )
    levels = check_levels(levels, sort=False)
    steps = table.step_scales(point.shape[1])  # [H]
    z = table.standard_quantiles(levels)  # [Q]
    width = scale[:, None, None] * steps[None, :, None] * z[None, None, :]
    return point[:, :, None] + width


def answer_quantiles(
    point: Any,
    scale: Any,
    table: IntervalTable,
    levels: Sequence[float],
    *,
    one_step: bool = False,
) -> np.ndarray:
    """The ``levels`` quantiles of a run's answers ``point [B, H, O]`` (B streams or series,
    H steps, O targets).

    Args:
        point: ``[B, H, O]`` raw units: a forecast (row h: step h + 1 ahead), or with
            ``one_step`` answers that each predict one step ahead (every row at step 1).
        scale: ``[B, O]`` each stream's MASE scale per target (NaN: its history has not varied
            yet, so there is nothing to scale the errors by: zero width).
        table: the run's :class:`IntervalTable`.
        levels: ``[Q]`` levels in (0, 1).

    Returns:
        ``[B, H, O, Q]`` float64, non-decreasing along Q when ``levels`` is sorted; NaN where
        ``point`` is NaN.
    """
    point = np.asarray(point, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    if point.ndim != 3 or scale.shape != (point.shape[0], point.shape[2]):
        raise ValueError(
            f"answer_quantiles needs point [B, H, O] and scale [B, O]; received shapes "
            f"{point.shape} and {scale.shape}"
        )
    b, h, o = point.shape
    scale = np.where(np.isfinite(scale), scale, 0.0)
    if one_step:  # every answer its own first step: rows [B * H * O, 1]
        rows = quantiles(point.reshape(-1, 1), np.repeat(scale, h, axis=0).ravel(), table, levels)
        return rows.reshape(b, h, o, -1)
    rows = quantiles(point.transpose(0, 2, 1).reshape(b * o, h), scale.ravel(), table, levels)
    return rows.reshape(b, o, h, -1).transpose(0, 2, 1, 3)


def members_table(members: Sequence[Any]) -> IntervalTable | None:
    """The interval table of a run's members (``metadata["intervals"]``, averaged over an
    ensemble's: :func:`merge_tables`), or None: the run gives point forecasts only."""
    entries = [m.metadata.get("intervals") for m in members]
    tables = [IntervalTable.from_dict(e) for e in entries if e]
    return merge_tables([t for t in tables if t is not None])


def path_quantiles(
    path: Any, history: Any, table: IntervalTable, levels: Sequence[float]
) -> np.ndarray:
    """``[O, H, Q]`` quantiles of one series' forecast ``path [H, O]`` after ``history [L, O]``
    (its columns the targets, in the table's raw units)."""
    path = np.asarray(path, dtype=np.float64)
    history = np.asarray(history, dtype=np.float64)
    scales = series_scales([history[:, o] for o in range(history.shape[1])], table.season)
    return quantiles(path.T, scales, table, levels)


def score_path(
    actual: Any, path: Any, history: Any, table: IntervalTable, season: int
) -> list[dict[str, float]]:
    """Per target, :func:`seqstate.recipe.metrics.interval_metrics` of the table's quantiles
    around ``path [H, O]`` against ``actual [H, O]``: coverage and scaled width of each central
    interval, scaled CRPS and pinball loss over :data:`~seqstate.recipe.metrics.CRPS_LEVELS`."""
    from seqstate.recipe.metrics import CRPS_LEVELS, SCORED_LEVELS, interval_metrics

    actual = np.asarray(actual, dtype=np.float64)
    history = np.asarray(history, dtype=np.float64)
    bands = path_quantiles(path, history, table, SCORED_LEVELS)  # [O, H, Q]
    return [
        interval_metrics(
            actual[:, o],
            history[:, o],
            quantiles={level: bands[o, :, q] for q, level in enumerate(SCORED_LEVELS)},
            season=season,
            score_levels=CRPS_LEVELS,
        )
        for o in range(actual.shape[1])
    ]


def _power_law(mean_abs: np.ndarray, counts: np.ndarray) -> tuple[float, float]:
    """(a, b) of ``log mean_abs[h] = log a + b log h`` weighted by ``counts``, b in [0, 1]."""
    seen = (counts > 0) & (mean_abs > 0)
    steps = np.arange(1, len(mean_abs) + 1, dtype=np.float64)[seen]
    values, weights = np.log(mean_abs[seen]), counts[seen].astype(np.float64)
    if len(steps) < 2:
        b = _DEFAULT_GROWTH
    else:
        x = np.log(steps)
        mean_x = np.average(x, weights=weights)
        spread = np.average((x - mean_x) ** 2, weights=weights)
        centred = values - np.average(values, weights=weights)
        slope = np.average((x - mean_x) * centred, weights=weights)
        b = float(np.clip(slope / spread, 0.0, 1.0)) if spread > 0 else _DEFAULT_GROWTH
    log_a = float(np.average(values - b * np.log(steps), weights=weights))
    return math.exp(log_a), b


def _non_decreasing(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The weighted least-squares non-decreasing fit of ``values`` (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, weight, length]
    for value, weight in zip(values.tolist(), weights.tolist(), strict=True):
        blocks.append([value, weight, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            right = blocks.pop()
            left = blocks[-1]
            total = left[1] + right[1]
            left[0] = (left[0] * left[1] + right[0] * right[1]) / total
            left[1], left[2] = total, left[2] + right[2]
    return np.concatenate([np.full(int(length), mean) for mean, _, length in blocks])


def _adjusted(level: float, count: float) -> float:
    """The split-conformal level for ``count`` calibration draws: each tail's probability
    less ``(1 - tail) / count`` (the ceil((n + 1) tau)-th of n; at most 4x less, so finite)."""
    if level == 0.5:
        return level
    tail = min(level, 1.0 - level)
    shrunk = max(tail - (1.0 - tail) / count, tail / 4.0)
    return shrunk if level < 0.5 else 1.0 - shrunk


def _empirical(values: np.ndarray, level: float) -> float:
    """The ``level`` quantile of sorted ``values`` [N]; past the outermost plotting positions
    (1/(N+1), N/(N+1)) a Laplace tail fitted to the quartile-to-median spread."""
    count = len(values)
    low, high = 1.0 / (count + 1), count / (count + 1.0)
    if low <= level <= high:
        return float(np.quantile(values, level, method="weibull"))
    median = float(np.quantile(values, 0.5))
    if level > high:
        spread = max(float(np.quantile(values, 0.75)) - median, 1e-12) / math.log(2.0)
        return float(values[-1]) + spread * math.log((1.0 - high) / (1.0 - level))
    spread = max(median - float(np.quantile(values, 0.25)), 1e-12) / math.log(2.0)
    return float(values[0]) - spread * math.log(low / level)


def fit_table(
    errors: Any,
    season: int,
    *,
    paths: float | None = None,
    naive: Any = None,
    series: Any = None,
) -> IntervalTable | None:
    """The :class:`IntervalTable` of scaled errors ``[W, H]`` (NaN where window w has no step
    h), or None when there is no finite error.

    See the module doc: s[h] from each step's mean absolute error shrunk to a power law in h
    and made non-decreasing; the grid quantiles of the standardised errors pooled over every
    step, with the conformal correction (for sqrt(windows x errors) draws) and the signed
    quantiles leaned towards their mirror image when the windows (or the independent paths
    they hold) are few; with ``paths`` (the independent error paths the windows hold, when they
    overlap), widened about their median by :func:`t_widening` at as many degrees of freedom
    as the errors hold independent draws: with ``series`` (``[W]`` the series of each window,
    a series' windows in origin order, as :func:`seqstate.recipe.calibration.collect_errors`
    gives them) measured from the errors' own autocorrelation (:func:`independent_draws` summed
    over the steps, over the standardised errors' correlation time along a window's steps),
    without it ``paths`` (the count for a random walk's errors, the most persistent); at least
    :data:`FLOOR_PATHS` with ``naive``; then clipped to a median of 0
    (:func:`median_at_zero`); with ``naive`` (``[H]`` the seasonal naive's mean absolute scaled
    error per step over the whole history, :func:`seqstate.recipe.calibration.naive_errors`),
    s[h] widened towards it where the windows hold few independent paths at step h
    (:func:`lean_on_naive`), and at the steps no window reached (up to the naive's last
    finite step) its value alone.
    """
    if paths is not None and not (isinstance(paths, int | float) and paths > 0):
        raise ValueError(f"paths must be a number > 0 or None; received {paths!r}")
    e = np.asarray(errors, dtype=np.float64)
    if e.ndim != 2:
        raise ValueError(f"errors must be [windows, steps]; received shape {e.shape}")
    if series is not None:
        series = np.asarray(series)
        if series.shape != (e.shape[0],):
            raise ValueError(
                f"series must name the series of each window, shape ({e.shape[0]},); "
                f"received shape {series.shape}"
            )
    horizon = int(e.shape[1])
    finite = np.isfinite(e)
    used = finite.any(axis=1)
    e, finite = e[used], finite[used]
    series = None if series is None else series[used]
    if not finite.any():
        return None
    last = int(np.nonzero(finite.any(axis=0))[0].max()) + 1
    e, finite = e[:, :last], finite[:, :last]
    counts = finite.sum(axis=0).astype(np.float64)  # [H]
    absolute = np.where(finite, np.abs(e), 0.0)
    mean_abs = absolute.sum(axis=0) / np.maximum(counts, 1)
    if not (mean_abs > 0).any():  # every forecast exact: a zero-width table
        mean_abs = np.full_like(mean_abs, 1e-12)
    a, growth = _power_law(mean_abs, counts)
    law = a * np.arange(1, last + 1, dtype=np.float64) ** growth
    shrunk = (counts * mean_abs + _SHRINK * law) / (counts + _SHRINK)
    scale = np.maximum(_non_decreasing(shrunk, counts + _SHRINK), 1e-12)
    z = np.sort((e / scale[None, :])[finite])
    windows = int(e.shape[0])
    # The errors of one window are correlated (one path): as many independent draws as the
    # windows at worst, the errors at best; the conformal correction takes the geometric mean.
    effective = max(1.0, math.sqrt(windows * float(finite.sum())))
    mirrored = np.sort(np.concatenate([z, -z]))
    # The skew is seen in as many independent paths as the windows hold, not in the windows:
    # overlapping windows of one path share its sign (the paths counted as for the widening).
    skew_paths = float(windows) if paths is None else min(float(windows), float(paths))
    weight = skew_paths / (skew_paths + _SKEW_PATHS)
    values = []
    for level in GRID:
        adjusted = _adjusted(level, effective)
        values.append(
            weight * _empirical(z, adjusted) + (1 - weight) * _empirical(mirrored, adjusted)
        )
    quantile_values = np.asarray(values)
    freedom: float | None = None
    if series is not None:
        # The draws the pool holds, measured: each step's across origins, over how long the
        # standardised errors of one window stay correlated along its steps.
        standard = np.where(finite, e / scale[None, :], np.nan)
        draws = independent_draws(e, series)  # [last]
        freedom = float(draws.sum()) / _correlation_time(standard.T)
    elif paths is not None:  # the worst case: a random walk's windows half a horizon apart
        freedom = float(paths)
    if freedom is not None:
        middle = float(np.interp(0.5, GRID, quantile_values))
        # With the naive's history-wide errors the scale is known from more than the
        # validation's few paths: their degrees of freedom floored where a t has a variance.
        freedom = freedom if naive is None else max(freedom, FLOOR_PATHS)
        quantile_values = middle + (quantile_values - middle) * t_widening(GRID, freedom)
    quantile_values = median_at_zero(GRID, np.maximum.accumulate(quantile_values))
    if naive is not None:  # after z: the standardised errors keep the validation's own shape
        reach = _naive_reach(naive, horizon)
        if reach > last:  # steps no window reached (P < 2): no validation path, the history's
            scale = np.concatenate([scale, np.full(reach - last, scale[-1])])
            counts = np.concatenate([counts, np.zeros(reach - last)])
        step_paths = counts
        if paths is not None:  # windows h apart share no step at step h
            steps = np.arange(1, len(scale) + 1, dtype=np.float64)
            step_paths = np.minimum(counts, paths * (horizon / 2) / steps)
        scale = lean_on_naive(scale, step_paths, naive)
    return IntervalTable(
        scale=tuple(float(s) for s in scale),
        growth=float(growth),
        levels=tuple(GRID),
        z=tuple(float(v) for v in quantile_values),
        season=int(season),
        windows=windows,
        errors=int(finite.sum()),
        paths=None if paths is None else float(paths),
    )


def _naive_reach(naive: Any, horizon: int) -> int:
    """Steps (of at most ``horizon``) up to the naive's last finite error ``naive [>= 1]``."""
    known = np.nonzero(np.isfinite(np.asarray(naive, dtype=np.float64).ravel()))[0]
    return min(int(known[-1]) + 1, horizon) if known.size else 0


def median_at_zero(levels: Sequence[float], z: Any) -> np.ndarray:
    """``[G]`` the standardised quantiles ``z [G]`` (non-decreasing at sorted ``levels``) with
    their median at 0, so the 50% quantile of every answer is the point forecast itself: each
    level below 1/2 clipped to at most 0, each above to at least 0, the median 0.

    Of the quantile functions whose median is the point, this is the nearest to ``z`` at every
    level (so the one with the least pinball loss at every level the validation errors
    support). The validation errors' own median is a bias of the forecaster trained on the
    training part only, often not the run's (refitted on every row, or a baseline the
    selection took): it stays in the tails (a forecast that under-shot keeps its wide upper
    side), and the median's error is the point's.
    """
    levels_array = np.asarray(levels, dtype=np.float64)
    values = np.asarray(z, dtype=np.float64)
    if levels_array.shape != values.shape:
        raise ValueError(
            f"median_at_zero needs levels [G] and z [G]; received shapes {levels_array.shape} "
            f"and {values.shape}"
        )
    below, above = levels_array < 0.5, levels_array > 0.5
    return np.where(below, np.minimum(values, 0.0), np.where(above, np.maximum(values, 0.0), 0.0))


def lean_on_naive(scale: Any, step_paths: Any, naive: Any) -> np.ndarray:
    """``[H]`` the per-step scale ``scale [H]`` (from the validation windows, which hold
    ``step_paths [H]`` independent paths at each step) leaned on the seasonal naive's errors
    ``naive [>= 1]`` (per step over the whole history; past its last finite step, its last
    value): ``sqrt((P_h s[h]^2 + g[h]^2) / (P_h + 1))`` with g the naive's non-decreasing
    fit, made non-decreasing in h. A shrinkage both ways: where the naive erred less than
    the model it narrows s[h] by as little as it widens it in the other case (a floor would
    only ever widen, and over-cover on average where validation is like the rest).

    The naive's history-wide errors count as one more independent path: a validation part
    that holds few paths at step h (one series' tail at long horizons) cannot tell the
    model's skill from a calm stretch of the data, and a width that stays flat where the
    data drift (the errors of a forecast 60 months ahead of a sunspot cycle) is then pulled
    towards how fast the data drift away from their last season; where the windows hold many
    paths (short horizons, panels) it changes next to nothing.
    """
    scale = np.asarray(scale, dtype=np.float64)
    step_paths = np.asarray(step_paths, dtype=np.float64)
    reference = np.asarray(naive, dtype=np.float64).ravel()
    if scale.shape != step_paths.shape or reference.size == 0:
        raise ValueError(
            f"lean_on_naive needs scale [H], step_paths [H] and naive [>= 1]; received shapes "
            f"{scale.shape}, {step_paths.shape} and {reference.shape}"
        )
    known = np.nonzero(np.isfinite(reference))[0]
    if known.size == 0:
        return scale
    # forward-fill the steps no series reached, then past its end: its last value
    filled = reference[known[np.searchsorted(known, np.arange(reference.size), side="right") - 1]]
    filled = np.where(np.arange(reference.size) < known[0], reference[known[0]], filled)
    steps = len(scale)
    padded = np.concatenate([filled, np.full(max(0, steps - filled.size), filled[-1])])[:steps]
    smooth = _non_decreasing(padded, np.ones(steps))
    weight = np.maximum(step_paths, 0.0)
    blended = np.sqrt((weight * scale**2 + smooth**2) / (weight + 1.0))
    return np.maximum.accumulate(blended)


def independent_draws(errors: Any, series: Any) -> np.ndarray:
    """``[H]`` how many independent draws the windows' errors ``errors [W, H]`` hold at each
    step, from their own autocorrelation across a series' consecutive origins (``series
    [W]``: the series of each window, a series' windows in origin order; NaN: no error).

    The count at step h is the errors there over their integrated autocorrelation time,
    ``n_h / (1 + 2 sum_k rho_k(h))``, rho_k(h) the correlation of the errors of windows k
    origins apart in one series (about zero, not about their mean: a bias that every window
    shares is one draw, not many), pooled over the series and summed up to its first lag
    that is not positive (Geyer's initial positive sequence). Rolling origins overlap: a
    random walk's errors at step h stay correlated for h steps of origin, so its windows h
    apart are the independent ones; an AR(1)'s or a seasonal random walk's forget within
    a few origins and most windows count. At least one draw per series, at most the
    windows at h.
    """
    e = np.asarray(errors, dtype=np.float64)
    groups = np.asarray(series)
    finite = np.isfinite(e)
    x = np.where(finite, e, 0.0)
    counts = finite.sum(axis=0).astype(np.float64)  # [H]
    power = (x**2).sum(axis=0)  # [H]
    rows = [np.nonzero(groups == g)[0] for g in np.unique(groups)]
    longest = max(len(r) for r in rows)
    lagged = np.zeros((max(longest - 1, 0), e.shape[1]))  # [K, H] sum of x_w x_{w+k}
    for r in rows:
        for k in range(1, len(r)):
            lagged[k - 1] += (x[r[:-k]] * x[r[k:]]).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(power > 0, lagged / np.where(power > 0, power, 1.0), 0.0)  # [K, H]
    positive = np.cumprod(rho > 0, axis=0).astype(bool)  # up to the first lag <= 0
    time = 1.0 + 2.0 * np.where(positive, rho, 0.0).sum(axis=0)
    series_there = np.sum([finite[r].any(axis=0) for r in rows], axis=0)  # [H]
    return np.clip(counts / time, series_there, counts)


def _correlation_time(values: np.ndarray) -> float:
    """``1 + 2 sum_k rho_k`` of the rows of ``values [K, N]`` (NaN: none) pooled over its
    columns, rho_k the correlation about zero of rows k apart, summed up to the first lag
    that is not positive (Geyer's initial positive sequence); at least 1."""
    finite = np.isfinite(values)
    x = np.where(finite, values, 0.0)
    power = float((x**2).sum())
    if power <= 0:
        return 1.0
    total = 1.0
    for k in range(1, x.shape[0]):
        rho = float((x[:-k] * x[k:]).sum()) / power
        if rho <= 0:
            break
        total += 2.0 * rho
    return total


def t_widening(levels: Sequence[float], paths: float) -> np.ndarray:
    """``[Q]`` t_P(level) / Phi^-1(level) at P = ``paths`` degrees of freedom (at least 1;
    1 at the median): how much wider a quantile is when the scale is estimated from P
    independent draws than when it is known."""
    nu = max(float(paths), 1.0)
    wanted = np.asarray(levels, dtype=np.float64)
    upper = np.abs(wanted - 0.5)  # by symmetry, P(0 < T < t) = |level - 1/2|
    normal = np.array([abs(_normal_quantile(float(q))) for q in wanted])
    if nu > 100:  # Cornish-Fisher (Abramowitz & Stegun 26.7.5): within 1e-6 here
        z = normal
        t_large = z + (z**3 + z) / (4 * nu) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * nu**2)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(upper > 1e-12, t_large / np.where(z > 0, z, 1.0), 1.0)
    # P(0 < T < sqrt(nu) tan a) = c sqrt(nu) int_0^a cos(u)^(nu - 1) du: a smooth integrand on
    # [0, pi/2) for nu >= 1, integrated on a fine grid and inverted by interpolation
    angle = np.linspace(0.0, math.pi / 2, 20001)[:-1]
    integrand = np.cos(angle) ** (nu - 1.0)
    half = np.concatenate([[0.0], np.cumsum((integrand[1:] + integrand[:-1]) / 2)])
    half *= angle[1] - angle[0]
    log_c = math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - 0.5 * math.log(nu * math.pi)
    half *= math.exp(log_c) * math.sqrt(nu)
    t = math.sqrt(nu) * np.tan(np.interp(upper, half, angle))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(normal > 0, t / normal, 1.0)
    return np.where(upper > 1e-12, ratio, 1.0)


def _normal_quantile(level: float) -> float:
    """Phi^-1(level) (``statistics.NormalDist``, exact to double precision)."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(level)


def merge_tables(tables: Sequence[IntervalTable]) -> IntervalTable | None:
    """One table for an ensemble's members: their per-step scales (over the longest table's
    steps) and grid quantiles averaged. None when ``tables`` is empty."""
    if not tables:
        return None
    if len(tables) == 1:
        return tables[0]
    steps = max(len(t.scale) for t in tables)
    scale = np.mean([t.step_scales(steps) for t in tables], axis=0)
    z = np.mean([t.standard_quantiles(GRID) for t in tables], axis=0)
    return IntervalTable(
        scale=tuple(float(s) for s in scale),
        growth=float(np.mean([t.growth for t in tables])),
        levels=tuple(GRID),
        z=tuple(float(v) for v in np.maximum.accumulate(z)),
        season=tables[0].season,
        windows=sum(t.windows for t in tables),
        errors=sum(t.errors for t in tables),
        # (members fitted on the same series: their paths are the same paths)
        paths=max((t.paths for t in tables if t.paths is not None), default=None),
    )
