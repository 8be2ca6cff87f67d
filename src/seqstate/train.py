"""fit and evaluate: truncated backpropagation through time over lanes, with exact resume.

One epoch is the plain loop below; everything else (checkpoints, validation, early stopping,
the progress bar) happens between windows or between epochs::

    state = model.initial_state(B)                      # fresh at every epoch
    for window in train.windows(epoch):                 # (B, T, ...) windows, lane-continuous
        y, state = model(window.x, state, reset=window.reset, mask=window.valid)
        loss = masked mean of loss(y, window.y) over window.mask
        loss.backward(); clip_grad_norm_; optimizer.step()
        state = state.detach()                          # the TBPTT cut: T = the lane window

Validation runs on its own lanes, from its own zero state, in eval mode under ``no_grad``;
it never sees the training state and draws no random numbers, so a run with validation ends
with the same weights as a run without it.

With ``run_dir`` fit writes::

    run_dir/
      model.json, model.safetensors   final weights (the best epoch's with early stopping)
      metrics.jsonl                   one JSON record per epoch (History.records)
      loss.png                        loss curves (when matplotlib is installed)
      checkpoint/                     everything exact resume needs, see seqstate.runstate
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from seqstate.lanes import Lanes, Window
from seqstate.losses import LOSSES, LossName, MaskedLoss, MetricSums
from seqstate.runstate import Snapshot, capture_rng, load_snapshot, restore_rng, save_snapshot
from seqstate.state import State

__all__ = ["FitConfig", "History", "WindowEnd", "evaluate", "fit"]

OptimizerName = Literal["adam", "adamw", "sgd"]
ScheduleName = Literal["constant", "cosine", "step", "plateau"]

_OPTIMIZERS = ("adam", "adamw", "sgd")
_SCHEDULES = ("constant", "cosine", "step", "plateau")
CHECKPOINT_DIR = "checkpoint"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"
# Fields that may change between an interrupted run and its resume without breaking exactness.
_RESUME_FREE = ("epochs", "progress", "checkpoint_every", "device")
# The progress bar's loss needs a device sync; refresh it at most this often (seconds).
_PROGRESS_REFRESH = 0.5


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """How to train. Every field has a default; ``fit(..., epochs=5)`` overrides one."""

    epochs: int = 10  # passes over the training lanes
    loss: LossName | None = None  # mse | mae | huber | cross_entropy; None: from model task
    huber_delta: float = 1.0  # huber: quadratic below, linear above (normalised units)
    optimizer: OptimizerName = "adam"  # adam | adamw | sgd
    lr: float = 1e-3  # initial learning rate
    weight_decay: float = 0.0  # L2 penalty (adam, sgd) or decoupled decay (adamw)
    momentum: float = 0.9  # sgd only
    schedule: ScheduleName = "constant"  # lr per epoch: constant | cosine | step | plateau
    lr_factor: float = 0.1  # step / plateau: multiply the lr by this at each drop
    lr_step: int = 10  # step: epochs between drops
    lr_patience: int = 2  # plateau: epochs without improvement before a drop
    min_lr: float = 0.0  # cosine / plateau: the lr never goes below this
    clip_grad_norm: float | None = 1.0  # clip the global gradient norm per window; None: off
    patience: int | None = None  # early stopping after this many epochs without improvement
    min_delta: float = 0.0  # an improvement of the monitored loss must exceed this
    restore_best: bool = True  # with patience: end with the best epoch's weights
    seed: int | None = 0  # seed torch, numpy, random at start (bitwise on CPU); None: don't
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    progress: bool = True  # tqdm bar with loss and steps/s
    checkpoint_every: int | None = None  # with run_dir: checkpoint every N windows too

    def __post_init__(self) -> None:
        _check_int(self.epochs, "epochs", 1, "Train for at least one epoch.")
        if self.loss is not None and self.loss not in LOSSES:
            raise ValueError(
                f"FitConfig.loss must be one of {list(LOSSES)} or None (chosen from the model's "
                f"task); received {self.loss!r}"
            )
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(
                f"FitConfig.optimizer must be one of {list(_OPTIMIZERS)}; received "
                f"{self.optimizer!r}"
            )
        if self.schedule not in _SCHEDULES:
            raise ValueError(
                f"FitConfig.schedule must be one of {list(_SCHEDULES)}; received {self.schedule!r}"
            )
        _check_float(self.lr, "lr", minimum=0.0, strict=True)
        _check_float(self.huber_delta, "huber_delta", minimum=0.0, strict=True)
        _check_float(self.weight_decay, "weight_decay", minimum=0.0)
        _check_float(self.momentum, "momentum", minimum=0.0)
        _check_float(self.min_lr, "min_lr", minimum=0.0)
        _check_float(self.min_delta, "min_delta", minimum=0.0)
        _check_float(self.lr_factor, "lr_factor", minimum=0.0, strict=True)
        if self.lr_factor >= 1.0:
            raise ValueError(
                f"FitConfig.lr_factor must be in (0, 1): the lr drops by this factor; received "
                f"{self.lr_factor!r}"
            )
        _check_int(self.lr_step, "lr_step", 1)
        _check_int(self.lr_patience, "lr_patience", 0)
        if self.clip_grad_norm is not None:
            _check_float(self.clip_grad_norm, "clip_grad_norm", minimum=0.0, strict=True)
        if self.patience is not None:
            _check_int(self.patience, "patience", 1, "Use None to turn early stopping off.")
        if self.seed is not None:
            _check_int(self.seed, "seed", 0, "Use None to leave the random generators alone.")
        if self.checkpoint_every is not None:
            _check_int(self.checkpoint_every, "checkpoint_every", 1, "It counts windows.")
        for name in ("restore_best", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(
                    f"FitConfig.{name} must be True or False; received {getattr(self, name)!r}"
                )
        if not isinstance(self.device, str):
            raise TypeError(
                f"FitConfig.device must be a string such as 'auto', 'cpu' or 'cuda:0'; received "
                f"{type(self.device).__name__} {self.device!r}"
            )
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError:
                raise ValueError(
                    f"FitConfig.device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; received "
                    f"{self.device!r}"
                ) from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FitConfig:
        if not isinstance(data, dict):
            raise TypeError(f"fit config must be a JSON object; received {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown fit config keys {unknown}; known keys: {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FitConfig:
        return cls.from_dict(json.loads(text))


def _check_int(value: Any, name: str, minimum: int, hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(
            f"FitConfig.{name} must be an int >= {minimum}; received "
            f"{type(value).__name__} {value!r}. {hint}".rstrip()
        )
    if value < minimum:
        raise ValueError(
            f"FitConfig.{name} must be an int >= {minimum}; received {value}. {hint}".rstrip()
        )
    return int(value)


def _check_float(value: Any, name: str, *, minimum: float, strict: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"FitConfig.{name} must be a number; received {type(value).__name__} {value!r}"
        )
    low_ok = value > minimum if strict else value >= minimum
    if not math.isfinite(value) or not low_ok:
        bound = ">" if strict else ">="
        raise ValueError(
            f"FitConfig.{name} must be a finite number {bound} {minimum}; received {value!r}"
        )


# --------------------------------------------------------------------------------------------
# History and hooks
# --------------------------------------------------------------------------------------------


class History:
    """Per-epoch records of a :func:`fit` run.

    ``history.records`` is a list of dicts (``epoch`` counted from 0, ``loss``, ``val_loss`` and
    the other validation metrics with a ``val_`` prefix, ``lr``, ``steps_per_s`` — real
    timesteps per second — and ``seconds``); ``history["loss"]`` is one column as a list.
    ``best_epoch`` is the epoch with the lowest monitored loss (``val_loss`` with validation,
    else ``loss``); ``stopped_early`` tells whether early stopping ended the run.
    """

    def __init__(
        self,
        records: list[dict[str, Any]] | None = None,
        *,
        monitor: str = "loss",
        best_epoch: int | None = None,
        stopped_early: bool = False,
    ) -> None:
        self.records: list[dict[str, Any]] = list(records or [])
        self.monitor = monitor
        self.best_epoch = best_epoch
        self.stopped_early = stopped_early

    def __getitem__(self, key: str) -> list[Any]:
        if not self.records or key not in self.records[0]:
            known = sorted(self.records[0]) if self.records else []
            raise KeyError(f"history has no column {key!r}; columns: {known}")
        return [record[key] for record in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __contains__(self, key: object) -> bool:
        return bool(self.records) and key in self.records[0]

    def keys(self) -> list[str]:
        return list(self.records[0]) if self.records else []

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "monitor": self.monitor,
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        return cls(
            data["records"],
            monitor=data["monitor"],
            best_epoch=data["best_epoch"],
            stopped_early=data["stopped_early"],
        )

    def __repr__(self) -> str:
        last = self.records[-1] if self.records else {}
        shown = ", ".join(f"{k}={v:.4g}" for k, v in last.items() if k.endswith("loss"))
        return (
            f"History(epochs={len(self)}, {shown or 'empty'}, best_epoch={self.best_epoch}, "
            f"stopped_early={self.stopped_early})"
        )


@dataclasses.dataclass(frozen=True)
class WindowEnd:
    """What the ``on_window`` hook of :func:`fit` receives after each optimiser step."""

    epoch: int  # counted from 0
    window: int  # index of the window just trained, in this epoch
    num_windows: int  # windows in this epoch
    loss: torch.Tensor | None  # this window's masked mean loss (detached); None: no target
    state: State  # the carried training state (detached) that the next window starts from


WindowHook = Callable[[WindowEnd], None]
EpochHook = Callable[[dict[str, Any]], None]


# --------------------------------------------------------------------------------------------
# How this process shares the work (the seam for distributed training)
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Replica:
    """One process training all lanes. A distributed driver gives each rank its lanes
    (``rows``, passed to ``Lanes.windows``), sums target counts and gradients across ranks,
    and lets one rank write files; the loss is then each rank's sum over the *global* count,
    so summed gradients equal one process with all lanes."""

    rows: Any = None  # this rank's lanes; None: all
    is_main: bool = True  # writes run_dir files
    rank: int = 0  # offsets the seed, so ranks draw different dropout masks

    def start(self, model: nn.Module) -> None:
        return None  # distributed: every rank starts from rank 0's weights

    def total_count(self, count: int) -> int:
        return count

    def reduce_gradients(self, model: nn.Module) -> None:
        return None

    def reduce_epoch(self, sums: _EpochSums) -> _EpochSums:
        return sums  # distributed: the sums over all ranks' lanes

    def evaluate(
        self, model: nn.Module, lanes: Lanes, loss: MaskedLoss, device: torch.device
    ) -> dict[str, float]:
        return _evaluate(model, lanes, loss, device)

    def gather_checkpoint(
        self, state: State | None, sums: _EpochSums | None, rng: Any
    ) -> tuple[State | None, _EpochSums | None, Any]:
        """What the main rank saves (called on every rank: distributed, it is collective)."""
        return state, sums, rng

    def restore_checkpoint(
        self, state: State | None, sums: _EpochSums | None, rng: Any
    ) -> tuple[State | None, _EpochSums | None]:
        """This rank's share of a saved state and sums; restores the random generators."""
        restore_rng(*rng)
        return state, sums


