"""LayerKernels: the narrow protocol between the recurrent layers and their two strategies.

:class:`seqstate.core.layers.ResettableLayer` (LSTM, GRU, RNN) runs a window with resets or
padding through one of two strategies: the timeline (:mod:`seqstate.core.timeline`, one fused
call per layer) or the split reference (:mod:`seqstate.core.split`, one fused call per span).
The strategies see a layer only through this protocol, so a strategy can be read, tested and
changed without the layer's other members, and the layer without the strategies' internals.
"""

from __future__ import annotations

from typing import Protocol

import torch

from seqstate.core.state import State

__all__ = ["LayerKernels"]


class LayerKernels(Protocol):
    """The members of a recurrent layer that its strategies use (shapes batch-first unless
    said; H hidden units, L layers)."""

    hidden_size: int  # H
    num_layers: int  # L
    bias: bool  # the layers have bias_ih / bias_hh
    dropout: float  # between layers, in training mode
    training: bool

    def fused(
        self, x: torch.Tensor, state: State, lengths: torch.Tensor | None
    ) -> tuple[torch.Tensor, State]:
        """One call of torch's kernel over all layers: ``x`` [N, T, F], ``lengths`` [N] (cpu;
        None: every row is T long) -> (``y`` [N, T, H], the state after each row's length)."""
        ...

    def make_state(self, *tensors: torch.Tensor) -> State:
        """The layer's state type from its tensors, each [L, B, H]."""
        ...

    def layer_weights(self, layer: int) -> list[torch.Tensor]:
        """``[weight_ih, weight_hh(, bias_ih, bias_hh)]`` of one layer, as torch lays them out."""
        ...

    def can_zero(self) -> bool:
        """Whether flag inputs can zero this cell's state (the timeline needs it for zero
        steps, padding and edge resets)."""
        ...

    def flag_columns(self, b_ih: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        """Input weights ``[gates * H, 2]`` of the (zero, hold) flag columns."""
        ...

    def fill_outputs_zero(self) -> bool:
        """Whether the timeline's zero and hold steps output exactly 0 and set the state
        whatever their input within the saturation bound (so a padding step's zero output can
        be read from one of them, and their slots need no zeroed input)."""
        ...

    def sequence_kernel(
        self, x: torch.Tensor, hx: list[torch.Tensor], weights: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One single-layer fused call with explicit weights, time-major: ``x`` [T', B, F + 2],
        ``hx`` per state field [1, B, H] -> (output [T', B, H], final ``hx``)."""
        ...

    def output_bound(self) -> float | None:
        """A bound on |output| for any input (with |h0|, a bound on |h| over a call), or None
        where the outputs are unbounded (the ReLU RNN: then read from them)."""
        ...
