"""The timeline of :mod:`seqstate.core.layers`: every row of a window on its own timeline, one
fused call per layer, exact through resets and masks by saturated flag inputs.

The layers' module docstring shows the picture; this module holds the index plan (where each
step and flag goes), the row remap that moves steps in and out (and their gradients back) by
one index_select each, the flag weights and the saturation bound that proves them exact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.nn import functional

from seqstate.core.kernels import LayerKernels
from seqstate.core.state import State

__all__ = ["FLAG", "flag_pattern", "run_timeline"]

# Flag weight: saturates sigmoid to exactly 0/1 (and ReLU to 0) in float32 and float64 as long
# as the rest of the pre-activation stays below _SAFE_BOUND: sigmoid(-x) underflows to exactly 0
# for x > ~750 (float64) and the margin leaves room for rounding.
FLAG = 1.0e4
_SAFE_BOUND = 0.5 * FLAG


def run_timeline(
    rnn: LayerKernels,
    x: torch.Tensor,
    state: State,
    reset: torch.Tensor | None,
    mask: torch.Tensor | None,
) -> tuple[torch.Tensor, State] | None:
    """Every row on its own timeline, one fused call per layer (module docstring).

    Returns None when the saturation bound fails (the caller then runs ``split``).
    """
    B, T, F = x.shape
    H = rnn.hidden_size
    device = x.device
    plan = _plan(
        None if reset is None else reset.cpu().numpy(),
        None if mask is None else mask.cpu().numpy(),
        B,
        T,
        rnn.can_zero(),
    )
    if plan is None:
        return None
    steps = plan.steps

    def moved(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(device)

    if plan.initial is not None:
        state = state.reset_rows(moved(plan.initial))
    tail = None if plan.tail is None else moved(plan.tail)
    if steps == 0:  # no row has a real step
        return x.new_zeros(B, T, H), state if tail is None else state.reset_rows(tail)
    reads, writes, fill, last = (moved(a) for a in (plan.reads, plan.writes, plan.fill, plan.last))
    padding = None if plan.padding is None else moved(plan.padding)
    empty_rows = None if plan.empty_rows is None else moved(plan.empty_rows)
    flags = torch.from_numpy(plan.flags).to(device=device, dtype=x.dtype)  # (T', B, 2)
    layer_input = _Remap.apply(x.reshape(B * T, F), reads, fill, writes, padding)
    layer_input = layer_input.view(steps, B, F)

    initial_tensors = state.tensors()
    finals: list[list[torch.Tensor]] = [[] for _ in initial_tensors]
    calls = []  # (h0, output) of each layer, for the saturation bound
    for layer in range(rnn.num_layers):
        weights = list(rnn.layer_weights(layer))
        b_ih = weights[2] if rnn.bias else None
        weights[0] = torch.cat([weights[0], rnn.flag_columns(b_ih, weights[0])], dim=1)
        hx = [t[layer : layer + 1] for t in initial_tensors]
        with _fresh_weights_quiet() if x.is_cuda else contextlib.nullcontext():
            output, hx_out = rnn.sequence_kernel(
                torch.cat([layer_input, flags], dim=-1), hx, weights
            )
        calls.append((hx[0], output))
        # h at the row's last real step (hold steps keep an LSTM's c, not its h)
        h_last = output.view(steps * B, H).index_select(0, last)
        if empty_rows is not None:  # rows without a real step keep their state
            h_last = torch.where(empty_rows[:, None], hx[0][0], h_last)
        finals[0].append(h_last)
        for parts, tensor in zip(finals[1:], hx_out[1:], strict=True):
            parts.append(tensor[0])
        if layer < rnn.num_layers - 1 and rnn.dropout > 0 and rnn.training:
            output = functional.dropout(output, rnn.dropout, True)
        layer_input = output
    if rnn.can_zero() and not _saturates(rnn, x, calls):
        return None
    y = _Remap.apply(layer_input.view(steps * B, H), writes, padding, reads, fill)
    if tail is not None:  # a reset after the row's last real step: zero state at the end
        finals = [[torch.where(tail[:, None], 0, t) for t in parts] for parts in finals]
    if rnn.num_layers == 1:
        stacked = [parts[0][None] for parts in finals]
    else:
        stacked = [torch.stack(parts) for parts in finals]
    return y.view(B, T, H), rnn.make_state(*stacked)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Where each step and flag of a window goes on the timeline (host arrays, int64 unless
    said). The timeline runs time-major (the kernels' own layout: no transposes), flattened to
    [T' * B, .]: slot ``p * B + b`` is position p of row b; step ``b * T + t`` is x[b, t].
    ``writes`` and ``reads`` are each other's inverse where both have a partner, so moving rows
    either way, and their gradients back, is one index_select; the rest is zero-filled."""

    steps: int  # T', the longest row's real + zero steps
    reads: np.ndarray  # [T' * B]: the step each slot reads (any step for a stepless slot)
    writes: np.ndarray  # [B * T]: the slot each step writes (any slot for a padding step)
    fill: np.ndarray  # slots without a step: zero and hold steps
    padding: np.ndarray | None  # steps without a slot (masked); None without a mask
    flags: np.ndarray  # [T', B, 2] float: (zero, hold) flag of each slot
    last: np.ndarray  # [B]: the slot of each row's last real step (0 for a row without one)
    initial: np.ndarray | None  # [B] bool: reset before the row's first real step; None: none
    tail: np.ndarray | None  # [B] bool: reset after the row's last real step; None: none
    empty_rows: np.ndarray | None  # [B] bool: rows without a real step; None: none