def _replica_for(
    train: Lanes, validation: Lanes | None, device: torch.device, agreement: dict[str, Any]
) -> _Replica:
    """One process, or this rank's share when ``torch.distributed`` is initialised
    (``seqstate.distributed.init_from_env`` / ``torchrun``)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        from seqstate.distributed import rank_replica

        return rank_replica(train, validation, device, agreement)
    return _Replica()


def _agreement(
    config: FitConfig, signature: dict[str, Any], run: Path | None, snapshot: Snapshot | None
) -> dict[str, Any]:
    """What every rank of a distributed run must have been given alike."""
    return {
        "config": {k: v for k, v in config.to_dict().items() if k not in ("progress", "device")},
        "model": signature["model"],
        "train": signature["train"],
        "validation": signature["validation"],
        "loss": signature["loss"],
        "run_dir": run is not None,
        "resume": None if snapshot is None else [snapshot.info["epoch"], snapshot.info["cursor"]],
    }


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


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
        model: a :class:`~seqstate.SequenceModel`, or any ``nn.Module`` with
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
    if not isinstance(model, nn.Module) or not callable(getattr(model, "initial_state", None)):
        raise TypeError(
            "model must be an nn.Module with forward(x, state, reset, mask) -> (y, state) and "
            f"initial_state(batch_size), e.g. seqstate.SequenceModel; received "
            f"{type(model).__name__}"
        )
    _check_lanes(train, "train")
    if validation is not None:
        _check_lanes(validation, "validation")
    run, source = _resolve_dirs(run_dir, resume)
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

    loss = _resolve_loss(config, model, train)
    _check_compatible(model, train, loss, "train")
    if validation is not None:
        _check_compatible(model, validation, loss, "validation")
    device = _resolve_device(config.device)
    probe = model.initial_state(1)
    if run is not None and not isinstance(probe, State):
        raise TypeError(
            "checkpoints need the model's state to be a seqstate State (LSTMState, GRUState, "
            f"...); initial_state returned {type(probe).__name__}. Return a State, or train "
            "without run_dir."
        )
    signature = {
        "model": _model_signature(model),
        "train": _lanes_signature(train),
        "validation": None if validation is None else _lanes_signature(validation),
        "loss": loss.name,
    }
    if snapshot is not None:
        _check_resume(snapshot, config, signature, source)  # type: ignore[arg-type]

    trainer = _Trainer(
        model=model,
        train=train,
        validation=validation,
        config=config,
        loss=loss,
        device=device,
        run=run,
        signature=signature,
        replica=_replica_for(
            train, validation, device, _agreement(config, signature, run, snapshot)
        ),
        on_window=on_window,
        on_epoch=on_epoch,
    )
    return trainer.run(snapshot)


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
    a mean over exactly the steps whose target counts (``window.mask``): the numbers do not
    depend on the number of lanes or the window length. The model's mode is restored after.

    Args:
        loss: mse | mae | huber | cross_entropy; None: from the model's task (or the targets).
        device: where to run; None: where the model's parameters are (the model is not moved).
    """
    if not isinstance(model, nn.Module) or not callable(getattr(model, "initial_state", None)):
        raise TypeError(
            "model must be an nn.Module with forward(x, state, reset, mask) and "
            f"initial_state(batch_size); received {type(model).__name__}"
        )
    _check_lanes(lanes, "lanes")
    if loss is not None and loss not in LOSSES:
        raise ValueError(f"loss must be one of {list(LOSSES)} or None; received {loss!r}")
    config = FitConfig(loss=loss, huber_delta=huber_delta)
    masked_loss = _resolve_loss(config, model, lanes)
    _check_compatible(model, lanes, masked_loss, "lanes")
    parameter = _first_parameter(model)
    target = torch.device(device) if device is not None else parameter.device
    if target != parameter.device:
        raise ValueError(
            f"device={str(target)!r} but the model's parameters are on {parameter.device}; "
            "move the model first (model.to(device)) or leave device=None"
        )
    return _evaluate(model, lanes, masked_loss, target)


