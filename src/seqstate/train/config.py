"""FitConfig: how to train, as one frozen dataclass with a one-line comment per field."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

import torch

from seqstate._validate import check_int, check_number
from seqstate.train.losses import LOSSES, LossName
from seqstate.train.progress import PROGRESS_MODES, Every, progress_mode

OptimizerName = Literal["adam", "adamw", "sgd"]
ScheduleName = Literal["constant", "cosine", "step", "plateau"]

_OPTIMIZERS = ("adam", "adamw", "sgd")
_SCHEDULES = ("constant", "cosine", "step", "plateau")


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
    progress: bool | str = True  # True/"auto": a bar on a terminal, a line per epoch in a log;
    # "bar" | "lines" | "none" (False)
    checkpoint_every: int | None = None  # with run_dir: checkpoint every N windows too
    plot_every: str = "30s"  # with run_dir: redraw loss.png every N epochs ("5"), at most every
    # S seconds of training ("30s"), "5,30s" (whichever first) or "end"; always at the end
    epoch_checkpoints: str = "30s"  # with run_dir: epoch-end checkpoints, same schedule syntax

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
        if self.momentum >= 1.0:
            raise ValueError(
                f"FitConfig.momentum must be in [0, 1) (at 1 or more SGD's velocity never "
                f"decays); received {self.momentum!r}"
            )
        if self.min_lr > self.lr:
            raise ValueError(
                f"FitConfig.min_lr ({self.min_lr!r}) is above lr ({self.lr!r}): the floor of "
                "the schedule must be at most the starting rate; lower min_lr"
            )
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
        if not isinstance(self.restore_best, bool):
            raise TypeError(
                f"FitConfig.restore_best must be True or False; received {self.restore_best!r}"
            )
        if not isinstance(self.progress, bool | str):
            raise TypeError(
                f"FitConfig.progress must be True, False or one of {list(PROGRESS_MODES)}; "
                f"received {self.progress!r}"
            )
        progress_mode(self.progress, _NO_STREAM)  # a bad mode name raises ValueError here
        for name in ("plot_every", "epoch_checkpoints"):
            Every.parse(getattr(self, name), f"FitConfig.{name}")
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
        if not isinstance(text, str | bytes):
            raise TypeError(f"text must be a JSON string; received {type(text).__name__}")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"FitConfig JSON could not be read: {error}") from None
        if not isinstance(data, dict):
            raise ValueError(
                f"FitConfig JSON must be an object of fields; received {type(data).__name__}"
            )
        return cls.from_dict(data)


class _NoStream:
    """Resolves "auto" without looking at a real stream (validation only)."""

    def isatty(self) -> bool:
        return False


_NO_STREAM: Any = _NoStream()


def _check_int(value: Any, name: str, minimum: int, hint: str = "") -> int:
    return check_int(value, f"FitConfig.{name}", minimum, hint)


def _check_float(value: Any, name: str, *, minimum: float, strict: bool = False) -> None:
    check_number(value, f"FitConfig.{name}", minimum=minimum, strict=strict)
