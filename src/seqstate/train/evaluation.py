"""evaluate: metrics of a model over lanes, from a zero state, in eval mode, no gradients."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from seqstate.core import check_core
from seqstate.lanes import Lanes
from seqstate.losses import LOSSES, LossName, MaskedLoss, MetricSums
from seqstate.train.checks import check_compatible, check_lanes, resolve_loss
from seqstate.train.config import FitConfig
from seqstate.train.tensors import first_parameter, initial_state, to_device


def evaluate(
    model: nn.Module,
    lanes: Lanes,
    *,
    loss: LossName | None = None,
    device: torch.device | str | None = None,
    huber_delta: float = 1.0,
) -> dict[str, float]:
    """Metrics of ``model`` on ``lanes``, from a zero state, in eval mode, without gradients.

    Returns ``{"loss", "mae", "rmse"}`` for regression (mae/rmse in raw target units; loss in
    the normalised space training uses) or ``{"loss", "accuracy"}`` for classification, each
    a mean over exactly the steps whose target counts (``window.loss_mask``): the numbers do not
    depend on the number of lanes or the window length. The model's mode is restored after.

    Args:
        loss: mse | mae | huber | cross_entropy; None: from the model's task (or the targets).
        device: where to run; None: where the model's parameters are (the model is not moved).
    """
    check_core(model)
    check_lanes(lanes, "lanes")
    if loss is not None and loss not in LOSSES:
        raise ValueError(f"loss must be one of {list(LOSSES)} or None; received {loss!r}")
    config = FitConfig(loss=loss, huber_delta=huber_delta)
    masked_loss = resolve_loss(config, model, lanes)
    check_compatible(model, lanes, masked_loss, "lanes")
    parameter = first_parameter(model)
    target = torch.device(device) if device is not None else parameter.device
    if target != parameter.device:
        raise ValueError(
            f"device={str(target)!r} but the model's parameters are on {parameter.device}; "
            "move the model first (model.to(device)) or leave device=None"
        )
    return evaluate_metrics(model, lanes, masked_loss, target)


def evaluate_metrics(
    model: nn.Module, lanes: Lanes, loss: MaskedLoss, device: torch.device
) -> dict[str, float]:
    return evaluate_sums(model, lanes, loss, device).result()


def evaluate_sums(
    model: nn.Module, lanes: Lanes, loss: MaskedLoss, device: torch.device, rows: Any = None
) -> MetricSums:
    """Metric sums over ``rows`` of ``lanes`` (None: all lanes)."""
    dtype = first_parameter(model).dtype
    batch_size = len(np.arange(lanes.num_lanes)[slice(None) if rows is None else rows])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            state = initial_state(model, batch_size, device, dtype)
            sums = MetricSums(loss, device)
            for window in lanes.windows(0, rows=rows):
                valid = window.valid
                counted = int(window.loss_mask.sum())
                model_mask = None if bool(valid.all()) else valid
                x, y, mask, reset, model_mask = to_device(window, model_mask, device, dtype)
                pred, state = model(x, state, reset=reset, mask=model_mask)
                sums.add(pred, y, mask, counted)
            return sums
    finally:
        model.train(was_training)
