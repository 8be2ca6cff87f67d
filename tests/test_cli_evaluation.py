"""The command line for #14: evaluate --warmup-until, backtest, calendar-stamped forecasts,
progress lines / --quiet, defaults in doctor, on a small monthly panel written "1939 Jan"."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from seqstate.cli.dispatch import main

SMALL = ["--hidden-size", "8", "--epochs", "2"]


def monthly_panel() -> pd.DataFrame:
    """Three monthly series of very different scales, ending in 1944 Dec, written '1939 Jan'."""
    rng = np.random.default_rng(0)
    frames = []
    for k, length in enumerate((72, 60, 66)):
        months = pd.date_range(end="1944-12-01", periods=length, freq="MS")
        level = 10.0 ** (k + 1)
        value = level * (2 + np.sin(np.arange(length) * 2 * np.pi / 12))
        value += rng.normal(scale=0.05 * level, size=length)
        frames.append(
            pd.DataFrame({"id": f"s{k}", "month": months.strftime("%Y %b"), "value": value})
        )
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def panel(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "panel.csv"
    monthly_panel().to_csv(path, index=False)
    return path


DATA = ["-f", "value", "--id", "id", "--time", "month"]


@pytest.fixture(scope="module")
def run(panel, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", str(panel), *DATA, *SMALL, "--quiet", "--out", str(out)]) == 0
    return out


def test_evaluate_warmed_up_on_the_history(run, panel, capsys, tmp_path):
    per_series = tmp_path / "per_series.csv"
    args = ["evaluate", str(run), str(panel), "--warmup-until", "1943 Dec", "--json"]
    assert main([*args, "--per-series", str(per_series)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["series"] == 3 and summary["scored_steps"] == 36
    assert summary["scored_from"] == "1944-01-01" and summary["warmup_to"] == "1943-12-01"
    assert summary["season"] == 12 and summary["horizon"] == 12
    for key in ("one_step_mase", "horizon_mase", "naive_mase", "one_step_smape"):
        assert np.isfinite(summary[key])
    rows = pd.read_csv(per_series)
    assert list(rows["id"]) == ["s0", "s1", "s2"]
    assert main(["evaluate", str(run), str(panel), "--tail", "6", "--horizon", "3"]) == 0
    text = capsys.readouterr().out
    assert "warmed 3 series" in text and "recursive forecast of up to 3 steps" in text


def test_evaluate_without_a_warm_up_says_what_it_did(run, panel, capsys):
    assert main(["evaluate", str(run), str(panel), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert {"one_step_mase", "one_step_smape", "one_step_rmse", "series"} <= set(summary)
    assert main(["evaluate", str(run), str(panel)]) == 0
    assert "from a zero state" in capsys.readouterr().out


def test_evaluate_json_names_the_series_it_skipped(run, panel, capsys, tmp_path):
    # A series that starts after the warm-up point has no history to warm on: the text says it
    # skipped it, and so must the JSON a script reads (it was left out of every count).
    late = pd.DataFrame({"id": "late", "month": ["1944 Mar", "1944 Apr"], "value": [1.0, 2.0]})
    data = tmp_path / "with_late.csv"
    pd.concat([pd.read_csv(panel), late]).to_csv(data, index=False)
    args = ["evaluate", str(run), str(data), "--warmup-until", "1943 Dec", "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["series"] == 3
    assert [entry["id"] for entry in summary["skipped"]] == ["late"]
    assert summary["skipped"][0]["reason"] and summary["series_with_gaps"] == []


def test_evaluate_refuses_a_bad_warm_up_time(run, panel, capsys):
    assert main(["evaluate", str(run), str(panel), "--warmup-until", "soon"]) == 1
    assert "no date format reads" in capsys.readouterr().err


def test_backtest_writes_folds_and_a_plot(panel, tmp_path, capsys):
    out = tmp_path / "bt"
    args = ["backtest", str(panel), *DATA, *SMALL, "--folds", "2", "--horizon", "6"]
    assert main([*args, "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)  # (stdout: the JSON alone)
    assert summary["folds"] == 2 and summary["horizon"] == 6 and summary["series"] == 3
    assert np.isfinite(summary["model_mase"]) and np.isfinite(summary["naive_mase"])
    # the model the folds were forecast with, as train says it, beside the training's lines
    assert "backtest model: selected: " in captured.err
    rows = pd.read_csv(out / "backtest.csv")
    # origins written as the input writes its months, so the rows join it
    assert sorted(set(rows["origin"])) == ["1944 Jan", "1944 Jul"]
    assert len(pd.read_csv(out / "folds.csv")) == 2
    assert (out / "backtest.png").stat().st_size > 1000


def test_forecast_is_stamped_on_the_series_calendar(run, panel, tmp_path):
    out = tmp_path / "forecast.csv"
    assert main(["forecast", str(run), str(panel), "--horizon", "14", "--out", str(out)]) == 0
    written = pd.read_csv(out)
    first = written[written["id"] == "s0"]["month"]
    # Written as the input writes its months ("1939 Jan"), so the forecast joins the actuals.
    expected = pd.date_range("1945-01-01", periods=14, freq="MS").strftime("%Y %b")
    assert list(first) == list(expected)


def test_predict_and_forecast_name_their_columns_alike(run, panel, tmp_path):
    predicted, forecast = tmp_path / "p.csv", tmp_path / "f.csv"
    assert main(["predict", str(run), str(panel), "--out", str(predicted), "--quiet"]) == 0
    assert main(["forecast", str(run), str(panel), "--horizon", "2", "--out", str(forecast)]) == 0
    shared = {"id", "month", "predicted_value"}
    assert shared <= set(pd.read_csv(predicted).columns)
    assert shared <= set(pd.read_csv(forecast).columns)


def test_progress_is_a_line_per_epoch_in_a_log_and_nothing_when_quiet(panel, tmp_path, capsys):
    args = ["train", str(panel), *DATA, *SMALL]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("epoch ")]
    # Two epochs that choose the epoch count on the warm validation tail, two of the refit.
    assert len(lines) == 4 and "val_loss" in lines[0] and "\r" not in captured.err
    assert "refit: training again on every row" in captured.err
    assert "lanes = " in captured.err  # the chosen defaults, with their reasons
    assert "loss.png" in captured.out  # the run summary lists the plot
    assert main([*args, "--quiet", "--out", str(tmp_path / "b")]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_doctor_prints_the_chosen_defaults_and_why(panel, capsys):
    assert main(["doctor", str(panel), *DATA]) == 0
    text = capsys.readouterr().out
    for words in ("lanes =", "window =", "epochs =", "patience =", "chosen:"):
        assert words in text
    assert main(["doctor", str(panel), *DATA, "--lanes", "2"]) == 0
    assert "lanes = 2 (given" in capsys.readouterr().out


def test_backtest_fold_is_what_train_then_forecast_give_on_the_cut_table(panel, tmp_path, capsys):
    """One fold, two seeds: the backtest's forecast (its MAE per series) is the one that
    `seqstate train --seeds 2` on the table cut at the origin, then `seqstate forecast`, give:
    the same [scaling] preparation, defaults, refit and ensemble, the same forecast path."""
    data = pd.read_csv(panel)
    last = data.groupby("id").cumcount(ascending=False) < 6
    history = tmp_path / "history.csv"
    data[~last].to_csv(history, index=False)
    flags = [*DATA, *SMALL, "--seeds", "2", "--calendar", "month"]
    out = tmp_path / "bt"
    args = ["backtest", str(panel), *flags, "--folds", "1", "--horizon", "6", "--quiet"]
    assert main([*args, "--out", str(out), "--json"]) == 0
    backtest_mae = pd.read_csv(out / "backtest.csv").set_index("id")["model_mae"]

    run, written = tmp_path / "run", tmp_path / "forecast.csv"
    assert main(["train", str(history), *flags, "--quiet", "--out", str(run)]) == 0
    assert main(["forecast", str(run), str(history), "--horizon", "6", "--out", str(written)]) == 0
    capsys.readouterr()
    forecast = pd.read_csv(written)
    for key, actual in data[last].groupby("id")["value"]:
        predicted = forecast.loc[forecast["id"] == key, "predicted_value"].to_numpy()
        mae = np.mean(np.abs(actual.to_numpy() - predicted))
        assert mae == pytest.approx(backtest_mae[key], rel=1e-6), key


def test_backtest_scales_each_series_by_default_and_beats_global_scaling(tmp_path, capsys):
    """Five series from 10 to 1e7: the backtest trains with per-series scaling as `train` does
    (and honours --scaling global, which lets the largest series swamp the rest)."""
    rng = np.random.default_rng(0)
    months = pd.date_range("2010-01-01", periods=72, freq="MS")
    parts = []
    for index, scale in enumerate((1.0, 30.0, 1e3, 3e4, 1e6)):
        season = np.sin(2 * np.pi * (np.arange(72) + index) / 12)
        value = scale * (10 + 2 * season + 0.05 * rng.standard_normal(72))
        parts.append(pd.DataFrame({"id": f"s{index}", "month": months, "value": value}))
    path = tmp_path / "scales.csv"
    pd.concat(parts, ignore_index=True).to_csv(path, index=False)
    args = ["backtest", str(path), "-f", "value", "--id", "id", "--time", "month"]
    args += ["--epochs", "8", "--hidden-size", "16", "--lr", "0.01", "--quiet", "--json"]
    args += ["--folds", "1", "--horizon", "6", "--select", "network"]
    scores = {}
    for method in ("auto", "global"):
        assert main([*args, "--scaling", method]) == 0
        scores[method] = json.loads(capsys.readouterr().out)["model_mase"]
    assert scores["auto"] * 3 < scores["global"], scores


def test_evaluate_says_when_the_tail_it_scores_was_trained_on(run, panel, capsys):
    # --warmup-until said so; --tail did not, and --json hid the note (stderr: stdout stays
    # the JSON)
    assert main(["evaluate", str(run), str(panel), "--tail", "6", "--json"]) == 0
    captured = capsys.readouterr()
    json.loads(captured.out)
    assert "--tail 6 scores rows from 1944-07-01: they were seen in training" in captured.err
    args = ["evaluate", str(run), str(panel), "--warmup-until", "1943 Dec", "--json"]
    assert main(args) == 0
    note = capsys.readouterr().err
    assert "and --warmup-until 1943 Dec scores the rows after it: they were seen" in note
