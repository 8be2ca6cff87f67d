"""Sources: read long-format tables (pandas, CSV, Parquet) into sequences and targets.

A *long-format* table has one row per (series, time step)::

    id   time  temp  load          id column (optional: without it the table is one series)
    a    0     20.1  3.0           time column (optional: without it rows are in time order)
    a    1     20.4  3.2           feature columns -> x [L_i, F]
    b    0     18.0  1.1           target columns  -> y [L_i, O]
    ...

:func:`read_table` groups rows by id (series in order of first appearance), sorts each series by
time with a *stable* sort, validates every value once, and returns a :class:`SequenceTable`.

Targets are columns, paired with inputs by ``shift``: the model reads the features of step
``t`` and is asked for the target columns of step ``t + shift``::

    shift = 1 (default, forecasting):  x = features[0 : L-1],  y = targets[1 : L]
    shift = 0 (labelling each step):   x = features[0 : L],    y = targets[0 : L]

The target columns may also be features: ``features=["load"], targets=["load"]`` is the classic
"predict the next value" setup. With ``shift = 0`` a target column that is also a feature is a
leak (the answer is in the input); :func:`read_table` refuses it.

Splits and normalisation live in :mod:`seqstate.recipe.splits`, the table classes in
:mod:`seqstate.recipe.table`; their public names are importable from here too.
"""

from __future__ import annotations

import datetime
import difflib
import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seqstate._validate import check_int
from seqstate.recipe.splits import Normalization, split_table
from seqstate.recipe.splits import constant_columns as constant_columns  # re-exported (moved there)
from seqstate.recipe.table import Columns, SequenceTable, Task

__all__ = [
    "Columns",
    "Normalization",
    "SequenceTable",
    "read_frame",
    "read_table",
    "split_table",
]

_TABLE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


class _Rows:
    """Names a table row the way the user sees it: a 1-based data row of a file (header not
    counted), or the index label of a DataFrame row."""

    def __init__(self, labels: np.ndarray, source: str, from_file: bool) -> None:
        self.labels = labels
        self.source = source
        self.from_file = from_file
        # A text file has a header line; a Parquet file's rows are just rows.
        self.text = from_file and not source.lower().endswith((".parquet", ".pq"))

    def name(self, *positions: int) -> str:
        """``data row 6 of x.csv (1-based, header not counted)``; several positions share the
        one explanation (``data rows 6 and 9 of ...``)."""
        labels = [_plain(self.labels[position]) for position in positions]
        several = len(labels) > 1
        if not self.from_file:
            shown = " and ".join(repr(label) for label in labels)
            plural = "s" if several else ""
            return f"the row{plural} with index label{plural} {shown}"
        shown = " and ".join(str(label) for label in labels)
        if self.text:
            return (
                f"data row{'s' if several else ''} {shown} of {self.source} (1-based, header not "
                "counted)"
            )
        return f"row{'s' if several else ''} {shown} of {self.source} (1-based)"


def _as_names(value: Any, argument: str, *, allow_empty: bool = False) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple):
        raise TypeError(
            f"{argument} must be a list of column names (or one comma-separated string); "
            f"received {type(value).__name__} {value!r}."
        )
    names = tuple(value)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(
                f"{argument} must hold column names (str); received {type(name).__name__} {name!r}."
            )
    if not names and not allow_empty:
        raise ValueError(f"{argument} is empty; name at least one column.")
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"{argument} names {repeated} more than once; name each column once.")
    return names


def _read_parquet(path: Path) -> Any:
    """``pd.read_parquet``; without a parquet engine an ImportError naming pyarrow (pandas'
    own names none, so the command line could not say which extra installs it)."""
    import pandas as pd

    try:
        return pd.read_parquet(path)
    except ImportError as error:
        if "pyarrow" not in str(error) and "engine" not in str(error):
            raise
        raise ImportError(f"reading {path.name} needs pyarrow", name="pyarrow") from None


