"""Warm-started evaluation and backtests: the right steps warmed, the right steps scored,
and the numbers equal a plain step-by-step reference."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from seqstate.core.model import SequenceModel
from seqstate.recipe.evaluation import (
    ModelForecaster,
    backtest,
    evaluate_forecaster,
    evaluate_forecaster_in_sample,
    evaluate_in_sample,
    evaluate_warm,
    plot_backtest,
)
from seqstate.recipe.metrics import seasonal_naive, series_metrics
from seqstate.recipe.sources import read_table


def panel(lengths=(30, 24, 36), *, covariate=False, seed=0) -> pd.DataFrame:
    """Monthly series ending together in 2009-12, of different scales."""
    rng = np.random.default_rng(seed)
    frames = []
    for k, length in enumerate(lengths):
        months = pd.date_range(end="2009-12-01", periods=length, freq="MS")
        level = 10.0 ** (k + 1)
        value = level * (1 + 0.3 * np.sin(np.arange(length) * 2 * np.pi / 12))
        value = value + rng.normal(scale=0.05 * level, size=length)
        frame = pd.DataFrame({"id": f"s{k}", "month": months.strftime("%Y-%m"), "value": value})
        if covariate:
            frame["cov"] = np.cos(np.arange(length))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def table_of(frame: pd.DataFrame, features=("value",)):
    return read_table(
        frame, features=list(features), targets=["value"], id_column="id", time_column="month"
    )


def model_for(table, seed=0) -> SequenceModel:
    torch.manual_seed(seed)
    model = SequenceModel(
        input_size=table.num_features, output_size=1, hidden_size=6, num_layers=2
    ).double()
    features = np.concatenate(table.features).astype(np.float64)
    targets = np.concatenate(table.targets).astype(np.float64)
    model.set_normalization(features.mean(0), features.std(0), targets.mean(0), targets.std(0))
    return model.eval()


def step_by_step(model, series: np.ndarray, feed_back_from: int | None = None, covariates=None):
    """The plain reference: one step per call, the state carried. From ``feed_back_from`` on,
    the input is the previous output (with the covariate columns from ``covariates``)."""
    outputs, state, x = [], None, None
    with torch.no_grad():
        for t in range(len(series)):
            if feed_back_from is None or t < feed_back_from:
                x = torch.as_tensor(series[t], dtype=torch.float64)
            elif covariates is None:
                x = outputs[-1]
            else:
                x = torch.cat([outputs[-1], torch.as_tensor(covariates[t], dtype=torch.float64)])
            y, state = model(x[None, None], state)
            outputs.append(y[0, 0])
    return torch.stack(outputs).numpy()


class Oracle:
    """Knows the future: predicts the next target exactly, forecasts the actual values."""

    def __init__(self, table):
        self.targets = dict(zip(table.ids, table.targets, strict=True))

    def predict(self, table):
        return [np.vstack([self.targets[i][1:], [[0.0]]]) for i in table.ids]

    def forecast(self, table, horizon, future):
        lengths = table.lengths.tolist()
        return np.stack(
            [self.targets[i][n : n + horizon] for i, n in zip(table.ids, lengths, strict=True)]
        )


class SeasonalNaive:
    """Forecasts like the seasonal-naive baseline, from the history it is given."""

    def __init__(self, season):
        self.season = season

    def predict(self, table):
        return [np.zeros((len(f), 1)) for f in table.features]

    def forecast(self, table, horizon, future):
        return np.stack(
            [seasonal_naive(t[:, 0], horizon, self.season)[:, None] for t in table.targets]
        )


def test_warm_one_step_and_horizon_equal_the_step_by_step_reference():
    table = table_of(panel())
    model = model_for(table)
    result = evaluate_forecaster(ModelForecaster(model), table, warmup_until="2008 Dec")
    assert [r["scored_steps"] for r in result.rows] == [12, 12, 12]
    for row, features, targets in zip(result.rows, table.features, table.targets, strict=True):
        cut = len(features) - 12
        reference = step_by_step(model, features.astype(np.float64))
        expected = series_metrics(
            targets[cut:, 0], reference[cut - 1 : -1, 0], targets[:cut, 0], 12
        )
        for name, value in expected.items():
            assert row[f"one_step_{name}"] == pytest.approx(value, rel=1e-10, abs=1e-12)
        path = step_by_step(model, features.astype(np.float64), feed_back_from=cut)[cut - 1 : -1]
        horizon = series_metrics(targets[cut:, 0], path[:, 0], targets[:cut, 0], 12)
        for name, value in horizon.items():
            assert row[f"horizon_{name}"] == pytest.approx(value, rel=1e-10, abs=1e-12)
        naive = series_metrics(
            targets[cut:, 0], seasonal_naive(targets[:cut, 0], 12, 12), targets[:cut, 0], 12
        )
        assert row["naive_mase"] == pytest.approx(naive["mase"])


def test_warm_state_matters_the_tail_alone_scores_differently():
    # The bug this replaces: scoring a tail file from a zero state.
    table = table_of(panel())
    model = model_for(table)
    forecaster = ModelForecaster(model)
    warm = evaluate_forecaster(forecaster, table, tail=12)
    cold_table = table.slice_steps([len(f) - 13 for f in table.features], table.lengths.tolist())
    cold = evaluate_forecaster(forecaster, cold_table, tail=12)
    assert warm.summary["one_step_rmse"] != pytest.approx(cold.summary["one_step_rmse"])


def test_an_oracle_scores_zero_so_the_indexing_is_right():
    table = table_of(panel())
    result = evaluate_forecaster(Oracle(table), table, warmup_until="2009-06")
    assert result.summary["one_step_mae"] == 0.0
    assert result.summary["horizon_mae"] == 0.0
    assert result.summary["naive_mae"] > 0.0
    assert result.summary["scored_from"] == "2009-07-01"
    assert result.summary["scored_to"] == "2009-12-01"


def test_a_seasonal_naive_forecaster_matches_the_naive_baseline():
    table = table_of(panel())
    result = evaluate_forecaster(SeasonalNaive(12), table, tail=9, horizon=6)
    for row in result.rows:
        assert row["horizon"] == 6
        for name in ("mase", "smape", "mae", "rmse", "scaled_rmse"):
            assert row[f"horizon_{name}"] == pytest.approx(row[f"naive_{name}"])


def test_what_was_warmed_and_scored_is_said():
    table = table_of(panel((30, 5, 36)))
    result = evaluate_forecaster(Oracle(table), table, warmup_until="2009 Sep")
    assert result.skipped == []
    result = evaluate_forecaster(Oracle(table), table, warmup_until="2009 Jul")
    assert [s for s, _ in result.skipped] == ["s1"]  # s1 starts in 2009-08: no history
    text = result.text()
    assert "warmed 2 series" in text and "scored" in text and "skipped 's1'" in text
    assert result.summary["season"] == 12
    assert result.to_dict()["summary"]["series"] == 2
    assert len(result.to_frame()) == 2


def test_known_covariates_come_from_the_table_and_the_answer_is_hidden():
    frame = panel(covariate=True)
    table = table_of(frame, features=("value", "cov"))
    seen = []

    class Check(Oracle):
        def forecast(self, history, horizon, future):
            seen.append(future)
            return super().forecast(history, horizon, future)

    evaluate_forecaster(Check(table), table, tail=4)
    future = seen[0]
    for block, targets, features in zip(
        future.features, future.targets, table.features, strict=True
    ):
        np.testing.assert_array_equal(block[:, 1:], features[-4:, 1:])
        assert np.isnan(block[:, 0]).all() and np.isnan(targets).all()
    assert [len(t) for t in future.times] == [4, 4, 4]


def test_model_forecaster_with_covariates_equals_the_reference():
    table = table_of(panel(covariate=True), features=("value", "cov"))
    model = model_for(table)
    result = evaluate_forecaster(ModelForecaster(model), table, tail=5)
    for row, features, targets in zip(result.rows, table.features, table.targets, strict=True):
        cut = len(features) - 5
        series = features.astype(np.float64)
        path = step_by_step(model, series, feed_back_from=cut, covariates=series[:, 1:])
        expected = series_metrics(targets[cut:, 0], path[cut - 1 : -1, 0], targets[:cut, 0], 12)
        assert row["horizon_rmse"] == pytest.approx(expected["rmse"], rel=1e-10)


def test_no_horizon_when_targets_are_not_inputs():
    frame = panel(covariate=True)
    table = read_table(
        frame, features=["cov"], targets=["value"], id_column="id", time_column="month"
    )
    model = model_for(table)
    result = evaluate_forecaster(ModelForecaster(model), table, tail=3)
    assert result.horizon_note is not None and "horizon_mase" not in result.summary
    assert "not scored" in result.text()


def test_bad_arguments():
    table = table_of(panel())
    oracle = Oracle(table)
    with pytest.raises(ValueError, match="exactly one of warmup_until"):
        evaluate_forecaster(oracle, table)
    with pytest.raises(ValueError, match="exactly one of warmup_until"):
        evaluate_forecaster(oracle, table, warmup_until="2009-01", tail=3)
    with pytest.raises(ValueError, match="tail must be an int >= 1"):
        evaluate_forecaster(oracle, table, tail=0)
    with pytest.raises(ValueError, match="leaves no series"):
        evaluate_forecaster(oracle, table, warmup_until="2020-01")
    with pytest.raises(ValueError, match="no date format"):
        evaluate_forecaster(oracle, table, warmup_until="someday")
    with pytest.raises(ValueError, match="season must be an int"):
        evaluate_forecaster(oracle, table, tail=3, season=0)
    numbered = read_table(pd.DataFrame({"v": np.arange(10.0)}), features=["v"], targets=["v"])
    with pytest.raises(ValueError, match="not a number"):
        evaluate_forecaster(oracle, numbered, warmup_until="2009-01")


def test_backtest_folds_origins_and_training_cuts():
    table = table_of(panel())
    calls = []

    def train(history):
        calls.append(history.lengths.tolist())
        return SeasonalNaive(12)

    result = backtest(table, train, folds=3, horizon=4)
    assert calls == [[18, 12, 24]]  # once, on everything before the first origin
    assert result.origins[0] == [18, 22, 26]
    assert [f["origin_from"] for f in result.folds] == ["2009-01-01", "2009-05-01", "2009-09-01"]
    for fold in result.folds:
        assert fold["model_mase"] == pytest.approx(fold["naive_mase"])
    assert result.summary["model_mase"] == pytest.approx(result.summary["naive_mase"])
    assert "3 fold(s) of 4 step(s)" in result.text()

    calls.clear()
    refitted = backtest(table, train, folds=3, horizon=4, refit=True)
    assert calls == [[18, 12, 24], [22, 16, 28], [26, 20, 32]]
    assert refitted.refit and "refitted" in refitted.text()


def test_backtest_with_a_model_and_a_plot(tmp_path):
    table = table_of(panel())
    model = model_for(table)
    result = backtest(table, ModelForecaster(model), folds=2, horizon=6)
    for row in result.rows:
        assert math.isfinite(row["model_mase"]) and math.isfinite(row["naive_mase"])
    assert plot_backtest(result, table, tmp_path / "backtest.png")
    assert (tmp_path / "backtest.png").stat().st_size > 1000


def test_backtest_skips_short_series_and_refuses_bad_input():
    table = table_of(panel((30, 8, 36)))
    result = backtest(table, Oracle(table), folds=2, horizon=4)
    assert [s for s, _ in result.skipped] == ["s1"]
    with pytest.raises(ValueError, match="no series is long enough"):
        backtest(table, Oracle(table), folds=10, horizon=4)
    with pytest.raises(ValueError, match="refit=True needs model to be a function"):
        backtest(table, Oracle(table), folds=2, horizon=4, refit=True)
    with pytest.raises(TypeError, match="model must be a Forecaster"):
        backtest(table, 3, folds=2, horizon=4)
    with pytest.raises(ValueError, match="folds must be an int >= 1"):
        backtest(table, Oracle(table), folds=0, horizon=4)


def test_in_sample_scores_every_row_from_a_zero_state_and_says_so():
    table = table_of(panel())
    model = model_for(table)
    result = evaluate_forecaster_in_sample(ModelForecaster(model), table)
    assert result.summary["scored_steps"] == int(table.lengths.sum()) - len(table)
    for row, features, targets in zip(result.rows, table.features, table.targets, strict=True):
        reference = step_by_step(model, features.astype(np.float64))
        expected = series_metrics(targets[1:, 0], reference[:-1, 0], targets[:, 0], 12)
        assert row["one_step_rmse"] == pytest.approx(expected["rmse"], rel=1e-10)
    assert "from a zero state" in result.text() and "--warmup-until" in result.text()
    perfect = evaluate_forecaster_in_sample(Oracle(table), table)
    assert perfect.summary["one_step_mae"] == 0.0


def test_rows_without_a_prediction_are_not_scored():
    # A run that differences its targets has no prediction (NaN) for the first rows.
    table = table_of(panel())

    class Differenced(Oracle):
        def predict(self, table):
            outputs = super().predict(table)
            for output in outputs:
                output[:13] = np.nan
            return outputs

    result = evaluate_forecaster_in_sample(Differenced(table), table)
    assert result.summary["one_step_mae"] == 0.0
    warm = evaluate_forecaster(Differenced(table), table, tail=12)
    assert warm.summary["one_step_mae"] == 0.0


def test_train_evaluate_gives_per_series_means_beside_the_pooled_errors():
    """seqstate.evaluate: mae/rmse stay pooled over every scored step; series_mae/series_rmse
    are the mean over series of each series' own errors, equal to a per-series reference
    whatever the lanes and window."""
    from seqstate.inference.prediction import predict
    from seqstate.train import evaluate

    table = table_of(panel())
    model = model_for(table)
    errors = []
    for features, targets in zip(table.features, table.targets, strict=True):
        outputs = predict(model, [features])[0]
        errors.append(outputs[:-1, 0] - targets[1:, 0])  # row t predicts the target at t + 1
    pooled = np.concatenate(errors)
    for lanes, window in ((1, 50), (2, 7)):
        metrics = evaluate(model, table.lanes(lanes=lanes, window=window, segments=False))
        assert metrics["mae"] == pytest.approx(np.mean(np.abs(pooled)), rel=1e-9)
        assert metrics["rmse"] == pytest.approx(np.sqrt(np.mean(pooled**2)), rel=1e-9)
        expected_mae = np.mean([np.mean(np.abs(e)) for e in errors])
        expected_rmse = np.mean([np.sqrt(np.mean(e**2)) for e in errors])
        assert metrics["series_mae"] == pytest.approx(expected_mae, rel=1e-9)
        assert metrics["series_rmse"] == pytest.approx(expected_rmse, rel=1e-9)
    # Series of 24, 30 and 36 steps: pooled, the longest (and largest) one weighs most.
    assert metrics["series_mae"] != pytest.approx(metrics["mae"], rel=1e-3)


def test_the_old_names_still_evaluate_with_a_warning():
    table = table_of(panel())
    oracle = Oracle(table)
    with pytest.warns(DeprecationWarning, match="evaluate_forecaster"):
        old = evaluate_warm(oracle, table, tail=3)
    assert old.summary == evaluate_forecaster(oracle, table, tail=3).summary
    with pytest.warns(DeprecationWarning, match="evaluate_forecaster_in_sample"):
        old = evaluate_in_sample(oracle, table)
    assert old.summary == evaluate_forecaster_in_sample(oracle, table).summary


class NaiveWithIntervals(SeasonalNaive):
    """Seasonal naive with an interval table: a run's ``interval_table()``."""

    def __init__(self, season, intervals):
        super().__init__(season)
        self.intervals = intervals

    def interval_table(self):
        return self.intervals


