"""Calendar time: read dates as people write them, infer a series' frequency, stamp its future.

A monthly series steps by *months*, not by a number of days: stepping 2019-08-01 by its median
spacing (31 days) gives 2019-09-01, then 2019-10-02, ... and drifts a day every short month, so
forecasts no longer join the actuals by date. This module works on the series' own calendar::

    times = parse_times(["1939 Jan", "1939 Feb", "1939 Mar"], "month")   # datetime64[ns]
    frequency = infer_frequency(times)             # Frequency('MS', 'month starts')
    frequency.future(times[-1], 3)                 # 1939-04-01, 1939-05-01, 1939-06-01

Frequencies recognised (pandas offsets): fixed spacings (hours, days, 15 minutes, ...), business
days, weeks anchored on a weekday, month starts and ends, the same day of every n months,
quarter starts and ends, year starts and ends. A few missing steps (gaps) do not stop the
inference: every time must lie on the frequency's grid, and the gaps are counted.

pandas is imported lazily (the data extra): ``import seqstate`` stays light.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any, cast

import numpy as np

from seqstate._validate import check_int

__all__ = [
    "FIRST_SECOND",
    "LAST_SECOND",
    "MIN_CYCLES",
    "ZONE_FORM",
    "DateOutOfRange",
    "Frequency",
    "calendar_kinds",
    "check_date_range",
    "covered_seasons",
    "forecast_stamps",
    "format_time",
    "format_times",
    "future_times",
    "gapped_series",
    "infer_frequency",
    "observed_frequency",
    "observed_seasons",
    "parse_times",
    "season_length",
    "season_lengths",
    "written_format",
    "written_readings",
]

#: The Unix seconds a calendar can stamp: the datetime64[ns] range (1677-09-21T00:12:44 ..
#: 2262-04-11T23:47:16) that pandas reads tables in; a time outside it would wrap silently.
FIRST_SECOND = -9_223_372_036
LAST_SECOND = 9_223_372_036


def check_date_range(first: int, last: int, what: str) -> None:
    """Refuse Unix seconds outside [:data:`FIRST_SECOND`, :data:`LAST_SECOND`] (ValueError
    naming ``what``): a calendar's dates are datetime64[ns]."""
    if first < FIRST_SECOND or last > LAST_SECOND:
        bad = first if first < FIRST_SECOND else last
        units = " (in milliseconds or nanoseconds? divide by 1000 or 10**9)" if bad > 0 else ""
        raise ValueError(
            f"{what} must be Unix seconds of a date between 1677-09-21 and 2262-04-11 (the "
            f"dates a calendar run stamps, datetime64[ns]); received {bad}{units}"
        )


# Formats tried, in order, on a whole text column (after ISO 8601). Each must read every value.
_TEXT_FORMATS = (
    "%Y %b",  # 1939 Jan
    "%b %Y",  # Jan 1939
    "%Y %B",  # 1939 January
    "%B %Y",  # January 1939
    "%Y-%b",  # 1939-Jan
    "%b-%Y",  # Jan-1939
    "%YM%m",  # 1939M01 (statistics offices)
    "%Y/%m",  # 1939/01
    "%Y.%m",  # 1939.01 as text
)
_QUARTER = re.compile(r"^\s*(\d{4})\s*[-/ ]?\s*[Qq]([1-4])\s*$")  # 1939Q1, 1939-Q1, 1939 q1
_EXAMPLES = "2024-01-31, 2024-01-31T12:00, 2024-01, 2024 Jan, Jan 2024, 2024M01, 2024Q1"


def format_time(value: Any) -> str:
    """A time as messages show it, one format everywhere: ``2019-12-01`` for a midnight,
    ``2019-12-01T06:30:00`` otherwise (never raw nanoseconds); numbers as they are."""
    if isinstance(value, np.datetime64 | np.ndarray) and np.issubdtype(
        np.asarray(value).dtype, np.datetime64
    ):
        stamp = np.asarray(value, dtype="datetime64[s]").reshape(())
        text = str(np.datetime_as_string(stamp, unit="s"))
        return text.removesuffix("T00:00:00")
    if hasattr(value, "to_datetime64"):  # pandas Timestamp
        return format_time(value.to_datetime64())
    return str(value.item() if isinstance(value, np.generic) else value)


