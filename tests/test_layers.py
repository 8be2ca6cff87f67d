"""Equivalence and property tests of seqstate.LSTM / GRU / RNN.

The backbone is one reference: a plain step-by-step loop over ``torch.nn.*Cell`` that loads the
layer's own weights and applies the documented semantics literally (reset = zero the row's state
before the step; masked step = state unchanged, output 0). Everything else (chunking, packing
sequences into one lane, lanes independence, batch-size freedom, masks, strategies) is checked
against it or against the layer itself, in float64 so that any disagreement above 1e-10 is a bug
rather than rounding.
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call

from seqstate.core import layers as layers_module
from seqstate.core import timeline as timeline_module
from seqstate.core.layers import GRU, LSTM, RNN
from seqstate.core.state import GRUState, LSTMState, RNNState, State
from seqstate.core.timeline import Timeline, _plan

pytestmark = pytest.mark.numerics  # run again on another kernel path: scripts/test

KINDS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
STRATEGIES = ("auto", "split")
F64 = torch.float64
# Two paths (fused call, timeline, split, the reference loop) add the same products in orders
# that MKL/oneDNN pick by CPU (AVX2, AVX-512, MKL_CBWR): compare relative + absolute, so that
# values far from 1 (1e21 when the bound falls back) compare by their leading digits.
EXACT = {"rtol": 1e-10, "atol": 1e-10}
CLOSE32 = {"rtol": 1e-6, "atol": 1e-5}  # float32 outputs and states
CLOSE32_GRAD = {"rtol": 1e-5, "atol": 1e-4}  # float32 gradients (longer sums)

# Each hypothesis example builds a tiny layer; a few dozen examples per property are plenty to
# hit every branch (fused, timeline, split, packed, compacted masks) and stay fast.
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- helpers ---------------------------------------------------------------------------------


def make_layer(
    kind: str,
    input_size: int,
    hidden_size: int,
    num_layers: int = 1,
    *,
    strategy: str = "auto",
    dtype: torch.dtype = F64,
    seed: int = 0,
    dropout: float = 0.0,
) -> LSTM | GRU | RNN:
    """A layer with deterministic weights drawn from ``seed`` (no global RNG involved)."""
    if kind == "lstm":
        layer = LSTM(input_size, hidden_size, num_layers, strategy=strategy, dropout=dropout)
    elif kind == "gru":
        layer = GRU(input_size, hidden_size, num_layers, strategy=strategy, dropout=dropout)
    else:
        nonlinearity = kind.removeprefix("rnn_")
        layer = RNN(
            input_size,
            hidden_size,
            num_layers,
            nonlinearity=nonlinearity,
            strategy=strategy,
            dropout=dropout,
        )
    layer = layer.to(dtype)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in layer.parameters():
            # scale 0.5 keeps relu RNNs from exploding over a dozen steps
            parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator, dtype=dtype))
    return layer.eval()


def random_state(layer: LSTM | GRU | RNN, batch_size: int, seed: int) -> State:
    generator = torch.Generator().manual_seed(seed)
    zeros = layer.initial_state(batch_size)
    return zeros.map(lambda t: torch.randn(t.shape, generator=generator, dtype=t.dtype))


def random_flags(shape: tuple[int, int], density: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=generator) < density


_CELLS: dict[type, type[nn.Module]] = {LSTM: nn.LSTMCell, GRU: nn.GRUCell, RNN: nn.RNNCell}


def reference(
    layer: LSTM | GRU | RNN,
    x: torch.Tensor,
    state: State | None = None,
    reset: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, State]:
    """The loop the layers stand for, one ``*Cell`` per layer sharing the layer's parameters.

    x [B, T, F]; reset/mask [B, T] bool; returns y [B, T, H] and the final state [L, B, H].
    Parameters enter through ``functional_call`` so gradients reach the layer's own tensors.
    """
    B, T, _ = x.shape
    if state is None:
        state = layer.initial_state(B)
    reset = torch.zeros(B, T, dtype=torch.bool) if reset is None else reset
    mask = torch.ones(B, T, dtype=torch.bool) if mask is None else mask
    kind = next(k for k in _CELLS if isinstance(layer, k))
    is_lstm = kind is LSTM
    cells = []
    for k in range(layer.num_layers):
        in_size = layer.input_size if k == 0 else layer.hidden_size
        kwargs = {"nonlinearity": layer.nonlinearity} if kind is RNN else {}
        cell = _CELLS[kind](in_size, layer.hidden_size, bias=layer.bias, dtype=x.dtype, **kwargs)
        names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if layer.bias else [])
        params = {name: getattr(layer, f"{name}_l{k}") for name in names}
        cells.append((cell, params))

    hidden = list(state.tensors()[0].unbind(0))  # L x (B, H)
    cell_state = list(state.tensors()[1].unbind(0)) if is_lstm else []
    outputs = []
    for t in range(T):
        r = reset[:, t, None]
        hidden = [torch.where(r, torch.zeros_like(h), h) for h in hidden]
        cell_state = [torch.where(r, torch.zeros_like(c), c) for c in cell_state]
        m = mask[:, t, None]
        inputs = x[:, t]
        for k, (cell, params) in enumerate(cells):
            if is_lstm:
                h_new, c_new = functional_call(cell, params, (inputs, (hidden[k], cell_state[k])))
                cell_state[k] = torch.where(m, c_new, cell_state[k])
            else:
                h_new = functional_call(cell, params, (inputs, hidden[k]))
            hidden[k] = torch.where(m, h_new, hidden[k])
            inputs = h_new
        outputs.append(torch.where(m, inputs, torch.zeros_like(inputs)))
    y = torch.stack(outputs, 1) if outputs else x.new_zeros(B, 0, layer.hidden_size)
    tensors = [torch.stack(hidden)] + ([torch.stack(cell_state)] if is_lstm else [])
    return y, layer.state_type(*tensors)


def with_hidden_units_renumbered(layer: LSTM | GRU | RNN, order: torch.Tensor) -> LSTM | GRU | RNN:
    """A copy of ``layer`` whose hidden unit j is the layer's unit ``order[j]``: the same
    function (states and outputs come out as ``[..., order]``), with every sum over hidden
    units taken in another order, as another CPU's kernel may take it."""
    renumbered = copy.deepcopy(layer)
    H = layer.hidden_size
    gates = layer.weight_hh_l0.shape[0] // H
    rows = torch.cat([order + gate * H for gate in range(gates)])
    with torch.no_grad():
        for name, parameter in renumbered.named_parameters():
            value = getattr(layer, name)[rows]
            if name.startswith("weight_hh") or (name.startswith("weight_ih") and name[-1] != "0"):
                value = value[:, order]  # it reads the hidden units (of this or the last layer)
            parameter.copy_(value)
    return renumbered


def assert_states_close(a: State, b: State, **tolerance: float) -> None:
    assert type(a) is type(b)
    for ta, tb in zip(a.tensors(), b.tensors(), strict=True):
        torch.testing.assert_close(ta, tb, **tolerance)


