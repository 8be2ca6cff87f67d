"""Seasons from the calendar, time formats that round-trip, the statistical baselines as step
cells, and the honest selection a run answers with."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqstate.cli.dispatch import main
from seqstate.core.saved import read_model_json
from seqstate.recipe.baselines import (
    DampedETS,
    SeasonalNaive,
    baseline_forecasts,
    baseline_predictions,
    fit_damped_ets,
)
from seqstate.recipe.calendar import (
    covered_seasons,
    format_times,
    future_times,
    infer_frequency,
    parse_times,
    season_lengths,
    written_format,
)
from seqstate.recipe.evaluation import backtest, evaluate_forecaster, infer_season
from seqstate.recipe.evaluation_checks import infer_seasons
from seqstate.recipe.metrics import seasonal_naive, series_metrics
from seqstate.recipe.run_forecaster import load_forecaster
from seqstate.recipe.selection import (
    MARGIN,
    RECENCY,
    STANDARD_ERRORS,
    TOLERANCE,
    Evidence,
    Selection,
    candidate_weights,
    choose,
    hedged,
    merge_selections,
    window_weights,
)
from seqstate.recipe.sources import read_table

# ------------------------------------------------------------------------------------------
# Seasons
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alias", "seasons"),
    [
        ("30min", (48, 336)),
        ("h", (24, 168)),
        ("15min", (96, 672)),
        ("D", (7,)),
        ("B", (5,)),
        ("W-SUN", (52,)),
        ("MS", (12,)),
        ("QS-JAN", (4,)),
        ("YS-JAN", ()),
        ("7h", ()),  # does not divide a day: no daily season
    ],
)
def test_the_seasons_of_each_frequency(alias, seasons):
    times = pd.date_range("2001-01-01", periods=40, freq=alias).to_numpy()
    frequency = infer_frequency(times)
    assert frequency is not None
    assert season_lengths(frequency) == seasons
    assert frequency.season() == (seasons[0] if seasons else 1)


def half_hourly(days=12, seed=0) -> pd.DataFrame:
    """One half-hourly series with a strong daily shape: the last value is a poor forecast."""
    rng = np.random.default_rng(seed)
    times = pd.date_range("2020-01-06", periods=48 * days, freq="30min")
    daily = np.sin(2 * np.pi * np.arange(len(times)) / 48)
    value = 100 + 20 * daily + rng.normal(scale=1.0, size=len(times))
    return pd.DataFrame({"time": times.strftime("%Y-%m-%d %H:%M:%S"), "value": value})


class LastValue:
    """A forecaster that repeats the last value (the naive forecast with season 1)."""

    def predict(self, table):
        return [t.astype(np.float64) for t in table.targets]

    def forecast(self, table, horizon, future):
        return np.stack([np.repeat(t[-1:], horizon, axis=0) for t in table.targets])


def test_evaluate_and_backtest_compare_with_the_daily_seasonal_naive_on_half_hours():
    table = read_table(half_hourly(), features=["value"], targets=["value"], time_column="time")
    assert infer_season(table) == 48
    result = evaluate_forecaster(LastValue(), table, tail=96, horizon=96)
    assert result.season == 48 and result.summary["season"] == 48
    history, actual = table.targets[0][:-96, 0], table.targets[0][-96:, 0]
    naive = series_metrics(actual, seasonal_naive(history, 96, 48), history, 48)
    assert result.rows[0]["naive_mase"] == pytest.approx(naive["mase"])
    # Against the daily season the last value loses clearly (it would "win" against itself).
    assert result.summary["horizon_mase"] > 3 * result.summary["naive_mase"]
    folds = backtest(table, LastValue(), folds=2, horizon=48)
    assert folds.season == 48
    _, stored_naive = folds.forecasts[(0, 0)]
    origin = folds.origins[0][0]
    expected = seasonal_naive(table.targets[0][:origin, 0], 48, 48)
    np.testing.assert_allclose(stored_naive[:, 0], expected)  # what backtest.png draws


def test_business_hours_are_evaluated_against_the_same_hour_of_the_last_open_day():
    """07:00-21:00 on weekdays every 5 minutes: a day is 169 steps, so evaluate's and the
    backtest's seasonal naive (and the MASE scale) look 169 steps back, not 288."""
    stamps = pd.date_range("2021-03-01", periods=288 * 42, freq="5min")
    clock = stamps.hour * 60 + stamps.minute
    stamps = stamps[(stamps.day_of_week < 5) & (clock >= 7 * 60) & (clock <= 21 * 60)]
    rng = np.random.default_rng(1)
    profile = 50 + 30 * np.sin(np.pi * (stamps.hour.to_numpy() - 7) / 14)
    frame = pd.DataFrame({"time": stamps, "calls": rng.poisson(profile).astype(float)})
    table = read_table(frame, features=["calls"], targets=["calls"], time_column="time")
    assert infer_season(table) == 169
    result = evaluate_forecaster(LastValue(), table, tail=169, horizon=169)
    assert result.season == 169
    history, actual = table.targets[0][:-169, 0], table.targets[0][-169:, 0]
    naive = series_metrics(actual, seasonal_naive(history, 169, 169), history, 169)
    assert result.rows[0]["naive_mase"] == pytest.approx(naive["mase"])
    assert backtest(table, LastValue(), folds=1, horizon=169).season == 169


