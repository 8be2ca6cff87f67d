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

but never runs a Python loop over steps. How a window reaches the kernels:

* no reset after column 0 and no mask: one fused call (oneDNN/MKL on CPU, cuDNN on GPU),
  exactly ``torch.nn``'s; a single step (T = 1) uses the cell kernels instead (``lstm_cell``
  ...), which cost a fraction of a sequence call — the streaming hot path;
* anything else (``strategy="auto"``): one fused call per layer on a **timeline** per row.
  Masked steps are dropped (real steps move left, order kept); every reset after the row's
  first real step becomes an inserted *zero* step just before that step; the row is filled at
  the end with *hold* steps up to the longest row. Two flag columns are appended to each
  layer's input, with fixed weights of ``±_FLAG`` that saturate the gates exactly (sigmoid is
  exactly 0 or 1 there, its derivative exactly 0, so nothing leaks through, not even gradient):

  ======  =========================================  =====================================
  cell    zero step (state -> exactly 0)             hold step (state kept)
  ======  =========================================  =====================================
  LSTM    input, forget, output gates -> 0           input gate 0, forget gate 1: c kept
  GRU     reset, update gates -> 0, candidate        update gate 1: h kept
          column = -input bias (pre-activation 0)
  ReLU    pre-activation -> -inf: h = 0              the same (h read at the last real step)
  ======  =========================================  =====================================

  The final ``h`` of each layer is read from its output at the row's last real step (a hold
  step keeps an LSTM's c but not its h); ``c`` is the kernel's final cell. Example, B=2, T=5,
  row 0 resets at step 3, row 1 has padding at step 1 and a reset at step 4 (``0`` = zero
  step, ``~`` = hold step)::

      window     row 0:  a0 a1 a2 a3 a4        reset at a3
                 row 1:  b0 .  b2 b3 b4        mask False at step 1, reset at b4
      timeline   row 0:  a0 a1 a2 0  a3 a4     one fused call per layer, T' = 6
                 row 1:  b0 b2 b3 0  b4 ~

  A reset before a row's first real step just zeroes its initial state, one after its last
  real step its final state. The timeline is T' = T + (most resets in one row) long, and the
  index plan (where each step and flag goes) is a few tensor ops, built once per call; the
  steps move in and out, and their gradients back, by one index_select each. Dropout between
  layers is applied to each layer's output, as torch does.

  The tanh RNN cannot be zeroed through its input (tanh(-inf) = -1): it takes the timeline
  only for windows without zero steps (padding, resets at a row's edges; its hold steps need
  no flag, as its h is read at the last real step). Saturation needs the other pre-activation
  terms far below ``_FLAG``: a per-window bound (weight row norms x input max + recurrent
  weights x state max + biases) checks it, and when it fails (or for the tanh RNN's windows
  with zero steps, or ``strategy="split"``) the window runs the reference way instead;