@dataclass
class Case:
    """One drawn window: a layer and the inputs of one call."""

    layer: LSTM | GRU | RNN
    x: torch.Tensor  # (B, T, F)
    state: State  # (L, B, H)
    reset: torch.Tensor | None  # (B, T) bool
    mask: torch.Tensor | None  # (B, T) bool


@st.composite
def cases(
    draw: Callable,
    *,
    kinds: tuple[str, ...] = KINDS,
    strategies: tuple[str, ...] = STRATEGIES,
    max_batch: int = 4,
    max_time: int = 10,
    dtype: torch.dtype = F64,
) -> Case:
    kind = draw(st.sampled_from(kinds))
    strategy = draw(st.sampled_from(strategies))
    num_layers = draw(st.integers(1, 3))
    B = draw(st.integers(1, max_batch))
    T = draw(st.integers(1, max_time))
    F = draw(st.integers(1, 3))
    H = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**16))
    layer = make_layer(kind, F, H, num_layers, strategy=strategy, dtype=dtype, seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(B, T, F, generator=generator, dtype=dtype)
    state = random_state(layer, B, seed + 2)
    reset_density = draw(st.sampled_from([None, 0.0, 0.15, 0.4, 0.8]))
    mask_density = draw(st.sampled_from([None, 1.0, 0.85, 0.5, 0.0]))
    reset = None if reset_density is None else random_flags((B, T), reset_density, seed + 3)
    mask = None if mask_density is None else random_flags((B, T), mask_density, seed + 4)
    return Case(layer, x, state, reset, mask)


def objective(y: torch.Tensor, state: State, seed: int = 7) -> torch.Tensor:
    """A scalar with random weights on every output and state entry, for gradient checks."""
    generator = torch.Generator().manual_seed(seed)
    total = (y * torch.randn(y.shape, generator=generator, dtype=y.dtype)).sum()
    for t in state.tensors():
        total = total + (t * torch.randn(t.shape, generator=generator, dtype=t.dtype)).sum()
    return total


# --- equivalence with the reference loop ------------------------------------------------------


@PROPERTY
@given(case=cases())
def test_outputs_and_state_equal_reference_loop(case: Case) -> None:
    y, state = case.layer(case.x, case.state, reset=case.reset, mask=case.mask)
    y_ref, state_ref = reference(case.layer, case.x, case.state, case.reset, case.mask)
    torch.testing.assert_close(y, y_ref, **EXACT)
    assert_states_close(state, state_ref, **EXACT)


@PROPERTY
@given(case=cases(max_time=8))
def test_gradients_equal_reference_loop(case: Case) -> None:
    x = case.x.clone().requires_grad_()
    initial = case.state.map(lambda t: t.clone().requires_grad_())
    parameters = list(case.layer.parameters())
    inputs = [x, *initial.tensors(), *parameters]

    y, state = case.layer(x, initial, reset=case.reset, mask=case.mask)
    grads = torch.autograd.grad(objective(y, state), inputs, allow_unused=True)
    y_ref, state_ref = reference(case.layer, x, initial, case.reset, case.mask)
    grads_ref = torch.autograd.grad(objective(y_ref, state_ref), inputs, allow_unused=True)

    for grad, grad_ref, tensor in zip(grads, grads_ref, inputs, strict=True):
        zero = torch.zeros_like(tensor)
        torch.testing.assert_close(
            zero if grad is None else grad, zero if grad_ref is None else grad_ref, **EXACT
        )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_reference_with_dense_resets_and_masks(kind: str, strategy: str) -> None:
    """Fixed worst case per kind x strategy: 3 layers, resets in most columns, holes in masks."""
    layer = make_layer(kind, 3, 4, 3, strategy=strategy, seed=11)
    x = torch.randn(5, 12, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    state = random_state(layer, 5, 2)
    reset = random_flags((5, 12), 0.4, 3)
    mask = random_flags((5, 12), 0.7, 4)
    y, final = layer(x, state, reset=reset, mask=mask)
    y_ref, final_ref = reference(layer, x, state, reset, mask)
    torch.testing.assert_close(y, y_ref, **EXACT)
    assert_states_close(final, final_ref, **EXACT)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases(strategies=("auto",), max_time=8, dtype=torch.float32))
def test_float32_outputs_states_and_gradients_equal_reference_loop(case: Case) -> None:
    x = case.x.clone().requires_grad_()
    initial = case.state.map(lambda t: t.clone().requires_grad_())
    inputs = [x, *initial.tensors(), *case.layer.parameters()]
    y, state = case.layer(x, initial, reset=case.reset, mask=case.mask)
    y_ref, state_ref = reference(case.layer, x, initial, case.reset, case.mask)
    torch.testing.assert_close(y, y_ref, **CLOSE32)
    assert_states_close(state, state_ref, **CLOSE32)
    grads = torch.autograd.grad(objective(y, state), inputs, allow_unused=True)
    grads_ref = torch.autograd.grad(objective(y_ref, state_ref), inputs, allow_unused=True)
    for grad, grad_ref, tensor in zip(grads, grads_ref, inputs, strict=True):
        zero = torch.zeros_like(tensor)
        torch.testing.assert_close(
            zero if grad is None else grad,
            zero if grad_ref is None else grad_ref,
            **CLOSE32_GRAD,
        )


def count_paths(layer: LSTM | GRU | RNN, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count, on ``layer`` only, timeline calls that succeed or fall back, and split runs."""
    counts = {"timeline": 0, "fallback": 0, "split": 0}
    timeline, split = layer._run_timeline, layer._run_split

    def counted_timeline(*args: object) -> object:
        result = timeline(*args)
        counts["timeline" if result is not None else "fallback"] += 1
        return result

    def counted_split(*args: object) -> object:
        counts["split"] += 1
        return split(*args)

    monkeypatch.setattr(layer, "_run_timeline", counted_timeline)
    monkeypatch.setattr(layer, "_run_split", counted_split)
    return counts


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num_layers", [1, 3])
def test_default_runs_one_fused_call_per_layer_on_timelines(
    kind: str, num_layers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """auto takes the timeline whatever the resets and padding (one kernel call per layer);
    the tanh RNN, which flags cannot zero, runs split; both equal the step loop."""
    layer = make_layer(kind, 3, 4, num_layers, seed=7)
    counts = count_paths(layer, monkeypatch)
    kernel_calls: list[int] = []
    kernel = layer.sequence_kernel
    monkeypatch.setattr(layer, "sequence_kernel", lambda *a: kernel_calls.append(1) or kernel(*a))
    x = torch.randn(6, 14, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    state = random_state(layer, 6, 1)
    reset = random_flags((6, 14), 0.3, 2)
    mask = random_flags((6, 14), 0.7, 3)
    mask[4] = False  # a row that is all padding
    mask[5, 9:] = False  # trailing padding
    for window_mask in (None, mask):
        y, final = layer(x, state, reset=reset, mask=window_mask)
        y_ref, final_ref = reference(layer, x, state, reset, window_mask)
        torch.testing.assert_close(y, y_ref, **EXACT)
        assert_states_close(final, final_ref, **EXACT)
    if kind == "rnn_tanh":  # resets inside rows: zero steps it cannot make
        assert counts == {"timeline": 0, "fallback": 2, "split": 2}
    else:
        assert counts == {"timeline": 2, "fallback": 0, "split": 0}
        assert len(kernel_calls) == 2 * num_layers


@pytest.mark.parametrize("num_layers", [1, 2])
def test_tanh_rnn_takes_the_timeline_for_padding_and_edge_resets(
    num_layers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without resets inside rows no zero step is needed: the tanh RNN's hold steps need no
    flag (its h is read at each row's last real step). Outputs and gradients exact."""
    layer = make_layer("rnn_tanh", 3, 4, num_layers, seed=9)
    counts = count_paths(layer, monkeypatch)
    x = torch.randn(4, 9, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    x.requires_grad_(True)
    initial = random_state(layer, 4, 1).map(lambda t: t.requires_grad_())
    mask = random_flags((4, 9), 0.7, 2)
    mask[1] = False  # all padding
    reset = torch.zeros(4, 9, dtype=torch.bool)
    reset[0, 0] = reset[1, 4] = True  # before row 0's first step, inside all-padding row 1
    reset[2, 8] = bool(mask[2, :8].any()) and not bool(mask[2, 8])  # after row 2's last step
    inputs = [x, *initial.tensors(), *layer.parameters()]
    y, state = layer(x, initial, reset=reset, mask=mask)
    y_ref, state_ref = reference(layer, x, initial, reset, mask)
    torch.testing.assert_close(y, y_ref, **EXACT)
    assert_states_close(state, state_ref, **EXACT)
    grads = torch.autograd.grad(objective(y, state), inputs)
    grads_ref = torch.autograd.grad(objective(y_ref, state_ref), inputs)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(grad, grad_ref, **EXACT)
    assert counts == {"timeline": 1, "fallback": 0, "split": 0}


def trailing_mask(lengths: list[int], T: int) -> torch.Tensor:
    """[B, T] mask with row b's real steps at columns [0, lengths[b])."""
    return torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("lengths", [[7, 3, 0, 5], [4, 6, 2, 6]], ids=["full-row", "all-short"])
def test_padding_at_row_ends_runs_in_place_and_equals_the_reference(
    kind: str, num_layers: int, lengths: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Padding only at row ends (no zero steps) keeps every real step in its column: the
    steps go in and out as transposed views (for the cells whose fill steps output 0), also
    when every row ends in padding (the timeline is shorter than the window). Outputs, final
    states (read at each row's last real step) and gradients equal the step loop."""
    T = 7
    layer = make_layer(kind, 3, 4, num_layers, seed=4)
    counts = count_paths(layer, monkeypatch)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(4, T, 3, generator=generator, dtype=F64).requires_grad_()
    initial = random_state(layer, 4, 2).map(lambda t: t.requires_grad_())
    mask = trailing_mask(lengths, T)
    reset = torch.zeros(4, T, dtype=torch.bool)
    reset[1, 0] = True  # before row 1's first step
    reset[3, 6] = True  # after row 3's last real step: a zero final state
    timeline = Timeline(reset, mask)
    assert timeline.plan is not None and timeline.plan.in_place
    assert timeline.plan.steps == max(lengths)
    inputs = [x, *initial.tensors(), *layer.parameters()]
    y, state = layer(x, initial, reset=reset, mask=mask, timeline=timeline)
    y_ref, state_ref = reference(layer, x, initial, reset, mask)
    torch.testing.assert_close(y, y_ref, **EXACT)
    assert_states_close(state, state_ref, **EXACT)
    grads = torch.autograd.grad(objective(y, state), inputs)
    grads_ref = torch.autograd.grad(objective(y_ref, state_ref), inputs)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(grad, grad_ref, **EXACT)
    assert counts == {"timeline": 1, "fallback": 0, "split": 0}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("uses", ["outputs", "state"])
def test_gradients_of_outputs_alone_or_state_alone_equal_the_reference(
    kind: str, uses: str
) -> None:
    """The top layer's outputs and final h leave by one gather; a loss on only one of them
    (the other's gradient is None) still gets the reference loop's gradients."""
    layer = make_layer(kind, 2, 3, 2, seed=6)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(3, 8, 2, generator=generator, dtype=F64).requires_grad_()
    initial = random_state(layer, 3, 4).map(lambda t: t.requires_grad_())
    reset = random_flags((3, 8), 0.25, 5)
    mask = random_flags((3, 8), 0.8, 6)
    inputs = [x, *initial.tensors(), *layer.parameters()]

    def loss(y: torch.Tensor, state: State) -> torch.Tensor:
        if uses == "outputs":
            return (y * torch.linspace(-1, 1, y.numel(), dtype=F64).view(y.shape)).sum()
        return sum((t * t).sum() for t in state.tensors())  # type: ignore[return-value]

    y, state = layer(x, initial, reset=reset, mask=mask)
    y_ref, state_ref = reference(layer, x, initial, reset, mask)
    grads = torch.autograd.grad(loss(y, state), inputs, allow_unused=True)
    grads_ref = torch.autograd.grad(loss(y_ref, state_ref), inputs, allow_unused=True)
    for grad, grad_ref, tensor in zip(grads, grads_ref, inputs, strict=True):
        zero = torch.zeros_like(tensor)
        torch.testing.assert_close(
            zero if grad is None else grad, zero if grad_ref is None else grad_ref, **EXACT
        )


@pytest.mark.parametrize("kind", ("lstm", "gru", "rnn_relu"))
def test_non_finite_values_at_padding_steps_change_nothing(kind: str) -> None:
    """Padding steps' inputs are never consumed: NaN or inf there (which an in-place
    timeline's hold steps would read) gives the outputs and state of zeros there."""
    layer = make_layer(kind, 2, 3, seed=8)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, 2, generator=generator, dtype=F64)
    mask = trailing_mask([6, 4, 2], 6)
    dirty = x.clone()
    dirty[1, 4] = float("nan")
    dirty[2, 3] = float("inf")
    clean = torch.where(mask[..., None], x, 0.0)
    initial = random_state(layer, 3, 1)
    y, state = layer(dirty, initial, mask=mask)
    y_clean, state_clean = layer(clean, initial, mask=mask)
    torch.testing.assert_close(y, y_clean, **EXACT)
    assert_states_close(state, state_clean, **EXACT)


@pytest.mark.parametrize("kind", ("lstm", "gru", "rnn_relu"))
def test_saturation_bound_falls_back_to_split_with_huge_weights(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Weights so large that the flags could not saturate the gates: the bound sends the
    window to split, and the result is still the step loop's."""
    layer = make_layer(kind, 3, 4, 2, seed=3)
    with torch.no_grad():
        layer.weight_hh_l1.mul_(4e3)  # |pre-activation| of layer 1 far beyond the safe bound
    counts = count_paths(layer, monkeypatch)
    x = torch.randn(3, 10, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    state = random_state(layer, 3, 1)
    reset = random_flags((3, 10), 0.3, 2)
    y, final = layer(x, state, reset=reset)
    y_ref, final_ref = reference(layer, x, state, reset)
    torch.testing.assert_close(y, y_ref, **EXACT)
    assert_states_close(final, final_ref, **EXACT)
    assert counts == {"timeline": 0, "fallback": 1, "split": 1}
    # Regression: ReLU values pass 1e15 here, so the same sums taken in another order (another
    # CPU's kernels; here the hidden units renumbered) differ by far more than an absolute 1e-10
    order = torch.randperm(layer.hidden_size, generator=torch.Generator().manual_seed(1))
    renumbered = with_hidden_units_renumbered(layer, order)
    y_other, final_other = reference(renumbered, x, state.map(lambda t: t[..., order]), reset)
    assert kind != "rnn_relu" or y.abs().max() > 1e15  # (LSTM and GRU outputs stay in [-1, 1])
    torch.testing.assert_close(y[..., order], y_other, **EXACT)
    assert_states_close(final.map(lambda t: t[..., order]), final_other, **EXACT)

    with torch.no_grad():
        layer.weight_hh_l1.div_(4e3)  # back to ordinary weights: the timeline again
    layer(x, state, reset=reset)
    assert counts["timeline"] == 1


def test_saturation_bound_sees_a_large_input() -> None:
    """The bound grows with the input: an input of 1e6 cannot be flagged safely."""
    layer = make_layer("lstm", 2, 3, seed=1)
    x = torch.randn(2, 6, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    reset = random_flags((2, 6), 0.4, 1)
    reset[0, 3] = True
    state = layer.initial_state(2)
    assert layer._run_timeline(x, state, reset, None) is not None
    assert layer._run_timeline(x * 1e6, state, reset, None) is None


def test_timeline_plan_of_the_docstring_example() -> None:
    """The plan of the layers docstring's picture, B=2, T=5: row 0 resets at step 3; row 1 has
    padding at step 1 and a reset at step 4. Timeline (0 = zero step, ~ = hold step)::

        row 0:  a0 a1 a2 0  a3 a4
        row 1:  b0 b2 b3 0  b4 ~
    """
    reset = np.zeros((2, 5), dtype=bool)
    reset[0, 3] = reset[1, 4] = True
    mask = np.ones((2, 5), dtype=bool)
    mask[1, 1] = False
    plan = _plan(reset, mask, 2, 5, can_zero=True)
    assert plan is not None and plan.steps == 6
    B = 2
    # slot p * B + b reads step b * T + t; stepless slots are zero-filled
    row0 = {0: 0, 1: 1, 2: 2, 4: 3, 5: 4}  # position -> t
    row1 = {0: 0, 1: 2, 2: 3, 4: 4}
    for b, positions in enumerate((row0, row1)):
        for p, t in positions.items():
            assert plan.reads[p * B + b] == b * 5 + t
            assert plan.writes[b * 5 + t] == p * B + b
    assert plan.fill.tolist() == [3 * B + 0, 3 * B + 1, 5 * B + 1]
    assert plan.padding is not None and plan.padding.tolist() == [1 * 5 + 1]
    zero, hold = plan.flags[..., 0], plan.flags[..., 1]
    assert np.argwhere(zero).tolist() == [[3, 0], [3, 1]]
    assert np.argwhere(hold).tolist() == [[5, 1]]
    assert plan.last.tolist() == [5 * B + 0, 4 * B + 1]
    assert plan.initial is None and plan.tail is None and plan.empty_rows is None
    # the tanh RNN cannot take zero steps: no plan
    assert _plan(reset, mask, 2, 5, can_zero=False) is None


@PROPERTY
@given(
    kind=st.sampled_from(KINDS),
    num_layers=st.integers(1, 3),
    dtype=st.sampled_from([F64, torch.float32]),
    T=st.integers(1, 8),
    seed=st.integers(0, 1000),
)
def test_single_steps_use_the_cell_kernels_and_equal_the_whole_window(
    kind: str, num_layers: int, dtype: torch.dtype, T: int, seed: int
) -> None:
    """The streaming hot path (T = 1, no mask: cell kernels) == one call over the window."""
    layer = make_layer(kind, 2, 3, num_layers, dtype=dtype, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(3, T, 2, generator=generator, dtype=dtype)
    reset = random_flags((3, T), 0.3, seed + 1)
    state = random_state(layer, 3, seed + 2)
    y_whole, final_whole = layer(x, state, reset=reset)
    outputs, carried = [], state
    fused = layer.fused
    layer.fused = None  # type: ignore[assignment,method-assign]  # T = 1 must not use it
    try:
        for t in range(T):
            y, carried = layer(x[:, t : t + 1], carried, reset=reset[:, t : t + 1])
            outputs.append(y)
    finally:
        layer.fused = fused  # type: ignore[method-assign]
    tolerance = EXACT if dtype == F64 else CLOSE32
    torch.testing.assert_close(torch.cat(outputs, 1), y_whole, **tolerance)
    assert_states_close(carried, final_whole, **tolerance)


@pytest.mark.parametrize("kind", KINDS)
def test_single_step_gradients_equal_reference(kind: str) -> None:
    layer = make_layer(kind, 2, 3, 2, seed=4).train()  # no dropout: train == eval here
    x = torch.randn(4, 1, 2, dtype=F64, requires_grad=True)
    initial = random_state(layer, 4, 1).map(lambda t: t.requires_grad_())
    inputs = [x, *initial.tensors(), *layer.parameters()]
    y, state = layer(x, initial)
    y_ref, state_ref = reference(layer, x, initial)
    grads = torch.autograd.grad(objective(y, state), inputs)
    grads_ref = torch.autograd.grad(objective(y_ref, state_ref), inputs)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(grad, grad_ref, **EXACT)


# --- drop-in honesty ---------------------------------------------------------------------------


@pytest.mark.parametrize("factory", [LSTM, GRU, RNN])
@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"batch_first": False}, r"batch_first=False is not supported.*x.transpose\(0, 1\)"),
        ({"bidirectional": True}, r"bidirectional=True is not supported.*whole sequence"),
    ],
)
def test_options_the_stateful_layer_cannot_keep_are_refused(
    factory: type, option: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        factory(2, 3, **option)


@pytest.mark.parametrize("factory", [LSTM, GRU, RNN])
def test_proj_size_is_refused_and_harmless_torch_options_are_accepted(factory: type) -> None:
    with pytest.raises(ValueError, match=r"proj_size=2 is not supported.*Linear"):
        factory(2, 3, proj_size=2)
    layer = factory(2, 3, batch_first=True, bidirectional=False)
    assert layer.batch_first and not layer.bidirectional and layer.proj_size == 0


@pytest.mark.parametrize(
    ("factory", "extra", "meant"),
    [
        (LSTM, (True, True, 0.5), "bias=True, batch_first=True, dropout=0.5"),
        (GRU, (False,), "bias=False"),
        (RNN, ("relu",), "nonlinearity='relu'"),
    ],
)
def test_torch_positional_arguments_are_named_as_keywords(
    factory: type, extra: tuple, meant: str
) -> None:
    """Regression: torch's positional order (bias, batch_first, dropout...) used to fail with
    "_Resettable.__init__() takes from 3 to 4 positional arguments"."""
    name = factory.__name__
    message = (
        rf"^{name}\(\) takes input_size, hidden_size and num_layers by position.*"
        rf"write {name}\(input_size, hidden_size, num_layers, {re.escape(meant)}\)$"
    )
    with pytest.raises(TypeError, match=message):
        factory(2, 3, 1, *extra)


# --- chunked == whole ------------------------------------------------------------------------


def run_in_chunks(case: Case, bounds: list[int]) -> tuple[torch.Tensor, State]:
    """Run ``case`` chunk by chunk over ``[bounds[i], bounds[i+1])``, carrying the state."""
    state, outputs = case.state, []
    for start, end in itertools.pairwise(bounds):
        reset = None if case.reset is None else case.reset[:, start:end]
        mask = None if case.mask is None else case.mask[:, start:end]
        y, state = case.layer(case.x[:, start:end], state, reset=reset, mask=mask)
        outputs.append(y)
    return torch.cat(outputs, 1), state


@PROPERTY
@given(case=cases(max_time=12), data=st.data())
def test_chunked_equals_whole(case: Case, data: st.DataObject) -> None:
    T = case.x.shape[1]
    cuts = data.draw(st.sets(st.integers(0, T), max_size=T), label="cuts")
    bounds = sorted({0, T} | cuts)
    bounds = [0, *bounds] if data.draw(st.booleans(), label="empty chunk first") else bounds
    y_whole, state_whole = case.layer(case.x, case.state, reset=case.reset, mask=case.mask)
    y_chunks, state_chunks = run_in_chunks(case, bounds)
    torch.testing.assert_close(y_chunks, y_whole, **EXACT)
    assert_states_close(state_chunks, state_whole, **EXACT)


@settings(max_examples=30, deadline=None)
@given(case=cases(max_time=12, dtype=torch.float32), data=st.data())
def test_chunked_equals_whole_float32(case: Case, data: st.DataObject) -> None:
    T = case.x.shape[1]
    bounds = sorted({0, T} | data.draw(st.sets(st.integers(1, T - 1 if T > 1 else 1))))
    bounds = [b for b in bounds if b <= T]
    y_whole, state_whole = case.layer(case.x, case.state, reset=case.reset, mask=case.mask)
    y_chunks, state_chunks = run_in_chunks(case, bounds)
    torch.testing.assert_close(y_chunks, y_whole, **CLOSE32)
    assert_states_close(state_chunks, state_whole, **CLOSE32)


def test_chunked_equals_whole_one_step_at_a_time() -> None:
    case = Case(
        make_layer("gru", 2, 3, 2, seed=3),
        torch.randn(3, 9, 2, generator=torch.Generator().manual_seed(0), dtype=F64),
        GRUState.zeros(2, 3, 3, dtype=F64),
        random_flags((3, 9), 0.3, 1),
        random_flags((3, 9), 0.7, 2),
    )
    y_whole, state_whole = case.layer(case.x, case.state, reset=case.reset, mask=case.mask)
    y_steps, state_steps = run_in_chunks(case, list(range(10)))
    torch.testing.assert_close(y_steps, y_whole, **EXACT)
    assert_states_close(state_steps, state_whole, **EXACT)


# --- reset == separate -------------------------------------------------------------------------


@PROPERTY
@given(
    kind=st.sampled_from(KINDS),
    strategy=st.sampled_from(STRATEGIES),
    num_layers=st.integers(1, 3),
    first=st.integers(1, 7),
    second=st.integers(1, 7),
    seed=st.integers(0, 1000),
)
def test_reset_equals_separate(
    kind: str, strategy: str, num_layers: int, first: int, second: int, seed: int
) -> None:
    layer = make_layer(kind, 2, 3, num_layers, strategy=strategy, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(1, first, 2, generator=generator, dtype=F64)
    b = torch.randn(1, second, 2, generator=generator, dtype=F64)
    reset = torch.zeros(1, first + second, dtype=torch.bool)
    reset[0, 0] = reset[0, first] = True
    # a stale carried state: the reset at column 0 must discard it
    carried = random_state(layer, 1, seed + 1)

    y, state = layer(torch.cat([a, b], 1), carried, reset=reset)
    y_a, _ = layer(a)
    y_b, state_b = layer(b)
    torch.testing.assert_close(y[:, :first], y_a, **EXACT)
    torch.testing.assert_close(y[:, first:], y_b, **EXACT)
    assert_states_close(state, state_b, **EXACT)


# --- lanes are independent, batch-size free --------------------------------------------------


@PROPERTY
@given(case=cases(), data=st.data())
def test_lanes_are_independent(case: Case, data: st.DataObject) -> None:
    B, T, _ = case.x.shape
    row = data.draw(st.integers(0, B - 1), label="row")
    y, state = case.layer(case.x, case.state, reset=case.reset, mask=case.mask)

    # Change everything about one row: its inputs, its resets and its mask.
    generator = torch.Generator().manual_seed(123)
    x = case.x.clone()
    x[row] = torch.randn(x[row].shape, generator=generator, dtype=x.dtype) * 3
    reset = torch.zeros(B, T, dtype=torch.bool) if case.reset is None else case.reset.clone()
    reset[row] = random_flags((1, T), 0.5, 5)[0]
    mask = torch.ones(B, T, dtype=torch.bool) if case.mask is None else case.mask.clone()
    mask[row] = random_flags((1, T), 0.5, 6)[0]
    y2, state2 = case.layer(x, case.state, reset=reset, mask=mask)

    others = [b for b in range(B) if b != row]
    torch.testing.assert_close(y2[others], y[others], **EXACT)
    assert_states_close(state2.select(others), state.select(others), **EXACT)


@PROPERTY
@given(case=cases(max_batch=6), data=st.data())
def test_batch_size_free(case: Case, data: st.DataObject) -> None:
    B = case.x.shape[0]
    row = data.draw(st.integers(0, B - 1), label="row")
    y, state = case.layer(case.x, case.state, reset=case.reset, mask=case.mask)
    pick = slice(row, row + 1)
    y_alone, state_alone = case.layer(
        case.x[pick],
        case.state.select([row]),
        reset=None if case.reset is None else case.reset[pick],
        mask=None if case.mask is None else case.mask[pick],
    )
    torch.testing.assert_close(y_alone, y[pick], **EXACT)
    assert_states_close(state_alone, state.select([row]), **EXACT)


def test_batch_size_free_inside_a_large_batch() -> None:
    layer = make_layer("lstm", 2, 4, 2, seed=1)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 10, 2, generator=generator, dtype=F64)
    reset = random_flags((64, 10), 0.2, 1)
    mask = random_flags((64, 10), 0.8, 2)
    y, state = layer(x, reset=reset, mask=mask)
    for row in (0, 17, 63):
        y_alone, state_alone = layer(
            x[row : row + 1], reset=reset[row : row + 1], mask=mask[row : row + 1]
        )
        torch.testing.assert_close(y_alone, y[row : row + 1], **EXACT)
        assert_states_close(state_alone, state.select([row]), **EXACT)


# --- masks ---------------------------------------------------------------------------------


@PROPERTY
@given(
    kind=st.sampled_from(KINDS),
    num_layers=st.integers(1, 3),
    lengths=st.lists(st.integers(0, 8), min_size=1, max_size=4),
    seed=st.integers(0, 1000),
)
def test_masked_tail_equals_truncated_sequence(
    kind: str, num_layers: int, lengths: list[int], seed: int
) -> None:
    layer = make_layer(kind, 2, 3, num_layers, seed=seed)
    B, T = len(lengths), 8
    x = torch.randn(B, T, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)
    carried = random_state(layer, B, seed + 1)
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    y, state = layer(x, carried, mask=mask)
    for row, length in enumerate(lengths):
        y_cut, state_cut = layer(x[row : row + 1, :length], carried.select([row]))
        torch.testing.assert_close(y[row : row + 1, :length], y_cut, **EXACT)
        assert bool((y[row, length:] == 0).all())
        assert_states_close(state.select([row]), state_cut, **EXACT)


@pytest.mark.parametrize("kind", KINDS)
def test_masked_middle_leaves_state_unchanged(kind: str) -> None:
    layer = make_layer(kind, 2, 3, 2, seed=4)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 9, 2, generator=generator, dtype=F64)
    carried = random_state(layer, 2, 1)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[:, 3:6] = False

    # A window that is entirely padding: state passes through bitwise, outputs are zero.
    y_pad, state_pad = layer(x[:, 3:6], carried, mask=mask[:, 3:6])
    assert state_pad.equal(carried)
    assert bool((y_pad == 0).all())

    # Padding inside a window == the window with those steps removed.
    y, state = layer(x, carried, mask=mask)
    keep = [0, 1, 2, 6, 7, 8]
    y_removed, state_removed = layer(x[:, keep], carried)
    torch.testing.assert_close(y[:, keep], y_removed, **EXACT)
    assert bool((y[:, 3:6] == 0).all())
    assert_states_close(state, state_removed, **EXACT)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_reset_on_masked_step_without_later_real_step_gives_zero_state(
    kind: str, strategy: str
) -> None:
    layer = make_layer(kind, 2, 3, 2, strategy=strategy, seed=2)
    x = torch.randn(3, 6, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    carried = random_state(layer, 3, 1)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[0, 4:] = False  # row 0: reset at a masked step after its last real step
    mask[1, :] = False  # row 1: fully masked, reset inside
    reset = torch.zeros(3, 6, dtype=torch.bool)
    reset[0, 5] = reset[1, 2] = True
    y, state = layer(x, carried, reset=reset, mask=mask)
    for t in state.tensors():
        assert bool((t[:, :2] == 0).all())
    # row 2 is untouched by the others' resets
    y2, state2 = layer(x[2:], carried.select([2]))
    torch.testing.assert_close(y[2:], y2, **EXACT)
    assert_states_close(state.select([2]), state2, **EXACT)
    _, state_ref = reference(layer, x, carried, reset, mask)
    assert_states_close(state, state_ref, **EXACT)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("with_reset", [False, True])
def test_all_rows_fully_masked_leave_state_unchanged(kind: str, with_reset: bool) -> None:
    """Regression: a window where no row has a real step used to crash in the packed call."""
    layer = make_layer(kind, 2, 3, 2, seed=2)
    x = torch.randn(2, 4, 2, dtype=F64)
    carried = random_state(layer, 2, 1)
    mask = torch.zeros(2, 4, dtype=torch.bool)
    reset = torch.zeros(2, 4, dtype=torch.bool)
    reset[0, 2] = with_reset
    y, state = layer(x, carried, reset=reset, mask=mask)
    assert bool((y == 0).all()) and y.shape == (2, 4, 3)
    expected = carried.reset_rows([0]) if with_reset else carried
    assert state.equal(expected)


def test_int_flags_are_accepted_like_bool() -> None:
    layer = make_layer("gru", 2, 3, seed=1)
    x = torch.randn(2, 5, 2, dtype=F64)
    reset = random_flags((2, 5), 0.3, 1)
    mask = random_flags((2, 5), 0.7, 2)
    y, state = layer(x, reset=reset, mask=mask)
    y_int, state_int = layer(x, reset=reset.to(torch.int64), mask=mask.to(torch.uint8))
    # bitwise: the flags' dtype changes no kernel call, only how the plan reads them
    assert torch.equal(y, y_int) and state.equal(state_int)


def test_empty_window_returns_state_unchanged() -> None:
    layer = make_layer("lstm", 2, 3, seed=1)
    carried = random_state(layer, 2, 1)
    y, state = layer(torch.zeros(2, 0, 2, dtype=F64), carried)
    assert y.shape == (2, 0, 3)
    assert state.equal(carried)


# --- interoperability with torch.nn --------------------------------------------------------


TORCH_PAIRS = [
    ("lstm", lambda: LSTM(3, 5, 2), lambda: nn.LSTM(3, 5, 2, batch_first=True)),
    ("gru", lambda: GRU(3, 5, 2), lambda: nn.GRU(3, 5, 2, batch_first=True)),
    ("rnn_tanh", lambda: RNN(3, 5, 2), lambda: nn.RNN(3, 5, 2, batch_first=True)),
    (
        "rnn_relu",
        lambda: RNN(3, 5, 2, nonlinearity="relu"),
        lambda: nn.RNN(3, 5, 2, nonlinearity="relu", batch_first=True),
    ),
]


@pytest.mark.parametrize(("kind", "ours_factory", "torch_factory"), TORCH_PAIRS)
def test_state_dict_round_trips_with_torch_and_outputs_are_bitwise_equal(
    kind: str, ours_factory: Callable, torch_factory: Callable
) -> None:
    torch.manual_seed(0)
    theirs = torch_factory()
    ours = ours_factory()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(4, 7, 3)
    state = random_state(ours, 4, 3).to(dtype=torch.float32)
    hx = tuple(state.tensors()) if kind == "lstm" else state.tensors()[0]

    y, final = ours(x, state)
    y_torch, hx_torch = theirs(x, hx)
    # bitwise on every CPU: without resets ours is torch's own fused call, same shapes
    assert torch.equal(y, y_torch)
    for a, b in zip(final.tensors(), hx_torch if kind == "lstm" else (hx_torch,), strict=True):
        assert torch.equal(a, b)

    # and the other way: torch loads ours
    other = torch_factory()
    other.load_state_dict(ours.state_dict())
    assert torch.equal(other(x, hx)[0], y)
    assert set(ours.state_dict()) == set(theirs.state_dict())


@pytest.mark.parametrize(
    ("F", "H", "B", "scale"),
    [(3, 5, 4, 1.0), (10, 1000, 2, 1.0), (10, 1000, 1, 30.0), (32, 64, 16, 10.0), (1, 1, 2, 1.0)],
)
def test_one_step_lstm_agrees_with_torch_within_the_documented_bound(
    F: int, H: int, B: int, scale: float
) -> None:
    """A one-step window runs the cell kernel (lstm_cell); torch's float32 nn.LSTM runs its
    sequence kernel (oneDNN on CPU), which sums each gate in its own order. The layers
    docstring's bound: |dh| and |dc| / (1 + max|c0|) <= 4 eps S per row, S the largest sum of
    |terms| of a gate pre-activation (measured up to 0.4 eps S)."""
    torch.manual_seed(H + B)
    theirs = nn.LSTM(F, H, batch_first=True)
    with torch.no_grad():
        for parameter in theirs.parameters():
            parameter.mul_(scale)
    ours = LSTM(F, H)
    ours.load_state_dict(theirs.state_dict())
    generator = torch.Generator().manual_seed(B)
    x = 2 * torch.randn(B, 1, F, generator=generator)
    h0 = 2 * torch.rand(1, B, H, generator=generator) - 1
    c0 = 3 * torch.randn(1, B, H, generator=generator)
    with torch.no_grad():
        y, state = ours(x, LSTMState(h0, c0))
        y_torch, (_, c_torch) = theirs(x, (h0, c0))
    w_ih, w_hh, b_ih, b_hh = (p.detach() for p in theirs._flat_weights)
    terms = x[:, 0].abs() @ w_ih.abs().T + h0[0].abs() @ w_hh.abs().T + b_ih.abs() + b_hh.abs()
    bound = 4 * torch.finfo(torch.float32).eps * terms.max(1).values  # (B,)
    dh = (y[:, 0] - y_torch[:, 0]).abs().max(1).values
    dc = (state.cell[0] - c_torch[0]).abs().max(1).values / (1 + c0[0].abs().max(1).values)
    assert bool((dh <= bound).all()) and bool((dc <= bound).all()), (dh, dc, bound)


# --- dropout ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_dropout_is_active_in_train_and_off_in_eval(kind: str) -> None:
    layer = make_layer(kind, 3, 16, 2, dropout=0.5, seed=1)
    x = torch.randn(4, 6, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    reset = random_flags((4, 6), 0.3, 1)

    layer.eval()
    y_eval, _ = layer(x, reset=reset)
    y_eval_again, _ = layer(x, reset=reset)
    assert torch.equal(y_eval, y_eval_again)  # the same call twice: the same kernels
    torch.testing.assert_close(y_eval, reference(layer, x, None, reset)[0], **EXACT)

    layer.train()
    torch.manual_seed(0)
    y_train, _ = layer(x, reset=reset)
    y_train_again, _ = layer(x, reset=reset)
    assert not torch.allclose(y_train, y_eval)
    assert not torch.allclose(y_train, y_train_again)

    # one layer: torch applies no dropout at all (nothing between layers)
    single = make_layer(kind, 3, 16, 1, seed=1)
    single.dropout = 0.5
    single.train()
    assert torch.equal(single(x)[0], single.eval()(x)[0])  # one fused call, same shapes


# --- initial_state ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "state_type"),
    [
        (lambda: LSTM(2, 3, 2), LSTMState),
        (lambda: GRU(2, 3, 2), GRUState),
        (lambda: RNN(2, 3, 2), RNNState),
    ],
)
def test_initial_state_is_zero_of_the_right_type(factory: Callable, state_type: type) -> None:
    layer = factory().double()
    state = layer.initial_state(5)
    assert type(state) is state_type
    assert (state.num_layers, state.batch_size, state.hidden_size) == (2, 5, 3)
    assert state.dtype == F64
    assert all(bool((t == 0).all()) for t in state.tensors())
    x = torch.randn(5, 3, 2, dtype=F64)
    y_none, s_none = layer(x)
    y_zero, s_zero = layer(x, state)
    assert torch.equal(y_none, y_zero) and s_none.equal(s_zero)  # one call, zeros either way


@pytest.mark.parametrize(
    ("batch_size", "error"),
    [(-1, ValueError), (2.0, TypeError), (True, TypeError), ("3", TypeError)],
)
def test_initial_state_rejects_bad_batch_size(batch_size: object, error: type) -> None:
    with pytest.raises(error, match="batch_size"):
        LSTM(2, 3).initial_state(batch_size)  # type: ignore[arg-type]


# --- bad input ---------------------------------------------------------------------------


def _bad_calls() -> list[tuple[str, Callable, type[Exception], str]]:
    """(id, call(layer, x, state), exception, message regex) for an LSTM(3, 4, 2) in float64."""
    B, T = 2, 5
    ok_flags = torch.zeros(B, T, dtype=torch.bool)
    return [
        ("x rank 2", lambda l, x, s: l(x[0], s), ValueError, r"x must have shape \[B, T, F\]"),
        ("x rank 4", lambda l, x, s: l(x[None], s), ValueError, r"x must have shape"),
        ("x not tensor", lambda l, x, s: l(x.tolist(), s), TypeError, r"x must be a torch.Tensor"),
        ("x features", lambda l, x, s: l(x[..., :2], s), ValueError, r"x must have 3 features"),
        ("x dtype", lambda l, x, s: l(x.float(), s), TypeError, r"x is torch.float32"),
        ("x int", lambda l, x, s: l(x.long(), s), TypeError, r"x is torch.int64"),
        (
            "state type",
            lambda l, x, s: l(x, GRUState(s.hidden)),
            TypeError,
            r"state must be a LSTMState",
        ),
        (
            "state tuple",
            lambda l, x, s: l(x, tuple(s.tensors())),
            TypeError,
            r"state must be a LSTMState",
        ),
        ("state batch", lambda l, x, s: l(x, s.select([0])), ValueError, r"state must have shape"),
        (
            "state layers",
            lambda l, x, s: l(x, LSTMState.zeros(1, B, 4, dtype=F64)),
            ValueError,
            r"state must have shape \[layers, B, H\]",
        ),
        (
            "state hidden",
            lambda l, x, s: l(x, LSTMState.zeros(2, B, 5, dtype=F64)),
            ValueError,
            r"state must have shape",
        ),
        ("state dtype", lambda l, x, s: l(x, s.to(dtype=torch.float32)), TypeError, r"state is"),
        (
            "reset shape",
            lambda l, x, s: l(x, s, reset=ok_flags[:, :-1]),
            ValueError,
            r"reset must have shape \[B, T\]=\[2, 5\]",
        ),
        (
            "reset transposed",
            lambda l, x, s: l(x, s, reset=ok_flags.T),
            ValueError,
            r"reset must have shape",
        ),
        (
            "reset float",
            lambda l, x, s: l(x, s, reset=ok_flags.double()),
            TypeError,
            r"reset must be a bool tensor",
        ),
        (
            "reset values",
            lambda l, x, s: l(x, s, reset=ok_flags.long() + 2),
            ValueError,
            r"reset must hold only 0/1",
        ),
        (
            "reset list",
            lambda l, x, s: l(x, s, reset=ok_flags.tolist()),
            TypeError,
            r"reset must be a bool torch.Tensor",
        ),
        (
            "mask shape",
            lambda l, x, s: l(x, s, mask=ok_flags[:1]),
            ValueError,
            r"mask must have shape \[B, T\]",
        ),
        (
            "mask float",
            lambda l, x, s: l(x, s, mask=ok_flags.float()),
            TypeError,
            r"mask must be a bool tensor",
        ),
    ]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [pytest.param(c, e, m, id=i) for i, c, e, m in _bad_calls()],
)
def test_bad_input_raises_naming_the_argument_and_changes_nothing(
    call: Callable, error: type[Exception], message: str
) -> None:
    layer = make_layer("lstm", 3, 4, 2, seed=0)
    x = torch.randn(2, 5, 3, dtype=F64)
    state = random_state(layer, 2, 1)
    before = state.map(torch.clone)
    weights = {k: v.clone() for k, v in layer.state_dict().items()}
    with pytest.raises(error, match=message):
        call(layer, x, state)
    assert state.equal(before)
    assert all(torch.equal(v, weights[k]) for k, v in layer.state_dict().items())


@pytest.mark.parametrize("factory", [LSTM, GRU, RNN])
def test_bad_strategy_is_rejected(factory: type) -> None:
    with pytest.raises(ValueError, match=r"strategy must be 'auto' or 'split'.*'fast'"):
        factory(2, 3, strategy="fast")


def test_bad_nonlinearity_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"nonlinearity must be 'tanh' or 'relu'.*'sigmoid'"):
        RNN(2, 3, nonlinearity="sigmoid")  # type: ignore[arg-type]


# --- a window's timeline, built once and handed to the layers ---------------------------------


@PROPERTY
@given(case=cases())
def test_a_prebuilt_timeline_gives_the_same_outputs_states_and_gradients(
    case: Case,
) -> None:
    """``timeline=Timeline(reset, mask)`` is only a plan made earlier: outputs, states and
    gradients equal the reference loop's, as without it."""
    layer, x = case.layer, case.x.clone().requires_grad_()
    if case.reset is None and case.mask is None:
        return  # (nothing to plan: Timeline refuses it, tested below)
    timeline = Timeline(case.reset, case.mask)
    initial = case.state.map(lambda t: t.clone().requires_grad_())
    inputs = [x, *initial.tensors(), *layer.parameters()]
    y, state = layer(x, initial, reset=case.reset, mask=case.mask, timeline=timeline)
    y_ref, state_ref = reference(layer, x, initial, case.reset, case.mask)
    torch.testing.assert_close(y, y_ref, **EXACT)
    assert_states_close(state, state_ref, **EXACT)
    grads = torch.autograd.grad(objective(y, state), inputs, allow_unused=True)
    grads_ref = torch.autograd.grad(objective(y_ref, state_ref), inputs, allow_unused=True)
    for grad, grad_ref, tensor in zip(grads, grads_ref, inputs, strict=True):
        zero = torch.zeros_like(tensor)
        torch.testing.assert_close(
            zero if grad is None else grad, zero if grad_ref is None else grad_ref, **EXACT
        )


def _count_planning(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the windows the layers plan themselves (``plan_window`` calls)."""
    calls: list[int] = []
    planner = layers_module.plan_window

    def counted(*args: object) -> Timeline:
        calls.append(1)
        return planner(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(layers_module, "plan_window", counted)
    return calls


@pytest.mark.parametrize("kind", KINDS)
def test_a_layer_given_its_windows_timeline_does_not_plan_again(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    layer = make_layer(kind, 3, 4, 2, seed=5)
    x = torch.randn(4, 8, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    reset = random_flags((4, 8), 0.3, 1)
    mask = random_flags((4, 8), 0.8, 2)
    timeline = Timeline(reset, mask)
    calls = _count_planning(monkeypatch)
    y, state = layer(x, reset=reset, mask=mask, timeline=timeline)
    assert calls == []
    y_ref, state_ref = reference(layer, x, None, reset, mask)
    torch.testing.assert_close(y, y_ref, **EXACT)
    assert_states_close(state, state_ref, **EXACT)
    layer(x, reset=reset, mask=mask)  # without it the layer plans the window itself
    assert calls == [1]


def test_a_timeline_of_other_flags_is_ignored_and_the_result_stays_exact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A timeline is used only for the very tensors it was built from, unchanged since: equal
    values in another tensor, or its own tensor written in place, are planned afresh."""
    layer = make_layer("lstm", 3, 4, seed=2)
    x = torch.randn(3, 7, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    reset = random_flags((3, 7), 0.3, 1)
    timeline = Timeline(reset, None)
    calls = _count_planning(monkeypatch)
    layer(x, reset=reset.clone(), timeline=timeline)  # equal values, another tensor
    assert calls == [1]
    reset[1, 4] = ~reset[1, 4]  # written in place after the timeline was built
    y, state = layer(x, reset=reset, timeline=timeline)
    assert calls == [1, 1]
    y_ref, state_ref = reference(layer, x, None, reset)
    torch.testing.assert_close(y, y_ref, **EXACT)
    assert_states_close(state, state_ref, **EXACT)


def test_a_timeline_normalises_an_all_true_mask_and_knows_plain_windows() -> None:
    reset = torch.zeros(2, 5, dtype=torch.bool)
    reset[:, 0] = True
    timeline = Timeline(reset, torch.ones(2, 5, dtype=torch.bool))
    assert timeline.mask is None and timeline.plain and not timeline.zero_steps
    assert timeline.initial is not None and timeline.initial.tolist() == [True, True]
    reset[0, 3] = True
    timeline = Timeline(reset, None)
    assert not timeline.plain and timeline.zero_steps and timeline.plan is not None
    assert timeline.plan.steps == 6
    assert timeline.to("cpu") is timeline
    assert "timeline of 6 steps" in repr(timeline)


@pytest.mark.parametrize(
    ("reset", "mask", "error", "match"),
    [
        (None, None, ValueError, "reset= or mask="),
        ([[True]], None, TypeError, r"\[B, T\] bool tensors"),
        (
            torch.zeros(2, 3, dtype=torch.bool),
            torch.ones(2, 4, dtype=torch.bool),
            ValueError,
            r"mask must have shape \[B, T\]=\[2, 3\]",
        ),
        (torch.zeros(2, 3), None, TypeError, "reset must be a bool tensor"),
    ],
)
def test_a_timeline_of_bad_flags_is_refused_naming_them(
    reset: object, mask: object, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        Timeline(reset, mask)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ("lstm", "gru", "rnn_relu"))
def test_the_cached_saturation_bound_follows_every_weight_change(kind: str) -> None:
    """The bound's weight terms are cached against the weights; an optimizer step,
    load_state_dict and a replaced parameter each give the terms computed afresh."""
    layer = make_layer(kind, 3, 4, 2, seed=4)

    def fresh() -> list[tuple[float, float, float]]:
        timeline_module._WEIGHT_TERMS.pop(layer, None)
        return timeline_module._weight_terms(layer)

    def cached() -> list[tuple[float, float, float]]:
        return timeline_module._weight_terms(layer)

    first = fresh()
    assert cached() == first
    optimizer = torch.optim.SGD(layer.parameters(), lr=10.0)
    x = torch.randn(2, 5, 3, dtype=F64)
    y, _ = layer(x, reset=random_flags((2, 5), 0.4, 0))
    y.square().sum().backward()
    optimizer.step()
    after_step = cached()
    assert after_step != first and after_step == fresh()
    other = make_layer(kind, 3, 4, 2, seed=11)
    layer.load_state_dict(other.state_dict())
    assert cached() == fresh() == timeline_module._weight_terms(other)
    layer.weight_hh_l1 = nn.Parameter(layer.weight_hh_l1.detach() * 3)
    assert cached() == fresh()