# ------------------------------------------------------------------------------------------
# Time formats
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "written",
    [
        ["1998Q1", "1998Q2", "1998Q3"],
        ["1998 Q4", "1999 Q1"],
        ["1939 Jan", "1939 Feb"],
        ["2024-01", "2024-02"],
        ["2024-01-31", "2024-02-29"],
        ["2024-01-31 12:30:00", "2024-01-31 13:00:00"],
        ["1939M01", "1939M02"],
        ["Jan-1939", "Feb-1939"],  # (a year after a dash, not a UTC offset)
    ],
)
def test_written_formats_round_trip(written):
    times = parse_times(written)
    form = written_format(written, times)
    assert form is not None
    assert list(format_times(times, form)) == written


@pytest.mark.parametrize(
    "written",
    [
        ["2021-03-31T16:00:00+02:00", "2021-03-31T17:00:00+02:00"],
        ["2021-03-31T16:00:00Z", "2021-03-31T17:00:00Z"],
        ["2021-03-31 16:30-05:30", "2021-03-31 17:30-05:30"],
    ],
)
def test_times_with_one_utc_offset_are_written_back_with_it(written):
    times = parse_times(written)  # UTC wall time inside
    form = written_format(written, times)
    assert form is not None
    assert list(format_times(times, form)) == written


def test_times_whose_offset_changes_are_written_in_utc_as_the_same_instants():
    """Daylight saving (Berlin, 28 March 2021): the text does not tell the zone's future
    offsets, so times go out in UTC, stated, never as local times an hour off."""
    local = pd.date_range("2021-03-27 22:00", periods=6, freq="h", tz="Europe/Berlin")
    written = [t.isoformat() for t in local]
    assert {w[-6:] for w in written} == {"+01:00", "+02:00"}
    times = parse_times(written)
    form = written_format(written, times)
    assert form is not None and form.endswith("|+00:00")
    out = format_times(times, form)
    assert list(pd.to_datetime(out, utc=True)) == list(local.tz_convert("UTC"))


def test_forecast_times_continue_in_the_inputs_offset(tmp_path):
    local = pd.date_range("2021-03-01", periods=24 * 21, freq="h", tz="Asia/Kolkata")
    value = 10 + np.sin(2 * np.pi * np.arange(len(local)) / 24)
    data = tmp_path / "h.csv"
    pd.DataFrame({"t": [t.isoformat() for t in local], "y": value}).to_csv(data, index=False)
    run = tmp_path / "run"
    train = ["train", str(data), "-f", "y", "--time", "t", "--epochs", "1", "--hidden-size", "4"]
    assert main([*train, "--no-progress", "--quiet", "--out", str(run)]) == 0
    out = tmp_path / "f.csv"
    assert main(["forecast", str(run), str(data), "--horizon", "2", "--out", str(out)]) == 0
    assert list(pd.read_csv(out)["t"]) == ["2021-03-22T00:00:00+05:30", "2021-03-22T01:00:00+05:30"]


def test_a_form_no_pattern_writes_back_gives_none():
    written = ["2024-1-5", "2024-1-6"]  # ISO-ish without zero padding
    assert written_format(written, parse_times(written)) is None


def quarterly_csv(path, quarters=40, series=3, seed=0):
    rng = np.random.default_rng(seed)
    periods = pd.period_range("1998Q1", periods=quarters, freq="Q")
    parts = []
    for k in range(series):
        value = 50 + 10 * np.sin(np.arange(quarters) * np.pi / 2 + k) + rng.normal(size=quarters)
        parts.append(
            pd.DataFrame({"id": f"r{k}", "quarter": [str(p) for p in periods], "value": value})
        )
    pd.concat(parts).to_csv(path, index=False)
    return path


