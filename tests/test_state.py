"""Tests of the State containers."""

from __future__ import annotations

import torch

from seqstate.state import RNNState


def test_empty_rows_are_allowed() -> None:
    """Regression: ``[]`` became a float32 tensor and was rejected as "not an integer index"."""
    state = RNNState(torch.arange(24, dtype=torch.float64).view(2, 4, 3))
    assert state.reset_rows([]).equal(state)
    assert state.select([]).batch_size == 0
    assert state.scatter([], state.select([])).equal(state)