# --------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _EpochSums:
    """Running totals of the current epoch (checkpointed, so a resumed epoch reports the same
    loss as an uninterrupted one)."""

    loss: torch.Tensor  # float64 sum of per-step losses over counted steps
    counted: int = 0  # steps whose target counted
    real: int = 0  # non-padding steps consumed (for steps/s)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "loss": float(self.loss),
            "counted": self.counted,
            "real": self.real,
            "seconds": self.seconds,
        }


class _Trainer:
    """The state of one fit call; ``run`` is the loop over epochs and windows."""

    def __init__(
        self,
        *,
        model: nn.Module,
        train: Lanes,
        validation: Lanes | None,
        config: FitConfig,
        loss: MaskedLoss,
        device: torch.device,
        run: Path | None,
        signature: dict[str, Any],
        replica: _Replica,
        on_window: WindowHook | None,
        on_epoch: EpochHook | None,
    ) -> None:
        self.model = model.to(device)
        self.train_lanes = train
        self.validation = validation
        self.config = config
        self.loss = loss
        self.device = device
        self.run_dir = run if replica.is_main else None
        self.writes_checkpoints = run is not None  # on every rank: checkpoints are collective
        self.show_progress = config.progress and replica.is_main
        self.signature = signature
        self.replica = replica
        self.on_window = on_window
        self.on_epoch = on_epoch
        self.dtype = _first_parameter(model).dtype
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = _make_optimizer(config, self.parameters)
        self.scheduler = _make_scheduler(config, self.optimizer)
        self.monitor = "val_loss" if validation is not None else "loss"
        self.history = History(monitor=self.monitor)
        self.best_loss: float | None = None
        self.bad_epochs = 0
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.windows_done = 0
        replica.start(self.model)
        rows = slice(None) if replica.rows is None else replica.rows
        self.batch_size = len(np.arange(train.num_lanes)[rows])

    # --- run --------------------------------------------------------------------------------

    def run(self, snapshot: Snapshot | None) -> History:
        epoch, cursor, state, sums = 0, 0, None, None
        if snapshot is None:
            if self.config.seed is not None:
                _seed_everything(self.config.seed + self.replica.rank)
        else:
            epoch, cursor, state, sums = self._restore(snapshot)
        while epoch < self.config.epochs and not self.history.stopped_early:
            self._train_epoch(epoch, cursor, state, sums)
            epoch, cursor, state, sums = epoch + 1, 0, None, None

        if self.config.patience is not None and self.config.restore_best and self.best_weights:
            self.model.load_state_dict(self.best_weights)
        self.model.eval()
        if self.run_dir is not None:
            self._save_final_model()
        return self.history

    def _train_epoch(
        self, epoch: int, cursor: int, state: State | None, sums: _EpochSums | None
    ) -> None:
        config, model, lanes = self.config, self.model, self.train_lanes
        num_windows = lanes.num_windows(epoch)
        if state is None:
            state = _initial_state(model, self.batch_size, self.device, self.dtype)
        if sums is None:
            sums = _EpochSums(loss=torch.zeros((), dtype=torch.float64, device=self.device))
        bar = _progress_bar(config, epoch, num_windows, cursor, self.show_progress)
        last_refresh = time.perf_counter()
        model.train()
        windows = lanes.windows(epoch, start=cursor, rows=self.replica.rows)
        try:
            for index, window in enumerate(windows, start=cursor):
                started = time.perf_counter()
                window_loss, state, real, counted = self._train_window(window, state)
                sums.real += real
                if window_loss is not None:
                    sums.counted += counted
                    sums.loss += window_loss.double() * counted
                sums.seconds += time.perf_counter() - started
                self.windows_done += 1
                every = config.checkpoint_every
                if every is not None and self.windows_done % every == 0:
                    self._checkpoint(epoch, index + 1, state, sums)
                if self.on_window is not None:
                    self.on_window(WindowEnd(epoch, index, num_windows, window_loss, state))
                bar.update(1)
                if self.show_progress and time.perf_counter() - last_refresh > _PROGRESS_REFRESH:
                    last_refresh = time.perf_counter()
                    bar.set_postfix(_bar_stats(sums), refresh=False)
        finally:
            bar.close()
        self._end_epoch(epoch, sums)

    def _train_window(
        self, window: Window, state: State
    ) -> tuple[torch.Tensor | None, State, int, int]:
        """One TBPTT step. Returns (this window's mean loss, detached; None when no target
        counts), the detached state, the real steps and the counted steps."""
        B, T, _ = window.x.shape
        valid = window.valid  # (B, T) real input
        real = int(valid.sum())
        counted = int(window.mask.sum())
        if self.loss.is_classification and counted:
            self._check_labels(window)
        # Computed on the CPU, so the layers need no device sync to detect "no padding".
        model_mask = None if real == B * T else valid
        x, y, mask, reset, model_mask = _to_device(window, model_mask, self.device, self.dtype)
        total = self.replica.total_count(counted)
        with torch.set_grad_enabled(total > 0):
            pred, state = self.model(x, state, reset=reset, mask=model_mask)
        window_loss = None
        if total > 0:
            window_loss = self.loss.sum(pred, y, mask) / total
            self.optimizer.zero_grad(set_to_none=True)
            window_loss.backward()
            self.replica.reduce_gradients(self.model)
            if self.config.clip_grad_norm is not None:
                nn.utils.clip_grad_norm_(self.parameters, self.config.clip_grad_norm)
            self.optimizer.step()
            window_loss = window_loss.detach() * (total / counted) if counted else None
        return window_loss, _detach(state), real, counted

    def _check_labels(self, window: Window) -> None:
        labels = window.y[..., 0][window.mask]
        classes = getattr(self.model, "output_size", None)
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or (isinstance(classes, int) and high >= classes):
            raise ValueError(
                f"class labels must be in [0, {classes}) for a model with output_size={classes} "
                f"classes; received labels from {low} to {high}. Encode classes as 0..C-1."
            )

    def _end_epoch(self, epoch: int, sums: _EpochSums) -> None:
        config = self.config
        sums = self.replica.reduce_epoch(sums)
        if sums.counted == 0:
            raise ValueError(
                f"epoch {epoch} had no step with a target (every window.mask is False); the "
                "training lanes need targets that count"
            )
        train_loss = float(sums.loss) / sums.counted
        if not math.isfinite(train_loss):
            raise FloatingPointError(
                f"training loss became {train_loss} in epoch {epoch}; lower lr, keep "
                "clip_grad_norm on, or normalise the data (model.set_normalization)"
            )
        record: dict[str, Any] = {"epoch": epoch, "loss": train_loss}
        if self.validation is not None:
            metrics = self.replica.evaluate(self.model, self.validation, self.loss, self.device)
            record.update({f"val_{name}": value for name, value in metrics.items()})
        record["lr"] = float(self.optimizer.param_groups[0]["lr"])
        record["steps_per_s"] = sums.real / sums.seconds if sums.seconds > 0 else 0.0
        record["seconds"] = sums.seconds

        monitored = record[self.monitor]
        if self.scheduler is not None:
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step(monitored)
            else:
                self.scheduler.step()
        if self.best_loss is None or monitored < self.best_loss - config.min_delta:
            self.best_loss, self.bad_epochs = monitored, 0
            self.history.best_epoch = epoch
            if config.patience is not None and config.restore_best:
                self.best_weights = {
                    k: v.detach().clone() for k, v in self.model.state_dict().items()
                }
        else:
            self.bad_epochs += 1
        if config.patience is not None and self.bad_epochs >= config.patience:
            self.history.stopped_early = True
        self.history.records.append(record)

        if self.run_dir is not None:
            _write_metrics(self.run_dir, self.history)
            _write_plot(self.run_dir, self.history)
        self._checkpoint(epoch + 1, 0, None, None)
        if self.on_epoch is not None:
            self.on_epoch(dict(record))

    # --- checkpoints ------------------------------------------------------------------------

    def _checkpoint(
        self, epoch: int, cursor: int, state: State | None, sums: _EpochSums | None
    ) -> None:
        if not self.writes_checkpoints:
            return
        state, sums, rng = self.replica.gather_checkpoint(state, sums, capture_rng())
        if self.run_dir is None:
            return  # another rank writes
        info = {
            "config": self.config.to_dict(),
            "signature": self.signature,
            "epoch": epoch,
            "cursor": cursor,
            "windows_done": self.windows_done,
            "epoch_sums": None if sums is None else sums.to_dict(),
            "history": self.history.to_dict(),
            "best_loss": self.best_loss,
            "bad_epochs": self.bad_epochs,
        }
        snapshot = Snapshot(
            info=info,
            weights=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=None if self.scheduler is None else self.scheduler.state_dict(),
            best_weights=self.best_weights,
            carried_state=None if state is None else state.to_bytes(),
            rng=rng,
        )
        save_snapshot(self.run_dir / CHECKPOINT_DIR, f"e{epoch:05d}-w{cursor:07d}", snapshot)

    def _restore(self, snapshot: Snapshot) -> tuple[int, int, State | None, _EpochSums | None]:
        info = snapshot.info
        self.model.load_state_dict(snapshot.weights)
        self.optimizer.load_state_dict(snapshot.optimizer)
        if self.scheduler is not None and snapshot.scheduler is not None:
            self.scheduler.load_state_dict(snapshot.scheduler)
        self.history = History.from_dict(info["history"])
        self.best_loss = info["best_loss"]
        self.bad_epochs = info["bad_epochs"]
        self.windows_done = info["windows_done"]
        if snapshot.best_weights is not None:
            self.best_weights = {k: v.to(self.device) for k, v in snapshot.best_weights.items()}
        state = None
        if snapshot.carried_state is not None:
            state = State.from_bytes(snapshot.carried_state, device=self.device)
        sums = None
        if info["epoch_sums"] is not None:
            saved = info["epoch_sums"]
            sums = _EpochSums(
                loss=torch.tensor(saved["loss"], dtype=torch.float64, device=self.device),
                counted=saved["counted"],
                real=saved["real"],
                seconds=saved["seconds"],
            )
        state, sums = self.replica.restore_checkpoint(state, sums, snapshot.rng)
        return info["epoch"], info["cursor"], state, sums

    def _save_final_model(self) -> None:
        from seqstate.checkpoint import save_model
        from seqstate.model import SequenceModel

        if not isinstance(self.model, SequenceModel):
            return  # a custom module's weights live in checkpoint/; it has no config to save
        metadata = {
            "fit": self.config.to_dict(),
            "loss": self.loss.name,
            "best_epoch": self.history.best_epoch,
            "stopped_early": self.history.stopped_early,
            "epochs_trained": len(self.history),
        }
        save_model(self.model, self.run_dir, metadata=metadata)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def _evaluate(
    model: nn.Module, lanes: Lanes, loss: MaskedLoss, device: torch.device
) -> dict[str, float]:
    return _evaluate_sums(model, lanes, loss, device).result()


