"""The stored-row codec: a batch encoded and decoded row by row is the same state, exactly."""

from __future__ import annotations

import pytest
import torch

from seqstate.core.state import GRUState, LSTMState
from seqstate.serve.codec import StateCodec


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("kind", "layers", "hidden"), [(LSTMState, 2, 5), (GRUState, 1, 3)])
def test_rows_round_trip_exactly_in_any_order(kind, layers, hidden, dtype):
    torch.manual_seed(1)
    n = 7
    state = kind(*(torch.randn(layers, n, hidden, dtype=dtype) for _ in kind.field_names()))
    codec = StateCodec(state.select([0]))
    blobs = codec.encode(state)
    assert len(blobs) == n and all(codec.fits(b) for b in blobs)
    order = [3, 0, 6, 6, 1]
    decoded = codec.decode([blobs[i] for i in order])
    assert decoded.equal(state.select(order))  # bitwise, per row, any batch composition
    mixed = codec.decode([None, blobs[2]])  # None: a zero row
    assert mixed.equal(state.select([2]).zeros_like(2).scatter([1], state.select([2])))


def test_rows_of_another_model_or_format_do_not_fit():
    lstm = LSTMState(torch.zeros(1, 1, 4), torch.zeros(1, 1, 4))
    codec = StateCodec(lstm)
    wider = StateCodec(LSTMState(torch.zeros(1, 1, 8), torch.zeros(1, 1, 8)))
    gru = StateCodec(GRUState(torch.zeros(1, 1, 4)))
    (blob,) = codec.encode(lstm)
    assert codec.fits(blob)
    assert not wider.fits(blob) and not gru.fits(blob)
    assert not codec.fits(lstm.to_bytes())  # the general safetensors format
    assert not codec.fits(blob[:-1]) and not codec.fits(blob + b"\0")
