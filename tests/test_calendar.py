"""Calendar time: frequency inference, parsing common date formats, stamping the future."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqstate.recipe.calendar import (
    Frequency,
    future_times,
    infer_frequency,
    observed_frequency,
    parse_times,
    season_length,
)

# (pandas frequency used to build the truth, the name inferred, its season)
CALENDARS = [
    ("MS", "MS", 12),
    ("ME", "ME", 12),
    ("W-SUN", "W-SUN", 52),
    ("W-WED", "W-WED", 52),
    ("D", "D", 7),
    ("h", "h", 24),
    ("15min", "15min", 96),
    ("B", "B", 5),
    ("QS-JAN", "QS-JAN", 4),
    ("QE-DEC", "QE-DEC", 4),
    ("YS-JAN", "YS-JAN", 1),
    ("YE-DEC", "YE-DEC", 1),
    ("BME", "BME", 12),
]


@pytest.mark.parametrize(("alias", "name", "season"), CALENDARS)
def test_round_trip_history_then_future(alias, name, season):
    truth = pd.date_range("1999-11-01", periods=50, freq=alias).to_numpy()
    frequency = infer_frequency(truth[:38])
    assert frequency is not None and frequency.name == name and frequency.missing == 0
    assert season_length(frequency) == season
    np.testing.assert_array_equal(future_times(truth[:38], 12), truth[38:])


@settings(max_examples=30, deadline=None)
@given(
    alias=st.sampled_from(["MS", "ME", "W-SUN", "h", "D", "QS-JAN"]),
    start=st.datetimes(min_value=pd.Timestamp("1900-01-01"), max_value=pd.Timestamp("2100-01-01")),
    length=st.integers(3, 40),
    horizon=st.integers(1, 30),
)
def test_round_trip_any_start(alias, start, length, horizon):
    truth = pd.date_range(pd.Timestamp(start).floor("D"), periods=length + horizon, freq=alias)
    truth = truth.to_numpy()
    np.testing.assert_array_equal(future_times(truth[:length], horizon), truth[length:])


def test_monthly_does_not_drift_like_the_median_spacing():
    # The bug: stepping by the median spacing (31 days) stamped 2019-09 as 2019-09-01, then
    # drifted a day per short month, so the 60th month landed in the wrong month.
    history = pd.date_range("2015-01-01", "2019-08-01", freq="MS").to_numpy()
    future = pd.DatetimeIndex(future_times(history, 60))
    assert (future.day == 1).all()
    assert future[0] == pd.Timestamp("2019-09-01") and future[-1] == pd.Timestamp("2024-08-01")


def test_same_day_of_every_month_and_month_end_clamping():
    mid = pd.date_range("2020-01-15", periods=30, freq=pd.DateOffset(months=1)).to_numpy()
    frequency = infer_frequency(mid[:20])
    assert frequency == Frequency("months=1", "day 15 of every month", 0)
    np.testing.assert_array_equal(future_times(mid[:20], 10), mid[20:])
    ends = pd.date_range("2020-01-31", periods=14, freq="ME").to_numpy()
    # Month ends step to month ends (Feb 29, Mar 31), never Jan 31 + 31 days.
    np.testing.assert_array_equal(future_times(ends[:6], 8), ends[6:])


def test_gaps_are_counted_not_fatal():
    months = pd.date_range("2001-01-01", periods=40, freq="MS").to_numpy()
    frequency = infer_frequency(np.delete(months, [5, 9, 10]))
    assert frequency is not None and frequency.name == "MS" and frequency.missing == 3
    hours = pd.date_range("2001-01-01", periods=100, freq="h").to_numpy()
    assert infer_frequency(np.delete(hours, [3, 50])).name == "h"


def test_irregular_times_fall_back_to_the_median_spacing():
    times = np.array(["2020-01-01", "2020-01-02", "2020-01-04T05:00"], dtype="datetime64[ns]")
    assert infer_frequency(times) is None or infer_frequency(times).name != "MS"
    future = future_times(times, 2)
    assert len(future) == 2 and (np.diff(np.concatenate([times[-1:], future])) > 0).all()


def test_numbers_step_by_their_spacing():
    np.testing.assert_array_equal(future_times(np.array([0, 2, 4]), 3), [6, 8, 10])
    np.testing.assert_allclose(future_times(np.array([0.5, 1.0, 1.5]), 2), [2.0, 2.5])
    np.testing.assert_array_equal(future_times(np.array([7]), 2), [8, 9])


@pytest.mark.parametrize(
    ("text", "first"),
    [
        (["1939 Jan", "1939 Feb", "1939 Mar"], "1939-01-01"),
        (["1939-01", "1939-02", "1939-03"], "1939-01-01"),
        (["Jan 1939", "Feb 1939", "Mar 1939"], "1939-01-01"),
        (["1939 January", "1939 February", "1939 March"], "1939-01-01"),
        (["1939M01", "1939M02", "1939M03"], "1939-01-01"),
        (["1939Q1", "1939Q2", "1939Q3"], "1939-01-01"),
        (["1939-01-31", "1939-02-28", "1939-03-31"], "1939-01-31"),
        (["2020-01-01T00:00", "2020-01-01T01:00", "2020-01-01T02:00"], "2020-01-01"),
    ],
)
def test_parse_common_formats(text, first):
    times = parse_times(text)
    assert times.dtype == np.dtype("datetime64[ns]")
    assert times[0] == np.datetime64(first)
    assert infer_frequency(times) is not None


def test_parse_error_names_the_value_and_the_formats():
    with pytest.raises(ValueError, match=r"month holds 'soon' \(value 2\).*2024 Jan"):
        parse_times(["1939 Jan", "1939 Feb", "soon"], "month")
    with pytest.raises(ValueError, match="dates written as text"):
        parse_times(np.array([1.0, 2.0], dtype=object), "month")


def test_bad_arguments():
    with pytest.raises(ValueError, match="horizon must be an int >= 1"):
        future_times(np.array([1, 2]), 0)
    with pytest.raises(ValueError, match="times is empty"):
        future_times(np.array([], dtype=np.int64), 2)
    with pytest.raises(TypeError, match="datetime64"):
        infer_frequency(np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="strictly increasing"):
        infer_frequency(np.array(["2020-02-01", "2020-01-01"], dtype="datetime64[ns]"))


def business_hours(days: int = 63) -> np.ndarray:
    """5-minute times from 07:00 to 21:00 on weekdays (169 a day, 845 a week)."""
    stamps = pd.date_range("2021-03-01", periods=days * 288, freq="5min")
    clock = stamps.hour * 60 + stamps.minute
    return stamps[(stamps.day_of_week < 5) & (clock >= 7 * 60) & (clock <= 21 * 60)].to_numpy()


def test_business_hours_step_through_their_slots_not_the_night():
    times = business_hours()  # ends on a Friday at 21:00
    frequency = observed_frequency(times)
    assert frequency is not None and frequency.name == "5min"
    assert len(frequency.slots) == 845 and frequency.cycle == 7 * 86_400
    future = future_times(times, 3)
    expected = ["2021-05-03T07:00", "2021-05-03T07:05", "2021-05-03T07:10"]
    np.testing.assert_array_equal(future, np.array(expected, dtype="datetime64[ns]"))
    # from inside the day the next slots follow at once
    assert future_times(times[:-2], 3)[-1] == np.datetime64("2021-05-03T07:00")
    # a holiday leaves the usual week as it is
    holiday = times[(times < np.datetime64("2021-03-10")) | (times >= np.datetime64("2021-03-11"))]
    assert observed_frequency(holiday).slots == frequency.slots
    # the run file's entry reads back to the same calendar
    again = Frequency.from_dict(frequency.to_dict())
    assert (again.name, again.slots, again.cycle) == (frequency.name, frequency.slots, 604_800)
    np.testing.assert_array_equal(again.future(times[-1], 200), future_times(times, 200))
    # data on its whole calendar keeps the plain grid
    assert (
        observed_frequency(pd.date_range("2021-03-01", periods=900, freq="h").to_numpy()).slots
        == ()
    )


def test_frequency_entries_with_bad_slots_are_refused():
    with pytest.raises(ValueError, match="slots must lie in"):
        Frequency.from_dict({"name": "h", "slots": [3600, 700_000], "cycle": 604_800})
    with pytest.raises(ValueError, match="slots must lie in"):
        Frequency.from_dict({"name": "h", "slots": [3600]})
    assert Frequency.from_dict("MS") == Frequency("MS", "MS")