def test_forecast_output_keeps_the_quarter_format(tmp_path):
    data = quarterly_csv(tmp_path / "q.csv")
    run = tmp_path / "run"
    common = ["--id", "id", "--time", "quarter", "--no-progress", "--quiet"]
    train = ["train", str(data), "-f", "value", "--epochs", "1", "--hidden-size", "4"]
    assert main([*train, *common, "--out", str(run)]) == 0
    out = tmp_path / "f.csv"
    assert main(["forecast", str(run), str(data), "--horizon", "4", "--out", str(out)]) == 0
    written = pd.read_csv(out)
    assert list(written.loc[written["id"] == "r0", "quarter"]) == [
        "2008Q1",
        "2008Q2",
        "2008Q3",
        "2008Q4",
    ]
    predicted = tmp_path / "p.csv"
    assert main(["predict", str(run), str(data), "--out", str(predicted)]) == 0
    source = pd.read_csv(data)
    assert list(pd.read_csv(predicted)["quarter"]) == list(source["quarter"])
    # evaluate's and backtest's rows name their times as the input does too
    rows = tmp_path / "rows.csv"
    evaluate = ["evaluate", str(run), str(data), "--tail", "4", "--per-series", str(rows)]
    assert main(evaluate) == 0
    scored = pd.read_csv(rows)
    assert set(scored["scored_from"]) == {"2007Q1"} and set(scored["warmup_to"]) == {"2006Q4"}
    folds = tmp_path / "bt"
    backtest = ["backtest", str(data), "-f", "value", "--folds", "2", "--horizon", "4"]
    backtest += ["--epochs", "1", "--hidden-size", "4", *common, "--out", str(folds)]
    assert main(backtest) == 0
    assert set(pd.read_csv(folds / "backtest.csv")["origin"]) == {"2006Q1", "2007Q1"}
    renamed = tmp_path / "renamed.csv"
    pd.read_csv(data).rename(columns={"id": "region"}).to_csv(renamed, index=False)
    rows = tmp_path / "region_rows.csv"
    run_b = tmp_path / "run_b"
    columns = ["--id", "region", "--time", "quarter", "--no-progress", "--quiet"]
    assert main([*train[:1], str(renamed), *train[2:], *columns, "--out", str(run_b)]) == 0
    assert (
        main(["evaluate", str(run_b), str(renamed), "--tail", "4", "--per-series", str(rows)]) == 0
    )
    assert list(pd.read_csv(rows)["region"]) == ["r0", "r1", "r2"]
    assert list(pd.read_csv(folds / "folds.csv")["origin_from"]) == ["2006Q1", "2007Q1"]


# ------------------------------------------------------------------------------------------
# Baselines as step cells
# ------------------------------------------------------------------------------------------


def ets_reference(values, alpha, beta, phi, gamma, season, horizon):
    """The plain recursion, one value at a time (the docstring of recipe/baselines.py)."""
    m = season
    head = values[:m]
    level = float(np.mean(head))
    season_values = [0.0] * m
    if m > 1:
        season_values[: len(head)] = [v - level for v in head]
    trend = 0.0
    if len(values) >= 2 * m and m > 1:
        trend = (float(np.mean(values[m : 2 * m])) - level) / m
    position = 0
    for y in values:
        error = y - (level + phi * trend + season_values[position])
        level = level + phi * trend + alpha * error
        trend = phi * trend + beta * error
        season_values[position] += gamma * error
        position = (position + 1) % m
    path = []
    damping = 0.0
    for h in range(1, horizon + 1):
        damping += phi**h
        path.append(level + damping * trend + season_values[(position + h - 1) % m])
    return np.array(path)


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 40), min_size=1, max_size=4),
    season=st.sampled_from([1, 4, 12]),
    split=st.integers(0, 40),
    seed=st.integers(0, 2**16),
)
def test_ets_cell_equals_the_plain_recursion_chunked_and_masked(lengths, season, split, seed):
    rng = np.random.default_rng(seed)
    series = [rng.normal(size=n).cumsum() + 5 for n in lengths]
    batch = len(series)
    coefficients = [rng.uniform(0.05, 0.9, batch) for _ in range(4)]
    cell = DampedETS(season, *coefficients)
    longest = max(lengths)
    values = np.full((batch, longest), np.nan)
    for row, s in enumerate(series):
        values[row, : len(s)] = s
    state = cell.initial_state(values[:, : 2 * season])
    # Two chunks, padding masked at the end of short rows: the same as one pass per row.
    for t in range(min(split, longest)):
        state = cell.step(state, values[:, t], np.isfinite(values[:, t]))
    for t in range(min(split, longest), longest):
        state = cell.step(state, values[:, t], np.isfinite(values[:, t]))
    paths = cell.forecast(state, 5)
    for row, s in enumerate(series):
        a, b, p, g = (c[row] for c in coefficients)
        np.testing.assert_allclose(paths[row], ets_reference(s, a, b, p, g, season, 5), rtol=1e-9)


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 30), min_size=1, max_size=4),
    season=st.integers(1, 8),
    seed=st.integers(0, 2**16),
)
def test_seasonal_naive_cell_equals_the_metrics_baseline(lengths, season, seed):
    rng = np.random.default_rng(seed)
    series = [rng.normal(size=n) for n in lengths]
    naive = SeasonalNaive(season)
    stepped = naive.initial_state(len(series))
    longest = max(lengths)
    for t in range(longest):
        y = np.array([s[t] if t < len(s) else np.nan for s in series])
        stepped = naive.step(stepped, y, np.array([t < len(s) for s in series]))
    direct = naive.state_after(series)
    np.testing.assert_array_equal(stepped.seen, direct.seen)
    forecasts = naive.forecast(stepped, 7)
    np.testing.assert_allclose(forecasts, naive.forecast(direct, 7))
    for row, s in enumerate(series):
        np.testing.assert_allclose(forecasts[row], seasonal_naive(s, 7, season))
    one_step = baseline_predictions(f"seasonal_naive_{season}", series)
    for row, s in enumerate(series):
        for t in range(len(s)):
            np.testing.assert_allclose(one_step[row][t], seasonal_naive(s[: t + 1], 1, season))


