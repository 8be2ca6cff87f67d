"""What suggest() picks for tables with and without a season, scale spread and trend."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from seqstate.recipe.choices import season_of, suggest
from seqstate.recipe.sources import read_table


def monthly_panel(seasonal: bool, months: int = 120, scales=(1.0, 100.0, 1e4), seed=0):
    rng = np.random.default_rng(seed)
    times = pd.date_range("2000-01-01", periods=months, freq="MS")
    parts = []
    for index, scale in enumerate(scales):
        noise = np.cumsum(rng.standard_normal(months)) * 0.3
        season = 3.0 * np.sin(2 * np.pi * np.arange(months) / 12) if seasonal else 0.0
        value = scale * (50.0 + season + noise)
        parts.append(pd.DataFrame({"id": f"s{index}", "month": times, "value": value}))
    frame = pd.concat(parts, ignore_index=True)
    return read_table(
        frame, features=["value"], targets=["value"], id_column="id", time_column="month"
    )


def test_a_seasonal_monthly_panel_gets_series_scaling_seasonal_differences_and_months():
    suggestion = suggest(monthly_panel(seasonal=True))
    assert suggestion.scaling.method == "series"
    assert suggestion.scaling.season == 12 and suggestion.scaling.difference == 0
    assert suggestion.calendar == ("month",)
    assert any("differ by a factor 9.6" in reason for reason in suggestion.reasons)


def test_no_season_means_no_seasonal_differences_nor_calendar():
    suggestion = suggest(monthly_panel(seasonal=False))
    assert suggestion.scaling.season == 0 and suggestion.calendar == ()
    assert any("season: none (the changes' lag-12" in reason for reason in suggestion.reasons)


def test_short_series_and_numeric_times_get_no_season():
    assert suggest(monthly_panel(seasonal=True, months=30)).scaling.season == 0
    frame = pd.DataFrame({"t": np.arange(50), "value": np.sin(np.arange(50.0))})
    table = read_table(frame, features=["value"], targets=["value"], time_column="t")
    suggestion = suggest(table)
    assert suggestion.scaling.method == "global" and suggestion.scaling.season == 0
    assert season_of(table.times[0]) == (0, ())


@pytest.mark.parametrize(
    ("freq", "expected"),
    [("h", (24, ("hour", "weekday"))), ("D", (7, ("weekday",))), ("QS", (4, ("month",)))],
)
def test_season_of_reads_the_calendar(freq, expected):
    assert season_of(pd.date_range("2020-01-01", periods=10, freq=freq).to_numpy()) == expected


def test_hints_for_log_and_differences_are_not_applied():
    months = 200
    growth = np.exp(np.linspace(0, 4, months))  # positive, spans a factor ~50, trending
    frame = pd.DataFrame(
        {"month": pd.date_range("2000-01-01", periods=months, freq="MS"), "value": growth}
    )
    table = read_table(frame, features=["value"], targets=["value"], time_column="month")
    suggestion = suggest(table)
    assert any("--transform log" in hint for hint in suggestion.hints)
    assert any("--difference 1" in hint for hint in suggestion.hints)
    assert suggestion.scaling.transform == "none" and suggestion.scaling.difference == 0


def test_classification_tables_get_no_target_transform():
    frame = pd.DataFrame({"id": [0] * 5 + [1] * 5, "x": np.arange(10.0), "label": [0, 1] * 5})
    table = read_table(
        frame, features=["x"], targets=["label"], id_column="id", shift=0, task="classification"
    )
    suggestion = suggest(table)
    assert suggestion.scaling.season == 0 and suggestion.hints == ()


def test_no_difference_hint_where_the_daily_season_beats_the_last_value():
    # Half-hourly load with a daily shape and a wandering level: the drift rule alone would
    # suggest --difference 1, which forecasts from the last value; the daily seasonal naive
    # does far better on the end of the series, so the hint is not offered.
    rng = np.random.default_rng(0)
    steps = 48 * 20
    times = pd.date_range("2020-01-06", periods=steps, freq="30min")
    shape = 20 * np.sin(2 * np.pi * np.arange(steps) / 48)
    level = np.cumsum(rng.normal(scale=0.02, size=steps))
    frame = pd.DataFrame({"time": times, "value": 100 + shape + level})
    table = read_table(frame, features=["value"], targets=["value"], time_column="time")
    assert not any("--difference 1" in hint for hint in suggest(table).hints)
