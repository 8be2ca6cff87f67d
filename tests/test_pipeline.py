"""Table-level predict/forecast through scaling, calendar features and ensembles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from seqstate.core.model import SequenceModel
from seqstate.inference.prediction import forecast
from seqstate.recipe.run_forecaster import (
    RunForecaster,
    RunMember,
    encode_table,
    forecast_table,
    predict_table,
)
from seqstate.recipe.scaling import Scaling, ScalingConfig
from seqstate.recipe.sources import read_table


def panel(ids=("a", "b"), months=40) -> pd.DataFrame:
    times = pd.date_range("2010-01-01", periods=months, freq="MS")
    parts = [
        pd.DataFrame(
            {
                "id": key,
                "month": times,
                "value": (10.0**index) * (5 + np.sin(np.arange(months) / 2.0)),
            }
        )
        for index, key in enumerate(ids)
    ]
    return pd.concat(parts, ignore_index=True)


def table_of(frame):
    return read_table(
        frame, features=["value"], targets=["value"], id_column="id", time_column="month"
    )


def model(seed: int, inputs: int) -> SequenceModel:
    torch.manual_seed(seed)
    return SequenceModel(input_size=inputs, output_size=1, hidden_size=8)


def future_times(table, horizon):
    return [
        pd.date_range(t[-1], periods=horizon + 1, freq="MS")[1:].to_numpy() for t in table.times
    ]


def test_forecast_is_the_decoded_model_forecast_and_ensembles_average():
    table = table_of(panel())
    scaling = Scaling.fit(table, ScalingConfig(season=12))
    members = [model(0, 3), model(1, 3)]
    times = future_times(table, 5)
    result = forecast_table(
        members, table, 5, scaling=scaling, calendar=["month"], future_times=times
    )
    encoded = encode_table(table, scaling, ["month"])
    singles = []
    for member in members:
        covariates = [
            encode_table(
                table_of(pd.DataFrame({"id": key, "month": stamps, "value": 1.0})),
                None,
                ["month"],
            ).features[0][:, 1:]
            for key, stamps in zip(table.ids, times, strict=True)
        ]
        raw = forecast(member, encoded.features, 5, covariates=covariates, target_features=[0])
        singles.append([scaling.decode_forecast(table, i, r) for i, r in enumerate(raw)])
    for index in range(len(table)):
        stacked = np.stack([s[index] for s in singles])
        np.testing.assert_allclose(result.mean[index], stacked.mean(axis=0), rtol=1e-6)
        np.testing.assert_allclose(result.spread[index], stacked.std(axis=0), rtol=1e-5)
        assert result.mean[index].shape == (5, 1)
    one = forecast_table(
        members[:1], table, 5, scaling=scaling, calendar=["month"], future_times=times
    )
    assert np.all(one.spread[0] == 0)


def test_unseen_series_forecast_from_its_own_context():
    scaling = Scaling.fit(table_of(panel(ids=("a",))))
    table = table_of(panel(ids=("a", "new")))
    result = forecast_table([model(0, 1)], table, 3, scaling=scaling)
    # The new series is 10x larger: scaled from its own context, its forecast is ~10x too.
    ratio = np.median(result.mean[1]) / np.median(result.mean[0])
    assert 5 < ratio < 20


def test_predict_rows_align_with_the_table():
    table = table_of(panel())
    scaling = Scaling.fit(table, ScalingConfig(difference=1))
    result = predict_table([model(0, 1)], table, scaling=scaling)
    assert [m.shape for m in result.mean] == [(40, 1), (40, 1)]
    assert np.isnan(result.mean[0][0]).all() and np.isfinite(result.mean[0][1:]).all()


def test_missing_future_inputs_are_named():
    table = table_of(panel())
    with pytest.raises(ValueError, match="need the forecast's future_times"):
        forecast_table([model(0, 3)], table, 2, calendar=["month"])
    with pytest.raises(ValueError, match=r"reads \['month_sin', 'month_cos'\] besides"):
        forecast_table([model(0, 3)], encode_table(table, None, ["month"]), 2)
    with pytest.raises(TypeError, match="models must be a non-empty list"):
        forecast_table([], table, 2)


def test_run_forecaster_reads_covariates_and_times_from_the_future_rows():
    frame = panel(months=46)
    frame["price"] = np.arange(len(frame), dtype=float) % 7
    full = read_table(
        frame,
        features=["value", "price"],
        targets=["value"],
        id_column="id",
        time_column="month",
    )
    history = full.slice_steps(0, 40)
    future = full.slice_steps(40, 46)
    scaling = Scaling.fit(history)
    members = [model(0, 4)]
    forecaster = RunForecaster([RunMember(m, scaling, ("month",)) for m in members])
    result = forecaster.forecast(history, 6, future)
    expected = forecast_table(
        members,
        history,
        6,
        scaling=scaling,
        calendar=["month"],
        future_times=list(future.times),
        covariates=[f[:, 1:2] for f in future.features],
        covariate_names=["price"],
    )
    np.testing.assert_allclose(result, np.stack(expected.mean), rtol=1e-6, atol=1e-6)
    assert result.shape == (2, 6, 1)
    # The price matters: other future prices give another forecast.
    changed = [f.copy() for f in future.features]
    for f in changed:
        f[:, 1] += 100.0
    other = forecast_table(
        members,
        history,
        6,
        scaling=scaling,
        calendar=["month"],
        future_times=list(future.times),
        covariates=[f[:, 1:2] for f in changed],
        covariate_names=["price"],
    )
    assert not np.allclose(np.stack(other.mean)[:, 1:], result[:, 1:])
    with pytest.raises(ValueError, match=r"covariates \['price'\]; pass their future values"):
        forecaster.forecast(history, 6)
