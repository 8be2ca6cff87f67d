"""Run: the one type that owns a run directory.

::

    run_dir/
      model.json, model.safetensors        member 0 (config, weights, metadata)
      scaling.json, scaling.safetensors    its preparation (absent: the model reads raw values)
      members/seed-<s>/...                 the other members of a --seeds K ensemble

``Run.load(path)`` reads all of it (models, metadata, scaling, calendar features, covariates,
frequency); ``run.step_function()`` is the run as one stateful step function
(:class:`seqstate.recipe.step.RunStep`), which ``predict``, ``forecast``, ``evaluate``,
``backtest``, streams, the server and the exporters all run. Nobody else parses these files.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from seqstate.recipe.table import Columns

__all__ = ["Run", "RunMember", "selection_of"]


@dataclasses.dataclass(frozen=True)
class RunMember:
    """One trained model with the preparation it was trained with."""

    model: Any  # a seqstate.SequenceModel
    scaling: Any = None  # a seqstate.recipe.scaling.Scaling, or None
    calendar: tuple[str, ...] = ()
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Run:
    """A trained run: its members (one model, or an ensemble's) and what they were trained on.

    Attributes:
        members: member 0 is the run's own model; the others are ``--seeds K`` members.
        columns: the table columns the run reads (for a model saved without them, e.g. by
            ``seqstate.save_model``: ``x0, x1, ...`` -> ``y0, ...``).
        metadata: member 0's ``model.json`` metadata.
        frequency: the run's :class:`seqstate.recipe.calendar.Frequency`, or None.
        path: where it was loaded from (None for a run built in memory).
    """

    members: list[RunMember]
    columns: Columns
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    frequency: Any = None
    path: Path | None = None
    _step: Any = dataclasses.field(default=None, repr=False, compare=False)

    @classmethod
    def load(cls, path: str | Path) -> Run:
        """Read a run directory (``seqstate train``, ``backtest --out``, ``import-keras``)."""
        from seqstate.core.saved import load_model, read_model_json
        from seqstate.recipe.preparation import load as load_preparation
        from seqstate.recipe.preparation import member_dirs

        if not isinstance(path, str | os.PathLike):
            raise TypeError(
                f"path must be a run directory (str or path); received {type(path).__name__} "
                f"{path!r}"
            )
        members = []
        for directory in member_dirs(path):
            metadata = read_model_json(directory).get("metadata", {})
            scaling, calendar = load_preparation(directory, metadata)
            members.append(RunMember(load_model(directory), scaling, tuple(calendar), metadata))
        metadata = members[0].metadata
        data = metadata.get("data", {})
        if "columns" in data:
            columns = Columns.from_dict(data["columns"])
        else:
            model = members[0].model
            columns = Columns(
                features=tuple(f"x{i}" for i in range(model.input_size)),
                targets=tuple(f"y{j}" for j in range(model.output_size)),
                task=model.config.task,
            )
        return cls(members, columns, metadata, _frequency(data.get("frequency")), Path(path))

    def save(self, path: str | Path) -> Path:
        """Write the run directory (member 0 at ``path``, the others under ``members/``)."""
        from seqstate.core.saved import save_model
        from seqstate.recipe.preparation import MEMBERS_DIR, Preparation
        from seqstate.recipe.preparation import save as save_preparation

        root = Path(path)
        for k, member in enumerate(self.members):
            directory = root if k == 0 else root / MEMBERS_DIR / f"seed-{_seed(member, k)}"
            metadata = dict(member.metadata)
            data = dict(metadata.get("data", {}))
            data["columns"] = self.columns.to_dict()
            if self.frequency is not None:
                data["frequency"] = self.frequency.to_dict()
            metadata["data"] = data
            if member.scaling is not None:
                # the scaling files and the preparation entry that names the calendar (a run
                # built in memory has none: without it the calendar would not load back)
                directory.mkdir(parents=True, exist_ok=True)
                config = Preparation(member.scaling.config, tuple(member.calendar))
                metadata = {**save_preparation(directory, member.scaling, config), **metadata}
            save_model(member.model, directory, metadata=metadata)
        return root

    # --- what a caller needs to know ---------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """The run's inputs and outputs: ``inputs`` (raw columns in the order a step's ``x``
        holds them), ``targets``, ``covariates`` (known-future inputs), ``needs_time``,
        ``needs_series``, ``warmup_steps``, ``frequency``, ``members``, ``transforms``."""
        described = self.step_function().describe()
        return {
            **described,
            "task": self.columns.task,
            "shift": self.columns.shift,
            "id": self.columns.id,
            "time": self.columns.time,
            "path": str(self.path) if self.path is not None else None,
        }

    def step_function(self) -> Any:
        """The run as one :class:`seqstate.recipe.step.RunStep` (built once)."""
        if self._step is None:
            from seqstate.recipe.intervals import members_table
            from seqstate.recipe.step import RunStep

            self._step = RunStep(
                [(m.model, m.scaling, m.calendar) for m in self.members],
                self.columns,
                self.frequency,
                selection_of(self.members),
                members_table(self.members),
            )
        return self._step


def selection_of(members: Any) -> Any:
    """The members' validation choices (``metadata["selection"]``) as one
    :class:`seqstate.recipe.selection.Selection` (their weights averaged), or None when no
    member made one: the network alone."""
    from seqstate.recipe.selection import Selection, merge_selections

    chosen = [m.metadata.get("selection") for m in members]
    return merge_selections([Selection.from_dict(c) for c in chosen if c])


def _frequency(entry: Any) -> Any:
    if not entry:
        return None
    from seqstate.recipe.calendar import Frequency

    return Frequency.from_dict(entry)


def _seed(member: RunMember, k: int) -> int:
    seed = member.metadata.get("split", {}).get("seed")
    return int(seed) if isinstance(seed, int) else k
