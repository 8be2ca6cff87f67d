"""The ``split`` strategy of :mod:`seqstate.core.layers`: the reference path through resets/masks.

Masked steps are compacted to the left of each row (order kept), the remaining padding at each
row's end is handled by packed sequences, and the window runs as one fused call per span
between distinct reset columns, zeroing the rows that reset at each boundary. Simple and exact,
but a call per reset column; the timeline (:mod:`seqstate.core.timeline`) falls back to it where
it is not exact.
"""

from __future__ import annotations

import itertools

import torch

from seqstate.core.kernels import LayerKernels
from seqstate.core.state import State

__all__ = ["run_split"]


def run_split(
    rnn: LayerKernels,
    x: torch.Tensor,
    state: State,
    reset: torch.Tensor | None,
    mask: torch.Tensor | None,
) -> tuple[torch.Tensor, State]:
    """Compact masked steps, then one fused call per span between reset columns."""
    B, T, _ = x.shape
    if mask is None:
        return _run_spans(rnn, x, state, reset, None)
    # Compact each row's real steps to the left (stable), so that padding anywhere in the
    # window becomes trailing padding that packed sequences handle. A reset that falls on a
    # masked step moves to the row's next real step; with no real step after it, the row's
    # final state is zero (the reset happened, nothing was consumed after it).
    lengths = mask.sum(1)
    positions = torch.arange(T, device=x.device)
    is_prefix = bool((mask == (positions < lengths[:, None])).all())
    order = None if is_prefix else torch.sort((~mask).to(torch.int8), dim=1, stable=True)[1]
    if order is not None:
        x = x.gather(1, order[:, :, None].expand_as(x))
    tail_reset = None
    if reset is not None:
        counts = reset.cumsum(1)  # (B, T): resets up to and including step t
        total = counts[:, -1]
        if order is not None:
            counts = counts.gather(1, order)
        previous = torch.cat([counts.new_zeros(B, 1), counts[:, :-1]], dim=1)
        # (B, T): a reset falls before compacted step j (and after the previous real step)
        reset = (counts > previous) & (positions < lengths[:, None])
        last_real = (lengths - 1).clamp(min=0)[:, None]
        seen = torch.where(lengths > 0, counts.gather(1, last_real)[:, 0], 0)
        tail_reset = total > seen
    y, state = _run_spans(rnn, x, state, reset, lengths)
    if tail_reset is not None and bool(tail_reset.any()):
        state = state.reset_rows(tail_reset)
    if order is not None:
        y = torch.zeros_like(y).scatter(1, order[:, :, None].expand_as(y), y)
    return y, state


def _run_spans(
    rnn: LayerKernels,
    x: torch.Tensor,
    state: State,
    reset: torch.Tensor | None,
    lengths: torch.Tensor | None,
) -> tuple[torch.Tensor, State]:
    """``x`` [B, T, F] with real steps first (``lengths`` [B], None = all T): one fused call
    per span between distinct reset columns, the rows that reset zeroed between calls."""
    T = x.shape[1]
    if lengths is not None and bool((lengths == T).all()):
        lengths = None
    if reset is None:
        return _call_rows(rnn, x, state, lengths)
    if bool(reset[:, 0].any()):
        state = state.reset_rows(reset[:, 0])
    bounds = (reset[:, 1:].any(0).nonzero().flatten() + 1).tolist()
    outputs = []
    for start, end in itertools.pairwise([0, *bounds, T]):
        if start > 0:
            state = state.reset_rows(reset[:, start])
        span = None if lengths is None else (lengths - start).clamp(0, end - start)
        y, state = _call_rows(rnn, x[:, start:end], state, span)
        outputs.append(y)
    return torch.cat(outputs, dim=1), state


def _call_rows(
    rnn: LayerKernels, x: torch.Tensor, state: State, lengths: torch.Tensor | None
) -> tuple[torch.Tensor, State]:
    """One fused call; rows with ``lengths == 0`` are left out and keep their state."""
    if lengths is None:
        return rnn.fused(x, state, None)
    active = lengths > 0
    if bool(active.all()):
        return rnn.fused(x, state, lengths.cpu())
    rows = active.nonzero().flatten()
    y = x.new_zeros(x.shape[0], x.shape[1], rnn.hidden_size)
    if rows.numel() == 0:  # no row has a real step here (torch cannot pack zero rows)
        return y, state
    y_active, new_rows = rnn.fused(x[rows], state.select(rows), lengths[rows].cpu())
    return y.index_copy(0, rows, y_active), state.scatter(rows, new_rows)
