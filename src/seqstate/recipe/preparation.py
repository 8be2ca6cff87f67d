"""Preparation: a run's ``[scaling]`` settings, from flags to model-space tables and back.

Between reading a table and training on it, ``seqstate train``::

    settings ([scaling] + flags, "auto" where unset)
        │  resolve(train part)            -> Preparation: ScalingConfig + calendar + reasons
        ▼
    raw table ──transform──► split ──fit Scaling on train──► scale both ──+calendar──► lanes
                                                                           │
    run_dir/scaling.json + scaling.safetensors + model.json metadata["preparation"]

``predict`` / ``forecast`` load it back (:func:`load`) and run ``recipe.run_forecaster``.
Ensemble members (``--seeds K``) live in ``run_dir/members/seed-<s>/``, each a model
directory sharing the run's preparation (:func:`member_dirs`).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seqstate.recipe.choices import Suggestion, season_of, suggest
from seqstate.recipe.covariates import calendar_features, calendar_names, parse_calendar
from seqstate.recipe.scaling import Scaling, ScalingConfig, transform_table

__all__ = [
    "DEFAULTS",
    "MEMBERS_DIR",
    "Preparation",
    "add_arguments",
    "flag_settings",
    "load",
    "member_dirs",
    "prepare",
    "resolve",
    "save",
]

# The [scaling] section: key -> (default, meaning). "auto": chosen from the data (suggest()).
DEFAULTS: dict[str, tuple[Any, str]] = {
    "method": ("auto", "auto | series | global | none (auto: series when there is an id column)"),
    "transform": ("none", "none | log | log1p of the targets"),
    "difference": (0, "0 | 1: model lag-1 differences of the targets"),
    "season": ("auto", "auto | 0 | m >= 2: seasonal differences at lag m"),
    "calendar": ("auto", "auto | none | month,weekday,hour: sin/cos calendar features"),
}
MEMBERS_DIR = "members"
_METADATA_KEY = "preparation"


@dataclasses.dataclass(frozen=True)
class Preparation:
    """The resolved settings: what ``train`` does to the table, and why."""

    scaling: ScalingConfig
    calendar: tuple[str, ...]
    reasons: tuple[str, ...] = ()  # one line per choice made from the data ("auto")
    hints: tuple[str, ...] = ()  # transforms worth trying (doctor prints them)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scaling": self.scaling.to_dict(),
            "calendar": list(self.calendar),
            "reasons": list(self.reasons),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preparation:
        return cls(
            ScalingConfig.from_dict(dict(data["scaling"])),
            tuple(data.get("calendar", ())),
            tuple(data.get("reasons", ())),
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``train`` / ``doctor`` flags of the [scaling] section."""
    group = parser.add_argument_group("scaling and transforms ([scaling] in --config)")
    group.add_argument(
        "--scaling",
        dest="scaling_method",
        choices=["auto", "series", "global", "none"],
        help="normalise each series on its own (series; auto with --id) or all together",
    )
    group.add_argument(
        "--transform", choices=["none", "log", "log1p"], help="of the targets (default none)"
    )
    group.add_argument(
        "--difference", type=int, choices=[0, 1], help="1: model lag-1 differences (default 0)"
    )
    group.add_argument(
        "--seasonal-difference",
        dest="scaling_season",
        metavar="M",
        help="seasonal differences at lag M, 0 for none (default auto: from the data)",
    )
    group.add_argument(
        "--calendar", help="month,weekday,hour sin/cos features, or none (default auto)"
    )


