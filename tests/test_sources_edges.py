"""Reading edge cases: ids written with leading zeros, missing text times, Parquet dates."""

from __future__ import annotations

import datetime

import numpy as np
import pandas as pd
import pytest

from seqstate.recipe.sources import read_table


def write_text(tmp_path, lines: list[str], name: str = "data.csv"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def panel_lines(ids: list[str], steps: int = 4, sep: str = ",") -> list[str]:
    """A header and ``steps`` rows per id, every series at the same times 0, 1, ..."""
    lines = [sep.join(["id", "t", "y"])]
    for k, series in enumerate(ids):
        lines += [sep.join([series, str(t), str(10.0 * k + t)]) for t in range(steps)]
    return lines


# -- ids ----------------------------------------------------------------------------------------


def test_ids_with_leading_zeros_are_read_as_written(tmp_path):
    path = write_text(tmp_path, panel_lines(["001", "002", "010"]))
    table = read_table(path, features=["y"], id_column="id", time_column="t")
    assert table.ids == ["001", "002", "010"]
    assert [float(s[0, 0]) for s in table.features] == [0.0, 10.0, 20.0]


def test_one_series_named_with_leading_zeros_keeps_them(tmp_path):
    # A forecast input holding just one of the run's series must name it as training did.
    path = write_text(tmp_path, panel_lines(["010"]))
    assert read_table(path, features=["y"], id_column="id", time_column="t").ids == ["010"]


@pytest.mark.parametrize(
    ("ids", "sep", "name"),
    [
        (["01", "1", "001"], ",", "data.csv"),
        (["1", "1.0"], ",", "data.csv"),
        (["7", "07"], "\t", "data.tsv"),
        ([" 1", "1"], ",", "data.csv"),
        (["true", "True"], ",", "data.csv"),
    ],
)
def test_ids_that_numbers_would_merge_stay_apart(tmp_path, ids, sep, name):
    # Read as numbers, each of these merges into one series and the shared times then read as
    # duplicates in a series that is not in the file.
    path = write_text(tmp_path, panel_lines(ids, sep=sep), name)
    table = read_table(path, features=["y"], id_column="id", time_column="t")
    assert table.ids == ids
    assert [len(s) for s in table.features] == [4] * len(ids)
    assert [float(s[0, 0]) for s in table.features] == [10.0 * k for k in range(len(ids))]


@pytest.mark.parametrize(
    ("ids", "expected"),
    [
        (["1", "2", "10"], [1, 2, 10]),
        (["1.5", "2.25"], [1.5, 2.25]),
        (["1.0", "2.0"], [1.0, 2.0]),
        (["True", "False"], [True, False]),
    ],
)
def test_ids_that_numbers_write_back_unchanged_stay_numbers(tmp_path, ids, expected):
    # Runs already trained keyed their series by these values: they must keep reading so.
    path = write_text(tmp_path, panel_lines(ids))
    table = read_table(path, features=["y"], id_column="id", time_column="t")
    assert table.ids == expected
    assert [type(i) for i in table.ids] == [type(e) for e in expected]


def test_a_missing_id_beside_leading_zeros_names_its_row(tmp_path):
    lines = panel_lines(["001", "002"])
    lines[6] = ",1," + lines[6].split(",")[2]  # data row 6: no id
    path = write_text(tmp_path, lines)
    with pytest.raises(ValueError, match=r"id column 'id' is missing at data row 6 of data\.csv"):
        read_table(path, features=["y"], id_column="id", time_column="t")


# -- missing text times -------------------------------------------------------------------------


def quarters(count: int) -> list[str]:
    return [f"{1995 + q // 4}Q{q % 4 + 1}" for q in range(count)]


def test_a_missing_quarter_names_its_row_not_the_first(tmp_path):
    lines = ["id,quarter,y"] + [f"a,{q},{k}.5" for k, q in enumerate(quarters(12))]
    lines[8] = "a,,7.5"  # data row 8
    path = write_text(tmp_path, lines)
    with pytest.raises(ValueError) as caught:
        read_table(path, features=["y"], id_column="id", time_column="quarter")
    message = str(caught.value)
    assert message.startswith(
        "time column 'quarter' is missing at data row 8 of data.csv (1-based, header not "
        "counted); every row needs a time."
    )
    assert "1995Q1" not in message


def test_a_blank_text_time_in_a_dataframe_is_missing_at_its_label():
    frame = pd.DataFrame(
        {"month": ["2020 Jan", "2020 Feb", "  ", "2020 Apr"], "y": [1.0, 2.0, 3.0, 4.0]},
        index=[10, 11, 12, 13],
    )
    with pytest.raises(ValueError, match="time column 'month' is missing at the row with index"):
        read_table(frame, features=["y"], time_column="month")


@pytest.mark.parametrize(
    "written", [quarters(6), [f"{1990 + k} Jan" for k in range(6)], [str(k) for k in range(6)]]
)
def test_a_text_time_that_is_no_date_names_its_value_and_row(tmp_path, written):
    # judged against the form the rest of the column is written in, not ISO 8601's first miss
    lines = ["when,y"] + [f"{w},{k}.5" for k, w in enumerate(written)]
    lines[4] = "someday,3.5"
    path = write_text(tmp_path, lines)
    with pytest.raises(ValueError, match=r"time column 'when' holds 'someday' at data row 4 of"):
        read_table(path, features=["y"], time_column="when")


# -- dates as objects (Parquet date32) ----------------------------------------------------------


def test_a_parquet_date32_time_column_reads_as_dates(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    days = [datetime.date(2020, 2, 20) + datetime.timedelta(days=k) for k in range(6)]
    shuffled = [days[k] for k in (2, 0, 1, 5, 3, 4)]
    data = pa.table(
        {"t": pa.array(shuffled, type=pa.date32()), "y": [float(d.day) for d in shuffled]}
    )
    pq.write_table(data, tmp_path / "daily.parquet")
    assert pd.read_parquet(tmp_path / "daily.parquet")["t"].dtype == object  # date objects
    table = read_table(tmp_path / "daily.parquet", features=["y"], time_column="t")
    assert table.times[0].dtype == np.dtype("datetime64[ns]")
    assert table.times[0].tolist() == np.array(days, dtype="datetime64[ns]").tolist()
    assert table.features[0][:, 0].tolist() == [20.0, 21.0, 22.0, 23.0, 24.0, 25.0]


def test_date_objects_in_a_dataframe_read_as_dates_and_datetimes_with_offsets_as_utc():
    stamps = [
        datetime.date(2021, 3, 1),
        datetime.datetime(2021, 3, 2, 12, 0),
        datetime.datetime(2021, 3, 3, 14, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
    ]
    frame = pd.DataFrame({"t": pd.Series(stamps, dtype=object), "y": [1.0, 2.0, 3.0]})
    times = read_table(frame, features=["y"], time_column="t").times[0]
    assert (
        times.tolist()
        == np.array(
            ["2021-03-01T00:00", "2021-03-02T12:00", "2021-03-03T12:00"], dtype="datetime64[ns]"
        ).tolist()
    )


def test_a_missing_date_object_names_its_row(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    days = [datetime.date(2020, 1, k) for k in range(1, 6)]
    days[3] = None
    pq.write_table(
        pa.table({"t": pa.array(days, type=pa.date32()), "y": [1.0] * 5}), tmp_path / "d.parquet"
    )
    with pytest.raises(ValueError, match=r"time column 't' is missing at row 4 of d\.parquet"):
        read_table(tmp_path / "d.parquet", features=["y"], time_column="t")


def test_dates_past_what_datetime64_ns_holds_are_refused_with_their_row():
    # Converted to nanoseconds they would wrap to dates in 1830, silently.
    frame = pd.DataFrame(
        {"t": pd.Series([datetime.date(2020, 1, 1), datetime.date(3000, 1, 1)], dtype=object)}
    ).assign(y=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"time column 't' holds '3000-01-01' at the row with"):
        read_table(frame, features=["y"], time_column="t")
    frame = pd.DataFrame({"t": ["2020-01-01", "3000-01-01"], "y": [1.0, 2.0]})
    with pytest.raises(ValueError, match=r"holds '3000-01-01' at the row with index label 1"):
        read_table(frame, features=["y"], time_column="t")


def test_rows_ending_in_a_delimiter_keep_their_columns(tmp_path):
    # pandas took the first column for an index when every data row ended in a comma: each
    # column then held its right-hand neighbour's values (ids read as times...)
    path = tmp_path / "trailing.csv"
    path.write_text("id,t,y\na,1,2.0,\na,2,3.0,\nb,1,4.0,\nb,2,5.0,\n")
    table = read_table(path, features=["y"], id_column="id", time_column="t")
    assert table.ids == ["a", "b"]
    assert [f.ravel().tolist() for f in table.features] == [[2.0, 3.0], [4.0, 5.0]]


def test_doctor_reads_ids_as_train_does(tmp_path, capsys):
    # doctor read the file with its own reader, which merged 01, 1 and 001 into one series
    # (and reported their times as repeated)
    from seqstate.cli import main

    path = tmp_path / "ids.csv"
    rows = [f"{i},{t},{float(t)}" for i in ("01", "1", "001") for t in range(30)]
    path.write_text("id,t,y\n" + "\n".join(rows) + "\n")
    main(["doctor", str(path), "-f", "y", "--id", "id", "--time", "t"])
    out = capsys.readouterr().out
    assert "3 series, 90 steps" in out and "repeats a time" not in out, out


@pytest.mark.parametrize(
    "written", [["2024Q1", "3000Q2", "2024Q3"], ["2024 Jan", "3000 Feb", "2024 Mar"]]
)
def test_written_dates_past_what_datetime64_ns_holds_name_their_row(written):
    # pandas reads 3000Q2 in seconds; cast to nanoseconds it was 1831 (an IndexError in the
    # message's row search, once parse_times caught it)
    from seqstate.recipe.calendar import DateOutOfRange, parse_times

    frame = pd.DataFrame({"q": written, "y": [1.0, 2.0, 3.0]})
    with pytest.raises(
        ValueError, match=r"holds '3000 ?\w+' at the row with index label 1, a date outside"
    ):
        read_table(frame, features=["y"], time_column="q")
    with pytest.raises(DateOutOfRange, match=r"\(value 1\), a date outside 1677-09-21"):
        parse_times(written)