def _known_table():
    from seqstate.recipe.intervals import fit_table

    errors = np.random.default_rng(7).normal(size=(30, 6)) * np.sqrt(np.arange(1, 7))
    return fit_table(errors, season=12)


def test_evaluate_scores_the_intervals_against_a_per_series_reference():
    from seqstate.recipe.intervals import path_quantiles
    from seqstate.recipe.metrics import CRPS_LEVELS, SCORED_LEVELS, interval_metrics

    table = table_of(panel())
    intervals = _known_table()
    result = evaluate_forecaster(NaiveWithIntervals(12, intervals), table, tail=6)
    for row, targets in zip(result.rows, table.targets, strict=True):
        history, actual = targets[:-6], targets[-6:]
        path = seasonal_naive(history[:, 0], 6, 12)[:, None]
        bands = path_quantiles(path, history, intervals, SCORED_LEVELS)[0]
        expected = interval_metrics(
            actual[:, 0],
            history[:, 0],
            quantiles={q: bands[:, k] for k, q in enumerate(SCORED_LEVELS)},
            season=12,
            score_levels=CRPS_LEVELS,
        )
        for name, value in expected.items():
            assert row[f"horizon_{name}"] == pytest.approx(value)
    rows = result.rows
    assert result.summary["horizon_coverage_80"] == pytest.approx(
        np.mean([r["horizon_coverage_80"] for r in rows])
    )
    assert "coverage" in result.text()
    # a forecaster without a table is scored as before: no interval columns
    plain = evaluate_forecaster(SeasonalNaive(12), table, tail=6)
    assert "horizon_coverage_80" not in plain.rows[0] and "coverage" not in plain.text()


