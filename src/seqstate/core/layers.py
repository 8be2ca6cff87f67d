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
  ...), which cost a fraction of a sequence call — the streaming hot path. GRU and RNN
  sequence kernels do the cells' arithmetic, but torch's float32 LSTM sequence kernel
  (oneDNN on CPU, cuDNN) sums each gate in its own order, so a one-step LSTM agrees with
  ``nn.LSTM`` to float32 rounding, not bit for bit: ``|dh|`` and ``|dc| / (1 + max|c0|)``
  stay within ``4 eps S`` per row, S the largest sum of ``|terms|`` of a gate pre-activation
  (``|W_ih| |x| + |W_hh| |h0| + |b_ih| + |b_hh|``): S is about 9 for unit-scale inputs and
  torch's initialisation at H = 1000, a bound of 4e-6 (tested; up to 0.4 eps S measured);
* anything else (``strategy="auto"``): one fused call per layer on a **timeline** per row.
  Masked steps are dropped (real steps move left, order kept); every reset after the row's
  first real step becomes an inserted *zero* step just before that step; the row is filled at
  the end with *hold* steps up to the longest row. Two flag columns are appended to each
  layer's input, with fixed weights of ``±FLAG`` that saturate the gates exactly (sigmoid is
  exactly 0 or 1 there, its derivative exactly 0, so nothing leaks through, not even gradient):

  ======  =========================================  =====================================
  cell    zero step (state -> exactly 0)             hold step (state kept)
  ======  =========================================  =====================================
  LSTM    input, forget, output gates -> 0           input gate 0, forget gate 1: c kept;
                                                     output gate 0: h = 0
  GRU     reset, update gates -> 0, candidate        update gate 1: h kept
          column = -input bias (pre-activation 0)
  ReLU    pre-activation -> -inf: h = 0              the same (h read at the last real step)
  ======  =========================================  =====================================

  The final ``h`` of each layer is read from its output at the row's last real step (a hold
  step keeps an LSTM's c but not its h); ``c`` is the kernel's final cell. Where every zero
  and hold step outputs exactly 0 (LSTM, ReLU), a padding step's zero output is read from
  such a step rather than written afterwards. Example, B=2, T=5,
  row 0 resets at step 3, row 1 has padding at step 1 and a reset at step 4 (``0`` = zero
  step, ``~`` = hold step)::

      window     row 0:  a0 a1 a2 a3 a4        reset at a3
                 row 1:  b0 .  b2 b3 b4        mask False at step 1, reset at b4
      timeline   row 0:  a0 a1 a2 0  a3 a4     one fused call per layer, T' = 6
                 row 1:  b0 b2 b3 0  b4 ~

  A reset before a row's first real step just zeroes its initial state, one after its last
  real step its final state. The timeline is T' = T + (most resets in one row) long, and the
  index plan (where each step and flag goes, a :class:`~seqstate.core.timeline.Timeline`) is
  a few NumPy operations on the host (cheaper than as many tensor ops), a pure function of
  ``reset`` and ``mask``: built once per window and passed as ``timeline=`` (``Lanes`` builds
  it with each window, ``fit`` hands it to every layer), else once per call; the steps move
  in and out, and their gradients back, by one index_select each (the way out also reads
  each row's final h), or, where every real step keeps its column (padding only at row ends,
  no zero steps) and the fill steps output 0 (LSTM, ReLU), as transposed views with no
  gather at all, as torch's own batch-first call returns them. Dropout between layers is
  applied to each layer's output, as torch does.

  The tanh RNN cannot be zeroed through its input (tanh(-inf) = -1): it takes the timeline
  only for windows without zero steps (padding, resets at a row's edges; its hold steps need
  no flag, as its h is read at the last real step). Saturation needs the other pre-activation
  terms far below ``FLAG``: a per-window bound (weight row norms x input max + recurrent
  weights x state max + biases) checks it, and when it fails (or for the tanh RNN's windows
  with zero steps, or ``strategy="split"``) the window runs the reference way instead;
