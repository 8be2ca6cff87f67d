"""Tests of the State containers."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save as safetensors_save

from seqstate.state import RNNState, State


def test_empty_rows_are_allowed() -> None:
    """Regression: ``[]`` became a float32 tensor and was rejected as "not an integer index"."""
    state = RNNState(torch.arange(24, dtype=torch.float64).view(2, 4, 3))
    assert state.reset_rows([]).equal(state)
    assert state.select([]).batch_size == 0
    assert state.scatter([], state.select([])).equal(state)


def test_scatter_rejects_duplicate_rows() -> None:
    """Regression: duplicates were accepted and the winner depended on index_copy's order."""
    state = RNNState(torch.arange(24, dtype=torch.float64).view(2, 4, 3))
    with pytest.raises(ValueError, match=r"rows must not repeat a row.*\[1\]"):
        state.scatter([1, -3], RNNState.zeros(2, 2, 3, dtype=torch.float64))


def _blob(tensors: dict[str, torch.Tensor], meta: object) -> bytes:
    return safetensors_save(tensors, metadata={"seqstate": json.dumps(meta)})


GOOD_META = {"format": "seqstate.state/1", "type": "GRUState"}
ONE = {"hidden": torch.zeros(1, 2, 3)}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(_blob(ONE, [1, 2]), r"not a serialised seqstate", id="meta-list"),
        pytest.param(_blob(ONE, "GRUState"), r"not a serialised seqstate", id="meta-string"),
        pytest.param(_blob(ONE, {**GOOD_META, "type": ["x"]}), r"unknown state", id="type-list"),
        pytest.param(
            _blob({"hidden": torch.zeros(1, 2, 3, dtype=torch.int64)}, GOOD_META),
            r"floating",
            id="int-dtype",
        ),
        pytest.param(
            _blob(
                {"hidden": torch.zeros(1, 2, 3), "cell": torch.zeros(1, 2, 3, dtype=torch.float64)},
                {**GOOD_META, "type": "LSTMState"},
            ),
            r"one dtype",
            id="mixed-dtypes",
        ),
    ],
)
def test_from_bytes_rejects_odd_metadata_and_dtypes_with_value_error(
    data: bytes, message: str
) -> None:
    """Regression: non-object metadata raised AttributeError/TypeError; int states loaded."""
    with pytest.raises(ValueError, match=message):
        State.from_bytes(data)