def test_backtest_keeps_the_bands_and_draws_them(tmp_path):
    from seqstate.recipe.backtest import PLOTTED_LEVELS
    from seqstate.recipe.intervals import path_quantiles

    table = table_of(panel())
    intervals = _known_table()
    result = backtest(table, NaiveWithIntervals(12, intervals), folds=2, horizon=4)
    origin = result.origins[0][1]
    history = table.targets[0][:origin]
    expected = path_quantiles(result.forecasts[(1, 0)][0], history, intervals, PLOTTED_LEVELS)
    np.testing.assert_allclose(result.bands[(1, 0)], expected)
    assert all(0.0 <= r["model_coverage_95"] <= 1.0 for r in result.rows)
    assert "80% interval" in result.text()
    assert plot_backtest(result, table, tmp_path / "backtest.png")


def test_warmup_until_of_another_kind_than_the_dates_is_a_type_error_naming_it():
    table = table_of(panel())
    forecaster = ModelForecaster(model_for(table))
    with pytest.raises(TypeError, match="warmup_until must be a date"):
        evaluate_forecaster(forecaster, table, warmup_until=1.5)
    dated = evaluate_forecaster(forecaster, table, warmup_until=pd.Timestamp("2008-12-01"))
    assert [r["scored_steps"] for r in dated.rows] == [12, 12, 12]


