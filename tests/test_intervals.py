"""Calibrated intervals (recipe/intervals.py): the quantile formula against a plain loop,
monotone levels, calibration on a process with a known error distribution, small samples,
the run-directory entry, and the scores evaluate and backtest report."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqstate.recipe.intervals import (
    FORMAT,
    GRID,
    IntervalTable,
    answer_quantiles,
    check_levels,
    fit_table,
    merge_tables,
    path_quantiles,
    quantiles,
    score_path,
    series_scales,
)
from seqstate.recipe.metrics import CRPS_LEVELS, SCORED_LEVELS, interval_metrics, mase_scale


def _table(steps: int = 4, growth: float = 0.5) -> IntervalTable:
    z = np.linspace(-3.0, 2.5, len(GRID))  # skewed on purpose
    return IntervalTable(
        scale=tuple(0.5 + 0.25 * h for h in range(steps)),
        growth=growth,
        levels=GRID,
        z=tuple(float(v) for v in z),
        season=1,
        windows=10,
        errors=40,
    )


def test_quantiles_equal_the_per_element_formula_and_past_the_table_the_power_law():
    table = _table()
    rng = np.random.default_rng(0)
    point, scale = rng.normal(size=(3, 7)), np.array([1.0, 2.5, 0.1])
    levels = (0.1, 0.5, 0.9, 0.003, 0.999)
    result = quantiles(point, scale, table, levels)
    assert result.shape == (3, 7, 5)
    for i in range(3):
        for h in range(7):
            s = table.scale[h] if h < 4 else table.scale[-1] * ((h + 1) / 4) ** 0.5
            for q, level in enumerate(levels):
                if level in GRID:
                    z = table.z[GRID.index(level)]
                elif level > GRID[-1]:  # Laplace tail from the last two grid points
                    beta = (table.z[-1] - table.z[-2]) / math.log((1 - GRID[-2]) / (1 - GRID[-1]))
                    z = table.z[-1] + beta * math.log((1 - GRID[-1]) / (1 - level))
                else:
                    beta = (table.z[1] - table.z[0]) / math.log(GRID[1] / GRID[0])
                    z = table.z[0] - beta * math.log(GRID[0] / level)
                expected = point[i, h] + scale[i] * s * z
                assert result[i, h, q] == pytest.approx(expected, rel=1e-12, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    levels=st.lists(st.floats(0.0005, 0.9995), min_size=2, max_size=8, unique=True),
    growth=st.floats(0.0, 1.0),
    horizon=st.integers(1, 12),
)
def test_quantiles_are_monotone_in_the_level(levels, growth, horizon):
    table = _table(growth=growth)
    ordered = sorted(levels)
    result = quantiles(np.zeros((2, horizon)), np.array([1.0, 3.0]), table, ordered)
    assert np.all(np.diff(result, axis=-1) >= -1e-12)


def _random_walk_errors(rng, windows: int, steps: int) -> np.ndarray:
    """Errors of the naive forecast of a random walk with Student-t(4) steps, divided by the
    walk's MASE scale E|step|: e[w, h] = (step_1 + ... + step_h) / E|step|."""
    innovations = rng.standard_t(4, size=(windows, steps))
    return np.cumsum(innovations, axis=1) / 1.0  # E|t_4| = 1 exactly


def test_calibrated_on_a_known_process_the_80_and_95_intervals_cover_their_level():
    rng = np.random.default_rng(1)
    steps = 12
    table = fit_table(_random_walk_errors(rng, 400, steps), season=1)
    assert table is not None and table.windows == 400
    fresh = _random_walk_errors(rng, 4000, steps)
    bands = quantiles(np.zeros((1, steps)), np.ones(1), table, (0.025, 0.1, 0.9, 0.975))[0]
    inside_80 = (fresh >= bands[:, 1]) & (fresh <= bands[:, 2])
    inside_95 = (fresh >= bands[:, 0]) & (fresh <= bands[:, 3])
    assert abs(inside_80.mean() - 0.8) < 0.03
    assert abs(inside_95.mean() - 0.95) < 0.02
    # per step too: the width grows with h as the errors do (sqrt(h) for a random walk)
    for h in (0, 5, 11):
        assert abs(inside_80[:, h].mean() - 0.8) < 0.05


def test_one_short_series_with_few_windows_still_gives_calibrated_finite_intervals():
    """Few windows, errors only at the first steps: the power law carries the width on, and
    the conformal correction keeps the coverage at the level on average over many fits."""
    rng = np.random.default_rng(2)
    covered = []
    for _ in range(300):
        errors = _random_walk_errors(rng, 6, 8)
        errors[3:, 4:] = np.nan  # the later origins see fewer steps
        table = fit_table(errors, season=1)
        assert table is not None
        bands = quantiles(np.zeros((1, 8)), np.ones(1), table, (0.1, 0.9))[0]
        assert np.isfinite(bands).all() and np.all(bands[:, 1] > bands[:, 0])
        fresh = _random_walk_errors(rng, 1, 8)[0]
        covered.append(np.mean((fresh >= bands[:, 0]) & (fresh <= bands[:, 1])))
    assert 0.75 <= float(np.mean(covered)) <= 0.9
    # only the first step seen: a random walk's sqrt(h) growth beyond it
    single = fit_table(_random_walk_errors(rng, 30, 1), season=1)
    assert single is not None and single.growth == 0.5
    widths = single.step_scales(4)
    np.testing.assert_allclose(widths, widths[0] * np.sqrt([1, 2, 3, 4]))


