"""Per-series metrics against hand-computed values, and the seasonal-naive baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest

from seqstate.recipe.metrics import mean_metrics, seasonal_naive, series_metrics


def test_values_by_hand():
    history = np.array([1.0, 3.0, 2.0, 4.0])  # one-step |diffs| 2, 1, 2 -> scale 5/3
    actual = np.array([5.0, 5.0])
    predicted = np.array([4.0, 7.0])  # errors 1, -2
    m = series_metrics(actual, predicted, history, season=1)
    assert m["mae"] == pytest.approx(1.5)
    assert m["rmse"] == pytest.approx(math.sqrt(2.5))
    assert m["mase"] == pytest.approx(1.5 / (5 / 3))
    assert m["smape"] == pytest.approx(100 * (2 * 1 / 9 + 2 * 2 / 12) / 2)
    assert m["scaled_rmse"] == pytest.approx(math.sqrt(2.5) / np.std(history))


def test_seasonal_scale_and_fallbacks():
    history = np.array([1.0, 5.0, 2.0, 6.0, 3.0, 7.0])  # season 2: |diffs| 1, 1, 1, 1
    m = series_metrics([4.0], [5.0], history, season=2)
    assert m["mase"] == pytest.approx(1.0)
    flat = series_metrics([1.0], [2.0], np.ones(5), season=1)
    assert math.isnan(flat["mase"]) and math.isnan(flat["scaled_rmse"])
    assert series_metrics([0.0], [0.0], np.arange(3.0))["smape"] == 0.0  # 0/0 counts as 0


def test_scale_free_metrics_do_not_change_with_the_unit():
    rng = np.random.default_rng(0)
    history, actual, predicted = rng.normal(size=20), rng.normal(size=6), rng.normal(size=6)
    small = series_metrics(actual, predicted, history, season=4)
    large = series_metrics(actual * 1e6, predicted * 1e6, history * 1e6, season=4)
    for name in ("mase", "smape", "scaled_rmse"):
        assert large[name] == pytest.approx(small[name], rel=1e-9)
    assert large["rmse"] == pytest.approx(small["rmse"] * 1e6)


def test_seasonal_naive_repeats_the_last_season():
    np.testing.assert_array_equal(seasonal_naive([1, 2, 3, 4, 5], 5, season=2), [4, 5, 4, 5, 4])
    np.testing.assert_array_equal(seasonal_naive([1, 2, 3], 2, season=1), [3, 3])
    np.testing.assert_array_equal(seasonal_naive([1, 2], 3, season=12), [2, 2, 2])  # too short
    with pytest.raises(ValueError, match="season must be an int >= 1"):
        seasonal_naive([1.0], 2, season=0)
    with pytest.raises(ValueError, match="history is empty"):
        seasonal_naive([], 2)


def test_means_are_per_series_not_pooled():
    # A series in millions and one in units: the mean MASE weighs them equally.
    rows = [
        series_metrics([2e6], [3e6], [0.0, 1e6], season=1),
        series_metrics([2.0], [2.0], [0.0, 1.0], season=1),
        series_metrics([2.0], [3.0], [1.0, 1.0], season=1),  # constant history: undefined
    ]
    means = mean_metrics(rows)
    assert means["mase"] == pytest.approx(0.5)
    assert means["undefined"] == 1
    assert means["rmse"] == pytest.approx((1e6 + 0 + 1) / 3)


def test_bad_input():
    with pytest.raises(ValueError, match="same length"):
        series_metrics([1.0, 2.0], [1.0], [0.0, 1.0])
    with pytest.raises(ValueError, match="NaN"):
        series_metrics([np.nan], [1.0], [0.0, 1.0])
    with pytest.raises(ValueError, match="actual is empty"):
        series_metrics([], [], [0.0, 1.0])


# --------------------------------------------------------------------------------------------
# Probabilistic forecasts
# --------------------------------------------------------------------------------------------


def _normal_crps(actual: np.ndarray, sd: float) -> np.ndarray:
    """Closed form CRPS of N(0, sd) at ``actual`` (Gneiting and Raftery 2007)."""
    from scipy.stats import norm

    z = actual / sd
    return sd * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z) - 1 / np.sqrt(np.pi))


def test_interval_metrics_against_the_normal_closed_form() -> None:
    pytest.importorskip("scipy")
    from scipy.stats import norm

    from seqstate.recipe.metrics import interval_metrics

    rng = np.random.default_rng(0)
    actual = np.array([-1.5, 0.0, 0.3, 2.0])
    history = np.array([0.0, 2.0, 0.0, 2.0, 0.0])  # MASE scale 2
    draws = rng.standard_normal((40_000, 4))
    from_samples = interval_metrics(actual, history, samples=draws)
    expected = float(np.mean(_normal_crps(actual, 1.0))) / 2.0
    assert from_samples["crps"] == pytest.approx(expected, rel=0.01)
    levels = np.linspace(0.005, 0.995, 199)
    quantiles = {float(q): np.full(4, norm.ppf(q)) for q in levels}
    from_quantiles = interval_metrics(actual, history, quantiles=quantiles)
    assert from_quantiles["crps"] == pytest.approx(expected, rel=0.02)
    assert from_samples["coverage_80"] == 0.5  # -1.5 and 2.0 lie outside +-1.28
    assert from_samples["coverage_95"] == 0.75  # 2.0 lies outside +-1.96
    assert from_samples["width_80"] == pytest.approx(2 * 1.2816 / 2.0, rel=0.02)


def test_crps_from_samples_equals_the_pairwise_definition() -> None:
    from seqstate.recipe.metrics import interval_metrics

    rng = np.random.default_rng(1)
    draws, actual, history = rng.normal(size=(9, 3)), rng.normal(size=3), np.array([0.0, 1.0])
    pairs = np.mean(np.abs(draws[:, None] - draws[None]), axis=(0, 1))
    plain = np.mean(np.abs(draws - actual), axis=0) - 0.5 * pairs
    got = interval_metrics(actual, history, samples=draws)["crps"]
    assert got == pytest.approx(float(np.mean(plain)), rel=1e-12)


def test_pinball_and_coverage_from_quantiles() -> None:
    from seqstate.recipe.metrics import interval_metrics, mean_metrics

    actual, history = np.array([1.0, 5.0]), np.array([0.0, 1.0, 2.0])  # scale 1
    quantiles = {0.1: np.array([0.0, 0.0]), 0.9: np.array([2.0, 2.0])}
    got = interval_metrics(actual, history, quantiles=quantiles)
    # step 0 inside: pinball 0.1*1 and 0.1*1; step 1 above: 0.1*5 and 0.9*3
    assert got["pinball"] == pytest.approx((0.1 + 0.1 + 0.5 + 2.7) / 4)
    assert got["coverage_80"] == 0.5 and got["width_80"] == 2.0
    assert "coverage_95" not in got
    assert mean_metrics([got, {**got, "coverage_80": 1.0}])["coverage_80"] == 0.75
    with pytest.raises(ValueError, match="either samples"):
        interval_metrics(actual, history)


def test_crps_over_chosen_levels_and_the_mase_scale() -> None:
    from seqstate.recipe.metrics import CRPS_LEVELS, interval_metrics, mase_scale

    rng = np.random.default_rng(0)
    history, actual = rng.normal(size=40), rng.normal(size=5)
    quantiles = {q: np.full(5, q - 0.5) for q in (*CRPS_LEVELS, 0.1, 0.9)}
    scored = interval_metrics(actual, history, quantiles=quantiles, score_levels=CRPS_LEVELS)
    only = interval_metrics(actual, history, quantiles={q: quantiles[q] for q in CRPS_LEVELS})
    assert scored["crps"] == pytest.approx(only["crps"])
    assert scored["pinball"] == pytest.approx(only["pinball"])
    assert scored["coverage_80"] == pytest.approx(np.mean((actual >= -0.4) & (actual <= 0.4)))
    assert mase_scale(history, 1) == pytest.approx(np.mean(np.abs(np.diff(history))))
    with pytest.raises(ValueError, match="score_levels"):
        interval_metrics(actual, history, quantiles=quantiles, score_levels=(0.3333,))
