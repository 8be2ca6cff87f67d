"""The run as one stateful step function: RunStep over a table equals the table-level
reference (recipe/run_forecaster.py's ``predict_table`` / ``forecast_table``, which decode in
NumPy from whole tables) for every kind of run, in any chunking; RunState rows and bytes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqstate.core.model import SequenceModel
from seqstate.recipe.calendar import Frequency
from seqstate.recipe.covariates import calendar_features, calendar_names
from seqstate.recipe.intervals import fit_table
from seqstate.recipe.run_forecaster import RunMember, forecast_table, predict_table
from seqstate.recipe.scaling import Scaling, ScalingConfig
from seqstate.recipe.sources import read_table
from seqstate.recipe.step import RunState, RunStep
from seqstate.recipe.step import tables as step_tables
from seqstate.recipe.step.cells import Calendar, calendar_columns

RTOL = 1e-5

# --------------------------------------------------------------------------------------------
# Runs of every kind, built in memory (random weights: the transforms are what is tested)
# --------------------------------------------------------------------------------------------


def monthly_frame(n=4, months=44, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    times = pd.date_range("1998-01-01", periods=months, freq="MS")
    parts = []
    for i in range(n):
        length = months - 5 * i  # series of different lengths share batches
        season = np.sin(2 * np.pi * np.arange(length) / 12 + i)
        value = (10.0**i) * (6 + 2 * season + 0.3 * rng.random(length))
        parts.append(pd.DataFrame({"id": f"s{i}", "month": times[:length], "value": value}))
    return pd.concat(parts, ignore_index=True)


def hourly_frame(n=3, hours=80, seed=1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    times = pd.date_range("2024-02-27 05:00", periods=hours, freq="h")
    parts = []
    for i in range(n):
        day = np.sin(2 * np.pi * np.arange(hours) / 24)
        temp = 15 + 5 * day + rng.standard_normal(hours)
        load = (i + 1) * 50 + 10 * day + 0.5 * temp + rng.random(hours)
        parts.append(pd.DataFrame({"id": f"h{i}", "time": times, "load": load, "temp": temp}))
    return pd.concat(parts, ignore_index=True)


def monthly_table(frame=None):
    return read_table(
        monthly_frame() if frame is None else frame,
        features=["value"],
        targets=["value"],
        id_column="id",
        time_column="month",
    )


def hourly_table(frame=None):
    return read_table(
        hourly_frame() if frame is None else frame,
        features=["load", "temp"],
        targets=["load"],
        id_column="id",
        time_column="time",
    )


def members_for(table, config, calendar, seeds=1, fitted_on=None):
    members = []
    inputs = len(table.columns.features) + len(calendar_names(calendar))
    for seed in range(seeds):
        torch.manual_seed(seed)
        model = SequenceModel(input_size=inputs, output_size=1, hidden_size=8)
        scaling = None
        if config is not None:
            part = table if fitted_on is None else table.select(fitted_on[seed])
            scaling = Scaling.fit(part, config)
        members.append(RunMember(model, scaling, tuple(calendar)))
    return members


RUNS = {
    # name: (table builder, scaling config or None, calendar, seeds, fitted_on)
    "monthly defaults": (monthly_table, ScalingConfig(season=12), ("month",), 1, None),
    "hourly calendar covariate": (
        hourly_table,
        ScalingConfig(season=24),
        ("weekday", "hour"),
        1,
        None,
    ),
    "log": (monthly_table, ScalingConfig(transform="log"), (), 1, None),
    "log1p difference": (
        monthly_table,
        ScalingConfig(transform="log1p", difference=1),
        (),
        1,
        None,
    ),
    "difference 1": (monthly_table, ScalingConfig(difference=1), ("month",), 1, None),
    "seasonal and lag difference": (
        monthly_table,
        ScalingConfig(difference=1, season=12),
        ("month",),
        1,
        None,
    ),
    # members fitted on different series: their statistics differ, unseen ones use context
    "seeds 3": (monthly_table, ScalingConfig(season=12), ("month",), 3, [[0, 1], [1, 2, 3], [3]]),
    "global": (monthly_table, ScalingConfig(method="global"), ("month",), 1, None),
    "plain": (monthly_table, None, (), 1, None),
}


def build(name):
    make, config, calendar, seeds, fitted_on = RUNS[name]
    table = make()
    members = members_for(table, config, calendar, seeds, fitted_on)
    run_step = RunStep([(m.model, m.scaling, m.calendar) for m in members], table.columns)
    return table, members, run_step


def reference_predictions(members, table):
    return [
        predict_table([m.model], table, scaling=m.scaling, calendar=m.calendar).mean
        for m in members
    ]


def future_of(table, horizon, frame_maker=None):
    """The next ``horizon`` rows' times (and covariates) of each series."""
    times = []
    for t in table.times:
        step = np.diff(t[-2:])[0]
        if step >= np.timedelta64(28, "D"):
            times.append(pd.date_range(t[-1], periods=horizon + 1, freq="MS")[1:].to_numpy())
        else:
            times.append(t[-1] + step * np.arange(1, horizon + 1))
    names = [n for n in table.columns.features if n not in table.columns.targets]
    rng = np.random.default_rng(7)
    covariates = [
        (15 + rng.standard_normal((horizon, len(names)))).astype(np.float32) for _ in times
    ]
    return times, (covariates if names else None), names


