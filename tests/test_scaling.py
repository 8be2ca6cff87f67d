"""Per-series scaling and target transforms: exact inverses, robust statistics, storage."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqstate.recipe.scaling import (
    SCALING_FILE,
    SCALING_JSON,
    Scaling,
    ScalingConfig,
    difference_coefficients,
    forward_transform,
    inverse_transform,
    robust_location_scale,
)
from seqstate.recipe.sources import read_table, split_table

CONFIGS = [
    ScalingConfig(transform=kind, difference=d, season=m)
    for kind in ("none", "log", "log1p")
    for d in (0, 1)
    for m in (0, 2, 4)
]


def reference_transform(values: np.ndarray, config: ScalingConfig) -> np.ndarray:
    """The plain per-step loop: log first, then each difference one after the other."""
    w = {"none": lambda v: v, "log": np.log, "log1p": np.log1p}[config.transform](values)
    for lag in config.lags:
        w = np.array([w[t] - w[t - lag] for t in range(lag, len(w))])
    return w


@settings(max_examples=60, deadline=None)
@given(
    config_index=st.integers(0, len(CONFIGS) - 1),
    values=st.lists(st.floats(0.5, 1e4), min_size=8, max_size=40),
)
def test_transform_matches_reference_and_inverts_exactly(config_index, values):
    config = CONFIGS[config_index]
    raw = np.asarray(values, dtype=np.float64)[:, None]  # [L, 1]
    z = forward_transform(raw, config)
    np.testing.assert_allclose(z, reference_transform(raw, config), rtol=1e-10, atol=1e-9)
    order = config.dropped
    back = inverse_transform(z, raw[:order], config)
    # Integration adds rounding of the series' largest magnitude, not of each value.
    np.testing.assert_allclose(back, raw[order:], rtol=1e-10, atol=1e-12 * np.abs(raw).max())


def test_difference_coefficients_are_the_product_polynomial():
    np.testing.assert_array_equal(difference_coefficients([]), [1.0])
    np.testing.assert_array_equal(difference_coefficients([1]), [1.0, -1.0])
    np.testing.assert_array_equal(difference_coefficients([1, 3]), [1, -1, 0, -1, 1])


def test_robust_statistics_ignore_an_outlier_and_survive_constant_series():
    values = np.r_[np.arange(100.0), 1e9][:, None]
    location, scale = robust_location_scale(values)
    assert location[0] == pytest.approx(50.0)
    assert 20 < scale[0] < 40  # the IQR/1.349 of 0..100, not the outlier's std
    for constant in (7.0, 0.0, -3.0):
        location, scale = robust_location_scale(np.full((10, 1), constant))
        assert location[0] == constant and scale[0] > 0
    # Mostly constant (IQR 0) still gets a scale from the deviations.
    location, scale = robust_location_scale(np.r_[np.zeros(20), 5.0][:, None])
    assert scale[0] > 0


def panel(scales=(1.0, 1e3, 1e6), length=30, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = []
    for index, scale in enumerate(scales):
        t = np.arange(length)
        value = scale * (2.0 + np.sin(t / 3.0) + 0.1 * rng.standard_normal(length))
        parts.append(pd.DataFrame({"id": f"s{index}", "t": t, "value": value}))
    return pd.concat(parts, ignore_index=True)


def read(frame: pd.DataFrame, **kwargs):
    return read_table(
        frame, features=["value"], targets=["value"], id_column="id", time_column="t", **kwargs
    )


def test_per_series_scaling_brings_every_series_to_order_one():
    table = read(panel())
    train, _ = split_table(table, by="time", fraction=0.2)
    scaling = Scaling.fit(train)
    scaled = scaling.scale_table(train)
    for features, targets in zip(scaled.features, scaled.targets, strict=True):
        assert abs(np.median(features)) < 0.5 and 0.3 < np.std(features) < 3
        assert abs(np.median(targets)) < 0.5
    # One global scaling leaves the small series a flat line at the bottom.
    global_scaled = Scaling.fit(train, ScalingConfig(method="global")).scale_table(train)
    assert np.std(global_scaled.features[0]) < 1e-4


def test_statistics_come_from_the_training_part_only():
    table = read(panel())
    train, _ = split_table(table, by="time", fraction=0.5)
    scaling = Scaling.fit(train)
    location, scale = robust_location_scale(train.targets[1].astype(np.float64))
    np.testing.assert_allclose(scaling.location[1], location)
    np.testing.assert_allclose(scaling.scale[1], scale)
    changed = panel()
    changed.loc[(changed.id == "s1") & (changed.t >= 15), "value"] *= 100.0
    train_changed, _ = split_table(read(changed), by="time", fraction=0.5)
    np.testing.assert_array_equal(Scaling.fit(train_changed).location, scaling.location)


def test_unseen_series_is_scaled_from_its_own_context():
    scaling = Scaling.fit(read(panel(scales=(1.0, 10.0))))
    new = read(panel(scales=(1.0, 10.0, 5e4)))  # s2 was never seen
    scaled = scaling.scale_table(new)
    assert not scaling.fitted_on("s2") and scaling.fitted_on("s0")
    location, scale = robust_location_scale(new.targets[2].astype(np.float64))
    np.testing.assert_allclose(
        scaled.features[2][:, 0], (new.features[2][:, 0] - location[0]) / scale[0], rtol=1e-5
    )
    np.testing.assert_array_equal(
        scaled.features[0], scaling.scale_table(new.select([0])).features[0]
    )


@pytest.mark.parametrize("config", [c for c in CONFIGS if c.transform != "log1p"][::2])
def test_perfect_outputs_decode_to_the_true_values(config):
    table = read(panel(length=25))
    scaling = Scaling.fit(table, config)
    encoded = scaling.encode(table)
    for index in range(len(table)):
        # A perfect one-step model outputs, at row t, the encoded target of row t + 1.
        outputs = np.r_[encoded.features[index][1:], np.zeros((1, 1))].astype(np.float64)
        decoded = scaling.decode_predictions(table, index, outputs)
        truth = table.features[index][:, 0].astype(np.float64)
        assert np.isnan(decoded[: config.dropped]).all()
        np.testing.assert_allclose(
            decoded[config.dropped : -1, 0], truth[config.dropped + 1 :], rtol=2e-5
        )
        # A perfect forecast of the last 5 steps from the context before them.
        context = table.slice_steps(0, len(truth) - 5)
        future = encoded.features[index][-5:].astype(np.float64)
        forecast = scaling.decode_forecast(context, index, future)
        np.testing.assert_allclose(forecast[:, 0], truth[-5:], rtol=2e-5)


def test_save_load_round_trip_without_pickle(tmp_path):
    frame = panel()
    frame["id"] = frame["id"].str[1:].astype(int)  # integer ids survive JSON
    table = read(frame)
    scaling = Scaling.fit(table, ScalingConfig(transform="log", difference=1))
    scaling.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([SCALING_FILE, SCALING_JSON])
    document = json.loads((tmp_path / SCALING_JSON).read_text())
    assert document["ids"] == [0, 1, 2]
    # the format name runs saved before the modules moved into folders carry, and still load
    assert document["format"] == "seqstate.scaling/1"
    loaded = Scaling.load(tmp_path)
    assert loaded is not None and loaded.config == scaling.config
    np.testing.assert_array_equal(loaded.location, scaling.location)
    np.testing.assert_array_equal(loaded.scale, scaling.scale)
    assert loaded.fitted_on(1) and loaded.fitted_on("1") and not loaded.fitted_on(5)
    for a, b in zip(loaded.encode(table).features, scaling.encode(table).features, strict=True):
        np.testing.assert_array_equal(a, b)
    assert Scaling.load(tmp_path / "elsewhere") is None


def test_bad_settings_and_data_are_refused_with_named_errors():
    with pytest.raises(ValueError, match="scaling method"):
        ScalingConfig(method="per-series")
    with pytest.raises(ValueError, match="transform"):
        ScalingConfig(transform="sqrt")
    with pytest.raises(ValueError, match="season must be 0"):
        ScalingConfig(season=1)
    with pytest.raises(TypeError, match="difference must be an int"):
        ScalingConfig(difference=True)
    frame = panel()
    frame.loc[3, "value"] = 0.0
    table = read(frame)
    with pytest.raises(ValueError, match=r"needs every target value > 0.*'s0'.*log1p"):
        Scaling.fit(table, ScalingConfig(transform="log")).encode(table)
    with pytest.raises(ValueError, match="uses its first 7"):
        short = read(panel(length=7))
        Scaling.fit(short, ScalingConfig(difference=1, season=6)).encode(short)
    with pytest.raises(ValueError, match="unknown scaling setting"):
        ScalingConfig.from_dict({"method": "series", "robust": True})


def test_a_run_fitted_on_numeric_ids_finds_them_by_their_zero_padded_text():
    # Runs fitted before ids kept their text stored "001" as the number 1; the same file
    # now reads "001", which must still find its series (and text ids stay exact).
    frame = panel(scales=(1.0, 10.0))
    frame["id"] = frame["id"].map({"s0": 1, "s1": 2})
    scaling = Scaling.fit(read(frame))
    assert [scaling.row_of(i) for i in ("001", "2", 1, "2.0")] == [0, 1, 0, 1]
    assert scaling.row_of("003") is None and scaling.row_of("x") is None
    text = Scaling.fit(
        read(panel(scales=(1.0, 10.0)).assign(id=lambda f: f["id"].map({"s0": "01", "s1": "1"})))
    )
    assert [text.row_of("01"), text.row_of("1")] == [0, 1]
