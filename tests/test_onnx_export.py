"""ONNX export: onnxruntime, fed chunk by chunk with the state carried, equals seqstate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx", reason="onnx (the [onnx] extra) is needed to export")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime (the [onnx] extra) runs the graph")

from seqstate.checkpoint import save_model  # noqa: E402
from seqstate.interop.onnx import export_onnx, onnx_input_names, onnx_output_names  # noqa: E402
from seqstate.model import SequenceModel  # noqa: E402

TOL = {"rtol": 0.0, "atol": 1e-5}
F, O, H = 3, 2, 5
CHUNKS = (3, 1, 4)  # chunk lengths; row 0 starts a new sequence at chunk 1


def _model(cell: str, num_layers: int, **fields) -> SequenceModel:
    torch.manual_seed(num_layers * 10 + len(cell))
    model = SequenceModel(
        input_size=F, output_size=O, cell=cell, hidden_size=H, num_layers=num_layers, **fields
    )
    # Non-trivial normalisation: the graph must map raw x to raw y.
    model.set_normalization(
        [1.0, -2.0, 0.5],
        [2.0, 0.5, 3.0],
        *(([10.0, -1.0], [4.0, 0.1]) if model.config.task == "regression" else ()),
    )
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cache: dict = {}

    def get(cell: str, num_layers: int):
        key = (cell, num_layers)
        if key not in cache:
            model = _model(cell, num_layers)
            path = export_onnx(model, tmp_path_factory.mktemp("onnx") / f"{cell}{num_layers}.onnx")
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            cache[key] = (model, path, session)
        return cache[key]

    return get


def _run_chunks(model, session, x: torch.Tensor):
    """seqstate and onnxruntime over CHUNKS, resetting row 0 before chunk 1 in both."""
    names = onnx_input_names(model)
    state = model.initial_state(x.shape[0])
    feeds_state = [t.numpy() for t in state.tensors()]
    start, pairs = 0, []
    for index, length in enumerate(CHUNKS):
        chunk = x[:, start : start + length]
        start += length
        reset = torch.zeros(chunk.shape[:2], dtype=torch.bool)
        if index == 1:
            reset[0, 0] = True  # seqstate: reset flag; ONNX: the caller zeroes the row
            for array in feeds_state:
                array[:, 0] = 0.0
        with torch.no_grad():
            y, state = model(chunk, state, reset=reset)
        outputs = session.run(None, dict(zip(names, [chunk.numpy(), *feeds_state], strict=True)))
        feeds_state = [np.array(a) for a in outputs[1:]]
        pairs.append((y, torch.from_numpy(outputs[0])))
    return pairs, state, [torch.from_numpy(a) for a in feeds_state]


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_chunked_onnx_equals_seqstate(exported, cell: str, num_layers: int, batch: int) -> None:
    model, _, session = exported(cell, num_layers)
    x = torch.randn(batch, sum(CHUNKS), F) * 3 + 1
    pairs, state, onnx_state = _run_chunks(model, session, x)
    for ours, theirs in pairs:
        assert theirs.shape == ours.shape
        torch.testing.assert_close(theirs, ours, **TOL)
    for ours, theirs in zip(state.tensors(), onnx_state, strict=True):
        torch.testing.assert_close(theirs, ours, **TOL)


def test_onnx_reset_row_equals_fresh_sequence(exported) -> None:
    # Zeroing row 0's state before chunk 1 == running chunk 1 of row 0 from zeros, alone.
    model, _, session = exported("lstm", 2)
    x = torch.randn(2, sum(CHUNKS), F)
    pairs, _, _ = _run_chunks(model, session, x)
    with torch.no_grad():
        alone, _ = model(x[:1, CHUNKS[0] : CHUNKS[0] + CHUNKS[1]])
    torch.testing.assert_close(pairs[1][1][:1], alone, **TOL)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_graph_is_valid_with_dynamic_axes(exported, cell: str) -> None:
    model, path, session = exported(cell, 2)
    onnx.checker.check_model(str(path))
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == onnx_input_names(model)
    assert [o.name for o in graph.output] == onnx_output_names(model)
    ops = {node.op_type for node in graph.node}
    assert {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}[cell] in ops  # fused recurrent operator
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "time", F]
    state_dims = [d.dim_param or d.dim_value for d in graph.input[1].type.tensor_type.shape.dim]
    assert state_dims == [2, "batch", H]
    assert [i.name for i in session.get_inputs()] == onnx_input_names(model)


def test_export_from_run_dir_relu_rnn_and_classification(tmp_path: Path) -> None:
    for index, fields in enumerate(
        ({"cell": "rnn", "nonlinearity": "relu"}, {"cell": "gru", "task": "classification"})
    ):
        model = _model(num_layers=1, **fields)
        run = save_model(model, tmp_path / f"run{index}")
        path = export_onnx(run, tmp_path / "out" / f"model{index}.onnx", opset=18)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        x = torch.randn(4, 6, F)
        with torch.no_grad():
            y, state = model(x)
        zeros = [t.numpy() for t in model.initial_state(4).tensors()]
        y_onnx, h_onnx = session.run(None, dict(zip(["x", "h0"], [x.numpy(), *zeros], strict=True)))
        torch.testing.assert_close(torch.from_numpy(y_onnx), y, **TOL)
        torch.testing.assert_close(torch.from_numpy(h_onnx), state.hidden, **TOL)


def test_export_leaves_the_model_untouched(tmp_path: Path) -> None:
    model = _model("lstm", 1).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, tmp_path / "m.onnx")
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_export_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"must be a seqstate\.SequenceModel or a run directory"):
        export_onnx(torch.nn.LSTM(3, 4), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match=r"opset must be an int in \[14, 23\]"):
        export_onnx(_model("gru", 1), tmp_path / "m.onnx", opset=9)
    with pytest.raises(FileNotFoundError, match=r"has no model\.json"):
        export_onnx(tmp_path / "missing_run", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