def assert_close(got, expected):
    expected = np.asarray(expected, dtype=np.float64)
    scale = np.nanmax(np.abs(expected)) if np.isfinite(expected).any() else 1.0
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=RTOL * 1e-2 * scale)


# --------------------------------------------------------------------------------------------
# Equality with the table-level reference, every kind of run
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(RUNS))
def test_stepping_a_table_equals_predict_for_every_kind_of_run(name):
    table, members, run_step = build(name)
    expected = reference_predictions(members, table)
    got = step_tables.predict_table(run_step, table, chunk=5, batch_size=3).members
    for i in range(len(table)):
        assert got[i].shape == (len(members), len(table.features[i]), 1)
        for k in range(len(members)):
            assert_close(got[i][k], expected[k][i])
        # NaN exactly where differencing has no past yet
        assert np.array_equal(np.isnan(got[i][0]), np.isnan(expected[0][i]))


@pytest.mark.parametrize("name", list(RUNS))
def test_forecast_from_the_warm_state_equals_forecast_for_every_kind_of_run(name):
    table, members, run_step = build(name)
    horizon = 5
    times, covariates, names = future_of(table, horizon)
    _, got = step_tables.forecast_table(
        run_step, table, horizon, times=times, covariates=covariates
    )
    for k, member in enumerate(members):
        expected = forecast_table(
            [member.model],
            table,
            horizon,
            scaling=member.scaling,
            calendar=member.calendar,
            future_times=times,
            covariates=covariates,
            covariate_names=names,
        ).mean
        for i in range(len(table)):
            assert_close(got[k, i], expected[i])


def test_the_first_forecast_step_is_the_last_step_answer_and_the_state_is_unchanged():
    table, _, run_step = build("hourly calendar covariate")
    outputs, state = step_tables.warm_up(run_step, table)
    before = state.to_bytes()
    times, covariates, _ = future_of(table, 4)
    stamps = np.stack([step_tables.table_times(run_step, t) for t in times])
    _, path = run_step.forecast(state, 4, np.stack(covariates), times=stamps)
    assert state.to_bytes() == before
    last = np.stack([o.mean(axis=0)[-1] for o in outputs.members])
    np.testing.assert_array_equal(path[:, 0].numpy(), last)
    # and again: a forecast changes nothing, so it repeats exactly
    _, again = run_step.forecast(state, 4, np.stack(covariates), times=stamps)
    assert torch.equal(path, again)


