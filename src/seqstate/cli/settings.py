"""Settings of ``seqstate train``/``doctor``/``backtest``: defaults <- ``--config`` TOML <- flags.

Also :class:`CliError`, the user-facing error every command raises (printed as one line by
:func:`seqstate.cli.dispatch.main`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from seqstate.recipe.preparation import flag_settings as preparation_flag_settings
from seqstate.recipe.training import SECTIONS, default_settings
from seqstate.recipe.training import fit_fields as recipe_fit_fields

__all__ = ["CliError", "flags_named", "load_settings"]


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 1."""


def _constant(text: str) -> Callable[[re.Match[str]], str]:
    return lambda _: text


@contextlib.contextmanager
def flags_named(flags: Mapping[str, str]) -> Iterator[None]:
    """Errors of the Python API, reworded for the command line: ``horizon must be ...`` from
    :func:`seqstate.recipe.evaluation.evaluate_warm` reaches the user as ``--horizon must be ...``.

    ``flags`` maps each keyword argument to its flag (``{"warmup_until": "--warmup-until"}``);
    a name is replaced where it is used as the argument (``name=``, ``name must``,
    ``name (``, ``name is``), never inside prose such as "a shorter horizon".
    """
    try:
        yield
    except (ValueError, TypeError) as error:
        text = str(error)
        for name, flag in flags.items():
            # a name with an underscore is never a word of prose: replace it everywhere
            used = "" if "_" in name else r"(?==| must| \(| is | holds )"
            # a function, not a template: a flag is text, never a backreference
            text = re.sub(rf"(?<![\w-]){re.escape(name)}{used}", _constant(flag), text)
            text = re.sub(rf"(?<![\w-]){re.escape(flag)}=", f"{flag} ", text)
            # Python-only details: None (a flag left out), a value's index in a list
            text = re.sub(rf"({re.escape(flag)} must be [^;]*?) or None", r"\1 or left out", text)
            text = re.sub(rf"({re.escape(flag)} holds .*?) \(value \d+\)", r"\1", text)
        present = [flag for flag in flags.values() if flag in text]
        if len(present) == 1:  # "None scores the whole tail." -> leaving the flag out
            text = re.sub(r"(^|\. )None\b", rf"\1Leaving {present[0]} out", text)
        if text == str(error):
            raise
        raise type(error)(text) from error


# --------------------------------------------------------------------------------------------
# Settings: defaults <- run.toml <- flags
# --------------------------------------------------------------------------------------------


