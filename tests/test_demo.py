"""`seqstate demo --quick`: it runs, writes its files, and the stateful model wins."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from seqstate.cli.demo import memory_task
from seqstate.cli.dispatch import main
from seqstate.core.saved import load_model, read_model_json


def test_memory_task_labels_follow_the_last_marker():
    sequences, labels = memory_task(3, 100, window=8, seed=0)
    for x, y in zip(sequences, labels, strict=True):
        assert x.shape == (100, 2) and y.shape == (100,)
        markers = np.flatnonzero(x[:, 0])
        assert markers[0] == 0
        gaps = np.diff(markers)
        assert (gaps >= 24).all() and (gaps <= 48).all()  # 3 to 6 windows apart
        sign = np.sign(x[markers, 0])
        expected = np.repeat(sign > 0, np.diff(np.append(markers, 100)))
        np.testing.assert_array_equal(y, expected)
    again, _ = memory_task(3, 100, window=8, seed=0)
    np.testing.assert_array_equal(again[0], sequences[0])


def test_quick_demo_writes_its_files_and_state_wins(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "stateful" in printed and "stateless" in printed and "chance" in printed
    for name in ("memory.png", "elnino.png", "elnino.csv", "summary.json", "panel.png"):
        assert (out / name).stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    memory = summary["memory"]
    # Deterministic (seed 0): the carried state solves the task, a window alone cannot.
    assert memory["stateful"] >= 0.9
    assert memory["stateless"] <= 0.75
    assert memory["stateful"] - memory["stateless"] >= 0.2
    assert memory["stateless"] < memory["chance"] + 0.2
    series = summary["elnino"]
    assert np.isfinite(series["one_step_rmse"]) and np.isfinite(series["forecast_rmse"])
    # The El Niño run is a complete run directory that `seqstate predict` can use.
    load_model(out / "elnino")
    assert read_model_json(out / "elnino")["metadata"]["data"]["columns"]["time"] == "month"
    # The panel part (deterministic, seed 0): per-series scaling of lag-1 differences beats
    # the naive last value on the backtest and one global scaling by far, the summary says so
    # in words, and its run forecasts from the command line with the scaling it was trained
    # with.
    panel = summary["panel"]
    assert panel["series"] == 12 and panel["folds"] == 3
    assert panel["mase_differences"] < panel["mase_naive"]
    assert panel["mase_differences"] * 3 < panel["mase_global"]
    assert "lag-1 differences: beats the last value on the mean" in printed
    forecasts = tmp_path / "panel.csv"
    args = ["forecast", str(out / "panel"), str(out / "macro.csv"), "--horizon", "4"]
    assert main([*args, "--out", str(forecasts)]) == 0
    assert len(pd.read_csv(forecasts)) == 12 * 4
    predictions = tmp_path / "p.csv"
    args = ["predict", str(out / "elnino"), str(out / "elnino.csv"), "--out", str(predictions)]
    assert main(args) == 0
    assert predictions.stat().st_size > 0
