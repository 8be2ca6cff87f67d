"""Pre-flight checks: everything fit and evaluate refuse before the first window."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from seqstate._validate import check_device
from seqstate.lanes.lanes import Lanes
from seqstate.train.config import FitConfig
from seqstate.train.losses import MaskedLoss

if TYPE_CHECKING:
    from seqstate.core.model import SequenceModel


def resolve_device(name: str) -> torch.device:
    """FitConfig.device as the torch.device training runs on (:func:`check_device`'s rule)."""
    return cast(torch.device, check_device(name))


def check_lanes(lanes: Any, name: str) -> None:
    if not isinstance(lanes, Lanes):
        raise TypeError(
            f"{name} must be seqstate.Lanes (Lanes.from_series / Lanes.from_sequences); "
            f"received {type(lanes).__name__}"
        )


def resolve_loss(config: FitConfig, model: nn.Module, lanes: Lanes) -> MaskedLoss:
    name = config.loss
    head = getattr(getattr(model, "config", None), "distribution", None)
    if head is not None:
        if name not in (None, "nll"):
            raise ValueError(
                f"FitConfig.loss={name!r} does not fit a model with a {head.name} distribution "
                "head, which trains on its negative log likelihood: leave loss=None or 'nll'"
            )
        sequence_model = cast("SequenceModel", model)
        return MaskedLoss(
            "nll",
            config.huber_delta,
            sequence_model.normalize_targets,
            head_loss=sequence_model.distribution_loss,
            point=lambda raw: sequence_model.distribution(raw).median(),
        )
    if name is None:
        task = getattr(getattr(model, "config", None), "task", None)
        if task == "classification":
            name = "cross_entropy"
        elif task == "regression":
            name = "mse"
        else:
            name = "cross_entropy" if lanes.target_dtype == torch.int64 else "mse"
    normalize = getattr(model, "normalize_targets", None)
    if not callable(normalize):
        return MaskedLoss(name, config.huber_delta)
    return MaskedLoss(name, config.huber_delta, normalize)


def check_compatible(model: nn.Module, lanes: Lanes, loss: MaskedLoss, name: str) -> None:
    """Shapes and target types of ``lanes`` against the model and the loss, before training."""
    input_size = getattr(model, "input_size", None)
    if isinstance(input_size, int) and lanes.num_features != input_size:
        raise ValueError(
            f"{name} has {lanes.num_features} features per step but the model expects "
            f"input_size={input_size}; build the lanes from the same feature columns the "
            f"model was made for (or a model with input_size={lanes.num_features})"
        )
    if lanes.num_outputs == 0:
        raise ValueError(
            f"{name} has no targets (built with targets=None); fit and evaluate need targets: "
            "use targets='next', per-step targets or labels"
        )
    longest = int(lanes.lengths.max()) if lanes.num_sequences else 0
    if lanes.horizon and lanes.horizon >= longest:
        raise ValueError(
            f"{name} has horizon targets k={lanes.horizon} (y[t] = x[t + k]) but its longest "
            f"sequence has {longest} steps, so no step has a target; use k < {longest} or "
            "longer sequences"
        )
    task = getattr(getattr(model, "config", None), "task", None)
    output_size = getattr(model, "output_size", None)
    integer_targets = lanes.target_dtype == torch.int64
    if loss.is_classification:
        if not integer_targets:
            what = "a classification model" if task == "classification" else "loss cross_entropy"
            raise ValueError(
                f"{what} needs integer class labels but {name} holds float targets; build the "
                "lanes with integer labels, e.g. Lanes.from_sequences(seqs, labels=y.astype("
                "'int64'), ...)"
            )
        if lanes.num_outputs != 1:
            raise ValueError(
                f"cross_entropy needs one class index per step (O=1) but {name} has "
                f"{lanes.num_outputs} targets per step"
            )
    else:
        if integer_targets:
            raise ValueError(
                f"loss {loss.name!r} needs float targets but {name} holds integer targets "
                "(class labels?); for classification use a model with task='classification' "
                "(loss cross_entropy), for integer-valued regression targets convert them "
                "with .astype('float32')"
            )
        if isinstance(output_size, int) and lanes.num_outputs != output_size:
            raise ValueError(
                f"{name} has {lanes.num_outputs} targets per step but the model has "
                f"output_size={output_size}; they must match for a regression loss"
            )
    check_target_domain(model, lanes, loss, name)


def check_target_domain(model: nn.Module, lanes: Lanes, loss: MaskedLoss, name: str) -> None:
    """Targets the loss cannot score, refused before any weight changes (a window's check
    during training would find them after some optimiser steps): class labels outside
    ``[0, C)``, and negative targets for a negative binomial head."""
    config = getattr(model, "config", None)
    distribution = getattr(getattr(config, "distribution", None), "name", None)
    if not loss.is_classification and distribution != "negbin":
        return
    span = lanes.target_range()
    if span is None:
        return
    low, high = span
    if loss.is_classification:
        classes = getattr(model, "output_size", None)
        if low < 0 or (isinstance(classes, int) and high >= classes):
            raise ValueError(
                f"class labels must be in [0, {classes}) for a model with output_size={classes} "
                f"classes; {name} holds labels from {low:g} to {high:g}. Encode classes as "
                "0..C-1 (or build the model with output_size above the largest label)."
            )
    elif low < 0:
        raise ValueError(
            f"a negative binomial head (distribution='negbin') models counts >= 0, but {name} "
            f"holds targets down to {low:g}; use distribution='studentt' or 'normal' for "
            "values that can be negative, or shift the targets to be >= 0"
        )
