"""fit: the public entry point that checks its inputs, picks a replica and runs the loop."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, cast

import torch
from torch import nn

from seqstate.core.protocol import SequenceCore, check_core
from seqstate.core.state import State
from seqstate.lanes.lanes import Lanes
from seqstate.train.checks import check_compatible, check_lanes, resolve_device, resolve_loss
from seqstate.train.config import FitConfig
from seqstate.train.history import EpochHook, History, WindowHook
from seqstate.train.loop import Trainer
from seqstate.train.replica import Replica
from seqstate.train.resume import (
    agreement,
    check_resume,
    lanes_signature,
    model_signature,
    resolve_dirs,
)
from seqstate.train.runfiles import CHECKPOINT_DIR
from seqstate.train.snapshots import load_snapshot


def replica_for(
    train: Lanes, validation: Lanes | None, device: torch.device, agreement: dict[str, Any]
) -> Replica:
    """One process, or this rank's share when ``torch.distributed`` is initialised
    (``seqstate.train.distributed.init_from_env`` / ``torchrun``)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        from seqstate.train.distributed import rank_replica

        return rank_replica(train, validation, device, agreement)
    return Replica()


def fit(
    model: nn.Module,
    train: Lanes,
    *,
    validation: Lanes | None = None,
    config: FitConfig | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool | str | os.PathLike[str] | None = None,
    on_window: WindowHook | None = None,
    on_epoch: EpochHook | None = None,
    **overrides: Any,
) -> History:
    """Train ``model`` on ``train`` by truncated BPTT over its lanes; see the module docstring.

    Args:
        model: a :class:`~seqstate.SequenceModel`, or any ``nn.Module`` following
            :class:`~seqstate.SequenceCore`:
            ``forward(x [B, T, F], state, reset [B, T], mask [B, T]) -> (y [B, T, O], state)``
            and ``initial_state(batch_size) -> State``.
        train: training lanes with targets; ``train.windows(epoch)`` gives each epoch's windows.
        validation: lanes evaluated after every epoch (their own state, eval mode, no_grad).
        config: a :class:`FitConfig` (default ``FitConfig()``; on resume, the checkpoint's).
        run_dir: where to write the model, metrics, plot and checkpoints.
        resume: True to continue from ``run_dir/checkpoint``; a path to continue from that
            run directory's checkpoint (and write into it, unless ``run_dir`` is given).
        on_window: called after every window's optimiser step (and its checkpoint, if due)
            with a :class:`WindowEnd`. An exception raised there stops training.
        on_epoch: called with each epoch's record after it is checkpointed.
        **overrides: FitConfig fields, e.g. ``epochs=5, lr=3e-3``.

    Returns:
        The :class:`History`. The model ends in eval mode, on the training device.
    """
    check_core(model)
    for hook, hook_name, what in (
        (on_window, "on_window", "window"),
        (on_epoch, "on_epoch", "epoch"),
    ):
        if hook is not None and not callable(hook):
            raise TypeError(
                f"{hook_name} must be a function (called with each {what}'s record) or None; "
                f"received {type(hook).__name__} {hook!r}"
            )
    check_lanes(train, "train")
    if validation is not None:
        check_lanes(validation, "validation")
    run, source = resolve_dirs(run_dir, resume)
    snapshot = load_snapshot(source / CHECKPOINT_DIR) if source is not None else None

    if config is None:
        config = (
            FitConfig.from_dict(snapshot.info["config"]) if snapshot is not None else FitConfig()
        )
    elif not isinstance(config, FitConfig):
        raise TypeError(f"config must be a FitConfig; received {type(config).__name__}")
    if overrides:
        known = {f.name for f in dataclasses.fields(FitConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(
                f"fit() got unknown keyword arguments {unknown}; FitConfig fields are "
                f"{sorted(known)}"
            )
        config = dataclasses.replace(config, **overrides)

    if config.optimizer in ("adam", "adamw") and any(
        p.dtype == torch.float16 for p in model.parameters()
    ):
        # Adam's eps (1e-8) and squared gradients underflow in float16: the first step
        # divides by zero and every weight becomes NaN.
        raise ValueError(
            f"optimizer={config.optimizer!r} cannot train float16 weights (its running "
            "squares and eps underflow to 0 and the weights become NaN); train in float32 "
            "(model.float()) or bfloat16 and convert afterwards, or use optimizer='sgd'"
        )
    loss = resolve_loss(config, model, train)
    check_compatible(model, train, loss, "train")
    if validation is not None:
        check_compatible(model, validation, loss, "validation")
    device = resolve_device(config.device)
    probe = cast(SequenceCore, model).initial_state(1)
    if run is not None and not isinstance(probe, State):
        raise TypeError(
            "checkpoints need the model's state to be a seqstate State (LSTMState, GRUState, "
            f"...); initial_state returned {type(probe).__name__}. Return a State, or train "
            "without run_dir."
        )
    signature = {
        "model": model_signature(model),
        # (the data's digest where a checkpoint is written or read: it reads all the data)
        "train": lanes_signature(train, data=run is not None),
        "validation": None
        if validation is None
        else lanes_signature(validation, data=run is not None),
        "loss": loss.name,
    }
    if snapshot is not None and source is not None:  # a snapshot is read from a source
        check_resume(snapshot, config, signature, source)

    trainer = Trainer(
        model=model,
        train=train,
        validation=validation,
        config=config,
        loss=loss,
        device=device,
        run=run,
        signature=signature,
        replica=replica_for(train, validation, device, agreement(config, signature, run, snapshot)),
        on_window=on_window,
        on_epoch=on_epoch,
    )
    return trainer.run(snapshot)
