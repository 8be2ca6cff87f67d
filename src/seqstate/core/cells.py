"""The recurrent cell kinds, one row each: everything that differs between LSTM, GRU and RNN.

Code that needs a per-kind fact (the torch module, the state type, the gate count, the one-step
kernel, the ONNX operator, the Keras class and gate order) reads it here instead of branching on
the kind's name.

Gate blocks along a weight's output axis (torch layout, which every seqstate layer uses)::

    lstm   i f g o      (input, forget, candidate, output)     4 H rows
    gru    r z n        (reset, update, candidate)             3 H rows
    rnn    h                                                   1 H rows
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import _VF, nn

from seqstate.core.kinds import Kind
from seqstate.core.state import GRUState, LSTMState, RNNState, State

__all__ = ["CELLS", "CellKind", "Kind", "cell_kind"]


@dataclass(frozen=True)
class CellKind:
    """The facts about one cell kind."""

    name: Kind
    torch_module: type[nn.RNNBase]  # nn.LSTM / nn.GRU / nn.RNN
    state_type: type[State]  # LSTMState / GRUState / RNNState
    gates: int  # gate blocks of H rows in weight_ih / weight_hh
    cell_kernel: Callable[..., object]  # one fused step: torch._VF.lstm_cell / gru_cell / rnn_*
    onnx_op: str  # the ONNX operator of this kind
    # torch's dynamo ONNX exporter (torch 2.13) turns nn.LSTM/nn.GRU into ONNX LSTM/GRU with a
    # dynamic time axis, but unrolls nn.RNN over the example's steps (a fixed time length), so
    # RNN layers are exported as a Scan of per-step ops instead.
    onnx_fused_export: bool
    keras_class: str  # the Keras layer class
    keras_gate_order: tuple[int, ...]  # Keras gate block b is torch gate block keras_gate_order[b]

    @property
    def state_fields(self) -> tuple[str, ...]:
        """The state's tensors: ``("hidden", "cell")`` or ``("hidden",)``."""
        return self.state_type.field_names()


CELLS: dict[str, CellKind] = {
    "lstm": CellKind(
        "lstm", nn.LSTM, LSTMState, 4, _VF.lstm_cell, "LSTM", True, "LSTM", (0, 1, 2, 3)
    ),  # Keras i f c o == torch i f g o
    "gru": CellKind(
        "gru", nn.GRU, GRUState, 3, _VF.gru_cell, "GRU", True, "GRU", (1, 0, 2)
    ),  # Keras z r h
    "rnn": CellKind("rnn", nn.RNN, RNNState, 1, _VF.rnn_tanh_cell, "RNN", False, "SimpleRNN", (0,)),
}


def cell_kind(name: object, argument: str = "kind") -> CellKind:
    """The row of kind ``name``; ValueError naming ``argument`` for anything else."""
    if not isinstance(name, str) or name not in CELLS:
        raise ValueError(f"{argument} must be one of {sorted(CELLS)}; received {name!r}")
    return CELLS[name]