def test_the_scale_per_step_is_non_decreasing_and_the_grid_monotone():
    rng = np.random.default_rng(3)
    errors = rng.normal(size=(20, 10)) * np.array([1, 3, 2, 2, 5, 4, 4, 4, 6, 5])
    table = fit_table(errors, season=1)
    assert table is not None
    assert np.all(np.diff(table.scale) >= 0) and np.all(np.diff(table.z) >= 0)
    assert fit_table(np.full((3, 4), np.nan), season=1) is None


def test_the_entry_round_trips_and_another_format_is_ignored():
    table = fit_table(np.random.default_rng(4).normal(size=(10, 5)), season=12)
    assert table is not None
    entry = table.to_dict()
    assert entry["format"] == FORMAT
    assert IntervalTable.from_dict(entry) == table
    assert IntervalTable.from_dict({**entry, "format": "seqstate.intervals/2"}) is None
    merged = merge_tables([table, _table()])
    assert merged is not None and len(merged.scale) == 5
    assert merge_tables([table]) is table and merge_tables([]) is None


def test_series_scales_are_the_mase_scale_with_a_fallback_for_flat_series():
    rng = np.random.default_rng(5)
    histories = [rng.normal(size=40), np.full(30, 2.0), rng.normal(size=50) * 3]
    scales = series_scales(histories, 12)
    assert scales[0] == pytest.approx(mase_scale(histories[0], 12))
    assert scales[2] == pytest.approx(mase_scale(histories[2], 12))
    assert scales[1] == pytest.approx(np.median([scales[0], scales[2]]))


def test_score_path_equals_interval_metrics_of_the_quantiles():
    rng = np.random.default_rng(6)
    table = _table()
    history, path, actual = (
        rng.normal(size=(30, 2)),
        rng.normal(size=(6, 2)),
        rng.normal(size=(6, 2)),
    )
    scores = score_path(actual, path, history, table, season=1)
    bands = path_quantiles(path, history, table, SCORED_LEVELS)
    for o in range(2):
        expected = interval_metrics(
            actual[:, o],
            history[:, o],
            quantiles={level: bands[o, :, q] for q, level in enumerate(SCORED_LEVELS)},
            score_levels=CRPS_LEVELS,
        )
        assert scores[o] == pytest.approx(expected)
        lower, upper = bands[o, :, SCORED_LEVELS.index(0.1)], bands[o, :, SCORED_LEVELS.index(0.9)]
        inside = (actual[:, o] >= lower) & (actual[:, o] <= upper)
        assert scores[o]["coverage_80"] == pytest.approx(inside.mean())


def test_bad_levels_and_shapes_are_refused_with_the_argument_named():
    with pytest.raises(ValueError, match="levels must hold levels strictly between 0 and 1"):
        check_levels([0.1, 1.0])
    with pytest.raises(TypeError, match="levels must be a sequence"):
        check_levels("0.1,0.9")
    with pytest.raises(TypeError, match="numbers"):
        check_levels([0.1, True])
    with pytest.raises(ValueError, match=r"point \[S, H\] and scale \[S\]"):
        quantiles(np.zeros((2, 3)), np.ones(3), _table(), (0.1,))
    with pytest.raises(ValueError, match="errors must be"):
        fit_table(np.zeros(4), season=1)


@pytest.mark.parametrize("season", [1, 4])
def test_the_streamed_scale_is_the_mase_scale_of_the_history_in_any_chunks(season):
    import torch

    from seqstate.recipe.step.history_scale import HistoryScale

    rng = np.random.default_rng(7)
    # the target is input column 1 (column 0 is not a target); a flat history (NaN), a
    # seasonally flat one (the one-step fallback), random ones
    length = 23
    x = rng.normal(size=(4, length, 2)).astype(np.float32)
    x[2, :, 1] = 3.0
    x[3, :, 1] = np.tile(np.float32([1.0, 2.0, 5.0, 3.0]), 6)[:length]
    cell = HistoryScale(season, [1])
    drawn = sorted({*rng.integers(2, length, 4).tolist(), length})
    cases = [
        ([length], [1, season, season + 1, 11, length], drawn),
        (cell.advance, cell.advance_graph),
    ]
    for cuts, advance in itertools.product(*cases):  # the NumPy path and the traced one
        state = {"steps": torch.zeros(4, dtype=torch.int64), **cell.initial_state(4)}
        begin = 0
        for end in cuts:  # chunked == whole: after each chunk, the scale of the prefix
            state = {**state, **advance(state, torch.from_numpy(x[:, begin:end]))}
            state["steps"] = state["steps"] + (end - begin)
            begin = end
            got = cell.scales(state).numpy()[:, 0]
            for row in range(4):
                want = mase_scale(x[row, :end, 1].astype(np.float64), season)
                np.testing.assert_allclose(got[row], want, rtol=1e-12, err_msg=f"{row} {end}")


