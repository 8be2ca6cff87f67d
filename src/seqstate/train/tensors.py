"""Small tensor plumbing shared by the training loop and evaluation."""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from seqstate.core.protocol import SequenceCore
from seqstate.core.state import State
from seqstate.lanes.lanes import Window


def to_device(
    window: Window, model_mask: torch.Tensor | None, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    x, y, mask, reset = window.x, window.y, window.loss_mask, window.reset
    if x.dtype != dtype:
        x = x.to(dtype)
        y = y.to(dtype) if y.is_floating_point() else y
    if device.type != "cpu":
        x, y, mask, reset = (t.to(device, non_blocking=True) for t in (x, y, mask, reset))
        if model_mask is not None:
            model_mask = model_mask.to(device, non_blocking=True)
    return x, y, mask, reset, model_mask


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