def read_frame(source: Any, id_column: str | None = None) -> tuple[Any, str, bool]:
    """``source`` (a DataFrame or a .csv/.tsv/.parquet path) as ``(DataFrame, description,
    from_file)``, as :func:`read_table` and ``doctor`` read it: a CSV/TSV's ``id_column`` as
    text where reading it as numbers would change an id (:func:`_ids_as_written`), and a
    delimiter at the end of each line not taken for an index column."""
    import pandas as pd

    if isinstance(source, pd.DataFrame):
        return source, "DataFrame", False
    if not isinstance(source, str | os.PathLike):
        raise TypeError(
            "source must be a pandas DataFrame or a path to a .csv/.tsv/.parquet file; "
            f"received {type(source).__name__}."
        )
    path = Path(source)
    kind = _TABLE_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ValueError(
            f"cannot tell the format of {str(path)!r} from its suffix {path.suffix!r}; expected "
            f"one of {sorted(_TABLE_SUFFIXES)}. Rename the file or load it with pandas and pass "
            "the DataFrame."
        )
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist.")
    if kind == "parquet":
        frame = _read_parquet(path)
    else:
        sep = "\t" if kind == "tsv" else ","
        try:
            # (index_col=False: rows ending in a delimiter would shift every column by one)
            frame = pd.read_csv(path, sep=sep, index_col=False)
        except pd.errors.EmptyDataError:
            raise ValueError(
                f"{path.name} is empty; expected a header row and data rows."
            ) from None
        if id_column is not None and id_column in frame.columns:
            frame = _ids_as_written(frame, path, sep, id_column)
    return frame, path.name, True


def _ids_as_written(frame: Any, path: Path, sep: str, name: str) -> Any:
    """``frame`` with its id column ``name`` read as the text the file holds, where pandas'
    reading of it as numbers (or True/False) changed an id: ``001`` read as 1 (forecasts would
    write ``1``, which no longer joins the input), or ``01``, ``1`` and ``001`` (``1`` and
    ``1.0``, `` 1`` and ``1``) merged into one series. Ids that a number writes back exactly
    as the file does (``1``, ``2``, ``10``; ``1.5``) stay numbers, as before: runs trained on
    them stored them as numbers."""
    import pandas as pd

    column = frame[name]
    if not (pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column)):
        return frame  # already text: read as written
    try:
        position = list(frame.columns).index(name)
        text = pd.read_csv(path, sep=sep, usecols=[position], dtype=str).iloc[:, 0]
    except (ValueError, pd.errors.ParserError):
        return frame  # not expected: keep the reading as it was
    read = column.notna().to_numpy()
    if len(text) != len(column) or not np.array_equal(text.notna().to_numpy(), read):
        return frame  # not the same cells (not expected): keep the reading as it was
    pairs = pd.DataFrame({"text": text[read], "value": column[read]}).drop_duplicates()
    unchanged = all(
        str(written).strip() == str(_plain(value))
        for written, value in zip(pairs["text"], pairs["value"], strict=True)
    )
    if unchanged and pairs["value"].nunique() == len(pairs):
        return frame
    frame[name] = text
    return frame


def _check_columns(frame: Any, wanted: dict[str, str | None], source: str) -> None:
    available = [str(c) for c in frame.columns]
    for role, name in wanted.items():
        if name is None or name in frame.columns:
            continue
        same_case = [c for c in available if c.lower() == name.lower()]
        close = same_case or difflib.get_close_matches(name, available, n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"{role} column {name!r} is not in {source}; available columns: {available}.{hint}"
        )


