"""LSTM, GRU and RNN layers with exact per-row resets and masks, on torch's fused kernels.

Each layer *is* the corresponding ``torch.nn`` module (same parameters, same ``state_dict``
keys, batch-first) with a stateful protocol on top::

    y, state = layer(x, state=None, reset=None, mask=None)
    state = layer.initial_state(batch_size)

    x      [B, T, F]  inputs
    reset  [B, T]     bool: zero row b's state just *before* step t is consumed
    mask   [B, T]     bool: step t of row b is real input; False (padding) leaves the state
                      unchanged and gives a zero output
    y      [B, T, H]  top-layer outputs (zeros at masked steps)
    state  LSTMState(hidden, cell) / GRUState(hidden) / RNNState(hidden), each [layers, B, H]:
           each row's state after its last unmasked step

It stands for this plain loop, one row at a time::

    for t in range(T):
        if reset[b, t]: state[b] = 0
        if mask[b, t]:  y[b, t], state[b] = cell(x[b, t], state[b])
        else:           y[b, t] = 0

but never runs a Python loop over steps. How the window is handed to the fused kernel:

* no reset after column 0, no mask  -> one fused call (oneDNN/MKL on CPU, cuDNN on GPU);
* masked steps are first compacted per row (real steps moved left, order kept), so padding
  anywhere becomes padding at the end, handled by packed sequences;
* resets mid-window (``auto`` mixes the two per window, see ``_plan_bounds``):
  - ``split``: one fused call per span between distinct reset columns, zeroing the rows that
    reset at each boundary — cheap when resets fall in few columns or calls are cheap;
  - ``aligned``: every row is cut at its resets and each piece becomes a row of one full-width
    call per layer; a piece that starts at column s from a zero state is preceded by s *hold*
    steps whose gates keep the zero state exactly zero (see ``_run_aligned``) — one call
    however many resets, at the cost of more rows.
"""

from __future__ import annotations

import itertools
from typing import Any, Literal

import numpy as np
import torch
from torch import _VF, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seqstate.state import GRUState, LSTMState, RNNState, State

__all__ = ["GRU", "LSTM", "RNN", "Strategy"]

Strategy = Literal["auto", "split", "aligned"]

# ``auto`` plans each window with mid-window resets as a few spans (``_plan_bounds``): a span
# boundary at a reset column costs one more fused call; a reset *inside* a span costs one more
# row running to the span's end (hold steps before it). ``split`` is the plan with a boundary at
# every reset column, ``aligned`` the plan with none. Costs in units of one row running one
# step, measured on CPU (forward+backward, B=32, T=50, H=128/256, one thread; benchmarks/layers.py
# prints the calibration): a fused call (oneDNN's LSTM has a large fixed cost per call, torch's
# CPU GRU/RNN little), and the extra fixed cost of a span run with hold steps (per-layer calls,
# weight concatenation, gathers).
_CALL_COST = {nn.LSTM: 100.0, nn.GRU: 25.0, nn.RNN: 25.0}
_HELD_SPAN_COST = {nn.LSTM: 180.0, nn.GRU: 100.0, nn.RNN: 100.0}

# Rows per ``aligned`` call (at least the window's batch): beyond ~64-80 rows the CPU LSTM
# kernel's cost per row grows (B=64: 0.35 ms/row, B=128: 0.73 ms/row, T=50, H=128).
_ALIGNED_GROUP_ROWS = 64

# Hold-flag weight: saturates sigmoid to exactly 0/1 (and a ReLU to 0) in float32 and float64.
_HOLD = 1.0e4


