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
* resets mid-window, two strategies (the faster is chosen per window, see ``_choose``):
  - ``split``: one fused call per span between distinct reset columns, zeroing the rows that
    reset at each boundary — cheap when resets fall in few columns;
  - ``gather``: every row is cut at its resets and the pieces become rows of one packed call
    (first piece of a row starts from the carried state, the others from zeros) — one call
    however many resets, at the cost of a gather/scatter.
"""

from __future__ import annotations

import itertools
from typing import Literal

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seqstate.state import GRUState, LSTMState, RNNState, State

__all__ = ["GRU", "LSTM", "RNN", "Strategy"]

Strategy = Literal["auto", "split", "gather"]

# ``auto`` uses ``split`` while a window has at most this many distinct reset columns after
# column 0, ``gather`` beyond. Measured with benchmarks/layers.py on CPU (see BENCHMARKS.md):
# no crossover -- split beat gather at every count measured, LSTM and GRU, T 50/100, H 128/256,
# 1 to 96 columns (LSTM 2-7x, GRU 1.0-2.8x): gather's packed call leaves oneDNN for LSTM and
# pays pack/unpack, while split's per-call cost is small on CPU. So auto always splits up to
# 128 columns; gather remains for denser windows (unmeasured, as is any GPU).
SPLIT_MAX_COLUMNS = 128


class _Resettable:
    """The stateful protocol shared by LSTM, GRU and RNN (mixed in before the torch module)."""

    state_type: type[State]
    _torch_module: type[nn.RNNBase]
    strategy: Strategy

    # set by nn.RNNBase
    input_size: int
    hidden_size: int
    num_layers: int

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
        if columns.numel() == 0:
            return self._call_rows(x, state, lengths)
        strategy = self._choose(columns.numel())
        if strategy == "split":
            return self._run_split(x, state, reset, lengths, columns.tolist())  # type: ignore[arg-type]
        return self._run_gather(x, state, reset, lengths)  # type: ignore[arg-type]

    def _choose(self, distinct_columns: int) -> Literal["split", "gather"]:
        if self.strategy != "auto":
            return self.strategy  # type: ignore[return-value]
        return "split" if distinct_columns <= SPLIT_MAX_COLUMNS else "gather"

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

    def _run_split(
        self,
        x: torch.Tensor,
        state: State,
        reset: torch.Tensor,
        lengths: torch.Tensor | None,
        columns: list[int],
    ) -> tuple[torch.Tensor, State]:
        T = x.shape[1]
        bounds = [0, *columns, T]
        outputs = []
        for start, end in itertools.pairwise(bounds):
            if start > 0:
                state = state.reset_rows(reset[:, start])
            span = None if lengths is None else (lengths - start).clamp(0, end - start)
            y, state = self._call_rows(x[:, start:end], state, span)
            outputs.append(y)
        return torch.cat(outputs, dim=1), state

    def _run_gather(
        self,
        x: torch.Tensor,
        state: State,
        reset: torch.Tensor,
        lengths: torch.Tensor | None,
    ) -> tuple[torch.Tensor, State]:
        B, T, F = x.shape
        device = x.device
        if lengths is None:
            lengths = torch.full((B,), T, dtype=torch.long, device=device)
        positions = torch.arange(T, device=device)
        # A piece starts at column 0 of every non-empty row and at every reset inside it.
        starts = reset.clone()
        starts[:, 0] = True
        starts &= positions < lengths[:, None]
        piece_row, piece_start = starts.nonzero(as_tuple=True)  # row-major: pieces in order
        # piece length: up to the next start in the same row, or to the row's end
        next_start = torch.cat([piece_start[1:], piece_start.new_zeros(1)])
        same_row = torch.cat([piece_row[1:] == piece_row[:-1], piece_row.new_zeros(1).bool()])
        piece_end = torch.where(same_row, next_start, lengths[piece_row])
        piece_len = piece_end - piece_start
        pieces = piece_row.numel()
        longest = int(piece_len.max())

        # (pieces, longest) flat indices into x viewed as (B*T, F); padding points at a real
        # step (clamped) and is ignored by the packed call.
        offsets = torch.arange(longest, device=device)
        within = offsets[None, :] < piece_len[:, None]
        flat = piece_row[:, None] * T + (piece_start[:, None] + offsets).clamp(max=T - 1)
        xs = x.reshape(B * T, F)[flat]

        first = piece_start == 0  # a row's first piece continues the carried state
        h0 = state.zeros_like(pieces).scatter(
            first.nonzero().flatten(), state.select(piece_row[first])
        )
        ys, hs = self._fused(xs, h0, piece_len.cpu())

        y = x.new_zeros(B * T, self.hidden_size).index_copy(0, flat[within], ys[within])
        last = ~same_row  # the last piece of each row carries the row's final state
        final = state.scatter(piece_row[last], hs.select(last.nonzero().flatten()))
        return y.view(B, T, self.hidden_size), final

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


def _check_common(strategy: str) -> None:
    if strategy not in ("auto", "split", "gather"):
        raise ValueError(f"strategy must be 'auto', 'split' or 'gather'; received {strategy!r}")


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
    ) -> None:
        _check_common(strategy)
        nn.LSTM.__init__(
            self,
            input_size,
            hidden_size,
            num_layers,
            bias=bias,
            batch_first=True,
            dropout=dropout,
            device=device,
            dtype=dtype,
        )
        self.strategy = strategy


class GRU(_Resettable, nn.GRU):
    """Multi-layer GRU with per-row resets and masks; parameters laid out like ``nn.GRU``."""

    state_type = GRUState
    _torch_module = nn.GRU

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
    ) -> None:
        _check_common(strategy)
        nn.GRU.__init__(
            self,
            input_size,
            hidden_size,
            num_layers,
            bias=bias,
            batch_first=True,
            dropout=dropout,
            device=device,
            dtype=dtype,
        )
        self.strategy = strategy


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
        _check_common(strategy)
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu'; received {nonlinearity!r}")
        nn.RNN.__init__(
            self,
            input_size,
            hidden_size,
            num_layers,
            nonlinearity=nonlinearity,
            bias=bias,
            batch_first=True,
            dropout=dropout,
            device=device,
            dtype=dtype,
        )
        self.strategy = strategy