def _numeric_column(frame: Any, name: str, rows: _Rows, *, integer: bool = False) -> np.ndarray:
    """The column as float64 (or int64 with ``integer``), every value checked."""
    import pandas as pd

    column = frame[name]
    if pd.api.types.is_bool_dtype(column):
        column = column.astype("float64")
    if not pd.api.types.is_numeric_dtype(column):
        coerced = pd.to_numeric(column, errors="coerce")
        bad = np.flatnonzero(coerced.isna().to_numpy() & column.notna().to_numpy())
        if bad.size:
            position = int(bad[0])
            raise ValueError(
                f"column {name!r} holds the non-numeric value {column.iloc[position]!r} at "
                f"{rows.name(position)}; every feature and target must be a number. Fix or drop "
                "that row, or leave the column out."
            )
        column = coerced
    values = column.to_numpy(dtype="float64", na_value=np.nan)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        position = int(bad[0])
        what = "is missing (NaN)" if np.isnan(values[position]) else f"is {values[position]}"
        raise ValueError(
            f"column {name!r} {what} at {rows.name(position)}; {bad.size} value(s) of {name!r} "
            "are NaN or inf. Drop the rows before a series starts or after it ends (a table "
            "made from wide columns: df.dropna(subset=[...])), and fill gaps within each series "
            "(df.groupby(id)[column].ffill(), not across series)."
        )
    if integer:
        fractional = np.flatnonzero((values != np.round(values)) | (values < 0))
        if fractional.size:
            position = int(fractional[0])
            raise ValueError(
                f"classification target {name!r} must hold class indices 0, 1, 2, ...; it holds "
                f"{float(values[position])!r} at {rows.name(position)}. Map labels to integers "
                "first."
            )
        return values.astype(np.int64)
    return values


def _time_column(frame: Any, name: str, rows: _Rows) -> np.ndarray:
    """Numbers stay numbers; datetimes, ISO-8601 strings and the common written forms of
    :func:`seqstate.recipe.calendar.parse_times` ("1939 Jan", "1939Q1") become datetime64[ns]."""
    import pandas as pd

    column = frame[name]
    if pd.api.types.is_datetime64_any_dtype(column):
        parsed = column
        if getattr(parsed.dt, "tz", None) is not None:
            parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    elif pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        values = column.to_numpy(dtype="float64", na_value=np.nan)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise ValueError(
                f"time column {name!r} is missing or not finite at {rows.name(int(bad[0]))}; "
                "every row needs a time."
            )
        return column.to_numpy()
    else:
        # Missing cells first: the readings below would blame some other row for them.
        blank = column.isna().to_numpy() | column.map(
            lambda value: isinstance(value, str) and not value.strip()
        ).to_numpy(dtype=bool)
        if blank.any():
            raise ValueError(
                f"time column {name!r} is missing at {rows.name(int(np.flatnonzero(blank)[0]))}; "
                "every row needs a time."
            )
        if column.dtype == object and column.map(_is_date_value).all():
            # Python dates and datetimes (a Parquet date32 column reads as datetime.date);
            # datetimes with an offset become UTC wall time, as for a datetime64 column.
            try:
                parsed = pd.to_datetime(column, utc=True)
            except (ValueError, OverflowError):  # pandas 2: a date past datetime64[ns]
                parsed = pd.to_datetime(column, utc=True, errors="coerce")
            return _checked_times(parsed.dt.tz_localize(None), column, name, rows)
        # Text: all numbers (read as strings) or all ISO-8601 dates; report the first value
        # that fits neither, judged against the reading that fits more of the column.
        numbers = pd.to_numeric(column, errors="coerce")
        if numbers.notna().all():
            return _time_column(frame.assign(**{name: numbers}), name, rows)
        from seqstate.recipe.calendar import DateOutOfRange, parse_times, written_readings

        text = column.map(lambda value: value if isinstance(value, str) else None)
        parsed = pd.to_datetime(text, errors="coerce", format="ISO8601", utc=True)
        if not parsed.notna().all() and text.notna().all():
            # Not ISO 8601: dates as people write them ("1939 Jan", "1939Q1", "1939M01").
            try:
                return parse_times(text.to_numpy(dtype=object), f"time column {name!r}")
            except DateOutOfRange as error:
                raise ValueError(
                    f"time column {name!r} holds {_plain(column.iloc[error.position])!r} at "
                    f"{rows.name(error.position)}, a date outside 1677-09-21 .. 2262-04-11 (the "
                    "dates a calendar stamps); fix that row or drop it."
                ) from None
            except ValueError:
                pass  # the message below names the row
        if not parsed.notna().all():
            # the reading that reads most of the column (ISO 8601 on a tie) names the value
            # it cannot read; a quarter column's first row is not the culprit
            readings = [parsed.notna(), numbers.notna(), *written_readings(text)]
            best = max(readings, key=lambda read: int(read.sum()))
            position = int(np.flatnonzero(~best.to_numpy(dtype=bool))[0])
            value = column.iloc[position]
            raise ValueError(
                f"time column {name!r} holds {_plain(value)!r} at {rows.name(position)}, which "
                "is neither a number nor a date/time in one format for the whole column (like "
                "2024-01-31, 2024-01-31T12:00:00, 2024-01, '2024 Jan', 2024Q1 or 2024M01)."
            )
        parsed = parsed.dt.tz_localize(None)
    return _checked_times(parsed, column, name, rows)