def test_ets_fits_a_seasonal_series_better_than_seasonal_naive():
    rng = np.random.default_rng(1)
    t = np.arange(156)
    y = 20 + 0.1 * t + 4 * np.sin(2 * np.pi * t / 12) + rng.normal(scale=0.3, size=len(t))
    history, actual = y[:132], y[132:]
    ets = baseline_forecasts("ets_12", [history], 24)[0]
    naive = baseline_forecasts("seasonal_naive_12", [history], 24)[0]
    assert np.abs(ets - actual).mean() < 0.7 * np.abs(naive - actual).mean()
    cell, _ = fit_damped_ets([history], 12)
    assert 0 < cell.alpha[0] < 1 and 0 < cell.phi[0] <= 1


def test_unknown_baselines_are_refused():
    with pytest.raises(ValueError, match="seasonal_naive_M or ets_M"):
        baseline_forecasts("arima_12", [np.ones(5)], 3)
    with pytest.raises(ValueError, match="season must be an int >= 1"):
        SeasonalNaive(0)


# ------------------------------------------------------------------------------------------
# Selection
# ------------------------------------------------------------------------------------------


def seasonal_random_walk_csv(path, series=12, years=12, seed=0):
    """y[t] = y[t - 12] + noise: seasonal naive is the best forecast there is."""
    rng = np.random.default_rng(seed)
    months = pd.date_range("2000-01-01", periods=12 * years, freq="MS")
    parts = []
    for k in range(series):
        y = np.empty(len(months))
        y[:12] = rng.normal(scale=5.0, size=12)
        for i in range(12, len(months)):
            y[i] = y[i - 12] + rng.normal()
        parts.append(pd.DataFrame({"id": f"s{k}", "month": months.strftime("%Y-%m"), "value": y}))
    pd.concat(parts).to_csv(path, index=False)
    return path


