"""evaluate: metrics of a model over lanes, from a zero state, in eval mode, no gradients.

A model on lanes, in training's terms; a trained run on a table (warm, in raw units) is
:func:`seqstate.recipe.evaluation.evaluate_forecaster`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from seqstate.core.protocol import check_core
from seqstate.lanes.lanes import Lanes
from seqstate.train.checks import check_compatible, check_lanes, resolve_loss
from seqstate.train.config import FitConfig
from seqstate.train.losses import LOSSES, LossName, MaskedLoss, MetricSums, loss_forward
from seqstate.train.tensors import call_model, first_parameter, initial_state
from seqstate.train.windows import WindowCache, prepared_windows


def evaluate(
    model: nn.Module,
    lanes: Lanes,
    *,
    loss: LossName | None = None,
    device: torch.device | str | None = None,
    huber_delta: float = 1.0,
) -> dict[str, float]:
    """Metrics of ``model`` on ``lanes``, from a zero state, in eval mode, without gradients.

    Returns ``{"loss", "mae", "rmse", "series_mae", "series_rmse"}`` for regression or
    ``{"loss", "accuracy"}`` for classification. ``loss`` (in the normalised space training
    uses), ``mae``/``rmse`` (raw target units) and ``accuracy`` are means over exactly the steps
    whose target counts (``window.loss_mask``), pooled across series, so the largest series
    dominate the raw errors; ``series_mae``/``series_rmse`` are the mean over series of each
    series' own MAE/RMSE (each series counted once). None depends on the number of lanes or
    the window length. The model's mode is restored after.

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
    per_series = None if masked_loss.is_classification else _SeriesErrors()
    metrics = lane_metric_sums(model, lanes, masked_loss, target, per_series=per_series).result()
    if per_series is not None:
        metrics |= per_series.result()
    return metrics


class _SeriesErrors:
    """Per-sequence sums of |error| and error² (raw units, averaged over the outputs) and of
    counted steps, indexed by ``window.seq``."""

    def __init__(self) -> None:
        self.absolute = np.zeros(0)
        self.squared = np.zeros(0)
        self.steps = np.zeros(0)

    def add(
        self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, seq: torch.Tensor
    ) -> None:
        """One window: ``pred``/``target`` ``[B, T, O]``; ``mask``, ``seq`` ``[B, T]``."""
        error = (pred - target).double()
        counted = mask.cpu().numpy().astype(bool)
        index = seq.cpu().numpy()[counted]
        if index.size == 0:
            return
        size = max(len(self.steps), int(index.max()) + 1)
        for name, values in (
            ("absolute", error.abs().mean(dim=2)),
            ("squared", error.square().mean(dim=2)),
        ):
            sums = np.bincount(index, weights=values.cpu().numpy()[counted], minlength=size)
            setattr(self, name, np.pad(getattr(self, name), (0, size - len(self.steps))) + sums)
        self.steps = np.pad(self.steps, (0, size - len(self.steps))) + np.bincount(
            index, minlength=size
        )

    def result(self) -> dict[str, float]:
        scored = self.steps > 0
        steps = self.steps[scored]
        return {
            "series_mae": float(np.mean(self.absolute[scored] / steps)),
            "series_rmse": float(np.mean(np.sqrt(self.squared[scored] / steps))),
        }


def lane_metrics(
    model: nn.Module,
    lanes: Lanes,
    loss: MaskedLoss,
    device: torch.device,
    cache: WindowCache | None = None,
) -> dict[str, float]:
    return lane_metric_sums(model, lanes, loss, device, cache=cache).result()


def lane_metric_sums(
    model: nn.Module,
    lanes: Lanes,
    loss: MaskedLoss,
    device: torch.device,
    rows: Any = None,
    *,
    per_series: _SeriesErrors | None = None,
    cache: WindowCache | None = None,
) -> MetricSums:
    """Metric sums over ``rows`` of ``lanes`` (None: all lanes); with ``per_series``, each
    sequence's errors are summed there too; with ``cache``, the windows are kept there for
    the next pass over the same lanes."""
    dtype = first_parameter(model).dtype
    batch_size = len(np.arange(lanes.num_lanes)[slice(None) if rows is None else rows])
    was_training = model.training
    model.eval()
    windows = (
        prepared_windows(lanes, rows, device, dtype)
        if cache is None
        else cache.windows(lanes, rows, device, dtype)
    )
    try:
        with torch.no_grad():
            state = initial_state(model, batch_size, device, dtype)
            sums = MetricSums(loss, device)
            for window in windows:
                forward = loss_forward(model, loss)
                pred, state = call_model(
                    forward, window.x, state, window.reset, window.model_mask, window.timeline
                )
                sums.add(pred, window.y, window.mask, window.counted)
                if per_series is not None and window.counted:
                    per_series.add(loss.point(pred), window.y, window.mask, window.seq)
            return sums
    finally:
        model.train(was_training)
