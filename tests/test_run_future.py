"""A run's forecast reads the future by series id, column name and time, never by position;
covariates and step times that cannot be right are refused, and nothing changes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from seqstate.recipe.run_forecaster import RunForecaster, RunMember
from seqstate.recipe.sources import read_table
from seqstate.recipe.step import tables as step_tables
from test_run_step import build, future_of, hourly_frame, hourly_table

HORIZON = 6


def _forecaster_and_data():
    """A run over load with the covariate temp and a calendar; the history (80 hours a
    series) and the frame of the next hours."""
    _, members, _ = build("hourly calendar covariate")
    whole = hourly_frame(hours=80 + HORIZON)
    hour = whole.groupby("id").cumcount()
    history, future = whole[hour < 80], whole[hour >= 80]
    forecaster = RunForecaster([RunMember(m.model, m.scaling, m.calendar) for m in members])
    return forecaster, hourly_table(history), future


def _future_table(frame: pd.DataFrame, features=("load", "temp")):
    return read_table(
        frame,
        features=list(features),
        targets=[],
        id_column="id",
        time_column="time",
        require_targets=False,
    )


def test_future_rows_are_matched_by_id_column_and_time_not_by_position():
    forecaster, history, future = _forecaster_and_data()
    expected = forecaster.forecast(history, HORIZON, _future_table(future))
    assert np.isfinite(expected).all()
    # the same rows: series in another order, columns swapped, a DataFrame, history rows too
    shuffled = future.sort_values(["id", "time"], ascending=[False, True])
    whole = pd.concat([hourly_frame(hours=80 + HORIZON)]).sample(frac=1.0, random_state=0)
    for given in (
        _future_table(shuffled),
        _future_table(future, ("temp", "load")),
        _future_table(future[["id", "time", "temp"]], ("temp",)),
        future,
        whole,  # rows at or before each series' last time are not the future
    ):
        np.testing.assert_array_equal(forecaster.forecast(history, HORIZON, given), expected)


def test_a_calendar_run_without_covariates_forecasts_on_each_series_own_calendar():
    table, members, _ = build("monthly defaults")  # month features, no covariates
    forecaster = RunForecaster([RunMember(m.model, m.scaling, m.calendar) for m in members])
    future = pd.concat(
        pd.DataFrame(
            {
                "id": series,
                "month": pd.date_range(times[-1], periods=HORIZON + 1, freq="MS")[1:],
                "value": 0.0,
            }
        )
        for series, times in zip(table.ids, table.times, strict=True)
    )

    def read(frame):
        return read_table(
            frame,
            features=["value"],
            targets=[],
            id_column="id",
            time_column="month",
            require_targets=False,
        )

    expected = forecaster.forecast(table, HORIZON, read(future))
    # without future rows the months follow each series' end, as `seqstate forecast` stamps
    np.testing.assert_array_equal(forecaster.forecast(table, HORIZON), expected)
    # given future rows, their own times are the calendar's: half a year on, other months
    shifted = future.assign(month=future["month"] + pd.DateOffset(months=6))
    later = forecaster.forecast(table, HORIZON, read(shifted))
    assert not np.allclose(later, expected)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f[f["id"] != "h1"], "no rows for series 'h1'"),
        (lambda f: f.groupby("id").head(HORIZON - 2), "has 4 row"),
        (lambda f: f.assign(temp=np.where(f.index == f.index[2], np.nan, f["temp"])), "NaN"),
    ],
)
def test_future_rows_that_cannot_serve_the_forecast_are_refused_by_name(change, message):
    forecaster, history, future = _forecaster_and_data()
    with pytest.raises(ValueError, match=message):
        forecaster.forecast(history, HORIZON, change(future))


def test_a_future_without_the_covariate_column_names_it():
    forecaster, history, future = _forecaster_and_data()
    with pytest.raises(ValueError, match=r"no column\(s\) \['temp'\]"):
        forecaster.forecast(history, HORIZON, _future_table(future, ("load",)))


@pytest.mark.parametrize("horizon", [2.5, "3", True])
def test_a_horizon_that_is_not_an_int_is_a_type_error_naming_it(horizon):
    forecaster, history, future = _forecaster_and_data()
    with pytest.raises(TypeError, match="horizon must be an int"):
        forecaster.forecast(history, horizon, future)


def test_step_forecasts_refuse_nan_covariates_and_keep_the_state():
    table, _, run_step = build("hourly calendar covariate")
    _, state = step_tables.warm_up(run_step, table)
    before = state.to_bytes()
    times = np.stack([step_tables.table_times(run_step, t) for t in future_of(table, 4)[0]])
    covariates = np.full((len(table), 4, 1), 15.0, dtype=np.float32)
    covariates[1, 2, 0] = np.nan
    for call in (
        lambda: run_step.forecast(state, 4, covariates, times=times),
        lambda: run_step.sample_forecast(state, 4, covariates, times=times, samples=2, seed=0),
    ):
        with pytest.raises(ValueError, match=r"covariates hold nan at row 1, forecast step 2"):
            call()
    assert state.to_bytes() == before


def _stepped(name="hourly calendar covariate"):
    table, _, run_step = build(name)
    x = np.stack([step_tables.table_inputs(run_step, table, i)[:40] for i in range(len(table))])
    time = np.stack([step_tables.table_times(run_step, t)[:40] for t in table.times])
    state = run_step.initial_state(list(table.ids), context=table)
    _, state = run_step.step(state, x[:, :35], time[:, :35])  # (past the season's NaN)
    return run_step, state, x, time


def test_step_times_must_increase_within_a_call_and_from_the_last_step():
    run_step, state, x, time = _stepped()
    before = state.to_bytes()
    again = time[:, 34:39]  # starts at the last step's time
    backwards = time[:, 35:40].copy()
    backwards[2, 3] = backwards[2, 1]
    with pytest.raises(ValueError, match=r"time must increase.*row 0 steps at \d+ \(step 0\)"):
        run_step.step(state, x[:, 35:40], again)
    with pytest.raises(ValueError, match=r"row 2 steps at \d+ \(step 3\)"):
        run_step.step(state, x[:, 35:40], backwards)
    one = run_step.initial_state(["h0"])
    _, one = run_step.step(one, x[:1, 0], time[:1, 1])
    with pytest.raises(ValueError, match="time must increase"):
        run_step.step(one, x[:1, 1], time[:1, 0])  # the one-stream fast path
    assert state.to_bytes() == before
    run_step.step(state, x[:, 35:40], time[:, 35:40])  # in order: accepted


def test_step_times_may_be_datetime64_and_text_is_refused_by_name():
    run_step, state, x, time = _stepped()
    seconds, _ = run_step.step(state, x[:, 35:40], time[:, 35:40])
    dates, _ = run_step.step(state, x[:, 35:40], time[:, 35:40].astype("datetime64[s]"))
    assert torch.isfinite(seconds).all() and torch.equal(seconds, dates)
    text = np.datetime_as_string(time[:, 35:40].astype("datetime64[s]"))
    with pytest.raises(TypeError, match="time must be int64 Unix seconds or numpy datetime64"):
        run_step.step(state, x[:, 35:40], text)


@pytest.mark.parametrize("path", [None, 5])
def test_loading_a_run_from_something_that_is_not_a_path_names_the_argument(path):
    from seqstate.recipe.run import Run

    with pytest.raises(TypeError, match="path must be a run directory"):
        Run.load(path)


def test_step_times_a_calendar_cannot_stamp_are_refused():
    # A calendar run stamps dates as datetime64[ns] (1677-09-21 .. 2262-04-11): times in
    # milliseconds, or past that range, would wrap to other dates silently.
    run_step, state, x, time = _stepped()
    before = state.to_bytes()
    between = "between 1677-09-21 and 2262-04-11"
    with pytest.raises(ValueError, match=f"time must be Unix seconds of a date {between}"):
        run_step.step(state, x[:, 35:40], time[:, 35:40] * 1000)
    with pytest.raises(ValueError, match="received 10000000000"):
        run_step.step(state, x[:, 35:36], np.full((len(x), 1), 10**10))  # 2286
    with pytest.raises(ValueError, match=r"marks a stream without a time"):
        run_step.step(state, x[:, 35:36], np.full((len(x), 1), -(2**63)))
    assert state.to_bytes() == before


def test_a_forecast_past_the_last_date_a_calendar_stamps_is_refused():
    from seqstate.recipe.calendar import Frequency

    monthly = Frequency.from_dict("MS")
    last = np.datetime64("2262-01-01T00:00:00")
    assert str(monthly.future(last, 3)[-1]) == "2262-04-01T00:00:00.000000000"
    with pytest.raises(ValueError, match="a forecast's time must be Unix seconds of a date"):
        monthly.future(last, 4)  # 2262-05 would wrap to 1677
    hourly_slots = Frequency("h", "hourly", slots=(0, 3600), cycle=7200)
    with pytest.raises(ValueError, match="a forecast's time must be Unix seconds of a date"):
        hourly_slots.future(np.datetime64("2262-04-11T23:00:00"), 2)


def test_one_step_scores_of_an_unseen_series_read_no_row_after_the_cut():
    # A series the run never saw is scaled by its own rows: evaluate gives the warm-up rows
    # only, so changing rows after the cut changes no prediction before them.
    from seqstate.recipe.evaluation import evaluate_forecaster

    table, members, _ = build("monthly defaults")
    forecaster = RunForecaster([RunMember(m.model, m.scaling, m.calendar) for m in members])
    frame = pd.DataFrame(
        {"id": "new", "month": table.times[0], "value": table.targets[0][:, 0] * 3.0}
    )
    changed = frame.assign(
        value=np.where(frame.index >= 38, frame["value"] + 500.0, frame["value"])
    )
    read = [
        read_table(f, features=["value"], targets=["value"], id_column="id", time_column="month")
        for f in (frame, changed)
    ]
    cut = 32
    with_context = [
        forecaster.predict(t, context=t.slice_steps(0, [cut]))[0][cut - 1 : 37] for t in read
    ]
    np.testing.assert_array_equal(with_context[0], with_context[1])
    whole = [forecaster.predict(t)[0][cut - 1 : 37] for t in read]
    assert not np.allclose(whole[0], whole[1])  # (what a whole-table context read)

    seen = []

    class Spy:
        def predict(self, table, context=None):
            seen.append(None if context is None else [len(f) for f in context.features])
            return forecaster.predict(table, context=context)

        def forecast(self, table, horizon, future):
            return forecaster.forecast(table, horizon, future)

    evaluate_forecaster(Spy(), read[1], tail=len(frame) - cut)
    assert seen == [[cut]]


@pytest.mark.parametrize("given", ["data.csv", pd.DataFrame({"value": [1.0, 2.0]})])
def test_a_run_forecaster_names_the_table_it_needs(given):
    # a path or a DataFrame raised AttributeError ('str' object has no attribute 'columns')
    _, members, _ = build("monthly defaults")
    forecaster = RunForecaster([RunMember(m.model, m.scaling, m.calendar) for m in members])
    for call in (
        lambda: forecaster.forecast_outputs(given, 3),
        lambda: forecaster.predict_outputs(given),
        lambda: forecaster.sample_paths(given, 3, samples=2),
    ):
        with pytest.raises(TypeError, match=r"table must be a SequenceTable .* received"):
            call()