class _Resettable:
    """The stateful protocol shared by LSTM, GRU and RNN (mixed in before the torch module)."""

    state_type: type[State]
    _torch_module: type[nn.RNNBase]
    strategy: Strategy

    # set by nn.RNNBase
    input_size: int
    hidden_size: int
    num_layers: int

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        *,
        dropout: float = 0.0,
        bias: bool = True,
        strategy: Strategy = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **torch_options: Any,
    ) -> None:
        if strategy not in ("auto", "split", "aligned"):
            raise ValueError(
                f"strategy must be 'auto', 'split' or 'aligned'; received {strategy!r}"
            )
        self._torch_module.__init__(
            self,  # type: ignore[arg-type]
            input_size,
            hidden_size,
            num_layers,
            bias=bias,
            batch_first=True,  # the stateful protocol is batch-first everywhere
            dropout=dropout,
            device=device,
            dtype=dtype,
            **torch_options,
        )
        self.strategy = strategy

    # --- torch <-> State --------------------------------------------------------------------

    def _to_hx(self, state: State) -> torch.Tensor | tuple[torch.Tensor, ...]:
        tensors = state.tensors()
        return tensors if len(tensors) > 1 else tensors[0]

    def _from_hx(self, hx: torch.Tensor | tuple[torch.Tensor, ...]) -> State:
        return self.state_type(*hx) if isinstance(hx, tuple) else self.state_type(hx)

    def _fused(self, x: torch.Tensor, state: State, lengths: torch.Tensor | None):
        """One call of the torch kernel on ``x`` [N, T, F]; ``lengths`` [N] (cpu) or None."""
        hx = self._to_hx(state)
        if lengths is None:
            y, hx = self._torch_module.forward(self, x, hx)  # type: ignore[arg-type]
            return y, self._from_hx(hx)
        T = x.shape[1]
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        y, hx = self._torch_module.forward(self, packed, hx)  # type: ignore[arg-type]
        y, _ = pad_packed_sequence(y, batch_first=True, total_length=T)
        return y, self._from_hx(hx)

    # --- public protocol --------------------------------------------------------------------

    def initial_state(
        self,
        batch_size: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> State:
        """Zero state ``[num_layers, batch_size, hidden_size]`` on the parameters' device."""
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 0:
            raise ValueError(f"batch_size must be an int >= 0; received {batch_size!r}")
        weight = self.weight_ih_l0  # type: ignore[attr-defined]
        return self.state_type.zeros(
            self.num_layers,
            batch_size,
            self.hidden_size,
            dtype=dtype or weight.dtype,
            device=device or weight.device,
        )

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        state: State | None = None,
        reset: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, State]:
        """Run ``x`` [B, T, F] from ``state``; see the module docstring for the semantics."""
        x = self._check_input(x)
        B, T, _ = x.shape
        state = self._check_state(state, B, x)
        reset = _check_flags(reset, "reset", B, T, x.device)
        mask = _check_flags(mask, "mask", B, T, x.device)
        if T == 0:
            return x.new_zeros(B, 0, self.hidden_size), state

        if mask is not None and bool(mask.all()):
            mask = None
        if mask is None:
            return self._run(x, state, reset, None)

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
        y, state = self._run(x, state, reset, lengths)
        if tail_reset is not None and bool(tail_reset.any()):
            state = state.reset_rows(tail_reset)
        if order is not None:
            y = torch.zeros_like(y).scatter(1, order[:, :, None].expand_as(y), y)
        return y, state

    # --- the fused dispatch -----------------------------------------------------------------

    def _run(
        self,
        x: torch.Tensor,
        state: State,
        reset: torch.Tensor | None,
        lengths: torch.Tensor | None,
    ) -> tuple[torch.Tensor, State]:
        """``x`` [B, T, F] with real steps first (``lengths`` [B], None = all T)."""
        T = x.shape[1]
        if lengths is not None and bool((lengths == T).all()):
            lengths = None
        if reset is not None:
            if bool(reset[:, 0].any()):
                state = state.reset_rows(reset[:, 0])
            columns = reset[:, 1:].any(0).nonzero().flatten() + 1
        else:
            columns = torch.empty(0, dtype=torch.long)
        if reset is None or columns.numel() == 0:
            return self._call_rows(x, state, lengths)
        if self._choose(lengths) == "split":
            bounds, hold = columns.tolist(), False
        elif self.strategy == "aligned":
            bounds, hold = [], True
        else:
            kind = type(self)._torch_module
            bounds, hold = _plan_bounds(reset, _CALL_COST[kind], _HELD_SPAN_COST[kind]), True
        return self._run_spans(x, state, reset, lengths, bounds, hold=hold)

    def _choose(self, lengths: torch.Tensor | None) -> Literal["split", "aligned"]:
        """Whether hold steps may be used: full-length rows, and gates that can hold a zero
        state (not the tanh RNN); forced ``split`` never uses them."""
        tanh_rnn = isinstance(self, nn.RNN) and self.nonlinearity == "tanh"
        if self.strategy == "split" or lengths is not None or tanh_rnn:
            return "split"
        return "aligned"

    def _call_rows(
        self, x: torch.Tensor, state: State, lengths: torch.Tensor | None
    ) -> tuple[torch.Tensor, State]:
        """One fused call; rows with ``lengths == 0`` are left out and keep their state."""
        if lengths is None:
            return self._fused(x, state, None)
        active = lengths > 0
        if bool(active.all()):
            return self._fused(x, state, lengths.cpu())
        rows = active.nonzero().flatten()
        y = x.new_zeros(x.shape[0], x.shape[1], self.hidden_size)
        if rows.numel() == 0:  # no row has a real step here (torch cannot pack zero rows)
            return y, state
        y_active, new_rows = self._fused(x[rows], state.select(rows), lengths[rows].cpu())
        return y.index_copy(0, rows, y_active), state.scatter(rows, new_rows)

    def _run_spans(
        self,
        x: torch.Tensor,
        state: State,
        reset: torch.Tensor,
        lengths: torch.Tensor | None,
        bounds: list[int],
        *,
        hold: bool,
    ) -> tuple[torch.Tensor, State]:
        """Fused calls over the spans between ``bounds`` (reset columns > 0).

        At a bound the rows that reset there are zeroed between calls (no cost but the call).
        Resets strictly inside a span need ``hold`` (``_run_aligned``); without it ``bounds``
        must hold every reset column (the ``split`` strategy).
        """
        T = x.shape[1]
        outputs = []
        for start, end in itertools.pairwise([0, *bounds, T]):
            if start > 0:
                state = state.reset_rows(reset[:, start])
            inside = reset[:, start + 1 : end]
            if hold and bool(inside.any()):
                span_reset = torch.cat([torch.zeros_like(reset[:, :1]), inside], dim=1)
                y, state = self._run_aligned(x[:, start:end], state, span_reset)
            else:
                span = None if lengths is None else (lengths - start).clamp(0, end - start)
                y, state = self._call_rows(x[:, start:end], state, span)
            outputs.append(y)
        return torch.cat(outputs, dim=1), state

    def _run_aligned(
        self, x: torch.Tensor, state: State, reset: torch.Tensor
    ) -> tuple[torch.Tensor, State]:
        """Every piece of every row becomes its own row of full-width fused calls.

        Rows must all be full length (no trailing padding). A piece starting at column s from a
        zero state sees ``s`` *hold* steps before it: an extra input feature (the hold flag)
        with weight ``±_HOLD`` saturates the gates so that a zero state stays exactly zero
        (LSTM: input gate 0, forget gate 1; GRU: update gate 1; ReLU RNN: pre-activation
        -inf). What follows a piece is ignored, and the last piece of each row ends at column
        T - 1, so the final state of its row in the call is the row's final state.

        Example, B=2, T=5, row 1 resets at column 3 (``~`` = hold, ``.`` = ignored)::

            row 0:  a0 a1 a2 a3 a4          (carried state)
            row 1:  b0 b1 b2 .  .           (carried state)   -> outputs b0..b2
            row 2:  ~  ~  ~  c0 c1          (zero state)      -> outputs c0, c1, final state
        """
        B, T, _ = x.shape
        H = self.hidden_size
        starts = reset.clone()
        starts[:, 0] = True
        piece_row, piece_start = starts.nonzero(as_tuple=True)  # row-major: pieces in order
        pieces = piece_row.numel()
        # (B, T): which piece covers step t of row b
        piece_of = starts.flatten().cumsum(0).view(B, T) - 1
        columns = torch.arange(T, device=x.device)
        hold = (columns[None, :] < piece_start[:, None]).to(x.dtype)[..., None]  # (P, T, 1)
        inputs = torch.where(hold.bool(), x.new_zeros(()), x[piece_row])  # (P, T, F)
        first = (piece_start == 0).nonzero().flatten()
        initial = state.zeros_like(pieces).scatter(first, state.select(piece_row[first]))

        # Calls of at most max(B, 64) rows: past that the per-row cost of the CPU kernel grows
        # (its workspace leaves the cache), and rows are independent anyway.
        group = max(B, _ALIGNED_GROUP_ROWS)
        outputs, finals = [], []
        for begin in range(0, pieces, group):
            rows = slice(begin, min(begin + group, pieces))
            y, final = self._held_call(inputs[rows], hold[rows], initial.select(rows))
            outputs.append(y)
            finals.append(final)
        y_pieces = torch.cat(outputs).reshape(pieces * T, H)
        y = y_pieces[(piece_of * T + columns).flatten()].view(B, T, H)
        last = piece_of[:, -1]  # the piece each row ends in carries its final state
        return y, State.cat(finals).select(last)

    def _held_call(
        self, x: torch.Tensor, hold: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State]:
        """Layer by layer fused calls with the hold flag appended to each layer's input."""
        finals = []
        layer_input = x
        for layer in range(self.num_layers):
            weights = [
                getattr(self, name)
                for name in self._flat_weights_names
                if name.endswith(f"_l{layer}")
            ]
            column = _hold_column(self, weights[0])
            weights[0] = torch.cat([weights[0], column], dim=1)
            layer_state = state.map(lambda t, layer=layer: t[layer : layer + 1])
            output, hx = self._layer_call(
                torch.cat([layer_input, hold], dim=-1), weights, layer_state
            )
            finals.append(hx)
            if layer < self.num_layers - 1 and self.dropout > 0:
                output = nn.functional.dropout(output, self.dropout, self.training)
            layer_input = output
        stacked = [torch.cat(parts) for parts in zip(*(f.tensors() for f in finals), strict=True)]
        return layer_input, self.state_type(*stacked)

    def _layer_call(
        self, x: torch.Tensor, weights: list[torch.Tensor], state: State
    ) -> tuple[torch.Tensor, State]:
        """One single-layer fused kernel call with explicit weights."""
        bias = self.bias
        if isinstance(self, nn.LSTM):
            y, h, c = _VF.lstm(
                x, state.tensors(), weights, bias, 1, 0.0, self.training, False, True
            )
            return y, self.state_type(h, c)
        if isinstance(self, nn.GRU):
            y, h = _VF.gru(x, state.tensors()[0], weights, bias, 1, 0.0, self.training, False, True)
            return y, self.state_type(h)
        y, h = _VF.rnn_relu(
            x, state.tensors()[0], weights, bias, 1, 0.0, self.training, False, True
        )
        return y, self.state_type(h)

    # --- validation -------------------------------------------------------------------------

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        name = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"{name}: x must be a torch.Tensor [B, T, F]; received {type(x).__name__}"
            )
        if x.dim() != 3:
            hint = " (add a batch dimension: x[None])" if x.dim() == 2 else ""
            raise ValueError(
                f"{name}: x must have shape [B, T, F]=[batch, time, {self.input_size}]; "
                f"received {tuple(x.shape)}{hint}"
            )
        if x.shape[2] != self.input_size:
            raise ValueError(
                f"{name}: x must have {self.input_size} features (input_size) in its last "
                f"dimension; received shape {tuple(x.shape)}"
            )
        weight = self.weight_ih_l0  # type: ignore[attr-defined]
        if x.dtype != weight.dtype or x.device != weight.device:
            raise TypeError(
                f"{name}: x is {x.dtype} on {x.device} but the parameters are {weight.dtype} on "
                f"{weight.device}; move one to the other (e.g. x.to(layer.weight_ih_l0))"
            )
        return x

    def _check_state(self, state: State | None, B: int, x: torch.Tensor) -> State:
        name = type(self).__name__
        if state is None:
            return self.initial_state(B)
        if not isinstance(state, self.state_type):
            raise TypeError(
                f"{name}: state must be a {self.state_type.__name__} (or None for zeros); "
                f"received {type(state).__name__}"
            )
        expected = (self.num_layers, B, self.hidden_size)
        received = (state.num_layers, state.batch_size, state.hidden_size)
        if expected != received:
            raise ValueError(
                f"{name}: state must have shape [layers, B, H]={list(expected)} for x of batch "
                f"{B}; received {list(received)}. The state's batch is the number of rows of x: "
                f"use layer.initial_state({B}) or state.select(rows)"
            )
        if state.dtype != x.dtype or state.device != x.device:
            raise TypeError(
                f"{name}: state is {state.dtype} on {state.device}, x is {x.dtype} on "
                f"{x.device}; move it with state.to(device, dtype)"
            )
        return state


