"""Tests of the State containers."""

from __future__ import annotations

import pytest
import torch

from seqstate.state import RNNState


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
