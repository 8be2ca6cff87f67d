"""Out of eager Python: torch.compile, torch.export and torch.jit.trace of the layers and models.

torch.compile must run every path (plain, the timeline with resets and masks, split) and give
eager's results; torch.export must trace the plain call with the state as a pytree, and refuse
resets and masks (data-dependent plans) with one line that names ``export_onnx``; jit.trace is
refused the same way. Compilation is slow, so each path gets one small case, compiled with
dynamo's ``eager`` backend (dynamo's tracing is where these paths broke; it runs the same
kernels, so results are bitwise eager's on every CPU) and the model once with ``aot_eager``
(autograd traced ahead, gradients too).
"""

from __future__ import annotations

import pytest
import torch

from seqstate import GRU, LSTM, GRUState, LSTMState, SequenceModel

# torch's RNN modules refresh their _flat_weights list when export swaps in its parameters
# (torch.nn.LSTM itself warns the same)
pytestmark = pytest.mark.filterwarnings("ignore:The tensor attributes .*_flat_weights:UserWarning")


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _window(B: int = 3, T: int = 6, F: int = 3) -> tuple[torch.Tensor, ...]:
    """x [B, T, F], reset [B, T] (mid-row in row 0, at column 0 in the last row), mask [B, T]
    (a hole and a padded tail in row 1)."""
    x = torch.randn(B, T, F, generator=torch.Generator().manual_seed(0))
    reset = torch.zeros(B, T, dtype=torch.bool)
    reset[0, 3] = reset[B - 1, 0] = True
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 1] = False
    mask[1, 4:] = False
    return x, reset, mask


@pytest.mark.parametrize("strategy", ["auto", "split"])
def test_compiled_layer_with_resets_and_masks_equals_eager(strategy: str) -> None:
    """Regression: the timeline planner's bool cumsum failed under dynamo ("cumsum_out_cpu"
    not implemented for 'Bool') as soon as reset= or mask= was given."""
    torch.manual_seed(0)
    layer = LSTM(3, 4, 2, strategy=strategy)
    x, reset, mask = _window()
    state = layer.initial_state(3).map(torch.randn_like)
    with torch.no_grad():
        y, final = torch.compile(layer, backend="eager")(x, state, reset=reset, mask=mask)
        y_eager, final_eager = layer(x, state, reset=reset, mask=mask)
    assert torch.equal(y, y_eager) and final.equal(final_eager)


# dynamo reads .grad of the non-leaf tensors it receives after a graph break
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
def test_compiled_model_with_resets_and_masks_equals_eager_with_gradients() -> None:
    torch.manual_seed(1)
    model = SequenceModel(input_size=3, output_size=2, cell="lstm", hidden_size=4, num_layers=2)
    x, reset, mask = _window()
    compiled = torch.compile(model, backend="aot_eager")
    results = []
    for run in (compiled, model):
        model.zero_grad()
        y, state = run(x, reset=reset, mask=mask)
        (y.square().sum() + state.cell.sum()).backward()
        results.append((y.detach(), state, [p.grad.clone() for p in model.parameters()]))
    (y, state, grads), (y_eager, state_eager, grads_eager) = results
    # ahead-of-time autograd may decompose the elementwise ops: float32 rounding, not bits
    tolerance = {"rtol": 1e-6, "atol": 1e-6}
    torch.testing.assert_close(y, y_eager, **tolerance)
    for ours, theirs in zip(state.tensors(), state_eager.tensors(), strict=True):
        torch.testing.assert_close(ours.detach(), theirs.detach(), **tolerance)
    for grad, grad_eager in zip(grads, grads_eager, strict=True):
        torch.testing.assert_close(grad, grad_eager, **tolerance)


def test_states_are_pytrees_with_named_leaves() -> None:
    pytree = torch.utils._pytree
    state = LSTMState(torch.zeros(1, 2, 3), torch.ones(1, 2, 3))
    leaves, spec = pytree.tree_flatten(state)
    assert [leaf.sum().item() for leaf in leaves] == [0.0, 6.0]
    rebuilt = pytree.tree_unflatten([leaf + 1 for leaf in leaves], spec)
    assert type(rebuilt) is LSTMState and rebuilt.equal(state.map(lambda t: t + 1))
    paths = [pytree.keystr(path) for path, _ in pytree.tree_flatten_with_path(state)[0]]
    assert paths == [".hidden", ".cell"]
    stack = SequenceModel(
        input_size=2,
        output_size=1,
        layers=[{"kind": "gru", "hidden_size": 3}, {"kind": "lstm", "hidden_size": 2}],
    ).initial_state(4)
    assert len(pytree.tree_leaves(stack)) == len(stack.tensors()) == 3


def assert_same_to_rounding(y, state, y_eager, state_eager) -> None:
    """export decomposes the fused kernel into per-step ops (its own summation order, on any
    CPU): equal to float32 rounding, not bitwise."""
    torch.testing.assert_close(y, y_eager, rtol=1e-6, atol=1e-6)
    for ours, theirs in zip(state.tensors(), state_eager.tensors(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


def test_torch_export_of_a_model_takes_and_returns_its_state_with_a_dynamic_batch() -> None:
    torch.manual_seed(2)
    model = SequenceModel(input_size=3, output_size=2, cell="lstm", hidden_size=4, num_layers=2)
    model.eval()
    x, _, _ = _window(B=2)
    state = model.initial_state(2).map(torch.randn_like)
    batch = torch.export.Dim("batch")
    # T stays static: torch's own LSTM decomposition unrolls the time loop
    exported = torch.export.export(
        model, (x, state), dynamic_shapes=({0: batch}, [{1: batch}, {1: batch}])
    )
    for B in (2, 5):
        x, _, _ = _window(B=B)
        state = model.initial_state(B).map(torch.randn_like)
        with torch.no_grad():
            y, final = exported.module()(x, state)
            y_eager, final_eager = model(x, state)
        assert type(final) is LSTMState
        assert_same_to_rounding(y, final, y_eager, final_eager)


def test_torch_export_of_a_layer() -> None:
    torch.manual_seed(3)
    layer = GRU(3, 4)
    x, _, _ = _window()
    state = layer.initial_state(3).map(torch.randn_like)
    y, final = torch.export.export(layer, (x, state)).module()(x, state)
    y_eager, final_eager = layer(x, state)
    assert type(final) is GRUState
    assert_same_to_rounding(y, final, y_eager, final_eager)


@pytest.mark.parametrize("flags", ["reset", "mask", "mask_value"])
def test_torch_export_refuses_resets_and_masks_naming_export_onnx(flags: str) -> None:
    model = SequenceModel(
        input_size=3,
        output_size=2,
        cell="lstm",
        hidden_size=4,
        **({"mask_value": 0.0} if flags == "mask_value" else {}),
    ).eval()
    x, reset, mask = _window()
    args = (x, None, reset, None) if flags == "reset" else (x, None, None, mask)
    if flags == "mask_value":
        args = (x,)
    with pytest.raises(
        ValueError,
        match=r"^LSTM: torch.export cannot trace reset= or mask=.*"
        r"seqstate.export_onnx",
    ):
        torch.export.export(model, args)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace.*` is deprecated:DeprecationWarning")
def test_jit_trace_is_refused_naming_what_works() -> None:
    layer = LSTM(3, 4)
    x, _, _ = _window()
    with pytest.raises(
        TypeError,
        match=r"^LSTM: torch.jit.trace is not supported.*"
        r"torch.export.export.*seqstate.export_onnx",
    ):
        torch.jit.trace(layer, (x,))