def flag_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The [scaling] values given on the command line (unset flags left out)."""
    given = {
        "method": getattr(args, "scaling_method", None),
        "transform": getattr(args, "transform", None),
        "difference": getattr(args, "difference", None),
        "season": getattr(args, "scaling_season", None),
        "calendar": getattr(args, "calendar", None),
    }
    return {key: value for key, value in given.items() if value is not None}


def resolve(train: Any, settings: dict[str, Any]) -> Preparation:
    """Fill the ``auto`` settings from the data (:func:`seqstate.recipe.choices.suggest` of the
    *training* table) and check the rest.

    Args:
        train: the training table (raw, before any transform).
        settings: the [scaling] section (missing keys take :data:`DEFAULTS`).
    """
    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown [scaling] setting(s) {unknown}; known: {sorted(DEFAULTS)}.")
    values = {key: settings.get(key, default) for key, (default, _) in DEFAULTS.items()}
    suggestion: Suggestion = suggest(train)
    reasons = []
    method = values["method"]
    if method == "auto":
        method = suggestion.scaling.method
        reasons.append(suggestion.reasons[0])
    season = values["season"]
    auto_season = season == "auto"
    if auto_season:
        season = suggestion.scaling.season
        reasons += [reason for reason in suggestion.reasons if reason.startswith("season")]
    else:
        season = _as_int(season, "season")
    calendar_value = values["calendar"]
    if calendar_value == "auto":
        # The calendar of a seasonal pattern found in the data, or of a season asked for;
        # not the kinds whose columns the table already holds (the user's own month_sin,
        # month_cos: the same features, which --calendar month would refuse as a clash)
        calendar = suggestion.calendar or (season_of(train.times[0])[1] if season else ())
        held = set(train.columns.features)
        given = [kind for kind in calendar if set(calendar_names([kind])) & held]
        if given:
            calendar = tuple(kind for kind in calendar if kind not in given)
            reasons.append(
                f"calendar: {given} left out (the table already has its columns "
                f"{[n for n in calendar_names(given) if n in held]})"
            )
    else:
        calendar = parse_calendar(calendar_value)
        _check_calendar_varies(train, calendar)
    config = ScalingConfig(
        method=method,
        transform=values["transform"],
        difference=_as_int(values["difference"], "difference"),
        season=season,
    )
    return Preparation(config, tuple(calendar), tuple(reasons), suggestion.hints)


def _check_calendar_varies(table: Any, kinds: Sequence[str]) -> None:
    """Refuse a calendar feature asked for by name whose columns never change in ``table``
    (``--calendar hour`` on quarterly data: every time is at midnight), as constant inputs a
    model cannot use; naming it was a mistake the user should hear of."""
    if not kinds or not all(np.issubdtype(np.asarray(t).dtype, np.datetime64) for t in table.times):
        return  # (numbers as times: the calendar's own check refuses them)
    times = np.unique(np.concatenate([np.asarray(t) for t in table.times]))  # (a panel's share)
    for kind in kinds:
        columns = calendar_features(times, [kind])
        if len(times) > 1 and bool((columns == columns[:1]).all()):
            raise ValueError(
                f"calendar feature {kind!r} is the same at every time of the table (its "
                "columns would be constant); leave it out of --calendar (or use --calendar "
                "auto, which picks the features the data's calendar carries)"
            )


def prepare(
    table: Any, split: Any, preparation: Preparation
) -> tuple[Any, Any | None, Scaling, Any]:
    """Transform, split, fit and scale.

    Args:
        table: the whole raw table.
        split: ``split(table) -> (train, validation or None)``, applied to the transformed
            table (so differencing never eats the validation part's first rows).
        preparation: from :func:`resolve`.

    Returns:
        ``(train, validation, scaling, transformed)``: the model-space training and validation
        tables (calendar columns appended), the fitted :class:`Scaling`, and the transformed
        (unscaled) whole table.
    """
    from seqstate.recipe.covariates import with_calendar

    transformed = transform_table(table, preparation.scaling)
    train, validation = split(transformed)
    scaling = Scaling.fit(train, preparation.scaling, transformed=True)
    train = with_calendar(scaling.scale_table(train), preparation.calendar)
    if validation is not None:
        validation = with_calendar(scaling.scale_table(validation), preparation.calendar)
    return train, validation, scaling, transformed


def save(run_dir: str | Path, scaling: Scaling, preparation: Preparation) -> dict[str, Any]:
    """Write the scaling files; returns the metadata entry for ``model.json``."""
    scaling.save(run_dir)
    return {_METADATA_KEY: preparation.to_dict()}


def load(run_dir: str | Path, metadata: dict[str, Any]) -> tuple[Scaling | None, tuple[str, ...]]:
    """``(scaling or None, calendar)`` of a run (runs from before #13 have neither)."""
    scaling = Scaling.load(run_dir)
    entry = metadata.get(_METADATA_KEY)
    calendar = tuple(entry.get("calendar", ())) if entry else ()
    return scaling, calendar


def member_dirs(run_dir: str | Path) -> list[Path]:
    """The model directories of a run: the run itself, then its ensemble members."""
    run = Path(run_dir)
    members = run / MEMBERS_DIR
    extra = (
        sorted(
            (p for p in members.iterdir() if (p / "model.json").is_file()),
            key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else 0,
        )
        if members.is_dir()
        else []
    )
    return [run, *extra]


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"[scaling] {name} must be an int; received {value!r}.")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"[scaling] {name} must be an int (or 'auto' for season); received {value!r}."
        ) from None