def _evaluate_sums(
    model: nn.Module, lanes: Lanes, loss: MaskedLoss, device: torch.device, rows: Any = None
) -> MetricSums:
    """Metric sums over ``rows`` of ``lanes`` (None: all lanes)."""
    dtype = _first_parameter(model).dtype
    batch_size = len(np.arange(lanes.num_lanes)[slice(None) if rows is None else rows])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            state = _initial_state(model, batch_size, device, dtype)
            sums = MetricSums(loss, device)
            for window in lanes.windows(0, rows=rows):
                valid = window.valid
                counted = int(window.mask.sum())
                model_mask = None if bool(valid.all()) else valid
                x, y, mask, reset, model_mask = _to_device(window, model_mask, device, dtype)
                pred, state = model(x, state, reset=reset, mask=model_mask)
                sums.add(pred, y, mask, counted)
            return sums
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _to_device(
    window: Window, model_mask: torch.Tensor | None, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    x, y, mask, reset = window.x, window.y, window.mask, window.reset
    if x.dtype != dtype:
        x = x.to(dtype)
        y = y.to(dtype) if y.is_floating_point() else y
    if device.type != "cpu":
        x, y, mask, reset = (t.to(device, non_blocking=True) for t in (x, y, mask, reset))
        if model_mask is not None:
            model_mask = model_mask.to(device, non_blocking=True)
    return x, y, mask, reset, model_mask


def _initial_state(model: nn.Module, batch_size: int, device: torch.device, dtype: Any) -> Any:
    state = model.initial_state(batch_size)
    if isinstance(state, State) and (state.device != device or state.dtype != dtype):
        state = state.to(device, dtype)
    return state


def _detach(state: Any) -> Any:
    if isinstance(state, State | torch.Tensor):
        return state.detach()
    if isinstance(state, tuple | list):
        return type(state)(_detach(s) for s in state)
    return state


def _first_parameter(model: nn.Module) -> torch.Tensor:
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return parameter
    raise ValueError(f"model {type(model).__name__} has no floating-point parameters to train")


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)  # CPU and every CUDA device
    np.random.seed(seed)
    random.seed(seed)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={name!r} but CUDA is not available on this machine; use device='cpu' or 'auto'"
        )
    return device