def test_selection_falls_back_on_a_seasonal_random_walk(tmp_path, capsys):
    data = seasonal_random_walk_csv(tmp_path / "srw.csv")
    run = tmp_path / "run"
    args = ["train", str(data), "-f", "value", "--id", "id", "--time", "month"]
    args += ["--epochs", "3", "--hidden-size", "8", "--no-progress", "--out", str(run)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    chosen = Selection.from_dict(read_model_json(run)["metadata"]["selection"])
    assert not chosen.network_only, chosen
    assert chosen.scores[chosen.chosen] < chosen.scores["network"]
    assert "selected:" in printed and "the network" in printed
    # The server steps the baselines too: its step function answers as predict does.
    from seqstate.recipe.step import tables as step_tables
    from seqstate.serve.rundir import load_run_step

    served = step_tables.predict_table(load_run_step(run), table_of(data))
    for got, want in zip(served.answers, load_forecaster(run).predict(table_of(data)), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    # The run answers with the selection: forecast == its weights over the members.
    out = tmp_path / "f.csv"
    assert main(["forecast", str(run), str(data), "--horizon", "6", "--out", str(out)]) == 0
    table = read_table(
        data, features=["value"], targets=["value"], id_column="id", time_column="month"
    )
    forecaster = load_forecaster(run)
    network_only = load_forecaster(run)
    for member in network_only.members:
        object.__setattr__(member, "selection", None)
    future = dataclasses.replace(
        table,
        features=[np.full((6, 1), np.nan, dtype=np.float32) for _ in table.ids],
        times=[future_times(t, 6) for t in table.times],
    )
    own = network_only.forecast(table, 6, future)
    members = {
        name: [f[:, None] for f in baseline_forecasts(name, [t[:, 0] for t in table.targets], 6)]
        for name in chosen.weights
        if name != "network"
    }
    expected = np.stack(chosen.combine(list(own), members))
    written = pd.read_csv(out)["predicted_value"].to_numpy()
    np.testing.assert_allclose(written, expected[:, :, 0].reshape(-1), rtol=1e-5)
    np.testing.assert_allclose(forecaster.forecast(table, 6, future), expected, rtol=1e-6)


def table_of(data):
    return read_table(
        data, features=["value"], targets=["value"], id_column="id", time_column="month"
    )


def test_select_network_keeps_the_network_alone(tmp_path):
    data = seasonal_random_walk_csv(tmp_path / "srw.csv", series=3, years=6)
    run = tmp_path / "run"
    args = ["train", str(data), "-f", "value", "--id", "id", "--time", "month", "--quiet"]
    args += ["--epochs", "1", "--hidden-size", "4", "--select", "network", "--out", str(run)]
    assert main(args) == 0
    assert "selection" not in read_model_json(run)["metadata"]
    assert load_forecaster(run).selection() is None


def test_members_selections_average_their_weights():
    common = dict(scores={"network": 1.0}, season=12, horizon=24, windows=1, series=3)
    one = Selection(weights={"network": 1.0}, chosen="network", **common)
    two = Selection(weights={"seasonal_naive_12": 1.0}, chosen="seasonal_naive_12", **common)
    merged = merge_selections([one, two])
    assert merged is not None and merged.weights == {"network": 0.5, "seasonal_naive_12": 0.5}
    assert merge_selections([]) is None
    assert Selection.from_dict(merged.to_dict()) == merged


def evidence_of(units):
    """label -> Evidence from label -> its MASE on each (series, window) pair (one series)."""
    return {label: Evidence(float(np.mean(u)), tuple(u)) for label, u in units.items()}


NAIVE = "seasonal_naive_12"


def test_the_choice_keeps_seasonal_naive_unless_a_candidate_beats_it_clearly():
    candidates = candidate_weights((12,))
    units = {NAIVE: [1.0] * 4}
    # better on every window, but by less than the margin on the mean: seasonal naive stays
    units["network"] = [1.0 - MARGIN / 2] * 4
    chosen, why = choose(evidence_of(units), candidates, NAIVE)
    assert chosen == NAIVE and "nothing beat" in why
    # far better on the mean from two lucky windows, but not on most: seasonal naive stays
    units["network"] = [0.2, 0.2, 1.1, 1.1]
    assert choose(evidence_of(units), candidates, NAIVE)[0] == NAIVE
    # clearly better on both: chosen
    units["network"] = [0.6, 0.6, 0.6, 0.6]
    chosen, why = choose(evidence_of(units), candidates, NAIVE)
    assert chosen == "network" and "by 40%" in why and "100%" in why


def test_the_network_must_also_beat_the_best_statistical_candidate_clearly():
    candidates = candidate_weights((12,))
    units = {NAIVE: [1.0] * 4, "ets_12": [0.8] * 4, "network": [0.78] * 4}
    # the network beats seasonal naive clearly, but damped ETS by under the margin
    chosen, why = choose(evidence_of(units), candidates, NAIVE)
    assert chosen == "ets_12" and "no candidate with the network" in why
    units["network"] = [0.5] * 4
    chosen, why = choose(evidence_of(units), candidates, NAIVE)
    assert chosen == "network" and "best statistical candidate (ets_12 0.800)" in why


def test_the_choice_prefers_the_combination_the_evidence_cannot_tell_from_the_best():
    candidates = candidate_weights((12,))
    four = "network+seasonal_naive_12+ets_12+theta_12"
    assert candidates[four] == {n: 0.25 for n in ("network", NAIVE, "ets_12", "theta_12")}
    inside = 0.5 * (1 + TOLERANCE / 2)
    units = {NAIVE: [1.0] * 4, "ets_12": [0.9] * 4, "network": [0.5] * 4, four: [inside] * 4}
    chosen, why = choose(evidence_of(units), candidates, NAIVE)
    assert chosen == four and "more members" in why
    # outside the tolerance the best alone wins
    units[four] = [0.5 * (1 + 2 * TOLERANCE)] * 4
    assert choose(evidence_of(units), candidates, NAIVE)[0] == "network"


def test_the_candidates_of_two_seasons_combine_the_chosen_seasonal_naive():
    candidates = candidate_weights((48, 336), naive=336)
    assert "seasonal_naive_48" in candidates and "seasonal_naive_336" in candidates
    assert candidates["seasonal_naive_336+ets_48+theta_48"] == {
        "seasonal_naive_336": 1 / 3,
        "ets_48": 1 / 3,
        "theta_48": 1 / 3,
    }
    assert all(abs(sum(w.values()) - 1.0) < 1e-12 for w in candidates.values())


def test_an_ensemble_reports_the_spread_of_its_members_validation_mase(tmp_path, capsys):
    data = seasonal_random_walk_csv(tmp_path / "srw.csv", series=4, years=6)
    run = tmp_path / "run"
    args = ["train", str(data), "-f", "value", "--id", "id", "--time", "month", "--seeds", "2"]
    args += ["--epochs", "1", "--hidden-size", "4", "--no-progress", "--out", str(run)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    scores = [
        Selection.from_dict(read_model_json(d)["metadata"]["selection"]).scores["network"]
        for d in (run, run / "members" / "seed-1")
    ]
    assert f"seed 0: 1 epoch(s), network validation MASE {scores[0]:.4g}" in printed
    assert f"seed 1: 1 epoch(s), network validation MASE {scores[1]:.4g}" in printed
    assert f"validation MASE of the forecasts mean {np.mean(scores):.4g}" in printed
    assert f"spread (std) {np.std(scores):.3g}" in printed


@given(st.integers(1, 12))
def test_window_weights_lean_to_the_most_recent_window(count):
    weights = window_weights(count)
    assert weights.shape == (count,) and abs(weights.sum() - 1.0) < 1e-12
    # each window weighs RECENCY times the next (newer) one
    np.testing.assert_allclose(weights[:-1], RECENCY * weights[1:])
    assert weights.argmax() == count - 1
    with pytest.raises(ValueError, match="count"):
        window_weights(0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0.5, 1.0, 2.0, float("nan")]),
            st.sampled_from([0.5, 1.0, 2.0, float("nan")]),
            st.floats(0.01, 1.0),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_weighted_wins_equal_the_plain_weighted_share(rows):
    mine, theirs, weights = (tuple(column) for column in zip(*rows, strict=True))
    a = Evidence(1.0, mine, weights)
    b = Evidence(1.0, theirs, weights)
    scored = [(x, y, w) for x, y, w in rows if np.isfinite(x) and np.isfinite(y)]
    if not scored:
        assert a.wins(b) == 0.5
        return
    share = sum(w * (1.0 if x < y else 0.5 if x == y else 0.0) for x, y, w in scored)
    assert a.wins(b) == pytest.approx(share / sum(w for _, _, w in scored))
    # equal weights: the plain share of the pairs
    plain = np.mean([1.0 if x < y else 0.5 if x == y else 0.0 for x, y, _ in scored])
    assert Evidence(1.0, mine).wins(Evidence(1.0, theirs)) == pytest.approx(plain)


def test_evidence_refuses_weights_of_another_length():
    with pytest.raises(ValueError, match="weights"):
        Evidence(1.0, (1.0, 2.0), (0.5,))


def test_recent_windows_outvote_older_ones():
    candidates = candidate_weights((12,))
    # better on the two older windows only: a plain majority is a tie, the weighted one is not
    weights = tuple(window_weights(4))
    units = {NAIVE: [1.0] * 4, "ets_12": [0.5, 0.5, 1.2, 1.2]}
    evidence = {
        label: Evidence(float(np.average(u, weights=weights)), tuple(u), weights)
        for label, u in units.items()
    }
    assert evidence["ets_12"].wins(evidence[NAIVE]) < 0.5
    assert choose(evidence, candidates, NAIVE)[0] == NAIVE
    # better on the two newest: chosen
    units["ets_12"] = [1.2, 1.2, 0.5, 0.5]
    evidence["ets_12"] = Evidence(
        float(np.average(units["ets_12"], weights=weights)), tuple(units["ets_12"]), weights
    )
    assert evidence["ets_12"].wins(evidence[NAIVE]) > 0.5
    assert choose(evidence, candidates, NAIVE)[0] == "ets_12"


def test_a_choice_that_lost_on_the_most_recent_window_keeps_seasonal_naive():
    candidates = candidate_weights((12,))
    units = {NAIVE: [1.0] * 4, "ets_12": [0.6, 0.6, 0.6, 1.1]}
    evidence = {
        label: Evidence(float(np.mean(u)), tuple(u), None, u[-1]) for label, u in units.items()
    }
    # clearly better on the mean and on 3 of 4 windows, but worse on the last one
    chosen, why = choose(evidence, candidates, NAIVE)
    assert chosen == NAIVE and "most recent window" in why and "(1.100 vs 1.000)" in why
    # not worse there: chosen
    units["ets_12"][-1] = 1.0
    evidence["ets_12"] = Evidence(
        float(np.mean(units["ets_12"])), tuple(units["ets_12"]), None, 1.0
    )
    assert choose(evidence, candidates, NAIVE)[0] == "ets_12"
    # unknown recent scores (NaN): no check
    evidence = evidence_of({NAIVE: [1.0] * 4, "ets_12": [0.6, 0.6, 0.6, 1.1]})
    assert choose(evidence, candidates, NAIVE)[0] == "ets_12"


def test_a_lead_inside_the_noise_of_the_windows_keeps_seasonal_naive():
    candidates = candidate_weights((12,))
    # 17.5% better on the mean and on 4 of 6 windows, but from two windows far ahead and two
    # far behind: the lead is under one standard error of the paired differences
    units = {NAIVE: [1.0] * 6, "ets_12": [0.05, 1.5, 0.05, 1.5, 0.9, 0.95]}
    evidence = evidence_of(units)
    assert evidence["ets_12"].beats(evidence[NAIVE])
    lead, error = evidence["ets_12"].lead(evidence[NAIVE])
    assert lead == pytest.approx(0.175) and lead < STANDARD_ERRORS * error
    chosen, why = choose(evidence, candidates, NAIVE)
    assert chosen == NAIVE and why.startswith("ets_12 beat")
    assert "the lead of ets_12 over seasonal naive (season 12) (0.175 MASE)" in why
    assert f"under 1 standard error of the paired window differences ({error:.3f})" in why
    # the same lead on the mean, steady over the windows: kept
    units["ets_12"] = [0.8, 0.85, 0.8, 0.85, 0.82, 0.83]
    evidence = evidence_of(units)
    lead, error = evidence["ets_12"].lead(evidence[NAIVE])
    assert lead == pytest.approx(0.175) and lead > 10 * error
    assert choose(evidence, candidates, NAIVE)[0] == "ets_12"
    # the network is held to the same check against seasonal naive
    units = {NAIVE: [1.0] * 6, "ets_12": [1.0] * 6, "network": [0.05, 1.5, 0.05, 1.5, 0.9, 0.95]}
    assert choose(evidence_of(units), candidates, NAIVE)[0] == NAIVE
    units["network"] = [0.8, 0.85, 0.8, 0.85, 0.82, 0.83]
    assert choose(evidence_of(units), candidates, NAIVE)[0] == "network"


def test_one_pair_has_no_standard_error_and_no_check():
    # one (series, window) pair: no spread to measure; the one-pair hedge of
    # validate_selection covers it instead
    one = Evidence(0.5, (0.5,))
    assert np.isnan(one.lead(Evidence(1.0, (1.0,)))[1])
    chosen, _ = choose(
        {NAIVE: Evidence(1.0, (1.0,)), "ets_12": one}, candidate_weights((12,)), NAIVE
    )
    assert chosen == "ets_12"
    with pytest.raises(ValueError, match="units"):
        one.lead(Evidence(1.0, (1.0, 1.0)))


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.floats(0.0, 5.0), st.just(float("nan"))),
            st.floats(0.0, 5.0),
            st.floats(0.01, 1.0),
        ),
        min_size=1,
        max_size=10,
    )
)
def test_the_lead_and_its_standard_error_equal_the_plain_formulas(rows):
    mine, theirs, weights = (tuple(column) for column in zip(*rows, strict=True))
    lead, error = Evidence(1.0, mine, weights).lead(Evidence(1.0, theirs, weights))
    scored = [(y - x, w) for x, y, w in rows if np.isfinite(x)]
    if not scored:
        assert np.isnan(lead) and np.isnan(error)
        return
    total = sum(w for _, w in scored)
    mean = sum(d * w for d, w in scored) / total
    assert lead == pytest.approx(mean, abs=1e-12)
    squares = sum((w / total) ** 2 for _, w in scored)
    if len(scored) == 1 or squares > 1 - 1e-9:
        assert np.isnan(error)
        return
    spread = sum(w / total * (d - mean) ** 2 for d, w in scored) / (1 - squares)
    assert error == pytest.approx((spread * squares) ** 0.5, rel=1e-9, abs=1e-12)
    # equal weights: the textbook standard error of a mean, s / sqrt(n)
    plain = Evidence(1.0, mine).lead(Evidence(1.0, theirs))[1]
    differences = [d for d, _ in scored]
    expected = np.std(differences, ddof=1) / np.sqrt(len(differences))
    assert plain == pytest.approx(expected, rel=1e-9, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 30))
