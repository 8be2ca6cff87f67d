"""A stream whose history never varied answers its last value (HistoryScale.hold_flat): in a
one-step answer, a forecast and sample paths, whole or in chunks, in NumPy and in torch, and
the first change hands it back to the run's own answer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqstate.core.distributions import DistributionHead
from seqstate.core.model import SequenceModel
from seqstate.recipe.intervals import fit_table
from seqstate.recipe.scaling import Scaling, ScalingConfig
from seqstate.recipe.sources import read_table
from seqstate.recipe.step import RunStep
from seqstate.recipe.step import tables as step_tables

MONTHS = 30


def panel(flat_until: int = MONTHS) -> pd.DataFrame:
    """A varying series, a constant 7, zeros, and a series constant at 3 for its first
    ``flat_until`` months, then varying."""
    times = pd.date_range("2001-01-01", periods=MONTHS, freq="MS")
    k = np.arange(MONTHS)
    late = np.where(k < flat_until, 3.0, 3.0 + np.sin(k / 2.0) + 0.1 * k)
    series = {
        "wave": 10 + 3 * np.sin(2 * np.pi * k / 12),
        "seven": np.full(MONTHS, 7.0),
        "zeros": np.zeros(MONTHS),
        "late": late,
    }
    return pd.concat(
        pd.DataFrame({"id": name, "month": times, "value": values})
        for name, values in series.items()
    )


def run_of(table, *, intervals: bool = True, distribution: str | None = None) -> RunStep:
    torch.manual_seed(0)
    head = DistributionHead(distribution, (0.1, 0.5, 0.9)) if distribution else None
    model = SequenceModel(input_size=1, output_size=1, hidden_size=6, distribution=head)
    with torch.no_grad():  # an output far from zero: the network alone misses any constant
        model.head.bias.fill_(0.7)
    scaling = Scaling.fit(table, ScalingConfig())
    errors = np.random.default_rng(3).normal(size=(6, 4))
    return RunStep(
        [(model, scaling, ())],
        table.columns,
        intervals=fit_table(errors, season=1) if intervals else None,
    )


def read(frame: pd.DataFrame):
    return read_table(
        frame, features=["value"], targets=["value"], id_column="id", time_column="month"
    )


def inputs(run_step, table):
    x = np.stack([step_tables.table_inputs(run_step, table, i) for i in range(len(table))])
    time = np.stack([step_tables.table_times(run_step, t) for t in table.times])
    return torch.from_numpy(x), torch.from_numpy(time)


def answers_in_chunks(run_step, table, x, time, chunks):
    state = run_step.initial_state(list(table.ids))
    pieces, begin, turn = [], 0, 0
    while begin < x.shape[1]:
        end = begin + chunks[turn % len(chunks)]
        y, state = run_step.step(state, x[:, begin:end], time[:, begin:end])
        pieces.append(y)
        begin, turn = end, turn + 1
    return torch.cat(pieces, dim=1).numpy()[..., 0], state


def test_constant_histories_answer_their_value_and_the_others_are_unchanged():
    table = read(panel(flat_until=12))
    run_step, plain = run_of(table), run_of(table, intervals=False)
    x, time = inputs(run_step, table)
    got, state = answers_in_chunks(run_step, table, x, time, [MONTHS])
    reference, _ = answers_in_chunks(plain, table, x, time, [MONTHS])
    wave, seven, zeros, late = range(4)
    np.testing.assert_allclose(got[wave], reference[wave])  # a series that varies: as trained
    assert got[seven, 0] == reference[seven, 0]  # one value is no history yet
    assert (got[seven, 1:] == 7.0).all() and (got[zeros, 1:] == 0.0).all()
    assert not np.isclose(reference[seven, 1:], 7.0).any()  # (the network alone misses it)
    # constant for 12 months: its value, then from the first change on the run's answer
    assert (got[late, 1:12] == 3.0).all()
    np.testing.assert_allclose(got[late, 12:], reference[late, 12:])
    # a forecast from the end: the constant for every step, an interval without width
    _, path = run_step.forecast(state, 5)
    assert (path[seven].numpy() == 7.0).all() and (path[zeros].numpy() == 0.0).all()
    quantiles = run_step.interval_quantiles(state, path, [0.1, 0.9])
    assert (quantiles[seven] == 7.0).all() and (quantiles[zeros] == 0.0).all()
    assert (quantiles[wave, :, 0, 1] > quantiles[wave, :, 0, 0]).all()
    # sample paths of a distribution head: every path of a flat stream is its value
    sampled = run_of(table, distribution="normal")
    _, state = answers_in_chunks(sampled, table, x, time, [MONTHS])
    _, paths = sampled.sample_forecast(state, 5, samples=8, seed=0)
    assert (paths[seven].numpy() == 7.0).all() and (paths[zeros].numpy() == 0.0).all()
    assert paths[wave].std(dim=0).min() > 0


@settings(max_examples=12, deadline=None)
@given(
    st.lists(st.integers(1, 7), min_size=1, max_size=5),
    st.integers(2, MONTHS),
    st.sampled_from(["all", "one"]),
)
def test_chunked_equals_whole_and_numpy_equals_torch(chunks, flat_until, streams):
    """One-step calls (NumPy rows, or one stream's floats) and chunks of any length (torch)
    hold the same values as one call over the whole table."""
    table = read(panel(flat_until))
    if streams == "one":
        table = table.select([3])  # the series that turns at flat_until
    run_step = run_of(table)
    x, time = inputs(run_step, table)
    whole, _ = answers_in_chunks(run_step, table, x, time, [MONTHS])
    ones, _ = answers_in_chunks(run_step, table, x, time, [1])
    pieces, _ = answers_in_chunks(run_step, table, x, time, chunks)
    # (the network's float32 kernels differ by a step at a time and a sequence in the last
    # bits; a held value is the same double whichever path)
    np.testing.assert_allclose(ones, whole, rtol=1e-6)
    np.testing.assert_allclose(pieces, whole, rtol=1e-6)
    late = whole[-1]  # the series that turns at flat_until
    assert (late[1:flat_until] == 3.0).all()
    assert (ones[-1][1:flat_until] == 3.0).all() and (pieces[-1][1:flat_until] == 3.0).all()
    assert not np.isclose(late[flat_until:], 3.0).any()


def test_a_run_without_the_scale_in_its_state_answers_as_before():
    """The rule needs the state's record of the history (a run with an interval table)."""
    table = read(panel())
    run_step = run_of(table, intervals=False)
    assert run_step.history_scale is None
    x, time = inputs(run_step, table)
    got, _ = answers_in_chunks(run_step, table, x, time, [MONTHS])
    assert not np.isclose(got[1, 1:], 7.0).any()


def test_the_exported_graph_holds_flat_streams_as_predict_does(tmp_path):
    from seqstate.cli.dispatch import main
    from seqstate.recipe.run import Run
    from test_onnx_run_baselines import onnx_session, run_onnx

    data = tmp_path / "panel.csv"
    frame = panel(flat_until=12)
    frame.assign(month=frame["month"].dt.strftime("%Y-%m")).to_csv(data, index=False)
    run = tmp_path / "run"
    common = ["--id", "id", "--time", "month", "--no-progress", "--quiet"]
    train = ["train", str(data), "-f", "value", "--epochs", "1", "--hidden-size", "4"]
    assert main([*train, *common, "--out", str(run)]) == 0
    session = onnx_session(run, tmp_path)
    function = Run.load(run).step_function()
    assert function.history_scale is not None
    table = read(frame)
    x, time = inputs(function, table)
    expected, _ = answers_in_chunks(function, table, x, time, [MONTHS])
    for chunk in (1, 7, MONTHS):
        got, _ = run_onnx(session, function, x.numpy(), time.numpy(), list(table.ids), chunk)
        np.testing.assert_allclose(got[..., 0], expected, rtol=1e-6, atol=1e-6)
        assert (got[1, 1:, 0] == 7.0).all() and (got[3, 1:12, 0] == 3.0).all()
    predicted = tmp_path / "p.csv"
    assert main(["predict", str(run), str(data), "--out", str(predicted)]) == 0
    answers = pd.read_csv(predicted)
    seven = answers.loc[answers["id"] == "seven", "predicted_value"].to_numpy()
    assert (seven[1:] == 7.0).all()
