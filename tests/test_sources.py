"""Reading long-format tables: validation messages, sorting, splits, normalisation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from seqstate.core.model import SequenceModel
from seqstate.core.saved import load_model, read_model_json, save_model
from seqstate.recipe.sources import (
    Columns,
    Normalization,
    SequenceTable,
    constant_columns,
    read_table,
    split_table,
    time_step,
)


def frame() -> pd.DataFrame:
    # Rows deliberately out of time order and interleaved between series.
    return pd.DataFrame(
        {
            "id": ["b", "a", "b", "a", "b", "a"],
            "t": [2, 1, 0, 0, 1, 2],
            "temp": [12.0, 1.0, 10.0, 0.0, 11.0, 2.0],
            "load": [0.2, 0.1, 0.0, 0.0, 0.1, 0.2],
        }
    )


def write_csv(tmp_path, data: pd.DataFrame, name: str = "data.csv"):
    path = tmp_path / name
    data.to_csv(path, index=False)
    return path


# ---- reading and sorting -------------------------------------------------------------------


def test_groups_by_id_in_order_of_first_appearance_and_sorts_by_time():
    table = read_table(
        frame(), features=["temp", "load"], targets=["temp"], id_column="id", time_column="t"
    )
    assert table.ids == ["b", "a"]
    np.testing.assert_array_equal(table.features[0][:, 0], [10.0, 11.0, 12.0])
    np.testing.assert_array_equal(table.features[1][:, 0], [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(table.times[0], [0, 1, 2])
    assert table.features[0].dtype == np.float32
    assert table.features[0].shape == (3, 2) and table.targets[0].shape == (3, 1)


def test_without_time_column_rows_keep_their_order_stably():
    table = read_table(frame(), features=["temp"], id_column="id")
    np.testing.assert_array_equal(table.features[0][:, 0], [12.0, 10.0, 11.0])
    np.testing.assert_array_equal(table.features[1][:, 0], [1.0, 0.0, 2.0])
    # each series steps through its own positions, not the file's rows between the others'
    # (a forecast of series b continues at its step 3, not at a row of series a)
    for times in table.times:
        np.testing.assert_array_equal(times, [0, 1, 2])


def test_without_id_column_the_table_is_one_series():
    table = read_table(frame(), features="temp,load", targets="temp")
    assert table.ids == [None] and len(table) == 1 and table.lengths.tolist() == [6]


def test_iso_dates_are_parsed_and_sorted():
    data = pd.DataFrame({"day": ["2024-01-03", "2024-01-01", "2024-01-02"], "v": [3.0, 1.0, 2.0]})
    table = read_table(data, features=["v"], time_column="day")
    np.testing.assert_array_equal(table.features[0][:, 0], [1.0, 2.0, 3.0])
    assert table.times[0].dtype == np.dtype("datetime64[ns]")
    assert time_step(table.times[0]) == np.timedelta64(1, "D")


def test_pairs_shift_targets_by_shift():
    table = read_table(
        frame(), features=["load"], targets=["temp"], id_column="id", time_column="t"
    )
    inputs, targets = table.pairs()
    np.testing.assert_array_equal(inputs[0][:, 0], np.float32([0.0, 0.1]))
    np.testing.assert_array_equal(targets[0][:, 0], [11.0, 12.0])
    same = read_table(
        frame(), features=["load"], targets=["temp"], id_column="id", time_column="t", shift=0
    )
    inputs, targets = same.pairs()
    assert len(inputs[0]) == 3
    np.testing.assert_array_equal(targets[0][:, 0], [10.0, 11.0, 12.0])


def test_lanes_of_a_table_target_the_next_value():
    table = read_table(
        frame(), features=["temp"], targets=["temp"], id_column="id", time_column="t"
    )
    lanes = table.lanes(lanes=8, window=4)
    assert lanes.num_lanes == 2  # capped at the number of series
    window = next(iter(lanes.windows()))
    for b, t in zip(*np.nonzero(window.loss_mask.numpy()), strict=True):
        series, step = int(window.seq[b, t]), int(window.step[b, t])
        assert float(window.x[b, t, 0]) == table.features[series][step, 0]
        assert float(window.y[b, t, 0]) == table.targets[series][step + 1, 0]
    assert int(window.loss_mask.sum()) == 4  # 2 series x (3 steps - shift)


def test_csv_and_parquet_read_the_same(tmp_path):
    data = frame()
    csv = read_table(write_csv(tmp_path, data), features=["temp"], id_column="id", time_column="t")
    data.to_parquet(tmp_path / "data.parquet")
    parquet = read_table(
        tmp_path / "data.parquet", features=["temp"], id_column="id", time_column="t"
    )
    assert csv.ids == parquet.ids
    for a, b in zip(csv.features, parquet.features, strict=True):
        np.testing.assert_array_equal(a, b)


def test_classification_targets_stay_integer():
    data = frame().assign(label=[1, 0, 2, 0, 1, 1])
    table = read_table(
        data,
        features=["temp"],
        targets=["label"],
        id_column="id",
        time_column="t",
        shift=0,
        task="classification",
    )
    assert table.targets[0].dtype == np.int64
    assert table.num_outputs == 3


def test_prediction_tables_may_lack_targets():
    data = frame().drop(columns=["load"])
    table = read_table(
        data, features=["temp"], targets=["load"], id_column="id", require_targets=False
    )
    assert table.columns.targets == ()


# ---- errors name the row and the column ------------------------------------------------------


def test_missing_column_lists_available_and_suggests():
    with pytest.raises(ValueError, match=r"feature column 'tmp' is not in DataFrame") as error:
        read_table(frame(), features=["tmp"], id_column="id")
    assert "['id', 't', 'temp', 'load']" in str(error.value)
    assert "Did you mean 'temp'?" in str(error.value)
    with pytest.raises(ValueError, match=r"id column 'series'.*available columns"):
        read_table(frame(), features=["temp"], id_column="series")
    with pytest.raises(ValueError, match=r"time column 'T'.*Did you mean 't'"):
        read_table(frame(), features=["temp"], time_column="T")
    with pytest.raises(ValueError, match=r"target column 'y'"):
        read_table(frame(), features=["temp"], targets=["y"])
    # a target that is also a feature (features default to the targets) is named as a target
    with pytest.raises(ValueError, match=r"target column 'sales'"):
        read_table(frame(), features=["sales"], targets=["sales"])


def test_non_numeric_value_names_the_csv_data_row(tmp_path):
    data = frame().astype({"load": object})
    data.loc[4, "load"] = "high"
    path = write_csv(tmp_path, data)
    with pytest.raises(
        ValueError,
        match=r"column 'load' holds the non-numeric value 'high' at data row 5 of data.csv "
        r"\(1-based, header not counted\)",
    ):
        read_table(path, features=["temp", "load"], id_column="id", time_column="t")


def test_nan_and_inf_name_the_row_and_column(tmp_path):
    data = frame()
    data.loc[2, "temp"] = np.nan
    with pytest.raises(ValueError, match=r"column 'temp' is missing \(NaN\) at data row 3 "):
        read_table(write_csv(tmp_path, data), features=["temp"], id_column="id")
    # the fix it names keeps the series apart (a plain ffill would carry one series' last
    # value into the next series' first rows)
    with pytest.raises(ValueError, match=r"groupby\(id\)\[column\]\.ffill\(\), not across"):
        read_table(write_csv(tmp_path, data), features=["temp"], id_column="id")
    data = frame().set_index(pd.Index([10, 20, 30, 40, 50, 60]))
    data.loc[50, "load"] = np.inf
    with pytest.raises(ValueError, match=r"column 'load' is inf at the row with index label 50"):
        read_table(data, features=["temp", "load"])


def test_variation_float32_cannot_hold_is_refused_not_read_as_a_constant():
    """1e9 +- 10 steps by 64 in float32: the series would be read as nearly constant and
    forecast as one. Values float32 holds (a level of 1e4 with changes of 0.5) are read."""
    k = np.arange(120)
    wave = 10 * np.sin(2 * np.pi * k / 12)
    data = pd.DataFrame({"id": "a", "y": 1e9 + wave, "x": 1e4 + wave / 10})
    with pytest.raises(ValueError, match=r"column 'y' changes by .* around 1e\+09, finer than"):
        read_table(data, features=["x"], targets=["y"])
    with pytest.raises(ValueError, match=r"column 'y' of series 'a' .* \(e\.g\. y - 1e\+09\)"):
        read_table(data, features=["y"], id_column="id")
    table = read_table(data.assign(y=data["y"] - 1e9), features=["x", "y"])
    np.testing.assert_allclose(table.features[0][:, 1], wave, atol=1e-5)


def test_nan_in_a_target_is_refused():
    data = frame()
    data.loc[0, "temp"] = np.nan
    with pytest.raises(ValueError, match=r"column 'temp' is missing \(NaN\) .* label 0"):
        read_table(data, features=["load"], targets=["temp"])


def test_duplicate_time_within_a_series_names_both_rows(tmp_path):
    data = frame()
    data.loc[5, "t"] = 1  # series a now has t=1 twice: data rows 2 and 6
    with pytest.raises(
        ValueError,
        match=r"time 1 appears twice in series 'a' in column 't': at data rows 2 and 6 "
        r"of data.csv \(1-based, header not counted\)\.",
    ):
        read_table(write_csv(tmp_path, data), features=["temp"], id_column="id", time_column="t")
    # the same time in *different* series is fine
    read_table(frame(), features=["temp"], id_column="id", time_column="t")


def test_missing_id_or_time_is_refused():
    data = frame()
    data.loc[3, "id"] = None
    with pytest.raises(
        ValueError, match=r"id column 'id' is missing at the row with index label 3"
    ):
        read_table(data, features=["temp"], id_column="id")
    data = frame().astype({"t": float})
    data.loc[1, "t"] = np.nan
    with pytest.raises(ValueError, match=r"time column 't' is missing .* label 1"):
        read_table(data, features=["temp"], time_column="t")
    data = frame().astype({"t": object})
    data.loc[1, "t"] = "yesterday"
    with pytest.raises(ValueError, match=r"holds 'yesterday' .* '2024 Jan', 2024Q1"):
        read_table(data, features=["temp"], time_column="t")


@pytest.mark.parametrize(
    ("written", "first"),
    [
        (["1939 Feb", "1939 Jan", "1939 Mar"], "1939-01-01"),
        (["1939Q2", "1939Q1", "1939Q3"], "1939-01-01"),
        (["1939M02", "1939M01", "1939M03"], "1939-01-01"),
    ],
)
def test_times_as_people_write_them(written, first):
    table = read_table(
        pd.DataFrame({"t": written, "v": [2.0, 1.0, 3.0]}), features=["v"], time_column="t"
    )
    assert table.times[0].dtype == np.dtype("datetime64[ns]")
    assert table.times[0][0] == np.datetime64(first)
    np.testing.assert_array_equal(table.features[0][:, 0], [1.0, 2.0, 3.0])  # sorted by time


def test_leaky_or_inconsistent_settings_are_refused():
    with pytest.raises(ValueError, match=r"also features with shift=0"):
        read_table(frame(), features=["temp"], targets=["temp"], shift=0)
    with pytest.raises(ValueError, match=r"column 'id' is the id column"):
        read_table(frame(), features=["id"], id_column="id")
    with pytest.raises(ValueError, match=r"shift must be an int >= 0"):
        read_table(frame(), features=["temp"], shift=-1)
    with pytest.raises(ValueError, match=r"names \['temp'\] more than once"):
        read_table(frame(), features=["temp", "temp"])
    with pytest.raises(ValueError, match=r"classification needs exactly one target column"):
        read_table(frame(), features=["temp"], targets=["load", "t"], task="classification")
    with pytest.raises(ValueError, match=r"class indices .* 0.2 at the row with index label 0"):
        read_table(frame(), features=["temp"], targets=["load"], shift=0, task="classification")


def test_series_too_short_for_shift_names_the_series():
    data = pd.DataFrame({"id": ["a", "a", "b"], "v": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match=r"series 'b' has 1 row\(s\), so with shift=1"):
        read_table(data, features=["v"], targets=["v"], id_column="id")


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist"):
        read_table(tmp_path / "nope.csv", features=["v"])
    with pytest.raises(ValueError, match=r"suffix '.xlsx'"):
        read_table(tmp_path / "data.xlsx", features=["v"])
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match=r"empty.csv is empty"):
        read_table(tmp_path / "empty.csv", features=["v"])
    (tmp_path / "header.csv").write_text("v\n")
    with pytest.raises(ValueError, match=r"has no data rows"):
        read_table(tmp_path / "header.csv", features=["v"])
    with pytest.raises(TypeError, match=r"pandas DataFrame or a path"):
        read_table(42, features=["v"])


# ---- splits --------------------------------------------------------------------------------


def many_series(n: int = 10, length: int = 20, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "id": np.repeat([f"s{i}" for i in range(n)], length),
            "t": np.tile(np.arange(length), n),
            "v": rng.normal(size=n * length),
            "u": rng.normal(size=n * length),
        }
    )


def table_of(data: pd.DataFrame) -> SequenceTable:
    return read_table(data, features=["v", "u"], targets=["v"], id_column="id", time_column="t")


def test_split_by_series_is_seeded_disjoint_and_complete():
    table = table_of(many_series())
    train, validation = split_table(table, by="series", fraction=0.3, seed=1)
    assert len(validation) == 3 and len(train) == 7
    assert sorted(train.ids + validation.ids) == sorted(table.ids)
    again = split_table(table, by="series", fraction=0.3, seed=1)[1]
    assert again.ids == validation.ids
    other = split_table(table, by="series", fraction=0.3, seed=2)[1]
    assert other.ids != validation.ids


def test_split_by_time_takes_the_last_fraction_of_every_series():
    table = table_of(many_series(n=3, length=10))
    train, validation = split_table(table, by="time", fraction=0.3)
    assert train.lengths.tolist() == [7, 7, 7] and validation.lengths.tolist() == [3, 3, 3]
    np.testing.assert_array_equal(train.times[0], np.arange(7))
    np.testing.assert_array_equal(validation.times[0], np.arange(7, 10))


def test_split_errors():
    one = read_table(many_series(n=1), features=["v"], targets=["v"])
    with pytest.raises(ValueError, match=r"has 1 series; splitting by series needs at least 2"):
        split_table(one, by="series")
    with pytest.raises(ValueError, match=r"fraction must be a number strictly between 0 and 1"):
        split_table(one, by="time", fraction=1.0)
    short = table_of(many_series(n=2, length=3))
    with pytest.raises(ValueError, match=r"series 's0' has 3 steps"):
        split_table(short, by="time", fraction=0.3)
    with pytest.raises(ValueError, match=r"by must be 'series' or 'time'"):
        split_table(short, by="rows")


# ---- normalisation -------------------------------------------------------------------------


@pytest.mark.parametrize("by", ["series", "time"])
def test_normalization_is_fitted_on_training_data_only(by):
    data = many_series()
    train, validation = split_table(table_of(data), by=by, fraction=0.3, seed=0)
    stats = Normalization.fit(train)
    # Change every validation value wildly: the statistics must not move.
    changed = data.copy()
    rows = changed["id"].isin(validation.ids) if by == "series" else changed["t"] >= 14
    changed.loc[rows, ["v", "u"]] = 1e6
    train_again, validation_again = split_table(table_of(changed), by=by, fraction=0.3, seed=0)
    assert Normalization.fit(train_again) == stats
    assert float(validation_again.features[0].max()) == 1e6
    expected = np.concatenate(train.features).astype(np.float64)
    np.testing.assert_allclose(stats.input_mean, expected.mean(axis=0))
    np.testing.assert_allclose(stats.input_std, expected.std(axis=0))


def test_normalization_is_saved_with_the_model(tmp_path):
    table = table_of(many_series())
    stats = Normalization.fit(table)
    model = SequenceModel(input_size=2, output_size=1, hidden_size=4)
    stats.apply(model)
    metadata = {"columns": table.columns.to_dict(), "normalization": stats.to_dict()}
    save_model(model, tmp_path, metadata=metadata)
    loaded = load_model(tmp_path)
    torch.testing.assert_close(loaded.input_shift, torch.tensor(stats.input_mean))
    torch.testing.assert_close(loaded.output_scale, torch.tensor(stats.output_std))
    stored = read_model_json(tmp_path)["metadata"]
    assert Columns.from_dict(stored["columns"]) == table.columns


def test_constant_columns_are_found():
    data = many_series().assign(u=1.0)
    assert constant_columns(table_of(data)) == ["u"]
