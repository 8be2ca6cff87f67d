"""RunStreams keeps the last step's streams as one batched state: every call answers and
keeps exactly what stepping each stream's own one-row state (the plain reference) does."""

from __future__ import annotations

import numpy as np
import pytest

from seqstate.recipe.intervals import fit_table
from seqstate.recipe.run_streams import RunStreams
from seqstate.recipe.step import RunState, RunStep
from seqstate.recipe.step import tables as step_tables
from test_run_step import build


class _Run:
    """What RunStreams reads of a run: its step function."""

    def __init__(self, function: RunStep) -> None:
        self.function = function

    def step_function(self) -> RunStep:
        return self.function


class Reference:
    """Each stream's own one-row state, joined for a step and split after it."""

    def __init__(self, function: RunStep) -> None:
        self.function = function
        self.states: dict[str, RunState] = {}

    def step(self, ids, x, time, series):
        parts = [
            self.states[key] if key in self.states else self.function.initial_state([s])
            for key, s in zip(ids, series, strict=True)
        ]
        y, state = self.function.step(RunState.cat(parts), x, time)
        for i, key in enumerate(ids):
            self.states[key] = state.select([i])
        return y.numpy()[:, 0]


@pytest.fixture(scope="module")
def setting():
    table, members, _ = build("hourly calendar covariate")
    function = RunStep(
        [(m.model, m.scaling, m.calendar) for m in members],
        table.columns,
        intervals=fit_table(np.random.default_rng(3).normal(size=(6, 4)), season=3),
    )
    x = np.stack([step_tables.table_inputs(function, table, i)[:60] for i in range(3)])
    time = np.stack([step_tables.table_times(function, t)[:60] for t in table.times[:3]])
    return function, table, x, time


def check_same(streams, reference):
    assert set(streams.ids) == set(reference.states)
    for key, state in reference.states.items():
        assert streams.state(key).equal(state), key


def test_streams_in_any_order_and_grouping_equal_each_streams_own_state(setting):
    function, table, x, time = setting
    streams, reference = RunStreams(_Run(function)), Reference(function)
    series = {"a": table.ids[0], "b": table.ids[1], "c": table.ids[2], "d": table.ids[0]}
    row = {"a": 0, "b": 1, "c": 2, "d": 0}
    plan = [["a", "b", "c"]] * 30 + [["b", "a"], ["b", "a"], ["c", "d"], ["a", "b", "c", "d"]]
    plan += [["a", "b", "c", "d"]] * 5 + [["d"], ["d"], ["a", "c"]]
    clock = dict.fromkeys(series, 0)
    for t, ids in enumerate(plan):
        xs = np.stack([x[row[k], clock[k]] for k in ids])
        ts = np.stack([time[row[k], clock[k]] for k in ids])
        names = [series[k] for k in ids]
        got = streams.step(ids, xs, time=ts, series=names)
        expected = reference.step(ids, xs, ts, names)
        np.testing.assert_array_equal(got, expected)
        for k in ids:
            clock[k] += 1
        if t in (5, 31, 38):  # reading states or a forecast in between changes nothing
            check_same(streams, reference)
            before = streams.state(ids[0]).to_bytes()
            future = np.arange(1, 4) * 3600 + 10**9
            _, path = streams.forecast(ids, 3, np.ones((len(ids), 3, 1)), times=[future] * len(ids))
            assert path.shape == (len(ids), 3, 1)
            assert streams.state(ids[0]).to_bytes() == before
    check_same(streams, reference)


def test_a_refused_step_ending_and_importing_streams_of_the_kept_batch(setting):
    function, table, x, time = setting
    streams, reference = RunStreams(_Run(function)), Reference(function)
    ids, names = ["a", "b", "c"], list(table.ids[:3])
    for t in range(30):
        got = streams.step(ids, x[:, t], time=time[:, t], series=names)
        np.testing.assert_array_equal(got, reference.step(ids, x[:, t], time[:, t], names))
    bad = x[:, 30].copy()
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="every raw value must be finite"):
        streams.step(ids, bad, time=time[:, 30])
    check_same(streams, reference)  # nothing changed
    exported = streams.export_states()
    assert set(exported) == set(ids)
    assert RunState.from_bytes(exported["b"]).equal(reference.states["b"])
    streams.end("b")  # a stream of the kept batch
    del reference.states["b"]
    check_same(streams, reference)
    with pytest.raises(KeyError):
        streams.state("b")
    # the batch kept afresh, then one of its streams replaced by an import
    ids = ["a", "c"]
    for t in range(30, 33):
        rows = x[[0, 2], t]
        got = streams.step(ids, rows, time=time[[0, 2], t])
        np.testing.assert_array_equal(got, reference.step(ids, rows, time[[0, 2], t], [None] * 2))
    streams.import_states({"c": exported["c"]}, {"c": table.ids[2]})
    reference.states["c"] = RunState.from_bytes(exported["c"])
    check_same(streams, reference)
    got = streams.step(ids, x[[0, 2], 33], time=time[[0, 2], 33])
    expected = reference.step(ids, x[[0, 2], 33], time[[0, 2], 33], [None] * 2)
    np.testing.assert_array_equal(got, expected)
    check_same(streams, reference)
    future = [np.arange(1, 3) * 3600 + 10**9] * 2
    covariates = np.ones((2, 2, 1))
    got = streams.forecast(["c", "a"], 2, covariates, times=future)[1]
    state = RunState.cat([reference.states["c"], reference.states["a"]])
    expected = function.forecast(state, 2, covariates, times=future)[1].numpy()
    np.testing.assert_array_equal(got, expected)