def _resolve_dirs(
    run_dir: str | os.PathLike[str] | None, resume: bool | str | os.PathLike[str] | None
) -> tuple[Path | None, Path | None]:
    """(directory to write, directory whose checkpoint to resume from or None)."""
    run = Path(run_dir) if run_dir is not None else None
    if resume is None or resume is False:
        return run, None
    if resume is True:
        if run is None:
            raise ValueError(
                "resume=True needs run_dir=... (the directory of the interrupted run); or pass "
                "that directory as resume=path"
            )
        return run, run
    if isinstance(resume, str | os.PathLike):
        source = Path(resume)
        return (run if run is not None else source), source
    raise TypeError(
        f"resume must be True, False, None or a run directory path; received "
        f"{type(resume).__name__} {resume!r}"
    )


def _check_lanes(lanes: Any, name: str) -> None:
    if not isinstance(lanes, Lanes):
        raise TypeError(
            f"{name} must be seqstate.Lanes (Lanes.from_series / Lanes.from_sequences); "
            f"received {type(lanes).__name__}"
        )


def _resolve_loss(config: FitConfig, model: nn.Module, lanes: Lanes) -> MaskedLoss:
    name = config.loss
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
        return MaskedLoss(name, config.huber_delta)  # type: ignore[arg-type]
    return MaskedLoss(name, config.huber_delta, normalize)  # type: ignore[arg-type]


