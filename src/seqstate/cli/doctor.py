"""``seqstate doctor``: explain how a table will be laid out, and what looks wrong.

:func:`diagnose` reads the table with the same settings ``seqstate train`` would use, builds
the training lanes, and reports in plain words: the sequences and their lengths, the lanes and
windows, padding, how often a sequence starts inside a window, a memory estimate, and the
problems (training would fail) and warnings (training would run, but probably not as meant),
each with what to change.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FrameCheck",
    "Report",
    "check_frame",
    "diagnose",
    "order_warning",
    "source_name",
]

_FEW_WINDOWS = 10
_MUCH_PADDING = 0.25


@dataclasses.dataclass
class Report:
    """What :func:`diagnose` found."""

    facts: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (topic, text)
    problems: list[str] = dataclasses.field(default_factory=list)  # training would fail
    warnings: list[str] = dataclasses.field(default_factory=list)  # it would run, but ...
    problem_note: str = ""  # how the problems name rows (once, not in every line)

    def text(self) -> str:
        # Problems first: they are what to fix; the facts after them describe the layout of
        # the rows without problems.
        lines = []
        if self.problems:
            note = f" {self.problem_note}" if self.problem_note else ""
            lines += [f"Problems (training would fail){note}:"]
            lines += [f"  - {problem}" for problem in self.problems]
            lines += [""]
        lines += [f"  {topic:<9} {text}" for topic, text in self.facts]
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


def _threads(report: Report, settings: dict[str, dict[str, Any]]) -> None:
    """The intra-op threads ``train`` will use."""
    from seqstate.recipe.threads import choose_threads

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


def _explain_distribution(report: Report, table: Any, train: Any, model: dict[str, Any]) -> None:
    """The output head train would fit: a point model, or which distribution and why, judged
    as ``train`` judges it, on the model-space training part ``train`` (after scaling and
    transforms); a head ``train`` would refuse is a problem."""
    from seqstate.recipe.training import choose_distribution, holds_counts

    name = model.get("distribution", "none")
    if table.columns.task != "regression":
        report.facts.append(("Output", "class probabilities"))
        return
    if name in (None, "none"):
        text = (
            "point forecasts, with intervals calibrated on the run's own validation errors "
            "where it has a validation part (--distribution auto: a distribution head and "
            "sample paths)"
        )
        report.facts.append(("Output", text))
        return
    try:
        head = choose_distribution(train, name, model.get("quantiles", "0.1,0.5,0.9"), "regression")
    except ValueError as error:
        report.problems.append(str(error))
        return
    text = f"a {head.name} distribution head"
    if name == "auto":
        if head.name == "negbin":
            text += " (auto: the targets the model reads are non-negative integers)"
        elif holds_counts(table):
            text += (
                " (auto: the targets are counts, but the run's scaling or transforms change "
                "them; --scaling none --seasonal-difference 0 keeps them counts, for negbin)"
            )
        else:
            text += " (auto: the targets are not counts)"
    report.facts.append(("Output", text + "; forecasts are its medians"))


def diagnose(settings: dict[str, dict[str, Any]]) -> Report:
    """Report on a training setup given as settings (see ``recipe.training.SECTIONS``).

    Every data problem of the table is reported at once (:func:`check_frame`:
    column, row, value, fix); the layout is then explained for the rows without problems, with
    the same choices ``train`` makes (:func:`seqstate.recipe.training.plan_training`).
    """
    import copy

    from seqstate.recipe.sources import constant_columns, read_frame
    from seqstate.recipe.training import lanes_for, plan_training, read_training_table

    report = Report()
    settings = copy.deepcopy(settings)  # plan_training fills in the defaults
    data, layout, model = settings["data"], settings["layout"], settings["model"]
    report.facts.append(("Data", str(data["path"])))
    try:
        frame, _, _ = read_frame(data["path"], data["id"])
    except (ValueError, TypeError, OSError) as error:
        report.problems.append(f"{error}")
        return report
    source = source_name(data["path"])
    check = check_frame(frame, data, source=source)
    report.problems += [problem.text() for problem in check.problems]
    report.problem_note = check.note
    if check.blocking:
        return report
    warning = order_warning(frame, data, source=source)
    if warning is not None:
        report.warnings.append(warning)
    clean = frame if check.bad_rows.size == 0 else frame.drop(frame.index[check.bad_rows])
    if check.bad_rows.size:
        report.facts.append(
            (
                "Note",
                f"the facts below leave out the {check.bad_rows.size} row(s) with problems",
            )
        )
    try:
        table = read_training_table({**settings, "data": {**data, "path": clean}})
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
    ahead = "the same step (labelling)" if columns.shift == 0 else f"{columns.shift} step(s) ahead"
    report.facts.append(
        (
            "Columns",
            f"features {list(columns.features)} -> targets {list(columns.targets)} "
            f"({columns.task}), predicted {ahead}",
        )
    )

    try:
        plan = plan_training(table, settings)
    except (ValueError, TypeError) as error:
        report.problems.append(f"{error}")
        return report
    _explain_distribution(report, table, plan.train, model)
    report.facts += plan.lines()
    report.facts += [("  try", hint) for hint in plan.prepared.preparation.hints]
    _threads(report, settings)
    calendar = _calendar(table)
    if calendar:
        report.facts.append(("Calendar", calendar))

    train = plan.train
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
    refit = ""
    if plan.refit:
        # The refit trains on every row (train + the held-out tail) in the same lanes/window.
        whole, _ = lanes_for(plan.table, None, settings)
        refit = f"; the refit on every row: {len(whole)} windows per epoch"
    report.facts.append(
        (
            "Layout",
            f"{B} lanes x window {T}: {windows} windows per epoch, padding "
            f"{lanes.padding_fraction:.1%} ({how}){refit}",
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
    F, O = plan.table.num_features, plan.table.num_outputs
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
    # On the raw table: a leak or a constant column is about the user's columns, not about
    # their scaled differences.
    for name in constant_columns(table):
        report.warnings.append(
            f"feature {name!r} never changes in the training data: it carries no information "
            "(and cannot be normalised). Drop it from --features."
        )
    flat = [
        table.ids[i].item() if isinstance(table.ids[i], np.generic) else table.ids[i]
        for i, targets in enumerate(table.targets)
        if len(table) > 1 and len(targets) > 1 and np.ptp(np.asarray(targets), axis=0).max() == 0
    ]
    if flat:
        report.warnings.append(
            f"{len(flat)} series never change (e.g. {flat[0]!r}): they have no MASE scale, so "
            "evaluate and backtest leave them out of their means"
        )
    for warning in _leaks(table):
        report.warnings.append(warning)
    for warning in _gaps(table):
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
    from seqstate.recipe.calendar import covered_seasons, observed_frequency, observed_seasons

    if table.columns.time is None or not np.issubdtype(table.times[0].dtype, np.datetime64):
        return None
    longest = table.times[int(np.argmax(table.lengths))]
    frequency = observed_frequency(longest)
    if frequency is None:
        return "no regular calendar found in the time column; forecasts step by the median spacing"
    seasons = covered_seasons(observed_seasons(longest, frequency), len(longest))
    season = ("seasons " if len(seasons) > 1 else "season ") + (
        " and ".join(str(m) for m in seasons) or "none"
    )
    return (
        f"{frequency.description} ({frequency.name}), {season}: forecasts are stamped on this "
        "calendar"
    )


def _gaps(train: Any) -> list[str]:
    from seqstate.recipe.calendar import gapped_series

    irregular = gapped_series(train)
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


# --------------------------------------------------------------------------------------------
# Every problem of a table at once
# --------------------------------------------------------------------------------------------

#: Rows listed per problem; the count says how many more.
_SHOWN_ROWS = 5
_TIME_NAMES = (
    "time",
    "date",
    "datetime",
    "timestamp",
    "ds",
    "t",
    "period",
    "month",
    "day",
    "week",
    "year",
    "hour",
    "minute",
    "quarter",
)


@dataclasses.dataclass(frozen=True)
class DataProblem:
    """One problem of a table: a column, the rows where it shows, their values, and the fix."""

    column: str
    what: str  # "is missing (NaN)", "is not a number", ...
    rows: tuple[str, ...]  # the rows, as the user finds them ("data row 6")
    values: tuple[Any, ...]
    count: int  # rows with this problem (rows/values list the first few)
    fix: str

    def text(self) -> str:
        if not self.rows:
            return f"column {self.column!r} {self.what}. {self.fix}"
        shown = ", ".join(
            f"{row} ({_shown(value)})" for row, value in zip(self.rows, self.values, strict=True)
        )
        more = f" and {self.count - len(self.rows)} more" if self.count > len(self.rows) else ""
        return f"column {self.column!r} {self.what} at {shown}{more}. {self.fix}"


def _shown(value: Any) -> str:
    import pandas as pd

    if value is None or (not isinstance(value, str) and bool(pd.isna(value))):
        return "empty"
    return repr(value.item() if isinstance(value, np.generic) else value)


@dataclasses.dataclass(frozen=True)
class FrameCheck:
    """What :func:`check_frame` found."""

    problems: list[DataProblem]
    bad_rows: np.ndarray  # (n,) positions of the rows with a problem, sorted
    blocking: bool  # a problem no row can be dropped to fix (a missing column)
    note: str  # how rows are named


def source_name(source: Any) -> str:
    """How rows of ``source`` are named: its file name, or "DataFrame"."""
    import pandas as pd

    return "DataFrame" if isinstance(source, pd.DataFrame) else Path(str(source)).name


def check_frame(frame: Any, data: dict[str, Any], *, source: str = "DataFrame") -> FrameCheck:
    """Every problem ``read_table`` would refuse in ``frame`` for the [data] settings ``data``
    (features, targets, id, time, shift, task), at once, each with its column, rows, values and
    fix; ``read_table`` stops at the first.

    Rows are named as the user finds them: ``data row N`` (1-based, the header not counted) of
    a text file, the row number of a Parquet file, the index label of a DataFrame.
    """
    import pandas as pd

    problems: list[DataProblem] = []
    features = list(data.get("features") or [])
    targets = list(data.get("targets") or [])
    id_column, time_column = data.get("id"), data.get("time")
    available = [str(c) for c in frame.columns]
    wanted = [*features, *targets, *(name for name in (id_column, time_column) if name)]
    missing = [name for name in dict.fromkeys(wanted) if name not in frame.columns]
    for name in missing:
        import difflib

        close = difflib.get_close_matches(name, available, n=1, cutoff=0.6)
        hint = f"Did you mean {close[0]!r}? " if close else ""
        problems.append(
            DataProblem(
                name, f"is not in {source}", (), (), 0, f"{hint}Available columns: {available}."
            )
        )
    is_text = source.lower().endswith((".csv", ".tsv"))
    if source == "DataFrame":
        note, labels = "(rows by index label)", [repr(v) for v in frame.index]
    elif is_text:
        note = f"(data rows of {source}: 1-based, the header not counted)"
        labels = [f"data row {k}" for k in range(1, len(frame) + 1)]
    else:
        note, labels = (
            f"(rows of {source}, 1-based)",
            [f"row {k}" for k in range(1, len(frame) + 1)],
        )
    if missing:
        return FrameCheck(problems, np.zeros(0, dtype=np.int64), True, "")
    if len(frame) == 0:
        problems.append(DataProblem("(all)", f"{source} has no data rows", (), (), 0, ""))
        return FrameCheck(problems, np.zeros(0, dtype=np.int64), True, "")

    bad = np.zeros(len(frame), dtype=bool)

    def add(column: str, what: str, where: np.ndarray, values: Any, fix: str) -> None:
        positions = np.flatnonzero(where)
        if positions.size == 0:
            return
        bad[positions] = True
        shown = positions[:_SHOWN_ROWS]
        problems.append(
            DataProblem(
                column,
                what,
                tuple(labels[k] for k in shown),
                tuple(values.iloc[k] if hasattr(values, "iloc") else values[k] for k in shown),
                int(positions.size),
                fix,
            )
        )

    classify = data.get("task") == "classification"
    for name in dict.fromkeys([*features, *targets]):
        column = frame[name]
        if pd.api.types.is_bool_dtype(column):
            numbers = column.astype("float64")
        elif pd.api.types.is_numeric_dtype(column):
            numbers = column
        else:  # text (object or string dtype)
            numbers = pd.to_numeric(column, errors="coerce")
        empty = column.isna().to_numpy()
        text = numbers.isna().to_numpy() & ~empty
        add(
            name,
            "is not a number",
            text,
            column,
            "Every feature and target must be a number: "
            "fix or drop those rows, or leave the column out.",
        )
        add(
            name,
            "is missing",
            empty,
            column,
            "Drop the rows before a series starts or after it ends (df.dropna(subset=[...])) "
            "and fill gaps within each series (df.groupby(id)[column].ffill(), not across "
            "series).",
        )
        values = numbers.to_numpy(dtype="float64", na_value=np.nan)
        add(name, "is infinite", np.isinf(values), column, "Replace or drop those rows.")
        if classify and name in targets:
            fractional = np.isfinite(values) & ((values != np.round(values)) | (values < 0))
            add(
                name,
                "is not a class index 0, 1, 2, ...",
                fractional,
                column,
                "Map the labels to integers first.",
            )
    series = None
    if id_column:
        empty = frame[id_column].isna().to_numpy()
        add(
            id_column,
            "is empty (no series id)",
            empty,
            frame[id_column],
            "Every row needs a series id: fill it or drop those rows.",
        )
        series = frame[id_column]
    if time_column:
        times, unreadable = _read_times(frame[time_column])
        add(
            time_column,
            "is not a time",
            unreadable,
            frame[time_column],
            "Every row needs a number or a date/time, in one format for the whole column "
            "(2024-01-31, 2024-01-31T12:00:00, 2024-01, '2024 Jan', 2024Q1 or 2024M01).",
        )
        keys = pd.DataFrame({"id": series if series is not None else 0, "time": times})
        ok = ~bad
        repeated = keys[ok].duplicated(keep="first").reindex(keys.index, fill_value=False)
        add(
            time_column,
            "repeats a time of its series",
            repeated.to_numpy(),
            frame[time_column],
            "Each series needs one row per time: aggregate or drop the duplicates.",
        )
    shift = data.get("shift", 1)
    if targets and isinstance(shift, int) and not isinstance(shift, bool):
        ok = ~bad
        groups = (series if series is not None else pd.Series(0, index=frame.index))[ok]
        sizes = groups.groupby(groups, sort=False).transform("size") if len(groups) else groups
        short = np.zeros(len(frame), dtype=bool)
        short[np.flatnonzero(ok)] = sizes.to_numpy() <= shift
        column = id_column or (features[0] if features else "")
        add(
            column,
            f"names a series of {shift} row(s) or fewer (no step with a target at shift {shift})",
            short,
            frame[column] if column in frame else frame.iloc[:, 0],
            "Drop short series or lower --shift.",
        )
    return FrameCheck(problems, np.flatnonzero(bad), False, note)


def _row_name(frame: Any, position: int, source: str) -> str:
    if source == "DataFrame":
        return f"the row with index label {frame.index[position]!r}"
    if source.lower().endswith((".csv", ".tsv")):
        return f"data row {position + 1} of {source} (1-based, the header not counted)"
    return f"row {position + 1} of {source} (1-based)"


def _read_times(column: Any) -> tuple[np.ndarray, np.ndarray]:
    """(times as numbers or datetime64, or NaN/NaT where unreadable; (n,) bool unreadable)."""
    import pandas as pd

    empty = column.isna().to_numpy()
    if pd.api.types.is_datetime64_any_dtype(column):
        return column.to_numpy(), empty
    numbers = pd.to_numeric(column, errors="coerce")
    if numbers.notna().sum() >= (~empty).sum() or pd.api.types.is_numeric_dtype(column):
        values = numbers.to_numpy(dtype="float64", na_value=np.nan)
        return values, ~np.isfinite(values)
    text = column.map(lambda value: value if isinstance(value, str) else None)
    parsed = pd.to_datetime(text, errors="coerce", format="ISO8601", utc=True)
    if parsed.notna().sum() < (~empty).sum():
        from seqstate.recipe.calendar import parse_times

        readable = text.notna()
        try:
            written = parse_times(text[readable].to_numpy(dtype=object))
        except ValueError:
            pass
        else:
            values = np.full(len(column), np.datetime64("NaT"), dtype="datetime64[ns]")
            values[readable.to_numpy()] = written
            return values, np.isnat(values)
    values = parsed.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")
    return values, np.isnat(values)


def order_warning(frame: Any, data: dict[str, Any], *, source: str = "DataFrame") -> str | None:
    """A warning when no time column is named and a column that looks like one is not in
    order within its series: the file's order is then taken as the time order."""
    import pandas as pd

    if data.get("time") or len(frame) < 3:
        return None
    used = {*(data.get("features") or []), *(data.get("targets") or []), data.get("id")}
    for name in frame.columns:
        if name in used:
            continue
        column = frame[name]
        named = str(name).strip().lower() in _TIME_NAMES
        textual = not pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(
            column
        )
        if not (named or pd.api.types.is_datetime64_any_dtype(column) or textual):
            continue
        times, unreadable = _read_times(column)
        if unreadable.any() or (not named and np.issubdtype(np.asarray(times).dtype, np.number)):
            continue  # not a time column (an unnamed number column may be anything)
        keys = frame[data["id"]] if data.get("id") else pd.Series(0, index=frame.index)
        order = pd.DataFrame({"id": keys.to_numpy(), "time": times})
        back = order.groupby("id", sort=False)["time"].diff()
        if np.issubdtype(back.dtype, np.timedelta64):
            behind = (back < pd.Timedelta(0)).to_numpy()
        else:
            behind = (back < 0).to_numpy()
        if behind.any():
            row = int(np.flatnonzero(behind)[0])
            return (
                f"the rows are not in time order: column {str(name)!r} goes back in time at "
                f"{_row_name(frame, row, source)} ({int(behind.sum())} such rows), and no time "
                "column is "
                f"named, so each series is read in the file's order. Pass --time {name} to "
                "sort each series by it."
            )
    return None
