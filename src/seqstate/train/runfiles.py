"""The files fit writes into a run directory besides the model and the checkpoint."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path
from typing import Any

from seqstate._io import atomic_path, write_text_atomic
from seqstate.train.history import History

CHECKPOINT_DIR = "checkpoint"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


def write_metrics(run_dir: Path, history: History) -> None:
    # Rewritten whole (atomically) each epoch: after a resume it holds exactly the checkpoint's
    # epochs, never a duplicate line from an epoch that was interrupted and replayed.
    # Epochs are numbered from 1 wherever people read them (the log, the bar, summaries, the
    # plot): "epoch" here is that number, "epoch_index" the 0-based History.records index.
    run_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(
        json.dumps(metrics_line(record), sort_keys=True) + "\n" for record in history.records
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
                json.dumps(metrics_line(record), sort_keys=True) + "\n"
                for record in records[self.written :]
            )
            with open(self.path, "a", encoding="utf-8") as file:
                file.write(text)
        self.written = len(records)


def metrics_line(record: dict[str, Any]) -> dict[str, Any]:
    """One line of metrics.jsonl: the History record with ``epoch`` numbered from 1 and the
    0-based index as ``epoch_index``."""
    return {**record, "epoch": int(record["epoch"]) + 1, "epoch_index": int(record["epoch"])}


def write_plot(run_dir: Path, history: History) -> None:
    """Draw ``loss.png``: the training loss (and the validation loss, with a dotted line at
    the best epoch) against the epoch, numbered from 1."""
    try:  # Pillow comes with the plot extra (seqstate[plot], through matplotlib)
        from PIL import Image  # noqa: F401
    except ImportError:
        return
    image = render_plot(plot_layout(history))
    with atomic_path(run_dir / PLOT_FILE) as tmp:
        # (zlib level 1: a few ms less than the default 6 for a slightly larger file)
        image.save(tmp, format="PNG", compress_level=1)


# The plot is drawn with Pillow rather than matplotlib: importing matplotlib and building its
# first figure took about a second in every training process (its artists write their
# docstrings as their classes are created, then its fonts load), for a plot that takes a few
# milliseconds to draw. It looks like the figure it replaces: 600 x 400 px, fixed margins.
_WIDTH, _HEIGHT = 600, 400
_SCALE = 2  # drawn at twice the size, then reduced: smooth lines without antialiasing support
_LEFT, _RIGHT, _TOP, _BOTTOM = 90, 582, 28, 348  # the axes' box, in output pixels
_COLORS = {"train loss": (31, 119, 180), "validation loss": (255, 127, 14)}
_GREY = (128, 128, 128)


@dataclasses.dataclass(frozen=True)
class PlotLayout:
    """What the loss plot shows, before any pixel: ``curves`` as (label, epochs from 1,
    losses), ``best`` the epoch the dotted line marks (None: no line), the axes' ranges and
    their ticks."""

    curves: tuple[tuple[str, tuple[int, ...], tuple[float, ...]], ...]
    best: int | None
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    x_ticks: tuple[float, ...]
    y_ticks: tuple[float, ...]


def plot_layout(history: History) -> PlotLayout:
    """The :class:`PlotLayout` of ``history``'s losses. Only a validation loss picks a best
    epoch; a run without one (a refit on every row) trains for a fixed number of epochs and
    keeps the last, so it draws no line."""
    epochs = tuple(int(epoch) + 1 for epoch in history["epoch"])  # numbered from 1, as printed
    names = [("train loss", "loss")]
    validation = "val_loss" in history
    if validation:
        names.append(("validation loss", "val_loss"))
    curves = tuple(
        (label, epochs, tuple(float(value) for value in history[key])) for label, key in names
    )
    best = None
    if validation and history.best_epoch is not None:
        best = int(history.best_epoch) + 1
    values = [v for _, _, losses in curves for v in losses if math.isfinite(v)]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if high - low <= 1e-12 * max(abs(high), 1.0):
        low, high = low - max(abs(low), 1.0) * 0.05, high + max(abs(high), 1.0) * 0.05
    first, last = (min(epochs), max(epochs)) if epochs else (1, 1)
    if best is not None:
        first, last = min(first, best), max(last, best)
    x_low, x_high = (first - 0.5, last + 0.5) if first == last else (first, last)
    x_pad, y_pad = 0.05 * (x_high - x_low), 0.05 * (high - low)  # matplotlib's margins
    x_range, y_range = (x_low - x_pad, x_high + x_pad), (low - y_pad, high + y_pad)
    x_ticks = tuple(t for t in _ticks(*x_range, integer=True) if x_range[0] <= t <= x_range[1])
    y_ticks = tuple(t for t in _ticks(*y_range) if y_range[0] <= t <= y_range[1])
    return PlotLayout(curves, best, x_range, y_range, x_ticks, y_ticks)


def _ticks(low: float, high: float, *, integer: bool = False, count: int = 6) -> list[float]:
    """At most about ``count`` round values (1, 2, 2.5 or 5 times a power of ten) in
    [low, high]; whole numbers when ``integer``."""
    raw = (high - low) / count
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    if integer:
        step = max(1.0, float(math.ceil(step)))
    start = math.ceil(low / step)
    return [round((start + k) * step, 12) for k in range(int((high - low) / step) + 2)]


def render_plot(layout: PlotLayout) -> Any:
    """The PIL image of ``layout``."""
    from PIL import Image, ImageDraw

    scale = _SCALE
    image = Image.new("RGB", (_WIDTH * scale, _HEIGHT * scale), "white")
    draw = ImageDraw.Draw(image)
    font = _font(10 * scale)
    (x0, x1), (y0, y1) = layout.x_range, layout.y_range

    def point(epoch: float, value: float) -> tuple[float, float]:
        x = _LEFT + (epoch - x0) / (x1 - x0) * (_RIGHT - _LEFT)
        y = _BOTTOM - (value - y0) / (y1 - y0) * (_BOTTOM - _TOP)
        return x * scale, y * scale

    left, right, top, bottom = (v * scale for v in (_LEFT, _RIGHT, _TOP, _BOTTOM))
    tick = 4 * scale
    for value in layout.x_ticks:
        x, _ = point(value, y0)
        draw.line([(x, bottom), (x, bottom + tick)], fill="black", width=scale)
        draw.text((x, bottom + tick + scale), f"{value:g}", fill="black", font=font, anchor="mt")
    for value in layout.y_ticks:
        _, y = point(x0, value)
        draw.line([(left - tick, y), (left, y)], fill="black", width=scale)
        draw.text(
            (left - tick - 2 * scale, y), f"{value:.4g}", fill="black", font=font, anchor="rm"
        )
    center = (left + right) / 2
    draw.text((center, bottom + 20 * scale), "epoch", fill="black", font=font, anchor="mt")
    middle = (top + bottom) / 2
    label = _text_image("loss", font)
    image.paste(label.rotate(90, expand=True), (int(30 * scale), int(middle - label.width / 2)))
    if layout.best is not None:  # a dotted line at the best epoch
        x, _ = point(layout.best, y0)
        y = top
        while y < bottom:
            draw.line([(x, y), (x, min(y + 2 * scale, bottom))], fill=_GREY, width=scale)
            y += 5 * scale
    radius = 3 * scale
    for name, epochs, losses in layout.curves:
        color = _COLORS[name]
        points = [point(e, v) for e, v in zip(epochs, losses, strict=True) if math.isfinite(v)]
        if len(points) > 1:
            draw.line(points, fill=color, width=int(1.5 * scale), joint="curve")
        for x, y in points:
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=color)
    draw.rectangle([left, top, right, bottom], outline="black", width=scale)
    entries = [(name, _COLORS[name]) for name, _, _ in layout.curves]
    if layout.best is not None:
        entries.append(("best epoch", _GREY))
    _legend(draw, entries, font, right - 8 * scale, top + 8 * scale, scale)
    return image.resize((_WIDTH, _HEIGHT), Image.Resampling.LANCZOS)


def _legend(
    draw: Any, entries: list[tuple[str, Any]], font: Any, right: float, top: float, scale: int
) -> None:
    """A framed legend whose top-right corner is at (right, top)."""
    row = 16 * scale
    sample = 24 * scale
    width = max(draw.textlength(name, font=font) for name, _ in entries) + sample + 18 * scale
    box = [right - width, top, right, top + row * len(entries) + 6 * scale]
    draw.rectangle(box, fill="white", outline=(204, 204, 204), width=scale)
    for k, (name, color) in enumerate(entries):
        y = top + 3 * scale + row * k + row / 2
        x = box[0] + 6 * scale
        draw.line([(x, y), (x + sample, y)], fill=color, width=int(1.5 * scale))
        draw.text((x + sample + 6 * scale, y), name, fill="black", font=font, anchor="lm")


def _text_image(text: str, font: Any) -> Any:
    from PIL import Image, ImageDraw

    left, top, right, bottom = font.getbbox(text)
    image = Image.new("RGB", (int(right - left) + 2, int(bottom - top) + 2), "white")
    ImageDraw.Draw(image).text((-left + 1, -top + 1), text, fill="black", font=font)
    return image


@functools.cache
def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow's own scalable font (FreeType)
    except (TypeError, ImportError, OSError):  # an old Pillow, or one without FreeType
        return ImageFont.load_default()
