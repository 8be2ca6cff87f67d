"""The baseline streams' steps (:class:`ETSStream`, :class:`ThetaStream`) equal their plain
loops bit for bit: answers and every state field, in any chunking, with rows at different
points of their warm-up, and with missing values. The plain loops below are the streams'
reference forms (one value at a time, every mask applied, every sum on its own); the
streams compute the same operations in fewer NumPy calls."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from seqstate.recipe.baselines import (
    THETA_ALPHAS,
    ETSStream,
    Grid,
    ThetaStream,
    best_points,
    grid,
    grid_run,
    grid_step,
    pairwise_sum,
)

# --- the plain loops --------------------------------------------------------------------------


def plain_ets_step(season: int, state: dict, y: np.ndarray) -> tuple[np.ndarray, dict]:
    m, points = season, grid(season)
    b, steps = y.shape
    first, seen = state["first"].copy(), state["seen"]
    grid_state = Grid(
        state["level"],
        state["trend"],
        state["season"].copy(),
        state["position"],
        state["squared"],
        state["counted"],
    )
    columns = np.arange(2 * m)
    y = np.asarray(y, dtype=np.float64)
    finite = np.isfinite(y)
    every_finite = bool(finite.all())
    settled = b == 0 or int(seen.min()) >= 2 * m
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
            longest = int(seen[rows].max())
            values, real = first[rows, :longest], columns[:longest] < seen[rows, None]
            replayed = grid_run(values, real, m)
            fields = []
            for name, whole, part in zip(Grid._fields, grid_state, replayed, strict=True):
                whole = whole if name == "season" else whole.copy()
                whole[rows] = part
                fields.append(whole)
            grid_state = Grid(*fields)
        level, trend, season_, position, squared, counted = grid_state
        best = best_points(squared.reshape(-1), counted.reshape(-1), len(points))
        every = np.arange(len(best))
        phi = points[best, 2]
        predictions[:, t] = (
            level[every, best] + phi * trend[every, best] + season_[every, best, position]
        )
    new = dict(zip(Grid._fields, grid_state, strict=True))
    return predictions, {"first": first, "seen": seen, **new}


def plain_theta_indices(state: dict) -> np.ndarray:
    counts = state["dcount"]
    seen = counts > 0
    raw = np.where(seen, state["dsum"] / np.maximum(counts, 1), 0.0)
    centre = pairwise_sum(raw) / np.maximum(seen.sum(axis=1), 1)
    return np.where(seen, raw - centre[:, None], 0.0)


def plain_theta_detrend(m: int, state: dict, rows: np.ndarray) -> None:
    recent, seen = state["recent"], state["seen"]
    if m % 2 == 0:
        weights = np.full(m + 1, 1.0 / m)
        weights[[0, -1]] = 0.5 / m
        span, centre = m + 1, m // 2
    else:
        weights = np.r_[0.0, np.full(m, 1.0 / m)]
        span, centre = m, (m - 1) // 2
    ready = seen >= span
    if not ready.any():
        return
    window = np.where(ready[:, None] & np.isfinite(recent), recent, 0.0)
    average = pairwise_sum(window * weights)
    at = recent.shape[1] - span + centre
    slot = (seen - span + centre) % m
    state["dsum"][rows, slot] += np.where(ready, window[:, at] - average, 0.0)
    state["dcount"][rows, slot] += ready


def plain_theta_forecast(m: int, state: dict, horizon: int) -> np.ndarray:
    alphas = np.asarray(THETA_ALPHAS)
    rows = np.arange(len(state["seen"]))
    best = best_points(state["squared"].reshape(-1), state["counted"].reshape(-1), len(alphas))
    alpha = alphas[best]
    indices = plain_theta_indices(state)
    level = state["ses"][rows, best] - pairwise_sum(state["weight"][rows, best] * indices)
    n = state["seen"].astype(np.float64)
    adjusted = state["sum_y"] - pairwise_sum(state["slot_count"] * indices)
    timed = state["sum_ty"] - pairwise_sum(state["slot_time"] * indices)
    sum_t = n * (n - 1) / 2
    sum_tt = (n - 1) * n * (2 * n - 1) / 6
    spread = n * sum_tt - sum_t**2
    slope = np.where(
        spread > 0, (n * timed - sum_t * adjusted) / np.where(spread > 0, spread, 1), 0.0
    )
    steps = np.arange(1, horizon + 1)
    drift = (steps[None, :] - 1) + (1.0 - (1.0 - alpha[:, None]) ** n[:, None]) / alpha[:, None]
    slots = (state["seen"][:, None] - 1 + steps[None, :]) % m
    seasonal = np.take_along_axis(indices, slots, axis=1)
    path = level[:, None] + slope[:, None] / 2 * drift + seasonal
    return np.where((state["seen"] > 0)[:, None], path, np.nan)


def plain_theta_step(season: int, state: dict, y: np.ndarray) -> tuple[np.ndarray, dict]:
    m, alphas = season, np.asarray(THETA_ALPHAS)
    b, steps = y.shape
    new = {name: value.copy() for name, value in state.items()}
    rows = np.arange(b)
    predictions = np.empty((b, steps))
    for t in range(steps):
        value = np.asarray(y[:, t], dtype=np.float64)
        index = new["seen"]
        slot = index % m
        indices = plain_theta_indices(new)
        level = new["ses"] - pairwise_sum(new["weight"] * indices[:, None, :])
        error = (value - indices[rows, slot])[:, None] - level
        scored = (index >= max(m, 1))[:, None]
        new["squared"] += np.where(scored, error**2, 0.0)
        new["counted"] += scored
        first = (index == 0)[:, None]
        keep = 1.0 - alphas[None, :]
        new["ses"] = np.where(first, value[:, None], keep * new["ses"] + alphas * value[:, None])
        new["weight"] *= np.where(first, 0.0, keep)[:, :, None]
        new["weight"][rows, :, slot] += np.where(first, 1.0, alphas[None, :])
        new["sum_y"] += value
        new["sum_ty"] += index * value
        new["slot_count"][rows, slot] += 1.0
        new["slot_time"][rows, slot] += index
        new["recent"] = np.concatenate([new["recent"][:, 1:], value[:, None]], axis=1)
        new["seen"] = index + 1
        if m > 1:
            plain_theta_detrend(m, new, rows)
        predictions[:, t] = plain_theta_forecast(m, new, 1)[:, 0]
    return predictions, new


PLAIN = {ETSStream: plain_ets_step, ThetaStream: plain_theta_step}

# --- checks -----------------------------------------------------------------------------------


def assert_same_bits(got: np.ndarray, expected: np.ndarray, what: str) -> None:
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.dtype == expected.dtype and got.shape == expected.shape, what
    # (bytes, not values: -0.0 and 0.0, or two NaNs, must match too)
    assert got.tobytes() == expected.tobytes(), f"{what}: {got} != {expected}"


def assert_same_state(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for name in expected:
        assert_same_bits(got[name], expected[name], name)


def stepped_alone(stream, plain, season, values, rows, starts):
    """A batch whose row r has stepped through its first ``starts[r]`` values alone, with
    the stream and with the plain loop."""
    fast = stream.initial_state(rows)
    slow = {name: value.copy() for name, value in fast.items()}
    for row, start in enumerate(starts):
        if start:
            _, alone = stream.step(stream.initial_state(1), values[row : row + 1, :start])
            _, plain_alone = plain(season, stream.initial_state(1), values[row : row + 1, :start])
            assert_same_state(alone, plain_alone)
            for name in fast:
                fast[name][row] = alone[name][0]
                slow[name][row] = plain_alone[name][0]
    return fast, slow


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from([ETSStream, ThetaStream]),
    season=st.sampled_from([1, 2, 3, 4, 7]),
    starts=st.lists(st.integers(0, 20), min_size=1, max_size=4),
    chunks=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    gaps=st.lists(st.integers(0, 39), max_size=2),
    seed=st.integers(0, 2**16),
)
def test_a_stream_steps_as_its_plain_loop_bit_for_bit(kind, season, starts, chunks, gaps, seed):
    rng = np.random.default_rng(seed)
    rows = len(starts)
    values = 5 + np.cumsum(rng.standard_normal((rows, 40)), axis=1)
    values[0, gaps] = np.nan  # (a missing value: every mask that holds it must stay)
    values[-1, 3] = 0.0  # (a zero among the values: the signs of zero sums must match)
    stream, plain = kind(season), PLAIN[kind]
    fast, slow = stepped_alone(stream, plain, season, values, rows, starts)
    begin = list(starts)
    turn = 0
    while min(begin) < values.shape[1]:
        width = min(chunks[turn % len(chunks)], values.shape[1] - max(begin))
        if width <= 0:
            break
        chunk = np.stack([values[r, begin[r] : begin[r] + width] for r in range(rows)])
        kept = {name: value.copy() for name, value in fast.items()}
        given_state = fast
        answers, fast = stream.step(fast, chunk)
        expected, slow = plain(season, slow, chunk)
        assert_same_bits(answers, expected, "answers")
        assert_same_state(fast, slow)
        assert_same_state(given_state, kept)  # (the given state is never written)
        begin = [b + width for b in begin]
        turn += 1


@settings(max_examples=30, deadline=None)
@given(
    kind=st.sampled_from([ETSStream, ThetaStream]),
    season=st.sampled_from([1, 2, 4, 5, 24]),
    streams=st.sampled_from([1, 3]),
    seed=st.integers(0, 2**16),
)
def test_a_chain_of_one_value_steps_equals_the_plain_loop_over_the_whole(
    kind, season, streams, seed
):
    """What a served stream runs: one value per call, each from the state the last returned
    (past the warm-up, the settled fast paths), against one plain pass."""
    rng = np.random.default_rng(seed)
    length = 3 * season + 12
    values = 10 + np.cumsum(rng.standard_normal((streams, length)), axis=1)
    stream, plain = kind(season), PLAIN[kind]
    state = stream.initial_state(streams)
    answers = []
    for t in range(length):
        given = {name: value.copy() for name, value in state.items()}
        predicted, new = stream.step(state, values[:, t : t + 1])
        assert_same_state(state, given)  # (the given state is never written)
        answers.append(predicted)
        state = new
    expected, whole = plain(season, stream.initial_state(streams), values)
    assert_same_bits(np.concatenate(answers, axis=1), expected, "answers")
    assert_same_state(state, whole)


def test_no_values_leave_a_state_equal_but_not_shared():
    for kind in (ETSStream, ThetaStream):
        stream = kind(4)
        _, state = stream.step(stream.initial_state(2), np.ones((2, 12)))
        answers, new = stream.step(state, np.empty((2, 0)))
        assert answers.shape == (2, 0)
        assert_same_state(new, state)
        assert all(not np.shares_memory(new[k], state[k]) for k in state)


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(1, 40),
    padding=st.integers(0, 9),
    seed=st.integers(0, 2**16),
)
def test_a_row_padded_with_negative_zeros_sums_to_the_bits_of_its_values(k, padding, seed):
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(3, k)) * rng.choice([1e-300, 1.0, 1e16, 1e300], size=(3, k))
    values[rng.random((3, k)) < 0.2] = -0.0
    padded = np.concatenate([values, np.full((3, padding), -0.0)], axis=1)
    assert_same_bits(pairwise_sum(padded), pairwise_sum(values), "sums")
