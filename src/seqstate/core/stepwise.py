"""Recurrent layers of any variant, run exactly step by step (for cells torch has no kernel for).

torch's fused kernels compute the default cells only: LSTM/GRU with ``sigmoid`` gates and a
``tanh`` candidate, GRU with the reset gate applied *after* the recurrent matmul, RNN with tanh
or relu. Every other variant a model may declare (``hard_sigmoid`` gates in the Keras 3 or the
Keras 2 definition, GRU reset-before, relu/linear/... activations) runs here, with the same
parameters as the fused layer (``weight_ih_l0 [G*H, F]``, ``weight_hh_l0 [G*H, H]``,
``bias_ih_l0``, ``bias_hh_l0``; gate blocks as in :mod:`~seqstate.core.cells`) and the protocol::

    y, state = layer(x [B, T, F], state=None, reset=None, mask=None)   # y [B, T, H]

    for t in range(T):                      # what forward computes, for each row b
        if reset[b, t]: state[b] = 0
        if mask[b, t]:  y[b, t], state[b] = cell(x[b, t], state[b])
        else:           y[b, t] = 0         # padding leaves the state unchanged

The input projection of all steps is one matmul; only the recurrent part loops over steps.
:func:`cell_step` is the one definition of a step, shared with the ONNX export (which runs it
inside a ``scan``), so the exported graph computes what this layer computes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from seqstate._validate import check_flags, check_int
from seqstate.core.activations import activation as activation_function
from seqstate.core.activations import check_activation
from seqstate.core.cells import CellKind, cell_kind
from seqstate.core.state import State
from seqstate.core.timeline import Timeline, check_timeline

__all__ = ["StepwiseLayer", "cell_step", "is_fused"]


def is_fused(kind: str, activation: str, recurrent_activation: str, reset_after: bool) -> bool:
    """Whether torch's fused kernel computes this variant exactly."""
    if kind == "rnn":
        return activation in ("tanh", "relu")
    defaults = activation == "tanh" and recurrent_activation == "sigmoid"
    return defaults and (kind == "lstm" or reset_after)


