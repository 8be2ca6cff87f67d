"""The damped ETS stream's whole-grid steps (recipe/step/baseline_rows.py) equal the general
stream's bit for bit: predictions and every state field, in any chunking, with rows in
different phases of their warm-up, and a run answers with them where it blends ETS."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqstate.recipe.baselines import ETSStream, NaiveStream
from seqstate.recipe.selection import Selection
from seqstate.recipe.step import RunStep
from seqstate.recipe.step.baseline_rows import ETSRows, lean_stream


def assert_same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@settings(max_examples=20, deadline=None)
@given(
    season=st.sampled_from([1, 3, 4]),
    starts=st.lists(st.integers(0, 12), min_size=1, max_size=3),
    chunks=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_whole_grid_steps_equal_the_general_stream_bit_for_bit(season, starts, chunks, seed):
    rng = np.random.default_rng(seed)
    rows = len(starts)
    values = 5 + np.cumsum(rng.standard_normal((rows, 40)), axis=1)
    general, lean = ETSStream(season), ETSRows(season)
    # rows warmed up by different amounts first, so later steps mix phases and pass them
    state = general.initial_state(rows)
    for row, start in enumerate(starts):
        if start:
            _, alone = general.step(general.initial_state(1), values[row : row + 1, :start])
            for name in state:
                state[name][row] = alone[name][0]
    expected_state, lean_state = state, {k: v.copy() for k, v in state.items()}
    begin, turn, whole_grid = 12, 0, 0
    while begin < values.shape[1]:
        end = min(begin + chunks[turn % len(chunks)], values.shape[1])
        chunk = values[:, begin:end]
        whole_grid += int(lean_state["seen"].min()) >= 2 * season
        expected, expected_state = general.step(expected_state, chunk)
        got, lean_state = lean.step(lean_state, chunk)
        np.testing.assert_array_equal(got, expected)
        assert_same(lean_state, expected_state)
        begin, turn = end, turn + 1
    assert whole_grid > 0  # the whole-grid path was taken
    np.testing.assert_array_equal(lean.forecast(lean_state, 5), general.forecast(expected_state, 5))


def test_a_whole_grid_step_leaves_the_given_state_unchanged():
    lean = ETSRows(4)
    values = np.linspace(1.0, 3.0, 30)[None]
    _, state = lean.step(lean.initial_state(1), values[:, :20])
    kept = {k: v.copy() for k, v in state.items()}
    lean.step(state, values[:, 20:])
    assert_same(state, kept)


def test_a_non_finite_value_takes_the_general_step():
    general, lean = ETSStream(2), ETSRows(2)
    values = np.arange(1.0, 11.0)[None]
    _, state = general.step(general.initial_state(1), values)
    odd = np.array([[np.nan, 4.0]])
    expected, expected_state = general.step(state, odd)
    got, got_state = lean.step(state, odd)
    np.testing.assert_array_equal(got, expected)
    assert_same(got_state, expected_state)


def test_only_exact_ets_streams_are_replaced():
    assert type(lean_stream(ETSStream(12))) is ETSRows
    naive = NaiveStream(12)
    assert lean_stream(naive) is naive


@pytest.mark.parametrize("weights", [{"network": 0.5, "ets_4": 0.5}])
def test_a_blended_run_steps_ets_on_the_whole_grid(weights):
    from test_run_step import RUNS, members_for

    make, config, calendar, _, _ = RUNS["monthly defaults"]
    table = make()
    members = members_for(table, config, calendar)
    selection = Selection(weights, "network+ets_4", {}, 4, 8, 1, 1)
    run = RunStep(
        [(m.model, m.scaling, m.calendar) for m in members], table.columns, selection=selection
    )
    assert isinstance(run.blend.streams["ets_4"], ETSRows)
