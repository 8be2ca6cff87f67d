"""The one-step hot path of streaming: a model's cell kernels and head, nothing else.

:class:`DirectStep` runs one step ``x`` [n, F] of a :class:`seqstate.SequenceModel` whose
recurrent stack is one fused group (an LSTM, GRU or RNN of any number of layers): each layer's
cell kernel (``lstm_cell`` ..., the call ``nn.LSTMCell`` makes) on 2-D ``[n, H]`` state
tensors, then the head's linear maps, with the model's normalisation where it is not the
identity. It is what ``forward(x[:, None], state)[0][:, 0]`` computes, bit for bit
(:meth:`seqstate.SequenceModel._trusted_step` is the same sequence of kernel calls), without
the State containers, the module calls and their checks.

Trusted: the callers (``Streams.step``, :func:`seqstate.advance`) validate ``x`` and the
state first, and ask :meth:`DirectStep.applies` on every call (an override, a hook or a
model that derives masks from its input sends steps through ``forward`` instead). It never
applies dropout: a streamed step runs in eval mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn
from torch.nn import functional

from seqstate.core.activations import ACTIVATIONS
from seqstate.core.layers import ResettableLayer

__all__ = ["DirectStep"]

_IDENTITY = ACTIVATIONS["linear"]


class DirectStep:
    """One step of ``model`` on its cell kernels (see the module docstring).

    Build it with :meth:`of` (None for models it does not cover: several recurrent groups, a
    step-by-step layer, a module that is not a :class:`seqstate.SequenceModel`).
    """

    __slots__ = (
        "_buffers",
        "_cell",
        "_heads",
        "_layer",
        "_model",
        "_normalisation",
        "_regression",
        "num_layers",
    )

    def __init__(self, model: Any, layer: ResettableLayer) -> None:
        self._model = model
        self._layer = layer
        self.num_layers = layer.num_layers
        self._cell = layer._cell  # (the bound method, looked up once)
        self._heads = tuple(
            (linear._parameters, activation) for linear, activation in model._head_pairs
        )
        self._regression = model.config.task == "regression"
        self._buffers: dict[str, torch.Tensor] = model._buffers
        # (the four buffers, the sum of their versions, the dtype of x, skip the input's,
        # skip the output's): see _skips
        self._normalisation: (
            tuple[tuple[torch.Tensor, ...], int, torch.dtype, bool, bool] | None
        ) = None

    @staticmethod
    def of(model: nn.Module) -> DirectStep | None:
        """The direct step of ``model``, or None where it does not apply."""
        groups = getattr(model, "_step_groups", None)
        pairs = getattr(model, "_head_pairs", None)
        if groups is None or pairs is None or not hasattr(model, "_steps_directly"):
            return None
        if len(groups) != 1 or not isinstance(groups[0], ResettableLayer):
            return None
        if not all(type(linear) is nn.Linear for linear, _ in pairs):
            return None
        return DirectStep(model, groups[0])

    def applies(self) -> bool:
        """Whether a step may take this path now: the model's own test (no hook, override,
        input masking or distribution head). (The head's modules are fixed at construction,
        and a module keeps its ``_parameters`` dict: the parameters are read from it on every
        call.)"""
        return bool(self._model._steps_directly())

    def _skips(self, x: torch.Tensor) -> tuple[bool, bool]:
        """(input, output): whether this step may skip the normalisation, as ``forward``
        does: the model's answer that it is the identity (``(x - 0) / 1 == x`` exactly),
        with the input's shift and the output's scale of ``x``'s dtype and device (type
        promotion and device unchanged; the output is of ``x``'s kind too). Kept with the
        buffers it was read from, the sum of their versions (a counter only grows, so an
        equal sum means no buffer was written) and the dtype of ``x``, so that a step asks
        again only after a buffer was replaced or written (``x`` is on the parameters'
        device: the callers check it)."""
        buffers = self._buffers
        kept = self._normalisation
        if kept is not None:
            tensors = kept[0]
            if (
                buffers["input_shift"] is tensors[0]
                and buffers["input_scale"] is tensors[1]
                and buffers["output_shift"] is tensors[2]
                and buffers["output_scale"] is tensors[3]
                and tensors[0]._version
                + tensors[1]._version
                + tensors[2]._version
                + tensors[3]._version
                == kept[1]
                and x.dtype is kept[2]
            ):
                return kept[3], kept[4]
        skip_input, skip_output = self._model._identity_normalisation()
        tensors = (
            buffers["input_shift"],
            buffers["input_scale"],
            buffers["output_shift"],
            buffers["output_scale"],
        )
        # (forward's own test: the shift of x's kind, and the scale of the output's, which
        # is x's: the head's parameters are those of the layers)
        skips = (
            skip_input and _same_kind(x, tensors[0]),
            skip_output and _same_kind(x, tensors[3]),
        )
        try:
            versions = sum(t._version for t in tensors)
        except RuntimeError:  # inference-mode tensors have no version counter: ask each time
            self._normalisation = None
            return skips
        self._normalisation = (tensors, versions, x.dtype, *skips)
        return skips

    def run(
        self, x: torch.Tensor, hx: Sequence[Sequence[torch.Tensor]]
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, ...]]]:
        """``x`` [n, F] and ``hx`` (per layer, its state fields [n, H]) -> (``y`` [n, O], per
        layer the new fields [n, H]). Nothing is written; autograd is off for the call.

        ``x`` must be of the parameters' dtype and device (the callers check it)."""
        layer = self._layer
        grad_was_enabled = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)
        try:
            skip_input, skip_output = self._skips(x)
            if not skip_input:
                buffers = self._buffers
                x = (x - buffers["input_shift"]) / buffers["input_scale"]
            cell = self._cell
            new: list[tuple[torch.Tensor, ...]] = []
            if self.num_layers == 1 and layer.bias:
                flat = cast(list[torch.Tensor], layer._flat_weights)  # layer 0's come first
                fields = cell(x, hx[0], flat[0], flat[1], flat[2], flat[3])
                new.append(fields)
                hidden = fields[0]
            else:
                hidden = x
                for index in range(self.num_layers):
                    fields = cell(hidden, hx[index], *_biased(layer, index))
                    new.append(fields)
                    hidden = fields[0]
            y = hidden
            for params, activation in self._heads:
                y = functional.linear(y, params["weight"], params["bias"])
                if activation is not _IDENTITY:
                    y = activation(y)
            if self._regression and not skip_output:
                buffers = self._buffers
                y = y * buffers["output_scale"] + buffers["output_shift"]
            return y, new
        finally:
            torch._C._set_grad_enabled(grad_was_enabled)


def _same_kind(x: torch.Tensor, buffer: torch.Tensor) -> bool:
    """Skipping an identity normalisation leaves ``x`` exactly as computing it would: the
    buffer is of ``x``'s dtype (no type promotion) and on its device."""
    return x.dtype == buffer.dtype and x.device == buffer.device


def _biased(layer: ResettableLayer, index: int) -> list[Any]:
    """``[w_ih, w_hh, b_ih, b_hh]`` of one layer, with None biases for ``bias=False``."""
    weights: list[Any] = layer.layer_weights(index)
    return weights if layer.bias else [*weights, None, None]
