"""Resolving [scaling] settings, preparing tables, storing the preparation in a run dir."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import pytest

from seqstate.recipe.preparation import (
    Preparation,
    add_arguments,
    flag_settings,
    load,
    member_dirs,
    prepare,
    resolve,
    save,
)
from seqstate.recipe.sources import read_table, split_table


def seasonal_panel(months=72):
    times = pd.date_range("2000-01-01", periods=months, freq="MS")
    rng = np.random.default_rng(0)
    parts = []
    for index, scale in enumerate((1.0, 1e3, 1e5)):
        season = np.sin(2 * np.pi * np.arange(months) / 12)
        value = scale * (10 + 3 * season + 0.1 * rng.standard_normal(months))
        parts.append(pd.DataFrame({"id": index, "month": times, "value": value}))
    return read_table(
        pd.concat(parts, ignore_index=True),
        features=["value"],
        targets=["value"],
        id_column="id",
        time_column="month",
    )


def test_auto_settings_come_from_the_data_and_flags_override_them():
    table = seasonal_panel()
    auto = resolve(table, {})
    assert auto.scaling.method == "series" and auto.scaling.season == 12
    assert auto.calendar == ("month",) and len(auto.reasons) == 2
    forced = resolve(table, {"method": "global", "season": "0", "calendar": "none"})
    assert forced.scaling.method == "global" and forced.scaling.season == 0
    assert forced.calendar == () and forced.reasons == ()
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--scaling", "none", "--transform", "log1p", "--calendar", "hour"])
    assert flag_settings(args) == {"method": "none", "transform": "log1p", "calendar": "hour"}
    with pytest.raises(ValueError, match=r"unknown \[scaling\] setting"):
        resolve(table, {"robust": True})
    with pytest.raises(ValueError, match="season must be an int"):
        resolve(table, {"season": "yearly"})


def test_prepare_splits_after_differencing_and_fits_on_the_training_part(tmp_path):
    table = seasonal_panel()
    preparation = resolve(table, {})
    train, validation, scaling, transformed = prepare(
        table, lambda t: split_table(t, by="time", fraction=0.25), preparation
    )
    assert transformed.lengths.tolist() == [60, 60, 60]  # 12 rows consumed per series
    assert validation is not None and validation.lengths.tolist() == [15, 15, 15]
    assert train.columns.features == ("value", "month_sin", "month_cos")
    for features in train.features:  # every series on the same footing
        assert np.abs(np.median(features[:, 0])) < 1 and np.std(features[:, 0]) < 5
    metadata = save(tmp_path, scaling, preparation)
    loaded, calendar = load(tmp_path, metadata)
    assert calendar == ("month",) and loaded is not None
    np.testing.assert_array_equal(loaded.location, scaling.location)
    assert Preparation.from_dict(metadata["preparation"]).scaling == preparation.scaling
    assert load(tmp_path / "old-run", {}) == (None, ())


def test_member_dirs_list_the_run_then_its_seeds_in_order(tmp_path):
    for seed in (10, 2):
        member = tmp_path / "members" / f"seed-{seed}"
        member.mkdir(parents=True)
        (member / "model.json").write_text("{}")
    (tmp_path / "members" / "stray").mkdir()
    assert member_dirs(tmp_path) == [
        tmp_path,
        tmp_path / "members" / "seed-2",
        tmp_path / "members" / "seed-10",
    ]