def _check_compatible(model: nn.Module, lanes: Lanes, loss: MaskedLoss, name: str) -> None:
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


def _make_optimizer(config: FitConfig, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
    if not parameters:
        raise ValueError("the model has no trainable parameters (all requires_grad=False)")
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def _make_scheduler(config: FitConfig, optimizer: torch.optim.Optimizer) -> Any:
    """An lr scheduler stepped once per epoch, or None for a constant lr."""
    schedules = torch.optim.lr_scheduler
    if config.schedule == "cosine":
        return schedules.CosineAnnealingLR(optimizer, T_max=config.epochs, eta_min=config.min_lr)
    if config.schedule == "step":
        return schedules.StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_factor)
    if config.schedule == "plateau":
        return schedules.ReduceLROnPlateau(
            optimizer, factor=config.lr_factor, patience=config.lr_patience, min_lr=config.min_lr
        )
    return None


def _model_signature(model: nn.Module) -> dict[str, Any]:
    model_config = getattr(model, "config", None)
    to_dict = getattr(model_config, "to_dict", None)
    return {
        "class": type(model).__name__,
        "config": to_dict() if callable(to_dict) else None,
        "parameters": {name: list(p.shape) for name, p in model.named_parameters()},
    }


def _lanes_signature(lanes: Lanes) -> dict[str, Any]:
    lengths = np.ascontiguousarray(lanes.lengths, dtype=np.int64)
    return {
        "lanes": lanes.num_lanes,
        "window": lanes.window,
        "features": lanes.num_features,
        "outputs": lanes.num_outputs,
        "targets": lanes.target_kind,
        "sequences": lanes.num_sequences,
        "steps": int(lengths.sum()),
        "lengths_sha1": hashlib.sha1(lengths.tobytes()).hexdigest(),
        "shuffle": lanes.shuffle,
        "seed": lanes.seed,
        "windows": len(lanes),
    }