def _check_flags(
    flags: torch.Tensor | None, name: str, B: int, T: int, device: torch.device
) -> torch.Tensor | None:
    if flags is None:
        return None
    if not isinstance(flags, torch.Tensor):
        raise TypeError(
            f"{name} must be a bool torch.Tensor [B, T]; received {type(flags).__name__}"
        )
    if flags.shape != (B, T):
        raise ValueError(
            f"{name} must have shape [B, T]=[{B}, {T}] like x; received {tuple(flags.shape)}"
        )
    if flags.dtype != torch.bool:
        if flags.is_floating_point() or flags.is_complex():
            raise TypeError(f"{name} must be a bool tensor; received dtype {flags.dtype}")
        if bool(((flags != 0) & (flags != 1)).any()):
            raise ValueError(f"{name} must hold only 0/1 (or bool); received other values")
        flags = flags.bool()
    return flags.to(device)


def _plan_bounds(reset: torch.Tensor, call_cost: float, held_cost: float = 0.0) -> list[int]:
    """Span boundaries (reset columns > 0) minimising, in row-steps, the extra rows run by hold
    steps + calls * call_cost + spans that need hold steps * held_cost.

    Candidates: 1..C+1 spans with boundaries at the reset columns nearest to even cuts of the
    window (C = distinct reset columns); C+1 spans is ``split``, one span is ``aligned``.
    """
    T = reset.shape[1]
    counts = reset[:, 1:].sum(0).cpu().numpy()  # (T-1,): resets per column 1..T-1
    columns = np.flatnonzero(counts) + 1
    weights = counts[columns - 1]
    best_cost, best = float("inf"), columns
    for spans in sorted({1, 2, 3, 4, 6, 8, 12, 16, len(columns) + 1}):
        if spans > len(columns) + 1:
            continue
        if spans == len(columns) + 1:
            bounds = columns
        else:
            cuts = np.arange(1, spans) * (T / spans)
            nearest = np.abs(columns[None, :] - cuts[:, None]).argmin(1)
            bounds = np.unique(columns[nearest])
        starts = np.concatenate([[0], bounds])
        ends = np.concatenate([bounds, [T]])
        span_of = np.searchsorted(bounds, columns, side="right")
        inside = ~np.isin(columns, bounds)
        extra_rows = float((weights * (ends - starts)[span_of] * inside).sum())
        held_spans = np.unique(span_of[inside]).size
        cost = extra_rows + (len(bounds) + 1) * call_cost + held_spans * held_cost
        if cost < best_cost:
            best_cost, best = cost, bounds
    return [int(c) for c in best]


