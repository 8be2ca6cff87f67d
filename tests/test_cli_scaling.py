"""#13 through the command line: per-series scaling by default, transforms, calendar features,
unseen series, ensembles of seeds, threads."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from seqstate.cli.dispatch import main
from seqstate.core.saved import read_model_json
from seqstate.recipe.preparation import member_dirs
from seqstate.recipe.run_forecaster import forecast_table, load_forecaster
from seqstate.recipe.scaling import Scaling
from seqstate.recipe.sources import read_table


def panel_csv(tmp_path, scales=(1.0, 30.0, 1e3, 3e4, 1e6), months=72, name="panel.csv"):
    rng = np.random.default_rng(0)
    times = pd.date_range("2010-01-01", periods=months, freq="MS")
    parts = []
    for index, scale in enumerate(scales):
        season = np.sin(2 * np.pi * (np.arange(months) + index) / 12)
        value = scale * (10 + 2 * season + 0.05 * rng.standard_normal(months))
        parts.append(pd.DataFrame({"id": f"s{index}", "month": times, "value": value}))
    path = tmp_path / name
    pd.concat(parts, ignore_index=True).to_csv(path, index=False)
    return path


def train(data, out, *extra):
    args = ["train", str(data), "-f", "value", "--id", "id", "--time", "month"]
    args += ["--epochs", "8", "--hidden-size", "16", "--lr", "0.01", "--no-progress"]
    # These tests are about the network's scaling: no blend with the baselines (selection).
    args += ["--select", "network"]
    assert main([*args, "--out", str(out), *extra]) == 0


def forecast_error(run, history, truth, tmp_path, name) -> float:
    out = tmp_path / f"{name}.csv"
    args = ["forecast", str(run), str(history), "--horizon", "6", "--out", str(out)]
    assert main(args) == 0
    written = pd.read_csv(out)
    errors = []
    for key, group in truth.groupby("id"):
        predicted = written.loc[written["id"] == key, "predicted_value"].to_numpy()
        actual = group["value"].to_numpy()
        errors.append(np.mean(np.abs(predicted - actual)) / np.mean(np.abs(actual)))
    return float(np.mean(errors))  # relative error, each series counted the same


@pytest.fixture(scope="module")
def panel(tmp_path_factory):
    root = tmp_path_factory.mktemp("panel")
    data = pd.read_csv(panel_csv(root))
    last = data.groupby("id")["month"].transform(lambda m: m >= sorted(m)[-6])
    history, truth = root / "history.csv", data[last]
    data[~last].to_csv(history, index=False)
    return root, history, truth


@pytest.fixture(scope="module")
def runs(panel):
    """The panel's runs with per-series and with global scaling (each test may need them,
    whatever ran before it)."""
    root, history, _ = panel
    train(history, root / "series")
    train(history, root / "global", "--scaling", "global")
    return root


def test_per_series_scaling_beats_global_on_a_panel_of_very_different_scales(panel, runs):
    root, history, truth = panel
    series = forecast_error(root / "series", history, truth, root, "series")
    pooled = forecast_error(root / "global", history, truth, root, "global")
    assert series < 0.1 and series * 3 < pooled, (series, pooled)
    metadata = read_model_json(root / "series")["metadata"]["preparation"]
    assert metadata["scaling"]["method"] == "series" and metadata["scaling"]["season"] == 12
    assert metadata["calendar"] == ["month"] and len(metadata["reasons"]) == 2


def test_an_unseen_series_is_scaled_from_its_own_context(panel, runs, tmp_path):
    root, history, _ = panel
    frame = pd.read_csv(history)
    new = frame[frame["id"] == "s2"].assign(id="new", value=lambda f: f["value"] * 50.0)
    both = tmp_path / "both.csv"
    pd.concat([frame[frame["id"] == "s2"], new]).to_csv(both, index=False)
    out = tmp_path / "f.csv"
    assert (
        main(["forecast", str(root / "series"), str(both), "--horizon", "3", "-o", str(out)]) == 0
    )
    written = pd.read_csv(out)
    old = written.loc[written["id"] == "s2", "predicted_value"].to_numpy()
    unseen = written.loc[written["id"] == "new", "predicted_value"].to_numpy()
    # Same shape at its own scale; not exact: s2's statistics come from its training rows
    # (before the validation tail), the new series' from its whole context.
    np.testing.assert_allclose(unseen, 50.0 * old, rtol=5e-3)
    assert not Scaling.load(root / "series").fitted_on("new")


def test_transforms_from_flags_round_trip_through_predict(tmp_path):
    data = panel_csv(tmp_path, scales=(1.0, 1e3), months=48)
    run = tmp_path / "run"
    train(
        data,
        run,
        "--transform",
        "log",
        "--difference",
        "1",
        "--seasonal-difference",
        "0",
        "--calendar",
        "none",
    )
    preparation = read_model_json(run)["metadata"]["preparation"]
    assert preparation["scaling"] == {
        "method": "series",
        "transform": "log",
        "difference": 1,
        "season": 0,
    }
    assert preparation["calendar"] == []
    out = tmp_path / "p.csv"
    assert main(["predict", str(run), str(data), "--out", str(out), "--no-progress"]) == 0
    written = pd.read_csv(out)
    first = written[written["id"] == "s1"]["predicted_value"].to_numpy()
    assert np.isnan(first[0]) and np.isfinite(first[1:]).all()
    actual = pd.read_csv(data).query("id == 's1'")["value"].to_numpy()
    # One step ahead in raw units: close to the next actual value.
    assert np.median(np.abs(first[1:-1] - actual[2:]) / actual[2:]) < 0.1


def test_seeds_train_an_ensemble_and_forecasts_average_it(panel, tmp_path, capsys):
    _, history, _ = panel
    run = tmp_path / "ensemble"
    train(history, run, "--seeds", "2", "--seed", "5", "--epochs", "2")
    printed = capsys.readouterr().out
    assert "ensemble of 2 seeds" in printed and "spread (std)" in printed
    assert member_dirs(run) == [run, run / "members" / "seed-6"]
    out = tmp_path / "f.csv"
    args = ["forecast", str(run), str(history), "--horizon", "3", "--out", str(out)]
    assert main(args) == 0
    written = pd.read_csv(out)
    assert {"predicted_value", "predicted_value_spread"} <= set(written.columns)
    # Each member alone, on the stamps the command wrote: the columns are their mean and std.
    table = read_table(
        history, features=["value"], targets=["value"], id_column="id", time_column="month"
    )
    stamps = [
        pd.to_datetime(written.loc[written["id"] == key, "month"]).to_numpy() for key in table.ids
    ]
    singles = []
    for member in load_forecaster(run).members:
        alone = forecast_table(
            [member.model],
            table,
            3,
            scaling=member.scaling,
            calendar=member.calendar,
            future_times=stamps,
        )
        singles.append(np.concatenate([m[:, 0] for m in alone.mean]))
    np.testing.assert_allclose(written["predicted_value"], np.mean(singles, axis=0), rtol=1e-5)
    np.testing.assert_allclose(
        written["predicted_value_spread"], np.std(singles, axis=0), rtol=1e-4, atol=1e-6
    )
    assert (written["predicted_value_spread"] > 0).all()


def test_threads_flag_sets_torch_threads(tmp_path):
    data = panel_csv(tmp_path, scales=(1.0, 2.0), months=30)
    before = torch.get_num_threads()
    try:
        train(data, tmp_path / "two", "--threads", "2", "--epochs", "1")
        assert torch.get_num_threads() == 2
        train(data, tmp_path / "auto", "--epochs", "1")
        assert torch.get_num_threads() == 1  # auto: a small model gets one thread
    finally:
        torch.set_num_threads(before)


def test_bad_scaling_flags_are_refused_before_training(tmp_path, capsys):
    data = panel_csv(tmp_path, scales=(1.0,), months=30)
    out = tmp_path / "run"
    assert main(["train", str(data), "-f", "value", "--threads", "many", "--out", str(out)]) == 1
    assert "--threads must be 'auto' or an int >= 1" in capsys.readouterr().err
    assert main(["train", str(data), "-f", "value", "--calendar", "moon", "--out", str(out)]) == 1
    assert "unknown calendar feature(s) ['moon']" in capsys.readouterr().err
    assert main(["train", str(data), "-f", "value", "--seeds", "0", "--out", str(out)]) == 1
    assert "--seeds (or [run] seeds in --config) must be an int >= 1" in capsys.readouterr().err
    assert not out.exists()


def test_doctor_prints_the_chosen_scaling_and_why(panel, capsys):
    _, history, _ = panel
    args = ["doctor", str(history), "-f", "value", "--id", "id", "--time", "month"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "per series (5 series" in text and "differences at lag 12" in text
    assert "Threads" in text
    json.dumps(text)


def test_the_automatic_calendar_leaves_out_features_the_table_already_has(tmp_path, capsys):
    """A table with its own month_sin/month_cos (the demo's elnino.csv): the automatic calendar
    does not add them a second time (that clash failed doctor and train), and says so; asked
    for by name it is still refused as a clash."""
    data = panel_csv(tmp_path, scales=(1.0, 2.0))
    frame = pd.read_csv(data)
    angle = 2 * np.pi * (pd.to_datetime(frame["month"]).dt.month - 1) / 12
    frame = frame.assign(month_sin=np.sin(angle), month_cos=np.cos(angle))
    frame.to_csv(data, index=False)
    columns = ["--features", "value,month_sin,month_cos", "--targets", "value"]
    columns += ["--id", "id", "--time", "month"]
    assert main(["doctor", str(data), *columns]) == 0
    text = capsys.readouterr().out
    assert "calendar: ['month'] left out (the table already has its columns" in text
    assert main(["doctor", str(data), *columns, "--calendar", "month"]) == 1
    assert "already has feature column(s) ['month_sin', 'month_cos']" in capsys.readouterr().out
    run = tmp_path / "run"
    assert main(["train", str(data), *columns, "--epochs", "1", "--quiet", "--out", str(run)]) == 0
    assert read_model_json(run)["model"]["input_size"] == 3  # its own three columns only


def test_doctor_on_business_hours_names_their_seasons_and_finds_no_gaps(tmp_path, capsys):
    """Hours kept to 09:00-16:00 on weekdays are the data's calendar, not gaps in an hourly
    grid: doctor names a day of 8 steps and a week of 40, and advises no resampling."""
    stamps = pd.date_range("2024-03-04", periods=24 * 7 * 8, freq="h")
    stamps = stamps[(stamps.day_of_week < 5) & (stamps.hour >= 9) & (stamps.hour < 17)]
    value = 10 + np.sin(2 * np.pi * (stamps.hour.to_numpy() - 9) / 8)
    data = tmp_path / "shop.csv"
    pd.DataFrame({"time": stamps, "value": value}).to_csv(data, index=False)
    assert main(["doctor", str(data), "-f", "value", "--time", "time"]) == 0
    text = capsys.readouterr().out
    assert "hours, 40 a week (h), seasons 8 and 40" in text
    assert "gaps" not in text
