"""A run whose selection blends the network with baselines (seasonal naive, damped ETS, Theta,
any mix) exports to ONNX: each baseline's state explicit inputs and outputs, ONNX Runtime
equal to the run's step function (what ``predict`` runs) chunk by chunk, at T = 1, 7 and
whole, one row and four, several series, a differenced run's NaN warm-up included; each
torch cell equals its NumPy stream bit for bit in any chunking."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqstate.core.model import SequenceModel
from seqstate.recipe.baselines import ETSStream, NaiveStream, ThetaStream
from seqstate.recipe.run import Run, RunMember
from seqstate.recipe.selection import Selection
from seqstate.recipe.step import tables as step_tables
from seqstate.recipe.step.baseline_cells import (
    TORCH_FORMS,
    ETSCell,
    NaiveCell,
    ThetaCell,
    pairwise_sum,
    torch_form,
)
from seqstate.recipe.table import Columns

PAIRS = {"seasonal_naive": (NaiveStream, NaiveCell), "ets": (ETSStream, ETSCell)}
PAIRS["theta"] = (ThetaStream, ThetaCell)


def blended_run(root: Path, weights: dict[str, float]) -> Path:
    torch.manual_seed(0)
    model = SequenceModel(input_size=1, output_size=1, hidden_size=4)
    name = "+".join(weights)
    chosen = Selection(weights, name, {}, 4, 8, 1, 1)
    member = RunMember(model, None, (), {"selection": chosen.to_dict()})
    columns = Columns(features=("y",), targets=("y",))
    return Run([member], columns).save(root / "run")


# --------------------------------------------------------------------------------------------
# The torch cells against the NumPy streams
# --------------------------------------------------------------------------------------------


def step_both(kind, season, y, sizes, ahead=0):
    """Step ``y [B, O, L]`` through the stream and the cell in chunks of ``sizes`` (cycled);
    assert the state the same bits after each chunk; return both answers ``[B * O, L]``.
    ``ahead``: the first row starts that many values further on (rows in different phases)."""
    stream_type, cell_type = PAIRS[kind]
    stream, cell = stream_type(season), cell_type(season)
    b, o, length = y.shape
    state = stream.initial_state(b * o)
    if ahead:
        before = 5 + np.arange(o * ahead, dtype=np.float64).reshape(o, ahead) % 7
        _, alone = stream.step(stream.initial_state(o), before)
        for field in state:
            state[field][:o] = alone[field]
    tensors = {k: torch.from_numpy(v.reshape(b, o, *v.shape[1:])) for k, v in state.items()}
    expected, got = [], []
    begin, turn = 0, 0
    while begin < length:
        chunk = y[..., begin : begin + sizes[turn % len(sizes)]]
        answer, state = stream.step(state, chunk.reshape(b * o, -1))
        cell_answer, tensors = cell(tensors, torch.from_numpy(chunk))
        expected.append(answer)
        got.append(cell_answer.numpy().reshape(b * o, -1))
        assert set(tensors) == set(state)
        for field, value in state.items():
            assert tensors[field].dtype == torch.from_numpy(value).dtype, field
            np.testing.assert_array_equal(
                tensors[field].numpy().reshape(value.shape), value, err_msg=field
            )
        begin, turn = begin + chunk.shape[-1], turn + 1
    return np.concatenate(got, axis=1), np.concatenate(expected, axis=1)


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(sorted(PAIRS)),
    season=st.sampled_from([1, 2, 3, 4, 7]),
    sizes=st.lists(st.integers(1, 9), min_size=1, max_size=4),
    length=st.integers(1, 40),
    gaps=st.lists(st.integers(0, 39), max_size=2),
    ahead=st.integers(0, 16),
    seed=st.integers(0, 2**16),
)
def test_each_torch_cell_equals_its_numpy_stream_in_any_chunking(
    kind, season, sizes, length, gaps, ahead, seed
):
    rng = np.random.default_rng(seed)
    y = 5 + np.cumsum(rng.standard_normal((2, 2, length)), axis=-1)
    y[1, 0, [g for g in gaps if g < length]] = np.nan  # (a differenced run's warm-up)
    got, expected = step_both(kind, season, y, sizes, ahead)
    if kind == "theta":  # (its answer's (1 - alpha) ** n is torch's pow: the last bit may move)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    else:
        np.testing.assert_array_equal(got, expected)


def test_the_cells_cover_every_kind_at_a_long_season():
    # a season past 8 slots takes the pairwise sums past one level of pairs
    rng = np.random.default_rng(3)
    y = 10 + np.cumsum(rng.standard_normal((1, 3, 40)), axis=-1)
    for kind in PAIRS:
        got, expected = step_both(kind, 12, y, [5, 1, 13])
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
    assert set(TORCH_FORMS) == {"seasonal_naive", "ets", "theta"}
    assert isinstance(torch_form("ets_12"), ETSCell) and isinstance(
        torch_form("theta_4"), ThetaCell
    )
    assert isinstance(torch_form("seasonal_naive_7"), NaiveCell) and torch_form("arima_3") is None


def test_the_torch_pairwise_sum_is_the_numpy_one():
    from seqstate.recipe.baselines import pairwise_sum as numpy_sum

    rng = np.random.default_rng(0)
    for k in (0, 1, 2, 3, 7, 8, 12, 13, 52):
        values = rng.standard_normal((4, k)) * 10.0 ** rng.integers(-8, 8, (4, k))
        assert (
            pairwise_sum(torch.from_numpy(values)).numpy().tobytes() == numpy_sum(values).tobytes()
        )


# --------------------------------------------------------------------------------------------
# ONNX Runtime against the step function
# --------------------------------------------------------------------------------------------


def onnx_session(run: Path, tmp_path: Path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime (the [onnx] extra) runs it")
    pytest.importorskip("onnxscript", reason="onnxscript (the [onnx] extra) exports")
    from seqstate.interop.onnx import export_run_onnx

    path = export_run_onnx(run, tmp_path / "run.onnx")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_onnx(session, function, x, time, initial, chunk):
    """The answers ``[B, T, O]`` of ONNX Runtime fed ``x`` in chunks of ``chunk`` from the
    run state ``initial`` (or the step function's initial state of those series), and its
    last state outputs."""
    from seqstate.interop.onnx import run_onnx_names
    from seqstate.recipe.step import RunState

    inputs, _ = run_onnx_names(function)
    if not isinstance(initial, RunState):
        initial = function.initial_state(initial)
    state = [t.numpy() for t in initial.transforms.values()]
    state += [t.numpy() for member in initial.models for t in member.tensors()]
    answers = []
    for start in range(0, x.shape[1], chunk):
        head = [x[:, start : start + chunk]]
        if function.needs_time:
            head.append(time[:, start : start + chunk])
        result = session.run(None, dict(zip(inputs, [*head, *state], strict=True)))
        answers.append(result[0])
        state = result[1 : 1 + len(state)]
    return np.concatenate(answers, axis=1), state


def test_onnx_runtime_equals_the_step_function_with_rows_in_different_phases(tmp_path: Path):
    """Naive, damped ETS and Theta blended, the rows of one call at different points of
    their streams (fresh, in ETS's warm-up, past it): ONNX Runtime answers as the step
    function at every chunk size (ETS's replay runs while any row is young)."""
    from seqstate.interop.onnx import run_onnx_names
    from seqstate.recipe.step import RunState

    weights = {"network": 0.4, "seasonal_naive_4": 0.2, "ets_4": 0.2, "theta_4": 0.2}
    run = blended_run(tmp_path, weights)
    session = onnx_session(run, tmp_path)
    function = Run.load(run).step_function()
    inputs, outputs = run_onnx_names(function)
    for name in ("seasonal_naive_4.values", "ets_4.season", "theta_4.weight"):
        assert f"baseline.{name}" in inputs and f"baseline.{name}_next" in outputs
    rng = np.random.default_rng(1)
    history = (5 + np.cumsum(rng.standard_normal((4, 12, 1)), axis=1)).astype(np.float32)
    starts = []
    for row, done in enumerate((0, 3, 12, 7)):  # values each row has seen before
        state = function.initial_state([None])
        if done:
            _, state = function.step(state, history[row : row + 1, :done])
        starts.append(state)
    for rows in ([2], [0, 1, 2, 3]):
        initial = RunState.cat([starts[r] for r in rows])
        x = (5 + np.cumsum(rng.standard_normal((len(rows), 19, 1)), axis=1)).astype(np.float32)
        expected, _ = function.step(initial, x)
        network, _ = function.step_members(initial, x)
        # the blend changes the answer: a graph of the network alone would fail here
        assert not np.allclose(expected.numpy(), network[0].numpy())
        for chunk in (1, 7, x.shape[1]):
            got, _ = run_onnx(session, function, x, None, initial, chunk)
            np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-6)


# runs of several series, as test_run_baselines builds them: name -> RUNS entry there
BLENDS = ["combination", "difference"]


@pytest.mark.parametrize("name", BLENDS)
def test_onnx_runtime_equals_the_step_function_of_every_blend(name, tmp_path: Path):
    """Series scaling, calendar features, a differenced run's NaN warm-up, damped ETS and
    Theta at season 12 beside seasonal naive: ONNX Runtime answers what the step function
    (predict) answers, and ends in its state, at every chunk size and batch."""
    from seqstate.interop.onnx import run_onnx_names
    from test_run_baselines import build

    table, members, chosen, _ = build(name)
    saved = [
        RunMember(m.model, m.scaling, m.calendar, {"selection": chosen.to_dict()}) for m in members
    ]
    run = Run(saved, table.columns).save(tmp_path / "run")
    session = onnx_session(run, tmp_path)
    function = Run.load(run).step_function()
    inputs, _ = run_onnx_names(function)
    baselines = {n.split(".")[1] for n in inputs if n.startswith("baseline.")}
    assert baselines == set(chosen.weights) - {"network"}
    length = min(len(f) for f in table.features)
    for rows in ([0], [0, 1, 2, 3]):
        rows = [r % len(table) for r in rows]
        x = np.stack([step_tables.table_inputs(function, table, r)[:length] for r in rows])
        time = None
        if function.needs_time:
            time = np.stack(
                [step_tables.table_times(function, table.times[r])[:length] for r in rows]
            )
        series = [table.ids[r] for r in rows]
        initial = function.initial_state(series)
        expected, final = function.step(initial, x, None if time is None else time)
        expected = expected.numpy()
        if name == "difference":  # (the network's warm-up: no answer for the first steps)
            assert np.isnan(expected[:, 0]).all() and np.isfinite(expected[:, -1]).all()
        for chunk in (1, 7, length):
            got, state = run_onnx(session, function, x, time, series, chunk)
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
            for field, value in zip(final.transforms, state, strict=False):
                if field.startswith("baseline."):
                    np.testing.assert_allclose(
                        value, final.transforms[field].numpy(), rtol=1e-9, err_msg=field
                    )