@pytest.mark.parametrize("season", [1, 4])
def test_one_step_on_rows_and_on_floats_equals_the_torch_step_bit_for_bit(season):
    import torch

    from seqstate.recipe.step.history_scale import HistoryScale
    from seqstate.recipe.step.state import StepTransforms

    rng = np.random.default_rng(11)
    length = 14
    x = rng.normal(size=(3, length, 3)).astype(np.float32)
    x[1, :, 2] = 3.0  # a flat target
    cell = HistoryScale(season, [2, 0])
    # rows that started at different steps: some in their warm-up at the lag, some past it
    state = {"steps": torch.tensor([0, 2, 5]), **cell.initial_state(3)}
    for t in range(length):
        step = torch.from_numpy(x[:, t : t + 1])
        expected = cell.advance_graph(state, step)
        # (the fast paths hold arrays or floats: read as the step's state reads them)
        candidates = {
            "rows": StepTransforms(cell.advance_rows(state, x[:, t])),
            "rows, first given": StepTransforms(
                cell.advance_rows(state, x[:, t], int(state["steps"].min()))
            ),
            "advance": cell.advance(state, step),
        }
        for row in range(3):  # one stream's step on Python floats
            alone = {name: value[row : row + 1] for name, value in state.items()}
            got = StepTransforms(
                cell.advance_single(alone, x[row, t].tolist(), int(state["steps"][row]))
            )
            for name, value in got.items():
                assert torch.equal(value, expected[name][row : row + 1]), (row, t, name)
        for how, got in candidates.items():
            assert set(got) == set(expected)
            for name, value in expected.items():
                assert got[name].dtype == value.dtype and got[name].shape == value.shape
                assert torch.equal(got[name], value), (how, t, name)
        state = {**expected, "steps": state["steps"] + 1}


def test_answer_quantiles_is_quantiles_per_stream_and_target_with_no_width_for_a_flat_history():
    table = _table()
    rng = np.random.default_rng(8)
    point = rng.normal(size=(3, 5, 2))
    scale = np.array([[1.0, 2.0], [0.5, np.nan], [3.0, 0.25]])
    levels = (0.9, 0.1)
    got = answer_quantiles(point, scale, table, levels)
    assert got.shape == (3, 5, 2, 2)
    for b in range(3):
        for o in range(2):
            width = 0.0 if np.isnan(scale[b, o]) else scale[b, o]
            want = quantiles(point[b, :, o][None], [width], table, levels)[0]
            np.testing.assert_allclose(got[b, :, o], want, rtol=1e-12)
    np.testing.assert_allclose(got[1, :, 1, 0], point[1, :, 1])  # flat: the point itself
    one = answer_quantiles(point, scale, table, levels, one_step=True)
    first = quantiles(
        point.reshape(-1, 1), np.repeat(np.nan_to_num(scale), 5, 0).ravel(), table, levels
    )
    np.testing.assert_allclose(one, first.reshape(3, 5, 2, 2))
    with pytest.raises(ValueError, match=r"point \[B, H, O\] and scale \[B, O\]"):
        answer_quantiles(point[0], scale, table, levels)


def _overlapping_errors(rng, tail: int, horizon: int, origins: int = 24) -> np.ndarray:
    """A random walk's naive-forecast errors from ``origins`` rolling origins in a validation
    part ``tail`` steps long (the windows overlap, as calibration's do); NaN past its end."""
    path = np.concatenate([[0.0], np.cumsum(rng.standard_t(4, size=tail))])
    rows = []
    for origin in sorted(set(np.rint(np.linspace(0, tail - 1, origins)).astype(int).tolist())):
        row = np.full(horizon, np.nan)
        seen = min(horizon, tail - origin)
        row[:seen] = path[origin + 1 : origin + 1 + seen] - path[origin]
        rows.append(row)
    return np.array(rows)