def test_a_hedge_with_seasonal_naive_loses_at_most_half_the_candidates_loss(seed, steps):
    rng = np.random.default_rng(seed)
    actual, candidate, naive = rng.normal(size=(3, steps)) * rng.uniform(0.1, 10, size=(3, 1))
    weights = hedged({"network": 0.5, "ets_12": 0.5}, NAIVE)
    assert weights == {"network": 0.25, "ets_12": 0.25, NAIVE: 0.5}
    assert hedged({NAIVE: 0.5, "ets_12": 0.5}, NAIVE) == {NAIVE: 0.75, "ets_12": 0.25}
    mixed = 0.5 * candidate + 0.5 * naive

    def mae(x):
        return float(np.mean(np.abs(actual - x)))

    # the MAE of the mean is at most the mean of the MAEs: the hedge's excess over seasonal
    # naive is at most half the candidate's
    assert mae(mixed) <= 0.5 * (mae(candidate) + mae(naive)) + 1e-12
    assert mae(mixed) - mae(naive) <= 0.5 * max(mae(candidate) - mae(naive), 0.0) + 1e-12


class _Oracle:
    """A forecaster that answers each series' true future (it reads the whole table): the
    network candidate then wins every window."""

    def __init__(self, table):
        self.truth = {identity: t for identity, t in zip(table.ids, table.targets, strict=True)}

    def forecast(self, history, steps, future):
        return np.stack(
            [
                self.truth[identity][length : length + steps]
                for identity, length in zip(history.ids, history.lengths.tolist(), strict=True)
            ]
        )


