"""A classifier through the command line: `train --task classification` on series whose levels
differ, then `predict` answers what `evaluate` scores (both read the features as the run scaled
them, series by series)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from seqstate.cli import main

QUIET = ["--hidden-size", "8", "--no-progress", "--epochs", "3"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Six series at levels 0, 100, ..., 500: a model reading unscaled features sees each
    series far from the values it was trained on, so scaling matters to every answer."""
    folder = tmp_path_factory.mktemp("classifier")
    rng = np.random.default_rng(0)
    frames = []
    for s in range(6):
        x = rng.normal(size=80) * 50
        label = (np.convolve(x, [1.0, 1.0, 1.0], "same") > 0).astype(int)
        frames.append(
            pd.DataFrame({"id": f"s{s}", "t": np.arange(80), "x": x + 100 * s, "label": label})
        )
    pd.concat(frames, ignore_index=True).to_csv(folder / "labels.csv", index=False)
    code = main(
        [
            "train",
            str(folder / "labels.csv"),
            "--id",
            "id",
            "--time",
            "t",
            "--features",
            "x",
            "--target",
            "label",
            "--task",
            "classification",
            "--out",
            str(folder / "run"),
            "-q",
            *QUIET,
        ]
    )
    assert code == 0
    return folder


def test_predict_answers_what_evaluate_scores(run, capsys):
    data, out = str(run / "labels.csv"), str(run / "predicted.csv")
    assert main(["predict", str(run / "run"), data, "--out", out, "-q"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run / "run"), data, "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    table, predicted = pd.read_csv(data), pd.read_csv(out)
    assert list(predicted.columns) == [
        "id",
        "t",
        "predicted_label",
        "probability_0",
        "probability_1",
    ]
    hits = []
    for series, rows in table.groupby("id", sort=False):
        answer = predicted[predicted["id"] == series]["predicted_label"].to_numpy()
        hits.append(answer[:-1] == rows["label"].to_numpy()[1:])  # row t predicts t + 1
    accuracy = float(np.concatenate(hits).mean())
    assert accuracy == pytest.approx(scored["accuracy"], abs=1e-6)
    probabilities = predicted[["probability_0", "probability_1"]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_evaluate_refuses_forecast_options_for_a_classifier(run, capsys):
    # A classifier is scored on every row from a zero state: --tail and the other options of
    # a forecast score were ignored (exit 0, no per-series file); now they are refused.
    data = str(run / "labels.csv")
    per_series = run / "per_series.csv"
    args = ["evaluate", str(run / "run"), data, "--tail", "5", "--per-series", str(per_series)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "--tail, --per-series: a classification run is scored on every row" in err
    assert not per_series.exists()