def written_readings(text: Any) -> list[Any]:
    """Which values of ``text`` (a pandas Series of str, or None) each written date form of
    :func:`parse_times` reads (boolean Series): quarters, then its text formats; a reader
    names the value the best of them cannot read."""
    import pandas as pd

    stripped = text.map(lambda value: value.strip() if isinstance(value, str) else None)
    quarters = stripped.map(lambda value: isinstance(value, str) and bool(_QUARTER.match(value)))
    return [quarters.astype(bool)] + [
        pd.to_datetime(stripped, format=form, errors="coerce").notna() for form in _TEXT_FORMATS
    ]


def parse_times(values: Sequence[Any] | np.ndarray, name: str = "time") -> np.ndarray:
    """Read a column of dates written as text into ``datetime64[ns]``.

    Accepts ISO 8601 (``2024-01-31``, ``2024-01``, ``2024-01-31T12:00``), month names
    (``1939 Jan``, ``Jan 1939``, ``1939 January``), ``1939M01``, ``1939/01`` and quarters
    (``1939Q1``); one format must read the whole column. Datetime values pass through.

    Raises:
        ValueError naming ``name``, the first value no format reads, and the formats accepted.
    """
    import pandas as pd

    array = np.asarray(values)
    if np.issubdtype(array.dtype, np.datetime64):
        return array.astype("datetime64[ns]")
    text = pd.Series(array, dtype=object).map(lambda v: v.strip() if isinstance(v, str) else v)
    if len(text) == 0:
        return np.array([], dtype="datetime64[ns]")
    if not text.map(lambda v: isinstance(v, str)).all():
        position = int(np.flatnonzero(~text.map(lambda v: isinstance(v, str)).to_numpy())[0])
        raise ValueError(
            f"{name} must hold dates written as text; value {position} is "
            f"{text.iloc[position]!r} ({type(text.iloc[position]).__name__})"
        )
    quarters = text.str.extract(_QUARTER)
    if quarters.notna().all().all():
        periods = pd.PeriodIndex.from_fields(
            year=quarters[0].astype(int).to_numpy(),
            quarter=quarters[1].astype(int).to_numpy(),
            freq="Q",
        )
        starts = np.asarray(periods.to_timestamp(how="start"))
        return _in_range_ns(starts, text, name)
    best: tuple[int, Any] = (-1, None)
    for form in ("ISO8601", *_TEXT_FORMATS):
        # utc: text with offsets (which may change with daylight saving) as UTC instants
        utc = form == "ISO8601" and any(_OFFSET.search(v) for v in text)
        parsed = pd.to_datetime(text, format=form, errors="coerce", utc=utc)
        read = int(parsed.notna().sum())
        if read == len(text):
            return _in_range_ns(_naive(parsed), text, name)
        if read > best[0]:
            best = (read, parsed)
    failed = best[1] if best[1] is not None else text
    position = int(np.flatnonzero(failed.isna().to_numpy())[0]) if best[0] > 0 else 0
    raise ValueError(
        f"{name} holds {text.iloc[position]!r} (value {position}), which no date format reads "
        f"for the whole column; write dates like {_EXAMPLES}"
    )


# ISO 8601 forms a column may be written in (parse_times reads them all as "ISO8601").
_ISO_FORMATS = (
    "%Y-%m-%d",
    "%Y-%m",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%dT%H:%M",
    "%Y%m%d",
)


# a UTC offset after a time of day (2021-03-31T16:00:00+02:00, ...16:00Z); not the year of
# "Jan-1939"
_OFFSET = re.compile(r"\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(Z|[+-]\d{2}:?\d{2})$")


def _offset_minutes(offset: str) -> int:
    """``"+02:00"``, ``"-0530"`` or ``"Z"`` in minutes east of UTC."""
    if offset == "Z":
        return 0
    digits = offset[1:].replace(":", "")
    minutes = int(digits[:2]) * 60 + int(digits[2:])
    return -minutes if offset[0] == "-" else minutes