@pytest.mark.parametrize("series", [1, 2])
def test_one_window_of_one_series_keeps_half_on_seasonal_naive(tmp_path, series):
    from seqstate.recipe.selection import validate_selection

    path = seasonal_random_walk_csv(tmp_path / "srw.csv", series=series, years=5)
    table = table_of(path)
    # the last 24 months (two seasons: one window) of each series are the validation tail
    cuts = [int(length) - 24 for length in table.lengths]
    chosen = validate_selection(_Oracle(table), table, cuts, seasons=(12,))
    assert chosen is not None and chosen.windows == 1 and chosen.series == series
    if series == 1:
        assert chosen.weights == {"network": 0.5, NAIVE: 0.5}
        assert chosen.chosen == f"(network)+{NAIVE}" and "too thin" in chosen.reason
        assert chosen.scores[chosen.chosen] == pytest.approx(chosen.scores[NAIVE] / 2)
    else:
        assert chosen.weights == {"network": 1.0} and "too thin" not in chosen.reason


def test_seasons_the_data_does_not_hold_twice_are_not_seasons():
    """A hundred minutes have no daily season: evaluation, selection and doctor compare with
    the last value (a seasonal naive 1440 steps back would have nothing to repeat), while a
    panel keeps the season its longest series holds twice, however short the others."""
    minutes = pd.DataFrame(
        {
            "time": pd.date_range("2024-01-08", periods=100, freq="min"),
            "value": np.cumsum(np.random.default_rng(0).normal(size=100)),
        }
    )
    table = read_table(minutes, features=["value"], targets=["value"], time_column="time")
    assert infer_seasons(table) == () and infer_season(table) == 1
    assert evaluate_forecaster(LastValue(), table, tail=10, horizon=10).season == 1

    def halves(days: int, series: str) -> pd.DataFrame:
        times = pd.date_range("2024-01-08", periods=48 * days, freq="30min")
        return pd.DataFrame({"id": series, "time": times, "value": np.arange(len(times)) % 48})

    # 13 days hold the daily season (48) but not two weeks (336); 14 days hold both.
    for days, expected in [(13, (48,)), (14, (48, 336))]:
        panel = pd.concat([halves(days, "long"), halves(3, "short")])
        table = read_table(
            panel, features=["value"], targets=["value"], id_column="id", time_column="time"
        )
        assert infer_seasons(table) == expected
    assert covered_seasons((48, 336), 671) == (48,) and covered_seasons((12,), 23) == ()
