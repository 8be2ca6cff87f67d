"""The rule "this run can forecast" is one function with one message, and every place that
forecasts (the run's forecaster, evaluate's horizon scores, backtest, `seqstate forecast`)
refuses with it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from seqstate.cli.dispatch import main
from seqstate.core.model import SequenceModel
from seqstate.recipe.backtest import backtest
from seqstate.recipe.evaluation import evaluate_forecaster
from seqstate.recipe.forecaster import ModelForecaster, forecast_columns, why_not_forecastable
from seqstate.recipe.sources import read_table


def _frame() -> pd.DataFrame:
    rows = [(f"s{s}", t, np.sin(t / 3 + s), np.cos(t / 5)) for s in range(3) for t in range(30)]
    return pd.DataFrame(rows, columns=["id", "t", "value", "aux"])


def _table(**columns: object):
    options = {"features": ["value", "aux"], "targets": ["value"], "id_column": "id"}
    return read_table(_frame(), time_column="t", **(options | columns))


CANNOT = {
    "shift 2": _table(shift=2),
    "a target that is not an input": _table(features=["aux"]),
}


def test_the_rule_says_why_and_agrees_with_forecast_columns() -> None:
    assert why_not_forecastable(_table().columns) is None
    assert forecast_columns(_table().columns) == ([0], [1])
    shift = why_not_forecastable(CANNOT["shift 2"].columns)
    assert shift is not None and "shift 1" in shift and "shift 2" in shift
    missing = why_not_forecastable(CANNOT["a target that is not an input"].columns)
    assert missing is not None and "['value'] are not inputs" in missing
    for table in CANNOT.values():
        assert forecast_columns(table.columns) is None


@pytest.mark.parametrize("case", list(CANNOT))
def test_every_forecasting_path_refuses_with_the_one_message(case: str) -> None:
    table = CANNOT[case]
    message = why_not_forecastable(table.columns)
    assert message is not None
    torch.manual_seed(0)
    model = SequenceModel(input_size=table.num_features, output_size=1, hidden_size=3).double()
    forecaster = ModelForecaster(model)
    with pytest.raises(ValueError) as refused:
        forecaster.forecast(table, 2, table)
    assert str(refused.value) == message
    with pytest.raises(ValueError) as refused:
        backtest(table, forecaster, folds=1, horizon=2)
    assert message in str(refused.value)
    assert evaluate_forecaster(forecaster, table, tail=3).horizon_note == message


def test_the_forecast_command_refuses_with_the_one_message(tmp_path, capsys) -> None:
    data = tmp_path / "data.csv"
    _frame().to_csv(data, index=False)
    run = tmp_path / "run"
    tiny = ["--lanes", "2", "--window", "8", "--epochs", "1", "--hidden-size", "4"]
    train = ["train", str(data), "-f", "value", "--id", "id", "--time", "t", "--shift", "2"]
    assert main([*train, *tiny, "--no-progress", "--quiet", "--out", str(run)]) == 0
    capsys.readouterr()
    out = tmp_path / "forecast.csv"
    assert main(["forecast", str(run), str(data), "--horizon", "2", "--out", str(out)]) == 1
    message = why_not_forecastable(_table(features=["value"], shift=2).columns)
    assert f"seqstate: error: {message}. Use `seqstate predict` instead" in capsys.readouterr().err
    assert not out.exists()
