"""Settings of ``seqstate train``/``doctor``/``backtest``: defaults <- ``--config`` TOML <- flags.

Also :class:`CliError`, the user-facing error every command raises (printed as one line by
:func:`seqstate.cli.dispatch.main`).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from seqstate.recipe.preparation import flag_settings as preparation_flag_settings
from seqstate.recipe.training import SECTIONS, default_settings
from seqstate.recipe.training import fit_fields as recipe_fit_fields

__all__ = ["CliError", "load_settings"]


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 1."""


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
    if not data["features"]:
        raise CliError(
            "no feature columns: give --features col1,col2 (or [data] features in --config)"
        )
    if not data["targets"]:
        data["targets"] = list(data["features"])
    if settings["split"]["by"] not in ("auto", "series", "time", "none"):
        raise CliError(
            f"split.by must be auto, series, time or none; received {settings['split']['by']!r}"
        )
    return settings


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
