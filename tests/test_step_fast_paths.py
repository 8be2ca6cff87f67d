"""The run step's one-step fast paths against plain references: HistoryScale's NumPy and
float steps equal its plain sums bit for bit; the statistics a step function keeps between
calls (bound at each stream's start) are the right streams' whatever order states are
stepped in; and RunStreams stepping its kept batch answers as each stream's own state."""

from __future__ import annotations

import copy
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqstate.recipe.step import tables as step_tables
from seqstate.recipe.step.history_scale import HistoryScale
from seqstate.recipe.step.state import Floats
from test_run_step import RUNS, build

FINITE = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


def bits(values) -> bytes:
    """The exact bits of floats (so -0.0 differs from 0.0)."""
    flat = np.asarray(values, dtype=np.float64).ravel().tolist()
    return struct.pack(f"{len(flat)}d", *flat)


# --- HistoryScale ---------------------------------------------------------------------------


def plain_history_rows(cell, transforms, rows, before):
    m = cell.season
    values = rows[:, cell.target_columns].astype(np.float64)
    last = transforms["interval.last"]
    seasonal = np.where(before[:, None] >= m, np.abs(values - last[:, 0]), 0.0)
    one = np.where(before[:, None] >= 1, np.abs(values - last[:, m - 1]), 0.0)
    kept = np.concatenate([last[:, 1:], values[:, None]], axis=1)
    return kept, transforms["interval.lag_sum"] + seasonal, transforms["interval.one_sum"] + one


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 5),
    st.integers(1, 4),
    st.sampled_from([[0], [1], [0, 1], [2, 0]]),
    st.data(),
)
def test_history_scale_rows_and_floats_equal_the_plain_sums(rows, season, targets, data):
    cell = HistoryScale(season, targets)
    o = len(targets)
    draw = lambda *shape: np.array(  # noqa: E731
        data.draw(st.lists(FINITE, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    ).reshape(shape)
    transforms = {
        "interval.last": draw(rows, season, o),
        "interval.lag_sum": np.abs(draw(rows, o)),
        "interval.one_sum": np.abs(draw(rows, o)),
    }
    before = np.array(data.draw(st.lists(st.integers(0, 2 * season), min_size=rows, max_size=rows)))
    transforms["steps"] = before
    x = draw(rows, 3).astype(np.float32)
    expected = plain_history_rows(cell, transforms, x, before)
    got = cell.advance_rows(transforms, x)
    for value, want in zip(got.values(), expected, strict=True):
        assert bits(value) == bits(want)
    if rows == 1:  # one stream's floats
        floats = {
            key: Floats(value.ravel().tolist(), value.shape, torch.float64)
            for key, value in transforms.items()
            if key != "steps"
        }
        got = cell.advance_single(floats, x[0].tolist(), int(before[0]))
        for value, want in zip(got.values(), expected, strict=True):
            assert bits(value.values) == bits(want)


# --- the bound statistics, kept between steps ------------------------------------------------


@pytest.mark.parametrize("name", sorted(RUNS))
def test_steps_of_other_streams_between_equal_each_stream_stepped_alone(name):
    # The statistics a stream binds at its start are kept by the step function between
    # steps (read once); interleaving the steps of other streams (other statistics) must
    # give each the answers and state it has alone.
    table, _, run_step = build(name)
    if not run_step.steps_rows:
        pytest.skip("no fast path: nothing kept")
    length = min(len(t) for t in table.times)
    x = np.stack([step_tables.table_inputs(run_step, table, i)[:length] for i in range(len(table))])
    time = np.stack([step_tables.table_times(run_step, t)[:length] for t in table.times])
    groups = [[0], [1], [0, 1], [1, 2], [2]] if len(table) > 2 else [[0], [1], [0, 1]]
    alone = {}
    for rows in map(tuple, groups):
        own = copy.deepcopy(run_step)  # (its own kept statistics)
        state = own.initial_state([table.ids[i] for i in rows], context=table.select(list(rows)))
        answers = []
        for j in range(length):
            y, state = own.step(state, x[list(rows), j], time[list(rows), j])
            answers.append(y)
        alone[rows] = (torch.stack(answers), state)
    states = {
        rows: run_step.initial_state([table.ids[i] for i in rows], context=table.select(list(rows)))
        for rows in map(tuple, groups)
    }
    answers = {rows: [] for rows in states}
    for j in range(length):
        for rows in states:  # every group's step j, one after another, the same run step
            y, states[rows] = run_step.step(states[rows], x[list(rows), j], time[list(rows), j])
            answers[rows].append(y)
    for rows, (expected, state) in alone.items():
        assert bits(torch.stack(answers[rows]).numpy()) == bits(expected.numpy())
        assert states[rows].equal(state)


# --- RunStreams: the same streams every call -------------------------------------------------


def test_streams_stepping_the_kept_batch_check_a_series_given_and_answer_as_their_own_states():
    # RunStreams skips its per-id bookkeeping when a call steps the kept batch's streams
    # (a list equal to its ids): a series given is still checked, ids given otherwise (a
    # tuple, an array) take the checked path, and every answer and state is the plain one.
    from test_run_streams import Reference, _Run, check_same, setting

    function, table, x, time = setting.__wrapped__()
    from seqstate.recipe.run_streams import RunStreams

    streams, reference = RunStreams(_Run(function)), Reference(function)
    ids, names = ["a", "b", "c"], list(table.ids[:3])
    for t in range(30):
        given = ids if t % 3 else tuple(ids) if t % 2 else np.array(ids)
        got = streams.step(given, x[:, t], time=time[:, t], series=None if t % 4 == 3 else names)
        np.testing.assert_array_equal(got, reference.step(ids, x[:, t], time[:, t], names))
    wrong = [names[0], names[2], names[2]]
    with pytest.raises(ValueError, match="is a stream of series"):
        streams.step(list(ids), x[:, 30], time=time[:, 30], series=wrong)
    check_same(streams, reference)  # nothing changed
    with pytest.raises(ValueError, match="must not repeat"):
        streams.step(["a", "a", "c"], x[:, 30], time=time[:, 30])
    got = streams.step(list(ids), x[:, 30], time=time[:, 30])
    np.testing.assert_array_equal(got, reference.step(ids, x[:, 30], time[:, 30], names))
    check_same(streams, reference)
