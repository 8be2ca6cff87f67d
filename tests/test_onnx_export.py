"""ONNX export: onnxruntime, fed chunk by chunk with the state carried, equals seqstate.

Exports are slow (the dynamo exporter traces the model), so a few models cover every path:
fused ONNX LSTM/GRU operators (a multi-layer LSTM; a classification GRU stack under a variant
layer), RNN layers (a relu RNN from a run directory) and a mixed stack with masking and variants
(per-step ``Scan``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.numerics  # run again on another kernel path: scripts/test

onnx = pytest.importorskip("onnx", reason="onnx (the [onnx] extra) is needed to export")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime (the [onnx] extra) runs the graph")

from seqstate.core.model import SequenceModel  # noqa: E402
from seqstate.core.saved import save_model  # noqa: E402
from seqstate.interop.onnx import export_onnx, onnx_input_names, onnx_output_names  # noqa: E402

# onnxruntime's kernels and torch's (MKL's, chosen by CPU) sum in their own orders
TOL = {"rtol": 1e-6, "atol": 1e-5}
F, O, H = 3, 2, 5
CHUNKS = (3, 1, 4)  # chunk lengths; row 0 starts a new sequence at chunk 1

MIXED = {
    "layers": [
        {"kind": "lstm", "hidden_size": 4},
        {"kind": "lstm", "hidden_size": 4},
        {
            "kind": "gru",
            "hidden_size": 3,
            "recurrent_activation": "hard_sigmoid_keras2",
            "reset_after": False,
        },
        {"kind": "rnn", "hidden_size": 2, "activation": "linear"},
    ],
    "head": [{"units": 4, "activation": "relu"}, {"units": O}],
    "mask_value": 0.0,
}

MODELS = {
    "lstm": {"cell": "lstm", "hidden_size": H, "num_layers": 2},
    # a fused two-layer GRU (ONNX GRU) under a variant LSTM (Scan) in one graph, no masking
    "gru": {
        "layers": [
            {"kind": "gru", "hidden_size": H},
            {"kind": "gru", "hidden_size": H},
            {"kind": "lstm", "hidden_size": 3, "recurrent_activation": "hard_sigmoid"},
        ],
        "task": "classification",
    },
    "rnn": {"cell": "rnn", "hidden_size": H, "nonlinearity": "relu", "num_layers": 2},
    "mixed": MIXED,
    # fused groups one after another (LSTM(6) -> LSTM(3) -> Dense; and a GRU group after them):
    # each group is its own ONNX LSTM/GRU operator, joined by reshapes that must keep T dynamic
    "two_groups": {
        "layers": [{"kind": "lstm", "hidden_size": 6}, {"kind": "lstm", "hidden_size": 3}],
    },
    "three_groups": {
        "layers": [
            {"kind": "lstm", "hidden_size": 6},
            {"kind": "lstm", "hidden_size": 3},
            {"kind": "gru", "hidden_size": 4},
        ],
    },
}
GROUPED = ("two_groups", "three_groups")


def _model(name: str) -> SequenceModel:
    torch.manual_seed(len(name))
    model = SequenceModel(input_size=F, output_size=O, **MODELS[name])
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

    def get(name: str):
        if name not in cache:
            model = _model(name)
            root = tmp_path_factory.mktemp("onnx")
            # rnn: exported from a run directory; the others from a model in training mode,
            # which the export must leave as it is
            source = save_model(model, root / "run") if name == "rnn" else model.train()
            before = {k: v.clone() for k, v in model.state_dict().items()}
            path = export_onnx(source, root / f"{name}.onnx")
            assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
            if name != "rnn":
                assert model.training
                model.eval()
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            cache[name] = (model, path, session)
        return cache[name]

    return get


def _feeds(model, x: torch.Tensor, mask: torch.Tensor | None, state_arrays) -> dict:
    values = [x.numpy()]
    if model.masks_input:
        values.append((torch.ones(x.shape[:2], dtype=torch.bool) if mask is None else mask).numpy())
    return dict(zip(onnx_input_names(model), [*values, *state_arrays], strict=True))


def _run_chunks(model, session, x: torch.Tensor):
    """seqstate and onnxruntime over CHUNKS, resetting row 0 before chunk 1 in both."""
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
        outputs = session.run(None, _feeds(model, chunk, None, feeds_state))
        feeds_state = [np.array(a) for a in outputs[1:]]
        pairs.append((y, torch.from_numpy(outputs[0])))
    return pairs, state, [torch.from_numpy(a) for a in feeds_state]


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("name", list(MODELS))
def test_chunked_onnx_equals_seqstate(exported, name: str, batch: int) -> None:
    model, _, session = exported(name)
    x = torch.randn(batch, sum(CHUNKS), F) * 3 + 1
    pairs, state, onnx_state = _run_chunks(model, session, x)
    for ours, theirs in pairs:
        assert theirs.shape == ours.shape
        torch.testing.assert_close(theirs, ours, **TOL)
    for ours, theirs in zip(state.tensors(), onnx_state, strict=True):
        torch.testing.assert_close(theirs, ours, **TOL)


def test_onnx_reset_row_equals_fresh_sequence(exported) -> None:
    # Zeroing row 0's state before chunk 1 == running chunk 1 of row 0 from zeros, alone.
    model, _, session = exported("lstm")
    x = torch.randn(2, sum(CHUNKS), F)
    pairs, _, _ = _run_chunks(model, session, x)
    with torch.no_grad():
        alone, _ = model(x[:1, CHUNKS[0] : CHUNKS[0] + CHUNKS[1]])
    torch.testing.assert_close(pairs[1][1][:1], alone, **TOL)


def test_mask_input_and_mask_value_hold_the_state(exported) -> None:
    # Padding inside a row (x == mask_value) and steps the caller masks: the state is held and
    # the output is zero there, in both seqstate and onnxruntime.
    model, _, session = exported("mixed")
    x = torch.randn(3, 6, F)
    x[0, 2] = 0.0  # a hole
    x[1, 4:] = 0.0  # trailing padding
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[2, 1] = False
    state = model.initial_state(3)
    with torch.no_grad():
        y, final = model(x, state, mask=mask)
    outputs = session.run(None, _feeds(model, x, mask, [t.numpy() for t in state.tensors()]))
    torch.testing.assert_close(torch.from_numpy(outputs[0]), y, **TOL)
    for ours, theirs in zip(final.tensors(), outputs[1:], strict=True):
        torch.testing.assert_close(torch.from_numpy(theirs), ours, **TOL)
    assert bool((y[0, 2] == 0).all()) and bool((y[2, 1] == 0).all())


@pytest.mark.parametrize("name", list(MODELS))
def test_graph_declares_names_ops_and_dynamic_axes(exported, name: str) -> None:
    model, path, session = exported(name)
    onnx.checker.check_model(str(path))
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == onnx_input_names(model)
    assert [o.name for o in graph.output] == onnx_output_names(model)
    ops = {node.op_type for node in graph.node}
    if name in ("mixed", "rnn"):  # masking, variants and RNN layers: per-step ops in a Scan
        assert "Scan" in ops and not ops & {"LSTM", "GRU", "RNN"}
    elif name == "gru":  # the fused GRU layers as ONNX GRU, the variant LSTM as a Scan
        assert {"GRU", "Scan"} <= ops and "LSTM" not in ops
    else:
        assert "LSTM" in ops
    if name in GROUPED:
        assert onnx_input_names(model)[1:3] == ["l0_h0", "l0_c0"]
    if name == "mixed":
        expected = ["x", "mask", "l0_h0", "l0_c0", "l1_h0", "l1_c0", "l2_h0", "l3_h0"]
        assert onnx_input_names(model) == expected
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "time", F]
    first_state = len(onnx_input_names(model)) - len(model.state_type.field_names())
    state_dims = graph.input[first_state].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in state_dims][1] == "batch"
    out_dims = [d.dim_param or d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
    assert out_dims == ["batch", "time", O]
    assert [i.name for i in session.get_inputs()] == onnx_input_names(model)


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("name", GROUPED)
def test_fused_groups_run_at_any_chunk_length(exported, name: str, batch: int) -> None:
    # Regression: with two or more fused groups the graph ran only at the example's T=3.
    model, path, session = exported(name)
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert ops.count("LSTM") + ops.count("GRU") == len(model.groups)
    x = torch.randn(batch, 15, F) * 2
    with torch.no_grad():
        whole, final = model(x)
    for chunk in (1, 7, x.shape[1]):
        feeds_state = [t.numpy() for t in model.initial_state(batch).tensors()]
        parts = []
        for start in range(0, x.shape[1], chunk):
            chunk_x = x[:, start : start + chunk]
            outputs = session.run(None, _feeds(model, chunk_x, None, feeds_state))
            parts.append(torch.from_numpy(outputs[0]))
            feeds_state = outputs[1:]
        torch.testing.assert_close(torch.cat(parts, 1), whole, **TOL)
        for ours, theirs in zip(final.tensors(), feeds_state, strict=True):
            torch.testing.assert_close(torch.from_numpy(theirs), ours, **TOL)


def test_export_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"must be a seqstate\.SequenceModel or a run directory"):
        export_onnx(torch.nn.LSTM(3, 4), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match=r"opset must be an int in \[18, 23\]"):
        export_onnx(_model("gru"), tmp_path / "m.onnx", opset=9)
    with pytest.raises(FileNotFoundError, match=r"model_or_run_dir: .*has no model\.json"):
        export_onnx(tmp_path / "missing_run", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_a_second_export_in_one_process_keeps_the_time_axis_dynamic(exported, tmp_path) -> None:
    # Regression: torch 2.13 reused a dispatch-cached LSTM kernel from the first export and
    # unrolled the second over the example's 3 steps (a fixed time axis).
    model, _, _ = exported("lstm")  # one export of an LSTM in this process already
    path = export_onnx(model, tmp_path / "again.onnx")
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", "time", F]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 7, F)
    state = [t.numpy() for t in model.initial_state(2).tensors()]
    y = session.run(None, _feeds(model, x, None, state))[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(y), model(x)[0], **TOL)


def test_a_run_of_two_fused_groups_blending_ets_runs_at_any_chunk_length(tmp_path: Path) -> None:
    """LSTM(32) -> LSTM(16) -> Dense as a run whose validation blended damped ETS: the run
    graph (ONNX LSTM operators, the baseline's Scan) equals the step function at T = 1, 7 and
    whole, for one row and four."""
    from seqstate.interop.onnx import export_run_onnx
    from seqstate.recipe.run import Run, RunMember
    from seqstate.recipe.selection import Selection
    from seqstate.recipe.table import Columns
    from test_onnx_run_baselines import run_onnx

    torch.manual_seed(0)
    model = SequenceModel(
        input_size=1,
        output_size=1,
        layers=[{"kind": "lstm", "hidden_size": 32}, {"kind": "lstm", "hidden_size": 16}],
        head=[{"units": 8, "activation": "relu"}, {"units": 1}],
    )
    assert len(model.groups) == 2
    chosen = Selection({"network": 0.5, "ets_4": 0.5}, "network+ets_4", {}, 4, 8, 1, 1)
    member = RunMember(model, None, (), {"selection": chosen.to_dict()})
    run = Run([member], Columns(features=("y",), targets=("y",))).save(tmp_path / "run")
    path = export_run_onnx(run, tmp_path / "run.onnx")
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert ops.count("LSTM") == 2 and "Scan" in ops
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    function = Run.load(run).step_function()
    rng = np.random.default_rng(0)
    for batch in (1, 4):
        x = (5 + np.cumsum(rng.standard_normal((batch, 15, 1)), axis=1)).astype(np.float32)
        expected, _ = function.step(function.initial_state([None] * batch), x)
        for chunk in (1, 7, x.shape[1]):
            got, _ = run_onnx(session, function, x, None, [None] * batch, chunk)
            np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("distribution", ["studentt", "negbin", "quantile"])
def test_a_distribution_head_exports_its_median_in_raw_units(tmp_path, distribution) -> None:
    # y is what the model answers (its distributions' medians), not the head's raw parameters
    torch.manual_seed(0)
    model = SequenceModel(
        input_size=F, output_size=O, cell="gru", hidden_size=H, distribution=distribution
    ).eval()
    if distribution != "negbin":  # (a count head is scaled, never shifted)
        model.set_normalization([0.0] * F, [1.0] * F, [1.0] * O, [2.0] * O)
    session = ort.InferenceSession(
        str(export_onnx(model, tmp_path / "d.onnx")), providers=["CPUExecutionProvider"]
    )
    x = torch.randn(2, 5, F)
    state = [t.numpy() for t in model.initial_state(2).tensors()]
    got = session.run(None, _feeds(model, x, None, state))[0]
    with torch.no_grad():
        expected, _ = model(x)
    assert got.shape == (2, 5, O)
    np.testing.assert_allclose(got, expected.numpy(), **TOL)


def test_export_checks_its_target_and_opset_before_creating_anything(tmp_path: Path) -> None:
    target = tmp_path / "new" / "deeper" / "m.onnx"
    with pytest.raises(TypeError, match="opset must be an int"):
        export_onnx(_model("gru"), target, opset="18")
    with pytest.raises(ValueError, match="is a directory; give the file to write"):
        export_onnx(_model("gru"), tmp_path)
    assert not (tmp_path / "new").exists()
