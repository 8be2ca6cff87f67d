"""Statistical baselines as stateful step cells: seasonal naive and damped exponential smoothing.

A trained run compares its network with these on the last windows of every series and chooses
or combines them (:mod:`seqstate.recipe.selection`). Like the recurrent core, each baseline is a
cell whose state is carried by the caller, one row per series::

    cell = SeasonalNaive(season=12)
    state = cell.initial_state(batch_size)        # ring buffer [B, m] of the last m values
    for t in range(L):
        state = cell.step(state, y[:, t], mask[:, t])   # masked rows keep their state
    path = cell.forecast(state, horizon)          # [B, H]; the state is left unchanged

Damped ETS (additive error, additive damped trend, additive season), per row b, in the
error-correction form (``e`` is the one-step error)::

    yhat = level + phi * trend + season[pos]
    e = y - yhat
    level  <- level + phi * trend + alpha * e
    trend  <- phi * trend + beta * e
    season[pos] <- season[pos] + gamma * e;  pos <- (pos + 1) mod m
    forecast(h) = level + (phi + ... + phi^h) * trend + season[(pos + h - 1) mod m]

Its smoothing coefficients are chosen per series from a small grid by the one-step squared error
over the series' own history (:func:`fit_damped_ets`), all series and grid points in one
vectorised pass: a few milliseconds per thousand steps, which keeps ``train`` fast (statsmodels'
optimiser takes a second or so per series, and it cannot carry a state step by step).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = [
    "DampedETS",
    "ETSState",
    "SeasonalNaive",
    "SeasonalNaiveState",
    "baseline_forecasts",
    "baseline_predictions",
    "fit_damped_ets",
]

# Grid of (alpha, beta as a share of alpha, phi, gamma as a share of 1 - alpha).
_ALPHAS = (0.05, 0.2, 0.5, 0.9)
_BETA_SHARES = (0.0, 0.05, 0.3)
_PHIS = (0.9, 0.98)
_GAMMA_SHARES = (0.0, 0.05, 0.3)


def _mean(values: np.ndarray) -> np.ndarray:
    """Row means of ``[B, k]`` over the finite entries (0 for a row with none)."""
    finite = np.isfinite(values)
    total = np.where(finite, values, 0.0).sum(axis=1)
    return total / np.maximum(finite.sum(axis=1), 1)


def _padded(histories: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``[B, L_max]`` float64 values (NaN padded at the end) and their ``[B, L_max]`` mask."""
    longest = max((len(h) for h in histories), default=0)
    values = np.full((len(histories), longest), np.nan)
    for row, history in enumerate(histories):
        values[row, : len(history)] = np.asarray(history, dtype=np.float64)
    mask = np.isfinite(values)
    return values, mask


# --------------------------------------------------------------------------------------------
# Seasonal naive
# --------------------------------------------------------------------------------------------


class SeasonalNaiveState(NamedTuple):
    """``values [B, m]``: the last m values, oldest first; ``seen [B]``: values seen."""

    values: np.ndarray
    seen: np.ndarray


