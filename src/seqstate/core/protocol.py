"""SequenceCore: the one contract between seqstate and a recurrent model.

:func:`seqstate.fit`, :func:`seqstate.evaluate`, :func:`seqstate.predict` and
:func:`seqstate.forecast` accept any ``torch.nn.Module`` that follows it, checked once at
their boundary by :func:`check_core` (one message). Like a Haiku recurrent core, state goes in
and comes out; nothing hides it on the module::

    state = model.initial_state(B)
    y, state = model(x, state, reset=reset, mask=valid)   # x [B, T, F] -> y [B, T, O]

Training needs only ``forward`` and ``initial_state`` (``input_size``/``output_size``, when
present, are checked against the lanes); prediction and forecasting also need the sizes.
"""

from __future__ import annotations

from typing import Any, Protocol, cast, runtime_checkable

import torch
from torch import nn

__all__ = ["SequenceCore", "check_core", "check_sized_core"]


@runtime_checkable
class SequenceCore(Protocol):
    """What a model must provide (:class:`seqstate.SequenceModel` and the layers do)."""

    input_size: int  # F, features per step
    output_size: int  # O, outputs per step (a bare layer: its hidden_size)

    def forward(
        self,
        x: torch.Tensor,
        state: Any = None,
        reset: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Any]:
        """``x [B, T, F]`` -> ``(y [B, T, O], state)``; ``reset [B, T]`` zeroes a row's state
        before that step, ``mask [B, T]`` marks real steps (padding leaves state unchanged)."""
        ...

    def initial_state(self, batch_size: int) -> Any:
        """The zero state of ``batch_size`` rows (a :class:`seqstate.State`)."""
        ...


def check_core(model: Any) -> None:
    """Refuse a model that cannot be trained or evaluated: not a :class:`SequenceCore`
    (``input_size``/``output_size`` optional). One message for every entry point."""
    _refuse(model, sizes=False)


def check_sized_core(model: Any) -> tuple[int, int]:
    """Like :func:`check_core`, and the model must also expose int ``input_size`` and
    ``output_size`` (a bare layer: ``hidden_size``); returns ``(input_size, output_size)``."""
    return _refuse(model, sizes=True)


def _refuse(model: Any, *, sizes: bool) -> tuple[int, int]:
    missing = []
    if not isinstance(model, nn.Module):
        missing.append("it is not a torch.nn.Module")
    elif not callable(getattr(model, "initial_state", None)):
        missing.append("it has no initial_state(batch_size)")
    input_size = getattr(model, "input_size", None)
    output_size = getattr(model, "output_size", None) or getattr(model, "hidden_size", None)
    if sizes and not (isinstance(input_size, int) and isinstance(output_size, int)):
        missing.append("it has no int input_size and output_size (or hidden_size)")
    if missing:
        needs = " and int input_size / output_size" if sizes else ""
        raise TypeError(
            "model must be a torch.nn.Module following seqstate.SequenceCore: forward(x, state, "
            f"reset, mask) -> (y, state), initial_state(batch_size){needs}, e.g. "
            f"seqstate.SequenceModel; received {type(model).__name__} ({'; '.join(missing)})"
        )
    return (cast(int, input_size), cast(int, output_size)) if sizes else (0, 0)