def test_time_ranges_compare_times_not_their_text():
    # numeric times: 9 comes before 10 (as text "10" < "9")
    frame = pd.DataFrame(
        {
            "id": ["a"] * 60 + ["c"] * 15,
            "t": list(range(60)) + list(range(15)),
            "value": np.sin(np.arange(75) / 3.0) + 2.0,
        }
    )
    table = read_table(
        frame, features=["value"], targets=["value"], id_column="id", time_column="t"
    )
    result = backtest(table, Oracle(table), folds=2, horizon=3)
    assert (result.folds[0]["origin_from"], result.folds[0]["origin_to"]) == ("9", "54")
    scored = evaluate_forecaster(Oracle(table), table, tail=5)
    assert (scored.summary["scored_from"], scored.summary["scored_to"]) == ("10", "59")


def test_a_backtest_without_any_mase_gives_no_verdict_and_says_why():
    frame = pd.DataFrame(
        {
            "id": "k",
            "month": pd.date_range("2001-01", periods=40, freq="MS").strftime("%Y-%m"),
            "value": 5.0,
        }
    )
    table = table_of(frame)
    text = backtest(table, Oracle(table), folds=2, horizon=3).text()
    assert "no verdict against seasonal naive" in text and "does not beat" not in text
    assert "MASE is undefined for 1 series' target(s)" in text


