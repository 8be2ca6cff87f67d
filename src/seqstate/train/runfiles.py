"""The files fit writes into a run directory besides the model and the checkpoint."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from seqstate._io import atomic_path, write_text_atomic
from seqstate.train.history import History

CHECKPOINT_DIR = "checkpoint"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


def write_metrics(run_dir: Path, history: History) -> None:
    # Written whole (atomically; MetricsFile then appends): after a resume it holds exactly the
    # checkpoint's epochs, never a duplicate line from an epoch that was interrupted and replayed.
    # Epochs are numbered from 1 wherever people read them (the log, the bar, summaries, the
    # plot): "epoch" here is that number, "epoch_index" the 0-based History.records index.
    run_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(
        json.dumps(metrics_line(record), sort_keys=True, allow_nan=False) + "\n"
        for record in history.records
    )
    write_text_atomic(run_dir / METRICS_FILE, text)


class MetricsFile:
    """metrics.jsonl kept in step with one fit's History, epoch by epoch.

    The first write rewrites the file whole (atomically, :func:`write_metrics`): after a
    resume it may hold epochs past the checkpoint. Later writes append the new epochs' lines
    in one ``write`` on a file opened for appending, instead of a rewrite and a rename per
    epoch (a rename cost more than validating a small data set). The file then reads exactly
    as :func:`write_metrics` would write it.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / METRICS_FILE
        self.written: int | None = None  # records in the file, once this object wrote it

    def write(self, history: History) -> None:
        records = history.records
        if self.written is None or self.written > len(records) or not self.path.is_file():
            write_metrics(self.path.parent, history)
        elif self.written < len(records):
            text = "".join(
                json.dumps(metrics_line(record), sort_keys=True, allow_nan=False) + "\n"
                for record in records[self.written :]
            )
            with open(self.path, "a", encoding="utf-8") as file:
                file.write(text)
        self.written = len(records)


def metrics_line(record: dict[str, Any]) -> dict[str, Any]:
    """One line of metrics.jsonl: the History record with ``epoch`` numbered from 1, the
    0-based index as ``epoch_index``, and a non-finite number (a loss that diverged) as
    ``null``: strict JSON readers (``jq``, JavaScript, pandas) refuse ``NaN``/``Infinity``."""
    line = {key: _json_number(value) for key, value in record.items()}
    return {**line, "epoch": int(record["epoch"]) + 1, "epoch_index": int(record["epoch"])}


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_plot(run_dir: Path, history: History) -> None:
    try:  # matplotlib is an optional extra (seqstate[plot]); without it, no plot
        import matplotlib  # noqa: F401
    except ImportError:
        return
    validation = "val_loss" in history
    with _FIGURES_LOCK:
        figure = _FIGURES.get(validation)
        if figure is None:
            figure = _FIGURES[validation] = _LossFigure(validation)
        figure.draw(run_dir / PLOT_FILE, history)


class _LossFigure:
    """The loss plot's figure, kept between draws: building the figure, its axes and their
    ticks costs about as much as drawing it (measured: 37 ms for a fresh figure against 22 ms
    redrawn, matplotlib Agg), and the plot is drawn at the end of every fit."""

    def __init__(self, validation: bool) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        # A bare Figure on the Agg canvas: no pyplot, so no global backend switch for the
        # caller.
        self.figure = Figure(figsize=(6, 4), dpi=100)
        FigureCanvasAgg(self.figure)
        self.axes = axes = self.figure.add_subplot()
        (self.train,) = axes.plot([], [], marker="o", label="train loss")
        self.validation = (
            axes.plot([], [], marker="o", label="validation loss")[0] if validation else None
        )
        axes.set_xlabel("epoch")
        axes.set_ylabel("loss")
        # Whole epochs, a handful of loss ticks and fixed margins (room for 7-character tick
        # labels): tight_layout and the default locators' extra ticks cost more than the rest.
        axes.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
        axes.yaxis.set_major_locator(MaxNLocator(nbins=6))
        self.figure.subplots_adjust(left=0.15, right=0.97, bottom=0.13, top=0.93)

    def draw(self, path: Path, history: History) -> None:
        axes = self.axes
        epochs = [int(epoch) + 1 for epoch in history["epoch"]]  # numbered from 1, as printed
        self.train.set_data(epochs, history["loss"])
        best = None
        if self.validation is not None:
            self.validation.set_data(epochs, history["val_loss"])
            # Only a validation loss picks a best epoch; a run without one (a refit on every
            # row) trains for a fixed number of epochs and keeps the last.
            if history.best_epoch is not None:
                best = axes.axvline(
                    history.best_epoch + 1, color="grey", linestyle=":", label="best epoch"
                )
        axes.relim()
        axes.autoscale_view()
        legend = axes.legend()
        try:
            with atomic_path(path) as tmp:
                # (zlib level 1: a few ms less than the default 6 for a slightly larger file)
                self.figure.savefig(tmp, format="png", pil_kwargs={"compress_level": 1})
        finally:
            legend.remove()
            if best is not None:
                best.remove()


class BackgroundWriter:
    """Runs one file-writing job at a time off the training thread.

    Drawing ``loss.png`` is Python and PNG encoding (about 30 ms); the training loop hands it
    here and goes on (the checkpoint's fsyncs, the next epoch), so the two overlap. A new job
    first waits for the previous one, so files are written in order and at most one job is in
    flight; :meth:`wait` joins the job in flight and raises its error, if any. The caller
    passes a job everything it reads (a copy of the History), never state it goes on changing.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, job: Callable[..., object], *args: Any) -> None:
        self.wait()
        self._thread = threading.Thread(
            target=self._run, args=(job, *args), name="seqstate-run-files", daemon=True
        )
        self._thread.start()

    def _run(self, job: Callable[..., object], *args: Any) -> None:
        try:
            job(*args)
        except BaseException as error:  # raised in the training thread by wait()
            self._error = error

    def wait(self, *, raise_error: bool = True) -> None:
        """Join the job in flight; raise its error (``raise_error=False``: drop it, when the
        caller is already handling another)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        error, self._error = self._error, None
        if error is not None and raise_error:
            raise error


def history_copy(history: History) -> History:
    """A copy a background job can read while training appends to ``history`` (records are
    never changed once appended)."""
    return History(
        list(history.records),
        monitor=history.monitor,
        best_epoch=history.best_epoch,
        stopped_early=history.stopped_early,
    )


# validation or not -> its figure (one process draws one plot at a time: fits in threads
# share these under the lock)
_FIGURES: dict[bool, _LossFigure] = {}
_FIGURES_LOCK = threading.Lock()
