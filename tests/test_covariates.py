"""Calendar features and known future covariates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from seqstate.recipe.covariates import (
    calendar_features,
    calendar_names,
    future_covariates,
    parse_calendar,
    with_calendar,
)
from seqstate.recipe.sources import read_table


def test_calendar_features_match_the_plain_formula():
    times = pd.date_range("2023-01-01", periods=400, freq="7h").to_numpy()
    features = calendar_features(times, ["month", "weekday", "hour"])
    assert features.shape == (400, 6) and features.dtype == np.float32
    for row, stamp in enumerate(pd.DatetimeIndex(times)):
        expected = []
        for position, period in (
            (stamp.month - 1, 12),
            (stamp.weekday(), 7),
            (stamp.hour + stamp.minute / 60, 24),
        ):
            angle = 2 * np.pi * position / period
            expected += [np.sin(angle), np.cos(angle)]
        np.testing.assert_allclose(features[row], expected, atol=1e-6)
    assert calendar_names(["month", "hour"]) == ("month_sin", "month_cos", "hour_sin", "hour_cos")


def test_december_and_january_are_neighbours():
    times = np.array(["2020-12-01", "2021-01-01", "2021-06-01"], dtype="datetime64[ns]")
    december, january, june = calendar_features(times, ["month"])
    assert np.linalg.norm(december - january) < np.linalg.norm(january - june) / 3


def test_with_calendar_appends_columns_per_series():
    frame = pd.DataFrame(
        {
            "id": ["a"] * 3 + ["b"] * 2,
            "month": ["2020-01", "2020-02", "2020-03", "2021-07", "2021-08"],
            "value": [1.0, 2.0, 3.0, 4.0, 5.0],
        }
    )
    table = read_table(
        frame, features=["value"], targets=["value"], id_column="id", time_column="month"
    )
    extended = with_calendar(table, ["month"])
    assert extended.columns.features == ("value", "month_sin", "month_cos")
    assert extended.columns.targets == ("value",)
    np.testing.assert_allclose(extended.features[1][0, 1:], [np.sin(np.pi), np.cos(np.pi)])
    assert with_calendar(table, []) is table


def test_bad_calendar_input_is_refused():
    with pytest.raises(ValueError, match=r"unknown calendar feature\(s\) \['week'\]"):
        parse_calendar("month,week")
    with pytest.raises(TypeError, match="calendar must be a list"):
        parse_calendar(12)
    with pytest.raises(ValueError, match="need dates and times"):
        calendar_features(np.arange(5), ["month"])
    assert parse_calendar("month, hour") == ("month", "hour")
    assert parse_calendar(None) == ()


def test_future_covariates_pick_the_rows_after_each_context(tmp_path):
    history = pd.DataFrame(
        {"id": ["a", "a", "b"], "t": [1, 2, 5], "value": [1.0, 2.0, 3.0], "price": [9, 8, 7]}
    )
    table = read_table(
        history,
        features=["value", "price"],
        targets=["value"],
        id_column="id",
        time_column="t",
        require_targets=False,  # read as a forecast's context
    )
    future = pd.DataFrame(
        {"id": ["b", "a", "a", "b", "a", "b"], "t": [7, 3, 4, 6, 2, 8], "price": [1, 2, 3, 4, 5, 6]}
    )
    path = tmp_path / "future.csv"
    future.to_csv(path, index=False)
    values = future_covariates(path, ["price"], table, 2)
    np.testing.assert_array_equal(values[0][:, 0], [2, 3])  # a: t=3, 4 (t=2 is history)
    np.testing.assert_array_equal(values[1][:, 0], [4, 1])  # b: t=6, 7
    with pytest.raises(ValueError, match=r"2 row\(s\) after the last time \(2\) of series 'a'"):
        future_covariates(path, ["price"], table, 3)
    with pytest.raises(ValueError, match="no rows for series 'b'"):
        future_covariates(future[future.id == "a"], ["price"], table, 1)
    with pytest.raises(ValueError, match="price"):
        future_covariates(future.drop(columns="price"), ["price"], table, 1)