def test_forecast_times_follow_the_run_frequency():
    table, members, _ = build("monthly defaults")
    run_step = RunStep(
        [(m.model, m.scaling, m.calendar) for m in members],
        table.columns,
        Frequency("MS", "month starts"),
    )
    times, _, _ = future_of(table, 3)
    _, state = step_tables.warm_up(run_step, table)
    stamps, path = run_step.forecast(state, 3)
    expected = np.stack([t.astype("datetime64[s]").astype(np.int64) for t in times])
    np.testing.assert_array_equal(stamps.numpy(), expected)
    _, given_times = run_step.forecast(state, 3, times=expected)
    assert torch.equal(path, given_times)


# --------------------------------------------------------------------------------------------
# Chunked == whole, reset == separate, exact resume through bytes
# --------------------------------------------------------------------------------------------


@st.composite
def transform_settings(draw):
    transform = draw(st.sampled_from(["none", "log", "log1p"]))
    difference = draw(st.sampled_from([0, 1]))
    season = draw(st.sampled_from([0, 0, 2, 3, 12]))
    method = draw(st.sampled_from(["series", "global", "none"]))
    calendar = draw(st.sampled_from([(), ("month",), ("month", "weekday")]))
    seeds = draw(st.integers(1, 2))
    chunks = draw(st.lists(st.integers(1, 9), min_size=1, max_size=6))
    return ScalingConfig(method, transform, difference, season), calendar, seeds, chunks


@settings(max_examples=25, deadline=None)
@given(transform_settings())
def test_the_step_function_in_random_chunks_equals_predict_on_the_whole_table(drawn):
    config, calendar, seeds, chunks = drawn
    table = monthly_table(monthly_frame(n=2, months=30))
    members = members_for(table, config, calendar, seeds)
    run_step = RunStep([(m.model, m.scaling, m.calendar) for m in members], table.columns)
    expected = reference_predictions(members, table)
    for i in range(len(table)):
        x = step_tables.table_inputs(run_step, table, i)[None]
        time = step_tables.table_times(run_step, table.times[i])[None]
        state = run_step.initial_state([table.ids[i]])
        pieces, begin, turn = [], 0, 0
        while begin < x.shape[1]:
            end = begin + chunks[turn % len(chunks)]
            y, state = run_step.step_members(state, x[:, begin:end], time[:, begin:end])
            pieces.append(y)
            begin, turn = end, turn + 1
        got = torch.cat(pieces, dim=2)[:, 0].numpy()
        for k in range(seeds):
            assert_close(got[k], expected[k][i])


def test_a_restarted_row_equals_a_separate_stream():
    table, _, run_step = build("seasonal and lag difference")
    a = step_tables.table_inputs(run_step, table, 0)
    b = step_tables.table_inputs(run_step, table, 1)
    ta = step_tables.table_times(run_step, table.times[0])
    tb = step_tables.table_times(run_step, table.times[1])
    # row 0 runs series a for 20 steps, then is restarted for series b; row 1 runs b on
    state = run_step.initial_state([table.ids[0], table.ids[1]])
    _, state = run_step.step(state, np.stack([a[:20], b[:20]]), np.stack([ta[:20], tb[:20]]))
    state = state.scatter([0], run_step.initial_state([table.ids[1]]))
    steps = min(25, len(b) - 20)
    restarted, _ = run_step.step(
        state,
        np.stack([b[:steps], b[20 : 20 + steps]]),
        np.stack([tb[:steps], tb[20 : 20 + steps]]),
    )
    alone, _ = run_step.step(
        run_step.initial_state([table.ids[1]]), b[None, :steps], tb[None, :steps]
    )
    np.testing.assert_array_equal(restarted[0].numpy(), alone[0].numpy())


def test_run_state_bytes_round_trip_exactly_and_resume_exactly():
    table, _, run_step = build("seeds 3")
    x = step_tables.table_inputs(run_step, table, 1)[None]
    time = step_tables.table_times(run_step, table.times[1])[None]
    state = run_step.initial_state([table.ids[1]], context=table.select([1]))
    _, state = run_step.step(state, x[:, :17], time[:, :17])
    blob = state.to_bytes()
    restored = RunState.from_bytes(blob)
    assert restored.equal(state) and restored.to_bytes() == blob
    went_on, _ = run_step.step(state, x[:, 17:], time[:, 17:])
    resumed, _ = run_step.step(restored, x[:, 17:], time[:, 17:])
    assert torch.equal(went_on, resumed)