def written_format(text: Sequence[Any] | np.ndarray, times: np.ndarray) -> str | None:
    """How a text time column was written, so output times can be written the same way.

    ``text`` holds the column as read (strings), ``times`` its parsed ``datetime64`` values
    (UTC wall time for text with an offset). Returns a format for :func:`format_times` (a
    ``strftime`` pattern; ``%q`` stands for the quarter, as in ``"%YQ%q"`` for ``1998Q1``)
    that writes every sampled value back exactly as it was read, or None when no format does
    (times are then written as ISO dates). Times written with a UTC offset keep it: one offset
    throughout (``+02:00``, ``Z``) gives a pattern and ``"|+02:00"``, written in that offset;
    offsets that change (a zone with daylight saving, whose future offsets the text does not
    tell) give ``"|+00:00"``, the same instants written in UTC, so forecasts never read as
    local times an hour off.
    """
    values = [v.strip() if isinstance(v, str) else None for v in np.asarray(text, dtype=object)]
    if not values or any(v is None for v in values) or len(values) != len(times):
        return None
    sample = np.unique(np.linspace(0, len(values) - 1, min(len(values), 64)).astype(int))
    written = [cast(str, values[i]) for i in sample]
    stamps = np.asarray(times)[sample].astype("datetime64[ns]")
    suffix = ""
    offsets = [_OFFSET.search(v) for v in written]
    if all(offsets):
        found = [cast(re.Match[str], m).group(1) for m in offsets]
        minutes = np.array([_offset_minutes(o) for o in found], dtype=np.int64)
        stamps = stamps + minutes.astype("timedelta64[m]")  # each value's own wall time
        written = [v[: len(v) - len(o)] for v, o in zip(written, found, strict=True)]
        suffix = "|" + (found[0] if len(set(minutes.tolist())) == 1 else "+00:00")
    candidates: list[str] = []
    quarter = _QUARTER.match(written[0])
    if quarter:
        # Keep the separator and the letter's case: "1998Q1", "1998 Q1", "1998-q1".
        candidates.append("%Y" + written[0][quarter.end(1) : quarter.start(2)] + "%q")
    candidates += [*_ISO_FORMATS, *_TEXT_FORMATS]
    for form in candidates:
        try:
            if list(format_times(stamps, form)) == written:
                return form + suffix
        except ValueError:
            continue
    return None


#: The time format of a column of zone-aware datetimes: this prefix, then the zone's name
#: (``"tz:Europe/Berlin"``); its times are read as UTC and written back in that zone.
ZONE_FORM = "tz:"


