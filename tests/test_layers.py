"""Tests of seqstate.LSTM / GRU / RNN."""

from __future__ import annotations

import pytest
import torch

from seqstate.layers import GRU, LSTM, RNN


@pytest.mark.parametrize("factory", [LSTM, GRU, RNN])
@pytest.mark.parametrize("with_reset", [False, True])
def test_all_rows_fully_masked_leave_state_unchanged(factory: type, with_reset: bool) -> None:
    """Regression: a window where no row has a real step used to crash in the packed call."""
    layer = factory(2, 3, 2).double()
    x = torch.randn(2, 4, 2, dtype=torch.float64)
    carried = layer.initial_state(2).map(lambda t: torch.randn_like(t))
    mask = torch.zeros(2, 4, dtype=torch.bool)
    reset = torch.zeros(2, 4, dtype=torch.bool)
    reset[0, 2] = with_reset
    y, state = layer(x, carried, reset=reset, mask=mask)
    assert bool((y == 0).all()) and y.shape == (2, 4, 3)
    expected = carried.reset_rows(torch.tensor([True, False])) if with_reset else carried
    assert state.equal(expected)
