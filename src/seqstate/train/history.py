"""What fit reports: the per-epoch History and the WindowEnd passed to the on_window hook."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from seqstate.core.state import State


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