def format_times(times: np.ndarray, form: str | None) -> np.ndarray:
    """``datetime64`` ``times`` written with ``form`` (from :func:`written_format`) as an
    object array of strings; the times themselves when ``form`` is None. A form ending in
    ``"|<offset>"`` writes UTC ``times`` as wall times at that offset, the offset after them;
    ``"tz:<zone>"`` (a column of zone-aware datetimes, as a parquet file holds) gives them as
    zone-aware timestamps in that zone (:data:`ZONE_FORM`)."""
    import pandas as pd

    if form is None:
        return np.asarray(times)
    stamps = np.asarray(times).astype("datetime64[ns]")
    if form.startswith(ZONE_FORM):  # (UTC inside, as the reader converted them)
        zone = form[len(ZONE_FORM) :]
        return np.array(list(pd.DatetimeIndex(stamps).tz_localize("UTC").tz_convert(zone)))
    offset = ""
    if "|" in form:
        form, offset = form.split("|", 1)
        stamps = stamps + np.timedelta64(_offset_minutes(offset), "m")
    index = pd.DatetimeIndex(stamps)
    if "%q" in form:
        head, tail = form.split("%q", 1)
        quarters = ((index.month - 1) // 3 + 1).astype(str)
        parts = zip(index.strftime(head), quarters, index.strftime(tail), strict=True)
        return np.array([a + q + b + offset for a, q, b in parts], dtype=object)
    return np.array([text + offset for text in index.strftime(form)], dtype=object)


def _naive(parsed: Any) -> np.ndarray:
    """Parsed datetimes (a Series, any unit) as naive UTC datetime64 in their own unit."""
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    return parsed.to_numpy()


def _in_range_ns(stamps: np.ndarray, text: Any, name: str) -> np.ndarray:
    """``stamps`` (datetime64, any unit) as datetime64[ns], refusing a date outside what it
    holds (1677-09-21 .. 2262-04-11): pandas reads 3000Q1 in seconds, and a cast to
    nanoseconds would wrap it to 1830 silently."""
    seconds = stamps.astype("datetime64[s]").astype(np.int64)
    outside = np.flatnonzero((seconds < FIRST_SECOND) | (seconds > LAST_SECOND))
    if outside.size:
        position = int(outside[0])
        raise DateOutOfRange(
            f"{name} holds {text.iloc[position]!r} (value {position}), a date outside "
            "1677-09-21 .. 2262-04-11 (the dates a calendar stamps, datetime64[ns])",
            position,
        )
    return stamps.astype("datetime64[ns]")


class DateOutOfRange(ValueError):
    """A date written as text that datetime64[ns] cannot hold; ``position``: its value's
    index in the column (a reader names its row)."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.position = position


# --------------------------------------------------------------------------------------------
# Frequencies
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Frequency:
    """A series' calendar step.

    Attributes:
        name: the pandas offset alias (``"MS"``, ``"W-SUN"``, ``"h"``, ``"B"``), or
            ``"months=N"`` for the same day of every N months (e.g. the 15th).
        description: in words, for messages (``"month starts"``).
        missing: steps of the grid between the first and last time that the series lacks.
        slots: for data kept to part of its calendar (business hours), the times a cycle
            holds, in seconds after the cycle's start (Monday 00:00 for a week, midnight for a
            day, UTC wall time); ``()``: every step of the grid.
        cycle: the slots' cycle in seconds (a week or a day); 0 without slots.
    """

    name: str
    description: str
    missing: int = 0
    slots: tuple[int, ...] = ()
    cycle: int = 0

    @property
    def offset(self) -> Any:
        """The pandas ``DateOffset`` of one step."""
        import pandas as pd

        if self.name.startswith("months="):
            return pd.DateOffset(months=int(self.name.split("=", 1)[1]))
        return pd.tseries.frequencies.to_offset(self.name)

    def future(self, last: Any, horizon: int) -> np.ndarray:
        """The ``horizon`` times after ``last`` on this calendar, ``datetime64[ns]``."""
        import pandas as pd

        if self.slots:
            seconds = _future_slots(last, int(horizon), self.slots, self.cycle)
        else:
            start = pd.Timestamp(np.datetime64(last, "s"))
            offset = self.offset
            # last + k * step for each k (not step by step), so clamped month ends never
            # drift; in seconds, where a date past 2262 does not wrap as in nanoseconds
            stamps = [start + k * offset for k in range(1, int(horizon) + 1)]
            seconds = np.array(stamps, dtype="datetime64[s]")
        if len(seconds):
            values = seconds.astype(np.int64)
            check_date_range(int(values.min()), int(values.max()), "a forecast's time")
        return seconds.astype("datetime64[ns]")

    def to_dict(self) -> dict[str, Any]:
        """The run file's entry (``missing`` is the history's, not the calendar's)."""
        entry: dict[str, Any] = {"name": self.name, "description": self.description}
        if self.slots:
            entry |= {"slots": list(self.slots), "cycle": self.cycle}
        return entry

    @classmethod
    def from_dict(cls, entry: Any) -> Frequency:
        """What :meth:`to_dict` wrote (or a bare alias, as early runs stored it)."""
        if isinstance(entry, str):
            return cls(entry, entry)
        name = str(entry["name"])
        slots = tuple(int(v) for v in entry.get("slots", ()))
        cycle = int(entry.get("cycle", 0))
        if slots and (cycle <= 0 or any(not 0 <= v < cycle for v in slots)):
            raise ValueError(
                f"frequency slots must lie in [0, cycle {cycle}) seconds; received "
                f"{list(slots)[:5]}..."
            )
        return cls(
            name, str(entry.get("description", name)), slots=tuple(sorted(slots)), cycle=cycle
        )

    def season(self) -> int:
        """Steps in a natural season (the MASE / seasonal-naive period), 1 when none."""
        return season_length(self)

    def seasons(self) -> tuple[int, ...]:
        """Every natural season in steps, the shortest first (48 and 336 for half hours)."""
        return season_lengths(self)


def _months(index: Any) -> np.ndarray:
    return (index.year.to_numpy() * 12 + index.month.to_numpy()).astype(np.int64)