@dataclasses.dataclass(frozen=True)
class SeasonalNaive:
    """Repeat the last ``season`` values (``season=1``: the last value)."""

    season: int

    def __post_init__(self) -> None:
        if isinstance(self.season, bool) or not isinstance(self.season, int) or self.season < 1:
            raise ValueError(f"season must be an int >= 1; received {self.season!r}")

    def initial_state(self, batch_size: int) -> SeasonalNaiveState:
        return SeasonalNaiveState(
            np.full((batch_size, self.season), np.nan), np.zeros(batch_size, dtype=np.int64)
        )

    def step(
        self, state: SeasonalNaiveState, y: np.ndarray, mask: np.ndarray | None = None
    ) -> SeasonalNaiveState:
        """Consume one value per row, ``y [B]``; rows where ``mask [B]`` is False keep their
        state. Returns a new state."""
        keep = np.ones(len(y), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        shifted = np.concatenate([state.values[:, 1:], np.asarray(y, np.float64)[:, None]], 1)
        values = np.where(keep[:, None], shifted, state.values)
        return SeasonalNaiveState(values, state.seen + keep)

    def state_after(self, histories: Sequence[np.ndarray]) -> SeasonalNaiveState:
        """The state after stepping through each ``[L_i]`` history from the initial state
        (equal to the step loop, read straight from the last ``season`` values)."""
        state = self.initial_state(len(histories))
        for row, history in enumerate(histories):
            last = np.asarray(history, dtype=np.float64)[-self.season :]
            if len(last):
                state.values[row, -len(last) :] = last
            state.seen[row] = len(history)
        return state

    def forecast(self, state: SeasonalNaiveState, horizon: int) -> np.ndarray:
        """``[B, horizon]``: the value one season back; rows with fewer than ``season`` values
        repeat their last value."""
        m = self.season
        ahead = np.arange(horizon) % m  # step h reads values[h mod m] (oldest first)
        seasonal = state.values[:, ahead]
        last = np.repeat(state.values[:, -1:], horizon, axis=1)
        return np.where((state.seen >= m)[:, None], seasonal, last)


# --------------------------------------------------------------------------------------------
# Damped ETS
# --------------------------------------------------------------------------------------------


class ETSState(NamedTuple):
    """``level [B]``, ``trend [B]``, ``season [B, m]`` and ``position [B]`` (the season slot
    of the next step)."""

    level: np.ndarray
    trend: np.ndarray
    season: np.ndarray
    position: np.ndarray


@dataclasses.dataclass(frozen=True)
class DampedETS:
    """Additive damped-trend exponential smoothing with an additive season, one set of
    coefficients per row (each ``[B]``)."""

    season_length: int
    alpha: np.ndarray
    beta: np.ndarray
    phi: np.ndarray
    gamma: np.ndarray

    def initial_state(self, first: np.ndarray) -> ETSState:
        """The state before step 0 from each row's first values ``[B, k]`` (NaN padded; the
        first season: level its mean, season the deviations, trend the mean slope)."""
        m = self.season_length
        first = np.asarray(first, dtype=np.float64)
        head = first[:, :m]
        level = _mean(head)
        season = np.zeros((len(first), m))
        if m > 1:
            season[:, : head.shape[1]] = np.nan_to_num(head - level[:, None])
        trend = np.zeros(len(first))
        if first.shape[1] >= 2 * m and m > 1:
            # Only rows with a whole second season get a starting slope.
            following = first[:, m : 2 * m]
            whole = np.isfinite(following).all(axis=1)
            trend = np.where(whole, (_mean(following) - level) / m, 0.0)
        return ETSState(level, trend, season, np.zeros(len(first), dtype=np.int64))

    def step(self, state: ETSState, y: np.ndarray, mask: np.ndarray | None = None) -> ETSState:
        """Consume ``y [B]``; rows where ``mask [B]`` is False (or y is NaN) keep their state."""
        y = np.asarray(y, dtype=np.float64)
        keep = np.isfinite(y) if mask is None else np.asarray(mask, dtype=bool) & np.isfinite(y)
        rows = np.arange(len(y))
        seasonal = state.season[rows, state.position]
        error = np.where(keep, y - (state.level + self.phi * state.trend + seasonal), 0.0)
        moved = state.level + self.phi * state.trend + self.alpha * error
        level = np.where(keep, moved, state.level)
        trend = np.where(keep, self.phi * state.trend + self.beta * error, state.trend)
        season = state.season.copy()
        season[rows, state.position] = seasonal + self.gamma * error
        position = np.where(keep, (state.position + 1) % self.season_length, state.position)
        return ETSState(level, trend, season, position)

    def forecast(self, state: ETSState, horizon: int) -> np.ndarray:
        """``[B, horizon]`` from ``state`` (left unchanged)."""
        steps = np.arange(1, horizon + 1)
        damping = np.cumsum(self.phi[:, None] ** steps[None, :], axis=1)  # phi + ... + phi^h
        slots = (state.position[:, None] + steps[None, :] - 1) % self.season_length
        seasonal = np.take_along_axis(state.season, slots, axis=1)
        return state.level[:, None] + damping * state.trend[:, None] + seasonal


def _grid() -> np.ndarray:
    """``[G, 4]`` (alpha, beta, phi, gamma) points of the coefficient grid."""
    points = []
    for alpha, beta_share, phi, gamma_share in itertools.product(
        _ALPHAS, _BETA_SHARES, _PHIS, _GAMMA_SHARES
    ):
        if beta_share == 0.0 and phi != _PHIS[-1]:
            continue  # no trend: the damping does not matter
        points.append((alpha, beta_share * alpha, phi, gamma_share * (1.0 - alpha)))
    return np.array(points)


def fit_damped_ets(histories: Sequence[np.ndarray], season: int) -> tuple[DampedETS, ETSState]:
    """Choose each series' coefficients and run it through its history.

    Args:
        histories: one ``[L_i]`` array of raw values per series (L_i >= 1).
        season: steps per season (1: no season).

    Returns:
        (the cell with ``[B]`` coefficients, the state after each series' last value).
    """
    m = max(1, int(season))
    values, mask = _padded(histories)
    batch, longest = values.shape
    grid = _grid() if m > 1 else _grid()[_grid()[:, 3] == 0.0]
    points = len(grid)
    # Every (grid point, series) pair is one row of a single cell: [G * B].
    tiled = np.tile(values, (points, 1))
    tiled_mask = np.tile(mask, (points, 1))
    coefficient = np.repeat(grid, batch, axis=0)
    cell = DampedETS(m, *(coefficient[:, k] for k in range(4)))
    state = cell.initial_state(tiled[:, : 2 * m])
    squared = np.zeros(points * batch)
    lengths = mask.sum(axis=1)
    burn_in = np.minimum(m, np.maximum(lengths - 1, 0))  # the first season fits the start
    counted = np.zeros(points * batch)
    rows = np.arange(points * batch)
    for t in range(longest):
        y = tiled[:, t]
        predicted = state.level + cell.phi * state.trend + state.season[rows, state.position]
        scored = tiled_mask[:, t] & (t >= np.tile(burn_in, points))
        squared += np.where(scored, (y - predicted) ** 2, 0.0)
        counted += scored
        state = cell.step(state, y, tiled_mask[:, t])
    error = (squared / np.maximum(counted, 1)).reshape(points, batch)
    error = np.where(np.isfinite(error), error, np.inf)
    best = error.argmin(axis=0)  # [B]
    chosen = best * batch + np.arange(batch)
    fitted = DampedETS(m, *(coefficient[best, k] for k in range(4)))
    final = ETSState(
        state.level[chosen], state.trend[chosen], state.season[chosen], state.position[chosen]
    )
    return fitted, final


# --------------------------------------------------------------------------------------------
# Whole histories in, forecasts out
# --------------------------------------------------------------------------------------------


def _member(name: str) -> tuple[str, int]:
    """``"seasonal_naive_12"`` -> ("seasonal_naive", 12); ``"ets_4"`` -> ("ets", 4)."""
    kind, _, season = name.rpartition("_")
    if kind not in ("seasonal_naive", "ets") or not season.isdigit() or int(season) < 1:
        raise ValueError(
            f"unknown baseline {name!r}; expected seasonal_naive_M or ets_M (M >= 1 steps)"
        )
    return kind, int(season)


def ets_window(season: int) -> int:
    """Steps of the end of a history that damped ETS is fitted on and run through: older
    values have faded (0.95 ** 400 < 1e-8 for the slowest level); bounds the cost on long
    sub-daily series."""
    return max(20 * season, 400)


def baseline_forecasts(name: str, histories: Sequence[np.ndarray], horizon: int) -> np.ndarray:
    """``[n, horizon]`` forecasts of baseline ``name`` after each ``[L_i]`` history."""
    kind, season = _member(name)
    if kind == "ets":
        window = ets_window(season)
        cell, state = fit_damped_ets([np.asarray(h)[-window:] for h in histories], season)
        return cell.forecast(state, horizon)
    naive = SeasonalNaive(season)
    return naive.forecast(naive.state_after(histories), horizon)


def baseline_predictions(name: str, histories: Sequence[np.ndarray]) -> list[np.ndarray]:
    """One ``[L_i]`` array per series: row t is the baseline's forecast of step t + 1 from the
    values up to t (what ``predict`` answers with shift 1)."""
    kind, season = _member(name)
    values, mask = _padded(histories)
    batch, longest = values.shape
    out = np.full((batch, longest), np.nan)
    if kind == "ets":
        cell, _ = fit_damped_ets([np.asarray(h)[-ets_window(season) :] for h in histories], season)
        ets_state = cell.initial_state(values[:, : 2 * season])
        for t in range(longest):
            ets_state = cell.step(ets_state, values[:, t], mask[:, t])
            out[:, t] = cell.forecast(ets_state, 1)[:, 0]
    else:
        naive = SeasonalNaive(season)
        naive_state = naive.initial_state(batch)
        for t in range(longest):
            naive_state = naive.step(naive_state, values[:, t], mask[:, t])
            out[:, t] = naive.forecast(naive_state, 1)[:, 0]
    return [out[row, : len(h)] for row, h in enumerate(histories)]


def describe(name: str) -> str:
    """``"seasonal_naive_12"`` -> ``"seasonal naive (season 12)"``, for summaries."""
    kind, season = _member(name)
    if kind == "ets":
        return "damped ETS" + (f" (season {season})" if season > 1 else "")
    return "naive (last value)" if season == 1 else f"seasonal naive (season {season})"
