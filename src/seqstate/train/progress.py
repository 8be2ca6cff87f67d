"""Training progress that suits where it goes, and schedules for per-epoch bookkeeping.

Progress modes::

    "bar"    a tqdm bar per epoch (loss, steps/s): for a terminal
    "lines"  one line per epoch, when it ends: for log files (no carriage returns)
    "none"   nothing
    "auto"   "bar" when the stream is a terminal, else "lines"  (True means "auto")

A :class:`Every` schedule says when something costly (drawing ``loss.png``, writing a
checkpoint) is due at the end of an epoch: every N epochs, at most every S seconds, or both
(whichever comes first); the last epoch is always due, so the files are complete at the end.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, TextIO

__all__ = ["PROGRESS_MODES", "EpochProgress", "Every", "progress_mode"]

ProgressMode = Literal["auto", "bar", "lines", "none"]
PROGRESS_MODES = ("auto", "bar", "lines", "none")


def progress_mode(progress: Any, stream: TextIO | None = None) -> Literal["bar", "lines", "none"]:
    """Resolve ``progress`` (True/False or a mode name) for ``stream`` (default stderr)."""
    if progress is True:
        progress = "auto"
    elif progress is False or progress is None:
        progress = "none"
    if progress not in PROGRESS_MODES:
        raise ValueError(
            f"progress must be True, False or one of {list(PROGRESS_MODES)}; received {progress!r}"
        )
    if progress == "auto":
        stream = sys.stderr if stream is None else stream
        isatty = getattr(stream, "isatty", None)
        return "bar" if callable(isatty) and isatty() else "lines"
    return progress


class _NoBar:
    def update(self, count: int = 1) -> None:
        pass

    def set_postfix(self, values: Mapping[str, str], refresh: bool = False) -> None:
        pass

    def close(self) -> None:
        pass


class EpochProgress:
    """Reports training progress in one of the modes; see the module doc.

    ``bar(...)`` gives a per-epoch object with ``update``/``set_postfix``/``close`` (a real
    tqdm bar, or a no-op), ``epoch_done(record)`` prints the epoch's line in "lines" mode.
    """

    def __init__(self, progress: Any, epochs: int, stream: TextIO | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.mode = progress_mode(progress, self.stream)
        self.epochs = epochs
        self._bar: Any = None  # the open bar of the current epoch ("bar" mode)

    @property
    def live(self) -> bool:
        """True when a bar refreshes during the epoch (worth a device sync for its loss)."""
        return self.mode == "bar"

    def bar(self, epoch: int, num_windows: int, cursor: int) -> Any:
        """The epoch's bar (epochs numbered from 1, as everywhere people read them). It stays
        open after the last window so :meth:`epoch_done` can show the epoch's loss and
        validation loss on it; the caller closes it only when the epoch fails."""
        if self.mode != "bar":
            return _NoBar()
        from tqdm import tqdm

        self._bar = tqdm(
            total=num_windows,
            initial=cursor,
            desc=f"epoch {epoch + 1}/{self.epochs}",
            unit="window",
            dynamic_ncols=True,
            file=self.stream,
        )
        return self._bar

    def epoch_done(self, record: Mapping[str, Any], note: str = "") -> None:
        """The end of an epoch: "lines" prints its line; "bar" shows its loss and validation
        loss on the bar and closes it (each epoch's bar stays on the terminal)."""
        if self.mode == "bar":
            bar, self._bar = self._bar, None
            if bar is not None:
                bar.set_postfix(epoch_stats(record), refresh=False)
                bar.close()
            return
        if self.mode != "lines":
            return
        self.stream.write(epoch_line(record, self.epochs, note) + "\n")
        self.stream.flush()


def epoch_stats(record: Mapping[str, Any]) -> dict[str, str]:
    """``{"loss": "0.1234", "val_loss": "0.2345", "steps/s": "12,345"}`` of an epoch's record."""
    stats = {
        key: f"{value:.4g}"
        for key, value in record.items()
        if key in ("loss", "val_loss") and isinstance(value, float)
    }
    if isinstance(record.get("steps_per_s"), float):
        stats["steps/s"] = f"{record['steps_per_s']:,.0f}"
    return stats


def epoch_line(record: Mapping[str, Any], epochs: int, note: str = "") -> str:
    """``epoch 3/200  loss 0.1234  val_loss 0.2345  12,345 steps/s  0.52 s`` (+ note)."""
    parts = [f"epoch {int(record['epoch']) + 1}/{epochs}"]
    for key, value in record.items():
        if (key == "loss" or key.startswith("val_")) and isinstance(value, float):
            parts.append(f"{key} {value:.4g}")
    if isinstance(record.get("steps_per_s"), float):
        parts.append(f"{record['steps_per_s']:,.0f} steps/s")
    if isinstance(record.get("seconds"), float):
        parts.append(f"{record['seconds']:.2f} s")
    if note:
        parts.append(note)
    return "  ".join(parts)


# --------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Every:
    """When a per-epoch job is due: every ``epochs`` epochs and/or every ``seconds`` of wall
    clock (whichever first); the last epoch always. ``Every()`` (neither) means only the end.

    Written in config and on the command line as ``"5"`` (epochs), ``"30s"`` (seconds),
    ``"5,30s"`` (both), ``"end"`` (only the last epoch) or ``"1"`` (every epoch).
    """

    epochs: int | None = None
    seconds: float | None = None

    def __post_init__(self) -> None:
        if self.epochs is not None and (
            isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1
        ):
            wrong_type = isinstance(self.epochs, bool) or not isinstance(self.epochs, int)
            raise (TypeError if wrong_type else ValueError)(
                f"Every.epochs must be an int >= 1 or None; received {self.epochs!r}"
            )
        if self.seconds is not None and (
            isinstance(self.seconds, bool)
            or not isinstance(self.seconds, int | float)
            or not math.isfinite(self.seconds)
            or self.seconds <= 0
        ):
            wrong_type = isinstance(self.seconds, bool) or not isinstance(self.seconds, int | float)
            raise (TypeError if wrong_type else ValueError)(
                f"Every.seconds must be a number > 0 or None; received {self.seconds!r}"
            )

    @classmethod
    def parse(cls, text: Any, name: str = "schedule") -> Every:
        """``"5"``, ``"30s"``, ``"5,30s"``, ``"end"``; an int is a number of epochs."""
        if isinstance(text, Every):
            return text
        if isinstance(text, int) and not isinstance(text, bool):
            return cls(epochs=text) if text >= 1 else cls._bad(text, name)
        if not isinstance(text, str):
            raise TypeError(
                f"{name} must be a schedule like '5' (epochs), '30s' (seconds), '5,30s' or "
                f"'end'; received {type(text).__name__}"
            )
        if text.strip().lower() == "end":
            return cls()
        epochs: int | None = None
        seconds: float | None = None
        for part in text.replace(" ", "").lower().split(","):
            match = re.fullmatch(r"(\d+(?:\.\d+)?)(s|min)?", part)
            if match is None or (match.group(2) is None and "." in match.group(1)):
                return cls._bad(text, name)
            number = float(match.group(1))
            if match.group(2) is None and epochs is None:
                epochs = int(number)
            elif match.group(2) is not None and seconds is None:
                seconds = number * (60.0 if match.group(2) == "min" else 1.0)
            else:
                return cls._bad(text, name)
        try:
            return cls(epochs=epochs, seconds=seconds)
        except ValueError:
            return cls._bad(text, name)

    @staticmethod
    def _bad(text: Any, name: str) -> Every:
        raise ValueError(
            f"{name} must be a schedule like '5' (every 5 epochs), '30s' (at most every 30 "
            f"seconds), '5,30s' (whichever first) or 'end'; received {text!r}"
        )

    def text(self) -> str:
        parts = []
        if self.epochs is not None:
            parts.append(str(self.epochs))
        if self.seconds is not None:
            parts.append(f"{self.seconds:g}s")
        return ",".join(parts) or "end"


class Due:
    """Tracks one :class:`Every` through a run: ``check(epoch, last)`` is True when the job
    should run after ``epoch`` (0-based); ``last`` marks the final epoch."""

    def __init__(self, every: Every, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self.clock = clock
        self.since = clock()

    def check(self, epoch: int, last: bool) -> bool:
        every, now = self.every, self.clock()
        due = (
            last
            or (every.epochs is not None and (epoch + 1) % every.epochs == 0)
            or (every.seconds is not None and now - self.since >= every.seconds)
        )
        if due:
            self.since = now
        return due