def _on_grid(index: Any, offset: Any) -> int | None:
    """Grid steps missing between the first and last time, or None when a time is off grid."""
    import pandas as pd

    if not all(offset.is_on_offset(t) for t in index[:: max(1, len(index) // 64)]):
        return None
    grid = pd.date_range(index[0], index[-1], freq=offset)
    if len(grid) > 50 * len(index) + 1000:  # sparse samples of a fine grid: not this frequency
        return None
    if not index.isin(grid).all():
        return None
    return len(grid) - len(index)


def _month_candidates(index: Any) -> list[tuple[str, str]]:
    """Calendar-month frequencies worth trying for ``index`` (sorted, unique, >= 2 times)."""
    import pandas as pd

    months = _months(index)
    steps = np.diff(months)
    if (steps <= 0).any():  # two times in one month: not a month-based calendar
        return []
    step = int(np.gcd.reduce(steps))
    same_clock = (index.normalize() == index).all()
    if not same_clock:
        return []
    candidates: list[tuple[str, str]] = []
    if step % 12 == 0:
        years = step // 12
        prefix = "" if years == 1 else str(years)
        words = "years" if years == 1 else f"{years} years"
        first = index[0].month
        candidates += [
            (f"{prefix}YS-{_MONTH_ABBR[first]}", f"{words} starting in {_MONTH_ABBR[first]}"),
            (f"{prefix}YE-{_MONTH_ABBR[first]}", f"{words} ending in {_MONTH_ABBR[first]}"),
        ]
    if step % 3 == 0 and step < 12:
        quarters = step // 3
        prefix = "" if quarters == 1 else str(quarters)
        words = "" if quarters == 1 else f" (every {quarters})"
        # pandas anchors quarters on the last month of a quarter (QE) / the first one (QS).
        start_anchor = _MONTH_ABBR[(index[0].month - 1) % 3 + 1]
        end_anchor = _MONTH_ABBR[(index[0].month - 1) % 3 + 10]
        candidates += [
            (f"{prefix}QS-{start_anchor}", f"quarter starts{words}"),
            (f"{prefix}QE-{end_anchor}", f"quarter ends{words}"),
        ]
    prefix = "" if step == 1 else str(step)
    words = "month" if step == 1 else f"{step} months"
    candidates += [
        (f"{prefix}MS", f"{words} starts" if step > 1 else "month starts"),
        (f"{prefix}ME", f"{words} ends" if step > 1 else "month ends"),
        (f"{prefix}BMS", "business month starts" if step == 1 else f"{words}, business starts"),
        (f"{prefix}BME", "business month ends" if step == 1 else f"{words}, business ends"),
    ]
    days = pd.Index(index.day)
    if days.nunique() == 1 and days[0] <= 28:
        candidates.append((f"months={step}", f"day {days[0]} of every {words}"))
    return candidates


_MONTH_ABBR = {
    i + 1: name
    for i, name in enumerate(
        ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
    )
}
_WEEKDAYS = ["MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"]


def _fixed_candidates(index: Any) -> list[tuple[str, str]]:
    """Fixed spacings: business days, weeks, and whole multiples of the smallest step."""
    import pandas as pd

    deltas = np.diff(index.asi8)  # ns
    smallest = int(deltas.min())
    if smallest <= 0:
        return []
    step = math.gcd(*[int(d) for d in np.unique(deltas)])
    candidates: list[tuple[str, str]] = []
    day = 86_400 * 10**9
    weekdays_only = (index.day_of_week < 5).all() and (deltas == 3 * day).any()
    if step == day and (index.normalize() == index).all() and weekdays_only:
        candidates.append(("B", "business days"))
    if step % (7 * day) == 0 and pd.Index(index.day_of_week).nunique() == 1:
        weeks = step // (7 * day)
        prefix = "" if weeks == 1 else str(weeks)
        weekday = _WEEKDAYS[int(index[0].day_of_week)]
        words = "weeks" if weeks == 1 else f"every {weeks} weeks"
        candidates.append((f"{prefix}W-{weekday}", f"{words} ending {weekday.title()}"))
    if step % day == 0 and (index.normalize() == index).all():
        days = step // day
        candidates.append(("D" if days == 1 else f"{days}D", _fixed_words(step)))
    else:
        offset = pd.tseries.frequencies.to_offset(pd.Timedelta(step, unit="ns"))
        candidates.append((offset.freqstr, _fixed_words(step)))
    return candidates


def _fixed_words(step_ns: int) -> str:
    units = [
        (86_400 * 10**9, "day"),
        (3_600 * 10**9, "hour"),
        (60 * 10**9, "minute"),
        (10**9, "second"),
    ]
    for size, word in units:
        if step_ns % size == 0:
            count = step_ns // size
            return f"{word}s" if count == 1 else f"every {count} {word}s"
    return f"every {step_ns} ns"


def infer_frequency(times: Sequence[Any] | np.ndarray) -> Frequency | None:
    """The calendar frequency of sorted ``datetime64`` times, or None when none fits.

    Month-based calendars are preferred to fixed spacings (monthly data steps by months, not
    by 30 days); among those that fit, the one with fewest missing steps wins. Two times give
    a frequency only when a month-based one fits or the spacing is fixed.
    """
    import pandas as pd

    array = np.asarray(times)
    if not np.issubdtype(array.dtype, np.datetime64):
        raise TypeError(
            f"infer_frequency needs datetime64 times; received dtype {array.dtype}. Numbers "
            "step by their median spacing instead (future_times handles both)"
        )
    if len(array) < 2:
        return None
    index = pd.DatetimeIndex(array.astype("datetime64[ns]"))
    if not index.is_monotonic_increasing or index.has_duplicates:
        raise ValueError(
            "times must be strictly increasing to infer a frequency (sort each series by time "
            "and drop duplicate times)"
        )
    best: Frequency | None = None
    for name, words in (*_month_candidates(index), *_fixed_candidates(index)):
        frequency = Frequency(name, words)
        missing = _on_grid(index, frequency.offset)
        if missing is not None and (best is None or missing < best.missing):
            best = dataclasses.replace(frequency, missing=missing)
            if missing == 0:
                break
    return best


def season_lengths(frequency: Frequency | None) -> tuple[int, ...]:
    """Every natural seasonal period in steps, the shortest first; ``()`` when none.

    Sub-daily data that divides a day has a daily and a weekly season (48 and 336 for half
    hours, 24 and 168 for hours, 96 and 672 for 15 minutes); days have 7, business days 5,
    weeks 52, months 12, quarters 4. Years, other spacings and None have none.
    """
    if frequency is None:
        return ()
    name = frequency.name
    if name.startswith("months="):
        return (12,) if name == "months=1" else ()
    if re.fullmatch(r"B?M[SE]", name):
        return (12,)
    if re.fullmatch(r"Q[SE]-[A-Z]{3}", name):
        return (4,)
    if re.fullmatch(r"W-[A-Z]{3}", name):
        return (52,)
    if name in ("B", "D"):
        return {"B": (5,), "D": (7,)}[name]
    step = _fixed_step_ns(name)
    day = 86_400 * 10**9
    if step is None or step >= day or day % step:
        return ()
    per_day = day // step
    return (per_day, 7 * per_day)


#: Whole cycles of a season the data must hold for it to count: with fewer, seasonal naive has
#: no in-sample errors to scale by and a validation window of two seasons is longer than the
#: data (a few hours of minutes have no daily season to speak of).
MIN_CYCLES = 2


def covered_seasons(seasons: Sequence[int], length: int) -> tuple[int, ...]:
    """The ``seasons`` a series of ``length`` steps holds at least :data:`MIN_CYCLES` whole
    cycles of (those of a panel: its longest series' length)."""
    return tuple(m for m in seasons if length >= MIN_CYCLES * m)


def observed_seasons(times: np.ndarray, frequency: Frequency | None = None) -> tuple[int, ...]:
    """Every seasonal period of one series in steps, the shortest first; ``()`` when none.

    The calendar's (:func:`season_lengths` of the inferred frequency) when the series keeps to
    it. Sub-daily data observed on part of the calendar only (business hours: 07:00-21:00 on
    weekdays, in 5 minutes) holds fewer steps a day and a week than the calendar has, so "the
    same time yesterday" is not ``288`` steps back: its seasons are the steps of a usual day
    and a usual week (169 and 845 there). A day (week) is usual when at least 80% of the whole
    days (weeks) between the first and the last hold that many steps (days); without a usual
    day there is no season, without a usual week only the daily one.

    Args:
        times: ``[L]`` the series' sorted ``datetime64`` times.
        frequency: their :func:`infer_frequency`, when the caller has it.
    """
    frequency = frequency or infer_frequency(times)
    seasons = season_lengths(frequency)
    if frequency is None or not frequency.missing or len(seasons) != 2:
        return seasons
    days, steps_a_day = np.unique(np.asarray(times).astype("datetime64[D]"), return_counts=True)
    day = _usual(steps_a_day)
    if day is None:
        return ()
    # weeks from Monday (1970-01-01, day 0, was a Thursday)
    weeks = (days.astype(np.int64) + 3) // 7
    week = _usual(np.unique(weeks, return_counts=True)[1])
    if day == seasons[0] and week == 7:  # a few steps missing here and there
        return seasons
    return (day,) if week is None or week == 1 else (day, day * week)


_DAY_S = 86_400
_MONDAY_S = 4 * _DAY_S  # 1970-01-05, the first Monday after the epoch (a Thursday)


def observed_frequency(times: np.ndarray) -> Frequency | None:
    """:func:`infer_frequency`, with the slots of a usual week (or day) for sub-daily data kept
    to part of its calendar (:func:`observed_seasons`): its future steps through those slots
    (from Friday 21:00 to Monday 07:00 for business hours), not through the night.

    The slots are the times of the cycle that at least half of the whole cycles hold; when
    they are not as many as the usual cycle's steps, the calendar stays the grid's.
    """
    frequency = infer_frequency(times)
    if frequency is None:
        return None
    seasons = observed_seasons(times, frequency)
    if not seasons or seasons == season_lengths(frequency):
        return frequency
    cycle, anchor = (7 * _DAY_S, _MONDAY_S) if len(seasons) == 2 else (_DAY_S, 0)
    seconds = np.asarray(times).astype("datetime64[s]").astype(np.int64)
    within = (seconds - anchor) % cycle
    number = (seconds - anchor) // cycle
    whole = (number > number[0]) & (number < number[-1])
    cycles = int(number[-1] - number[0] - 1)
    if cycles < 2:
        return frequency
    offsets, held = np.unique(within[whole], return_counts=True)
    slots = offsets[held >= 0.5 * cycles]
    if len(slots) != seasons[-1]:
        return frequency
    words = f"{frequency.description}, {len(slots)} a {'week' if cycle > _DAY_S else 'day'}"
    return dataclasses.replace(
        frequency, description=words, slots=tuple(slots.tolist()), cycle=cycle
    )


def _future_slots(last: Any, horizon: int, slots: Sequence[int], cycle: int) -> np.ndarray:
    """The ``horizon`` slot times after ``last``: the slots of ``last``'s cycle after it,
    then those of the next cycles."""
    anchor = _MONDAY_S if cycle == 7 * _DAY_S else 0
    at = int(np.datetime64(last, "s").astype(np.int64))
    start, into = divmod(at - anchor, cycle)
    table = np.asarray(slots, dtype=np.int64)
    first = int(np.searchsorted(table, into, side="right"))
    k = first + np.arange(horizon)
    seconds = anchor + (start + k // len(table)) * cycle + table[k % len(table)]
    return seconds.astype("datetime64[s]")


def _usual(counts: np.ndarray) -> int | None:
    """The count that at least 80% of the whole periods hold (the first and the last period
    of a series are partial and left out), or None: fewer than two whole periods, or none."""
    whole = counts[1:-1]
    if len(whole) < 2:
        return None
    values, often = np.unique(whole, return_counts=True)
    best = int(np.argmax(often))
    return int(values[best]) if often[best] >= 0.8 * len(whole) else None


def calendar_kinds(frequency: Frequency | None) -> tuple[str, ...]:
    """The calendar features (:func:`seqstate.recipe.covariates.calendar_features` kinds) that
    carry a season of data on ``frequency``: hour and weekday for sub-daily steps, weekday for
    days and business days, month for weeks, months and quarters; none for years, other
    spacings and None."""
    seasons = season_lengths(frequency)
    if not seasons or frequency is None:
        return ()
    if len(seasons) == 2:
        return ("hour", "weekday")
    return ("weekday",) if frequency.name in ("B", "D") else ("month",)


def _fixed_step_ns(name: str) -> int | None:
    """The step of a fixed-spacing alias (``30min``, ``h``, ``2h``) in ns, else None."""
    import pandas as pd

    try:
        offset = pd.tseries.frequencies.to_offset(name)
        return int(pd.Timedelta(offset).value)
    except (ValueError, TypeError):
        return None


def season_length(frequency: Frequency | None) -> int:
    """The main seasonal period in steps (the MASE / seasonal-naive period): the shortest of
    :func:`season_lengths` (12 for months, 4 quarters, 7 days, 5 business days, 52 weeks, 24
    hours, 48 half hours); 1 (no seasonality) for years, other spacings and None."""
    seasons = season_lengths(frequency)
    return seasons[0] if seasons else 1


def gapped_series(table: Any) -> list[Any]:
    """The ids of ``table``'s series with gaps in time: a missing step of their calendar
    (months, business days...; data kept to the same hours of every week keeps to its
    calendar), or, off a calendar, a step more than 2.5x their median spacing. A model, the
    MASE's seasonal lag and seasonal naive all count rows, so a gap shifts what they compare."""
    if table.columns.time is None:
        return []
    gapped = []
    for series_id, times in zip(table.ids, table.times, strict=True):
        if len(times) < 3:
            continue
        if np.issubdtype(times.dtype, np.datetime64):
            frequency = observed_frequency(times)
            if frequency is not None:
                if frequency.missing and not frequency.slots:
                    gapped.append(series_id)
                continue
        deltas = np.diff(times).astype(np.float64)
        median = float(np.median(deltas))
        if median > 0 and float(deltas.max()) > 2.5 * median:
            gapped.append(series_id)
    return gapped


#: A series with fewer times than this shows no calendar of its own (one spacing, maybe a
#: gap): its forecast steps on the run's.
_OWN_CALENDAR = 3


def forecast_stamps(
    table: Any, horizon: int, frequency: Frequency | None = None
) -> list[np.ndarray]:
    """Each series' ``[horizon]`` forecast times: on its own calendar (:func:`future_times`)
    with a time column, the next step numbers without one (a series then steps 0..L-1).

    ``frequency``: the run's calendar (:attr:`seqstate.recipe.run.Run.frequency`), for the
    series too short to show their own (one or two rows: a quarterly series of one row would
    otherwise step by a day, and of two rows a year apart by a year)."""
    if table.columns.time is None:
        return [np.asarray(t)[-1] + np.arange(1, int(horizon) + 1) for t in table.times]
    return [
        future_times(t, horizon, frequency if len(t) < _OWN_CALENDAR else None) for t in table.times
    ]


def future_times(times: np.ndarray, horizon: int, frequency: Frequency | None = None) -> np.ndarray:
    """The ``horizon`` times after a series' last time, on the series' own calendar.

    Datetimes step by the inferred (or given) :class:`Frequency`; when none fits they step by
    the median spacing. Numbers step by their median spacing; one time steps by 1 (or a day).

    Args:
        times: ``[L]`` a series' sorted times (numbers or datetime64), L >= 1.
        horizon: steps to stamp, >= 1.
        frequency: use this calendar instead of inferring one.
    """
    check_int(horizon, "horizon", 1)
    array = np.asarray(times)
    if len(array) == 0:
        raise ValueError("times is empty; a series needs at least one time to stamp its future")
    ahead = np.arange(1, int(horizon) + 1)
    if np.issubdtype(array.dtype, np.datetime64):
        frequency = frequency or observed_frequency(array)
        if frequency is not None:
            return frequency.future(array[-1], int(horizon))
        if len(array) < 2:
            return array[-1] + np.timedelta64(1, "D") * ahead
        median = np.median(np.diff(array).astype(np.int64))
        return array[-1] + np.timedelta64(int(median), "ns") * ahead
    if len(array) < 2:
        return array[-1] + ahead.astype(array.dtype)
    step = np.median(np.diff(array))
    if np.issubdtype(array.dtype, np.integer) and step == int(step):
        return array[-1] + int(step) * ahead
    return array[-1] + float(step) * ahead
