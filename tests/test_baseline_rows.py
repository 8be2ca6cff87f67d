"""The damped ETS stream (every grid point stepped side by side on the whole grid) equals the
table fit of each history cut, bit for bit: its state after values 0..t is
:func:`grid_run` over them and its answer the chosen point's one-step forecast, in any
chunking, with rows in different phases of their warm-up and NaN values among them."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from seqstate.recipe.baselines import (
    ETSStream,
    Grid,
    fit_damped_ets,
    grid_run,
    pairwise_sum,
)


def assert_grid_equal(state: dict, reference, row: int) -> None:
    for name, value in zip(type(reference)._fields, reference, strict=True):
        np.testing.assert_array_equal(state[name][row], value[0], err_msg=name)


@settings(max_examples=25, deadline=None)
@given(
    season=st.sampled_from([1, 3, 4]),
    starts=st.lists(st.integers(0, 12), min_size=1, max_size=3),
    chunks=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    gaps=st.lists(st.integers(0, 29), max_size=2),
    seed=st.integers(0, 2**16),
)
def test_the_stream_equals_the_table_fit_of_every_cut_bit_for_bit(
    season, starts, chunks, gaps, seed
):
    rng = np.random.default_rng(seed)
    rows = len(starts)
    values = 5 + np.cumsum(rng.standard_normal((rows, 30)), axis=1)
    values[0, gaps] = np.nan  # (a missing value steps nothing and poisons its scores)
    stream = ETSStream(season)
    # rows warmed up by different amounts first, so later steps mix phases and pass them
    state = stream.initial_state(rows)
    for row, start in enumerate(starts):
        if start:
            _, alone = stream.step(stream.initial_state(1), values[row : row + 1, :start])
            for name in state:
                state[name][row] = alone[name][0]
    begin = list(starts)
    turn = 0
    while min(begin) < values.shape[1]:
        size = chunks[turn % len(chunks)]
        # every row takes the next `size` of its own values (rows are at different places)
        end = [min(b + size, values.shape[1]) for b in begin]
        width = min(e - b for b, e in zip(begin, end, strict=True))
        if width == 0:
            break
        chunk = np.stack([values[r, begin[r] : begin[r] + width] for r in range(rows)])
        answers, state = stream.step(state, chunk)
        for r in range(rows):
            cut = values[r : r + 1, : begin[r] + width]
            reference = grid_run(cut, np.ones_like(cut, dtype=bool), season)
            assert_grid_equal(state, reference, r)
            fields = {name: value for name, value in zip(Grid._fields, reference, strict=True)}
            expected = stream.forecast(fields, 1)[0, 0]  # (DampedETS.forecast of the best)
            np.testing.assert_array_equal(answers[r, -1], expected)
            if np.isfinite(cut).all():  # (a table fit reads NaN as the end of its series)
                cell, fitted = fit_damped_ets([cut[0]], season)
                np.testing.assert_array_equal(answers[r, -1], cell.forecast(fitted, 1)[0, 0])
        begin = [b + width for b in begin]
        turn += 1


def test_a_step_leaves_the_given_state_unchanged():
    stream = ETSStream(4)
    values = np.linspace(1.0, 3.0, 30)[None]
    _, state = stream.step(stream.initial_state(1), values[:, :5])
    for cut in (5, 20):
        _, state = stream.step(state, values[:, cut - 5 if cut == 5 else 5 : cut])
        kept = {k: v.copy() for k, v in state.items()}
        stream.step(state, values[:, cut:])
        for name, value in kept.items():
            np.testing.assert_array_equal(state[name], value, err_msg=name)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), max_size=40), st.integers(0, 9))
def test_a_zero_padded_row_sums_to_the_bits_of_its_values(values, padding):
    row = np.asarray(values, dtype=np.float64)
    padded = np.concatenate([row, np.zeros(padding)])
    assert pairwise_sum(padded[None])[0] == pairwise_sum(row[None])[0]
    np.testing.assert_allclose(pairwise_sum(row[None])[0], row.sum(), rtol=1e-9, atol=1e-3)