def _is_date_value(value: Any) -> bool:
    """A date or datetime object (``datetime.date``, ``datetime.datetime``, a pandas
    Timestamp or a NumPy datetime64), not text."""
    return isinstance(value, datetime.date | np.datetime64)


def _checked_times(parsed: Any, column: Any, name: str, rows: _Rows) -> np.ndarray:
    """``parsed`` (naive datetimes, any unit) as datetime64[ns], refusing missing times and
    dates datetime64[ns] cannot hold (converting them would wrap them to other dates)."""
    import pandas as pd

    unread = (parsed.isna() & column.notna()).to_numpy(dtype=bool)
    outside = np.flatnonzero(
        unread | ((parsed < pd.Timestamp.min) | (parsed > pd.Timestamp.max)).to_numpy(dtype=bool)
    )
    if outside.size:
        position = int(outside[0])
        raise ValueError(
            f"time column {name!r} holds {str(column.iloc[position])!r} at "
            f"{rows.name(position)}, outside the dates seqstate can hold (1677-09-21 to "
            "2262-04-11, datetime64[ns])."
        )
    values = parsed.to_numpy(dtype="datetime64[ns]")
    bad = np.flatnonzero(np.isnat(values))
    if bad.size:
        raise ValueError(
            f"time column {name!r} is missing at {rows.name(int(bad[0]))}; every row needs a time."
        )
    return values


def _check_shift(shift: Any) -> int:
    return check_int(shift, "shift", 0, "y[t] = targets[t + shift].")