* ``split``: masked steps compacted the same way, the remaining padding at each row's end
  handled by packed sequences, and one fused call per span between distinct reset columns,
  zeroing the rows that reset at each boundary. Simple and exact, but a call per reset
  column (each fused call has a fixed cost, large for oneDNN's LSTM and for cuDNN).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import warnings
from collections.abc import Iterator
from typing import Any, Literal, cast

import torch
from torch import _VF, nn
from torch.nn import functional
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seqstate.state import GRUState, LSTMState, RNNState, State

__all__ = ["GRU", "LSTM", "RNN", "Strategy"]

#: ``"auto"``: the timeline (one fused call per layer), falling back to ``"split"`` where it is
#: not exact; ``"split"``: the reference (one fused call per span between reset columns).
Strategy = Literal["auto", "split"]

# Flag weight: saturates sigmoid to exactly 0/1 (and ReLU to 0) in float32 and float64 as long
# as the rest of the pre-activation stays below _SAFE_BOUND: sigmoid(-x) underflows to exactly 0
# for x > ~750 (float64) and the margin leaves room for rounding.
_FLAG = 1.0e4
_SAFE_BOUND = 0.5 * _FLAG


class _Resettable:
    """The stateful protocol shared by LSTM, GRU and RNN (mixed in before the torch module)."""

    state_type: type[State]
    _torch_module: type[nn.RNNBase]
    strategy: Strategy

    # set by nn.RNNBase
    input_size: int
    hidden_size: int
    num_layers: int
    bias: bool
    dropout: float
    training: bool
    _flat_weights: list[torch.Tensor | None]  # as nn.RNNBase declares it; never None here

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        *,
        dropout: float = 0.0,
        bias: bool = True,
        strategy: Strategy = "auto",
        batch_first: bool = True,
        bidirectional: bool = False,
        proj_size: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **torch_options: Any,
    ) -> None:
        name = type(self).__name__
        if strategy not in ("auto", "split"):
            raise ValueError(f"{name}: strategy must be 'auto' or 'split'; received {strategy!r}")
        # Drop-in honesty: torch options the stateful protocol cannot keep are refused here,
        # not left to fail on the first call.
        if batch_first is not True:
            raise ValueError(
                f"{name}: batch_first={batch_first!r} is not supported: seqstate layers are "
                "batch-first, x is [B, T, F]; pass time-major input as x.transpose(0, 1)"
            )
        if bidirectional is not False:
            raise ValueError(
                f"{name}: bidirectional={bidirectional!r} is not supported: a stateful layer "
                "carries its state forward across windows, and a backward direction needs the "
                f"whole sequence at once; use torch.nn.{name}(bidirectional=True) for "
                "whole-sequence models"
            )
        if proj_size != 0:
            raise ValueError(
                f"{name}: proj_size={proj_size!r} is not supported (the state would mix sizes "
                "proj_size and hidden_size); use proj_size=0 and project the outputs with a "
                "Linear layer (SequenceModel's head does)"
            )
        torch_init: Any = self._torch_module.__init__  # nn.LSTM/GRU/RNN(*args, **kwargs)
        torch_init(
            self,
            input_size,
            hidden_size,
            num_layers,
            bias=bias,
            batch_first=True,
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
        return self._state(*hx) if isinstance(hx, tuple) else self._state(hx)

    def _state(self, *tensors: torch.Tensor) -> State:
        """``state_type(*tensors)`` (the field count depends on the cell)."""
        make: Any = self.state_type
        return make(*tensors)

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

    def _layer_weights(self, layer: int) -> list[torch.Tensor]:
        """``[weight_ih, weight_hh(, bias_ih, bias_hh)]`` of one layer, as torch lays them out."""
        per_layer = 4 if self.bias else 2
        weights = self._flat_weights[layer * per_layer : (layer + 1) * per_layer]
        return cast(list[torch.Tensor], weights)

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
        if mask is None and (reset is None or T == 1 or not bool(reset[:, 1:].any())):
            if reset is not None:
                state = state.reset_rows(reset[:, 0])
            if T == 1:
                y, state = self._step(x[:, 0], state)
                return y[:, None], state
            return self._fused(x, state, None)
        if self.strategy == "auto":
            result = self._run_timeline(x, state, reset, mask)
            if result is not None:
                return result
        return self._run_split(x, state, reset, mask)

    # --- one step: the cell kernels ---------------------------------------------------------

    def _step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One step of every row, ``x`` [B, F] -> ``y`` [B, H], with the cell kernels."""
        tensors = state.tensors()
        if self.num_layers == 1:  # the common case, without the stacking
            weights = self._layer_weights(0)
            biases: list[torch.Tensor | None] = [*weights[2:]] if self.bias else [None, None]
            new = self._cell(x, [t[0] for t in tensors], weights[0], weights[1], *biases)
            return new[0], self._state(*(t[None] for t in new))
        layer_input = x
        finals: list[list[torch.Tensor]] = [[] for _ in tensors]
        for layer in range(self.num_layers):
            weights = self._layer_weights(layer)
            biases = [*weights[2:]] if self.bias else [None, None]
            hx = [t[layer] for t in tensors]
            new = self._cell(layer_input, hx, weights[0], weights[1], *biases)
            for parts, tensor in zip(finals, new, strict=True):
                parts.append(tensor)
            layer_input = new[0]
            if layer < self.num_layers - 1 and self.dropout > 0 and self.training:
                layer_input = functional.dropout(layer_input, self.dropout, True)
        return layer_input, self._state(*(torch.stack(parts) for parts in finals))

    def _cell(
        self,
        x: torch.Tensor,
        hx: list[torch.Tensor],
        w_ih: torch.Tensor,
        w_hh: torch.Tensor,
        b_ih: torch.Tensor | None,
        b_hh: torch.Tensor | None,
    ) -> tuple[torch.Tensor, ...]:
        """One cell kernel call: ``x`` [B, F_layer], ``hx`` per state field [B, H]."""
        raise NotImplementedError

    # --- the timeline: one fused call per layer ---------------------------------------------

    def _can_zero(self) -> bool:
        """Whether flag inputs can zero this cell's state (not the tanh RNN's: it takes the
        timeline only for windows without zero steps, padding and edge resets)."""
        return True

    def _flag_columns(self, b_ih: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        """Input weights ``[gates * H, 2]`` of the (zero, hold) flags; see the module table."""
        raise NotImplementedError

    def _run_timeline(
        self,
        x: torch.Tensor,
        state: State,
        reset: torch.Tensor | None,
        mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, State] | None:
        """Every row on its own timeline, one fused call per layer (module docstring).

        Returns None when the saturation bound fails (the caller then runs ``split``).
        """
        B, T, F = x.shape
        H = self.hidden_size
        device = x.device
        columns = torch.arange(T, device=device)
        inserted = initial = tail = None
        if mask is None:
            if reset is None:  # (the caller sends such windows to one plain fused call)
                reset = torch.zeros(B, T, dtype=torch.bool, device=device)
            initial = reset[:, 0]
            inserted = reset & (columns > 0)  # (B, T): a zero step goes before step t
            shifted = inserted.long().cumsum(1)
            position = columns + shifted  # (B, T): timeline position of step t
            length = T + shifted[:, -1]  # (B,): real + zero steps of each row
        elif reset is None:  # padding only: real steps move left
            seen = mask.long().cumsum(1)  # (B, T): real steps up to and including t
            position = seen - 1
            length = seen[:, -1]
        else:
            counts = reset.long().cumsum(1)  # (B, T): resets up to and including step t
            # resets up to the last real step <= t, and < t (0 before the first real step)
            at_real = torch.where(mask, counts, 0).cummax(1).values
            before = functional.pad(at_real[:, :-1], (1, 0))
            seen = mask.long().cumsum(1)
            fresh = mask & (counts > before)  # a reset since the previous real step
            initial = (fresh & (seen == 1)).any(1)  # before the first real step
            inserted = fresh & (seen > 1)  # mid-row: a zero step before step t
            tail = counts[:, -1] > at_real[:, -1]  # after the last real step
            shifted = inserted.long().cumsum(1)
            position = seen - 1 + shifted
            length = seen[:, -1] + shifted[:, -1]
        if inserted is not None and not self._can_zero() and bool(inserted.any()):
            return None
        steps = int(length.max())  # T'
        if initial is not None and bool(initial.any()):
            state = state.reset_rows(initial)
        if tail is not None and not bool(tail.any()):
            tail = None
        if steps == 0:  # no row has a real step
            return x.new_zeros(B, T, H), state if tail is None else state.reset_rows(tail)

        # The timeline runs time-major (the kernels' own layout: no transposes), flattened to
        # [T' * B, .] with slot p * B + b for position p of row b. `writes` [B * T] gives each
        # step (b * T + t) its slot, `reads` [T' * B] each slot its step; one is the other's
        # inverse, so moving rows either way, and their gradients back, is one index_select.
        # Padding steps (no slot) and zero and hold slots (no step) are zero-filled.
        rows = torch.arange(B, device=device)
        step_index = (rows * T)[:, None] + columns  # (B, T)
        slot_index = position * B + rows[:, None]  # (B, T)
        no_slot = steps * B
        reads = torch.zeros(no_slot + 1, dtype=torch.long, device=device)
        padding = None
        if mask is None:
            writes = slot_index.flatten()
            reads = reads.scatter_(0, writes, step_index.flatten())[:no_slot]
        else:
            spilled = torch.where(mask, slot_index, no_slot).flatten()
            reads = reads.scatter_(0, spilled, step_index.flatten())[:no_slot]
            writes = torch.where(mask, slot_index, 0).flatten()
            padding = (~mask).flatten().nonzero().flatten()
        is_hold = torch.arange(steps, device=device)[:, None] >= length  # (T', B)
        if inserted is None:
            is_zero, stepless = torch.zeros_like(is_hold), is_hold
        else:
            zero_slots = torch.where(inserted, slot_index - B, no_slot).flatten()
            is_zero = torch.zeros(no_slot + 1, dtype=torch.bool, device=device)
            is_zero = is_zero.scatter_(0, zero_slots, True)[:no_slot].view(steps, B)
            stepless = is_zero | is_hold
        flags = torch.stack([is_zero, is_hold], dim=-1).to(x.dtype)  # (T', B, 2)
        fill = stepless.flatten().nonzero().flatten()
        layer_input = _Remap.apply(x.reshape(B * T, F), reads, fill, writes, padding)
        layer_input = layer_input.view(steps, B, F)

        last = (length - 1).clamp(min=0) * B + rows  # slot of each row's last real step
        initial_tensors = state.tensors()
        finals: list[list[torch.Tensor]] = [[] for _ in initial_tensors]
        calls = []  # (h0, output) of each layer, for the saturation bound
        for layer in range(self.num_layers):
            weights = list(self._layer_weights(layer))
            b_ih = weights[2] if self.bias else None
            weights[0] = torch.cat([weights[0], self._flag_columns(b_ih, weights[0])], dim=1)
            hx = [t[layer : layer + 1] for t in initial_tensors]
            with _fresh_weights_quiet() if x.is_cuda else contextlib.nullcontext():
                output, hx_out = self._sequence_kernel(
                    torch.cat([layer_input, flags], dim=-1), hx, weights
                )
            calls.append((hx[0], output))
            # h at the row's last real step (hold steps keep an LSTM's c, not its h)
            h_last = output.view(steps * B, H).index_select(0, last)
            if mask is not None:  # rows without a real step keep their state
                h_last = torch.where((length > 0)[:, None], h_last, hx[0][0])
            finals[0].append(h_last)
            for parts, tensor in zip(finals[1:], hx_out[1:], strict=True):
                parts.append(tensor[0])
            if layer < self.num_layers - 1 and self.dropout > 0 and self.training:
                output = functional.dropout(output, self.dropout, True)
            layer_input = output
        if self._can_zero() and not self._saturates(x, calls):
            return None
        y = _Remap.apply(layer_input.view(steps * B, H), writes, padding, reads, fill)
        if tail is not None:  # a reset after the row's last real step: zero state at the end
            finals = [[torch.where(tail[:, None], 0, t) for t in parts] for parts in finals]
        if self.num_layers == 1:
            stacked = [parts[0][None] for parts in finals]
        else:
            stacked = [torch.stack(parts) for parts in finals]
        return y.view(B, T, H), self._state(*stacked)

    @torch.no_grad()
    def _saturates(self, x: torch.Tensor, calls: list[tuple[torch.Tensor, torch.Tensor]]) -> bool:
        """Whether every flagged gate saturated exactly: for each layer, a bound on |gate
        pre-activation| without the flags (the largest input row norm x input max + recurrent
        row norm x state max + the largest biases) stays below ``_SAFE_BOUND``."""
        input_max = x.abs().max()
        bounds = []
        for layer, (h0, output) in enumerate(calls):
            state_max = self._state_max(h0, output)
            weights = self._layer_weights(layer)
            # (abs().sum(1).max(): several times faster than linalg.matrix_norm(ord=inf) here)
            bound = weights[0].abs().sum(1).max() * input_max
            bound = bound + weights[1].abs().sum(1).max() * state_max
            for bias in weights[2:]:
                bound = bound + bias.abs().max()
            bounds.append(bound)
            input_max = state_max
            if layer < self.num_layers - 1 and self.dropout > 0 and self.training:
                input_max = state_max / (1.0 - self.dropout)  # dropout scales its outputs up
        worst = bounds[0] if len(bounds) == 1 else torch.stack(bounds).max()
        return bool(worst <= _SAFE_BOUND)  # NaN fails too

    def _state_max(self, h0: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """A bound on |h| over a call from ``h0`` [1, B, H] with outputs [T', B, H]. LSTM and
        GRU outputs stay within max(1, |h0|) (tanh, sigmoid and convex mixes); the ReLU RNN
        overrides it (its outputs are unbounded)."""
        return torch.clamp(h0.abs().max(), min=1.0)

    def _sequence_kernel(
        self, x: torch.Tensor, hx: list[torch.Tensor], weights: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One single-layer fused call with explicit weights, time-major: ``x`` [T', B, F + 2]."""
        raise NotImplementedError

    # --- split: the reference ---------------------------------------------------------------

    def _run_split(
        self,
        x: torch.Tensor,
        state: State,
        reset: torch.Tensor | None,
        mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, State]:
        """Compact masked steps, then one fused call per span between reset columns."""
        B, T, _ = x.shape
        if mask is None:
            return self._run_spans(x, state, reset, None)
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
        y, state = self._run_spans(x, state, reset, lengths)
        if tail_reset is not None and bool(tail_reset.any()):
            state = state.reset_rows(tail_reset)
        if order is not None:
            y = torch.zeros_like(y).scatter(1, order[:, :, None].expand_as(y), y)
        return y, state

    def _run_spans(
        self,
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
            return self._call_rows(x, state, lengths)
        if bool(reset[:, 0].any()):
            state = state.reset_rows(reset[:, 0])
        bounds = (reset[:, 1:].any(0).nonzero().flatten() + 1).tolist()
        outputs = []
        for start, end in itertools.pairwise([0, *bounds, T]):
            if start > 0:
                state = state.reset_rows(reset[:, start])
            span = None if lengths is None else (lengths - start).clamp(0, end - start)
            y, state = self._call_rows(x[:, start:end], state, span)
            outputs.append(y)
        return torch.cat(outputs, dim=1), state

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
        weight = self._layer_weights(0)[0]  # weight_ih_l0, without nn.Module's __getattr__
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
        first = state.tensors()[0]  # fields share layers, batch and (here) hidden size
        expected = (self.num_layers, B, self.hidden_size)
        received = tuple(first.shape)
        if expected != received:
            raise ValueError(
                f"{name}: state must have shape [layers, B, H]={list(expected)} for x of batch "
                f"{B}; received {list(received)}. The state's batch is the number of rows of x: "
                f"use layer.initial_state({B}) or state.select(rows)"
            )
        if first.dtype != x.dtype or first.device != x.device:
            raise TypeError(
                f"{name}: state is {first.dtype} on {first.device}, x is {x.dtype} on "
                f"{x.device}; move it with state.to(device, dtype)"
            )
        return state


class _Remap(torch.autograd.Function):
    """Rows ``index`` [M] of ``source`` [N, D], with the rows listed in ``fill`` zeroed; the
    gradient goes back the same way by ``inverse`` [N] and ``inverse_fill``. ``index`` must be
    injective outside ``fill``, and ``inverse`` its inverse there, so both directions are one
    index_select (index_select's own backward accumulates with index_add, several times
    slower) and an in-place index_fill_ (a masked fill with a row mask is slower still)."""

    @staticmethod
    def forward(  # type: ignore[override]
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
    def backward(ctx: Any, grad: torch.Tensor):  # type: ignore[override]
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
def _flag_pattern(
    pattern: tuple[tuple[float, float], ...], H: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Constant flag weights ``[len(pattern) * H, 2]``: each gate's (zero, hold) pair repeated
    over its H rows. Cached (built once per cell kind, size, dtype and device); never written."""
    return torch.tensor(pattern, dtype=dtype, device=device).repeat_interleave(H, dim=0)


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


class LSTM(_Resettable, nn.LSTM):  # type: ignore[misc]  # forward(x, state, reset, mask)
    """Multi-layer LSTM with per-row resets and masks; parameters laid out like ``nn.LSTM``.

    Args:
        input_size: features F of x.
        hidden_size: H.
        num_layers: stacked layers.
        dropout: dropout on the outputs of every layer but the last (training only).
        bias: use bias weights.
        strategy: "auto" (one fused call per layer per window, see the module docstring) or
            "split" (the reference: one fused call per span between reset columns).

    ``batch_first=False``, ``bidirectional=True`` and ``proj_size > 0`` are refused: a stateful,
    batch-first layer cannot keep them.
    """

    state_type = LSTMState
    _torch_module = nn.LSTM

    def _cell(self, x, hx, w_ih, w_hh, b_ih, b_hh):  # type: ignore[no-untyped-def]
        return _VF.lstm_cell(x, hx, w_ih, w_hh, b_ih, b_hh)

    def _flag_columns(self, b_ih: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        # gates i, f, g, o; zero step: i, f, o -> 0; hold step: i -> 0, f -> 1
        pattern = ((-_FLAG, -_FLAG), (-_FLAG, _FLAG), (0.0, 0.0), (-_FLAG, 0.0))
        return _flag_pattern(pattern, self.hidden_size, like.dtype, like.device)

    def _sequence_kernel(self, x, hx, weights):  # type: ignore[no-untyped-def]
        y, h, c = _VF.lstm(x, hx, weights, self.bias, 1, 0.0, self.training, False, False)
        return y, [h, c]


class GRU(_Resettable, nn.GRU):  # type: ignore[misc]  # forward(x, state, reset, mask)
    """Multi-layer GRU with per-row resets and masks; parameters laid out like ``nn.GRU``.

    Arguments as :class:`LSTM`.
    """

    state_type = GRUState
    _torch_module = nn.GRU

    def _cell(self, x, hx, w_ih, w_hh, b_ih, b_hh):  # type: ignore[no-untyped-def]
        return (_VF.gru_cell(x, hx[0], w_ih, w_hh, b_ih, b_hh),)

    def _flag_columns(self, b_ih: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        # gates r, z, n; zero step: r, z -> 0 and the candidate's pre-activation exactly 0 (its
        # column cancels the input bias; not detached, so its gradient cancels too);
        # hold step: z -> 1
        H = self.hidden_size
        pattern = ((-_FLAG, 0.0), (-_FLAG, _FLAG), (0.0, 0.0))
        columns = _flag_pattern(pattern, H, like.dtype, like.device)
        if b_ih is None:
            return columns
        cancel = functional.pad(-b_ih[2 * H :, None], (0, 1, 2 * H, 0))  # column 0, rows n
        return columns + cancel

    def _sequence_kernel(self, x, hx, weights):  # type: ignore[no-untyped-def]
        y, h = _VF.gru(x, hx[0], weights, self.bias, 1, 0.0, self.training, False, False)
        return y, [h]


class RNN(_Resettable, nn.RNN):  # type: ignore[misc]  # forward(x, state, reset, mask)
    """Multi-layer Elman RNN (tanh or relu) with per-row resets and masks, like ``nn.RNN``.

    Arguments as :class:`LSTM`, plus ``nonlinearity``. The tanh RNN runs windows with resets
    inside a row the ``split`` way (tanh cannot be zeroed through its input).
    """

    state_type = RNNState
    _torch_module = nn.RNN
    nonlinearity: str

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
        batch_first: bool = True,
        bidirectional: bool = False,
        proj_size: int = 0,
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
            batch_first=batch_first,
            bidirectional=bidirectional,
            proj_size=proj_size,
            device=device,
            dtype=dtype,
            nonlinearity=nonlinearity,
        )

    def _can_zero(self) -> bool:
        return self.nonlinearity == "relu"

    def _cell(self, x, hx, w_ih, w_hh, b_ih, b_hh):  # type: ignore[no-untyped-def]
        cell = _VF.rnn_relu_cell if self.nonlinearity == "relu" else _VF.rnn_tanh_cell
        return (cell(x, hx[0], w_ih, w_hh, b_ih, b_hh),)

    def _state_max(self, h0: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        return torch.maximum(h0.abs().max(), output.abs().max())

    def _flag_columns(self, b_ih: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        # ReLU: zero and hold step alike, pre-activation -> -inf, h = 0; tanh: no zero steps,
        # and hold steps need no flag. Either way the final h is read at the last real step.
        flag = -_FLAG if self.nonlinearity == "relu" else 0.0
        return _flag_pattern(((flag, flag),), self.hidden_size, like.dtype, like.device)

    def _sequence_kernel(self, x, hx, weights):  # type: ignore[no-untyped-def]
        kernel = _VF.rnn_relu if self.nonlinearity == "relu" else _VF.rnn_tanh
        y, h = kernel(x, hx[0], weights, self.bias, 1, 0.0, self.training, False, False)
        return y, [h]
