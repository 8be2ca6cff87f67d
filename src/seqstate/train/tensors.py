"""Small tensor plumbing shared by the training loop and evaluation."""

from __future__ import annotations

import contextlib
import inspect
import weakref
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

from seqstate.core.protocol import SequenceCore
from seqstate.core.state import State
from seqstate.core.timeline import Timeline
from seqstate.lanes.lanes import Window


def to_device(
    window: Window, model_mask: torch.Tensor | None, device: torch.device, dtype: torch.dtype
) -> tuple[
    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, Timeline | None
]:
    """``(x, y, loss_mask, reset, model_mask, timeline)`` on ``device``, x (and float y) in
    ``dtype``. With the window's timeline, ``reset`` and ``model_mask`` are the timeline's own
    tensors (a layer uses a timeline only with the flags it was built from)."""
    x, y, mask, reset = window.x, window.y, window.loss_mask, window.reset
    timeline = window.timeline
    if x.dtype != dtype:
        x = x.to(dtype)
        y = y.to(dtype) if y.is_floating_point() else y
    if device.type != "cpu":
        x, y, mask, reset = (t.to(device, non_blocking=True) for t in (x, y, mask, reset))
        if model_mask is not None:
            model_mask = model_mask.to(device, non_blocking=True)
    if timeline is not None:
        timeline = timeline.to(device, non_blocking=True)
        reset = cast(torch.Tensor, timeline.reset)  # (a window's timeline has its reset)
        model_mask = timeline.mask
    return x, y, mask, reset, model_mask, timeline


def call_model(
    forward: Callable[..., tuple[torch.Tensor, Any]],
    x: torch.Tensor,
    state: Any,
    reset: torch.Tensor | None,
    mask: torch.Tensor | None,
    timeline: Timeline | None,
) -> tuple[torch.Tensor, Any]:
    """``forward(x, state, reset=, mask=)``, with ``timeline=`` when ``forward`` takes it (a
    :class:`seqstate.SequenceModel` or layer); any other module is called without it."""
    if timeline is not None and takes_timeline(forward):
        return forward(x, state, reset=reset, mask=mask, timeline=timeline)
    return forward(x, state, reset=reset, mask=mask)


# forward function -> whether it has a ``timeline`` parameter (read once per function)
_TAKES_TIMELINE: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def takes_timeline(forward: Callable[..., Any]) -> bool:
    """Whether ``forward`` (a module, or a bound method such as ``distribution_parameters``)
    accepts ``timeline=``."""
    function = forward.forward if isinstance(forward, nn.Module) else forward
    key = getattr(function, "__func__", function)
    try:
        cached = _TAKES_TIMELINE.get(key)
    except TypeError:  # not weakly referenceable: read each time
        cached = None
    if cached is not None:
        return cached
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):  # no signature to read: call it the plain way
        return False
    takes = "timeline" in parameters
    with contextlib.suppress(TypeError):  # not weakly referenceable: read each time
        _TAKES_TIMELINE[key] = takes
    return takes


def initial_state(model: nn.Module, batch_size: int, device: torch.device, dtype: Any) -> Any:
    state = cast(SequenceCore, model).initial_state(batch_size)
    if isinstance(state, State) and (state.device != device or state.dtype != dtype):
        state = state.to(device, dtype)
    return state


def detach_state(state: Any) -> Any:
    if isinstance(state, State | torch.Tensor):
        return state.detach()
    if isinstance(state, tuple | list):
        return type(state)(detach_state(s) for s in state)
    return state


def first_parameter(model: nn.Module) -> torch.Tensor:
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return parameter
    raise ValueError(f"model {type(model).__name__} has no floating-point parameters to train")