def _hold_column(layer: nn.RNNBase, weight_ih: torch.Tensor) -> torch.Tensor:
    """The input-weight column of the hold flag: (gates * H, 1), saturating the right gates."""
    H = layer.hidden_size
    column = weight_ih.new_zeros(weight_ih.shape[0], 1)
    if isinstance(layer, nn.LSTM):  # gates i, f, g, o: input gate -> 0, forget gate -> 1
        column[:H] = -_HOLD
        column[H : 2 * H] = _HOLD
    elif isinstance(layer, nn.GRU):  # gates r, z, n: update gate -> 1 keeps h exactly
        column[H : 2 * H] = _HOLD
    else:  # ReLU RNN: pre-activation -> -inf, output exactly 0
        column[:] = -_HOLD
    return column


class LSTM(_Resettable, nn.LSTM):
    """Multi-layer LSTM with per-row resets and masks; parameters laid out like ``nn.LSTM``.

    Args:
        input_size: features F of x.
        hidden_size: H.
        num_layers: stacked layers.
        dropout: dropout on the outputs of every layer but the last (training only).
        bias: use bias weights.
        strategy: how windows with mid-window resets reach the kernel ("auto" picks per window).
    """

    state_type = LSTMState
    _torch_module = nn.LSTM


class GRU(_Resettable, nn.GRU):
    """Multi-layer GRU with per-row resets and masks; parameters laid out like ``nn.GRU``."""

    state_type = GRUState
    _torch_module = nn.GRU


class RNN(_Resettable, nn.RNN):
    """Multi-layer Elman RNN (tanh or relu) with per-row resets and masks, like ``nn.RNN``."""

    state_type = RNNState
    _torch_module = nn.RNN

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        *,
        nonlinearity: Literal["tanh", "relu"] = "tanh",
        dropout: float = 0.0,
        bias: bool = True,
        strategy: Strategy = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu'; received {nonlinearity!r}")
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            dropout=dropout,
            bias=bias,
            strategy=strategy,
            device=device,
            dtype=dtype,
            nonlinearity=nonlinearity,
        )
