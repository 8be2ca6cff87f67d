"""A stream's stored row (its series and its whole run state): decoded exactly as encoded,
refused when it is another run's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqstate.core.model import SequenceModel
from seqstate.recipe.step import RunStep
from seqstate.recipe.table import Columns
from seqstate.serve.errors import ApiError
from seqstate.serve.preprocess import RunRowCodec, parse_step_times

COLUMNS = Columns(features=("a", "b"), targets=("a",), task="regression")


def _function(hidden: int = 4, members: int = 2) -> RunStep:
    torch.manual_seed(hidden)
    models = [
        SequenceModel(input_size=2, output_size=1, cell="gru", hidden_size=hidden).eval()
        for _ in range(members)
    ]
    return RunStep([(model, None, ()) for model in models], COLUMNS)


@settings(max_examples=25, deadline=None)
@given(
    series=st.lists(st.one_of(st.none(), st.text(max_size=12)), min_size=1, max_size=5),
    steps=st.integers(1, 4),
)
def test_rows_decode_to_the_state_and_series_encoded(series, steps):
    function = _function()
    codec = RunRowCodec(function.initial_state([None]))
    state = function.initial_state([None] * len(series))
    x = np.random.default_rng(steps).normal(size=(len(series), steps, 2))
    time = 1_700_000_000 + np.arange(steps)[None].repeat(len(series), 0)
    _, state = function.step(state, x, time)
    rows = codec.encode(state, series)
    assert all(codec.fits(row) for row in rows)
    assert [codec.series(row) for row in rows] == series
    order = list(range(len(series)))[::-1]
    decoded = codec.decode([rows[i] for i in order])
    assert decoded.equal(state.select(order))


def test_a_row_of_another_run_or_a_damaged_row_does_not_fit():
    ours = RunRowCodec(_function().initial_state([None]))
    theirs = RunRowCodec(_function(hidden=8).initial_state([None]))
    single = RunRowCodec(_function(members=1).initial_state([None]))
    (row,) = ours.encode(_function().initial_state(["s"]), ["s"])
    assert ours.fits(row)
    assert not theirs.fits(row) and not single.fits(row)
    assert not ours.fits(row[:-1]) and not ours.fits(row + b"\0") and not ours.fits(b"")
    with pytest.raises(ValueError, match="not a row of this run"):
        ours.decode([row[:-1]])


def test_step_times_read_seconds_and_dates_and_refuse_the_rest():
    assert parse_step_times(5, 1).tolist() == [5]
    stamps = parse_step_times(["2024-01-01T00:00:00", "2024-01-01T01:00:00"], 2)
    assert stamps.tolist() == [1704067200, 1704070800]
    assert parse_step_times("2024Q2", 1).tolist() == [1711929600]
    for value, steps, needle in [
        ([1, 2], 3, "one value per step"),
        ([2, 1], 2, "must increase"),
        ("someday", 1, "no date format"),
        ([1, "2024-01-01"], 2, "one kind"),
        (1.5, 1, "one kind"),
    ]:
        with pytest.raises(ApiError, match=needle) as caught:
            parse_step_times(value, steps)
        assert caught.value.status == 422 and caught.value.code == "invalid_time"


def test_rows_of_mixed_label_lengths_decode_in_any_order_and_read_their_label():
    """Rows are read as one array per row length: rows of several series lengths (and none)
    interleaved decode to their own state, and read_label agrees with fits and series."""
    function = _function()
    codec = RunRowCodec(function.initial_state([None]))
    series = ["a", None, "long-series", "", "a", None, "bb"]
    state = function.initial_state([None] * len(series))
    x = np.random.default_rng(3).normal(size=(len(series), 2, 2))
    _, state = function.step(state, x, None)
    rows = codec.encode(state, series)
    assert [codec.read_label(row) for row in rows] == [(True, s) for s in series]
    order = [6, 0, 3, 1, 5, 2, 4]
    assert codec.decode([rows[i] for i in order]).equal(state.select(order))
    damaged = bytearray(rows[2])
    damaged[0] ^= 0x01  # the header: same length as its row group, wrong bytes
    assert codec.read_label(bytes(damaged)) == (False, None)
    with pytest.raises(ValueError, match="row 1 is not a row of this run"):
        codec.decode([rows[0], bytes(damaged)])
    wrong_label = bytearray(rows[0])  # "a": claims a 2-byte series in a row holding 1
    wrong_label[len(codec.header)] = 2
    with pytest.raises(ValueError, match="row 0 is not a row of this run"):
        codec.decode([bytes(wrong_label), rows[4]])