def test_overlapping_windows_of_one_series_are_widened_to_their_independent_paths():
    """One series two horizons long: 24 overlapping windows hold a few independent paths, and
    a table that took them as independent under-covers; counted as independent_paths does, the
    coverage is at the level on average over many fits (a known process)."""
    from seqstate.recipe.calibration import independent_paths

    rng = np.random.default_rng(11)
    tail, horizon = 48, 24
    paths = independent_paths([10], [10 + tail], horizon)
    assert paths == pytest.approx(4.0)
    covered: dict[bool, list] = {False: [], True: []}
    for _ in range(150):
        errors = _overlapping_errors(rng, tail, horizon)
        fresh = np.cumsum(rng.standard_t(4, size=horizon))
        for widened in (False, True):
            table = fit_table(errors, season=1, paths=paths if widened else None)
            bands = quantiles(np.zeros((1, horizon)), np.ones(1), table, (0.025, 0.1, 0.9, 0.975))
            low, high = bands[0].T[[0, 1]], bands[0].T[[3, 2]]
            covered[widened].append([np.mean((fresh >= lo) & (fresh <= hi)) for lo, hi in
                                     zip(low, high, strict=True)])  # fmt: skip
    before, after = np.mean(covered[False], axis=0), np.mean(covered[True], axis=0)  # [95, 80]
    assert before[1] < 0.77 and before[0] < 0.93  # the overlap's under-coverage
    assert abs(after[1] - 0.8) < 0.04 and abs(after[0] - 0.95) < 0.025
    assert independent_paths([5, 30], [5, 20], horizon) is None  # no validation rows


def test_t_widening_is_the_student_t_over_the_normal_quantile():
    from seqstate.recipe.intervals import t_widening

    # t_1(0.975) = 12.706, t_2(0.9) = 1.886, t_5(0.975) = 2.571 (tables)
    np.testing.assert_allclose(t_widening([0.975], 1.0), [12.7062 / 1.95996], rtol=1e-3)
    np.testing.assert_allclose(t_widening([0.1, 0.9], 2.0), [1.8856 / 1.28155] * 2, rtol=1e-3)
    np.testing.assert_allclose(t_widening([0.025], 5.0), [2.5706 / 1.95996], rtol=1e-3)
    assert t_widening([0.5], 3.0)[0] == 1.0 and abs(t_widening([0.9], 1e6)[0] - 1) < 1e-4


