"""Command-line options that were accepted and then ignored, or wrote over the user's
columns: each is refused at once, by name, before anything is written."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from seqstate.cli import main

SMALL = ["--hidden-size", "8", "--epochs", "2", "--no-progress", "-q"]


def _quarterly(id_column: str = "id", time_column: str = "quarter") -> pd.DataFrame:
    rng = np.random.default_rng(0)
    quarters = pd.period_range("1995Q1", periods=40, freq="Q").astype(str)
    frames = [
        pd.DataFrame(
            {
                id_column: name,
                time_column: quarters,
                "y": 10 + np.sin(np.arange(40) * np.pi / 2) + rng.normal(scale=0.1, size=40),
            }
        )
        for name in ("a", "b")
    ]
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("doors")
    _quarterly().to_csv(folder / "q.csv", index=False)
    args = ["train", str(folder / "q.csv"), "-f", "y", "--id", "id", "--time", "quarter"]
    assert main([*args, *SMALL, "--distribution", "normal", "--out", str(folder / "run")]) == 0
    # (without seasonal differences, which need a year of rows per series)
    plain = ["--seasonal-difference", "0", "--out", str(folder / "plain")]
    assert main([*args, *SMALL, *plain]) == 0
    return folder


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--paths", "p.csv"], "--paths is for sample paths: give --samples N"),
        (["--seed", "3"], "--seed is for sample paths: give --samples N"),
        (["--covariates", "nope.csv"], "this run reads no covariates"),
    ],
)
def test_forecast_refuses_options_it_would_ignore(run, capsys, extra, message):
    out = run / "f.csv"
    args = ["forecast", str(run / "run"), str(run / "q.csv"), "--horizon", "2", "--out", str(out)]
    assert main([*args, *extra]) == 1
    assert message in capsys.readouterr().err
    assert not out.exists() and not (run / "p.csv").exists()


def test_sampled_forecasts_are_reproducible_without_a_seed(run):
    args = ["forecast", str(run / "run"), str(run / "q.csv"), "--horizon", "3", "--samples", "20"]
    written = []
    for name in ("s1.csv", "s2.csv"):
        assert main([*args, "--out", str(run / name)]) == 0
        written.append(pd.read_csv(run / name))
    pd.testing.assert_frame_equal(written[0], written[1])
    assert main([*args, "--seed", "5", "--out", str(run / "s3.csv")]) == 0
    assert not written[0].equals(pd.read_csv(run / "s3.csv"))


def test_predict_refuses_a_chunk_or_batch_size_below_one(run, capsys):
    args = ["predict", str(run / "run"), str(run / "q.csv"), "--out", str(run / "p.csv")]
    for flag in ("--chunk", "--batch-size"):
        assert main([*args, flag, "0"]) == 1
        assert f"{flag} must be an int >= 1; received 0" in capsys.readouterr().err


def test_evaluate_per_series_refuses_a_file_it_would_not_write_as_named(run, capsys):
    target = run / "scores.parquet"
    args = ["evaluate", str(run / "run"), str(run / "q.csv"), "--tail", "4"]
    assert main([*args, "--per-series", str(target)]) == 1
    assert "--per-series writes CSV" in capsys.readouterr().err
    assert not target.exists()


@pytest.mark.parametrize(
    ("id_column", "time_column", "named"),
    [
        ("predicted_y", "quarter", "--id column 'predicted_y'"),
        ("id", "horizon", "--time column 'horizon'"),
    ],
)
def test_train_refuses_key_columns_named_like_output_columns(
    tmp_path, capsys, id_column, time_column, named
):
    # forecast would write its forecasts over the ids, or 1..H over the times
    _quarterly(id_column, time_column).to_csv(tmp_path / "q.csv", index=False)
    args = ["train", str(tmp_path / "q.csv"), "-f", "y", "--id", id_column, "--time", time_column]
    assert main([*args, *SMALL, "--out", str(tmp_path / "run")]) == 1
    assert f"{named} is named like a column predict and forecast write" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_series_too_short_for_its_own_calendar_forecasts_on_the_runs(run):
    # One row (2004Q4) once stepped by a day, written 2004Q4 three times; two rows a
    # year apart stepped by a year. Both now step on the run's quarters.
    rows = pd.DataFrame(
        {"id": ["one", "two", "two"], "quarter": ["2004Q4", "2003Q1", "2004Q1"], "y": 10.0}
    )
    data = run / "short.csv"
    pd.concat([_quarterly(), rows]).to_csv(data, index=False)
    out = run / "short_forecast.csv"
    args = ["forecast", str(run / "plain"), str(data), "--horizon", "3", "--out", str(out)]
    assert main(args) == 0
    written = pd.read_csv(out)
    stamps = {key: list(group["quarter"]) for key, group in written.groupby("id")}
    assert stamps["one"] == ["2005Q1", "2005Q2", "2005Q3"]
    assert stamps["two"] == ["2004Q2", "2004Q3", "2004Q4"]
    assert stamps["a"] == ["2005Q1", "2005Q2", "2005Q3"]


def test_zone_aware_times_come_back_in_their_zone(tmp_path):
    # A parquet column of Europe/Berlin times was read as UTC and written back naive: an
    # hour off the local time the user reads (the first forecast step looked like the last).
    pytest.importorskip("pyarrow")
    stamps = pd.date_range("2024-01-01", periods=60, freq="D", tz="Europe/Berlin")
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"t": stamps, "y": 5 + np.sin(np.arange(60)) + rng.normal(size=60) * 0.1})
    frame.to_parquet(tmp_path / "zoned.parquet")
    args = ["train", str(tmp_path / "zoned.parquet"), "-f", "y", "--time", "t", *SMALL]
    assert main([*args, "--out", str(tmp_path / "run")]) == 0
    for name in ("f.csv", "f.parquet"):
        forecast = ["forecast", str(tmp_path / "run"), str(tmp_path / "zoned.parquet")]
        assert main([*forecast, "--horizon", "2", "--out", str(tmp_path / name)]) == 0
    written = pd.read_parquet(tmp_path / "f.parquet")["t"]
    assert str(written.dt.tz) == "Europe/Berlin"
    assert list(written) == list(
        pd.date_range("2024-03-01", periods=2, freq="D", tz="Europe/Berlin")
    )
    text = pd.read_csv(tmp_path / "f.csv")["t"]
    assert list(text) == ["2024-03-01 00:00:00+01:00", "2024-03-02 00:00:00+01:00"]


def test_forecast_quiet_prints_nothing(run, capsys):
    out = run / "quiet.csv"
    args = ["forecast", str(run / "run"), str(run / "q.csv"), "--horizon", "2", "--out", str(out)]
    assert main([*args, "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and out.exists()
    assert main([*args, "--samples", "5", "-q"]) == 0
    assert capsys.readouterr().out == ""


def test_a_calendar_feature_that_never_changes_is_refused(run, capsys):
    # --calendar hour on quarterly data added two constant columns without a word
    args = ["train", str(run / "q.csv"), "-f", "y", "--id", "id", "--time", "quarter", *SMALL]
    assert main([*args, "--calendar", "hour", "--out", str(run / "hourly")]) == 1
    assert "calendar feature 'hour' is the same at every time" in capsys.readouterr().err
    assert not (run / "hourly").exists()


def test_a_missing_parquet_engine_names_the_extra_that_installs_it(tmp_path, capsys, monkeypatch):
    # pandas' own ImportError names no module, so the one-line error could not say
    # `pip install 'seqstate[data]'`
    def no_engine(*args, **kwargs):
        raise ImportError("Unable to find a usable engine; tried using: 'pyarrow', 'fastparquet'.")

    monkeypatch.setattr(pd, "read_parquet", no_engine)
    (tmp_path / "d.parquet").write_bytes(b"PAR1")
    assert main(["doctor", str(tmp_path / "d.parquet"), "-f", "y"]) in (0, 1)
    assert (
        main(["train", str(tmp_path / "d.parquet"), "-f", "y", "--out", str(tmp_path / "r")]) == 1
    )
    assert "pip install 'seqstate[data]'" in capsys.readouterr().err