def test_run_state_rows_select_scatter_and_cat():
    table, _, run_step = build("monthly defaults")
    _, state = step_tables.warm_up(run_step, table)
    rows = [state.select([i]) for i in range(state.batch_size)]
    assert RunState.cat(rows).equal(state)
    swapped = state.scatter([0, 1], RunState.cat([rows[1], rows[0]]))
    assert swapped.select([0]).equal(rows[1]) and swapped.select([1]).equal(rows[0])
    with pytest.raises(ValueError, match="one row per selected row"):
        state.scatter([0], state)


def test_bytes_that_are_not_a_run_state_are_refused():
    with pytest.raises(ValueError, match="not a serialised RunState"):
        RunState.from_bytes(b"nonsense")
    _, _, run_step = build("plain")
    model_state = run_step.initial_state([None]).models[0]
    with pytest.raises(ValueError, match=r"expected 'seqstate\.run_state/1'"):
        RunState.from_bytes(model_state.to_bytes())


# --------------------------------------------------------------------------------------------
# Calendar cells equal the table's calendar features
# --------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
# (within datetime64[ns], 1677..2262, where the table code reads times)
@given(st.lists(st.integers(-9_000_000_000, 9_000_000_000), min_size=1, max_size=30))
def test_calendar_cells_equal_the_table_calendar_features(seconds):
    kinds = ("month", "weekday", "hour")
    stamps = np.asarray(seconds, dtype=np.int64)
    expected = calendar_features(stamps.astype("datetime64[s]").astype("datetime64[ns]"), kinds)
    got = calendar_columns(torch.from_numpy(stamps), kinds).to(torch.float32).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Bad input: a clear error, nothing changes
# --------------------------------------------------------------------------------------------


def test_bad_steps_are_refused_with_a_clear_error():
    table, _, run_step = build("hourly calendar covariate")
    state = run_step.initial_state(["h0"])
    before = state.to_bytes()
    x = step_tables.table_inputs(run_step, table, 0)[None, :3]
    time = step_tables.table_times(run_step, table.times[0])[None, :3]
    with pytest.raises(ValueError, match=r"x must have shape \[B, T, F\]=\[1, T>=1, 2\]"):
        run_step.step(state, x[..., :1], time)
    with pytest.raises(ValueError, match="needs its time"):
        run_step.step(state, x)
    bad = x.copy()
    bad[0, 1, 1] = np.nan
    with pytest.raises(ValueError, match="step 1, column 'temp'"):
        run_step.step(state, bad, time)
    with pytest.raises(TypeError, match="int64 Unix seconds"):
        run_step.step(state, x, time.astype(np.float64))
    with pytest.raises(ValueError, match="covariates"):
        run_step.forecast(state, 3, times=np.zeros((1, 3), dtype=np.int64))
    assert state.to_bytes() == before


def test_a_log_run_refuses_values_outside_its_domain():
    table, _, run_step = build("log")
    state = run_step.initial_state([table.ids[0]])
    with pytest.raises(ValueError, match="needs every target value > 0"):
        run_step.step(state, np.array([[[3.0], [0.0]]]))


@pytest.mark.parametrize("streams", [1, 40])  # a few values checked in Python, many in NumPy
@pytest.mark.parametrize("bad", [(1.0, np.nan), (1.0, np.inf), (1.0, -np.inf), (np.inf, -np.inf)])
def test_every_non_finite_value_is_refused_however_many_streams(bad, streams):
    table, _, run_step = build("hourly calendar covariate")
    x = np.ones((streams, 1, 2))
    time = np.zeros((streams, 1), dtype=np.int64)
    state = run_step.initial_state([table.ids[0]] * streams)
    x[-1, 0, :] = 3.0e38  # the largest float32 values are finite, and so is their sum
    assert run_step.step(state, x, time)[0].shape == (streams, 1, 1)
    x[-1, 0, :] = bad
    with pytest.raises(ValueError, match=f"row {streams - 1}, step 0, column"):
        run_step.step(state, x, time)