# Host NumPy by design, also under torch.compile: traced by dynamo, its data-dependent sizes
# would break the graph many times over, and its bool cumsums met a kernel that has none.
@torch.compiler.disable
def _plan(
    reset: np.ndarray | None, mask: np.ndarray | None, B: int, T: int, can_zero: bool
) -> _Plan | None:
    """The timeline of a window from its ``reset`` and ``mask`` [B, T] (bool, on the host:
    a few dozen NumPy operations on B * T integers cost far less than as many tensor ops).
    None when it needs zero steps that the cell cannot take (the tanh RNN)."""
    columns = np.arange(T)
    inserted = initial = tail = None
    if mask is None:
        if reset is None:  # (the caller sends such windows to one plain fused call)
            reset = np.zeros((B, T), dtype=bool)
        initial = reset[:, 0]
        inserted = reset & (columns > 0)  # (B, T): a zero step goes before step t
        shifted = inserted.cumsum(1)
        position = columns + shifted  # (B, T): timeline position of step t
        length = T + shifted[:, -1]  # (B,): real + zero steps of each row
    elif reset is None:  # padding only: real steps move left
        seen = mask.cumsum(1)  # (B, T): real steps up to and including t
        position = seen - 1
        length = seen[:, -1]
    else:
        counts = reset.cumsum(1)  # (B, T): resets up to and including step t
        # resets up to the last real step <= t, and < t (0 before the first real step)
        at_real = np.maximum.accumulate(np.where(mask, counts, 0), axis=1)
        before = np.pad(at_real[:, :-1], ((0, 0), (1, 0)))
        seen = mask.cumsum(1)
        fresh = mask & (counts > before)  # a reset since the previous real step
        initial = (fresh & (seen == 1)).any(1)  # before the first real step
        inserted = fresh & (seen > 1)  # mid-row: a zero step before step t
        tail = counts[:, -1] > at_real[:, -1]  # after the last real step
        shifted = inserted.cumsum(1)
        position = seen - 1 + shifted
        length = seen[:, -1] + shifted[:, -1]
    if inserted is not None and not can_zero and inserted.any():
        return None
    steps = int(length.max())
    rows = np.arange(B)
    slot_index = position * B + rows[:, None]  # (B, T)
    reads = np.zeros(steps * B, dtype=np.int64)
    padding = None
    if mask is None:
        writes = slot_index.ravel()
        reads[writes] = np.arange(B * T)
    else:
        reads[slot_index[mask]] = np.flatnonzero(mask)
        writes = np.where(mask, slot_index, 0).ravel()
        padding = np.flatnonzero(~mask)
    is_hold = np.arange(steps)[:, None] >= length  # (T', B)
    zero_slots = np.zeros(steps * B, dtype=bool)
    if inserted is not None:
        zero_slots[(slot_index - B)[inserted]] = True
    is_zero = zero_slots.reshape(steps, B)
    return _Plan(
        steps=steps,
        reads=reads,
        writes=writes.astype(np.int64, copy=False),
        fill=np.flatnonzero(is_zero | is_hold),
        padding=padding,
        flags=np.stack([is_zero, is_hold], axis=-1).astype(np.float64),
        last=np.maximum(length - 1, 0) * B + rows,
        initial=initial if initial is not None and initial.any() else None,
        tail=tail if tail is not None and tail.any() else None,
        empty_rows=None if mask is None or length.min() > 0 else length == 0,
    )