def load_settings(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Merged settings for train/doctor: defaults, then ``--config``, then command-line flags."""
    settings = default_settings()
    config_path = getattr(args, "config", None)
    if config_path:
        _merge_toml(settings, Path(config_path))
    flags = {
        ("data", "path"): args.data,
        ("data", "features"): args.features,
        ("data", "targets"): args.targets,
        ("data", "id"): args.id,
        ("data", "time"): args.time,
        ("data", "shift"): args.shift,
        ("data", "task"): args.task,
        ("split", "by"): args.split_by,
        ("split", "fraction"): args.validation,
        ("split", "refit"): args.refit,
        ("layout", "lanes"): args.lanes,
        ("layout", "window"): args.window,
        ("layout", "shuffle"): False if args.no_shuffle else None,
        ("model", "cell"): args.cell,
        ("model", "hidden_size"): args.hidden_size,
        ("model", "num_layers"): args.num_layers,
        ("model", "dropout"): args.dropout,
        ("model", "distribution"): getattr(args, "distribution", None),
        ("model", "quantiles"): getattr(args, "quantiles", None),
        ("fit", "epochs"): args.epochs,
        ("fit", "lr"): args.lr,
        ("fit", "patience"): args.patience,
        ("fit", "device"): args.device,
        ("fit", "progress"): False if args.no_progress or args.quiet else None,
        ("run", "seed"): args.seed,
        ("run", "out"): getattr(args, "out", None),
        ("run", "seeds"): getattr(args, "seeds", None),
        ("run", "threads"): _threads_flag(getattr(args, "threads", None)),
        ("run", "select"): getattr(args, "select", None),
    }
    for (section, key), value in flags.items():
        if value is not None:
            settings[section][key] = value
    settings["scaling"].update(preparation_flag_settings(args))
    data = settings["data"]
    for key in ("features", "targets"):
        if isinstance(data[key], str):
            data[key] = [name.strip() for name in data[key].split(",") if name.strip()]
    if not data["path"]:
        raise CliError("no data: give DATA (a .csv/.tsv/.parquet table) or [data] path in --config")
    if not data["features"] and data["targets"] and data.get("task") == "regression":
        # A forecasting table: the model reads the past values of what it forecasts.
        data["features"] = list(data["targets"])
    if not data["features"]:
        raise CliError(
            "no feature columns: give --features col1,col2 (or [data] features in --config); "
            "a regression without --features reads its --targets"
        )
    if not data["targets"]:
        data["targets"] = list(data["features"])
    _check_numbers(settings)
    if settings["split"]["by"] not in ("auto", "series", "time", "none"):
        raise CliError(
            f"split.by must be auto, series, time or none; received {settings['split']['by']!r}"
        )
    return settings


# Numeric settings checked before anything is read, named by their flag (and config key):
# (section, key) -> (flag, kind, low, high, low inclusive); None (unset, "auto") passes.
_NUMBERS: dict[tuple[str, str], tuple[str, type, float, float | None, bool]] = {
    ("layout", "lanes"): ("--lanes", int, 1, None, True),
    ("layout", "window"): ("--window", int, 1, None, True),
    ("model", "hidden_size"): ("--hidden-size", int, 1, None, True),
    ("model", "num_layers"): ("--num-layers", int, 1, None, True),
    ("model", "dropout"): ("--dropout", float, 0.0, 1.0, True),
    ("data", "shift"): ("--shift", int, 0, None, True),
    ("split", "fraction"): ("--validation", float, 0.0, 1.0, False),
    ("fit", "epochs"): ("--epochs", int, 1, None, True),
    ("fit", "patience"): ("--patience", int, 1, None, True),
    ("fit", "lr"): ("--lr", float, 0.0, None, False),
    ("run", "seed"): ("--seed", int, 0, None, True),
    ("run", "seeds"): ("--seeds", int, 1, None, True),
}


def _check_numbers(settings: dict[str, dict[str, Any]]) -> None:
    """Refuse a number out of range with the flag's name (not FitConfig's, nor a crash deep
    in the layout: ``--window 0`` divided by zero)."""
    import math

    for (section, key), (flag, kind, low, high, inclusive) in _NUMBERS.items():
        value = settings[section].get(key)
        if value is None:
            continue
        where = f"{flag} (or [{section}] {key} in --config)"
        if kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
            expected = f"an int >= {int(low)}"
        else:
            number = isinstance(value, int | float) and not isinstance(value, bool)
            ok = number and math.isfinite(value) and (value >= low if inclusive else value > low)
            ok = ok and (high is None or value < high)
            bound = f">= {low:g}" if inclusive else f"> {low:g}"
            expected = f"a number {bound}" + ("" if high is None else f" and < {high:g}")
        if not ok:
            raise CliError(f"{where} must be {expected}; received {value!r}")


def _threads_flag(value: str | None) -> int | str | None:
    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise CliError(f"--threads must be 'auto' or an int >= 1; received {value!r}") from None


def _merge_toml(settings: dict[str, dict[str, Any]], path: Path) -> None:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise CliError(
                "--config needs Python >= 3.11 (tomllib) or the tomli package: pip install tomli"
            ) from None

    if not path.is_file():
        raise CliError(f"config file {str(path)!r} does not exist")
    try:
        document = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise CliError(f"{path} is not valid TOML: {error}") from None
    fit_fields = recipe_fit_fields()
    for section, values in document.items():
        if section not in SECTIONS:
            raise CliError(
                f"{path}: unknown section [{section}]; known sections: {sorted(SECTIONS)}"
            )
        if not isinstance(values, dict):
            raise CliError(f"{path}: {section} must be a [{section}] table of settings")
        known = fit_fields if section == "fit" else SECTIONS[section]
        for key, value in values.items():
            if key not in known:
                raise CliError(
                    f"{path}: unknown setting {key!r} in [{section}]; known: {sorted(known)}"
                )
            if section == "data" and key == "path":
                value = str(path.parent / value) if not os.path.isabs(value) else value
            settings[section][key] = value
