"""``seqstate doctor``: explain how a table will be laid out, and what looks wrong.

:func:`diagnose` reads the table with the same settings ``seqstate train`` would use, builds
the training lanes, and reports in plain words: the sequences and their lengths, the lanes and
windows, padding, how often a sequence starts inside a window, a memory estimate, and the
problems (training would fail) and warnings (training would run, but probably not as meant),
each with what to change.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = ["Report", "diagnose"]

_FEW_WINDOWS = 10
_MUCH_PADDING = 0.25


@dataclasses.dataclass
class Report:
    """What :func:`diagnose` found."""

    facts: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (topic, text)
    problems: list[str] = dataclasses.field(default_factory=list)  # training would fail
    warnings: list[str] = dataclasses.field(default_factory=list)  # it would run, but ...

    def text(self) -> str:
        lines = [f"  {topic:<9} {text}" for topic, text in self.facts]
        if self.problems:
            lines += ["", "Problems (training would fail):"]
            lines += [f"  - {problem}" for problem in self.problems]
        if self.warnings:
            lines += ["", "Warnings (training would run, but check these):"]
            lines += [f"  - {warning}" for warning in self.warnings]
        if self.problems:
            lines += ["", f"{len(self.problems)} problem(s) found."]
        elif self.warnings:
            lines += ["", f"No problems; {len(self.warnings)} warning(s)."]
        else:
            lines += ["", "Looks good: `seqstate train` with the same arguments will run."]
        return "\n".join(lines)


def _megabytes(count: float) -> str:
    size = count / 2**20
    return f"{size:.1f} MB" if size >= 0.1 else f"{count / 2**10:.0f} KB"


def _explain_preparation(report: Report, table: Any, settings: dict[str, dict[str, Any]]) -> None:
    """The [scaling] choices ``train`` will make (``auto``: from the data), each with its
    reason, the transforms worth trying, and the intra-op threads."""
    from seqstate.recipe.preparation import resolve
    from seqstate.recipe.threads import choose_threads

    try:
        preparation = resolve(table, settings["scaling"])
    except (ValueError, TypeError) as error:
        report.problems.append(f"{error}")
        return
    scaling = preparation.scaling
    chosen = (
        f"method {scaling.method}, transform {scaling.transform}, difference "
        f"{scaling.difference}, season {scaling.season}, calendar {list(preparation.calendar)}"
    )
    report.facts.append(("Scaling", chosen))
    for reason in preparation.reasons:
        report.facts.append(("  why", reason))
    for hint in preparation.hints:
        report.facts.append(("  try", hint))
    run, layout, model = settings["run"], settings["layout"], settings["model"]
    try:
        lanes, hidden = layout.get("lanes"), model.get("hidden_size")  # None: chosen later
        threads = choose_threads(
            run.get("threads", "auto"),
            lanes=lanes if isinstance(lanes, int) else 32,
            hidden_size=hidden if isinstance(hidden, int) else 64,
        )
    except ValueError as error:
        report.problems.append(f"{error}")
        return
    report.facts.append(
        (
            "Threads",
            f"{threads} intra-op thread(s) ({run.get('threads', 'auto')}: more threads only "
            "pay for large models on idle cores; oversubscribed cores slow training 10-50x)",
        )
    )


def _explain_distribution(report: Report, table: Any, model: dict[str, Any]) -> None:
    """The output head train would fit: a point model, or which distribution and why."""
    name = model.get("distribution", "none")
    if name in (None, "none") or table.columns.task != "regression":
        report.facts.append(("Output", "point forecasts (--distribution auto for intervals)"))
        return
    counts = all(bool(np.all(t >= 0) and np.all(t == np.round(t))) for t in table.targets if t.size)
    if name == "auto":
        text = (
            "a distribution head, auto: the targets are non-negative integers, so negbin if "
            "the run leaves them unscaled (--scaling none), else studentt"
            if counts
            else "a studentt distribution head (auto: the targets are not counts)"
        )
    else:
        text = f"a {name} distribution head"
    report.facts.append(("Output", text + "; forecasts are its medians"))


def diagnose(settings: dict[str, dict[str, Any]]) -> Report:
    """Report on a training setup given as settings (see ``recipe.training.SECTIONS``)."""
    from seqstate.recipe.sources import constant_columns
    from seqstate.recipe.training import (
        choose_defaults,
        lanes_for,
        read_training_table,
        refit_wanted,
        split_training_table,
    )

    report = Report()
    data, layout, model = settings["data"], settings["layout"], settings["model"]
    report.facts.append(("Data", str(data["path"])))
    try:
        table = read_training_table(settings)
    except (ValueError, TypeError, OSError) as error:
        report.problems.append(f"{error}")
        return report

    lengths = table.lengths
    report.facts.append(
        (
            "Sequences",
            f"{len(table)} series, {int(lengths.sum())} steps; length min {lengths.min()} / "
            f"median {np.median(lengths):g} / max {lengths.max()}"
            + ("" if table.columns.id else " (no id column: the table is one series)"),
        )
    )
    columns = table.columns
    _explain_distribution(report, table, model)
    ahead = "the same step (labelling)" if columns.shift == 0 else f"{columns.shift} step(s) ahead"
    report.facts.append(
        (
            "Columns",
            f"features {list(columns.features)} -> targets {list(columns.targets)} "
            f"({columns.task}), predicted {ahead}",
        )
    )

    _explain_preparation(report, table, settings)

    try:
        train, validation, split_by = split_training_table(table, settings)
    except (ValueError, TypeError) as error:
        report.problems.append(f"{error}")
        return report
    if validation is None:
        report.facts.append(("Split", "none: no validation (--split none)"))
    else:
        report.facts.append(
            (
                "Split",
                f"by {split_by}: {len(train)} series / {int(train.lengths.sum())} steps train, "
                f"{len(validation)} series / {int(validation.lengths.sum())} steps validation"
                + (
                    " (the last part of every series, scored after warming up on the series' "
                    "history)"
                    if split_by == "time"
                    else ""
                )
                + "; normalisation is fitted on train only",
            )
        )
    try:
        defaults = choose_defaults(train, settings)
    except (ValueError, TypeError) as error:
        report.problems.append(f"{error}")
        return report
    for choice in defaults:
        report.facts.append(("Default" if not choice.given else "Setting", choice.line()))
    if validation is not None:
        refit = refit_wanted(settings, split_by)
        report.facts.append(
            (
                "Refit",
                "after early stopping, a fresh model trains on every row for the best epoch "
                "count (--no-refit to keep the early-stopped one)"
                if refit
                else "none: the early-stopped model is kept",
            )
        )
    calendar = _calendar(table)
    if calendar:
        report.facts.append(("Calendar", calendar))

    try:
        lanes, _ = lanes_for(train, None, settings)
    except (ValueError, TypeError) as error:
        report.problems.append(f"{error}")
        return report

    B, T = lanes.num_lanes, lanes.window
    windows = len(lanes)
    sequences = lanes.num_sequences
    segment_lengths = lanes.lengths
    how = (
        f"the one series is cut into {B} contiguous segments, one per lane"
        if len(train) == 1
        else f"{len(train)} series packed longest-first into {B} lanes"
    )
    report.facts.append(
        (
            "Layout",
            f"{B} lanes x window {T}: {windows} windows per epoch, padding "
            f"{lanes.padding_fraction:.1%} ({how})",
        )
    )
    spans = float(np.median(segment_lengths)) / T
    carry = (
        "the state carries across windows (truncated BPTT: gradients reach back up to "
        f"{T} steps, the state further)"
        if spans > 1
        else "each sequence fits in one window"
    )
    report.facts.append(
        (
            "Resets",
            f"{sequences / windows:.2f} per window on average (a sequence starts, its row's "
            f"state is zeroed); a median sequence spans {spans:.1f} windows: {carry}",
        )
    )

    hidden, layers = int(model["hidden_size"]), int(model["num_layers"])
    # Floats per step and hidden unit kept for the backward pass: the cell's gate blocks.
    from seqstate.core.cells import CELLS

    gates = CELLS[model["cell"]].gates if model["cell"] in CELLS else CELLS["lstm"].gates
    F, O = table.num_features, table.num_outputs
    parameters = 0
    for layer in range(layers):
        width = F if layer == 0 else hidden
        parameters += gates * hidden * (width + hidden + 2)
    parameters += hidden * O + O
    data_bytes = 4 * int(lengths.sum()) * (F + len(columns.targets))
    activations = 4 * B * T * (F + O + layers * hidden * (gates + 2))
    report.facts.append(
        (
            "Memory",
            f"data {_megabytes(data_bytes)}; model {parameters:,} parameters "
            f"({_megabytes(16 * parameters)} with gradients and Adam); one window's "
            f"activations ~{_megabytes(activations)}",
        )
    )

    _check_layout(report, table, train, lanes, layout)
    for name in constant_columns(train):
        report.warnings.append(
            f"feature {name!r} never changes in the training data: it carries no information "
            "(and cannot be normalised). Drop it from --features."
        )
    for warning in _leaks(train):
        report.warnings.append(warning)
    for warning in _gaps(train):
        report.warnings.append(warning)
    return report


def _check_layout(report: Report, table: Any, train: Any, lanes: Any, layout: Any) -> None:
    B, T = lanes.num_lanes, lanes.window
    asked = int(layout["lanes"])
    if asked > B:
        if len(train) == 1:
            report.warnings.append(
                f"lanes={asked} but the training series has only {B} steps; using {B} lanes."
            )
        else:
            report.warnings.append(
                f"lanes={asked} is more than the {len(train)} training series, so only {B} "
                f"lanes are used (batch size {B}). Give --lanes {B} or fewer, or cut long "
                "series into pieces (more series) to train more rows side by side."
            )
    longest = int(lanes.lengths.max())
    if longest < T:
        report.warnings.append(
            f"window={T} is longer than every training sequence (longest {longest} steps): "
            "each row holds whole sequences and the state never needs to carry between "
            f"windows. Fine for short sequences, but --window {_round_down(longest)} would "
            "waste less padding."
        )
    windows = len(lanes)
    if windows < _FEW_WINDOWS:
        report.warnings.append(
            f"only {windows} window(s), i.e. optimiser steps, per epoch. Use fewer lanes or a "
            "shorter window for more updates, or train for more epochs."
        )
    if lanes.padding_fraction > _MUCH_PADDING:
        report.warnings.append(
            f"{lanes.padding_fraction:.0%} of every epoch is padding (lanes of unequal total "
            "length). Use fewer lanes, or more and shorter series, so the lanes even out."
        )


def _round_down(length: int) -> int:
    power = 1
    while power * 2 <= length:
        power *= 2
    return max(1, power)


def _leaks(train: Any) -> list[str]:
    """Features that are copies of the value they are asked to predict."""
    columns = train.columns
    if columns.task != "regression":
        return []
    inputs, targets = train.pairs()
    x = np.concatenate(inputs).astype(np.float64)
    y = np.concatenate(targets).astype(np.float64)
    found = []
    for j, feature in enumerate(columns.features):
        for k, target in enumerate(columns.targets):
            if np.allclose(x[:, j], y[:, k], rtol=1e-6, atol=1e-9) and np.ptp(y[:, k]) > 0:
                when = "the same step" if columns.shift == 0 else f"{columns.shift} step(s) later"
                found.append(
                    f"feature {feature!r} at each step equals target {target!r} at {when}: the "
                    "input already holds the answer (a leak of future values). Drop it, or "
                    "shift it so it only holds past values."
                )
    return found


def _calendar(table: Any) -> str | None:
    """The time column's calendar in words, for datetime times."""
    from seqstate.recipe.calendar import infer_frequency, season_length

    if table.columns.time is None or not np.issubdtype(table.times[0].dtype, np.datetime64):
        return None
    frequency = infer_frequency(table.times[int(np.argmax(table.lengths))])
    if frequency is None:
        return "no regular calendar found in the time column; forecasts step by the median spacing"
    return (
        f"{frequency.description} ({frequency.name}), season {season_length(frequency)}: "
        "forecasts are stamped on this calendar"
    )


def _gaps(train: Any) -> list[str]:
    from seqstate.recipe.calendar import infer_frequency

    if train.columns.time is None:
        return []
    irregular = []
    for series_id, times in zip(train.ids, train.times, strict=True):
        if len(times) < 3:
            continue
        if np.issubdtype(times.dtype, np.datetime64):
            # On a calendar (months, business days...): a gap is a missing step of it.
            frequency = infer_frequency(times)
            if frequency is not None:
                if frequency.missing:
                    irregular.append(series_id)
                continue
        deltas = np.diff(times).astype(np.float64)
        median = float(np.median(deltas))
        if median > 0 and float(deltas.max()) > 2.5 * median:
            irregular.append(series_id)
    if not irregular:
        return []
    if train.columns.id is None:
        which = "the series has gaps"
    else:
        shown = ", ".join(repr(i) for i in irregular[:5]) + (" ..." if len(irregular) > 5 else "")
        which = f"{len(irregular)} series have gaps, e.g. {shown},"
    return [
        f"{which} in {train.columns.time!r} (missing steps of its calendar, or a step more "
        "than 2.5x the usual spacing). The model sees steps, not times: resample to a "
        "regular grid, or add the elapsed time as a feature."
    ]
