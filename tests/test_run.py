"""#18 end to end: runs written by ``seqstate train``, read by :class:`Run`, streamed step by
step (:class:`RunStreams`) and stepped as tables, against ``seqstate predict`` / ``forecast``
and against the table-level reference (run_forecaster's predict_table / forecast_table)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from seqstate.cli.dispatch import main
from seqstate.recipe.run import Run
from seqstate.recipe.run_forecaster import forecast_table, predict_table
from seqstate.recipe.run_streams import RunStreams
from seqstate.recipe.sources import read_table
from seqstate.recipe.step import tables as step_tables

RTOL = 1e-5


def write_monthly(path, n=3, months=40):
    rng = np.random.default_rng(3)
    times = pd.date_range("2001-01-01", periods=months, freq="MS")
    parts = []
    for i in range(n):
        season = np.sin(2 * np.pi * np.arange(months) / 12 + i)
        value = (5.0**i) * (8 + 3 * season + 0.2 * rng.random(months))
        parts.append(pd.DataFrame({"id": f"s{i}", "month": times, "value": value}))
    pd.concat(parts, ignore_index=True).to_csv(path, index=False)
    return path


def write_hourly(path, n=2, hours=24 * 5, start="2024-03-01 00:00"):
    rng = np.random.default_rng(4)
    times = pd.date_range(start, periods=hours, freq="h")
    parts = []
    for i in range(n):
        day = np.sin(2 * np.pi * np.arange(hours) / 24)
        temp = 12 + 6 * day + rng.standard_normal(hours)
        load = (i + 2) * 20 + 8 * day + 0.4 * temp + rng.random(hours)
        parts.append(pd.DataFrame({"id": f"h{i}", "time": times, "load": load, "temp": temp}))
    pd.concat(parts, ignore_index=True).to_csv(path, index=False)
    return path


def train(data, out, *flags):
    args = ["train", str(data), "--out", str(out), "--epochs", "1", "--hidden-size", "8"]
    args += ["--select", "network"]  # the step function equals the network's answers
    assert main([*args, "--no-progress", "--quiet", *flags]) == 0


@pytest.fixture(scope="module")
def monthly(tmp_path_factory):
    root = tmp_path_factory.mktemp("monthly")
    data = write_monthly(root / "panel.csv")
    run = root / "run"
    train(data, run, "-f", "value", "--id", "id", "--time", "month", "--seeds", "2")
    return root, data, run


@pytest.fixture(scope="module")
def hourly(tmp_path_factory):
    root = tmp_path_factory.mktemp("hourly")
    data = write_hourly(root / "sensors.csv")
    run = root / "run"
    flags = ["-f", "load,temp", "-t", "load", "--id", "id", "--time", "time"]
    train(data, run, *flags, "--calendar", "weekday,hour", "--seasonal-difference", "24")
    return root, data, run


def read(data, run):
    columns = Run.load(run).columns
    return read_table(
        data,
        features=columns.features,
        targets=columns.targets,
        id_column=columns.id,
        time_column=columns.time,
    )


def cli_predict(run, data, out):
    assert main(["predict", str(run), str(data), "--out", str(out), "--no-progress"]) == 0
    return pd.read_csv(out)


def test_run_load_describes_what_a_step_carries(monthly, hourly):
    described = Run.load(monthly[2]).describe()
    assert described["inputs"] == ["value"] and described["targets"] == ["value"]
    assert described["members"] == 2 and described["needs_series"] is True
    assert described["frequency"] == "MS"
    assert described["needs_time"] == bool(described["calendar"])
    described = Run.load(hourly[2]).describe()
    assert described["inputs"] == ["load", "temp"] and described["covariates"] == ["temp"]
    assert described["needs_time"] is True and described["calendar"] == ["weekday", "hour"]
    assert described["warmup_steps"] == 24 and described["frequency"] == "h"


@pytest.mark.parametrize("kind", ["monthly", "hourly"])
def test_streaming_every_row_equals_predict(kind, monthly, hourly, tmp_path):
    _, data, run = monthly if kind == "monthly" else hourly
    written = cli_predict(run, data, tmp_path / "p.csv")
    table = read(data, run)
    loaded = Run.load(run)
    # the command equals the table-level reference, member by member
    reference = [
        predict_table([m.model], table, scaling=m.scaling, calendar=m.calendar).mean
        for m in loaded.members
    ]
    expected = np.concatenate(
        [np.mean([r[i] for r in reference], axis=0) for i in range(len(table))]
    )
    np.testing.assert_allclose(
        written["predicted_" + table.columns.targets[0]], expected[:, 0], rtol=RTOL
    )
    # and streams, one step at a time, equal the command
    streams = RunStreams.from_run(run)
    function = loaded.step_function()
    for i, series in enumerate(table.ids):
        x = step_tables.table_inputs(function, table, i)
        time = step_tables.table_times(function, table.times[i])
        answers = [
            streams.step([series], x[None, t], time=time[None, t], series=[series])[0]
            for t in range(len(x))
        ]
        rows = written[written["id"] == series]["predicted_" + table.columns.targets[0]]
        np.testing.assert_allclose(np.concatenate(answers), rows.to_numpy(), rtol=RTOL)


def test_a_stream_forecast_equals_seqstate_forecast(monthly, tmp_path):
    _, data, run = monthly
    frame = pd.read_csv(data)
    cut = frame.groupby("id").head(31)  # the history: the first 31 rows of each series
    history = tmp_path / "history.csv"
    cut.to_csv(history, index=False)
    out = tmp_path / "f.csv"
    assert main(["forecast", str(run), str(history), "--horizon", "4", "--out", str(out)]) == 0
    written = pd.read_csv(out)
    table = read(history, run)
    streams = RunStreams.from_run(run)
    function = streams.function
    for i, series in enumerate(table.ids):
        x = step_tables.table_inputs(function, table, i)
        time = step_tables.table_times(function, table.times[i])
        streams.step([series], x[None], time=time[None], series=[series])
        before = streams.state(series).to_bytes()
        stamps, path = streams.forecast([series], 4)  # times from the run's frequency
        assert streams.state(series).to_bytes() == before
        rows = written[written["id"] == series]
        np.testing.assert_allclose(path[0, :, 0], rows["predicted_value"], rtol=RTOL)
        expected = pd.to_datetime(rows["month"]).to_numpy().astype("datetime64[s]").astype(int)
        np.testing.assert_array_equal(stamps[0], expected)


def test_a_forecast_with_covariates_equals_the_reference(hourly, tmp_path):
    _, data, run = hourly
    frame = pd.read_csv(data)
    history, future = frame.groupby("id").head(100), frame.groupby("id").tail(20)
    (tmp_path / "h.csv").write_text(history.to_csv(index=False))
    (tmp_path / "c.csv").write_text(future.drop(columns=["load"]).to_csv(index=False))
    out = tmp_path / "f.csv"
    args = ["forecast", str(run), str(tmp_path / "h.csv"), "--horizon", "6", "--out", str(out)]
    assert main([*args, "--covariates", str(tmp_path / "c.csv")]) == 0
    written = pd.read_csv(out)
    table = read(tmp_path / "h.csv", run)
    member = Run.load(run).members[0]
    times = [pd.to_datetime(written.loc[written["id"] == s, "time"]).to_numpy() for s in table.ids]
    covariates = [future[future["id"] == s][["temp"]].to_numpy(np.float32)[:6] for s in table.ids]
    expected = forecast_table(
        [member.model],
        table,
        6,
        scaling=member.scaling,
        calendar=member.calendar,
        future_times=times,
        covariates=covariates,
        covariate_names=["temp"],
    ).mean
    np.testing.assert_allclose(written["predicted_load"], np.concatenate(expected)[:, 0], rtol=RTOL)


def test_a_saved_run_loads_back_the_same(monthly, tmp_path):
    _, data, run = monthly
    loaded = Run.load(run)
    copy = Run.load(loaded.save(tmp_path / "copy"))
    assert copy.describe() | {"path": None} == loaded.describe() | {"path": None}
    table = read(data, run)
    first = step_tables.predict_table(loaded.step_function(), table)
    again = step_tables.predict_table(copy.step_function(), table)
    for a, b in zip(first.answers + first.members, again.answers + again.members, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_stream_keeps_its_series(monthly):
    _, data, run = monthly
    streams = RunStreams.from_run(run)
    table = read(data, run)
    function = streams.function
    x = step_tables.table_inputs(function, table, 0)[:2]
    time = step_tables.table_times(function, table.times[0])[:2]
    with pytest.raises(ValueError, match="must name their series"):
        streams.step(["a"], x[None, 0], time=time[None, 0])
    streams.step(["a"], x[None, 0], time=time[None, 0], series=["s0"])
    streams.step(["a"], x[None, 1], time=time[None, 1])  # remembered
    with pytest.raises(ValueError, match="is a stream of series 's0'"):
        streams.step(["a"], x[None, 1], time=time[None, 1], series=["s1"])
    exported = streams.export_states()
    other = RunStreams.from_run(run)
    other.import_states(exported, {"a": "s0"})
    assert other.state("a").equal(streams.state("a"))


def test_business_hours_forecast_steps_through_the_opening_hours(tmp_path):
    """Data kept to 09:00-16:00 on weekdays: the run's calendar holds those hours, so the
    forecast after a Friday's close is stamped from Monday 09:00 (the model's next steps),
    with the calendar features of those hours, by the CLI and by a stream alike."""
    stamps = pd.date_range("2024-03-04", periods=24 * 7 * 6, freq="h")  # from a Monday
    stamps = stamps[(stamps.day_of_week < 5) & (stamps.hour >= 9) & (stamps.hour < 17)]
    stamps = stamps[: len(stamps) - 3]  # ends on a Friday at 13:00
    rng = np.random.default_rng(5)
    value = 50 + 10 * np.sin(2 * np.pi * (stamps.hour - 9) / 8) + rng.random(len(stamps))
    data = tmp_path / "shop.csv"
    pd.DataFrame({"time": stamps, "value": value}).to_csv(data, index=False)
    run = tmp_path / "run"
    train(data, run, "-f", "value", "--time", "time")
    loaded = Run.load(run)
    assert loaded.frequency.cycle == 7 * 86_400 and len(loaded.frequency.slots) == 40
    assert loaded.members[0].calendar == ("hour", "weekday")
    out = tmp_path / "f.csv"
    assert main(["forecast", str(run), str(data), "--horizon", "6", "--out", str(out)]) == 0
    written = pd.read_csv(out)
    expected = ["2024-04-12 14:00:00", "2024-04-12 15:00:00", "2024-04-12 16:00:00"]
    expected += ["2024-04-15 09:00:00", "2024-04-15 10:00:00", "2024-04-15 11:00:00"]
    assert written["time"].tolist() == expected
    streams = RunStreams.from_run(run)
    table = read(data, run)
    x = step_tables.table_inputs(streams.function, table, 0)
    time = step_tables.table_times(streams.function, table.times[0])
    streams.step(["shop"], x[None], time=time[None], series=["shop"])
    times, path = streams.forecast(["shop"], 6)
    expected_s = pd.to_datetime(expected).to_numpy().astype("datetime64[s]").astype(np.int64)
    np.testing.assert_array_equal(times[0], expected_s)
    np.testing.assert_allclose(path[0, :, 0], written["predicted_value"], rtol=RTOL)
