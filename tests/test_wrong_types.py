"""One rule for every argument check: a value of the wrong type raises TypeError, a value of
the right type outside its range raises ValueError; both name the argument."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest

from seqstate.recipe.backtest import backtest
from seqstate.recipe.calendar import future_times
from seqstate.recipe.evaluation import evaluate_forecaster
from seqstate.recipe.evaluation_checks import check_season
from seqstate.recipe.holdout import split_tail
from seqstate.recipe.metrics import seasonal_naive
from seqstate.recipe.sources import read_table
from seqstate.recipe.splits import split_table
from seqstate.recipe.threads import choose_threads
from seqstate.recipe.training import default_settings, seed_settings
from seqstate.train.distributed import init_from_env
from seqstate.train.progress import Every


def _table() -> Any:
    frames = [
        pd.DataFrame({"id": f"s{k}", "t": np.arange(12), "v": np.arange(12.0) * (k + 1)})
        for k in range(2)
    ]
    frame = pd.concat(frames, ignore_index=True)
    return read_table(frame, features=["v"], targets=["v"], id_column="id", time_column="t")


class _Last:
    """A forecaster that repeats the last value (enough to reach the argument checks)."""

    def predict(self, table: Any) -> list[np.ndarray]:
        return [np.asarray(t, dtype=np.float64) for t in table.targets]

    def forecast(self, table: Any, horizon: int, **_: Any) -> list[np.ndarray]:
        return [np.repeat(np.asarray(t)[-1:], horizon, axis=0) for t in table.targets]


def _seeds(value: Any) -> Any:
    settings = default_settings()
    settings["run"]["seeds"] = value
    return seed_settings(settings)


TABLE = _table()

# (call with the argument set to a value, the argument's name, a wrong type, a wrong value)
CHECKS: list[tuple[Callable[[Any], Any], str, Any, Any]] = [
    (lambda v: evaluate_forecaster(_Last(), TABLE, tail=v), "tail", 2.0, 0),
    (lambda v: evaluate_forecaster(_Last(), TABLE, tail=2, horizon=v), "horizon", "2", 0),
    (lambda v: future_times(np.arange(3), v), "horizon", 1.5, 0),
    (lambda v: seasonal_naive([1.0, 2.0], 2, season=v), "season", "12", 0),
    (lambda v: seasonal_naive([1.0, 2.0], v), "horizon", True, -1),
    (lambda v: backtest(TABLE, _Last(), folds=v, horizon=2), "folds", 1.0, 0),
    (lambda v: backtest(TABLE, _Last(), folds=1, horizon=v), "horizon", None, 0),
    (lambda v: check_season(v, TABLE), "season", 12.0, 0),
    (lambda v: split_tail(TABLE, v), "fraction", "0.2", 1.5),
    (lambda v: split_table(TABLE, by="time", fraction=v), "fraction", None, 0.0),
    (lambda v: choose_threads(v), "threads", 2.0, 0),
    (_seeds, "seeds", "3", 0),
    (lambda v: Every(epochs=v), "Every.epochs", 2.5, 0),
    (lambda v: Every(seconds=v), "Every.seconds", "30", -1.0),
    (lambda v: init_from_env(timeout=v), "timeout", "10", 0),
]


@pytest.mark.parametrize(("call", "name", "wrong_type", "wrong_value"), CHECKS)
def test_wrong_type_is_a_type_error_and_wrong_value_a_value_error(
    call: Callable[[Any], Any], name: str, wrong_type: Any, wrong_value: Any
) -> None:
    with pytest.raises(TypeError, match=rf"{name} must be"):
        call(wrong_type)
    with pytest.raises(ValueError, match=rf"{name} must be"):
        call(wrong_value)


def test_onnx_opset_wrong_type_and_wrong_value() -> None:
    pytest.importorskip("onnx")
    from seqstate.core.model import SequenceModel
    from seqstate.interop.onnx import export_onnx

    model = SequenceModel(input_size=1, output_size=1, hidden_size=3)
    with pytest.raises(TypeError, match="opset must be"):
        export_onnx(model, "unused.onnx", opset="18")
    with pytest.raises(ValueError, match="opset must be"):
        export_onnx(model, "unused.onnx", opset=17)
