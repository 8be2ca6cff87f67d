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

import numpy as np

from seqstate.core.model_config import MODEL_SETTINGS
from seqstate.recipe.preparation import DEFAULTS as PREPARATION_DEFAULTS

__all__ = [
    "SECTIONS",
    "RunResult",
    "TrainingPlan",
    "build_model",
    "choose_defaults",
    "choose_distribution",
    "default_settings",
    "fit_config_for",
    "fit_fields",
    "holds_counts",
    "lanes_for",
    "plan_training",
    "prepare_training_table",
    "read_training_table",
    "refit_wanted",
    "run_dir_for",
    "run_metadata",
    "seed_settings",
    "split_training_table",
    "train_ensemble",
    "train_forecaster",
    "train_model",
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
        "by": (
            "auto",
            "time | series | none | auto (time when every series is long enough, else series); "
            "time: the last fraction of every series, validated warm (after the series' "
            "history)",
        ),
        "fraction": (0.2, "share of series (by series) or of each series' end (by time)"),
        "refit": (
            "auto",
            "after early stopping, train again on every row for the best number of epochs: "
            "auto (when split by time: the held-out tail is the most recent data) | true | false",
        ),
    },
    "layout": {
        "lanes": (None, "B: sequences trained side by side (default: from the data)"),
        "window": (None, "T: steps per window, the truncated-BPTT length (default: from the data)"),
        "shuffle": (True, "reassign sequences to lanes every epoch (never reorders steps)"),
    },
    "model": dict(MODEL_SETTINGS),  # seqstate.core.model_config: the model's shorthand
    "scaling": dict(PREPARATION_DEFAULTS),  # seqstate.recipe.preparation: scaling and transforms
    "fit": {},  # any seqstate.FitConfig field; filled in from FitConfig's defaults
    "run": {
        "out": (None, "run directory (default: runs/<data file stem>)"),
        "seed": (0, "seed of the split, the shuffle and training"),
        "seeds": (1, "K: train K seeds (seed, seed+1, ...); predict/forecast average them"),
        "threads": ("auto", "intra-op threads: auto (1 unless the model is large) or N"),
        "select": (
            "auto",
            "auto: score the network against seasonal naive, damped ETS, Theta and their "
            "combinations on the last validation windows; answer with seasonal naive unless "
            "one beats it clearly | network: the network alone",
        ),
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
    from seqstate.recipe.sources import read_table

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
    """(train, validation or None, the split actually used).

    By time, validation is a :class:`seqstate.recipe.holdout.Tail`: the whole series, scored only
    after each series' cut, so it runs warm (with the state of the series' history).
    """
    from seqstate.recipe.holdout import split_tail
    from seqstate.recipe.sources import split_table

    by, fraction = settings["split"]["by"], settings["split"]["fraction"]
    if by == "none":
        return table, None, by
    if by in ("auto", "time"):
        try:
            train, tail = split_tail(table, fraction)
            return train, tail, "time"
        except ValueError:
            if by == "time" or len(table) < 2:
                raise
            by = "series"  # auto: some series are too short for a tail of their own
    train, validation = split_table(table, by=by, fraction=fraction, seed=settings["run"]["seed"])
    return train, validation, by


def choose_defaults(train: Any, settings: Settings) -> Any:
    """Fill the layout and epoch settings left unset from the training series, in place;
    returns the :class:`seqstate.recipe.choices.Choices` (each value with why)."""
    from seqstate.recipe.choices import apply

    shift = train.columns.shift
    return apply(settings, np.maximum(train.lengths - shift, 1))


def refit_wanted(settings: Settings, split_by: str) -> bool:
    """Whether the recipe trains again on every row after choosing the epochs."""
    refit = settings["split"].get("refit", "auto")
    if refit not in ("auto", True, False, "true", "false"):
        raise ValueError(f"split.refit must be auto, true or false; received {refit!r}")
    if refit in ("auto",):
        return split_by == "time"
    return refit in (True, "true")


def build_model(table: Any, *, seed: int, task: str = "regression", **model: Any) -> Any:
    """A SequenceModel sized for ``table``, its initial weights drawn from ``seed``.

    ``model`` holds the [model] settings (cell, hidden_size, num_layers, dropout).
    """
    import torch

    from seqstate.core.model import SequenceModel

    model = dict(model)
    head = choose_distribution(
        table, model.pop("distribution", "none"), model.pop("quantiles", "0.1,0.5,0.9"), task
    )
    torch.manual_seed(seed)  # the initial weights are part of the run
    return SequenceModel(
        input_size=table.num_features,
        output_size=table.num_outputs,
        task=task,
        distribution=head,
        **model,
    )


def holds_counts(table: Any) -> bool:
    """Whether every target of ``table`` is a non-negative integer (what negbin models)."""
    return all(bool(np.all(t >= 0) and np.all(t == np.round(t))) for t in table.targets if t.size)


def choose_distribution(table: Any, name: Any, quantiles: Any, task: str) -> Any:
    """The [model] distribution for the model-space ``table``: None (a point model) or a
    :class:`seqstate.core.distributions.DistributionHead`. ``auto``: negbin when every target
    is a non-negative integer (counts the transforms left as counts), studentt otherwise."""
    from seqstate.core.distributions import DISTRIBUTIONS, DistributionHead

    if name in (None, "none") or task != "regression":
        return None
    if name not in ("auto", *DISTRIBUTIONS):
        raise ValueError(
            f"model.distribution must be none, auto or one of {list(DISTRIBUTIONS)}; received "
            f"{name!r}"
        )
    counts = holds_counts(table)
    if name == "auto":
        name = "negbin" if counts else "studentt"
    if name == "negbin" and not counts:
        raise ValueError(
            "model.distribution negbin models counts, but the model-space targets are not all "
            "non-negative integers (the run's scaling or transforms changed them, or the data "
            "are not counts); use --scaling none --seasonal-difference 0 without --transform "
            "or --difference, or --distribution studentt"
        )
    if isinstance(quantiles, str):
        try:
            levels = tuple(float(part) for part in quantiles.split(",") if part.strip())
        except ValueError:
            raise ValueError(
                f"model.quantiles must be levels like 0.1,0.5,0.9; received {quantiles!r}"
            ) from None
    else:
        levels = tuple(quantiles)
    return DistributionHead(name, levels)


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
class PreparedTable:
    """What :func:`prepare_training_table` did to the table."""

    preparation: Any  # seqstate.recipe.preparation.Preparation: the resolved [scaling] settings
    scaling: Any  # seqstate.recipe.scaling.Scaling fitted on the training part


def prepare_training_table(table: Any, settings: Settings) -> tuple[Any, PreparedTable]:
    """The raw table in model space, as [scaling] says (``auto``: chosen from the data).

    Targets transformed and differenced over whole series (causal), the statistics fitted on
    the training part of the split :func:`split_training_table` makes of the transformed
    table (the same split the recipe then makes of the returned one), every series scaled,
    the calendar columns appended.
    """
    from seqstate.recipe.covariates import with_calendar
    from seqstate.recipe.preparation import resolve
    from seqstate.recipe.scaling import Scaling, transform_table

    preparation = resolve(table, settings["scaling"])
    transformed = transform_table(table, preparation.scaling)
    train, _, _ = split_training_table(transformed, settings)
    scaling = Scaling.fit(train, preparation.scaling, transformed=True)
    scaled = with_calendar(scaling.scale_table(transformed), preparation.calendar)
    return scaled, PreparedTable(preparation, scaling)


@dataclasses.dataclass(frozen=True)
class TrainingPlan:
    """Every choice made before training, in one place: ``train`` trains on it, ``doctor``
    prints it, so the two never disagree (the layout follows from the *prepared* table:
    differencing at lag m shortens every series by m steps)."""

    table: Any  # the whole table in model space (transformed, scaled, calendar appended)
    prepared: PreparedTable
    train: Any  # the training part of ``table``
    validation: Any  # its validation part (a holdout.Tail when split by time), or None
    split_by: str  # the split actually used: time | series | none
    defaults: Any  # seqstate.recipe.defaults.Defaults, already filled into the settings
    refit: bool  # train again on every row for the best epoch count

    def lines(self) -> list[tuple[str, str]]:
        """``(topic, text)`` for each choice, with its reason: what ``train`` prints at its
        start and ``doctor`` in its report."""
        preparation = self.prepared.preparation
        scaling = preparation.scaling
        lines = [
            (
                "Scaling",
                f"method {scaling.method}, transform {scaling.transform}, difference "
                f"{scaling.difference}, season {scaling.season}, calendar "
                f"{list(preparation.calendar)}",
            )
        ]
        lines += [("  why", reason) for reason in preparation.reasons]
        train, validation = self.train, self.validation
        if validation is None:
            lines.append(("Split", "none: no validation (--split none)"))
        else:
            tail = (
                " (the last part of every series, scored after warming up on the series' history)"
                if self.split_by == "time"
                else ""
            )
            lines.append(
                (
                    "Split",
                    f"by {self.split_by}: {len(train)} series / {int(train.lengths.sum())} steps "
                    f"train, {len(validation)} series / {int(validation.lengths.sum())} steps "
                    f"validation{tail}; normalisation is fitted on train only",
                )
            )
        for choice in self.defaults:
            lines.append(("Setting" if choice.given else "Default", choice.line()))
        if validation is not None:
            lines.append(
                (
                    "Refit",
                    "after early stopping, a fresh model trains on every row for the best "
                    "epoch count (--no-refit to keep the early-stopped one)"
                    if self.refit
                    else "none: the early-stopped model is kept",
                )
            )
        return lines


def plan_training(raw: Any, settings: Settings) -> TrainingPlan:
    """The [scaling] preparation, the split and the defaults of training on the raw table,
    as ``train`` makes them; the chosen layout and epochs are filled into ``settings``."""
    table, prepared = prepare_training_table(raw, settings)
    train, validation, split_by = split_training_table(table, settings)
    defaults = choose_defaults(train, settings)
    refit = validation is not None and refit_wanted(settings, split_by)
    return TrainingPlan(table, prepared, train, validation, split_by, defaults, refit)


def seed_settings(settings: Settings) -> list[Settings]:
    """``[run] seeds`` = K: K copies of ``settings`` with the seeds s, s+1, ..., s+K-1 (the
    members of an ensemble; ``train`` and ``backtest`` both train these)."""
    import copy

    seeds = settings["run"]["seeds"]
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        error = ValueError if isinstance(seeds, int) and not isinstance(seeds, bool) else TypeError
        raise error(f"[run] seeds must be an int >= 1 (--seeds K); received {seeds!r}")
    members = []
    for k in range(seeds):
        member = copy.deepcopy(settings)
        member["run"]["seed"] = settings["run"]["seed"] + k
        members.append(member)
    return members


def train_ensemble(
    settings: Settings,
    *,
    resume: bool = False,
    announce: Callable[[str], None] | None = None,
) -> list[RunResult]:
    """``[run] seeds`` = K runs: seed s into the run directory, seeds s+1 ... s+K-1 into
    ``members/seed-<s+k>/`` inside it. ``predict``/``forecast`` average the members."""
    from seqstate.recipe.preparation import MEMBERS_DIR

    out = run_dir_for(settings)
    members = seed_settings(settings)
    results = []
    for k, member in enumerate(members):
        seed = member["run"]["seed"]
        if k:
            member["run"]["out"] = str(out / MEMBERS_DIR / f"seed-{seed}")
            if announce is not None:
                announce(f"ensemble member {k + 1}/{len(members)}: seed {seed}")
        results.append(train_run(member, resume=resume, announce=announce if not k else None))
    return results


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What :func:`train_run` produced."""

    out: Path  # the run directory
    history: Any  # seqstate.History of the run whose weights were kept
    model: Any  # the trained SequenceModel (eval mode)
    defaults: Any = None  # seqstate.recipe.choices.Choices: the settings chosen from the data
    selection: Any = None  # with a refit: the History that chose the number of epochs
    chosen: Any = None  # seqstate.recipe.selection.Selection: what the run answers with


#: With a refit, the run that chose the number of epochs (validation) lives here.
SELECTION_DIR = "selection"


def train_run(
    settings: Settings,
    *,
    resume: bool = False,
    main: bool = True,
    announce: Callable[[str], None] | None = None,
) -> RunResult:
    """Train as ``seqstate train`` does and write the run directory.

    The layout and epoch budget left unset are chosen from the data
    (:func:`choose_defaults`). With a validation set, early stopping picks the best epoch; with
    a refit (:func:`refit_wanted`: by default when split by time), a fresh model is then
    trained on every row for that many epochs, and the selection run is kept in
    ``<run>/selection/``.

    Args:
        settings: the merged sections (see :data:`SECTIONS`; ``[data] path``/``features`` set).
        resume: continue the interrupted run in the run directory.
        main: this process writes the final metadata (False on the other ranks of a
            distributed run, which only train).
        announce: receives lines describing the chosen settings and the training lanes,
            before training.
    """
    from seqstate.core.saved import read_model_json, save_model
    from seqstate.recipe.preparation import save as save_preparation

    fit_config_for(settings)  # validates before any file is touched
    out = run_dir_for(settings)
    if not resume and (out / "model.json").exists():
        raise ValueError(
            f"{out} already holds a run; pass --out to write elsewhere, or --resume to continue it"
        )

    raw = read_training_table(settings)
    fitted = _train_on(
        raw, settings, run_dir=out, resume=resume, announce=announce if main else None
    )
    model, stats, train_lanes, history = fitted.fit
    train, validation, split_by = fitted.split
    prepared, defaults, selection, refit = (
        fitted.prepared,
        fitted.defaults,
        fitted.selection,
        fitted.selection is not None,
    )
    if main:
        metadata = dict(read_model_json(out).get("metadata", {}))
        metadata.update(
            run_metadata(raw, train, validation, split_by, stats, settings, train_lanes=train_lanes)
        )
        metadata["defaults"] = defaults.to_dict()
        metadata["split"]["refit"] = refit
        if selection is not None:
            metadata["split"]["selection"] = {
                "best_epoch": selection.best_epoch,
                "epochs_trained": len(selection),
                "directory": SELECTION_DIR,
            }
        metadata.update(save_preparation(out, prepared.scaling, prepared.preparation))
        if fitted.chosen is not None:
            metadata["selection"] = fitted.chosen.to_dict()
        if fitted.intervals is not None:
            metadata["intervals"] = fitted.intervals.to_dict()
        save_model(model, out, metadata=metadata)
    return RunResult(out, history, model, defaults, selection, fitted.chosen)


@dataclasses.dataclass(frozen=True)
class _Trained:
    """One training of the recipe on a raw table (what :func:`_train_on` did)."""

    fit: tuple[Any, Any, Any, Any]  # (model, normalisation, training lanes, history) kept
    split: tuple[Any, Any, str]  # (train, validation or None, split used), in model space
    prepared: PreparedTable
    defaults: Any  # seqstate.recipe.choices.Choices
    selection: Any  # with a refit: the History that chose the number of epochs, else None
    chosen: Any = None  # seqstate.recipe.selection.Selection from the validation windows
    intervals: Any = None  # seqstate.recipe.intervals.IntervalTable of the chosen forecast


def _train_on(
    raw: Any,
    settings: Settings,
    *,
    run_dir: Path | None,
    resume: bool,
    announce: Callable[[str], None] | None,
) -> _Trained:
    """The recipe on the raw ``table``: threads, [scaling] preparation, split, defaults from
    the data (filled into ``settings``), fit, and the refit on every row when wanted.

    ``seqstate train`` (:func:`train_run`, with a run directory) and ``seqstate backtest``
    (:func:`train_model`, without) both train through here, so a backtest scores the model
    ``train`` would write.
    """
    from seqstate.recipe.threads import apply_threads

    layout_lanes, hidden = settings["layout"].get("lanes"), settings["model"].get("hidden_size")
    apply_threads(
        settings["run"]["threads"],
        lanes=layout_lanes if isinstance(layout_lanes, int) else 32,
        hidden_size=hidden if isinstance(hidden, int) else 64,
    )
    plan = plan_training(raw, settings)
    table, prepared, defaults, refit = plan.table, plan.prepared, plan.defaults, plan.refit
    train, validation, split_by = plan.train, plan.validation, plan.split_by
    if announce is not None:
        for topic, text in plan.lines():
            announce(f"  {topic:<9} {text}")
    from seqstate.train.runfiles import CHECKPOINT_DIR
    from seqstate.train.snapshots import has_snapshot

    first_dir = run_dir / SELECTION_DIR if refit and run_dir is not None else run_dir
    begun = first_dir is not None and has_snapshot(first_dir / CHECKPOINT_DIR)
    if resume and not begun and announce is not None:
        # (stopped before its first checkpoint: the seeded run from the start is the same run)
        announce("resume: no checkpoint was written yet; training from the start")
    fitted = _fit_on(
        train,
        validation,
        settings,
        run_dir=first_dir,
        resume=resume and begun,
        announce=announce,
    )
    chosen = select_members(raw, fitted[0], prepared, validation, settings)
    intervals = _calibrate(raw, fitted[0], prepared, validation, chosen)
    selection = None
    if refit:
        selection = fitted[3]
        refit_settings = _refit_settings(settings, selection)
        if announce is not None:
            announce(
                f"refit: training again on every row ({int(table.lengths.sum())} steps) for "
                f"{refit_settings['fit']['epochs']} epoch(s), the best epoch count on validation"
            )
        fitted = _fit_on(
            table,
            None,
            refit_settings,
            run_dir=run_dir,
            # the refit may not have begun
            resume=resume and run_dir is not None and has_snapshot(run_dir / CHECKPOINT_DIR),
            announce=None,
        )
    return _Trained(
        fitted, (train, validation, split_by), prepared, defaults, selection, chosen, intervals
    )


def _calibrate(raw: Any, model: Any, prepared: PreparedTable, validation: Any, chosen: Any) -> Any:
    """The intervals of the run's point forecast from its validation errors
    (:func:`seqstate.recipe.calibration.calibrate`), or None."""
    from seqstate.recipe.calibration import calibrate
    from seqstate.recipe.evaluation_checks import infer_seasons

    return calibrate(raw, model, prepared, validation, chosen, infer_seasons(raw))


def select_members(
    raw: Any, model: Any, prepared: PreparedTable, validation: Any, settings: Settings
) -> Any:
    """The :class:`seqstate.recipe.selection.Selection` of the network ``model`` (trained on
    the training part) against the baselines on the validation windows, or None (``[run]
    select = network``, no validation, or a run that cannot forecast recursively).

    Split by time, the windows are the end of each series' held-out tail; split by series,
    the second half of each held-out series (the network never saw those series).
    """
    from seqstate.recipe.evaluation_checks import infer_seasons
    from seqstate.recipe.holdout import Tail
    from seqstate.recipe.run_forecaster import RunForecaster, RunMember
    from seqstate.recipe.selection import validate_selection

    select = settings["run"].get("select", "auto")
    if select not in ("auto", "network"):
        raise ValueError(f"[run] select must be 'auto' or 'network'; received {select!r}")
    if select == "network" or validation is None or raw.columns.task != "regression":
        return None
    if isinstance(validation, Tail):
        table, cuts = raw, [int(c) for c in validation.cuts]
    else:
        positions = {identity: i for i, identity in enumerate(raw.ids)}
        table = raw.select([positions[identity] for identity in validation.ids])
        cuts = [int(length) // 2 for length in table.lengths]
    network = RunForecaster(
        [RunMember(model, prepared.scaling, tuple(prepared.preparation.calendar))]
    )
    return validate_selection(network, table, cuts, seasons=infer_seasons(raw))


def train_model(
    table: Any, settings: Settings, *, announce: Callable[[str], None] | None = None
) -> Any:
    """Train on the raw ``table`` (already read) as ``seqstate train`` would, writing no
    files: the same [scaling] preparation, defaults, split and refit rule.

    Returns the :class:`seqstate.recipe.run_forecaster.RunMember` (the model with its scaling and
    calendar), what ``run_forecaster.load_forecaster`` would read back from the run
    directory ``train`` writes. ``settings`` is not changed: the defaults are chosen on a copy.
    """
    import copy

    from seqstate.recipe.run_forecaster import RunMember

    settings = copy.deepcopy(settings)
    trained = _train_on(table, settings, run_dir=None, resume=False, announce=announce)
    prepared = trained.prepared
    chosen, intervals = trained.chosen, trained.intervals
    metadata = {"selection": chosen.to_dict()} if chosen is not None else {}
    if intervals is not None:
        metadata["intervals"] = intervals.to_dict()
    calendar = tuple(prepared.preparation.calendar)
    return RunMember(trained.fit[0], prepared.scaling, calendar, metadata)


def train_forecaster(
    table: Any, settings: Settings, *, announce: Callable[[str], None] | None = None
) -> Any:
    """:func:`train_model` for each seed of ``[run] seeds`` (:func:`seed_settings`, as
    :func:`train_ensemble` trains them): the ``run_forecaster.RunForecaster`` that
    ``load_forecaster`` would return for the run ``seqstate train`` writes. No files."""
    from seqstate.recipe.run_forecaster import RunForecaster

    members = seed_settings(settings)
    return RunForecaster(
        [
            train_model(table, member, announce=announce if not k else None)
            for k, member in enumerate(members)
        ]
    )


def _refit_settings(settings: Settings, history: Any) -> Settings:
    """``settings`` for the refit on every row: the best epoch count, no early stopping."""
    epochs = (history.best_epoch if history.best_epoch is not None else len(history) - 1) + 1
    fit = {key: value for key, value in settings["fit"].items() if key != "patience"}
    return {**settings, "fit": {**fit, "epochs": epochs}}


def _fit_on(
    train: Any,
    validation: Any,
    settings: Settings,
    *,
    run_dir: Path | None,
    resume: bool,
    announce: Callable[[str], None] | None,
) -> tuple[Any, Any, Any, Any]:
    """(model, normalisation, training lanes, history) of one fit of a fresh model."""
    from seqstate.recipe.sources import Normalization
    from seqstate.train import fit

    model = build_model(
        train, seed=settings["run"]["seed"], task=settings["data"]["task"], **settings["model"]
    )
    stats = Normalization.fit(train)
    stats.apply(model)
    train_lanes, validation_lanes = lanes_for(train, validation, settings)
    if announce is not None:
        head = getattr(model.config, "distribution", None)
        if head is not None:
            why = " (auto: " + ("counts" if head.name == "negbin" else "not counts") + ")"
            asked = settings["model"].get("distribution")
            announce(
                f"output: a {head.name} distribution head{why if asked == 'auto' else ''}; "
                "the forecasts are its medians, `seqstate forecast --samples N` its quantiles"
            )
        announce(
            f"training on {len(train)} series ({int(train.lengths.sum())} steps) as {train_lanes!r}"
        )
    history = fit(
        model,
        train_lanes,
        validation=validation_lanes,
        config=fit_config_for(settings),
        run_dir=run_dir,
        resume=True if resume else None,
    )
    return model, stats, train_lanes, history


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
            **_time_range(table),
            **_frequency(table),
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


def _frequency(table: Any) -> dict[str, Any]:
    """The calendar step of the table's longest series, for forecasts from a stream's last
    time (``Run.load`` reads it back); nothing where the times are not dates."""
    if _time_kind(table) != "datetime":
        return {}
    from seqstate.recipe.calendar import observed_frequency

    longest = max(range(len(table)), key=lambda i: len(table.times[i]))
    frequency = observed_frequency(table.times[longest])
    if frequency is None:
        return {}
    return {"frequency": frequency.to_dict()}


def _time_range(table: Any) -> dict[str, Any]:
    """The first and last time in the table (for ``evaluate`` to tell trained rows)."""
    if table.columns.time is None:
        return {}
    firsts = [times[0] for times in table.times]
    lasts = [times[-1] for times in table.times]

    def text(value: Any) -> Any:
        if isinstance(value, np.datetime64):
            return str(value.astype("datetime64[s]"))
        return value.item() if isinstance(value, np.generic) else value

    return {"time_first": text(min(firsts)), "time_last": text(max(lasts))}