@torch.no_grad()
def _saturates(
    rnn: LayerKernels, x: torch.Tensor, calls: list[tuple[torch.Tensor, torch.Tensor]]
) -> bool:
    """Whether every flagged gate saturated exactly: for each layer, a bound on |gate
    pre-activation| without the flags (the largest input row norm x input max + recurrent
    row norm x state max + the largest biases) stays below ``_SAFE_BOUND``."""
    input_max = x.abs().max()
    bounds = []
    for layer, (h0, output) in enumerate(calls):
        state_max = rnn.state_max(h0, output)
        weights = rnn.layer_weights(layer)
        # (abs().sum(1).max(): several times faster than linalg.matrix_norm(ord=inf) here)
        bound = weights[0].abs().sum(1).max() * input_max
        bound = bound + weights[1].abs().sum(1).max() * state_max
        for bias in weights[2:]:
            bound = bound + bias.abs().max()
        bounds.append(bound)
        input_max = state_max
        if layer < rnn.num_layers - 1 and rnn.dropout > 0 and rnn.training:
            input_max = state_max / (1.0 - rnn.dropout)  # dropout scales its outputs up
    worst = bounds[0] if len(bounds) == 1 else torch.stack(bounds).max()
    return bool(worst <= _SAFE_BOUND)  # NaN fails too


class _Remap(torch.autograd.Function):
    """Rows ``index`` [M] of ``source`` [N, D], with the rows listed in ``fill`` zeroed; the
    gradient goes back the same way by ``inverse`` [N] and ``inverse_fill``. ``index`` must be
    injective outside ``fill``, and ``inverse`` its inverse there, so both directions are one
    index_select (index_select's own backward accumulates with index_add, several times
    slower) and an in-place index_fill_ (a masked fill with a row mask is slower still)."""

    @staticmethod
    def forward(
        ctx: Any,
        source: torch.Tensor,
        index: torch.Tensor,
        fill: torch.Tensor | None,
        inverse: torch.Tensor,
        inverse_fill: torch.Tensor | None,
    ) -> torch.Tensor:
        ctx.save_for_backward(inverse, inverse_fill)
        return _pick_rows(source, index, fill)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        inverse, inverse_fill = ctx.saved_tensors
        return _pick_rows(grad, inverse, inverse_fill), None, None, None, None


def _pick_rows(source: torch.Tensor, index: torch.Tensor, fill: torch.Tensor | None):
    rows = source.index_select(0, index)
    return rows if fill is None or fill.numel() == 0 else rows.index_fill_(0, fill, 0)


@contextlib.contextmanager
def _fresh_weights_quiet() -> Iterator[None]:
    """cuDNN warns when an RNN's weights are not one flat buffer (it then packs them for the
    call); the timeline's weights (with the flag columns) are new tensors every call, so that
    packing is expected, and the warning would only alarm (and fail warnings-as-errors)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not part of single contiguous chunk")
        yield


@functools.lru_cache(maxsize=64)
def flag_pattern(
    pattern: tuple[tuple[float, float], ...], H: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Constant flag weights ``[len(pattern) * H, 2]``: each gate's (zero, hold) pair repeated
    over its H rows. Cached (built once per cell kind, size, dtype and device); never written."""
    return torch.tensor(pattern, dtype=dtype, device=device).repeat_interleave(H, dim=0)