def test_a_tail_longer_than_every_series_says_to_shorten_it():
    table = table_of(panel((30, 12, 20)))
    with pytest.raises(
        ValueError, match=r"tail=40 .* Use a tail shorter than the longest series \(30"
    ):
        evaluate_forecaster(Oracle(table), table, tail=40)
    result = evaluate_forecaster(Oracle(table), table, tail=15)
    assert ("s1", "only 0 step(s) to warm up on (it has 12 steps; a tail under 12 scores it)") in [
        (str(i), why) for i, why in result.skipped
    ]


def test_series_with_gaps_in_time_are_named_in_evaluate_and_backtest():
    frame = panel((36, 36))
    frame = frame.drop(index=frame.index[(frame["id"] == "s0")][10])  # one month of s0 missing
    table = table_of(frame)
    scored = evaluate_forecaster(Oracle(table), table, tail=6)
    folds = backtest(table, Oracle(table), folds=2, horizon=3)
    for result in (scored, folds):
        assert result.gaps == ("s0",) and result.to_dict()["series_with_gaps"] == ["s0"]
        assert "1 series have gaps in time ('s0')" in result.text()
    whole = table_of(panel((36, 36)))
    assert "gaps in time" not in evaluate_forecaster(Oracle(whole), whole, tail=6).text()


def test_a_season_longer_than_the_warm_up_says_naive_repeats_the_last_value():
    # seasonal naive falls back to the last value where the warm-up is shorter than the
    # season; the text printed "seasonal naive (season 100)" as if it had not
    table = table_of(panel((36, 36)))
    long = evaluate_forecaster(Oracle(table), table, tail=6, season=100)
    assert long.summary["naive_short_series"] == 2
    assert "2 series warmed on fewer steps than the season (100)" in long.text()
    usual = evaluate_forecaster(Oracle(table), table, tail=6, season=12)
    assert usual.summary["naive_short_series"] == 0 and "fewer steps" not in usual.text()