def cell_step(
    kind: CellKind,
    x_projected: torch.Tensor,
    hidden: torch.Tensor,
    cell: torch.Tensor | None,
    weight_hh: torch.Tensor,
    bias_hh: torch.Tensor,
    act: Any,
    recurrent_act: Any,
    reset_after: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One step of one layer: ``x_projected`` = x_t W_ih^T + b_ih [B, G*H], ``hidden`` [B, H].

    Returns the new hidden state [B, H] (also the step's output) and the new cell (LSTM) or None.
    """
    H = hidden.shape[-1]
    if kind.name == "rnn":
        return act(x_projected + hidden @ weight_hh.T + bias_hh), None
    if kind.name == "lstm":
        i, f, g, o = (x_projected + hidden @ weight_hh.T + bias_hh).split(H, dim=-1)
        if cell is None:  # unreachable for a well-formed LSTM state; keeps the types honest
            raise ValueError("an LSTM step needs the cell state")
        new_cell = recurrent_act(f) * cell + recurrent_act(i) * act(g)
        return recurrent_act(o) * act(new_cell), new_cell
    x_r, x_z, x_n = x_projected.split(H, dim=-1)
    if reset_after:  # torch / cuDNN / Keras reset_after=True: r scales (W_hn h + b_hn)
        h_r, h_z, h_n = (hidden @ weight_hh.T + bias_hh).split(H, dim=-1)
        r, z = recurrent_act(x_r + h_r), recurrent_act(x_z + h_z)
        candidate = act(x_n + r * h_n)
    else:  # Keras reset_after=False: r scales h before the recurrent matmul
        w_r, w_z, w_n = weight_hh.split(H, dim=0)
        b_r, b_z, b_n = bias_hh.split(H, dim=-1)
        r = recurrent_act(x_r + hidden @ w_r.T + b_r)
        z = recurrent_act(x_z + hidden @ w_z.T + b_z)
        candidate = act(x_n + (r * hidden) @ w_n.T + b_n)
    return z * hidden + (1.0 - z) * candidate, None


class StepwiseLayer(nn.Module):
    """One LSTM / GRU / RNN layer of any variant, computed step by step; see the module doc.

    Args:
        kind: "lstm", "gru" or "rnn".
        input_size: F.
        hidden_size: H.
        activation: the candidate / output activation (the RNN's nonlinearity).
        recurrent_activation: the gate activation (LSTM, GRU).
        reset_after: GRU only: False applies the reset gate before the recurrent matmul.
    """

    num_layers = 1

    @property
    def output_size(self) -> int:
        """H: what a layer outputs per step (the ``SequenceCore`` size)."""
        return self.hidden_size

    def __init__(
        self,
        kind: str,
        input_size: int,
        hidden_size: int,
        *,
        activation: str = "tanh",
        recurrent_activation: str = "sigmoid",
        reset_after: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.kind = cell_kind(kind)
        self.input_size = check_int(input_size, "input_size", 1)
        self.hidden_size = check_int(hidden_size, "hidden_size", 1)
        self.activation = check_activation(activation, "activation")
        self.recurrent_activation = check_activation(recurrent_activation, "recurrent_activation")
        self.reset_after = bool(reset_after)
        self.state_type = self.kind.state_type
        self._act = activation_function(self.activation)
        self._recurrent_act = activation_function(self.recurrent_activation)
        width = self.kind.gates * hidden_size
        options: dict[str, Any] = {"device": device, "dtype": dtype}
        self.weight_ih_l0 = nn.Parameter(torch.empty(width, input_size, **options))
        self.weight_hh_l0 = nn.Parameter(torch.empty(width, hidden_size, **options))
        self.bias_ih_l0 = nn.Parameter(torch.empty(width, **options))
        self.bias_hh_l0 = nn.Parameter(torch.empty(width, **options))
        bound = 1.0 / math.sqrt(hidden_size)  # torch's RNN initialisation
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -bound, bound)

    def extra_repr(self) -> str:
        options = [f"{self.input_size}, {self.hidden_size}", f"activation={self.activation}"]
        if self.kind.name != "rnn":
            options.append(f"recurrent_activation={self.recurrent_activation}")
        if self.kind.name == "gru":
            options.append(f"reset_after={self.reset_after}")
        return f"{self.kind.name}, " + ", ".join(options)

    def initial_state(
        self,
        batch_size: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> State:
        """Zero state ``[1, batch_size, hidden_size]``."""
        check_int(batch_size, "batch_size", 0)
        return self.state_type.zeros(
            1,
            batch_size,
            self.hidden_size,
            dtype=dtype or self.weight_ih_l0.dtype,
            device=device or self.weight_ih_l0.device,
        )

    def step(
        self, x_projected: torch.Tensor, hidden: torch.Tensor, cell: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One step from the projected input [B, G*H]; see :func:`cell_step`."""
        return cell_step(
            self.kind,
            x_projected,
            hidden,
            cell,
            self.weight_hh_l0,
            self.bias_hh_l0,
            self._act,
            self._recurrent_act,
            self.reset_after,
        )

    def _step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One trusted step ``x`` [B, F] -> ``y`` [B, H], new state: ``forward`` for T = 1
        without its checks (the caller validated ``x`` and ``state``; as the fused layers'
        ``_step``, for :meth:`seqstate.SequenceModel._trusted_step`)."""
        tensors = state.tensors()
        cell = tensors[1][0] if len(tensors) > 1 else None
        projected = x @ self.weight_ih_l0.T + self.bias_ih_l0  # (B, G*H)
        hidden, cell = self.step(projected, tensors[0][0], cell)
        fields = (hidden[None],) if cell is None else (hidden[None], cell[None])
        return hidden, self.state_type._unchecked(*fields)

    def forward(
        self,
        x: torch.Tensor,
        state: State | None = None,
        reset: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        *,
        timeline: Timeline | None = None,
    ) -> tuple[torch.Tensor, State]:
        """``x`` [B, T, F] from ``state`` -> ``y`` [B, T, H] (zeros at masked steps), state.

        ``timeline`` is accepted like the fused layers' and not needed: this layer runs step
        by step, without a timeline."""
        x = _check_input(self, x)
        B, T, _ = x.shape
        state = _check_state(self, state, B, x)
        check_timeline(timeline, type(self).__name__)
        reset = check_flags(reset, "reset", B, T, x.device)
        mask = check_flags(mask, "mask", B, T, x.device)
        hidden = state.tensors()[0][0]  # (B, H)
        cell = state.tensors()[1][0] if len(state.tensors()) > 1 else None
        projected = x @ self.weight_ih_l0.T + self.bias_ih_l0  # (B, T, G*H): one matmul
        zero = x.new_zeros(())
        outputs = []
        for t in range(T):
            if reset is not None:
                keep = ~reset[:, t, None]  # (B, 1)
                hidden = torch.where(keep, hidden, zero)
                cell = None if cell is None else torch.where(keep, cell, zero)
            new_hidden, new_cell = self.step(projected[:, t], hidden, cell)
            if mask is None:
                hidden, cell = new_hidden, new_cell
                outputs.append(new_hidden)
                continue
            real = mask[:, t, None]  # (B, 1)
            hidden = torch.where(real, new_hidden, hidden)
            if cell is not None and new_cell is not None:
                cell = torch.where(real, new_cell, cell)
            outputs.append(torch.where(real, new_hidden, zero))
        y = torch.stack(outputs, dim=1) if outputs else x.new_zeros(B, 0, self.hidden_size)
        fields = (hidden[None],) if cell is None else (hidden[None], cell[None])
        return y, self.state_type(*fields)


# --- validation (the same messages as the fused layers) --------------------------------------


def _check_input(layer: StepwiseLayer, x: Any) -> torch.Tensor:
    name = f"{type(layer).__name__}({layer.kind.name})"
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: x must be a torch.Tensor [B, T, F]; received {type(x).__name__}")
    if x.dim() != 3 or x.shape[2] != layer.input_size:
        hint = " (add a batch dimension: x[None])" if x.dim() == 2 else ""
        raise ValueError(
            f"{name}: x must have shape [B, T, F]=[batch, time, {layer.input_size}]; "
            f"received {tuple(x.shape)}{hint}"
        )
    weight = layer.weight_ih_l0
    if x.dtype != weight.dtype or x.device != weight.device:
        raise TypeError(
            f"{name}: x is {x.dtype} on {x.device} but the parameters are {weight.dtype} on "
            f"{weight.device}; move one to the other (e.g. x.to(layer.weight_ih_l0))"
        )
    return x


def _check_state(layer: StepwiseLayer, state: Any, B: int, x: torch.Tensor) -> State:
    name = f"{type(layer).__name__}({layer.kind.name})"
    if state is None:
        return layer.initial_state(B)
    if not isinstance(state, layer.state_type):
        raise TypeError(
            f"{name}: state must be a {layer.state_type.__name__} (or None for zeros); "
            f"received {type(state).__name__}"
        )
    expected = (1, B, layer.hidden_size)
    received = (state.num_layers, state.batch_size, state.hidden_size)
    if expected != received:
        raise ValueError(
            f"{name}: state must have shape [layers, B, H]={list(expected)} for x of batch {B}; "
            f"received {list(received)}; use layer.initial_state({B}) or state.select(rows)"
        )
    if state.dtype != x.dtype or state.device != x.device:
        raise TypeError(
            f"{name}: state is {state.dtype} on {state.device}, x is {x.dtype} on {x.device}; "
            "move it with state.to(device, dtype)"
        )
    return state
