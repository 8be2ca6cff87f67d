"""Keras recurrent cells that torch's fused kernels do not compute, run step by step.

torch's ``nn.LSTM``/``nn.GRU``/``nn.RNN`` cover Keras's defaults (tanh + sigmoid, and GRU with
``reset_after=True``). Everything else Keras allows and we support exactly — GRU with
``reset_after=False``, ``hard_sigmoid`` recurrent activations, ``relu``/``linear`` LSTM/GRU
activations — runs here, in Keras's own weight layout and formulas, with seqstate's reset and
mask semantics (the plain loop of ``seqstate.layers``)::

    for t in range(T):
        if reset[b, t]: state[b] = 0
        if mask[b, t]:  y[b, t], state[b] = cell(x[b, t], state[b])
        else:           y[b, t] = 0

The Python loop over steps is slow next to a fused kernel; it only runs for models that need it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn
from torch.nn import functional

from seqstate.state import GRUState, LSTMState, RNNState, State

__all__ = ["ACTIVATIONS", "KerasRecurrent", "activation_function"]

Kind = Literal["lstm", "gru", "rnn"]

#: Activation names supported exactly (Keras's definitions).
ACTIVATIONS = ("linear", "tanh", "relu", "sigmoid", "hard_sigmoid", "softmax")


def _keras_major(keras_version: str) -> int:
    try:
        return int(keras_version.split(".")[0])
    except ValueError:
        return 3


def activation_function(
    name: str, keras_version: str = "3"
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Keras's activation ``name`` as a torch function.

    ``hard_sigmoid`` changed definition: Keras 3 uses ``relu6(x + 3) / 6`` (slope 1/6), Keras 2
    (tf.keras) used ``clip(0.2 * x + 0.5, 0, 1)``; the version that wrote the file decides.
    """
    if name == "linear":
        return lambda x: x
    if name == "tanh":
        return torch.tanh
    if name == "relu":
        return torch.relu
    if name == "sigmoid":
        return torch.sigmoid
    if name == "softmax":
        return lambda x: torch.softmax(x, dim=-1)
    if name == "hard_sigmoid":
        if _keras_major(keras_version) <= 2:
            return lambda x: torch.clamp(0.2 * x + 0.5, 0.0, 1.0)
        return lambda x: functional.relu6(x + 3.0) / 6.0
    raise ValueError(f"activation must be one of {ACTIVATIONS}; received {name!r}")


_GATES = {"lstm": 4, "gru": 3, "rnn": 1}
_STATES: dict[str, type[State]] = {"lstm": LSTMState, "gru": GRUState, "rnn": RNNState}


class KerasRecurrent(nn.Module):
    """One Keras LSTM / GRU / SimpleRNN layer, weights in Keras layout, run step by step.

    ``forward(x [B, T, F], state, reset [B, T], mask [B, T]) -> (y [B, T, H], state)`` with a
    single-layer ``LSTMState``/``GRUState``/``RNNState`` ``[1, B, H]``.
    """

    def __init__(
        self,
        kind: Kind,
        input_size: int,
        hidden_size: int,
        *,
        activation: str = "tanh",
        recurrent_activation: str = "sigmoid",
        reset_after: bool = True,
        keras_version: str = "3",
    ) -> None:
        super().__init__()
        self.kind = kind
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = 1
        self.activation = activation
        self.recurrent_activation = recurrent_activation
        self.reset_after = reset_after
        self.state_type = _STATES[kind]
        self._act = activation_function(activation, keras_version)
        self._recurrent_act = activation_function(recurrent_activation, keras_version)
        width = _GATES[kind] * hidden_size
        self.kernel = nn.Parameter(torch.zeros(input_size, width))  # (F, G*H), Keras layout
        self.recurrent_kernel = nn.Parameter(torch.zeros(hidden_size, width))  # (H, G*H)
        bias_shape = (2, width) if kind == "gru" and reset_after else (width,)
        self.bias = nn.Parameter(torch.zeros(bias_shape))

    def extra_repr(self) -> str:
        return (
            f"{self.kind}, {self.input_size}, {self.hidden_size}, activation={self.activation}, "
            f"recurrent_activation={self.recurrent_activation}"
            + (f", reset_after={self.reset_after}" if self.kind == "gru" else "")
        )

    def initial_state(self, batch_size: int) -> State:
        """Zero state ``[1, batch_size, H]``."""
        return self.state_type.zeros(
            1, batch_size, self.hidden_size, dtype=self.kernel.dtype, device=self.kernel.device
        )

    def _step(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None):
        """One step of Keras's cell: ``x`` [B, F], ``h``/``c`` [B, H] -> new ``h``, ``c``."""
        act, recurrent_act, H = self._act, self._recurrent_act, self.hidden_size
        if self.kind == "rnn":
            return act(x @ self.kernel + self.bias + h @ self.recurrent_kernel), None
        if self.kind == "lstm":
            z = x @ self.kernel + h @ self.recurrent_kernel + self.bias  # (B, 4H): i, f, c, o
            i, f, g, o = z.split(H, dim=-1)
            c = recurrent_act(f) * c + recurrent_act(i) * act(g)
            return recurrent_act(o) * act(c), c
        # GRU, Keras gate order z (update), r (reset), h (candidate)
        if self.reset_after:
            x_z, x_r, x_h = (x @ self.kernel + self.bias[0]).split(H, dim=-1)
            h_z, h_r, h_h = (h @ self.recurrent_kernel + self.bias[1]).split(H, dim=-1)
            z, r = recurrent_act(x_z + h_z), recurrent_act(x_r + h_r)
            candidate = act(x_h + r * h_h)
        else:
            x_z, x_r, x_h = (x @ self.kernel + self.bias).split(H, dim=-1)
            u_z, u_r, u_h = self.recurrent_kernel.split(H, dim=-1)
            z, r = recurrent_act(x_z + h @ u_z), recurrent_act(x_r + h @ u_r)
            candidate = act(x_h + (r * h) @ u_h)
        return z * h + (1.0 - z) * candidate, None

    def forward(
        self,
        x: torch.Tensor,
        state: State | None = None,
        reset: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, State]:
        B, T, _ = x.shape
        if state is None:
            state = self.initial_state(B)
        h = state.tensors()[0][0]  # (B, H)
        c = state.tensors()[1][0] if self.kind == "lstm" else None
        outputs = []
        for t in range(T):
            if reset is not None:
                keep = ~reset[:, t, None]  # (B, 1)
                h = torch.where(keep, h, h.new_zeros(()))
                c = None if c is None else torch.where(keep, c, c.new_zeros(()))
            new_h, new_c = self._step(x[:, t], h, c)
            if mask is None:
                h, c = new_h, new_c
                outputs.append(new_h)
                continue
            real = mask[:, t, None]  # (B, 1)
            h = torch.where(real, new_h, h)
            c = None if c is None else torch.where(real, new_c, c)
            outputs.append(torch.where(real, new_h, new_h.new_zeros(())))
        y = torch.stack(outputs, dim=1) if outputs else x.new_zeros(B, 0, self.hidden_size)
        fields = (h[None],) if c is None else (h[None], c[None])
        return y, self.state_type(*fields)