def read_table(
    source: Any,
    *,
    features: Sequence[str] | str,
    targets: Sequence[str] | str = (),
    id_column: str | None = None,
    time_column: str | None = None,
    shift: int = 1,
    task: Task = "regression",
    require_targets: bool = True,
) -> SequenceTable:
    """Read a long-format table into one sequence per series.

    Args:
        source: a pandas DataFrame, or a path to a ``.csv``, ``.tsv`` or ``.parquet`` file.
        features: input columns (a list, or one comma-separated string), in model order.
        targets: target columns (may include feature columns, e.g. to forecast them). For
            ``task="classification"``: one column of integer class indices.
        id_column: column naming the series; ``None`` reads the table as one series. A CSV's
            ids are read as numbers only where the numbers write them back as the file does
            (``1``, ``10``); ``001``, or ``1`` beside ``01``, stay text as written.
        time_column: column to sort by inside each series (numbers, datetimes, date objects
            or dates as text, :func:`seqstate.recipe.calendar.parse_times`); ``None`` keeps the
            rows' order.
        shift: ``y[t]`` is the target columns at step ``t + shift`` (1: next step; 0: same step).
        task: ``"regression"`` or ``"classification"``.
        require_targets: False to read tables for prediction: ``targets`` are then read only
            if they are all present, and series of any length are accepted.

    Returns:
        A :class:`SequenceTable`: series in order of first appearance of their id, each sorted
        by time with a stable sort.

    Raises:
        ValueError / TypeError naming the column and the row — a 1-based data row of a file
        (header not counted) or a DataFrame's index label — for: missing columns (with the
        available ones and a close match), non-numeric values, NaN/inf, missing times or ids,
        duplicate times within a series, series no longer than ``shift``, a target that is also
        a feature with ``shift=0`` (a leak). Nothing is read partially.
    """
    feature_names = _as_names(features, "features")
    target_names = _as_names(targets, "targets", allow_empty=True)
    shift = _check_shift(shift)
    if task not in ("regression", "classification"):
        raise ValueError(f"task must be 'regression' or 'classification'; received {task!r}.")
    if not isinstance(require_targets, bool):
        raise TypeError(
            f"require_targets must be True or False; received {type(require_targets).__name__} "
            f"{require_targets!r}."
        )
    for role, name in (("id_column", id_column), ("time_column", time_column)):
        if name is not None and not isinstance(name, str):
            raise TypeError(f"{role} must be a column name (str) or None; received {name!r}.")
    if task == "classification" and len(target_names) != 1:
        raise ValueError(
            "classification needs exactly one target column of class indices; received "
            f"targets={list(target_names)}."
        )
    leaked = [name for name in target_names if name in feature_names]
    if shift == 0 and leaked:
        raise ValueError(
            f"target column(s) {leaked} are also features with shift=0: the model would read the "
            "answer in its input. Use shift=1 to predict the next step, or drop them from "
            "features."
        )
    roles = {name: "id" for name in [id_column] if name} | {
        name: "time" for name in [time_column] if name
    }
    for name in (*feature_names, *target_names):
        if name in roles:
            raise ValueError(
                f"column {name!r} is the {roles[name]} column and cannot also be a feature or "
                "target."
            )

    frame, description, from_file = read_frame(source, id_column)
    if len(frame) == 0:
        raise ValueError(f"{description} has no data rows.")
    if not require_targets and any(name not in frame.columns for name in target_names):
        target_names = ()
    wanted: dict[str, str | None] = {"id": id_column, "time": time_column}
    # targets first: a column that is both (features default to the targets) is named as
    # the target the user asked for
    wanted |= {f"target {i}": name for i, name in enumerate(target_names)}
    wanted |= {f"feature {i}": name for i, name in enumerate(feature_names)}
    for role, name in wanted.items():
        _check_columns(frame, {role.split(" ")[0]: name}, description)

    labels = np.arange(1, len(frame) + 1) if from_file else frame.index.to_numpy()
    rows = _Rows(labels, description, from_file)

    x = np.stack([_numeric_column(frame, name, rows) for name in feature_names], axis=1)
    classify = task == "classification"
    if target_names:
        y = np.stack(
            [_numeric_column(frame, name, rows, integer=classify) for name in target_names],
            axis=1,
        )
    else:
        y = np.zeros((len(frame), 0))
    times = (
        _time_column(frame, time_column, rows)
        if time_column is not None
        else np.arange(len(frame), dtype=np.int64)
    )
    time_format = None
    if time_column is not None and np.issubdtype(times.dtype, np.datetime64):
        from seqstate.recipe.calendar import ZONE_FORM, written_format

        raw = frame[time_column]
        zone = getattr(getattr(raw, "dt", None), "tz", None) if pd_is_datetime(raw) else None
        if zone is not None:  # read as UTC; written back in the column's zone
            time_format = ZONE_FORM + str(zone)
        elif not pd_is_datetime(raw):
            time_format = written_format(raw.to_numpy(dtype=object), times)

    # Group by id in order of first appearance; codes keep the grouping O(N log N).
    if id_column is not None:
        id_values = frame[id_column]
        missing = np.flatnonzero(id_values.isna().to_numpy())
        if missing.size:
            raise ValueError(
                f"id column {id_column!r} is missing at {rows.name(int(missing[0]))}; every row "
                "needs a series id."
            )
        import pandas as pd

        codes, uniques = pd.factorize(id_values, sort=False)
        id_list = [_plain(value) for value in uniques]
    else:
        codes = np.zeros(len(frame), dtype=np.int64)
        id_list = [None]

    # Both sorts are stable: without a time column each series keeps its file order; with one,
    # equal times would keep file order too, but duplicates are refused below.
    order = (
        np.lexsort((times, codes)) if time_column is not None else np.argsort(codes, kind="stable")
    )
    bounds = np.searchsorted(codes[order], np.arange(len(id_list) + 1))
    table_features, table_targets, table_times, table_rows = [], [], [], []
    x_dtype = np.float32
    y_dtype = np.int64 if classify else np.float32
    for i, (begin, end) in enumerate(itertools.pairwise(bounds)):
        positions = order[begin:end]
        # without a time column a series' steps are its own positions 0, 1, ... (the file's
        # row numbers would step a series by the rows of the others between them)
        series_times = times[positions] if time_column is not None else np.arange(len(positions))
        if time_column is not None and len(positions) > 1:
            same = np.flatnonzero(series_times[1:] == series_times[:-1])
            if same.size:
                first, second = int(positions[same[0]]), int(positions[same[0] + 1])
                first, second = sorted((first, second))
                owner = f" in series {id_list[i]!r}" if id_column is not None else ""
                shown = _plain(frame[time_column].iloc[first])
                raise ValueError(
                    f"time {shown!r} appears twice{owner} in column {time_column!r}: at "
                    f"{rows.name(first, second)}. Each "
                    "series needs one row per time; aggregate or drop duplicates first."
                )
        if len(positions) <= shift and target_names and require_targets:
            owner = f"series {id_list[i]!r}" if id_column is not None else "the series"
            raise ValueError(
                f"{owner} has {len(positions)} row(s), so with shift={shift} it has no step "
                f"with a target; every series needs more than {shift} rows. Drop short series "
                "or lower shift."
            )
        series_x = x[positions].astype(x_dtype)
        _check_resolution(x[positions], series_x, feature_names, id_list[i], id_column)
        series_y = y[positions].astype(y_dtype)
        if not classify:
            _check_resolution(y[positions], series_y, target_names, id_list[i], id_column)
        table_features.append(series_x)
        table_targets.append(series_y)
        table_times.append(series_times)
        table_rows.append(positions.astype(np.int64))

    columns = Columns(
        features=feature_names,
        targets=target_names,
        id=id_column,
        time=time_column,
        shift=shift,
        task=task,
    )
    return SequenceTable(
        columns=columns,
        ids=id_list,
        features=table_features,
        targets=table_targets,
        times=table_times,
        source=description,
        rows=table_rows,
        time_format=time_format,
    )


