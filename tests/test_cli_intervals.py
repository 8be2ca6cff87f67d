"""Calibrated intervals on the command line: `train` stores the table, `forecast` and `predict`
write the quantile columns (monotone, named by percentage), `evaluate` and `backtest` score
them, and a run without a table still forecasts."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from seqstate.cli.dispatch import main
from seqstate.recipe.intervals import FORMAT, IntervalTable, quantiles, series_scales
from seqstate.recipe.run_forecaster import load_forecaster
from seqstate.recipe.sources import read_table


def _write(path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for s in range(3):
        walk = 50 + np.cumsum(rng.normal(size=72)) + 5 * np.sin(np.arange(72) * 2 * np.pi / 12)
        months = pd.date_range("2000-01-01", periods=72, freq="MS").strftime("%Y-%m")
        rows.append(pd.DataFrame({"id": f"s{s}", "month": months, "value": walk}))
    pd.concat(rows).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("intervals")
    data = _write(root / "panel.csv")
    run = root / "run"
    assert main(["train", str(data), "--features", "value", "--id", "id", "--time", "month",
                 "--epochs", "2", "--out", str(run), "--quiet"]) == 0  # fmt: skip
    return data, run


def _forecast(run: Path, data: Path, out: Path, *extra: str) -> pd.DataFrame:
    assert main(["forecast", str(run), str(data), "--horizon", "30", "--out", str(out),
                 *extra]) == 0  # fmt: skip
    return pd.read_csv(out)


def test_train_stores_a_versioned_table_and_forecast_writes_monotone_quantiles(trained, tmp_path):
    data, run = trained
    entry = json.loads((run / "model.json").read_text())["metadata"]["intervals"]
    assert entry["format"] == FORMAT and entry["windows"] >= 3
    frame = _forecast(run, data, tmp_path / "f.csv")
    assert list(frame.columns[-3:]) == [
        "predicted_value",
        "predicted_value_q10",
        "predicted_value_q90",
    ]
    assert (frame["predicted_value_q10"] < frame["predicted_value_q90"]).all()
    # wider further out: the table's scale does not shrink with h
    widths = (frame["predicted_value_q90"] - frame["predicted_value_q10"]).to_numpy().reshape(3, 30)
    assert np.all(np.diff(widths, axis=1) >= -1e-9)

    levels = _forecast(run, data, tmp_path / "g.csv", "--quantiles", "0.975,0.025,0.5")
    names = ["predicted_value_q2.5", "predicted_value_q50", "predicted_value_q97.5"]
    assert list(levels.columns[-3:]) == names
    assert np.all(np.diff(levels[names].to_numpy(), axis=1) > 0)
    np.testing.assert_allclose(levels["predicted_value"], frame["predicted_value"])
    # the 50% quantile is the point forecast itself (the median's MASE is the point's)
    np.testing.assert_allclose(levels["predicted_value_q50"], levels["predicted_value"], rtol=1e-7)
    bare = _forecast(run, data, tmp_path / "h.csv", "--quantiles", "none")
    assert not any("_q" in name for name in bare.columns)


def test_the_python_answer_gives_the_same_quantiles_as_the_columns(trained, tmp_path):
    data, run = trained
    frame = _forecast(run, data, tmp_path / "f.csv")
    forecaster = load_forecaster(run)
    table = read_table(
        data, features=["value"], targets=["value"], id_column="id", time_column="month"
    )
    from seqstate.recipe.calendar import future_times

    future = dataclasses.replace(
        table,
        features=[np.full((30, 1), np.nan, dtype=np.float32) for _ in table.features],
        times=[future_times(t, 30) for t in table.times],
    )
    outputs = forecaster.forecast_outputs(table, 30, future)
    upper = np.concatenate([q[:, 0] for q in outputs.quantile(0.9)])
    np.testing.assert_allclose(upper, frame["predicted_value_q90"], rtol=1e-6)
    # the formula: point + MASE scale of the history * s[h] * z(0.9)
    intervals = forecaster.interval_table()
    scale = series_scales([t[:, 0] for t in table.targets], intervals.season)
    point = np.stack([m[:, 0] for m in outputs.mean])
    np.testing.assert_allclose(
        quantiles(point, scale, intervals, (0.9,))[:, :, 0].ravel(), upper, rtol=1e-9
    )


def test_predict_gives_the_quantiles_of_one_step_ahead(trained, tmp_path):
    data, run = trained
    assert main(["predict", str(run), str(data), "--out", str(tmp_path / "p.csv"), "--quiet"]) == 0
    predicted = pd.read_csv(tmp_path / "p.csv")
    assert {"predicted_value_q10", "predicted_value_q90"} <= set(predicted.columns)
    has = predicted["predicted_value"].notna()  # (rows a differencing run cannot predict)
    assert has.sum() > 100 and predicted.loc[~has, "predicted_value_q10"].isna().all()
    assert (
        predicted.loc[has, "predicted_value_q10"] < predicted.loc[has, "predicted_value_q90"]
    ).all()
    # every row is a first step: the offsets of the quantiles from the point are a forecast's
    # at horizon 1 (the same series' scale, the table's first step)
    forecast = _forecast(run, data, tmp_path / "f.csv")
    first = forecast[forecast["horizon"] == 1].reset_index(drop=True)
    for (key, rows), (_, ahead) in zip(
        predicted[has].groupby("id"), first.groupby("id"), strict=True
    ):
        for column in ("predicted_value_q10", "predicted_value_q90"):
            offsets = (rows[column] - rows["predicted_value"]).to_numpy()
            expected = float(ahead[column].iloc[0] - ahead["predicted_value"].iloc[0])
            np.testing.assert_allclose(offsets, expected, rtol=1e-6, err_msg=key)


def test_a_run_without_a_table_still_forecasts_and_says_why_there_are_no_quantiles(
    trained, tmp_path, capsys
):
    data, run = trained
    import shutil

    old = tmp_path / "old"
    shutil.copytree(run, old)
    meta = json.loads((old / "model.json").read_text())
    del meta["metadata"]["intervals"]
    (old / "model.json").write_text(json.dumps(meta))
    capsys.readouterr()
    frame = _forecast(old, data, tmp_path / "f.csv")
    assert not any("_q" in name for name in frame.columns)
    assert "no interval table" in capsys.readouterr().out
    assert load_forecaster(old).interval_table() is None
    later = {**meta["metadata"], "intervals": {"format": "seqstate.intervals/9"}}
    assert IntervalTable.from_dict(later["intervals"]) is None


def test_evaluate_and_backtest_report_coverage_width_and_crps(trained, tmp_path, capsys):
    data, run = trained
    capsys.readouterr()
    assert main(["evaluate", str(run), str(data), "--tail", "12", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    for name in ("coverage_80", "coverage_95", "width_80", "crps", "pinball"):
        assert np.isfinite(summary[f"horizon_{name}"])
    assert 0.0 <= summary["horizon_coverage_80"] <= summary["horizon_coverage_95"] <= 1.0
    assert main(["evaluate", str(run), str(data), "--tail", "12"]) == 0
    assert "coverage" in capsys.readouterr().out
    out = tmp_path / "bt"
    flags = ["--folds", "2", "--horizon", "6", "--epochs", "1", "--out", str(out)]
    assert main(["backtest", str(data), "--features", "value", "--id", "id", "--time", "month",
                 *flags]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "80% interval" in text
    rows = pd.read_csv(out / "backtest.csv")
    assert rows["model_coverage_80"].between(0, 1).all() and (rows["model_width_80"] > 0).all()


def test_streams_stepped_in_chunks_answer_the_forecast_columns_quantiles(trained, tmp_path):
    from seqstate.recipe.run_streams import RunStreams

    data, run = trained
    frame = _forecast(run, data, tmp_path / "f.csv", "--quantiles", "0.9,0.05")
    table = read_table(
        data, features=["value"], targets=["value"], id_column="id", time_column="month"
    )
    streams = RunStreams.from_run(run)
    ids = list(table.ids)
    x = np.stack([np.asarray(f, dtype=np.float32) for f in table.features])  # [n, L, 1]
    seconds = np.stack([np.asarray(t, dtype="datetime64[s]").astype(np.int64) for t in table.times])
    for begin, end in ((0, 1), (1, 13), (13, 40), (40, x.shape[1])):  # chunk by chunk
        streams.step(ids, x[:, begin:end], seconds[:, begin:end], series=ids)
    _, y, bands = streams.forecast_quantiles(ids, 30, levels=(0.9, 0.05))
    assert bands.shape == (3, 30, 1, 2)
    np.testing.assert_allclose(y[:, :, 0].ravel(), frame["predicted_value"], rtol=1e-5)
    for q, column in enumerate(("predicted_value_q90", "predicted_value_q5")):
        np.testing.assert_allclose(bands[:, :, 0, q].ravel(), frame[column], rtol=1e-5)
    # one stream alone answers what it answers beside the others
    _, _, alone = streams.forecast_quantiles(ids[1:2], 30, levels=(0.9, 0.05))
    np.testing.assert_allclose(alone[0], bands[1], rtol=1e-6)