def _check_resume(
    snapshot: Snapshot, config: FitConfig, signature: dict[str, Any], source: Path
) -> None:
    """Refuse a checkpoint that this call could not continue exactly."""
    info = snapshot.info
    where = str(source / CHECKPOINT_DIR)
    saved_signature = info["signature"]
    for part, what in (
        ("model", "model (class, config or parameter shapes)"),
        ("train", "training lane layout (lanes, window, windows, sequences, targets, shuffle)"),
        ("validation", "validation lane layout"),
        ("loss", "loss"),
    ):
        if saved_signature[part] != signature[part]:
            raise ValueError(
                f"cannot resume from {where}: the {what} differs from the checkpoint's; "
                f"checkpoint {_differences(saved_signature[part], signature[part])}. Resume "
                "with the same model, data and lanes, or start a new run_dir."
            )
    saved = FitConfig.from_dict(info["config"])
    changed = [
        f.name
        for f in dataclasses.fields(FitConfig)
        if f.name not in _RESUME_FREE and getattr(saved, f.name) != getattr(config, f.name)
    ]
    if config.schedule == "cosine" and saved.epochs != config.epochs:
        changed.append("epochs (the cosine schedule spans them)")
    if changed:
        pairs = ", ".join(
            f"{name}: {getattr(saved, name.split()[0])!r} -> {getattr(config, name.split()[0])!r}"
            for name in changed
        )
        raise ValueError(
            f"cannot resume from {where} exactly: FitConfig fields changed ({pairs}). Only "
            f"{list(_RESUME_FREE)} may change on resume; pass config=None to reuse the saved one."
        )
    needed = info["epoch"] + (1 if info["cursor"] > 0 else 0)
    if config.epochs < needed:
        raise ValueError(
            f"cannot resume from {where}: it stopped at epoch {info['epoch']}, window "
            f"{info['cursor']}, past epochs={config.epochs}; give epochs >= {needed}"
        )