* ``split``: masked steps compacted the same way, the remaining padding at each row's end
  handled by packed sequences, and one fused call per span between distinct reset columns,
  zeroing the rows that reset at each boundary. Simple and exact, but a call per reset
  column (each fused call has a fixed cost, large for oneDNN's LSTM and for cuDNN).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, cast

import torch
from torch import _VF, nn
from torch.nn import functional
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seqstate._validate import check_bool, check_flags, check_int, check_number
from seqstate.core.split import run_split
from seqstate.core.state import GRUState, LSTMState, RNNState, State
from seqstate.core.timeline import (
    FLAG,
    Timeline,
    check_timeline,
    flag_pattern,
    plan_window,
    run_timeline,
)

__all__ = ["GRU", "LSTM", "RNN", "Strategy"]

#: ``"auto"``: the timeline (one fused call per layer), falling back to ``"split"`` where it is
#: not exact; ``"split"``: the reference (one fused call per span between reset columns).
Strategy = Literal["auto", "split"]


def _refuse_positional(name: str, extra: tuple[object, ...], torch_order: tuple[str, ...]) -> None:
    """Refuse arguments past ``num_layers`` given by position (torch.nn takes them so; here
    they are keywords), naming what torch's order ``torch_order`` would have made of them."""
    if not extra:
        return
    meant = ", ".join(f"{k}={v!r}" for k, v in zip(torch_order, extra, strict=False))
    too_many = f" (torch.nn.{name} takes at most {3 + len(torch_order)})"
    raise TypeError(
        f"{name}() takes input_size, hidden_size and num_layers by position and the rest by "
        f"keyword; received {3 + len(extra)} positional arguments"
        f"{too_many if len(extra) > len(torch_order) else ''}. In torch.nn.{name}'s order the "
        f"extra ones are {meant}: write {name}(input_size, hidden_size, num_layers, {meant})"
    )


# torch.jit.trace cannot carry a State, nor the batch size as an int; torch.export cannot trace
# resets or masks: the kernel calls depend on their values (the timeline's length, the split's
# spans). One line each, naming what works instead.
_NO_JIT_TRACE = (
    "{name}: torch.jit.trace is not supported (the state is a typed container and the batch "
    "size a property of each call); use torch.export.export (without reset=/mask=) or "
    "seqstate.export_onnx"
)
_NO_EXPORTED_FLAGS = (
    "{name}: torch.export cannot trace reset= or mask= (the kernel calls depend on their "
    "values, and a SequenceModel with mask_value always has a mask); export the plain call "
    "without them, or use seqstate.export_onnx, whose graph takes the state and mask of a chunk"
)


class ResettableLayer:
    """The stateful protocol shared by LSTM, GRU and RNN (mixed in before the torch module).

    Its strategies (``run_timeline``, ``run_split``) see it as a
    :class:`seqstate.core.kernels.LayerKernels`: ``fused``, ``make_state``, ``layer_weights``,
    ``can_zero``, ``flag_columns``, ``sequence_kernel``, ``output_bound``.
    """

    state_type: type[State]
    _torch_module: type[nn.RNNBase]
    _torch_positional: tuple[str, ...]  # torch's positional parameters after num_layers
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
        *more_positional: object,
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
        _refuse_positional(name, more_positional, self._torch_positional)
        if strategy not in ("auto", "split"):
            raise ValueError(f"{name}: strategy must be 'auto' or 'split'; received {strategy!r}")
        input_size = check_int(input_size, f"{name}: input_size", 1)
        hidden_size = check_int(hidden_size, f"{name}: hidden_size", 1)
        num_layers = check_int(num_layers, f"{name}: num_layers", 1)
        dropout = check_number(dropout, f"{name}: dropout", minimum=0.0)
        if dropout > 1.0:
            raise ValueError(
                f"{name}: dropout must be a probability in [0, 1]; received {dropout!r}"
            )
        bias = check_bool(bias, f"{name}: bias")
        if dtype is not None:
            if not isinstance(dtype, torch.dtype):
                raise TypeError(
                    f"{name}: dtype must be a torch.dtype (e.g. torch.float32) or None; "
                    f"received {type(dtype).__name__} {dtype!r}"
                )
            if not dtype.is_floating_point:
                raise ValueError(
                    f"{name}: dtype must be a floating dtype (torch.float32, torch.float64, "
                    f"...): the weights are trained; received {dtype}"
                )
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
        return self.make_state(*hx) if isinstance(hx, tuple) else self.make_state(hx)

    def make_state(self, *tensors: torch.Tensor) -> State:
        """``state_type(*tensors)`` (the field count depends on the cell), unchecked: the
        strategies build it from the kernels' own results, shaped validly."""
        return self.state_type._unchecked(*tensors)

    def fused(
        self, x: torch.Tensor, state: State, lengths: torch.Tensor | None
    ) -> tuple[torch.Tensor, State]:
        """One call of the torch kernel on ``x`` [N, T, F]; ``lengths`` [N] (cpu) or None."""
        hx = self._to_hx(state)
        if lengths is None:
            y, hx = self._torch_module.forward(self, x, hx)
            return y, self._from_hx(hx)
        T = x.shape[1]
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        y, hx = self._torch_module.forward(self, packed, hx)
        y, _ = pad_packed_sequence(y, batch_first=True, total_length=T)
        return y, self._from_hx(hx)

    def layer_weights(self, layer: int) -> list[torch.Tensor]:
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
        batch_size = check_int(batch_size, "batch_size", 0)
        weight = self.weight_ih_l0  # type: ignore[attr-defined]  # set by torch's RNNBase
        return self.state_type.zeros(
            self.num_layers,
            batch_size,
            self.hidden_size,
            dtype=dtype or weight.dtype,
            device=device or weight.device,
        )

    def forward(
        self,
        x: torch.Tensor,
        state: State | None = None,
        reset: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        *,
        timeline: Timeline | None = None,
    ) -> tuple[torch.Tensor, State]:
        """Run ``x`` [B, T, F] from ``state``; see the module docstring for the semantics.

        ``timeline``: the window's :class:`~seqstate.core.timeline.Timeline`, built once from
        these ``reset`` and ``mask`` (e.g. ``Window.timeline``); the layer then skips their
        checks and its own planning. A timeline of other flags is ignored (planned afresh).
        """
        if torch.jit.is_tracing():
            raise TypeError(_NO_JIT_TRACE.format(name=type(self).__name__))
        if (reset is not None or mask is not None) and torch.compiler.is_exporting():
            raise ValueError(_NO_EXPORTED_FLAGS.format(name=type(self).__name__))
        x = self._check_input(x)
        B, T, _ = x.shape
        state = self._check_state(state, B, x)
        check_timeline(timeline, type(self).__name__)
        if (
            timeline is None
            or torch.compiler.is_compiling()  # (planned inside, by the compiler-disabled planner)
            or not timeline.describes(reset, mask, x)
        ):
            reset = check_flags(reset, "reset", B, T, x.device)
            mask = check_flags(mask, "mask", B, T, x.device)
            if T == 0:
                return x.new_zeros(B, 0, self.hidden_size), state
            if mask is not None and bool(mask.all()):
                mask = None
            if mask is None and (reset is None or T == 1 or not bool(reset[:, 1:].any())):
                return self._plain(x, state, None if reset is None else reset[:, 0])
            timeline = plan_window(reset, mask)
        elif T == 0:
            return x.new_zeros(B, 0, self.hidden_size), state
        elif timeline.plain:
            return self._plain(x, state, timeline.initial)
        if self.strategy == "auto":
            result = self._run_timeline(x, state, timeline.reset, timeline.mask, timeline)
            if result is not None:
                return result
        return self._run_split(x, state, timeline.reset, timeline.mask)

    def _plain(
        self, x: torch.Tensor, state: State, initial: torch.Tensor | None
    ) -> tuple[torch.Tensor, State]:
        """A window without a mask or resets after column 0 (``initial`` [B]: rows reset at
        column 0, or None): torch's own fused call, or the cell kernels for one step."""
        if initial is not None:
            state = state.reset_rows(initial)
        if x.shape[1] == 1:
            y, state = self._step(x[:, 0], state)
            return y[:, None], state
        return self.fused(x, state, None)

    # --- one step: the cell kernels ---------------------------------------------------------

    def _step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One step of every row, ``x`` [B, F] -> ``y`` [B, H], with the cell kernels.

        The trusted single-step entry: no checks (``forward`` made them, or the public
        boundary that calls this directly: :func:`seqstate.advance`, ``Streams.step``), so
        ``x`` must be [B, input_size] and ``state`` this layer's, batch B, on x's dtype and
        device.
        """
        tensors = state.tensors()
        make = self.state_type._unchecked  # the cell kernels shaped them validly
        if self.num_layers == 1:  # the common case, without the stacking
            flat = cast(list[torch.Tensor], self._flat_weights)  # layer 0's come first
            new = self._cell(
                x,
                [t[0] for t in tensors],
                flat[0],
                flat[1],
                flat[2] if self.bias else None,
                flat[3] if self.bias else None,
            )
            return new[0], make(*[t.unsqueeze(0) for t in new])
        layer_input = x
        finals: list[list[torch.Tensor]] = [[] for _ in tensors]
        for layer in range(self.num_layers):
            weights = self.layer_weights(layer)
            biases: list[torch.Tensor | None] = [*weights[2:]] if self.bias else [None, None]
            hx = [t[layer] for t in tensors]
            new = self._cell(layer_input, hx, weights[0], weights[1], *biases)
            for parts, tensor in zip(finals, new, strict=True):
                parts.append(tensor)
            layer_input = new[0]
            if layer < self.num_layers - 1 and self.dropout > 0 and self.training:
                layer_input = functional.dropout(layer_input, self.dropout, True)
        return layer_input, make(*[torch.stack(parts) for parts in finals])

    def _cell(
        self,
        x: torch.Tensor,
        hx: Sequence[torch.Tensor],
        w_ih: torch.Tensor,
        w_hh: torch.Tensor,
        b_ih: torch.Tensor | None,
        b_hh: torch.Tensor | None,
    ) -> tuple[torch.Tensor, ...]:
        """One cell kernel call: ``x`` [B, F_layer], ``hx`` per state field [B, H]."""
        raise NotImplementedError

    # --- the timeline: one fused call per layer ---------------------------------------------

    def can_zero(self) -> bool:
        """Whether flag inputs can zero this cell's state (not the tanh RNN's: it takes the
        timeline only for windows without zero steps, padding and edge resets)."""
        return True

    def flag_columns(self, b_ih: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        """Input weights ``[gates * H, 2]`` of the (zero, hold) flags; see the module table."""
        raise NotImplementedError

    def fill_outputs_zero(self) -> bool:
        """Whether every zero and hold step outputs exactly 0 and sets the state whatever its
        input (within the saturation bound), so its slot may read any step (LSTM, ReLU RNN;
        not the GRU, whose hold step outputs the kept h and whose zero step needs a zero
        input, nor the tanh RNN, whose hold steps are unflagged)."""
        return False

    def _run_timeline(
        self,
        x: torch.Tensor,
        state: State,
        reset: torch.Tensor | None,
        mask: torch.Tensor | None,
        timeline: Timeline | None = None,
    ) -> tuple[torch.Tensor, State] | None:
        """The timeline (:func:`~seqstate.core.timeline.run_timeline`) of ``reset`` and
        ``mask`` (``timeline``: theirs, already built); None if it is not exact."""
        if timeline is None:
            timeline = plan_window(reset, mask)
            if timeline.plain:  # (no mask, no mid-row reset: the caller's plain call)
                return self._plain(x, state, timeline.initial)
        return run_timeline(self, x, state, timeline)

    def output_bound(self) -> float | None:
        """A bound on |output| (so on |h|) for any input, or None. LSTM and GRU outputs stay
        within max(1, |h0|) (tanh, sigmoid and convex mixes); the ReLU RNN's are unbounded."""
        return 1.0

    def sequence_kernel(
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
        """The reference (:func:`seqstate.core.split.run_split`)."""
        return run_split(self, x, state, reset, mask)

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
        weight = self.layer_weights(0)[0]  # weight_ih_l0, without nn.Module's __getattr__
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


class LSTM(ResettableLayer, nn.LSTM):  # type: ignore[misc]  # forward(x, state, reset, mask)
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

    def fill_outputs_zero(self) -> bool:
        return True

    _torch_positional = (
        "bias",
        "batch_first",
        "dropout",
        "bidirectional",
        "proj_size",
        "device",
        "dtype",
    )

    def _cell(
        self,
        x: torch.Tensor,
        hx: Sequence[torch.Tensor],
        w_ih: torch.Tensor,
        w_hh: torch.Tensor,
        b_ih: torch.Tensor | None,
        b_hh: torch.Tensor | None,
    ) -> tuple[torch.Tensor, ...]:
        return _VF.lstm_cell(x, cast(list[torch.Tensor], hx), w_ih, w_hh, b_ih, b_hh)

    def flag_columns(self, b_ih: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        # gates i, f, g, o; zero step: i, f, o -> 0; hold step: i -> 0, f -> 1 (c kept),
        # o -> 0 (h = 0: every zero and hold step outputs exactly 0)
        pattern = ((-FLAG, -FLAG), (-FLAG, FLAG), (0.0, 0.0), (-FLAG, -FLAG))
        return flag_pattern(pattern, self.hidden_size, like.dtype, like.device)

    def sequence_kernel(
        self, x: torch.Tensor, hx: list[torch.Tensor], weights: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        y, h, c = _VF.lstm(x, hx, weights, self.bias, 1, 0.0, self.training, False, False)
        return y, [h, c]


class GRU(ResettableLayer, nn.GRU):  # type: ignore[misc]  # forward(x, state, reset, mask)
    """Multi-layer GRU with per-row resets and masks; parameters laid out like ``nn.GRU``.

    Arguments as :class:`LSTM`.
    """

    state_type = GRUState
    _torch_module = nn.GRU
    _torch_positional = ("bias", "batch_first", "dropout", "bidirectional", "device", "dtype")

    def _cell(
        self,
        x: torch.Tensor,
        hx: Sequence[torch.Tensor],
        w_ih: torch.Tensor,
        w_hh: torch.Tensor,
        b_ih: torch.Tensor | None,
        b_hh: torch.Tensor | None,
    ) -> tuple[torch.Tensor, ...]:
        return (_VF.gru_cell(x, hx[0], w_ih, w_hh, b_ih, b_hh),)

    def flag_columns(self, b_ih: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        # gates r, z, n; zero step: r, z -> 0 and the candidate's pre-activation exactly 0 (its
        # column cancels the input bias; not detached, so its gradient cancels too);
        # hold step: z -> 1
        H = self.hidden_size
        pattern = ((-FLAG, 0.0), (-FLAG, FLAG), (0.0, 0.0))
        columns = flag_pattern(pattern, H, like.dtype, like.device)
        if b_ih is None:
            return columns
        cancel = functional.pad(-b_ih[2 * H :, None], (0, 1, 2 * H, 0))  # column 0, rows n
        return columns + cancel

    def sequence_kernel(
        self, x: torch.Tensor, hx: list[torch.Tensor], weights: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        y, h = _VF.gru(x, hx[0], weights, self.bias, 1, 0.0, self.training, False, False)
        return y, [h]


class RNN(ResettableLayer, nn.RNN):  # type: ignore[misc]  # forward(x, state, reset, mask)
    """Multi-layer Elman RNN (tanh or relu) with per-row resets and masks, like ``nn.RNN``.

    Arguments as :class:`LSTM`, plus ``nonlinearity``. The tanh RNN runs windows with resets
    inside a row the ``split`` way (tanh cannot be zeroed through its input).
    """

    state_type = RNNState
    _torch_module = nn.RNN
    _torch_positional = (
        "nonlinearity",
        "bias",
        "batch_first",
        "dropout",
        "bidirectional",
        "device",
        "dtype",
    )
    nonlinearity: str

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        *more_positional: object,
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
        _refuse_positional("RNN", more_positional, self._torch_positional)
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

    def can_zero(self) -> bool:
        return self.nonlinearity == "relu"

    def fill_outputs_zero(self) -> bool:
        return self.nonlinearity == "relu"

    def _cell(
        self,
        x: torch.Tensor,
        hx: Sequence[torch.Tensor],
        w_ih: torch.Tensor,
        w_hh: torch.Tensor,
        b_ih: torch.Tensor | None,
        b_hh: torch.Tensor | None,
    ) -> tuple[torch.Tensor, ...]:
        cell = _VF.rnn_relu_cell if self.nonlinearity == "relu" else _VF.rnn_tanh_cell
        return (cell(x, hx[0], w_ih, w_hh, b_ih, b_hh),)

    def output_bound(self) -> float | None:
        return None if self.nonlinearity == "relu" else 1.0

    def flag_columns(self, b_ih: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        # ReLU: zero and hold step alike, pre-activation -> -inf, h = 0; tanh: no zero steps,
        # and hold steps need no flag. Either way the final h is read at the last real step.
        flag = -FLAG if self.nonlinearity == "relu" else 0.0
        return flag_pattern(((flag, flag),), self.hidden_size, like.dtype, like.device)

    def sequence_kernel(
        self, x: torch.Tensor, hx: list[torch.Tensor], weights: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        kernel = _VF.rnn_relu if self.nonlinearity == "relu" else _VF.rnn_tanh
        y, h = kernel(x, hx[0], weights, self.bias, 1, 0.0, self.training, False, False)
        return y, [h]