def _naive_errors_loop(series: list[np.ndarray], season: int, horizon: int) -> np.ndarray:
    """The plain loop naive_errors stands for: every origin o of every series, the seasonal
    naive's forecast of row o + h - 1 (the last season before o, repeated) against the row;
    an error that touches a missing value is left out."""
    totals, counts = np.zeros(horizon), np.zeros(horizon)
    for values in series:
        lag = season if len(values) > season else 1
        scale = mase_scale(values[np.isfinite(values)], lag)
        if not scale > 0:
            continue
        for origin in range(lag, len(values)):
            for step in range(horizon):
                if origin + step < len(values):
                    error = values[origin + step] - values[origin - lag + step % lag]
                    if np.isfinite(error):
                        totals[step] += abs(error) / scale
                        counts[step] += 1
    with np.errstate(invalid="ignore"):
        return np.where(counts > 0, totals / np.maximum(counts, 1), np.nan)


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 40), min_size=1, max_size=4),
    season=st.integers(1, 7),
    horizon=st.integers(1, 12),
    seed=st.integers(0, 2**16),
    missing=st.booleans(),
)
def test_naive_errors_are_the_seasonal_naive_s_scaled_errors_from_every_origin(
    lengths, season, horizon, seed, missing
):
    from types import SimpleNamespace

    from seqstate.recipe.calibration import naive_errors

    rng = np.random.default_rng(seed)
    series = [np.cumsum(rng.normal(size=n)) for n in lengths]
    if missing:  # one missing value in the longest series
        longest = max(series, key=len)
        longest[len(longest) // 2] = np.nan
    got = naive_errors(SimpleNamespace(targets=[s[:, None] for s in series]), season, horizon)
    expected = _naive_errors_loop(series, season, horizon)
    if np.isnan(expected[0]):
        assert got is None
    else:
        assert got is not None
        np.testing.assert_allclose(got, expected, rtol=1e-10, equal_nan=True)


def test_lean_on_naive_weighs_the_naive_as_one_more_path():
    from seqstate.recipe.intervals import lean_on_naive

    scale = np.array([0.5, 0.5, 0.5, 0.5])
    naive = np.array([1.0, 2.0, np.nan, 3.0])  # a step no series reached: the one before
    got = lean_on_naive(scale, np.array([99.0, 9.0, 3.0, 1.0]), naive)
    expected = np.sqrt((np.array([99, 9, 3, 1]) * 0.25 + np.array([1, 4, 4, 9])) / [100, 10, 4, 2])
    np.testing.assert_allclose(got, expected)
    assert np.all(np.diff(got) >= 0)
    # many paths: the validation's own scale; a naive shorter than the table: its last value
    np.testing.assert_allclose(lean_on_naive(scale, np.full(4, 1e9), naive[:1]), scale, rtol=1e-8)
    with pytest.raises(ValueError, match="step_paths"):
        lean_on_naive(scale, np.ones(3), naive)


def _walk_validation_errors(path, before: int, horizon: int, scale: float) -> np.ndarray:
    """``[W, horizon]`` a random walk's last-value forecast errors over ``scale`` from up to 24
    origins spread over ``path[before:]`` (NaN past the path's end): its validation part's."""
    errors = []
    for origin in sorted(set(np.rint(np.linspace(before, len(path) - 1, 24)).astype(int))):
        row = np.full(horizon, np.nan)
        seen = min(horizon, len(path) - origin)
        row[:seen] = (path[origin : origin + seen] - path[origin - 1]) / scale
        errors.append(row)
    return np.array(errors)


def _calm_validation_coverage(calm: float, *, lean: bool, fits: int = 150) -> np.ndarray:
    """[80%, 95%] coverage of one random walk's table fitted on the overlapping windows of a
    validation part whose steps are ``calm`` times as large as the rest of the series' (and
    of the future's), with or without the naive's errors over the whole series."""
    from types import SimpleNamespace

    from seqstate.recipe.calibration import independent_paths, naive_errors

    rng = np.random.default_rng(12)
    before, tail, horizon = 120, 48, 24
    covered = []
    for _ in range(fits):
        steps = rng.standard_t(4, size=before + tail)
        steps[before:] *= calm
        path = np.cumsum(steps)
        scale = float(np.mean(np.abs(np.diff(path))))
        errors = _walk_validation_errors(path, before, horizon, scale)
        naive = naive_errors(SimpleNamespace(targets=[path[:, None]]), 1, horizon)
        paths = independent_paths([before], [len(path)], horizon)
        table = fit_table(errors, 1, paths=paths, naive=naive if lean else None)
        fresh = np.cumsum(rng.standard_t(4, size=horizon)) / scale
        bands = quantiles(np.zeros((1, horizon)), np.ones(1), table, (0.025, 0.1, 0.9, 0.975))[0]
        covered.append(
            [
                np.mean((fresh >= bands[:, 1]) & (fresh <= bands[:, 2])),
                np.mean((fresh >= bands[:, 0]) & (fresh <= bands[:, 3])),
            ]
        )
    return np.mean(covered, axis=0)


def test_a_calm_validation_part_is_widened_by_the_naive_s_history_wide_errors():
    """A random walk whose validation stretch moves a third as much as the rest: its own
    windows give intervals far too narrow; the naive's errors over the whole series, one more
    path among the validation's few at long horizons, widen them a good part of the way. A
    validation part like the rest stays calibrated."""
    calm_before = _calm_validation_coverage(0.3, lean=False)
    calm_after = _calm_validation_coverage(0.3, lean=True)
    assert calm_before[0] < 0.4 and calm_before[1] < 0.6
    assert calm_after[0] > calm_before[0] + 0.1 and calm_after[1] > calm_before[1] + 0.15
    usual = _calm_validation_coverage(1.0, lean=True)
    assert abs(usual[0] - 0.8) < 0.04 and abs(usual[1] - 0.95) < 0.03


@settings(max_examples=60, deadline=None)
@given(
    z=st.lists(st.floats(-5.0, 5.0), min_size=len(GRID), max_size=len(GRID)),
    shift=st.floats(-3.0, 3.0),
)
def test_median_at_zero_clips_each_level_to_its_side_of_the_point(z, shift):
    from seqstate.recipe.intervals import median_at_zero

    values = np.sort(np.asarray(z)) + shift  # any monotone quantiles, any median
    got = median_at_zero(GRID, values)
    for level, before, after in zip(GRID, values, got, strict=True):  # the plain rule
        expected = min(before, 0.0) if level < 0.5 else max(before, 0.0) if level > 0.5 else 0.0
        assert after == expected
    assert np.all(np.diff(got) >= 0) and got[GRID.index(0.5)] == 0.0
    with pytest.raises(ValueError, match="levels"):
        median_at_zero(GRID[:-1], values)


def test_a_biased_forecast_s_median_is_the_point_and_its_bias_stays_in_the_tails():
    """Validation errors of a forecast that under-shoots (a random walk's naive forecast plus
    a constant bias): the 50% quantile of every answer is the point forecast bit for bit (so
    the median's MASE is the point's), the 80% interval leans upwards as the errors did (the
    unbiased table's does not) and the lower side never crosses the point."""
    rng = np.random.default_rng(21)
    errors = _random_walk_errors(rng, 40, 8)
    fair = fit_table(errors, season=1, paths=6.0)
    biased = fit_table(errors + 1.5, season=1, paths=6.0)
    assert fair is not None and biased is not None
    levels = (0.025, 0.1, 0.3, 0.5, 0.7, 0.9, 0.975)
    point = rng.normal(size=(2, 12, 1)) * 100
    bands = answer_quantiles(point, np.array([[2.0], [0.5]]), biased, levels)  # [B, H, O, Q]
    np.testing.assert_array_equal(bands[..., 3], point)
    assert np.all(bands[..., :3] <= point[..., None]) and np.all(bands[..., 4:] >= point[..., None])
    assert np.all(np.diff(bands, axis=-1) >= 0)
    zero, unit = np.zeros((1, 8)), np.ones(1)
    low_fair, high_fair = quantiles(zero, unit, fair, (0.1, 0.9))[0].T
    low, high = quantiles(zero, unit, biased, (0.1, 0.9))[0].T
    assert np.all(high > 1.5 * -low) and np.all(high_fair < 1.5 * -low_fair)  # leans up
    merged = merge_tables([biased, fair])  # an ensemble's members: still the point
    assert merged is not None
    np.testing.assert_array_equal(
        answer_quantiles(point, np.ones((2, 1)), merged, (0.5,))[..., 0], point
    )
    actual = point[..., 0] + rng.normal(size=(2, 12)) * 50
    assert np.mean(np.abs(actual - bands[..., 0, 3])) == np.mean(np.abs(actual - point[..., 0]))


def test_the_skew_is_weighed_by_independent_paths_not_by_overlapping_windows():
    """25 windows that hold few independent paths: their skew (one path's sign) leans on the
    symmetric version as few paths' does; with paths beyond the windows' count, the windows'
    own weight (a table of independent windows) is kept. The errors' median is 0, so the
    widening about it leaves the asymmetry of the 10% / 90% pair as the weight made it."""
    rng = np.random.default_rng(22)
    columns = []
    for _ in range(4):  # per step: 12 small negative, one zero, 12 large positive errors
        column = np.concatenate([-rng.uniform(0.1, 0.5, 12), [0.0], rng.uniform(0.5, 3.0, 12)])
        columns.append(rng.permutation(column))
    errors = np.stack(columns, axis=1)  # [25, 4]
    asymmetry = {}
    for paths in (2.0, 8.0, 1e6):
        table = fit_table(errors, season=1, paths=paths)
        assert table is not None
        low, high = table.standard_quantiles([0.1, 0.9])
        asymmetry[paths] = (high + low) / (high - low)
    assert 0 < asymmetry[2.0] < asymmetry[8.0] < asymmetry[1e6]
    unwidened = fit_table(errors, season=1)
    assert unwidened is not None
    low, high = unwidened.standard_quantiles([0.1, 0.9])
    assert asymmetry[1e6] == pytest.approx((high + low) / (high - low), rel=1e-4)


def _unfloored_table(errors: np.ndarray, paths: float, naive: np.ndarray) -> IntervalTable:
    """The plain rule before the floor and the history's far steps: the table without the
    naive (widened at max(P, 1) degrees of freedom, its steps those the windows reached), its
    scale then leaned on the naive at each step's independent paths."""
    from seqstate.recipe.intervals import lean_on_naive

    plain = fit_table(errors, 1, paths=paths)
    counts = np.isfinite(errors).sum(axis=0)[: len(plain.scale)].astype(np.float64)
    steps = np.arange(1, len(plain.scale) + 1, dtype=np.float64)
    step_paths = np.minimum(counts, paths * (errors.shape[1] / 2) / steps)
    leaned = lean_on_naive(np.asarray(plain.scale), step_paths, naive)
    return dataclasses.replace(plain, scale=tuple(float(s) for s in leaned))


def _short_history_coverage(before: int, tail: int, *, new: bool, fits: int = 200):
    """([80%, 95%] coverage, [80%, 95%] median width) of the tables of one short random walk
    (Student-t(4) steps, ``before + tail`` steps of history, a 24-step horizon) whose
    validation part is ``tail`` steps long, so holds P = tail / 12 independent paths, fitted
    with the naive's errors over its whole history; ``new=False``: :func:`_unfloored_table`."""
    from types import SimpleNamespace

    from seqstate.recipe.calibration import independent_paths, naive_errors

    rng = np.random.default_rng(21)
    horizon = 24
    covered, widths = [], []
    for _ in range(fits):
        path = np.cumsum(rng.standard_t(4, size=before + tail))
        scale = float(np.mean(np.abs(np.diff(path))))
        errors = _walk_validation_errors(path, before, horizon, scale)
        naive = naive_errors(SimpleNamespace(targets=[path[:, None]]), 1, horizon)
        paths = independent_paths([before], [len(path)], horizon)
        if new:
            table = fit_table(errors, 1, paths=paths, naive=naive)
        else:
            table = _unfloored_table(errors, paths, naive)
        fresh = np.cumsum(rng.standard_t(4, size=horizon)) / scale
        bands = quantiles(np.zeros((1, horizon)), np.ones(1), table, (0.025, 0.1, 0.9, 0.975))[0]
        assert np.isfinite(bands).all()
        covered.append(
            [
                np.mean((fresh >= bands[:, 1]) & (fresh <= bands[:, 2])),
                np.mean((fresh >= bands[:, 0]) & (fresh <= bands[:, 3])),
            ]
        )
        widths.append([np.mean(bands[:, 2] - bands[:, 1]), np.mean(bands[:, 3] - bands[:, 0])])
    return np.mean(covered, axis=0), np.median(widths, axis=0)


def test_a_validation_part_shorter_than_the_horizon_is_not_widened_by_a_cauchy():
    """One short random walk, 36 steps of history for a 24-step horizon, its validation part
    a horizon or half one (P = 1 and 0.5): the widening at max(P, 1) degrees of freedom (a
    Cauchy) covers nearly every point with 95% intervals several times too wide; floored at
    three degrees of freedom, the far steps' scale the naive's, the 95% widths are a quarter
    as wide and the coverage nearer its level at P = 1 (0.88 / 0.99). At P = 0.5 it stays on
    the wide side (0.94 / 0.998: the few errors' conformal correction, not the widening)."""
    before, widths_before = _short_history_coverage(24, 12, new=False)
    after, widths_after = _short_history_coverage(24, 12, new=True)
    assert before[0] > 0.95 and before[1] > 0.995  # the Cauchy's over-coverage
    assert 0.8 <= after[0] < 0.9 and 0.95 <= after[1] < 0.993
    assert widths_after[1] < widths_before[1] / 3
    shorter_before, shorter_widths_before = _short_history_coverage(30, 6, new=False)
    shorter, shorter_widths = _short_history_coverage(30, 6, new=True)
    assert shorter_before[0] > 0.95 and shorter_before[1] > 0.995
    assert shorter[0] >= 0.8 and shorter[1] >= 0.95
    assert shorter_widths[1] < shorter_widths_before[1] / 3


def test_steps_no_validation_window_reached_take_the_naive_s_scale():
    """A validation part 3 steps long for a 12-step horizon: its windows reach 3 steps; the
    table's scale carries on to the naive's last step with the naive's errors alone (no
    validation path there), non-decreasing, and past that the growth law."""
    from seqstate.recipe.intervals import lean_on_naive

    errors = np.full((3, 12), np.nan)
    errors[0, :3], errors[1, :2], errors[2, :1] = [1.0, 2.0, 2.5], [0.5, 1.5], [1.2]
    naive = np.array([1.0, 1.3, 1.6, 2.0, 2.2, 3.1, 3.0, 4.0, np.nan, np.nan, np.nan, np.nan])
    table = fit_table(errors, 1, paths=0.5, naive=naive)
    plain = fit_table(errors, 1, paths=0.5)
    assert len(plain.scale) == 3 and len(table.scale) == 8
    step_paths = np.minimum([3.0, 2.0, 1.0], 0.5 * 6 / np.arange(1, 4))
    head = lean_on_naive(np.asarray(plain.scale), step_paths, naive)
    np.testing.assert_allclose(table.scale[:3], head, rtol=1e-12)
    tail = np.maximum.accumulate(np.concatenate([head, [2.0, 2.2, 3.05, 3.05, 4.0]]))[3:]
    np.testing.assert_allclose(table.scale[3:], tail, rtol=1e-12)
    assert table.growth == plain.growth
    far = table.step_scales(16)
    np.testing.assert_allclose(far[8:], table.scale[-1] * (np.arange(9, 17) / 8) ** table.growth)


def test_the_floor_leaves_tables_of_three_or_more_paths_unchanged_bit_for_bit():
    """The widening's floor and the history's far steps act only below :data:`FLOOR_PATHS`
    independent paths (the windows reach every step from two on) and only with the naive's
    errors: with three or more the table equals the rule without them exactly; below, its
    ends are narrower than that rule's, its median still 0 and its levels still in order."""
    from seqstate.recipe.intervals import FLOOR_PATHS

    rng = np.random.default_rng(22)
    horizon = 24
    naive = np.sqrt(np.arange(1, horizon + 1, dtype=np.float64)) * 1.1
    for paths in (3.0, 4.0, 7.5, 40.0, 500.0, 0.25, 1.0, 2.9):
        errors = _overlapping_errors(rng, max(2, int(paths * 12)) if paths < 20 else 240, horizon)
        table = fit_table(errors, 1, paths=paths, naive=naive)
        old = _unfloored_table(errors, paths, naive)
        assert table.paths == paths
        z, old_z = np.asarray(table.z), np.asarray(old.z)
        if paths >= FLOOR_PATHS:
            assert table == old
        else:
            assert z[0] > old_z[0] and z[-1] < old_z[-1]
            assert np.all(np.abs(z) <= np.abs(old_z) + 1e-12)
            assert table.scale[: len(old.scale)] == old.scale
        assert np.all(np.diff(z) >= 0) and z[GRID.index(0.5)] == 0.0


def _draws_loop(errors: np.ndarray, series: np.ndarray) -> np.ndarray:
    """The plain loop independent_draws stands for: per step, the errors over their
    integrated autocorrelation across a series' consecutive windows (about zero, pooled over
    the series, summed up to the first lag that is not positive), between the series that
    reach the step and the windows that do."""
    draws = []
    for h in range(errors.shape[1]):
        columns = [errors[series == g, h] for g in np.unique(series)]
        columns = [np.where(np.isfinite(c), c, 0.0) for c in columns]
        power = sum(float(c @ c) for c in columns)
        time, k = 1.0, 1
        while k < max(len(c) for c in columns):
            rho = sum(float(c[:-k] @ c[k:]) for c in columns if len(c) > k) / power
            if rho <= 0:
                break
            time, k = time + 2 * rho, k + 1
        count = float(np.isfinite(errors[:, h]).sum())
        reach = sum(np.isfinite(errors[series == g, h]).any() for g in np.unique(series))
        draws.append(min(max(count / time, reach), count))
    return np.array(draws)


def test_independent_draws_count_forgetful_errors_and_a_random_walk_s_windows_h_apart():
    """Independent errors are as many draws as windows; a random walk's errors from every
    origin at step h are correlated over h origins (rho_k = (h - k) / h), so about n / h
    draws; a bias every window shares is one draw per series. Equal to the plain loop."""
    from seqstate.recipe.intervals import independent_draws

    rng = np.random.default_rng(31)
    noise = rng.standard_normal((400, 4))
    draws = independent_draws(noise, np.zeros(400, dtype=int))
    assert np.all(draws > 0.75 * 400)
    steps = rng.standard_normal(2000)
    walk = np.array([np.cumsum(steps[o : o + 12]) for o in range(1800)])  # [1800, 12]
    draws = independent_draws(walk, np.zeros(1800, dtype=int))
    np.testing.assert_allclose(draws, 1800 / np.arange(1, 13), rtol=0.35)
    series = np.repeat(np.arange(3), 20)
    biased = 5.0 + 0.01 * rng.standard_normal((60, 5))
    np.testing.assert_allclose(independent_draws(biased, series), 3.0, rtol=1e-3)
    ragged = _overlapping_errors(rng, 30, 12)
    owners = np.zeros(len(ragged), dtype=int)
    owners[::2] = 1
    np.testing.assert_allclose(
        independent_draws(ragged, owners), _draws_loop(ragged, owners), rtol=1e-12
    )
    with pytest.raises(ValueError, match="series"):
        fit_table(noise, 1, paths=4.0, series=np.zeros(3, dtype=int))


def _seasonal_walk_coverage(measured: bool, fits: int = 120) -> np.ndarray:
    """[80%, 95%] coverage of a seasonal random walk's seasonal-naive forecast (one series,
    season 12, 240 steps of history, a 24-step horizon, normal steps), its table fitted as
    calibration does on 24 origins in the last 48 steps with the naive's errors beside them,
    the draws ``measured`` from the errors or the random walk's count P = 4."""
    from types import SimpleNamespace

    from seqstate.recipe.calibration import (
        calibration_horizon,
        independent_paths,
        naive_errors,
    )

    rng = np.random.default_rng(32)
    length, horizon, season, cut = 240, 24, 12, 192
    steps = calibration_horizon(season, [length - cut])
    covered = []
    for _ in range(fits):
        path = np.zeros(length + horizon)
        path[:season] = 3 * rng.standard_normal(season)
        noise = rng.standard_normal(length + horizon)
        for t in range(season, length + horizon):
            path[t] = path[t - season] + noise[t]
        history = path[:length]
        rows = []
        for origin in sorted(set(np.rint(np.linspace(cut, length - 1, 24)).astype(int))):
            seen = min(steps, length - origin)
            point = history[origin - season + np.arange(seen) % season]
            row = np.full(steps, np.nan)
            row[:seen] = (history[origin : origin + seen] - point) / series_scales(
                [history[:origin]], season
            )[0]
            rows.append(row)
        errors = np.array(rows)
        table = fit_table(
            errors,
            season,
            paths=independent_paths([cut], [length], steps),
            naive=naive_errors(SimpleNamespace(targets=[history[:, None]]), season, steps),
            series=np.zeros(len(rows), dtype=int) if measured else None,
        )
        point = history[length - season + np.arange(horizon) % season]
        scale = series_scales([history], season)
        bands = quantiles(point[None], scale, table, (0.025, 0.1, 0.9, 0.975))[0]
        truth = path[length:]
        covered.append(
            [
                np.mean((truth >= bands[:, 1]) & (truth <= bands[:, 2])),
                np.mean((truth >= bands[:, 0]) & (truth <= bands[:, 3])),
            ]
        )
    return np.mean(covered, axis=0)


def test_errors_that_forget_fast_are_widened_by_the_draws_they_hold_not_a_random_walk_s():
    """A seasonal random walk's seasonal-naive errors share no noise across most origins:
    counted as a random walk's P = 4 paths (t_4) its 80% / 95% intervals over-cover (0.88 /
    0.99); at the draws measured from the errors' autocorrelation, within 0.03 of both."""
    worst_case = _seasonal_walk_coverage(measured=False)
    measured = _seasonal_walk_coverage(measured=True)
    assert worst_case[0] > 0.85 and worst_case[1] > 0.98
    assert abs(measured[0] - 0.8) < 0.03 and abs(measured[1] - 0.95) < 0.03
