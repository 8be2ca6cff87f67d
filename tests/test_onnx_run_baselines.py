"""A run whose selection blends the network with seasonal naive exports to ONNX: the baseline's
state explicit inputs and outputs, ONNX Runtime equal to the run's step function (what
``predict`` runs) chunk by chunk; a run blending damped ETS (no torch form) is refused in one
line; the torch cell equals the NumPy stream."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from seqstate.core.model import SequenceModel
from seqstate.recipe.baselines import NaiveStream
from seqstate.recipe.run import Run, RunMember
from seqstate.recipe.selection import Selection
from seqstate.recipe.step.baseline_cells import NaiveCell, torch_form
from seqstate.recipe.table import Columns


def blended_run(root: Path, weights: dict[str, float]) -> Path:
    torch.manual_seed(0)
    model = SequenceModel(input_size=1, output_size=1, hidden_size=4)
    name = "+".join(weights)
    chosen = Selection(weights, name, {}, 4, 8, 1, 1)
    member = RunMember(model, None, (), {"selection": chosen.to_dict()})
    columns = Columns(features=("y",), targets=("y",))
    return Run([member], columns).save(root / "run")


def test_the_naive_cell_equals_the_numpy_stream_in_any_chunking():
    rng = np.random.default_rng(0)
    y = rng.standard_normal((3, 2, 23))  # (B, O, L)
    stream, cell = NaiveStream(4), NaiveCell(4)
    state = stream.initial_state(6)
    tensors = {k: torch.from_numpy(v.reshape(3, 2, *v.shape[1:])) for k, v in state.items()}
    begin = 0
    for size in (1, 3, 7, 1, 11):
        chunk = y[..., begin : begin + size]
        expected, state = stream.step(state, chunk.reshape(6, -1))
        got, tensors = cell(tensors, torch.from_numpy(chunk))
        np.testing.assert_array_equal(got.numpy().reshape(6, -1), expected)
        for field, value in state.items():
            np.testing.assert_array_equal(tensors[field].numpy().reshape(value.shape), value)
        begin += size
    assert torch_form("ets_12") is None and isinstance(torch_form("seasonal_naive_7"), NaiveCell)


def test_onnx_runtime_equals_the_step_function_of_a_naive_blend(tmp_path: Path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime (the [onnx] extra) runs it")
    pytest.importorskip("onnxscript", reason="onnxscript (the [onnx] extra) exports")
    from seqstate.interop.onnx import export_run_onnx, run_onnx_names

    run = blended_run(tmp_path, {"network": 0.4, "seasonal_naive_4": 0.6})
    path = export_run_onnx(run, tmp_path / "run.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    function = Run.load(run).step_function()
    inputs, outputs = run_onnx_names(function)
    assert "baseline.seasonal_naive_4.values" in inputs
    assert "baseline.seasonal_naive_4.values_next" in outputs
    rng = np.random.default_rng(1)
    for batch in (1, 4):
        x = (5 + rng.standard_normal((batch, 19, 1))).astype(np.float32)
        expected, _ = function.step(function.initial_state([None] * batch), x)
        network, _ = function.step_members(function.initial_state([None] * batch), x)
        # the blend changes the answer: a graph of the network alone would fail here
        assert not np.allclose(expected.numpy(), network[0].numpy())
        for chunk in (1, 7, x.shape[1]):
            initial = function.initial_state([None] * batch)
            state = [t.numpy() for t in initial.transforms.values()]
            state += [t.numpy() for member in initial.models for t in member.tensors()]
            answers = []
            for start in range(0, x.shape[1], chunk):
                feeds = dict(zip(inputs, [x[:, start : start + chunk], *state], strict=True))
                result = session.run(None, feeds)
                answers.append(result[0])
                state = result[1:]
            np.testing.assert_allclose(
                np.concatenate(answers, axis=1), expected.numpy(), rtol=1e-5, atol=1e-6
            )


def test_a_run_blending_ets_is_refused_in_one_line(tmp_path: Path):
    pytest.importorskip("onnxscript", reason="onnxscript (the [onnx] extra) exports")
    from seqstate.interop.onnx import export_run_onnx

    run = blended_run(tmp_path, {"network": 0.5, "ets_4": 0.5})
    with pytest.raises(ValueError, match=r"\['ets_4'\] has no form in an ONNX graph") as error:
        export_run_onnx(run, tmp_path / "run.onnx")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run.onnx").exists()
