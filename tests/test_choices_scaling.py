"""What suggest() picks for tables with and without a season, scale spread and trend."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from seqstate.recipe.calendar import observed_seasons
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
    [
        ("h", (24, ("hour", "weekday"))),
        ("30min", (48, ("hour", "weekday"))),
        ("5min", (288, ("hour", "weekday"))),
        ("D", (7, ("weekday",))),
        ("B", (5, ("weekday",))),
        ("W-SUN", (52, ("month",))),
        ("MS", (12, ("month",))),
        ("QS", (4, ("month",))),
        ("YS", (0, ())),
    ],
)
def test_season_of_reads_the_calendar(freq, expected):
    """train's season and calendar come from the same calendar as evaluation's seasons: every
    sub-daily step that divides a day, business days (5, not the 7 of their median spacing)."""
    times = pd.date_range("2020-01-01", periods=40, freq=freq).to_numpy()
    assert season_of(times) == expected
    assert season_of(times)[0] == (observed_seasons(times) or (0,))[0]


def test_a_half_hourly_seasonal_table_gets_seasonal_differences_and_the_hour():
    times = pd.date_range("2020-01-06", periods=48 * 14, freq="30min")
    rng = np.random.default_rng(0)
    value = 100 + 20 * np.sin(2 * np.pi * np.arange(len(times)) / 48)
    frame = pd.DataFrame({"t": times, "value": value + rng.normal(size=len(times))})
    table = read_table(frame, features=["value"], targets=["value"], time_column="t")
    suggestion = suggest(table)
    assert suggestion.scaling.season == 48
    assert suggestion.calendar == ("hour", "weekday")


def business_hours(days: int, start: str = "2021-03-01") -> np.ndarray:
    """5-minute times from 07:00 to 21:00 on weekdays (169 a day), as a call centre logs."""
    stamps = pd.date_range(start, periods=days * 288, freq="5min")
    clock = stamps.hour * 60 + stamps.minute
    return stamps[(stamps.day_of_week < 5) & (clock >= 7 * 60) & (clock <= 21 * 60)].to_numpy()


def test_business_hours_season_is_the_steps_of_a_usual_day_and_week():
    times = business_hours(70)
    assert observed_seasons(times) == (169, 845)
    # its forecasts step through the same hours, so it gets the calendar's features
    assert season_of(times) == (169, ("hour", "weekday"))
    # a holiday (one weekday missing) leaves the usual day and week as they are
    holiday = times[(times < np.datetime64("2021-03-10")) | (times >= np.datetime64("2021-03-11"))]
    assert observed_seasons(holiday) == (169, 845)


def test_gaps_without_a_usual_day_give_no_season():
    stamps = pd.date_range("2021-03-01", periods=24 * 60, freq="h").to_numpy()
    rng = np.random.default_rng(1)
    sparse = np.sort(rng.choice(stamps, size=700, replace=False))
    assert observed_seasons(sparse) == ()
    assert season_of(sparse) == (0, ())
    # a few missing hours are gaps, not another calendar
    assert observed_seasons(np.delete(stamps, [5, 300, 901])) == (24, 168)
    # every day from 09:00 to 17:00: a day of 8 steps, a week of 56
    clock = pd.DatetimeIndex(stamps).hour
    assert observed_seasons(stamps[(clock >= 9) & (clock < 17)]) == (8, 56)


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


def test_a_season_hidden_in_noisy_changes_still_gets_the_calendar():
    """Counts every hour with a smooth daily profile: each step's noise swamps the season in
    the changes (no seasonal differences), but the profile holds most of the level's variance
    around its trend, so the calendar features go in; pure noise gets neither."""
    times = pd.date_range("2021-03-01", periods=24 * 60, freq="h")
    rng = np.random.default_rng(2)
    profile = 20 * (1 + np.sin(2 * np.pi * (times.hour.to_numpy() - 6) / 24))
    counts = rng.poisson(profile + 5).astype(float)
    table = read_table(
        pd.DataFrame({"t": times, "calls": counts}),
        features=["calls"],
        targets=["calls"],
        time_column="t",
    )
    suggestion = suggest(table)
    assert suggestion.scaling.season == 0
    assert suggestion.calendar == ("hour", "weekday")
    assert any(
        "mean profile holds" in r and "no seasonal differences" in r for r in suggestion.reasons
    )
    noise = pd.DataFrame({"t": times, "calls": rng.poisson(20, len(times)).astype(float)})
    table = read_table(noise, features=["calls"], targets=["calls"], time_column="t")
    assert suggest(table).calendar == () and suggest(table).scaling.season == 0


def test_usual_days_without_usual_hours_get_their_season_but_no_calendar():
    """8 hours a weekday, 09-17 one week and 10-18 the next: a usual day of 8 steps and week
    of 40, but no hours every week holds, so forecasts cannot be stamped through the opening
    hours, and the calendar features (of the stamped hours) stay out."""
    stamps = pd.date_range("2021-03-01", periods=24 * 7 * 12, freq="h")
    opens = np.where((stamps.isocalendar().week.to_numpy() % 2) == 0, 9, 10)
    hour = stamps.hour.to_numpy()
    kept = (stamps.day_of_week < 5) & (hour >= opens) & (hour < opens + 8)
    times = stamps[kept].to_numpy()
    assert observed_seasons(times) == (8, 40)
    assert season_of(times) == (8, ())


def test_a_short_season_hidden_in_noisy_changes_keeps_no_calendar():
    """Monthly counts with the same kind of noisy season: 12 steps a season are too few for
    the level's profile to add the month (measured: it lost on held-out monthly data)."""
    times = pd.date_range("1990-01-01", periods=240, freq="MS")
    rng = np.random.default_rng(3)
    counts = rng.poisson(5 * (1 + np.sin(2 * np.pi * np.arange(240) / 12)) + 5).astype(float)
    frame = pd.DataFrame({"t": times, "deaths": counts})
    table = read_table(frame, features=["deaths"], targets=["deaths"], time_column="t")
    from seqstate.recipe.choices import _seasonal_correlation, _seasonal_strength

    assert _seasonal_correlation(counts, 12) <= 0.3 < 0.6 < _seasonal_strength(counts, 12)
    suggestion = suggest(table)
    assert suggestion.calendar == () and suggestion.scaling.season == 0
