"""The train recipe: table -> split -> normalisation -> model -> lanes -> fit -> run directory.

``seqstate train`` is :func:`train_run` over the settings the command line merged
(defaults <- run.toml <- flags, see :data:`SECTIONS`); ``seqstate doctor`` walks the same steps
(:func:`read_training_table`, :func:`split_training_table`, :func:`lanes_for`) without
training, and the demo builds its model with :func:`build_model`. Settings are a dict of
sections, ``settings["layout"]["window"]``; each step takes the whole dict so the run directory
can record exactly what was used (:func:`run_metadata`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "SECTIONS",
    "RunResult",
    "build_model",
    "default_settings",
    "fit_config_for",
    "fit_fields",
    "lanes_for",
    "read_training_table",
    "run_dir_for",
    "run_metadata",
    "split_training_table",
    "train_run",
]

Settings = dict[str, dict[str, Any]]

# Where each setting lives in a run.toml, its default, and what it means. CLI flags override.
SECTIONS: dict[str, dict[str, tuple[Any, str]]] = {
    "data": {
        "path": (None, "the table: .csv, .tsv or .parquet (relative to the config file)"),
        "features": (None, "input columns, in model order"),
        "targets": (None, "target columns (default: the features, i.e. forecast them)"),
        "id": (None, "series id column (default: the table is one series)"),
        "time": (None, "column to sort each series by (default: the file's order)"),
        "shift": (1, "y[t] = targets[t + shift]; 1 = next step, 0 = same step"),
        "task": ("regression", "regression | classification (one integer target column)"),
    },
    "split": {
        "by": ("auto", "series | time | none | auto (series if >= 2 series, else time)"),
        "fraction": (0.2, "share of series (by series) or of each series' end (by time)"),
    },
    "layout": {
        "lanes": (32, "B: sequences trained side by side (batch size)"),
        "window": (64, "T: steps per window, the truncated-BPTT length"),
        "shuffle": (True, "reassign sequences to lanes every epoch (never reorders steps)"),
    },
    "model": {
        "cell": ("lstm", "lstm | gru | rnn"),
        "hidden_size": (64, "units per recurrent layer"),
        "num_layers": (1, "stacked recurrent layers"),
        "dropout": (0.0, "dropout between recurrent layers"),
    },
    "fit": {},  # any seqstate.FitConfig field; filled in from FitConfig's defaults
    "run": {
        "out": (None, "run directory (default: runs/<data file stem>)"),
        "seed": (0, "seed of the split, the shuffle and training"),
    },
}


def default_settings() -> Settings:
    """Every section of :data:`SECTIONS` at its defaults (``fit`` empty: FitConfig's own)."""
    settings = {
        section: {key: default for key, (default, _) in keys.items()}
        for section, keys in SECTIONS.items()
    }
    settings["fit"] = {}
    return settings


def fit_fields() -> dict[str, Any]:
    """The keys a ``[fit]`` section may hold: FitConfig's fields and their defaults."""
    from seqstate.train import FitConfig

    return {f.name: f.default for f in dataclasses.fields(FitConfig)}


def fit_config_for(settings: Settings) -> Any:
    """The FitConfig of ``settings`` (``[run] seed`` seeds training unless ``[fit]`` says)."""
    from seqstate.train import FitConfig

    return FitConfig(**{"seed": settings["run"]["seed"], **settings["fit"]})


def run_dir_for(settings: Settings) -> Path:
    """``[run] out``, or ``runs/<data file stem>``."""
    return Path(settings["run"]["out"] or Path("runs") / Path(settings["data"]["path"]).stem)


def read_training_table(settings: Settings) -> Any:
    """The [data] table of ``settings``, read; ``train`` and ``doctor`` read it the same way."""
    from seqstate.sources import read_table

    data = settings["data"]
    return read_table(
        data["path"],
        features=data["features"],
        targets=data["targets"],
        id_column=data["id"],
        time_column=data["time"],
        shift=data["shift"],
        task=data["task"],
    )


def split_training_table(table: Any, settings: Settings) -> tuple[Any, Any, str]:
    """(train, validation or None, the split actually used)."""
    from seqstate.sources import split_table

    by = settings["split"]["by"]
    if by == "auto":
        by = "series" if len(table) >= 2 else "time"
    if by == "none":
        return table, None, by
    train, validation = split_table(
        table, by=by, fraction=settings["split"]["fraction"], seed=settings["run"]["seed"]
    )
    return train, validation, by


def build_model(table: Any, *, seed: int, task: str = "regression", **model: Any) -> Any:
    """A SequenceModel sized for ``table``, its initial weights drawn from ``seed``.

    ``model`` holds the [model] settings (cell, hidden_size, num_layers, dropout).
    """
    import torch

    from seqstate.model import SequenceModel

    torch.manual_seed(seed)  # the initial weights are part of the run
    return SequenceModel(
        input_size=table.num_features, output_size=table.num_outputs, task=task, **model
    )


def lanes_for(train: Any, validation: Any, settings: Settings) -> tuple[Any, Any]:
    """(training lanes, validation lanes or None) in the [layout] of ``settings``."""
    layout = settings["layout"]
    train_lanes = train.lanes(
        lanes=layout["lanes"],
        window=layout["window"],
        shuffle=bool(layout["shuffle"]) and len(train) > 1,
        seed=settings["run"]["seed"],
    )
    validation_lanes = None
    if validation is not None:
        validation_lanes = validation.lanes(
            lanes=layout["lanes"], window=layout["window"], segments=False
        )
    return train_lanes, validation_lanes


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What :func:`train_run` produced."""

    out: Path  # the run directory
    history: Any  # seqstate.History
    model: Any  # the trained SequenceModel (eval mode)


def train_run(
    settings: Settings,
    *,
    resume: bool = False,
    main: bool = True,
    announce: Callable[[str], None] | None = None,
) -> RunResult:
    """Train as ``seqstate train`` does and write the run directory.

    Args:
        settings: the merged sections (see :data:`SECTIONS`; ``[data] path``/``features`` set).
        resume: continue the interrupted run in the run directory.
        main: this process writes the final metadata (False on the other ranks of a
            distributed run, which only train).
        announce: receives one line describing the training lanes, before training.
    """
    from seqstate.checkpoint import read_model_json, save_model
    from seqstate.sources import Normalization
    from seqstate.train import fit

    config = fit_config_for(settings)  # validates before any file is touched
    out = run_dir_for(settings)
    if not resume and (out / "model.json").exists():
        raise ValueError(
            f"{out} already holds a run; pass --out to write elsewhere, or --resume to continue it"
        )

    table = read_training_table(settings)
    train, validation, split_by = split_training_table(table, settings)
    model = build_model(
        table, seed=settings["run"]["seed"], task=settings["data"]["task"], **settings["model"]
    )
    stats = Normalization.fit(train)
    stats.apply(model)
    train_lanes, validation_lanes = lanes_for(train, validation, settings)
    if main and announce is not None:
        announce(
            f"training on {len(train)} series ({int(train.lengths.sum())} steps) as {train_lanes!r}"
        )
    history = fit(
        model,
        train_lanes,
        validation=validation_lanes,
        config=config,
        run_dir=out,
        resume=True if resume else None,
    )
    if main:
        metadata = dict(read_model_json(out).get("metadata", {}))
        metadata.update(
            run_metadata(
                table, train, validation, split_by, stats, settings, train_lanes=train_lanes
            )
        )
        save_model(model, out, metadata=metadata)
    return RunResult(out=out, history=history, model=model)


def run_metadata(
    table: Any,
    train: Any,
    validation: Any,
    split_by: str,
    stats: Any,
    settings: Settings,
    *,
    train_lanes: Any,
) -> dict[str, Any]:
    """What ``evaluate``/``predict``/``forecast`` and people need to know about a run."""
    ids: dict[str, Any] = {}
    if table.columns.id is not None and len(table) <= 1000:
        ids = {"train": train.ids, "validation": validation.ids if validation else []}
    return {
        "data": {
            "source": str(settings["data"]["path"]),
            "columns": table.columns.to_dict(),
            "time_kind": _time_kind(table),
            **table.describe(),
        },
        "split": {
            "by": split_by,
            "fraction": settings["split"]["fraction"],
            "seed": settings["run"]["seed"],
            "train_series": len(train),
            "validation_series": len(validation) if validation is not None else 0,
            **({"ids": ids} if ids else {}),
        },
        "layout": {
            "lanes": train_lanes.num_lanes,
            "window": train_lanes.window,
            "shuffle": train_lanes.shuffle,
            "windows_per_epoch": len(train_lanes),
        },
        "normalization": stats.to_dict(),
    }


def _time_kind(table: Any) -> str:
    import numpy as np

    if table.columns.time is None:
        return "position"
    return "datetime" if np.issubdtype(table.times[0].dtype, np.datetime64) else "number"