#: The share of a series' mean step-to-step change that rounding to float32 may take before
#: the values are refused (the model, the state and the server's frames hold float32): a
#: tenth, so Unix seconds of hourly steps (rounded by up to 64 s) still pass.
RESOLUTION = 0.1


def _check_resolution(
    exact: np.ndarray, stored: np.ndarray, names: Sequence[str], series: Any, id_column: Any
) -> None:
    """Refuse columns whose variation float32 cannot hold: a level far above the changes
    (1e9 +- 10: float32 steps by 64 there) would be read as a constant, silently.
    ``exact [L, F]`` float64, ``stored`` the same as float32."""
    if len(exact) < 3:
        return
    lost = np.std(exact - stored.astype(np.float64), axis=0)
    changes = np.mean(np.abs(np.diff(exact, axis=0)), axis=0)
    for k in np.flatnonzero(lost > RESOLUTION * changes).tolist():
        owner = f" of series {series!r}" if id_column is not None else ""
        level = float(np.median(np.abs(exact[:, k])))
        raise ValueError(
            f"column {names[k]!r}{owner} changes by about {float(changes[k]):.3g} a step "
            f"around {level:.6g}, finer than float32 (which seqstate computes in) can hold "
            f"there: it would be read as nearly constant. Subtract a baseline first (e.g. "
            f"{names[k]} - {level:.6g}) or rescale the column."
        )


def pd_is_datetime(column: Any) -> bool:
    """Whether a pandas column holds datetimes already (not text to be parsed)."""
    import pandas as pd

    return bool(pd.api.types.is_datetime64_any_dtype(column))


def _plain(value: Any) -> Any:
    """NumPy scalars -> Python scalars (JSON-friendly ids)."""
    return value.item() if isinstance(value, np.generic) else value


def time_step(times: np.ndarray) -> Any:
    """The median spacing of a series' times (a number or a numpy timedelta64), or 1."""
    if len(times) < 2:
        return np.timedelta64(1, "D") if np.issubdtype(times.dtype, np.datetime64) else 1
    deltas = np.diff(times)
    if np.issubdtype(times.dtype, np.datetime64):
        return np.timedelta64(int(np.median(deltas.astype(np.int64))), "ns")
    step = float(np.median(deltas))
    return int(step) if np.issubdtype(times.dtype, np.integer) and step == int(step) else step
