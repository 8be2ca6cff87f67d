"""Statistical baselines as stateful step cells: seasonal naive, damped exponential smoothing and
the Theta method.

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
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np

__all__ = [
    "STREAMS",
    "THETA_ALPHAS",
    "BaselineStream",
    "DampedETS",
    "ETSState",
    "ETSStream",
    "NaiveStream",
    "SeasonalNaive",
    "SeasonalNaiveState",
    "ThetaStream",
    "baseline_forecasts",
    "baseline_predictions",
    "baseline_stream",
    "fit_damped_ets",
    "origin_forecasts",
]

#: The smoothing coefficients :class:`ThetaStream` chooses from (its SES of the adjusted data).
THETA_ALPHAS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)

# Grid of (alpha, beta as a share of alpha, phi, gamma as a share of 1 - alpha).
_ALPHAS = (0.05, 0.2, 0.5, 0.9)
_BETA_SHARES = (0.0, 0.05, 0.3)
_PHIS = (0.9, 0.98)
_GAMMA_SHARES = (0.0, 0.05, 0.3)


def pairwise_sum(values: np.ndarray) -> np.ndarray:
    """``[..., k] -> [...]``: the sum over the last axis by adding neighbours, level by level
    (``((v0 + v1) + (v2 + v3)) + v4``; an odd last one moves up as it is).

    The streams sum in this order rather than NumPy's (which depends on k and the memory
    layout) because their torch forms (:mod:`seqstate.recipe.step.baseline_cells`) and ONNX
    repeat it op for op: the same bits, so the same grid point wins a tie. A row padded with
    zeros after its k values sums to the same bits as the k values alone.
    """
    while values.shape[-1] > 1:
        k = values.shape[-1]
        pairs = values[..., 0 : k - 1 : 2] + values[..., 1:k:2]
        values = np.concatenate([pairs, values[..., k - 1 :]], axis=-1) if k % 2 else pairs
    if values.shape[-1] == 0:
        return np.zeros(values.shape[:-1])
    return values[..., 0]


def _mean(values: np.ndarray) -> np.ndarray:
    """Row means of ``[B, k]`` over the finite entries (0 for a row with none)."""
    finite = np.isfinite(values)
    total = pairwise_sum(np.where(finite, values, 0.0))
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


def grid(season: int) -> np.ndarray:
    """``[G, 4]`` (alpha, beta, phi, gamma) points damped ETS chooses from at ``season`` (no
    seasonal smoothing without a season)."""
    points = _grid()
    return points if season > 1 else points[points[:, 3] == 0.0]


class Grid(NamedTuple):
    """Every point of the coefficient grid run side by side on every row: ``level``,
    ``trend`` ``[B, G]``, ``season [B, G, m]``, ``position [B]`` (the season slot of the next
    step, one per row: every point steps together) and the running scored one-step squared
    errors and their count ``squared``, ``counted`` ``[B, G]``."""

    level: np.ndarray
    trend: np.ndarray
    season: np.ndarray
    position: np.ndarray
    squared: np.ndarray
    counted: np.ndarray


def grid_start(first: np.ndarray, season: int, points: int) -> Grid:
    """The grid before step 0 of rows whose first values are ``first [B, k]`` (k <= 2m, NaN
    after a row's values): :meth:`DampedETS.initial_state` for each of the ``points``."""
    m = max(1, int(season))
    start = DampedETS(m, *([np.zeros(len(first))] * 4)).initial_state(first)
    b = len(first)

    def wide(row: np.ndarray) -> np.ndarray:  # (B, ...) -> (B, G, ...): the same start
        return np.repeat(row[:, None], points, axis=1)

    zeros = np.zeros((b, points))
    return Grid(
        wide(start.level), wide(start.trend), wide(start.season), start.position, zeros, zeros
    )


def grid_step(
    points: np.ndarray,
    grid: Grid,
    y: np.ndarray,
    keep: np.ndarray | None = None,
    scored: np.ndarray | None = None,
) -> Grid:
    """One value ``y [B]`` through every grid point ``points [G, 4]`` of every row, exactly
    :meth:`DampedETS.step` per point and row (the same operations in the same order)::

        seasonal = season[b, g, position[b]];  e = y[b] - (level + phi * trend + seasonal)
        squared += e ** 2 where scored[b];  counted += scored[b]
        where keep[b]: level = level + phi * trend + alpha * e;  trend = phi * trend + beta * e
                       season[b, g, position[b]] += gamma * e;  position = (position + 1) mod m

    Rows where ``keep [B]`` is False (padding, a NaN value) keep their state; ``scored [B]``:
    the rows whose error counts (None: every row). ``grid.season`` is written in place (the
    caller owns it).
    """
    alpha, beta, phi, gamma = points[:, 0], points[:, 1], points[:, 2], points[:, 3]
    level, trend, season, position, squared, counted = grid
    m = season.shape[-1]
    rows = np.arange(len(y))
    seasonal = season[rows, :, position]  # (B, G)
    base = level + phi * trend
    missed = y[:, None] - (base + seasonal)
    # (where every row is kept or scored the masks are left out: the same values, fewer ops)
    if scored is None:
        squared, counted = squared + missed**2, counted + 1.0
    else:
        squared = squared + np.where(scored[:, None], missed**2, 0.0)
        counted = counted + scored[:, None]
    if keep is None:
        season[rows, :, position] = seasonal + gamma * missed
        return Grid(
            base + alpha * missed, phi * trend + beta * missed, season, (position + 1) % m,
            squared, counted,
        )  # fmt: skip
    kept = keep[:, None]
    error = np.where(kept, missed, 0.0)
    level = np.where(kept, base + alpha * error, level)
    trend = np.where(kept, phi * trend + beta * error, trend)
    season[rows, :, position] = seasonal + gamma * error
    position = np.where(keep, (position + 1) % m, position)
    return Grid(level, trend, season, position, squared, counted)


def grid_run(values: np.ndarray, mask: np.ndarray, season: int) -> Grid:
    """Every grid point of :func:`grid` run over ``values [B, L]`` (``mask [B, L]``: the real
    values, padding after them) from the state :meth:`DampedETS.initial_state` reads off each
    row's first two seasons; a step's one-step squared error counts once the first season
    (which fitted the start) is past."""
    m = max(1, int(season))
    points = grid(m)
    values = np.where(mask, values, np.nan)  # (the start reads only real values)
    state = grid_start(values[:, : 2 * m], m, len(points))
    burn_in = np.minimum(m, np.maximum(mask.sum(axis=1) - 1, 0))
    for t in range(values.shape[1]):
        y = values[:, t]
        scored = mask[:, t] & (t >= burn_in)
        state = grid_step(points, state, y, mask[:, t] & np.isfinite(y), scored)
    return state


class GridPass(NamedTuple):
    """Every grid point run over histories, rows ``b * G + g`` (series b, point g):
    the cell, its state after the last value, and the scored squared errors and counts."""

    cell: DampedETS
    state: ETSState
    squared: np.ndarray
    counted: np.ndarray


def flat_pass(state: Grid, season: int) -> GridPass:
    """``state``'s points as rows ``b * G + g`` of one :class:`DampedETS` (to pick from)."""
    m = max(1, int(season))
    points = grid(m)
    b, g = state.level.shape
    coefficient = np.tile(points, (b, 1))
    return GridPass(
        DampedETS(m, *(coefficient[:, k] for k in range(4))),
        ETSState(
            state.level.reshape(-1),
            state.trend.reshape(-1),
            state.season.reshape(-1, m),
            np.repeat(state.position, g),
        ),
        state.squared.reshape(-1),
        state.counted.reshape(-1),
    )


def grid_pass(values: np.ndarray, mask: np.ndarray, season: int) -> GridPass:
    """:func:`grid_run` over ``values [B, L]`` (``mask [B, L]``) as rows ``b * G + g``."""
    return flat_pass(grid_run(values, mask, season), season)


def best_points(squared: np.ndarray, counted: np.ndarray, points: int) -> np.ndarray:
    """``[B]`` each series' grid point with the lowest mean scored squared error (the first
    on ties; NaN errors never win)."""
    error = (squared / np.maximum(counted, 1)).reshape(-1, points)
    return np.where(np.isfinite(error), error, np.inf).argmin(axis=1)


def _chosen(run: GridPass, best: np.ndarray) -> tuple[DampedETS, ETSState]:
    """The cell and state of the grid point ``best [B]`` of each series."""
    points = len(run.squared) // max(len(best), 1) if len(best) else 1
    chosen = np.arange(len(best)) * points + best
    cell, state = run.cell, run.state
    fitted = DampedETS(
        cell.season_length,
        cell.alpha[chosen],
        cell.beta[chosen],
        cell.phi[chosen],
        cell.gamma[chosen],
    )
    return fitted, ETSState(
        state.level[chosen], state.trend[chosen], state.season[chosen], state.position[chosen]
    )


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
    run = grid_pass(values, mask, m)
    return _chosen(run, best_points(run.squared, run.counted, len(grid(m))))


# --------------------------------------------------------------------------------------------
# Streams: one baseline of a run as a step cell over raw values (what RunStep carries)
# --------------------------------------------------------------------------------------------

StreamState = dict[str, np.ndarray]


class BaselineStream(Protocol):
    """A baseline as a stateful step cell over rows of raw values (one row per series and
    target), the form a run carries it in (:class:`seqstate.recipe.step.RunStep`).

    The state is a dict of arrays, each with the rows on its first axis (int64 or float64), so
    it is stored, selected and serialised with the rest of a run's state. Every value given to
    :meth:`step` is real (no padding). The contract the tests check for every kind: the
    prediction after value t equals ``forecast(state after values 0..t, 1)`` and equals
    :func:`baseline_forecasts` of the history up to t; chunked == whole.
    """

    def initial_state(self, batch_size: int) -> StreamState:
        """The state of ``batch_size`` rows that have seen nothing."""
        ...

    def step(self, state: StreamState, y: np.ndarray) -> tuple[np.ndarray, StreamState]:
        """Consume ``y [B, T]`` float64; returns ``([B, T]`` the one-step forecast after each
        value, the new state) (``state`` is not changed)."""
        ...

    def forecast(self, state: StreamState, horizon: int) -> np.ndarray:
        """``[B, horizon]`` from ``state`` (not changed)."""
        ...


class NaiveStream:
    """:class:`SeasonalNaive` as a stream: state ``values [B, m]`` (the last m values,
    oldest first, NaN before any) and ``seen [B]``."""

    def __init__(self, season: int) -> None:
        self.cell = SeasonalNaive(season)
        self.season = season

    def initial_state(self, batch_size: int) -> StreamState:
        values, seen = self.cell.initial_state(batch_size)
        return {"values": values, "seen": seen}

    def step(self, state: StreamState, y: np.ndarray) -> tuple[np.ndarray, StreamState]:
        m, steps = self.season, y.shape[1]
        joined = np.concatenate([state["values"], y], axis=1)  # (B, m + T)
        seen = state["seen"][:, None] + np.arange(1, steps + 1)  # (B, T) after each value
        # after value t the window is joined[:, t + 1 : t + 1 + m]: its oldest is one season
        # back from t + 1; a row with fewer than m values repeats its last one
        seasonal = joined[:, 1 : 1 + steps]
        last = joined[:, m : m + steps]
        predictions = np.where(seen >= m, seasonal, last)
        return predictions, {"values": joined[:, steps:], "seen": state["seen"] + steps}

    def forecast(self, state: StreamState, horizon: int) -> np.ndarray:
        return self.cell.forecast(SeasonalNaiveState(state["values"], state["seen"]), horizon)


class ETSStream:
    """Damped ETS fitted on a stream's whole history as it arrives, exactly as
    :func:`fit_damped_ets` fits a table's: every grid point of :func:`grid` runs side by side
    (:class:`Grid`: state ``level``, ``trend`` ``[B, G]``, ``season [B, G, m]``,
    ``position [B]``, ``squared``, ``counted`` ``[B, G]``) and the answer is the best point's.

    The starting state reads the first two seasons, so while a row has seen at most 2m values
    (``first [B, 2m]`` keeps them, NaN after) each step runs the grid over them from the start
    (:func:`grid_run`: at most 2m steps, once per stream); after that a step is one
    :func:`grid_step` of the whole grid. Every step is written as the fixed-shape torch form
    (:class:`seqstate.recipe.step.baseline_cells.ETSCell`) computes it, which replays
    ``first`` under a mask for every row of a step where any row needs it."""

    def __init__(self, season: int) -> None:
        self.season = max(1, int(season))
        self.points = grid(self.season)
        # each coefficient over the grid [G], contiguous (the grid's columns)
        self.alpha, self.beta, self.phi, self.gamma = (
            np.ascontiguousarray(self.points[:, k]) for k in range(4)
        )

    def initial_state(self, batch_size: int) -> StreamState:
        b, g, m = batch_size, len(self.points), self.season
        return {
            "first": np.full((b, 2 * m), np.nan),
            "seen": np.zeros(b, dtype=np.int64),
            "level": np.zeros((b, g)),
            "trend": np.zeros((b, g)),
            "season": np.zeros((b, g, m)),
            "position": np.zeros(b, dtype=np.int64),
            "squared": np.zeros((b, g)),
            "counted": np.zeros((b, g)),
        }

    def step(self, state: StreamState, y: np.ndarray) -> tuple[np.ndarray, StreamState]:
        m, points = self.season, self.points
        y = np.asarray(y, dtype=np.float64)
        b, steps = y.shape
        seen = state["seen"]
        if b and int(seen.min()) >= 2 * m:  # (no row replays in this call: the usual step)
            return self._settled(state, y)
        first = state["first"].copy()
        grid_state = Grid(
            state["level"],
            state["trend"],
            state["season"].copy(),  # (grid_step writes the season in place)
            state["position"],
            state["squared"],
            state["counted"],
        )
        columns = np.arange(2 * m)
        finite = np.isfinite(y)
        every_finite = bool(finite.all())
        settled = b == 0  # (no row replays in this call)
        predictions = np.empty((b, steps))
        for t in range(steps):
            value = y[:, t]
            seen = seen + 1
            warm = None if settled else seen <= 2 * m
            if warm is None or not warm.all():
                keep = None if every_finite else finite[:, t]
                grid_state = grid_step(points, grid_state, value, keep)
            if warm is not None and warm.any():
                rows = np.flatnonzero(warm)
                first[rows, seen[rows] - 1] = value[rows]
                # (the columns past the longest row's values would be masked no-ops)
                longest = int(seen[rows].max())
                values, real = first[rows, :longest], columns[:longest] < seen[rows, None]
                replayed = grid_run(values, real, m)
                grid_state = _placed(grid_state, rows, replayed)
            predictions[:, t] = _next(points, grid_state)
        new = dict(zip(Grid._fields, grid_state, strict=True))
        return predictions, {"first": first, "seen": seen, **new}

    def _settled(self, state: StreamState, y: np.ndarray) -> tuple[np.ndarray, StreamState]:
        """:meth:`step` of rows that have all seen their first two seasons: :func:`grid_step`
        and :func:`_next` in the same operations, written out for the grid's coefficients
        (``[G]`` each) with nothing rebuilt per value."""
        alpha, beta, phi, gamma = self.alpha, self.beta, self.phi, self.gamma
        b, steps = y.shape
        m = self.season
        level, trend, position = state["level"], state["trend"], state["position"]
        squared, counted = state["squared"], state["counted"]
        season = state["season"].copy()  # (written in place)
        finite = np.isfinite(y)
        every_finite = bool(finite.all())
        rows = np.arange(b)
        one = b == 1  # (one row: basic indexing, views, where more rows gather and scatter)
        predictions = np.empty((b, steps))
        for t in range(steps):
            value = y[:, t]
            # season[rows, :, position]: (B, G)
            at = (
                (slice(None), slice(None), position.item())
                if one
                else (rows, slice(None), position)
            )
            seasonal = season[at]
            base = level + phi * trend
            missed = value[:, None] - (base + seasonal)
            squared, counted = squared + missed**2, counted + 1.0
            if every_finite:
                season[at] = seasonal + gamma * missed
                level, trend = base + alpha * missed, phi * trend + beta * missed
                position = (position + 1) % m
            else:
                keep = finite[:, t]
                kept = keep[:, None]
                error = np.where(kept, missed, 0.0)
                level = np.where(kept, base + alpha * error, level)
                trend = np.where(kept, phi * trend + beta * error, trend)
                season[at] = seasonal + gamma * error
                position = np.where(keep, (position + 1) % m, position)
            # the best point's forecast of the next value (_next); best_points, where every
            # count is at least 1 (just counted): max(counted, 1) is counted
            error = squared / counted
            best = np.where(np.isfinite(error), error, np.inf).argmin(axis=1)
            if one:
                j = best.item()
                predictions[:, t] = (
                    level[:, j] + phi[j] * trend[:, j] + season[:, j, position.item()]
                )
            else:
                predictions[:, t] = (
                    level[rows, best] + phi[best] * trend[rows, best] + season[rows, best, position]
                )
        new = {
            "first": state["first"].copy(), "seen": state["seen"] + steps,
            "level": level, "trend": trend, "season": season, "position": position,
            "squared": squared, "counted": counted,
        }  # fmt: skip
        if steps == 0:  # (copies all the same: the state returned is never the one given)
            new = {name: np.array(value) for name, value in new.items()}
        return predictions, new

    def forecast(self, state: StreamState, horizon: int) -> np.ndarray:
        g = len(self.points)
        run = flat_pass(Grid(*(state[field] for field in Grid._fields)), self.season)
        cell, chosen = _chosen(run, best_points(run.squared, run.counted, g))
        return cell.forecast(chosen, horizon)


def _placed(grid_state: Grid, rows: np.ndarray, replayed: Grid) -> Grid:
    """``grid_state`` with ``rows`` taken from ``replayed`` (new arrays but the season,
    written in place)."""
    fields = []
    for name, whole, part in zip(Grid._fields, grid_state, replayed, strict=True):
        whole = whole if name == "season" else whole.copy()
        whole[rows] = part
        fields.append(whole)
    return Grid(*fields)


def _next(points: np.ndarray, grid_state: Grid) -> np.ndarray:
    """``[B]`` the best point's forecast of the next value: ``DampedETS.forecast`` at
    horizon 1, in the same operations, without building the chosen cell."""
    level, trend, season, position, squared, counted = grid_state
    best = best_points(squared.reshape(-1), counted.reshape(-1), len(points))
    rows = np.arange(len(best))
    phi = points[best, 2]
    return level[rows, best] + phi * trend[rows, best] + season[rows, best, position]


class ThetaStream:
    """The Theta method (Assimakopoulos & Nikolopoulos, the M3 winner) as a stream: simple
    exponential smoothing (SES) of the seasonally adjusted series plus a drift of half its
    linear trend's slope (Hyndman & Billah's form), the season added back::

        a_t = y_t - s[t mod m]          s: additive seasonal indices (classical decomposition)
        level_t = alpha * a_t + (1 - alpha) * level_{t-1};   level_0 = a_0
        b = least-squares slope of a_t on t over the n values seen
        forecast(h) = level_n + b/2 * ((h - 1) + 1/alpha - (1 - alpha)^n / alpha)
                      + s[(n - 1 + h) mod m]

    Everything is read from the whole history seen so far, exactly and step by step: the
    indices are the per-slot means of ``y - (centred moving average)`` (sums ``dsum``,
    counts ``dcount`` ``[B, m]``, from the last ``m + 1`` values ``recent``), normalised to
    mean 0; as the indices move, the level follows without a replay because it is linear in
    them: ``level = ses - sum_k s[k] * weight[k]`` where ``ses [B, G]`` smooths the raw values
    and ``weight [B, G, m]`` the slot indicators, one column per alpha of
    :data:`THETA_ALPHAS`; the slope's sums (``sum_y``, ``sum_ty`` ``[B]``, ``slot_count``,
    ``slot_time`` ``[B, m]``) are linear in them too. Alpha is each row's grid point with the
    lowest mean squared one-step SES error (``squared``, ``counted`` ``[B, G]``, each error
    with the indices known at its time, from step m on). O(G m) per step; the answer after
    value t is ``forecast(state after 0..t, 1)``.
    """

    def __init__(self, season: int) -> None:
        self.season = max(1, int(season))
        self.alphas = np.asarray(THETA_ALPHAS)
        self.keep = 1.0 - self.alphas[None, :]  # (1, G) each SES's weight of its past
        # the centred moving average: its weights over the last values, its span and centre
        m = self.season
        if m % 2 == 0:
            self.average_weights = np.full(m + 1, 1.0 / m)
            self.average_weights[[0, -1]] = 0.5 / m
            self.span, centre = m + 1, m // 2
        else:
            self.average_weights = np.r_[0.0, np.full(m, 1.0 / m)]
            self.span, centre = m, (m - 1) // 2
        self.centre = centre
        self.at = m + 1 - self.span + centre  # the centre's column in recent
        # the sums' rows padded with -0.0 to a power of two (> m): no odd level
        self.width = 1 << m.bit_length()

    def initial_state(self, batch_size: int) -> StreamState:
        b, g, m = batch_size, len(self.alphas), self.season
        return {
            "seen": np.zeros(b, dtype=np.int64),
            "recent": np.full((b, m + 1), np.nan),
            "dsum": np.zeros((b, m)),
            "dcount": np.zeros((b, m)),
            "sum_y": np.zeros(b),
            "sum_ty": np.zeros(b),
            "slot_count": np.zeros((b, m)),
            "slot_time": np.zeros((b, m)),
            "ses": np.zeros((b, g)),
            "weight": np.zeros((b, g, m)),
            "squared": np.zeros((b, g)),
            "counted": np.zeros((b, g)),
        }

    def indices(self, state: StreamState) -> np.ndarray:
        """``[B, m]`` the seasonal indices: each slot's mean detrended value, less their mean
        over the slots seen (0 for a slot not seen yet, and without a season)."""
        return self._indices(state["dsum"], state["dcount"])

    def _indices(self, dsum: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """:meth:`indices` of the slots' sums and counts ``[B, m]``."""
        seen = counts > 0
        if seen.all():  # (every slot seen, the usual case: the masks change nothing)
            padded = np.full((len(dsum), self.width), -0.0)
            raw = np.divide(dsum, counts, out=padded[:, : self.season])
            return raw - (pairwise_sum(padded) / self.season)[:, None]
        raw = np.where(seen, dsum / np.maximum(counts, 1), 0.0)
        centre = pairwise_sum(raw) / np.maximum(seen.sum(axis=1), 1)
        return np.where(seen, raw - centre[:, None], 0.0)

    def step(self, state: StreamState, y: np.ndarray) -> tuple[np.ndarray, StreamState]:
        # The same operations as the plain loop (:mod:`tests.test_baseline_steps` keeps it),
        # in fewer NumPy calls: where every row is past a threshold (known from the fewest
        # values any row has seen, one reduction per call) the masks that hold rows before
        # it are left out (``x + where(True, v, 0.0)`` is ``x + v``), and sums over the last
        # axis that are ready together run as one :func:`pairwise_sum` (rows padded with
        # -0.0, which adds exactly: the same bits).
        m, g, alphas, keep = self.season, len(self.alphas), self.alphas, self.keep
        y = np.asarray(y, dtype=np.float64)
        b, steps = y.shape
        seen, recent = state["seen"], state["recent"]
        sum_y, sum_ty, ses, weight = state["sum_y"], state["sum_ty"], state["ses"], state["weight"]
        squared, counted = state["squared"], state["counted"]
        # (written in place below: copies, so the given state is not changed)
        dsum, dcount = state["dsum"].copy(), state["dcount"].copy()
        slot_count, slot_time = state["slot_count"].copy(), state["slot_time"].copy()
        fewest = int(seen.min()) if b else 0
        rows = np.arange(b)
        one = b == 1  # (one row: basic indexing, views, where more rows gather and scatter)
        predictions = np.empty((b, steps))
        indices = self._indices(dsum, dcount)  # (the indices before each value)
        level = None  # (each grid point's level before the value, once known)
        for t in range(steps):
            value = y[:, t]
            index = seen  # (B,) this value's position in its series
            slot = index % m
            # [rows, slot] of a [B, m] field, [rows, :, slot] of weight [B, G, m]
            at = (slice(None), (fewest + t) % m) if one else (rows, slot)
            at_weight = (at[0], slice(None), at[1])
            # the centred moving average of the last m + 1 (even m) or m (odd m) values
            recent = np.concatenate([recent[:, 1:], value[:, None]], axis=1)
            seen = index + 1
            # (None: every row has seen a whole window)
            ready = None if fewest + t + 1 >= self.span else seen >= self.span
            window: np.ndarray | None = None  # (the rows' windows, where any row has one)
            average: np.ndarray | None = None
            if m > 1 and (ready is None or bool(ready.any())):
                finite = np.isfinite(recent)
                window = np.where(finite if ready is None else ready[:, None] & finite, recent, 0.0)
            # one-step SES error on the adjusted value, with the indices known before it
            if level is None and window is not None:  # (both sums in one: [B, G + 1, m + 1])
                terms = np.full((b, g + 1, self.width), -0.0)
                np.multiply(weight, indices[:, None, :], out=terms[:, :g, :m])
                np.multiply(window, self.average_weights, out=terms[:, g, : m + 1])
                sums = pairwise_sum(terms)
                level, average = ses - sums[:, :g], sums[:, g]
            else:
                if level is None:
                    level = ses - pairwise_sum(weight * indices[:, None, :])
                if window is not None:
                    average = pairwise_sum(window * self.average_weights)
            error = (value - indices[at])[:, None] - level
            if fewest + t >= m:  # (every row scored)
                squared = squared + error**2
                counted = counted + 1.0
            else:
                scored = (index >= m)[:, None]
                squared = squared + np.where(scored, error**2, 0.0)
                counted = counted + scored
            # SES of the raw values and of the slot indicators (level_0 = a_0)
            if fewest + t > 0:  # (no row's first value)
                ses = keep * ses + alphas * value[:, None]
                weight = weight * keep[:, :, None]
                weight[at_weight] += alphas[None, :]
            else:
                first = (index == 0)[:, None]
                ses = np.where(first, value[:, None], keep * ses + alphas * value[:, None])
                weight = weight * np.where(first, 0.0, keep)[:, :, None]
                weight[at_weight] += np.where(first, 1.0, alphas[None, :])
            # the slope's sums
            sum_y = sum_y + value
            sum_ty = sum_ty + index * value
            slot_count[at] += 1.0
            slot_time[at] += index
            if window is not None and average is not None:
                # the value at the centre of the newest whole window, less the window's
                # centred mean, to its slot's sums
                # (the centre's slot)
                if one:
                    middle: Any = (slice(None), (fewest + t + 1 - self.span + self.centre) % m)
                else:
                    middle = (rows, (seen - self.span + self.centre) % m)
                if ready is None:
                    dsum[middle] += window[:, self.at] - average
                    dcount[middle] += 1.0
                else:
                    dsum[middle] += np.where(ready, window[:, self.at] - average, 0.0)
                    dcount[middle] += ready
            indices = self._indices(dsum, dcount)
            # the forecast of the next value (forecast at horizon 1)
            best = best_points(squared, counted, g)
            chosen = (slice(None), best.item()) if one else (rows, best)  # ([rows, best])
            if t + 1 < steps:  # (the next value's levels, and the slope's sums, in one)
                terms = np.full((b, g + 2, self.width), -0.0)
                np.multiply(weight, indices[:, None, :], out=terms[:, :g, :m])
                np.multiply(slot_count, indices, out=terms[:, g, :m])
                np.multiply(slot_time, indices, out=terms[:, g + 1, :m])
                sums = pairwise_sum(terms)
                level = ses - sums[:, :g]
                weighted, counts, times = sums[chosen], sums[:, g], sums[:, g + 1]
            else:
                terms = np.full((3, b, self.width), -0.0)
                np.multiply(weight[chosen], indices, out=terms[0, :, :m])
                np.multiply(slot_count, indices, out=terms[1, :, :m])
                np.multiply(slot_time, indices, out=terms[2, :, :m])
                weighted, counts, times = pairwise_sum(terms)
            predictions[:, t] = _theta_next(
                ses[chosen] - weighted, sum_y - counts, sum_ty - times, seen, alphas[best],
                indices[(slice(None), (fewest + t + 1) % m) if one else (rows, seen % m)],
            )  # fmt: skip
        new = {
            "seen": seen, "recent": recent, "dsum": dsum, "dcount": dcount,
            "sum_y": sum_y, "sum_ty": sum_ty, "slot_count": slot_count, "slot_time": slot_time,
            "ses": ses, "weight": weight, "squared": squared, "counted": counted,
        }  # fmt: skip
        if steps == 0:  # (copies all the same: the state returned is never the one given)
            new = {name: np.array(value) for name, value in new.items()}
        return predictions, new

    def forecast(self, state: StreamState, horizon: int) -> np.ndarray:
        m, g = self.season, len(self.alphas)
        rows = np.arange(len(state["seen"]))
        best = best_points(state["squared"].reshape(-1), state["counted"].reshape(-1), g)
        alpha = self.alphas[best]
        indices = self.indices(state)
        level = state["ses"][rows, best] - pairwise_sum(state["weight"][rows, best] * indices)
        n = state["seen"].astype(np.float64)
        adjusted = state["sum_y"] - pairwise_sum(state["slot_count"] * indices)
        timed = state["sum_ty"] - pairwise_sum(state["slot_time"] * indices)
        slope = _theta_slope(n, adjusted, timed)
        steps = np.arange(1, horizon + 1)
        drift = (steps[None, :] - 1) + (1.0 - (1.0 - alpha[:, None]) ** n[:, None]) / alpha[:, None]
        slots = (state["seen"][:, None] - 1 + steps[None, :]) % m
        seasonal = np.take_along_axis(indices, slots, axis=1)
        path = level[:, None] + slope[:, None] / 2 * drift + seasonal
        return np.where((state["seen"] > 0)[:, None], path, np.nan)


def _theta_slope(n: np.ndarray, adjusted: np.ndarray, timed: np.ndarray) -> np.ndarray:
    """``[B]`` the least-squares slope of the adjusted values on time from their sums
    ``adjusted`` and ``timed`` over the ``n`` values seen (0 below two values)."""
    sum_t = n * (n - 1) / 2
    sum_tt = (n - 1) * n * (2 * n - 1) / 6
    spread = n * sum_tt - sum_t**2
    return np.where(
        spread > 0, (n * timed - sum_t * adjusted) / np.where(spread > 0, spread, 1), 0.0
    )


def _theta_next(
    level: np.ndarray,
    adjusted: np.ndarray,
    timed: np.ndarray,
    seen: np.ndarray,
    alpha: np.ndarray,
    seasonal: np.ndarray,
) -> np.ndarray:
    """``[B]`` :meth:`ThetaStream.forecast` at horizon 1 (every row has seen a value) from
    the chosen level, the slope's sums, the values seen, the chosen alpha and the next
    slot's index, in the same operations."""
    n = seen.astype(np.float64)
    powered = (1.0 - alpha) ** n  # (NumPy's power in both forms)
    if len(n) == 1:
        # One stream: the same operations on Python floats (IEEE doubles, as float64; the
        # square as a product, as NumPy squares), without a dozen one-element array calls.
        count, last, total, timing = n.item(), level.item(), adjusted.item(), timed.item()
        sum_t = count * (count - 1) / 2
        sum_tt = (count - 1) * count * (2 * count - 1) / 6
        spread = count * sum_tt - sum_t * sum_t
        slope = (count * timing - sum_t * total) / spread if spread > 0 else 0.0
        drift = 0.0 + (1.0 - powered.item()) / alpha.item()
        return np.array([last + slope / 2 * drift + seasonal.item()])
    slope = _theta_slope(n, adjusted, timed)
    # ((h - 1) + ...: the integer 0 as a float, as the path of any horizon adds it)
    drift = 0.0 + (1.0 - powered) / alpha
    return level + slope / 2 * drift + seasonal


#: baseline kind -> its stream given the season; a new kind registers here and every run
#: (predict, forecast, streams, the server) carries it through :class:`BaselineStream`.
STREAMS: dict[str, Callable[[int], BaselineStream]] = {
    "seasonal_naive": NaiveStream,
    "ets": ETSStream,
    "theta": ThetaStream,
}


def _member(name: str) -> tuple[str, int]:
    """``"seasonal_naive_12"`` -> ("seasonal_naive", 12); ``"ets_4"`` -> ("ets", 4)."""
    kind, _, season = name.rpartition("_")
    if kind not in STREAMS or not season.isdigit() or int(season) < 1:
        expected = " or ".join(f"{k}_M" for k in STREAMS)
        raise ValueError(f"unknown baseline {name!r}; expected {expected} (M >= 1 steps)")
    return kind, int(season)


def baseline_stream(name: str) -> BaselineStream:
    """The :class:`BaselineStream` of baseline ``name`` (``"seasonal_naive_12"``, ...)."""
    kind, season = _member(name)
    return STREAMS[kind](season)


def _stepped(name: str, histories: Sequence[np.ndarray]) -> tuple[np.ndarray, StreamState]:
    """Every history stepped as one batch (``[B, L_max]`` predictions, rows padded after
    their end by repeating their last value), and the state after each one's last value."""
    stream = baseline_stream(name)
    lengths = [len(h) for h in histories]
    longest = max(lengths, default=0)
    values = np.zeros((len(histories), longest))
    for row, history in enumerate(histories):
        h = np.asarray(history, dtype=np.float64)
        if len(h):
            values[row] = np.concatenate([h, np.repeat(h[-1:], longest - len(h))])
    state = stream.initial_state(len(histories))
    finals = stream.initial_state(len(histories))
    predictions = np.full((len(histories), longest), np.nan)
    # chunks end at each history's end, so its state is taken before the padding
    begin = 0
    for end in sorted({*lengths} - {0}):
        predictions[:, begin:end], state = stream.step(state, values[:, begin:end])
        ended = [row for row, length in enumerate(lengths) if length == end]
        for field in finals:
            finals[field][ended] = state[field][ended]
        begin = end
    return predictions, finals


def origin_forecasts(
    name: str,
    histories: Sequence[np.ndarray],
    origins: Sequence[Sequence[int]],
    steps: Sequence[int],
) -> list[list[np.ndarray]]:
    """Baseline ``name``'s forecasts from several origins of each history in one pass of its
    stream (what validation on rolling origins needs; a pass per origin would repeat the
    history each time).

    Args:
        histories: one ``[L_i]`` array of real values per series.
        origins: per series, the origins (``1 <= o <= L_i``: forecast after values 0..o-1).
        steps: per series, the horizon of its forecasts.

    Returns:
        ``out[i][k]``: the ``[steps[i]]`` forecast from ``origins[i][k]``, equal to
        ``baseline_forecasts(name, [histories[i][:origins[i][k]]], steps[i])[0]``.
    """
    stream = baseline_stream(name)
    count = len(histories)
    longest = max((len(h) for h in histories), default=0)
    values = np.zeros((count, longest))
    for row, history in enumerate(histories):
        h = np.asarray(history, dtype=np.float64)
        if len(h):  # (rows are padded after their end; no origin reads the padding)
            values[row] = np.concatenate([h, np.repeat(h[-1:], longest - len(h))])
    out: list[list[np.ndarray]] = [[np.empty(0)] * len(o) for o in origins]
    state = stream.initial_state(count)
    begin = 0
    for stop in sorted({int(o) for row in origins for o in row}):
        if stop > begin:
            _, state = stream.step(state, values[:, begin:stop])
            begin = stop
        rows = [i for i in range(count) if stop in origins[i]]
        paths = stream.forecast(state, max(int(steps[i]) for i in rows))
        for i in rows:
            out[i][list(origins[i]).index(stop)] = paths[i, : int(steps[i])]
    return out


def baseline_forecasts(name: str, histories: Sequence[np.ndarray], horizon: int) -> np.ndarray:
    """``[n, horizon]`` forecasts of baseline ``name`` after each ``[L_i]`` history (the
    forecast of its stream after stepping through the history)."""
    kind, season = _member(name)
    if kind == "ets":  # (the same fit, straight from the histories: no replayed warm-up)
        cell, state = fit_damped_ets(histories, season)
        return cell.forecast(state, horizon)
    if kind == "seasonal_naive":
        naive = SeasonalNaive(season)
        return naive.forecast(naive.state_after(histories), horizon)
    _, finals = _stepped(name, histories)
    return baseline_stream(name).forecast(finals, horizon)


def baseline_predictions(name: str, histories: Sequence[np.ndarray]) -> list[np.ndarray]:
    """One ``[L_i]`` array per series: row t is the baseline's forecast of step t + 1 from the
    values up to t (what ``predict`` answers with shift 1), i.e.
    ``baseline_forecasts(name, [history[: t + 1]], 1)``, as its stream answers it."""
    predictions, _ = _stepped(name, histories)
    return [predictions[row, : len(h)] for row, h in enumerate(histories)]


def describe(name: str) -> str:
    """``"seasonal_naive_12"`` -> ``"seasonal naive (season 12)"``, for summaries."""
    kind, season = _member(name)
    if kind == "ets":
        return "damped ETS" + (f" (season {season})" if season > 1 else "")
    if kind == "theta":
        return "Theta" + (f" (season {season})" if season > 1 else "")
    return "naive (last value)" if season == 1 else f"seasonal naive (season {season})"