@pytest.mark.parametrize("streams", [1, 40])
@pytest.mark.parametrize(("name", "bad"), [("log", 0.0), ("log", -1.0), ("log1p difference", -1.0)])
def test_values_outside_the_domain_are_refused_however_many_streams(name, bad, streams):
    table, _, run_step = build(name)
    x = np.full((streams, 2, 1), 3.0)
    x[-1, 1, 0] = bad
    state = run_step.initial_state([table.ids[0]] * streams)
    with pytest.raises(ValueError, match=f"at row {streams - 1}, step 1, target"):
        run_step.step(state, x)
    x[-1, 1, 0] = 0.0 if name != "log" else 1e-30  # the domain's edge is inside it
    assert run_step.step(state, x)[0].shape == (streams, 2, 1)


def test_a_series_the_run_never_saw_needs_its_context():
    table, _, run_step = build("monthly defaults")
    with pytest.raises(ValueError, match="series 'new' was not among the 4 series"):
        run_step.initial_state(["new"])
    renamed = dataclasses.replace(table.select([0]), ids=["new"])
    assert run_step.initial_state(["new"], context=renamed).batch_size == 1


@pytest.mark.parametrize("shift", [2, 3])
@pytest.mark.parametrize(
    "config", [ScalingConfig(difference=1), ScalingConfig(difference=1, season=3, transform="log")]
)
def test_differencing_with_a_shift_past_one_step_equals_the_table_path(shift, config):
    frame = monthly_frame(n=3, months=30)
    table = read_table(
        frame,
        features=["value"],
        targets=["value"],
        id_column="id",
        time_column="month",
        shift=shift,
    )
    members = members_for(table, config, ())
    run_step = RunStep([(m.model, m.scaling, m.calendar) for m in members], table.columns)
    assert run_step.delay == shift - 1
    expected = reference_predictions(members, table)[0]
    # the table through the step function (in chunks of 4: pending differences carried)
    got = step_tables.predict_table(run_step, table, chunk=4, batch_size=2)
    for i in range(len(table)):
        assert_close(got.answers[i], expected[i])
        assert np.array_equal(np.isnan(got.answers[i]), np.isnan(expected[i]))
    # a stream answers row t at step t + delay, one step at a time as in any chunking
    x = step_tables.table_inputs(run_step, table, 1)[None]
    state = run_step.initial_state([table.ids[1]])
    answers = []
    for t in range(x.shape[1]):
        y, state = run_step.step(state, x[:, t])
        answers.append(y[0, 0].numpy())
    streamed = np.stack(answers)[shift - 1 :]
    assert_close(streamed, expected[1][: len(streamed)])
    # and the run through RunForecaster (predict) answers the same
    from seqstate.recipe.run_forecaster import RunForecaster

    for a, b in zip(RunForecaster(members).predict_outputs(table).mean, expected, strict=True):
        assert_close(a, b)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.integers(-9_000_000_000, 9_000_000_000), min_size=1, max_size=20),
    st.sampled_from([("weekday",), ("hour",), ("weekday", "hour"), ("hour", "month")]),
)
def test_the_calendar_cell_equals_the_table_calendar_features(seconds, kinds):
    stamps = np.asarray(seconds, dtype=np.int64)
    expected = calendar_features(stamps.astype("datetime64[s]").astype("datetime64[ns]"), kinds)
    got = Calendar(kinds)(torch.from_numpy(stamps)[None])[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------
# The one-step NumPy path (a served or streamed step) equals the torch step
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("intervals", [False, True])
@pytest.mark.parametrize("streams", ["all", "one"])
@pytest.mark.parametrize("name", sorted(RUNS))
def test_the_one_step_numpy_path_equals_the_torch_step_for_every_kind_of_run(
    name, streams, intervals
):
    # several streams: NumPy rows (forward_row); one: Python floats (forward_single); with
    # intervals the state also keeps each stream's MASE scale (HistoryScale)
    table, members, run_step = build(name)
    if intervals:
        errors = np.random.default_rng(3).normal(size=(6, 4))
        run_step = RunStep(
            [(m.model, m.scaling, m.calendar) for m in members],
            table.columns,
            intervals=fit_table(errors, season=3),
        )
        assert run_step.history_scale is not None
    if streams == "one":
        table = table.select([1])
    length = min(len(t) for t in table.times)
    x = np.stack([step_tables.table_inputs(run_step, table, i)[:length] for i in range(len(table))])
    time = np.stack([step_tables.table_times(run_step, t)[:length] for t in table.times])
    x_t, time_t = torch.from_numpy(x), torch.from_numpy(time)
    state = run_step.initial_state(list(table.ids), context=table)
    if not run_step.steps_rows:  # nothing to prepare: the torch step does it with less
        assert run_step.forward_rows(state, x_t[:, :1], time_t[:, :1]) is None
        return
    taken = 0
    with torch.no_grad():
        for j in range(length):
            step_x, step_time = x_t[:, j : j + 1], time_t[:, j : j + 1]
            rows = run_step.forward_rows(state, step_x, step_time)
            members, expected_state = run_step.forward(state, step_x, step_time)
            if j < run_step.order:  # a row in its warm-up: the torch step's masks
                assert rows is None
            else:
                (network, got_members), got_state = rows
                taken += 1
                np.testing.assert_allclose(got_members.numpy(), members.numpy(), rtol=1e-12)
                np.testing.assert_allclose(network.numpy(), members.mean(0).numpy(), rtol=1e-12)
                assert set(got_state.transforms) == set(expected_state.transforms)
                for key, value in expected_state.transforms.items():
                    got = got_state.transforms[key]
                    assert got.dtype == value.dtype and got.shape == value.shape, key
                    np.testing.assert_allclose(got.numpy(), value.numpy(), rtol=1e-12)
                for a, b in zip(got_state.models, expected_state.models, strict=True):
                    assert a.equal(b)
            state = expected_state
    assert taken == length - run_step.order > 0


@pytest.mark.parametrize("streams", ["all", "one"])
@pytest.mark.parametrize("name", sorted(RUNS))
def test_a_chain_of_fast_steps_equals_the_torch_step_chained(name, streams):
    # Each fast step hands the next one its fields as arrays or floats (StepTransforms): a
    # caller's loop of one-step calls, read back, equals the torch step stepped alike, and
    # so does a state whose fields were read as tensors half way (then the tensors lead).
    table, members, run_step = build(name)
    errors = np.random.default_rng(3).normal(size=(6, 4))
    run_step = RunStep(
        [(m.model, m.scaling, m.calendar) for m in members],
        table.columns,
        intervals=fit_table(errors, season=3),
    )
    if streams == "one":
        table = table.select([2])
    length = min(len(t) for t in table.times)
    x = np.stack([step_tables.table_inputs(run_step, table, i)[:length] for i in range(len(table))])
    time = np.stack([step_tables.table_times(run_step, t)[:length] for t in table.times])
    x_t, time_t = torch.from_numpy(x), torch.from_numpy(time)
    fast = run_step.initial_state(list(table.ids), context=table)
    looked = reference = fast
    with torch.no_grad():
        for j in range(length):
            step_x, step_time = x_t[:, j], time_t[:, j]
            y_fast, fast = run_step.step(fast, step_x, step_time)
            y_looked, looked = run_step.step(looked, step_x, step_time)
            members_y, reference = run_step.forward(reference, step_x[:, None], step_time[:, None])
            expected = members_y.mean(0)
            np.testing.assert_allclose(y_fast.numpy(), expected.numpy(), rtol=1e-12)
            np.testing.assert_allclose(y_looked.numpy(), expected.numpy(), rtol=1e-12)
            if j % 3 == 1:  # read every field as a tensor (a codec, an export would)
                assert set(looked.transforms) == set(reference.transforms)
                for key, value in reference.transforms.items():
                    got = looked.transforms[key]
                    assert isinstance(got, torch.Tensor), key
                    assert got.dtype == value.dtype and got.shape == value.shape, key
                    np.testing.assert_allclose(got.numpy(), value.numpy(), rtol=1e-12)
                    assert looked.transforms[key] is got  # made once
    assert fast.transforms.keys() == reference.transforms.keys()
    for key, value in reference.transforms.items():
        got = fast.transforms[key]
        assert got.dtype == value.dtype and got.shape == value.shape, key
        np.testing.assert_allclose(got.numpy(), value.numpy(), rtol=1e-12)
    for a, b in zip(fast.models, reference.models, strict=True):
        assert a.equal(b)
    assert RunState.from_bytes(fast.to_bytes()).equal(fast)


@pytest.mark.parametrize("field", ["m0.history", "steps"])
@pytest.mark.parametrize("streams", [1, 3])
def test_a_fast_step_state_changed_in_place_is_what_the_next_step_reads(streams, field):
    # Once read as tensors, a StepTransforms' fields are those tensors: a change made to one
    # in place (as to any state tensor) is what the next step reads, as in a dict of tensors.
    table, _, run_step = build("difference 1")
    table = table.select(list(range(streams)))
    length = min(len(t) for t in table.times)
    x = np.stack([step_tables.table_inputs(run_step, table, i)[:length] for i in range(streams)])
    time = np.stack([step_tables.table_times(run_step, t)[:length] for t in table.times])
    state = run_step.initial_state(list(table.ids), context=table)
    for j in range(length - 1):
        _, state = run_step.step(state, x[:, j], time[:, j])
    plain = RunState({k: v.clone() for k, v in state.transforms.items()}, state.models)
    assert plain.equal(state)
    for s in (state, plain):
        if field == "steps":  # the first row back in its warm-up: the next step masks it
            s.transforms["steps"][0] = 0
        else:
            s.transforms[field].add_(0.5)
    y, _ = run_step.step(state, x[:, -1], time[:, -1])
    expected, _ = run_step.step(plain, x[:, -1], time[:, -1])
    np.testing.assert_array_equal(y.numpy(), expected.numpy())
    if field == "steps":
        assert np.isnan(y.numpy()[0]).all() and not np.isnan(y.numpy()[1:]).any()


@pytest.mark.parametrize("streams", [1, 3])
@pytest.mark.parametrize("name", sorted(RUNS))
def test_a_state_holds_nothing_of_the_callers_arrays(name, streams):
    # A caller reuses its input buffers: the state a step returned must not change when the
    # caller writes the next step's values into the arrays it passed (x and time), on the
    # torch path (two steps at once) and the one-step fast paths alike.
    table, _, run_step = build(name)
    table = table.select(list(range(streams)))
    length = min(len(t) for t in table.times)
    x = np.stack([step_tables.table_inputs(run_step, table, i)[:length] for i in range(streams)])
    time = np.stack([step_tables.table_times(run_step, t)[:length] for t in table.times])
    state = run_step.initial_state(list(table.ids), context=table)
    j = 0
    while j < length - 2:  # (steps in time order: a chunk of 2 moves on by 2)
        chunk = 2 if j % 5 == 0 else 1
        step_x = x[:, j : j + chunk].copy() if chunk == 2 else x[:, j].copy()
        step_time = time[:, j : j + chunk].copy() if chunk == 2 else time[:, j].copy()
        for as_tensor in (True, False):
            given_x = torch.from_numpy(step_x.copy()) if as_tensor else step_x.copy()
            given_time = torch.from_numpy(step_time.copy()) if as_tensor else step_time.copy()
            _, after = run_step.step(state, given_x, given_time)
            kept = after.to_bytes()
            if isinstance(given_x, torch.Tensor):
                given_x.add_(1000.0)
                given_time.add_(3600)
            else:
                given_x += 1000.0
                given_time += 3600
            assert after.to_bytes() == kept, (j, as_tensor)
        state = after
        j += chunk
