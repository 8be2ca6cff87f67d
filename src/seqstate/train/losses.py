"""Masked losses and metrics over lane windows.

Every quantity is a *sum over the steps whose target counts* (``window.loss_mask``), kept apart
from the count of those steps. Dividing the two sums at the end gives a mean that is exact
whatever the number of lanes, the window length, or how the steps fall into windows::

    loss = sum over (b, t) with mask[b, t] of  mean over outputs o of  l(pred[b, t, o], y[b, t, o])
           ---------------------------------------------------------------------------------
                                    number of (b, t) with mask[b, t]

Padding and unlabelled steps are excluded with ``torch.where`` (not a multiplication), so a
NaN the model emits on a step that does not count cannot leak into the sum.

``nll`` is the loss of a model with a distribution head: ``pred`` is then the head's raw
parameters ``[B, T, k * O]`` (``SequenceModel.distribution_parameters``), the per-element loss
is the model's ``distribution_loss`` (the negative log likelihood in the normalised space; the
pinball loss averaged over the levels for a quantile head), and the raw-unit metrics (mae,
rmse) read the distribution's median (``point``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import torch
import torch.nn.functional as functional
from torch import nn

__all__ = ["LOSSES", "LossName", "MaskedLoss", "MetricSums", "loss_forward"]

LossName = Literal["mse", "mae", "huber", "cross_entropy", "nll"]
LOSSES: tuple[str, ...] = ("mse", "mae", "huber", "cross_entropy", "nll")

Normalize = Callable[[torch.Tensor], torch.Tensor]
HeadLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _identity(y: torch.Tensor) -> torch.Tensor:
    return y


@dataclass(frozen=True)
class MaskedLoss:
    """A loss summed over the steps where ``mask`` is true.

    Args:
        name: mse | mae | huber | cross_entropy.
        huber_delta: where the huber loss turns from quadratic to linear (normalised units).
        normalize: maps raw regression targets/outputs into the space the loss is computed in
            (``SequenceModel.normalize_targets``); identity for other modules.
        head_loss: for ``nll``: raw parameters [B, T, k * O], raw targets [B, T, O] -> the
            per-element loss [B, T, O] (``SequenceModel.distribution_loss``).
        point: for ``nll``: raw parameters -> the point outputs [B, T, O] in raw units (the
            median), which the raw-unit metrics read.
    """

    name: LossName
    huber_delta: float = 1.0
    normalize: Normalize = field(default=_identity, compare=False)
    head_loss: HeadLoss | None = field(default=None, compare=False)
    point: Normalize = field(default=_identity, compare=False)

    def __post_init__(self) -> None:
        if self.name == "nll" and self.head_loss is None:
            raise ValueError(
                "the nll loss needs a model with a distribution head (ModelConfig.distribution); "
                "this model has none: pick mse, mae or huber, or build it with a distribution"
            )

    @property
    def reads_parameters(self) -> bool:
        """The loss reads the model's raw distribution parameters, not its outputs."""
        return self.name == "nll"

    @property
    def is_classification(self) -> bool:
        return self.name == "cross_entropy"

    def per_step(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``pred`` [B, T, O] (logits [B, T, C] for cross_entropy), ``target`` [B, T, O]
        (int64 class indices [B, T, 1]) -> loss per step [B, T]."""
        if self.name == "cross_entropy":
            B, T, C = pred.shape
            flat = functional.cross_entropy(
                pred.reshape(B * T, C), target.reshape(B * T), reduction="none"
            )
            return flat.view(B, T)
        if self.head_loss is not None:
            return self.head_loss(pred, target).mean(dim=2)  # (B, T)
        pred, target = self.normalize(pred), self.normalize(target)
        if self.name == "mse":
            elementwise = functional.mse_loss(pred, target, reduction="none")
        elif self.name == "mae":
            elementwise = functional.l1_loss(pred, target, reduction="none")
        else:
            elementwise = functional.huber_loss(
                pred, target, reduction="none", delta=self.huber_delta
            )
        if elementwise.shape[2] == 1:  # the mean of one output is that output, exactly
            return elementwise[..., 0]  # (B, T), one kernel less forward and backward
        return elementwise.mean(dim=2)  # (B, T)

    def sum(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Scalar: the per-step loss summed over the steps where ``mask`` [B, T] is true."""
        if self.is_classification:
            # Steps that do not count may hold any label (per-sequence labels repeat at every
            # step); class 0 there keeps cross_entropy's index check from seeing them.
            target = target.masked_fill(~mask[..., None], 0)
        per_step = self.per_step(pred, target)
        return torch.where(mask, per_step, 0.0).sum()


@dataclass
class MetricSums:
    """Running sums for :func:`seqstate.train.evaluate`; all on one device, float64, no syncs
    until :meth:`result`."""

    loss: MaskedLoss
    device: torch.device
    totals: dict[str, torch.Tensor] = field(default_factory=dict)
    steps: int = 0

    def add(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, steps: int) -> None:
        """Accumulate one window: ``pred``/``target`` [B, T, O], ``mask`` [B, T] (``steps`` =
        its number of true entries, counted on the CPU)."""
        if steps == 0:
            return
        self.steps += steps
        sums = {"loss": self.loss.sum(pred, target, mask).double()}
        zero = pred.new_zeros(())
        if self.loss.is_classification:
            correct = (pred.argmax(dim=2) == target[..., 0]).to(pred.dtype)
            sums["accuracy"] = torch.where(mask, correct, zero).sum().double()
        else:
            error = (self.loss.point(pred) - target).double()  # raw units
            sums["mae"] = torch.where(mask, error.abs().mean(dim=2), zero.double()).sum()
            sums["mse"] = torch.where(mask, error.square().mean(dim=2), zero.double()).sum()
        for name, value in sums.items():
            self.totals[name] = self.totals[name] + value if name in self.totals else value

    def result(self) -> dict[str, float]:
        """Means over all counted steps: loss, and mae/rmse (raw units) or accuracy."""
        if self.steps == 0:
            raise ValueError(
                "no step has a target to evaluate (every mask is False); the lanes hold no "
                "targets, or every sequence is a single step with 'next' targets."
            )
        means = {name: float(total) / self.steps for name, total in self.totals.items()}
        if "mse" in means:
            means["rmse"] = means.pop("mse") ** 0.5
        return means


def loss_forward(model: nn.Module, loss: MaskedLoss) -> Callable[..., tuple[torch.Tensor, Any]]:
    """What the loss reads: ``model`` itself, or for a distribution loss its
    ``distribution_parameters`` (the raw parameters, not the medians)."""
    if loss.reads_parameters:
        return cast("Callable[..., tuple[torch.Tensor, Any]]", model.distribution_parameters)
    return model
