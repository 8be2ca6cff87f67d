"""The command line as a new user meets it: doctor reports every problem at once and agrees with
train on the layout, train says what it chose, shuffled files are noticed, epochs are numbered
one way, predict keeps the input's order and says what it could not predict, errors name flags,
and a forecast horizon is checked before anything runs."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pandas as pd
import pytest

from seqstate.cli import main
from seqstate.cli.settings import flags_named
from seqstate.core.saved import read_model_json

QUIET = ["--hidden-size", "8", "--no-progress"]


def seasonal_panel(n_series: int = 6, months: int = 48, seed: int = 0) -> pd.DataFrame:
    """Monthly series with a strong yearly pattern (auto picks seasonal differencing at 12)."""
    rng = np.random.default_rng(seed)
    frames = []
    for s in range(n_series):
        month = pd.date_range("2015-01-01", periods=months, freq="MS")
        value = 10 + s + 3 * np.sin(2 * np.pi * np.arange(months) / 12) + rng.normal(0, 0.2, months)
        frames.append(
            pd.DataFrame({"id": f"s{s}", "month": month.strftime("%Y-%m-%d"), "v": value})
        )
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("newuser")
    frame = seasonal_panel()
    frame.to_csv(folder / "panel.csv", index=False)
    frame.sample(frac=1, random_state=1).to_csv(folder / "shuffled.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def run(files, tmp_path_factory):
    """A seasonal run (auto: differences at lag 12) with early stopping after 2 epochs; the
    network alone (these tests are about its differencing: a validation choice of baselines
    would answer from the first row)."""
    out = tmp_path_factory.mktemp("runs") / "seasonal"
    args = ["train", str(files / "panel.csv"), "-f", "v", "--id", "id", "--time", "month"]
    args += ["--select", "network"]
    assert main([*args, *QUIET, "--patience", "2", "--out", str(out)]) == 0
    return out


def doctor_layout(text: str) -> tuple[int, int, int, int]:
    """(lanes, window, windows per epoch, epochs) as doctor prints them."""
    layout = re.search(r"Layout\s+(\d+) lanes x window (\d+): (\d+) windows per epoch", text)
    epochs = re.search(r"epochs = (\d+)", text)
    assert layout and epochs, text
    return (*map(int, layout.groups()), int(epochs.group(1)))


# --- doctor --------------------------------------------------------------------------------


def test_doctor_reports_every_data_problem_at_once_then_the_layout(files, tmp_path, capsys):
    frame = seasonal_panel().astype({"v": object})
    frame.loc[3, "v"] = "n.a."  # not a number
    frame.loc[[7, 70], "v"] = np.nan  # missing
    frame.loc[20, "id"] = np.nan  # no series id
    frame.loc[30, "month"] = frame.loc[29, "month"]  # a time twice in one series
    frame.loc[60, "month"] = "someday"  # not a time
    frame.to_csv(tmp_path / "bad.csv", index=False)
    code = main(["doctor", str(tmp_path / "bad.csv"), "-f", "v", "--id", "id", "--time", "month"])
    out = capsys.readouterr().out
    assert code == 1
    problems = out.split("\n\n")[0]
    # Each problem with its column, its rows (data rows: 1-based, header not counted), values, fix
    assert "column 'v' is not a number at data row 4 ('n.a.')" in problems
    assert "column 'v' is missing at data row 8 (empty), data row 71 (empty). Drop" in problems
    assert "df.groupby(id)[column].ffill(), not across series" in problems
    assert "column 'id' is empty (no series id) at data row 21" in problems
    assert "column 'month' repeats a time of its series at data row 31 ('2017-06-01')" in problems
    assert "column 'month' is not a time at data row 61 ('someday')" in problems
    assert problems.count("header not counted") == 1  # said once, in the heading
    assert "5 problem(s) found." in out
    # ... then the layout of the rows without problems
    assert "the facts below leave out the 6 row(s) with problems" in out
    assert "Layout" in out and "Default   lanes" in out


def test_doctor_names_parquet_rows_without_a_header(files, tmp_path, capsys):
    frame = seasonal_panel()
    frame.loc[5, "v"] = np.inf
    frame.to_parquet(tmp_path / "bad.parquet")
    assert main(["doctor", str(tmp_path / "bad.parquet"), "-f", "v", "--id", "id"]) == 1
    out = capsys.readouterr().out
    assert "column 'v' is infinite at row 6 (inf)" in out and "header" not in out


def test_doctor_lists_every_missing_column(files, capsys):
    args = ["doctor", str(files / "panel.csv"), "-f", "v,vv,price", "--id", "series"]
    assert main(args) == 1
    out = capsys.readouterr().out
    for name in ("vv", "price", "series"):
        assert f"column {name!r} is not in panel.csv" in out
    assert "Did you mean 'v'?" in out


def test_doctor_and_train_choose_the_same_layout_under_seasonal_differencing(
    files, tmp_path, capsys
):
    # Differencing at lag 12 shortens every series by 12 steps: the layout, the windows and the
    # epoch budget follow from the prepared table, for doctor as for train.
    args = [str(files / "panel.csv"), "-f", "v", "--id", "id", "--time", "month", *QUIET]
    assert main(["doctor", *args]) == 0
    out = capsys.readouterr().out
    assert "season 12" in out
    lanes, window, windows, epochs = doctor_layout(out)
    refit_windows = int(re.search(r"the refit on every row: (\d+) windows", out).group(1))
    run = tmp_path / "r"
    assert main(["train", *args, "--patience", "1", "--out", str(run)]) == 0
    err = capsys.readouterr().err
    assert f"Lanes(lanes={lanes}, window={window}," in err and f"windows={windows}," in err
    assert f"epochs = {epochs} (chosen" in err
    metadata = read_model_json(run)["metadata"]
    assert metadata["defaults"]["epochs"]["value"] == epochs
    # the refit's lanes (what the run directory records) on every row
    assert metadata["layout"]["lanes"] == lanes and metadata["layout"]["window"] == window
    assert metadata["layout"]["windows_per_epoch"] == refit_windows


def test_train_prints_each_choice_and_its_reason_first(files, tmp_path, capsys):
    out = tmp_path / "r"
    args = ["train", str(files / "panel.csv"), "-f", "v", "--id", "id", "--time", "month"]
    assert main([*args, *QUIET, "--epochs", "1", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    first = err.splitlines()[:12]
    assert first[0].split()[:2] == ["Scaling", "method"] and "season 12" in first[0]
    assert any("why" in line and "season" in line for line in first)  # why seasonal differences
    assert any("calendar" in line for line in first)
    assert any(line.split()[:2] == ["Default", "lanes"] and "chosen:" in line for line in first)
    assert any(line.split()[:2] == ["Setting", "epochs"] for line in first)


# --- rows out of time order ------------------------------------------------------------------


def test_shuffled_rows_without_a_time_column_are_warned_about(files, tmp_path, capsys):
    shuffled = str(files / "shuffled.csv")
    assert main(["doctor", shuffled, "-f", "v", "--id", "id", "--hidden-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "not in time order: column 'month'" in out and "Pass --time month" in out
    assert "Looks good" not in out
    args = ["train", shuffled, "-f", "v", "--id", "id", *QUIET, "--epochs", "1"]
    assert main([*args, "--out", str(tmp_path / "r")]) == 0
    assert "warning: the rows are not in time order" in capsys.readouterr().err
    # Named, or already in order: nothing to say.
    assert main(["doctor", shuffled, "-f", "v", "--id", "id", "--time", "month"]) == 0
    assert "time order" not in capsys.readouterr().out
    assert main(["doctor", str(files / "panel.csv"), "-f", "v", "--id", "id"]) == 0
    assert "time order" not in capsys.readouterr().out


# --- epochs, predict ------------------------------------------------------------------------


def test_epochs_are_numbered_from_one_in_the_summary_and_metrics(run, capsys):
    selection = read_model_json(run)["metadata"]["split"]["selection"]
    lines = (run / "selection" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in records] == list(range(1, len(records) + 1))
    assert [r["epoch_index"] for r in records] == list(range(len(records)))
    best = min(records, key=lambda r: r["val_loss"])
    assert best["epoch_index"] == selection["best_epoch"]
    # the refit trains exactly as many epochs as the (1-based) best epoch's number
    assert len((run / "metrics.jsonl").read_text().splitlines()) == best["epoch"]


def test_train_summary_names_the_best_epoch_from_one(files, tmp_path, capsys):
    out = tmp_path / "r"
    args = ["train", str(files / "panel.csv"), "-f", "v", "--id", "id", "--time", "month"]
    assert main([*args, *QUIET, "--epochs", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    best = read_model_json(out)["metadata"]["split"]["selection"]["best_epoch"]
    assert f"best epoch {best + 1}:" in printed


def test_predict_keeps_the_input_order_and_says_what_has_no_prediction(
    run, files, tmp_path, capsys
):
    target = tmp_path / "p.csv"
    assert main(["predict", str(run), str(files / "shuffled.csv"), "--out", str(target)]) == 0
    printed = capsys.readouterr().out
    given = pd.read_csv(files / "shuffled.csv")
    written = pd.read_csv(target)
    pd.testing.assert_frame_equal(written[["id", "month"]], given[["id", "month"]])
    # seasonal differences at lag 12: the first 12 steps of each series have no prediction
    empty = written["predicted_v"].isna()
    assert int(empty.sum()) == 12 * given["id"].nunique()
    first_year = given.groupby("id")["month"].rank() <= 12
    assert (empty == first_year).all()
    assert "in the input's row order" in printed
    assert f"note: {int(empty.sum())} of the {len(given)} rows have no prediction" in printed
    assert "differencing at lag 12" in printed


# --- errors that speak the command line ------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--tail", "0"], "--tail must be an int >= 1"),
        (
            ["--tail", "3", "--horizon", "0"],
            "--horizon must be an int >= 1; received 0. Leaving --horizon out scores",
        ),
        (["--warmup-until", "someday"], "--warmup-until holds 'someday', which no date"),
        (["--warmup-until", "2030-01-01"], "--warmup-until '2030-01-01' leaves no series"),
        (["--tail", "3", "--season", "0"], "--season must be an int >= 1 (steps per season"),
    ],
)
def test_evaluate_errors_name_the_flags(run, files, capsys, flags, expected):
    assert main(["evaluate", str(run), str(files / "panel.csv"), *flags]) == 1
    err = capsys.readouterr().err
    assert expected in err, err
    assert not re.search(r"(?<!-)\b(warmup_until|tail|horizon|season)\b(=| must)", err)
    assert "None" not in err


def test_flags_named_rewrites_only_argument_uses():
    with pytest.raises(ValueError) as caught, flags_named({"horizon": "--horizon", "x_y": "--x-y"}):
        raise ValueError("horizon=5 for x_y; use a shorter horizon")
    assert str(caught.value) == "--horizon 5 for --x-y; use a shorter horizon"
    with (
        pytest.raises(TypeError, match=r"^--horizon must be"),
        flags_named({"horizon": "--horizon"}),
    ):
        raise TypeError("horizon must be an int")


def test_covariates_errors_show_times_as_dates(files, tmp_path, capsys):
    frame = seasonal_panel(n_series=2, months=30)
    frame["aux"] = np.cos(np.arange(len(frame)))
    frame.to_csv(tmp_path / "cov.csv", index=False)
    out = tmp_path / "r"
    args = ["train", str(tmp_path / "cov.csv"), "-f", "v,aux", "-t", "v", "--id", "id"]
    assert main([*args, "--time", "month", *QUIET, "--epochs", "1", "--out", str(out)]) == 0
    frame[frame["id"] == "s0"].head(3).to_csv(tmp_path / "future.csv", index=False)  # the past
    capsys.readouterr()
    forecast = ["forecast", str(out), str(tmp_path / "cov.csv"), "--horizon", "2"]
    code = main([*forecast, "--covariates", str(tmp_path / "future.csv"), "--out", "f.csv"])
    err = capsys.readouterr().err
    assert code == 1 and "2017-06-01" in err, err  # the series' last month, as a date
    assert not re.search(r"\d{15,}", err)  # never raw nanoseconds


def test_the_server_names_the_train_flags_that_exist():
    # The server's refusals once told users to retrain "without --season": the flag is
    # --seasonal-difference. Every message of the server names real train flags.
    from pathlib import Path

    import seqstate.serve

    folder = Path(seqstate.serve.__file__).parent
    text = "".join(path.read_text() for path in folder.rglob("*.py"))
    assert not re.search(r"--season(?![\w-])", text)


def test_a_duplicate_time_names_its_rows_once(tmp_path):
    from seqstate.recipe.sources import read_table

    frame = seasonal_panel(n_series=1, months=5)
    frame.loc[3, "month"] = frame.loc[2, "month"]
    frame.to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(ValueError) as caught:
        read_table(tmp_path / "d.csv", features="v", time_column="month")
    message = str(caught.value)
    assert "data rows 3 and 4 of d.csv" in message
    assert message.count("(1-based, header not counted)") == 1
    frame.to_parquet(tmp_path / "d.parquet")
    with pytest.raises(ValueError, match=r"rows 3 and 4 of d.parquet \(1-based\)\.") as caught:
        read_table(tmp_path / "d.parquet", features="v", time_column="month")
    assert "header" not in str(caught.value)


def test_format_time_is_one_format():
    from seqstate.recipe.calendar import format_time

    assert format_time(np.datetime64("2019-12-01T00:00:00.000000000")) == "2019-12-01"
    assert format_time(np.datetime64("2019-12-01T06:30", "ns")) == "2019-12-01T06:30:00"
    assert format_time(pd.Timestamp("2019-12-01")) == "2019-12-01"
    assert format_time(np.int64(7)) == "7" and format_time(2.5) == "2.5"


# --- the forecast horizon -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("horizon", "expected"),
    [
        ("100000000", r"--horizon 100000000 for 6 series is 600,000,000 forecast rows"),
        ("4000", r"--horizon 4000 steps past 2018-12-01 would reach beyond 2262-04-11"),
    ],
)
def test_an_impossible_horizon_is_refused_at_once(run, files, capsys, horizon, expected):
    code = main(
        ["forecast", str(run), str(files / "panel.csv"), "--horizon", horizon, "-o", "f.csv"]
    )
    assert code == 1
    assert re.search(expected, capsys.readouterr().err)


def test_a_long_forecast_shows_its_progress():
    from seqstate.cli.run import PROGRESS_HORIZON, forecast_progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    with forecast_progress(PROGRESS_HORIZON, quiet=False, stream=stream) as on_step:
        for done in range(2, PROGRESS_HORIZON + 1):
            on_step(done)
    assert f"{PROGRESS_HORIZON}/{PROGRESS_HORIZON}" in stream.getvalue()
    with forecast_progress(PROGRESS_HORIZON - 1, quiet=False, stream=Terminal()) as on_step:
        assert on_step is None  # short: no bar
    with forecast_progress(PROGRESS_HORIZON, quiet=False, stream=io.StringIO()) as on_step:
        assert on_step is None  # a log, not a terminal


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--lanes", "0", "an int >= 1"),
        ("--window", "0", "an int >= 1"),  # was a ZeroDivisionError
        ("--epochs", "0", "an int >= 1"),
        ("--lr", "-1", "a number > 0"),
        ("--validation", "2", "a number > 0 and < 1"),
        ("--hidden-size", "0", "an int >= 1"),
    ],
)
def test_train_flags_out_of_range_are_named_as_flags(files, capsys, flag, value, expected):
    args = ["train", str(files / "panel.csv"), "-f", "v", "--id", "id", flag, value]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"seqstate: error: {flag} (or [") and f"must be {expected};" in err


def test_a_regression_without_features_reads_its_targets(files, tmp_path, capsys):
    """`train TABLE --targets v` forecasts v from its own past (as --features v --targets v);
    a classifier still needs its features named."""
    out = tmp_path / "targets-only"
    args = ["train", str(files / "panel.csv"), "--targets", "v", "--id", "id", "--time", "month"]
    assert main([*args, *QUIET, "--epochs", "1", "--out", str(out), "-q"]) == 0
    columns = read_model_json(out)["metadata"]["data"]["columns"]
    assert columns["features"] == ["v"] and columns["targets"] == ["v"]
    capsys.readouterr()
    refused = [*args, "--task", "classification", "--out", str(tmp_path / "c"), "-q"]
    assert main(refused) == 1
    assert "no feature columns: give --features" in capsys.readouterr().err