def _differences(saved: Any, given: Any) -> str:
    if isinstance(saved, dict) and isinstance(given, dict):
        keys = [k for k in sorted(set(saved) | set(given)) if saved.get(k) != given.get(k)]
        return ", ".join(f"{k}={saved.get(k)!r} but received {given.get(k)!r}" for k in keys)
    return f"{saved!r} but received {given!r}"


def _progress_bar(
    config: FitConfig, epoch: int, num_windows: int, cursor: int, show: bool = True
) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=num_windows,
        initial=cursor,
        desc=f"epoch {epoch + 1}/{config.epochs}",
        unit="window",
        disable=not show,
        dynamic_ncols=True,
    )


def _bar_stats(sums: _EpochSums) -> dict[str, str]:
    stats = {}
    if sums.counted:
        stats["loss"] = f"{float(sums.loss) / sums.counted:.4g}"  # one device sync
    if sums.seconds > 0:
        stats["steps/s"] = f"{sums.real / sums.seconds:,.0f}"
    return stats


def _write_metrics(run_dir: Path, history: History) -> None:
    # Rewritten whole (atomically) each epoch: after a resume it holds exactly the checkpoint's
    # epochs, never a duplicate line from an epoch that was interrupted and replayed.
    run_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(record, sort_keys=True) + "\n" for record in history.records)
    tmp = run_dir / (METRICS_FILE + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, run_dir / METRICS_FILE)


def _write_plot(run_dir: Path, history: History) -> None:
    try:  # matplotlib is an optional extra (seqstate[plot]); without it, no plot
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return
    # A bare Figure on the Agg canvas: no pyplot, so no global backend switch for the caller.
    figure = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    epochs = history["epoch"]
    axes.plot(epochs, history["loss"], marker="o", label="train loss")
    if "val_loss" in history:
        axes.plot(epochs, history["val_loss"], marker="o", label="validation loss")
    if history.best_epoch is not None:
        axes.axvline(history.best_epoch, color="grey", linestyle=":", label="best epoch")
    axes.set_xlabel("epoch")
    axes.set_ylabel("loss")
    axes.legend()
    figure.tight_layout()
    tmp = run_dir / (PLOT_FILE + ".tmp")
    figure.savefig(tmp, format="png")
    os.replace(tmp, run_dir / PLOT_FILE)
