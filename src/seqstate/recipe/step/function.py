"""RunStep: a trained run as one stateful step function, raw rows in, raw answers out.

::

    raw x [B, T, F], time [B, T] ──► transform cells ──► core ──► head ──► inverse ──► y [B, T, O]
             │ steps, time                │ location, scale,   │ model    │      (raw units)
             │                            │ history (a member) │ state    │
             └────────────── RunState, carried by the caller ───────────────┘

Each ensemble member runs its own cells (members may have been fitted on different training
series, so their statistics can differ), its model, and its inverse; the answer is the mean
over members in raw units (:meth:`RunStep.step_members` gives each member's). A table is many
steps: ``seqstate predict`` / ``forecast`` call this function, chunk by chunk.

The plain loop one step stands for, for one member and one row (lags (1,), log transform,
per-series scaling)::

    w = log(x[targets]);  z = w - history[-1];  history = [*history[1:], w]
    m = ((x with z for the targets) - location) / scale, then calendar(time) appended
    out, model_state = model(m, model_state)                 # skipped while steps < D
    y = exp(out * scale_t + location_t + history[-1])        # the next value, raw units
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

import numpy as np
import torch
from torch import nn

from seqstate.core.state import State
from seqstate.inference.direct import DirectStep
from seqstate.inference.sampling import Generators, draw, stream_generators
from seqstate.inference.streams import advance
from seqstate.recipe.calendar import check_date_range
from seqstate.recipe.step import cells
from seqstate.recipe.step.blend import NETWORK, Blend
from seqstate.recipe.step.history_scale import HistoryScale
from seqstate.recipe.step.state import (
    Entry,
    Floats,
    RunState,
    StepTransforms,
    as_array,
    as_floats,
    entry_of,
    fewest_steps,
)

__all__ = ["NO_TIME", "MemberStep", "RunStep"]

_T = TypeVar("_T")

NO_TIME = -(2**63)  # the "time" of a stream that has not been given one

# x of at most this many values is checked in Python floats (a served step of a few streams)
_SMALL = 64


class MemberStep(nn.Module):
    """One member's cells, model and inverse (see :class:`RunStep`).

    Args:
        model: the member's trained model (a :class:`seqstate.SequenceModel`).
        columns: the run's table columns (:class:`seqstate.recipe.table.Columns`).
        inputs: the raw input column names, in the order ``x`` holds them.
        scaling: the member's fitted :class:`seqstate.recipe.scaling.Scaling`, or None.
        calendar: its calendar features (``month``, ``weekday``, ``hour``).
    """

    def __init__(
        self,
        model: nn.Module,
        columns: Any,
        inputs: Sequence[str],
        scaling: Any,
        calendar: Sequence[str],
    ) -> None:
        super().__init__()
        self.model = model
        self.scaling = scaling
        features = list(columns.features)
        targets = list(columns.targets)
        self.regression = columns.task == "regression"
        config = scaling.config if scaling is not None else None
        lags = config.lags if config is not None else ()
        kind = config.transform if config is not None else "none"
        self.transform = cells.TargetTransform(kind)
        self.difference = cells.Difference(lags, columns.shift)
        self.calendar = cells.Calendar(calendar)
        self.order = self.difference.order
        self.outputs = len(targets) if self.regression else int(getattr(model, "output_size", 0))
        # a distribution head: the state keeps the last step's raw parameters for sample paths
        head = getattr(getattr(model, "config", None), "distribution", None)
        self.head = head if self.regression else None
        # the table code transforms the targets (and their feature columns) only when it must
        self.transforms_targets = self.regression and (kind != "none" or bool(lags))
        self.feature_count = len(features)
        self.register_buffer(
            "target_inputs",
            torch.tensor(
                [inputs.index(t) for t in targets] if self.transforms_targets else [],
                dtype=torch.long,
            ),
        )
        pairs = [(features.index(t), j) for j, t in enumerate(targets) if t in features]
        self.register_buffer("fed_features", torch.tensor([f for f, _ in pairs], dtype=torch.long))
        self.register_buffer("fed_targets", torch.tensor([j for _, j in pairs], dtype=torch.long))
        # every target is fed, in order (the usual forecasting run): no gather of z
        self.feeds_all = [j for _, j in pairs] == list(range(len(targets)))
        self.covariate_names = [name for name in features if name not in targets]
        # The same indices as NumPy arrays for the one-step path (forward_row), never moved.
        self.target_input_rows = self.target_inputs.numpy().copy()
        self.fed_feature_rows = self.fed_features.numpy().copy()
        self.fed_target_rows = self.fed_targets.numpy().copy()
        self.target_input_list = self.target_input_rows.tolist()
        # (consecutive columns, the usual layout: slices, not gathers)
        self.target_input_span = cells.span(self.target_input_list)
        self.fed_feature_span = cells.span(self.fed_feature_rows.tolist())
        # (location, scale tensors, their floats) of the last stream forward_single scaled
        self.statistics_floats: tuple[torch.Tensor, torch.Tensor, list, list] | None = None
        self.fed_pairs = [(int(f), j) for f, j in pairs]
        self.prepares = self.transforms_targets or scaling is not None
        #: forward_row computes this member's steps: it has no answer delay to carry
        self.steps_rows = self.difference.delay == 0
        self.input_width = self.feature_count + self.calendar.width
        self.register_buffer(
            "covariate_features",
            torch.tensor([features.index(n) for n in self.covariate_names], dtype=torch.long),
        )
        self.scale: cells.Scaling | None = None
        if scaling is not None:
            self.scale = cells.Scaling(
                [scaling.columns.index(name) for name in features],
                [scaling.columns.index(name) for name in scaling.targets],
            )
            self.register_buffer(
                "covariate_columns",
                torch.tensor(
                    [scaling.columns.index(n) for n in self.covariate_names], dtype=torch.long
                ),
            )
        self.row_cells = (self.transform, self.difference, self.scale, self.calendar, model)
        #: a parameter of a model one step of which :func:`seqstate.advance` runs on its cell
        #: kernels (its dtype and device, read each step, follow ``.to()``); None: forward
        self.probe: torch.Tensor | None = (
            next(model.parameters(), None) if DirectStep.of(model) is not None else None
        )

    target_inputs: torch.Tensor
    fed_features: torch.Tensor
    fed_targets: torch.Tensor
    covariate_features: torch.Tensor
    covariate_columns: torch.Tensor

    # --- state -------------------------------------------------------------------------------

    def initial_state(
        self, series: Sequence[Any], context: Any, prefix: str
    ) -> tuple[dict[str, torch.Tensor], State]:
        """This member's transform state (names ``prefix + ...``) and zero model state."""
        b = len(series)
        transforms = {
            prefix + "history": torch.zeros((b, self.order, self.outputs), dtype=torch.float64),
            prefix + "output": torch.full((b, self.outputs), float("nan")),
        }
        if self.difference.delay:
            # the differences predicted in the last `delay` steps, not yet integrated
            shape = (b, self.difference.delay, self.outputs)
            transforms[prefix + "pending"] = torch.full(shape, float("nan"), dtype=torch.float64)
        if self.head is not None:
            width = self.head.parameter_count * self.outputs
            transforms[prefix + "parameters"] = torch.zeros((b, width))
        if self.scaling is not None:
            location, scale = self._statistics(series, context)
            transforms[prefix + "location"] = location
            transforms[prefix + "scale"] = scale
        model_state = self.model.initial_state(b)  # type: ignore[operator]
        return transforms, model_state

    def _statistics(self, series: Sequence[Any], context: Any) -> tuple[torch.Tensor, torch.Tensor]:
        scaling = self.scaling
        rows_location, rows_scale = [], []
        for i, series_id in enumerate(series):
            row = scaling.row_of(series_id) if scaling.config.method == "series" else 0
            if row is not None:
                location, scale = scaling.location[row], scaling.scale[row]
            elif context is not None:
                # A series the run never saw: scaled from its own rows, as predict does.
                transformed = scaling.transform_table(context.select([i]))
                location, scale = scaling.statistics_for(transformed, 0)
            else:
                known = [str(s) for s in scaling.ids[:5]]
                raise ValueError(
                    f"series {series_id!r} was not among the {len(scaling.ids)} series this run "
                    f"scaled on (e.g. {known}), so a stream has no statistics to scale it by; "
                    "give its history as context (initial_state(series, context=table)), or "
                    "use a run trained with --scaling global."
                )
            rows_location.append(np.asarray(location, dtype=np.float64))
            rows_scale.append(np.asarray(scale, dtype=np.float64))
        width = len(scaling.columns)
        shape = (len(series), width)
        location_t = torch.from_numpy(np.stack(rows_location)) if series else torch.zeros(shape)
        scale_t = torch.from_numpy(np.stack(rows_scale)) if series else torch.ones(shape)
        return location_t.to(torch.float64), scale_t.to(torch.float64)

    # --- one chunk ---------------------------------------------------------------------------

    def forward(
        self,
        transforms: Mapping[str, torch.Tensor],
        model_state: State,
        x: torch.Tensor,
        time: torch.Tensor | None,
        valid: torch.Tensor | None,
        prefix: str,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], State]:
        """``x [B, T, F_raw]`` float32 -> ``y [B, T, O]`` float64 raw units (NaN where not
        ``valid [B, T]``; None: every step has its difference), this member's new transform
        state and model state."""
        steps = x.shape[1]
        new: dict[str, torch.Tensor] = {}
        full = None
        location = scale = x  # (read only where self.scale is set)
        if not (self.transforms_targets or self.scale is not None):
            # raw values are the model's inputs: no float64 round trip
            inputs = x if x.shape[2] == self.feature_count else x[..., : self.feature_count]
        else:
            x64 = x.to(torch.float64)
            features = x64 if x.shape[2] == self.feature_count else x64[..., : self.feature_count]
            if self.transforms_targets:
                w = self.transform.forward(x64.index_select(2, self.target_inputs))  # (B, T, O)
                full = torch.cat([transforms[prefix + "history"], w], dim=1)  # (B, D + T, O)
                z = self.difference.forward(full, steps) if self.order else w
                # the table code stores the transformed columns as float32 before scaling them
                z = z.to(torch.float32).to(torch.float64)
                if self.fed_features.numel():
                    fed = z if self.feeds_all else z.index_select(2, self.fed_targets)
                    features = features.index_copy(2, self.fed_features, fed)
                if self.order:
                    new[prefix + "history"] = full[:, steps:]
            if self.scale is not None:
                # [B, 1, C] once: the inverse picks from the same views
                location = transforms[prefix + "location"][:, None]
                scale = transforms[prefix + "scale"][:, None]
                features = self.scale.forward(features, location, scale)
            inputs = features.to(torch.float32)
        if self.calendar.kinds:
            time = _checked_time(time, self.calendar.kinds)
            inputs = torch.cat([inputs, self.calendar.forward(time)], dim=2)
        if valid is not None:
            # warm-up steps (no difference yet) leave the model state as it is
            inputs = torch.where(valid[..., None], inputs, inputs.new_zeros(()))
            y, raw, model_state = self._model(inputs, model_state, valid)
            last = transforms[prefix + "output"]
            new[prefix + "output"] = torch.where(valid[:, -1:], y[:, -1].to(last.dtype), last)
            if raw is not None:
                kept = transforms[prefix + "parameters"]
                new[prefix + "parameters"] = torch.where(valid[:, -1:], raw[:, -1], kept)
        else:
            y, raw, model_state = self._model(inputs, model_state, None)
            new[prefix + "output"] = y[:, -1]
            if raw is not None:
                new[prefix + "parameters"] = raw[:, -1]
        out = y.to(torch.float64)
        if valid is not None:
            out = torch.where(valid[..., None], out, out.new_full((), float("nan")))
        if self.regression:
            if self.scale is not None:
                out = self.scale.inverse(out, location, scale)
            if full is not None and self.order:
                if self.difference.delay:
                    # each step integrates the difference made `delay` steps before it
                    joined = torch.cat([transforms[prefix + "pending"], out], dim=1)
                    new[prefix + "pending"] = joined[:, steps:]
                    out = self.difference.inverse(joined[:, :steps], full, shift=1)
                else:
                    out = self.difference.inverse(out, full)
            out = self.transform.inverse(out)
        return out, new, model_state

    def forward_row(
        self,
        transforms: Mapping[str, torch.Tensor],
        model_state: State,
        x: np.ndarray,
        time: np.ndarray | None,
        prefix: str,
    ) -> tuple[np.ndarray, dict[str, Entry], State]:
        """:meth:`forward` of one step on the CPU without gradients, for rows that are all
        past the warm-up (``valid`` None) of a member with :attr:`steps_rows`: ``x [B,
        F_raw]`` float32 and ``time [B]`` int64 NumPy rows -> ``y [B, O]`` float64 NumPy,
        this member's new transform fields (arrays, which :class:`StepTransforms` makes
        tensors when read) and model state. The same operations in the same
        order as :meth:`forward`, on float64 NumPy rows.

        Why: a served or streamed step is one step of a few rows, where each eager torch op
        costs 1.5-3 µs of dispatch whatever its size and a NumPy op a fraction of that; the
        transforms and their inverse are about twenty such ops.
        """
        # (plain references: an nn.Module attribute lookup costs as much as a NumPy op)
        transform, difference, scale_cell, calendar, model = self.row_cells
        new: dict[str, Entry] = {}
        location = scale = history = w = None
        count = self.feature_count
        # The model's input, which the cells write into (no intermediate copies): [B, 1, F]
        inputs = np.empty((x.shape[0], 1, self.input_width), dtype=np.float32)
        model_row = inputs[:, 0]
        if not self.prepares:
            model_row[:, :count] = x[:, :count]
        else:
            x64 = x.astype(np.float64)  # (a copy: the fed targets are written into it)
            features = x64 if x.shape[1] == count else x64[:, :count]
            if self.transforms_targets:
                span = self.target_input_span
                w = (
                    x64[:, span[0] : span[1]]
                    if span is not None
                    else x64[:, self.target_input_rows]
                )
                w = transform.forward_rows(w)
                z = w
                if self.order:
                    history = as_array(entry_of(transforms, prefix + "history"))
                    z, kept = difference.forward_row(history, w)
                    new[prefix + "history"] = kept
                    # (w may be a view of x64, written below: the new history holds a copy)
                    w = kept[:, -1]
                if self.fed_feature_rows.size:
                    # (float32 as the table code stores the transformed columns)
                    fed = z.astype(np.float32)
                    fed = fed if self.feeds_all else fed[:, self.fed_target_rows]
                    fed_span = self.fed_feature_span
                    if fed_span is not None:
                        features[:, fed_span[0] : fed_span[1]] = fed
                    else:
                        features[:, self.fed_feature_rows] = fed
            if scale_cell is not None:
                location = transforms[prefix + "location"].numpy()
                scale = transforms[prefix + "scale"].numpy()
                # (the float64 quotient rounded to float32 as it is stored: as astype does)
                scale_cell.forward_rows(features, location, scale, out=model_row[:, :count])
            else:
                model_row[:, :count] = features
        if calendar.kinds:
            time = _checked_time(time, calendar.kinds)
            model_row[:, count:] = calendar.rows(time)
        y, model_state = self._one_step(model, torch.from_numpy(inputs), model_state, new, prefix)
        out = y.numpy()[:, 0]  # [B, O] float32
        if self.head is None:
            new[prefix + "output"] = out  # (a view of y, as y.select(1, 0) was)
        if self.regression:
            if scale_cell is not None and location is not None and scale is not None:
                # (float32 * float64 computes in float64 from the exact widened values)
                out = scale_cell.inverse_rows(out, location, scale)
            else:
                out = out.astype(np.float64)
            if w is not None and history is not None:  # (history: differenced)
                out = difference.inverse_row(out, history, w)
            out = transform.inverse_rows(out)
        else:
            out = out.astype(np.float64)
        return out, new, model_state

    def forward_single(
        self,
        transforms: Mapping[str, torch.Tensor],
        model_state: State,
        x: list[float],
        time: int | None,
        prefix: str,
    ) -> tuple[list[float], dict[str, Entry], State]:
        """:meth:`forward_row` of one stream (``B = 1``): ``x`` its F_raw raw values and
        ``time`` as Python numbers -> its O answers as floats (float64), this member's new
        transform fields (:class:`Floats`) and model state. The same operations in the same
        order, on Python floats (IEEE doubles, as float64), whose arithmetic costs tens of
        ns an op against a NumPy call's microsecond; and array calls between two model
        calls also make the next model call slower (measured at hidden 64: a few small
        NumPy calls, 5-25 µs; a NumPy reduction alone, ~8 µs), Python floats hardly. So the
        only array calls left make the model's input and read its answer: the new fields
        stay floats until someone reads them as tensors (:class:`StepTransforms`)."""
        transform, difference, scale_cell, calendar, model = self.row_cells
        new: dict[str, Entry] = {}
        location = scale = history = w = None
        features = x[: self.feature_count]
        if self.transforms_targets:
            w = transform.forward_one([x[i] for i in self.target_input_list])
            z = w
            if self.order:
                # [1, D, O] -> D * O floats, oldest first
                history = as_floats(entry_of(transforms, prefix + "history"))
                z, kept = difference.forward_single(history, w)
                new[prefix + "history"] = Floats(kept, (1, self.order, len(w)), torch.float64)
            if self.fed_pairs:
                # (float32 as the table code stores the transformed columns)
                fed = array("f", z).tolist()
                features = list(features)
                for f, j in self.fed_pairs:
                    features[f] = fed[j]
        if scale_cell is not None:
            location, scale = self._statistics_of(transforms, prefix)
            features = scale_cell.forward_one(features, location, scale)
        if calendar.kinds:
            time = _checked_time(time, calendar.kinds)
            features = [*features, *calendar.one(time)]
        inputs = torch.from_numpy(np.array([[features]], dtype=np.float32))  # (1, 1, F)
        y, model_state = self._one_step(model, inputs, model_state, new, prefix)
        values: list[float] = y.tolist()[0][0]
        if self.head is None:
            new[prefix + "output"] = Floats(values, (1, len(values)), torch.float32)
        if self.regression:
            if scale_cell is not None and location is not None and scale is not None:
                values = scale_cell.inverse_one(values, location, scale)
            if w is not None and history is not None:  # (history: differenced)
                values = difference.inverse_single(values, history, w)
            values = transform.inverse_one(values)
        return values, new, model_state

    def _statistics_of(
        self, transforms: Mapping[str, torch.Tensor], prefix: str
    ) -> tuple[list[float], list[float]]:
        """One stream's location and scale as floats. A stream's statistics are bound at its
        start and every step passes the same tensors on (nothing writes a state tensor in
        place), so the last stream's floats are kept and reused while its tensors are."""
        location_t, scale_t = transforms[prefix + "location"], transforms[prefix + "scale"]
        kept = self.statistics_floats
        if kept is not None and kept[0] is location_t and kept[1] is scale_t:
            return kept[2], kept[3]
        location, scale = location_t.numpy()[0].tolist(), scale_t.numpy()[0].tolist()
        self.statistics_floats = (location_t, scale_t, location, scale)
        return location, scale

    def _one_step(
        self,
        model: Any,
        inputs: torch.Tensor,
        model_state: State,
        new: dict[str, Entry],
        prefix: str,
    ) -> tuple[torch.Tensor, State]:
        """The member's model on one step ``inputs [B, 1, F]`` float32 -> (its answers
        ``[B, 1, O]`` float32 in model space, its new state). A head's answers and raw
        parameters go into ``new`` as this member's transform state; without a head the
        caller keeps the answers as its ``output``, in the form it reads them (an array,
        floats). ``model``: the plain reference the fast paths hold (no ``nn.Module``
        attribute lookup)."""
        if self.head is None:
            probe = self.probe
            if (
                probe is not None
                and probe.dtype is torch.float32
                and probe.is_cpu
                and not model.training
                and inputs.shape[1] == 1
            ):
                # the streaming hot path (the cell kernels and the head, no forward around
                # them): forward's answer and state bit for bit, ~15 µs less a step at hidden 64
                y, model_state = advance(model, model_state, inputs[:, 0])
                return y[:, None], model_state
            y, model_state = model(inputs, model_state)
            return y, model_state
        y, raw, model_state = self._model(inputs, model_state, None)
        new[prefix + "output"] = y.select(1, 0)
        if raw is not None:
            new[prefix + "parameters"] = raw[:, -1]
        return y, model_state

    def _model(
        self, inputs: torch.Tensor, model_state: State, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, State]:
        """(outputs, raw distribution parameters or None, new state): a distribution model's
        outputs are its medians, computed from the parameters it returns too."""
        if self.head is None:
            y, model_state = self.model(inputs, model_state, mask=mask)
            return y, None, model_state
        model: Any = self.model
        raw, model_state = model.distribution_parameters(inputs, model_state, mask=mask)
        return model.distribution(raw).median(), raw, model_state

    # --- forecast ----------------------------------------------------------------------------

    def forecast(
        self,
        transforms: dict[str, torch.Tensor],
        model_state: State,
        times: torch.Tensor | None,
        covariates: torch.Tensor | None,
        horizon: int,
        prefix: str,
        *,
        samples: int = 0,
        generator: Generators = None,
    ) -> torch.Tensor:
        """``[B, H, O]`` float64 raw units: roll out from the state (which is not changed).

        With ``samples`` > 0 (a distribution model): ``[B, samples, H, O]`` sample paths, each
        step's value drawn in model space from ``generator``, fed back, and inverted through
        this member's transforms on its own path (its own differencing history)."""
        steps = self.rollout(
            transforms,
            model_state,
            times,
            covariates,
            horizon,
            prefix,
            samples=samples,
            generator=generator,
        )
        return _paths(list(steps), samples)

    def rollout(
        self,
        transforms: dict[str, torch.Tensor],
        model_state: State,
        times: torch.Tensor | None,
        covariates: torch.Tensor | None,
        horizon: int,
        prefix: str,
        *,
        samples: int = 0,
        generator: Generators = None,
    ) -> Iterator[torch.Tensor]:
        """:meth:`forecast` one step at a time: yields each step's ``[B, O]`` (``[B * samples,
        O]``) raw values, so a caller can interleave members and report progress."""
        empty = torch.zeros(0, dtype=torch.float64)  # (no scaling: never read)
        if samples:
            if self.head is None:
                raise ValueError(
                    "sample paths need a run trained with a distribution head "
                    "(seqstate train --distribution ...); this run's model has none"
                )
            # each stream's state repeated: rows b * samples ... (b + 1) * samples - 1
            rows = torch.arange(model_state.batch_size).repeat_interleave(samples)
            transforms = {
                name: value[rows] for name, value in transforms.items() if value.dim() > 0
            }
            model_state = model_state.select(rows)
            times = times[rows] if times is not None else None
            covariates = covariates[rows] if covariates is not None else None
        history = transforms[prefix + "history"]
        z = transforms[prefix + "output"]  # (B, O) model space: the last step's output
        if samples:
            model: Any = self.model
            z = draw(model, transforms[prefix + "parameters"], generator)
        location = transforms.get(prefix + "location", empty)
        scale = transforms.get(prefix + "scale", empty)
        scaled_covariates = None
        if self.covariate_names:
            if covariates is None:
                raise ValueError(
                    f"the run reads the covariates {self.covariate_names}: pass their future "
                    "values, covariates [B, horizon, K] in raw units"
                )
            values = covariates.to(torch.float32).to(torch.float64)
            if self.scale is not None:
                values = self.scale.columns(values, location, scale, self.covariate_columns)
            scaled_covariates = values.to(torch.float32)
        calendar = self.calendar(times) if self.calendar.kinds and times is not None else None
        if self.calendar.kinds and calendar is None:
            raise ValueError("the run reads calendar features: the forecast needs its times")
        b = z.shape[0]
        width = self.feature_count + self.calendar.width
        for h in range(horizon):
            value = z.to(torch.float64)[:, None]  # (B, 1, O)
            if self.scale is not None:
                value = self.scale.inverse(value, location, scale)
            w = value[:, 0]
            if self.order:
                w = self.difference.inverse_one(w, history)
                history = torch.cat([history[:, 1:], w[:, None]], dim=1)
            yield self.transform.inverse(w)
            if h == horizon - 1:
                break
            x = z.new_zeros((b, 1, width))
            x[:, 0, self.fed_features] = z.index_select(1, self.fed_targets)
            if scaled_covariates is not None:
                x[:, 0, self.covariate_features] = scaled_covariates[:, h]
            if calendar is not None:
                x[:, 0, self.feature_count :] = calendar[:, h]
            if samples:
                raw, model_state = model.distribution_parameters(x, model_state)
                z = draw(model, raw[:, 0], generator)
            else:
                y, model_state = self.model(x, model_state)
                z = y[:, 0]


def _paths(steps: list[torch.Tensor], samples: int) -> torch.Tensor:
    """Rolled-out steps ``[B(*samples), O]`` -> ``[B, H, O]`` (``[B, samples, H, O]``)."""
    paths = torch.stack(steps, dim=1)
    return paths.unflatten(0, (-1, samples)) if samples else paths


class StepOutputs(NamedTuple):
    """A step's answer ``[B, T, O]`` (what :meth:`RunStep.step` returns) and the network
    members' answers ``[K, B, T, O]`` (their spread is the ensemble's)."""

    answer: torch.Tensor
    members: torch.Tensor


class ForecastOutputs(NamedTuple):
    """A forecast's times ``[B, H]``, answer ``[B, H, O]`` (paths: ``[B, S, H, O]``) and the
    network members' ``[K, B, H, O]`` (paths: ``[K, B, S, H, O]``)."""

    times: torch.Tensor
    answer: torch.Tensor
    members: torch.Tensor


#: Progress callback of a forecast: ``on_step(done, total)`` forecast steps.
OnStep = Callable[[int, int], None]


class RunStep(nn.Module):
    """A trained run (one model or an ensemble's members, each with its preprocessing) as
    ``step(state, x, time) -> (y, state)`` in raw units.

    Args:
        members: ``(model, scaling or None, calendar)`` per member.
        columns: the run's table columns (:class:`seqstate.recipe.table.Columns`).
        frequency: the run's :class:`seqstate.recipe.calendar.Frequency` (forecast times), or
            None.
        intervals: the run's :class:`seqstate.recipe.intervals.IntervalTable`, or None; with
            it the state keeps each stream's MASE scale (:mod:`.history_scale`) and
            :meth:`interval_quantiles` answers the calibrated quantiles.

    Attributes:
        inputs: the raw columns ``x`` holds, in order: the features, then the targets that
            are not features where differencing needs their past.
        targets: the output columns.
        needs_time: whether each step must carry its time (calendar features).
        needs_series: whether a stream must name its series (per-series scaling).
    """

    def __init__(
        self,
        members: Sequence[tuple[nn.Module, Any, Sequence[str]]],
        columns: Any,
        frequency: Any = None,
        selection: Any = None,
        intervals: Any = None,
    ) -> None:
        super().__init__()
        if not members:
            raise ValueError("RunStep needs at least one member (model, scaling, calendar)")
        self.columns = columns
        self.frequency = frequency
        features = list(columns.features)
        differenced = any(s is not None and s.config.lags for _, s, _ in members)
        extra = [t for t in columns.targets if t not in features] if differenced else []
        self.inputs: tuple[str, ...] = (*features, *extra)
        self.targets: tuple[str, ...] = tuple(columns.targets)
        steps = [
            MemberStep(model, columns, self.inputs, scaling, calendar)
            for model, scaling, calendar in members
        ]
        self.members = nn.ModuleList(steps)
        self._member_steps = tuple(steps)  # (typed, and no ModuleList iteration per step)
        self.prefixes = tuple(f"m{k}." for k in range(len(steps)))  # (their state's names)
        #: every member's steps can take the NumPy one-step path (forward_rows)
        self.steps_rows = all(m.steps_rows for m in steps)
        self.needs_time = any(m.calendar.kinds for m in self._members())
        self.needs_series = any(
            m.scaling is not None and m.scaling.config.method == "series" for m in self._members()
        )
        self.order = max(m.order for m in self._members())
        #: steps between the step that makes an answer and the step that returns it (a
        #: differenced run with shift s > 1: s - 1; else 0)
        self.delay = max(m.difference.delay for m in self._members())
        self.covariates: tuple[str, ...] = tuple(self._members()[0].covariate_names)
        self.selection = selection
        self.blend = self._blend(selection)
        # (a run whose targets are not among its inputs has no history to scale by)
        known = intervals is not None and all(t in self.inputs for t in self.targets)
        self.intervals = intervals if known else None
        self.history_scale = (
            HistoryScale(intervals.season, [self.inputs.index(t) for t in self.targets])
            if known
            else None
        )
        #: forecast steps between two ``on_step`` calls (a long roll-out reports steadily)
        self.progress_every = 16
        self.eval()

    def _blend(self, selection: Any) -> Blend | None:
        """The baselines the validation chose, as cells (None: the network alone)."""
        if selection is None:
            return None
        weights = getattr(selection, "weights", None)
        if not isinstance(weights, Mapping):
            raise TypeError(
                "selection must be a seqstate.recipe.selection.Selection (or None); received "
                f"{type(selection).__name__}"
            )
        if set(weights) == {NETWORK}:
            return None
        missing = [t for t in self.targets if t not in self.inputs]
        if missing:
            raise ValueError(
                f"the run answers with the baselines {sorted(set(weights) - {NETWORK})}, which "
                f"read the targets' past, but its inputs {list(self.inputs)} lack {missing}; "
                "a selection is only made for runs whose targets are inputs"
            )
        return Blend(weights, [self.inputs.index(t) for t in self.targets])

    def _members(self) -> tuple[MemberStep, ...]:
        return self._member_steps

    # --- state -------------------------------------------------------------------------------

    def initial_state(self, series: Sequence[Any], *, context: Any = None) -> RunState:
        """The state of ``len(series)`` fresh streams.

        Args:
            series: each stream's series id (None for a run without an id column); per-series
                scaling binds each row to its series' statistics here.
            context: optional raw table (one series per row of ``series``, in order) from
                which a series the run never saw takes its statistics, as ``predict`` does.
        """
        if isinstance(series, str) or not isinstance(series, Sequence):
            raise TypeError(
                f"series must be a list of series ids, one per stream; received "
                f"{type(series).__name__} {series!r}"
            )
        if context is not None and len(context) != len(series):
            raise ValueError(
                f"context must hold one series per stream: {len(series)}; received {len(context)}"
            )
        b = len(series)
        transforms: dict[str, torch.Tensor] = {
            "steps": torch.zeros(b, dtype=torch.int64),
            "time": torch.full((b,), NO_TIME, dtype=torch.int64),
        }
        models = []
        for k, member in enumerate(self._members()):
            part, model_state = member.initial_state(series, context, f"m{k}.")
            transforms |= part
            models.append(model_state)
        if self.blend is not None:
            transforms |= self.blend.initial_state(b)
        if self.history_scale is not None:
            transforms |= self.history_scale.initial_state(b)
        return RunState(transforms, tuple(models))

    # --- steps -------------------------------------------------------------------------------

    def step(self, state: RunState, x: Any, time: Any = None) -> tuple[torch.Tensor, RunState]:
        """Advance ``B`` streams by ``T`` steps.

        Args:
            state: from :meth:`initial_state` or a previous step (not changed).
            x: ``[B, T, F_raw]`` raw values of :attr:`inputs` (float; ``[B, F_raw]`` for one
                step).
            time: ``[B, T]`` int64 Unix seconds (or numpy datetime64) of each step (``[B]``
                for one step); required when :attr:`needs_time`, else optional. Each row's
                times increase, within the call and after its last step (ValueError).

        Returns:
            ``(y [B, T, O] float64 raw units, new state)``: y at step t predicts the targets
            ``shift`` steps later; NaN while differencing has no past (a stream's first D
            steps). For an ensemble, the members' mean; where validation chose baselines
            (:attr:`selection`), their weighted combination with it. A differenced run with
            shift s > 1 integrates each predicted difference onto the values up to the step
            before its target, so y at step t is the answer made at step ``t - delay``
            (:attr:`delay` = s - 1: the targets at t + 1).
        """
        outputs, state = self.step_outputs(state, x, time)
        return outputs.answer, state

    def step_members(
        self, state: RunState, x: Any, time: Any = None
    ) -> tuple[torch.Tensor, RunState]:
        """:meth:`step` with each network member's answer: ``y [K, B, T, O]`` (the baselines
        step too: the state is the same as :meth:`step`'s)."""
        outputs, state = self.step_outputs(state, x, time)
        return outputs.members, state

    def step_outputs(
        self, state: RunState, x: Any, time: Any = None
    ) -> tuple[StepOutputs, RunState]:
        """:meth:`step` with both the answer and each network member's."""
        x_t, time_t = self._check_step(state, x, time)
        with torch.no_grad():
            advanced = self.forward_rows(state, x_t, time_t)
            if advanced is not None:
                (network, members), new_state = advanced
            else:
                members, new_state = self.forward(state, x_t, time_t)
                network = members[0] if members.shape[0] == 1 else members.mean(dim=0)
            if self.blend is None:
                answer = self._hold_flat(state, new_state.transforms, x_t, network)
                return StepOutputs(answer, members), new_state
            baselines: Mapping[str, Entry]
            if x_t.device.type == "cpu":
                answer, baselines = self._blend_rows(state, x_t, network)
            else:
                parts, baselines = self.blend.advance(state.transforms, x_t)
                # (the selection is of one-step forecasts: with another shift the network
                # answers)
                answer = self.blend.combine(network, parts) if self.columns.shift == 1 else network
        # (the step's fields as held: merged without making them tensors)
        stepped = new_state.transforms
        known = stepped.fewest_steps if type(stepped) is StepTransforms else None
        held = StepTransforms.entries(stepped)  # (a new dict: updated in place)
        held.update(baselines)
        transforms = StepTransforms(held, known)
        answer = self._hold_flat(state, transforms, x_t, answer)
        return StepOutputs(answer, members), RunState.unchecked(transforms, new_state.models)

    def _hold_flat(
        self, state: RunState, after: Mapping[str, Any], x: torch.Tensor, answer: torch.Tensor
    ) -> torch.Tensor:
        """The answer with the last value for a stream whose history never varied
        (:meth:`HistoryScale.hold_flat`; a run with the MASE scale in its state and one-step
        answers)."""
        if self.history_scale is None or self.columns.shift != 1:
            return answer
        return self.history_scale.hold_flat(state.transforms, after, x, answer)

    def _blend_rows(
        self, state: RunState, x: torch.Tensor, network: torch.Tensor
    ) -> tuple[torch.Tensor, Mapping[str, Entry]]:
        """The baselines' step and the answer on CPU rows (:meth:`Blend.advance_rows`): a
        few values combined as floats, more in NumPy; the same operations as
        :meth:`Blend.combine`. ``x [B, T, F_raw]``, ``network [B, T, O]`` -> (answer, the
        baselines' new state fields, as arrays)."""
        blend = self.blend
        if blend is None:  # (step_outputs calls this for a run with baselines)
            raise RuntimeError("internal error: no baselines to step")
        values = x.numpy()[:, :, blend.target_index].astype(np.float64)  # (B, T, O)
        parts, baselines = blend.advance_rows(state.transforms, values)
        if self.columns.shift != 1:
            # (the selection is of one-step forecasts: with another shift the network answers)
            return network, baselines
        rows = network.numpy()
        if rows.size > _SMALL:
            return torch.from_numpy(blend.combine_rows(rows, parts)), baselines
        flat = {name: part.ravel().tolist() for name, part in parts.items()}
        answer = blend.combine_one(rows.ravel().tolist(), flat)
        return torch.from_numpy(np.array(answer).reshape(rows.shape)), baselines

    def forward(
        self, state: RunState, x: torch.Tensor, time: torch.Tensor | None
    ) -> tuple[torch.Tensor, RunState]:
        """The unchecked step (traced for export): ``x [B, T, F_raw]`` float32, ``time
        [B, T]`` int64 or None -> ``(y [K, B, T, O] float64, state)``."""
        steps = x.shape[1]
        seen = state.transforms["steps"]
        position = None
        # Past every row's warm-up (the usual streaming step) no step is masked: one check
        # instead of a mask per step; a trace takes the masked path, which holds for any data.
        if self.order and (cells.tracing() or seen.numel() == 0 or int(seen.min()) < self.order):
            position = seen[:, None] + torch.arange(steps, device=x.device)
        transforms = dict(state.transforms)
        outputs, models = [], []
        for k, member in enumerate(self._members()):
            # (B, T) the steps with a difference, or None: all of them
            valid = position >= member.order if position is not None and member.order else None
            y, new, model_state = member.forward(
                state.transforms, state.models[k], x, time, valid, f"m{k}."
            )
            transforms |= new
            outputs.append(y)
            models.append(model_state)
        if self.history_scale is not None:
            transforms |= self.history_scale.advance(state.transforms, x)
        transforms["steps"] = seen + steps
        if time is not None:  # (a copy: the state keeps nothing of the caller's tensors)
            transforms["time"] = time[:, -1].clone()
        y = outputs[0][None] if len(outputs) == 1 else torch.stack(outputs)
        # (its parts come from this state's, already checked: no second check per step)
        return y, RunState.unchecked(transforms, tuple(models))

    def forward_rows(
        self, state: RunState, x: torch.Tensor, time: torch.Tensor | None
    ) -> tuple[StepOutputs, RunState] | None:
        """:meth:`forward` of one step of CPU rows, every member and every row past the
        warm-up, in NumPy (:meth:`MemberStep.forward_row`): ``((network [B, 1, O], members
        [K, B, 1, O]), state)``; None where that does not apply (then :meth:`forward`)."""
        if not self.steps_rows or x.shape[1] != 1 or x.shape[0] == 0 or x.device.type != "cpu":
            return None
        if time is not None and time.device.type != "cpu":
            return None
        if x.shape[0] == 1:
            return self._forward_single(state, x, time)
        first = fewest_steps(state.transforms)  # (a reduction only where not known)
        if first < self.order:
            return None
        rows = x.numpy()[:, 0]
        stamps = time.numpy()[:, 0] if time is not None else None
        # (the fields as held: arrays stay arrays, StepTransforms)
        transforms = StepTransforms.entries(state.transforms)
        outputs: list[np.ndarray] = []  # each member's [B, O] rows
        models = []
        for k, member in enumerate(self._member_steps):
            y, new, model_state = member.forward_row(
                state.transforms, state.models[k], rows, stamps, self.prefixes[k]
            )
            outputs.append(y)
            transforms |= new
            models.append(model_state)
        if self.history_scale is not None:
            transforms |= self.history_scale.advance_rows(state.transforms, rows, first)
        transforms["steps"] = as_array(entry_of(state.transforms, "steps")) + 1
        if stamps is not None:  # (a copy: the state keeps nothing of the caller's arrays)
            transforms["time"] = stamps.copy()
        answers = self._answers(outputs, x.shape[0])
        return answers, RunState.unchecked(StepTransforms(transforms, first + 1), tuple(models))

    def _forward_single(
        self, state: RunState, x: torch.Tensor, time: torch.Tensor | None
    ) -> tuple[StepOutputs, RunState] | None:
        """:meth:`forward_rows` of one stream: its values as Python floats
        (:meth:`MemberStep.forward_single`)."""
        (seen,) = as_floats(entry_of(state.transforms, "steps"))
        if seen < self.order:
            return None
        row: list[float] = x.tolist()[0][0]
        stamp: int | None = time.tolist()[0][0] if time is not None else None
        transforms = StepTransforms.entries(state.transforms)
        outputs: list[list[float]] = []  # each member's O floats
        models = []
        for k, member in enumerate(self._member_steps):
            values, new, model_state = member.forward_single(
                state.transforms, state.models[k], row, stamp, self.prefixes[k]
            )
            outputs.append(values)
            transforms |= new
            models.append(model_state)
        if self.history_scale is not None:
            transforms |= self.history_scale.advance_single(state.transforms, row, seen)
        transforms["steps"] = Floats([seen + 1], (1,), torch.int64)
        if stamp is not None:
            transforms["time"] = Floats([stamp], (1,), torch.int64)
        answers = self._answers(outputs, 1)
        return answers, RunState.unchecked(StepTransforms(transforms), tuple(models))

    def _answers(self, outputs: Sequence[Any], batch: int) -> StepOutputs:
        """``StepOutputs`` of each member's ``[B, O]`` rows (or one stream's O floats):
        ``network [B, 1, O]``, ``members [K, B, 1, O]`` float64."""
        if len(outputs) == 1 and isinstance(outputs[0], np.ndarray):  # (a view, no copy)
            answers = outputs[0].reshape(1, batch, 1, -1)
        else:
            answers = np.array(outputs, dtype=np.float64).reshape(len(outputs), batch, 1, -1)
        members = torch.from_numpy(answers)
        # (one member: a view, cheaper than a select; an ensemble: step_outputs' reduction)
        network = torch.from_numpy(answers[0]) if len(outputs) == 1 else members.mean(0)
        # (its parts come from this state's, already checked: no second check per step)
        return StepOutputs(network, members)

    def forecast(
        self,
        state: RunState,
        horizon: int,
        covariates: Any = None,
        *,
        times: Any = None,
        on_step: OnStep | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forecast ``horizon`` steps from the streams' current state, which is not changed.

        Args:
            state: after at least one step per stream.
            horizon: steps, >= 1.
            covariates: ``[B, horizon, K]`` raw future values of :attr:`covariates` (row h:
                at forecast step h; the last row is not used), where the run has them.
            times: ``[B, horizon]`` int64 times of the forecast steps; default: the step after
                each stream's last time on the run's frequency.
            on_step: ``on_step(done, total)``, called as the roll-out advances (every
                :attr:`progress_every` steps and at the end).

        Returns:
            ``(times [B, H] int64, y [B, H, O] float64 raw units)``; the first row equals the
            answer of the stream's last step. For an ensemble, the members' mean; where
            validation chose baselines, their weighted combination with it.
        """
        outputs = self.forecast_outputs(state, horizon, covariates, times=times, on_step=on_step)
        return outputs.times, outputs.answer

    def forecast_members(
        self, state: RunState, horizon: int, covariates: Any = None, *, times: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forecast` with each network member's answer: ``y [K, B, H, O]``."""
        outputs = self.forecast_outputs(state, horizon, covariates, times=times)
        return outputs.times, outputs.members

    def forecast_outputs(
        self,
        state: RunState,
        horizon: int,
        covariates: Any = None,
        *,
        times: Any = None,
        on_step: OnStep | None = None,
    ) -> ForecastOutputs:
        """:meth:`forecast` with both the answer and each network member's."""
        horizon = _check_horizon(horizon)
        self._check_forecastable()
        if not isinstance(state, RunState):
            raise TypeError(f"state must be a RunState; received {type(state).__name__}")
        _check_on_step(on_step)
        b = state.batch_size
        times_t = self._future_times(state, horizon, times)
        covariates_t = self._check_covariates(covariates, b, horizon)
        with torch.no_grad():
            members = self._roll_out(state, times_t, covariates_t, horizon, 0, None, on_step)
            network = members[0] if members.shape[0] == 1 else members.mean(dim=0)
            answer = network
            if self.blend is not None:
                answer = self.blend.combine(network, self.blend.forecast(state.transforms, horizon))
            if self.history_scale is not None:  # (a stream that never varied: its value)
                answer = self.history_scale.hold_flat_forecast(state.transforms, answer)
        return ForecastOutputs(times_t, answer, members)

    def interval_quantiles(
        self, state: RunState, answer: Any, levels: Sequence[float], *, one_step: bool = False
    ) -> np.ndarray | None:
        """The calibrated quantiles of the streams' ``answer [B, H, O]`` (a forecast from
        ``state``, or with ``one_step`` the answers of ``H`` steps that each predict one step
        ahead, ``state`` after them): ``[B, H, O, Q]`` float64 raw units at ``levels``, or None
        for a run without an interval table. The rule is
        :func:`seqstate.recipe.intervals.answer_quantiles` with each stream's MASE scale from
        its state, the one ``forecast``, ``predict``, :class:`RunStreams` and the server use."""
        from seqstate.recipe.intervals import answer_quantiles

        if self.history_scale is None or self.intervals is None:
            return None
        scales = self.history_scale.scales(state.transforms).cpu().numpy()
        point = np.asarray(torch.as_tensor(answer).cpu(), dtype=np.float64)
        return answer_quantiles(point, scales, self.intervals, levels, one_step=one_step)

    def _roll_out(
        self,
        state: RunState,
        times: torch.Tensor | None,
        covariates: torch.Tensor | None,
        horizon: int,
        samples: int,
        generator: Generators,
        on_step: OnStep | None,
    ) -> torch.Tensor:
        """Every member's roll-out, step by step side by side (so progress is reported as the
        horizon advances): ``[K, B, H, O]`` (``[K, B, samples, H, O]``)."""
        rollouts = [
            member.rollout(
                dict(state.transforms),
                state.models[k],
                times,
                covariates,
                horizon,
                f"m{k}.",
                samples=samples,
                generator=generator,
            )
            for k, member in enumerate(self._members())
        ]
        steps: list[list[torch.Tensor]] = [[] for _ in rollouts]
        every = self.progress_every
        for h in range(horizon):
            for k, rollout in enumerate(rollouts):
                steps[k].append(next(rollout))
            done = h + 1
            if on_step is not None and (done % every == 0 or done == horizon):
                on_step(done, horizon)
        return torch.stack([_paths(s, samples) for s in steps])

    def sample_forecast(
        self,
        state: RunState,
        horizon: int,
        covariates: Any = None,
        *,
        times: Any = None,
        samples: int,
        seed: int | None = None,
        keys: Sequence[Any] | None = None,
        on_step: OnStep | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample paths from the streams' current state (not changed): each path draws every
        step's value in model space, feeds it back and inverts it through the run's transforms
        (scaling, log, differencing) on its own path. An ensemble pools its members' paths;
        where validation chose baselines, the paths are re-centred on the selection's answer
        (the paths' median combined with the baselines' forecasts by the selection's weights,
        as the point forecast is) and keep the network's spread about it.

        Each stream draws from its own generator, seeded by ``seed`` and its key
        (:func:`seqstate.inference.sampling.stream_generators`): ``keys`` one per stream, its
        series id (``RunForecaster`` and the server pass them), default its row. A stream's
        paths then depend on the seed, its key and its state alone, not on which other
        streams share the call.

        Returns:
            ``(times [B, H] int64, paths [B, K * samples, H, O] float64 raw units)``.
        """
        if isinstance(samples, bool) or not isinstance(samples, int | np.integer):
            raise TypeError(f"samples must be an int >= 1; received {type(samples).__name__}")
        if samples < 1:
            raise ValueError(f"samples must be an int >= 1 (paths per stream); received {samples}")
        horizon = _check_horizon(horizon)
        self._check_forecastable()
        if not isinstance(state, RunState):
            raise TypeError(f"state must be a RunState; received {type(state).__name__}")
        _check_on_step(on_step)
        times_t = self._future_times(state, horizon, times)
        covariates_t = self._check_covariates(covariates, state.batch_size, horizon)
        generator = stream_generators(None if seed is None else int(seed), keys, state.batch_size)
        with torch.no_grad():
            members = self._roll_out(
                state, times_t, covariates_t, horizon, int(samples), generator, on_step
            )  # (K, B, samples, H, O)
            paths = torch.cat(list(members), dim=1)  # (B, K * samples, H, O)
            if self.blend is not None:
                # The selection moves the answer, not the spread: each path keeps its
                # deviation from the paths' median and is re-centred on the selection's
                # combination of that median with the baselines' forecasts. (A weighted sum
                # of the paths with deterministic baselines would shrink the spread by the
                # network's weight: to nothing where validation chose baselines alone.)
                centre = _path_median(paths)  # (B, 1, H, O)
                parts = self.blend.forecast(state.transforms, horizon)
                paths = paths - centre + self.blend.combine(centre, parts)
            if self.history_scale is not None:  # (a stream that never varied: its value)
                paths = self.history_scale.hold_flat_forecast(state.transforms, paths)
        return times_t, paths

    # --- checks ------------------------------------------------------------------------------

    def _check_forecastable(self) -> None:
        from seqstate.recipe.forecaster import why_not_forecastable

        why = why_not_forecastable(self.columns)
        if why is not None:
            raise ValueError(f"this run cannot forecast: {why}")

    def _check_covariates(self, covariates: Any, b: int, horizon: int) -> torch.Tensor | None:
        """``covariates [B, horizon, K]`` as a float32 tensor (None stays None: the run
        has no covariates, or the roll-out says it needs them)."""
        if covariates is None:
            return None
        covariates_t = torch.as_tensor(np.array(covariates, dtype=np.float32))
        expected = (b, horizon, len(self.covariates))
        if tuple(covariates_t.shape) != expected:
            raise ValueError(
                f"covariates must have shape [B, horizon, K]={list(expected)} (the "
                f"covariates {list(self.covariates)}); received {list(covariates_t.shape)}"
            )
        bad = ~torch.isfinite(covariates_t)
        if bool(bad.any()):
            row, step, column = (int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"covariates hold {float(covariates_t[row, step, column])} at row {row}, "
                f"forecast step {step}, column {self.covariates[column]!r}; the known future "
                "values must be finite"
            )
        return covariates_t

    def _future_times(self, state: RunState, horizon: int, times: Any) -> torch.Tensor:
        b = state.batch_size
        if times is not None:
            times_t = torch.as_tensor(np.asarray(times, dtype=np.int64))
            if tuple(times_t.shape) != (b, horizon):
                raise ValueError(
                    f"times must have shape [B, horizon]=[{b}, {horizon}]; received "
                    f"{list(times_t.shape)}"
                )
            return times_t
        last = state.transforms["time"]
        if bool((last == NO_TIME).any()):
            if self.needs_time:
                raise ValueError(
                    "the forecast's times follow from each stream's last time, and a stream "
                    "has none yet: step it with its time first, or pass times"
                )
            return torch.arange(1, horizon + 1).repeat(b, 1)
        if self.frequency is None:
            if self.needs_time:
                raise ValueError(
                    "this run records no frequency, so the forecast's times cannot be "
                    "stamped: pass times [B, horizon] (Unix seconds)"
                )
            return last[:, None] + torch.arange(1, horizon + 1)
        rows = []
        for seconds in last.tolist():
            stamps = self.frequency.future(np.datetime64(int(seconds), "s"), horizon)
            rows.append(stamps.astype("datetime64[s]").astype(np.int64))
        return torch.from_numpy(np.stack(rows))

    def _check_step(
        self, state: RunState, x: Any, time: Any
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not isinstance(state, RunState):
            raise TypeError(f"state must be a RunState; received {type(state).__name__}")
        b, width = state.batch_size, len(self.inputs)
        if isinstance(x, torch.Tensor):
            x_t = x if x.dtype == torch.float32 else x.to(torch.float32)
        else:
            x_t = torch.as_tensor(np.asarray(x, dtype=np.float32))
        if x_t.dim() == 2:
            x_t = x_t[:, None]
        if x_t.dim() != 3 or x_t.shape[0] != b or x_t.shape[2] != width or x_t.shape[1] < 1:
            raise ValueError(
                f"x must have shape [B, T, F]=[{b}, T>=1, {width}] (the raw columns "
                f"{list(self.inputs)}); received {list(x_t.shape)}"
            )
        small = x_t.numel() <= _SMALL and x_t.device.type == "cpu" and not x_t.requires_grad
        if small:
            # A served step's few values: their sum in doubles is finite exactly when every
            # float32 value is (it cannot overflow), and a NumPy reduction here slows the
            # model call after it (measured: ~8 µs at hidden 64), a Python sum hardly.
            finite = math.isfinite(sum(x_t.numpy().ravel().tolist()))
        elif x_t.device.type == "cpu" and not x_t.requires_grad:
            # (NumPy's check of a few values costs a fifth of torch's)
            finite = bool(np.isfinite(x_t.numpy()).all())
        else:
            finite = bool(torch.isfinite(x_t).all())
        if not finite:
            row, step, column = (int(i) for i in (~torch.isfinite(x_t)).nonzero()[0])
            raise ValueError(
                f"x holds {float(x_t[row, step, column])} at row {row}, step {step}, column "
                f"{self.inputs[column]!r}; every raw value must be finite"
            )
        self._check_domain(x_t)
        time_t = None
        if time is not None:
            time_t = time if isinstance(time, torch.Tensor) else _time_tensor(time)
            if time_t.dim() == 1:
                time_t = time_t[:, None]
            if time_t.is_floating_point() or time_t.dtype == torch.bool:
                raise TypeError(f"time must be int64 Unix seconds; received dtype {time_t.dtype}")
            if time_t.dtype != torch.int64:
                time_t = time_t.to(torch.int64)
            if tuple(time_t.shape) != tuple(x_t.shape[:2]):
                raise ValueError(
                    f"time must have shape [B, T]={list(x_t.shape[:2])} like x; received "
                    f"{list(time_t.shape)}"
                )
            times = time_t.numpy() if time_t.device.type == "cpu" else time_t.cpu().numpy()
            _check_order(entry_of(state.transforms, "time"), times, dates=self.needs_time)
        elif self.needs_time:
            raise ValueError(
                "this run reads calendar features: each step needs its time, [B, T] int64 Unix "
                "seconds"
            )
        return x_t, time_t

    def _check_domain(self, x: torch.Tensor) -> None:
        for member in self._members():
            kind = member.transform.kind
            if kind == "none" or not member.target_inputs.numel():
                continue
            if x.numel() <= _SMALL and x.device.type == "cpu" and not x.requires_grad:
                # (as the finite check: no NumPy reduction for a served step's few values)
                flat = x.numpy().reshape(-1, x.shape[2]).tolist()
                columns = member.target_input_list
                if kind == "log" and all(row[c] > 0 for row in flat for c in columns):
                    return
                if kind != "log" and all(row[c] >= 0 for row in flat for c in columns):
                    return
            elif x.device.type == "cpu" and not x.requires_grad:
                array = x.numpy()[..., member.target_input_rows]
                if bool((array > 0).all() if kind == "log" else (array >= 0).all()):
                    return
            values = x.index_select(2, member.target_inputs)
            bad = values <= 0 if kind == "log" else values < 0
            if bool(bad.any()):
                row, step, column = (int(i) for i in bad.nonzero()[0])
                need = "> 0" if kind == "log" else ">= 0"
                raise ValueError(
                    f"transform={kind!r} needs every target value {need}; x holds "
                    f"{float(values[row, step, column])!r} at row {row}, step {step}, target "
                    f"{self.targets[column]!r}"
                )
            return

    def _describe_intervals(self) -> dict[str, Any] | None:
        from seqstate.recipe.intervals import DEFAULT_LEVELS

        table = self.intervals
        if table is None:
            return None
        return {"levels": list(DEFAULT_LEVELS), "windows": table.windows, "paths": table.paths}

    def describe(self) -> dict[str, Any]:
        """What a caller must send and gets back."""
        first = self._members()[0]
        return {
            "inputs": list(self.inputs),
            "targets": list(self.targets),
            "covariates": list(self.covariates),
            "needs_time": self.needs_time,
            "needs_series": self.needs_series,
            "warmup_steps": self.order,
            "answer_delay": self.delay,
            "selection": dict(self.blend.weights) if self.blend is not None else {NETWORK: 1.0},
            "members": len(self.members),
            "frequency": self.frequency.name if self.frequency is not None else None,
            "calendar": list(first.calendar.kinds),
            # the calibrated quantiles a forecast answers by default (None: point forecasts)
            "intervals": self._describe_intervals(),
            "transforms": [
                {
                    "scaling": m.scaling.config.method if m.scaling is not None else "none",
                    "transform": m.transform.kind,
                    "lags": list(m.difference.lags),
                    "calendar": list(m.calendar.kinds),
                }
                for m in self._members()
            ],
        }


def _check_horizon(horizon: Any) -> int:
    if isinstance(horizon, bool) or not isinstance(horizon, int | np.integer):
        raise TypeError(f"horizon must be an int >= 1; received {type(horizon).__name__}")
    if horizon < 1:
        raise ValueError(f"horizon must be an int >= 1; received {horizon!r}")
    return int(horizon)


def _check_on_step(on_step: Any) -> None:
    if on_step is not None and not callable(on_step):
        raise TypeError(
            f"on_step must be a callable on_step(done, total) or None; received "
            f"{type(on_step).__name__}"
        )


def _checked_time(time: _T | None, kinds: Sequence[str]) -> _T:
    """``time``: a run with calendar features needs each step's time."""
    if time is None:
        raise ValueError(
            f"the run reads calendar features {list(kinds)}: each step needs its time (Unix "
            "seconds)"
        )
    return time


def _time_tensor(time: Any) -> torch.Tensor:
    """A step's ``time`` as an int64 tensor: numbers as given (Unix seconds), datetime64 as
    their Unix seconds; text and other objects refused."""
    array = np.asarray(time)
    if np.issubdtype(array.dtype, np.datetime64):
        array = array.astype("datetime64[s]").astype(np.int64)
    elif array.dtype.kind not in "iuf" and array.size:
        raise TypeError(
            "time must be int64 Unix seconds or numpy datetime64, [B] or [B, T]; received an "
            f"array of dtype {array.dtype} (convert text first: pd.to_datetime(...))"
        )
    # (a copy of a read-only array: torch shares memory and warns about writing to it)
    return torch.from_numpy(np.array(array, copy=not array.flags.writeable))


def _path_median(paths: torch.Tensor) -> torch.Tensor:
    """``paths [B, S, H, O]`` -> ``[B, 1, H, O]``: the median over the S paths, the mean of
    the two middle ones for an even S (as np.median, which the answers' median column is;
    torch's median takes the lower one)."""
    ordered = paths.sort(dim=1).values
    middle = paths.shape[1] // 2
    upper = ordered[:, middle : middle + 1]
    if paths.shape[1] % 2:
        return upper
    return (ordered[:, middle - 1 : middle] + upper) / 2


def _refuse_no_time() -> None:
    raise ValueError(
        f"time {NO_TIME} (-2**63) marks a stream without a time; give each step a real time "
        "(Unix seconds)"
    )


def _check_order(last: Any, times: np.ndarray, *, dates: bool) -> None:
    """Each stream's ``times [B, T]`` must increase: along its row and from its last step's
    (:data:`NO_TIME`: none yet, never a step's time); ``dates``: and be Unix seconds of a
    date a calendar can stamp (:func:`seqstate.recipe.calendar.check_date_range`)."""
    if times.shape == (1, 1):  # (one stream's step: Python numbers, no array operations)
        now = int(times[0, 0])
        if now == NO_TIME:
            _refuse_no_time()
        before = last.values[0] if isinstance(last, Floats) else int(last.reshape(-1)[0])
        earliest = latest = now
        if before != NO_TIME and now <= before:
            raise ValueError(
                f"time must increase within each stream: row 0 steps at {now} after {before}; "
                "give each step a later time than the stream's last (Unix seconds)"
            )
    else:
        earliest, latest = (int(times.min()), int(times.max())) if times.size else (0, 0)
        if earliest == NO_TIME:
            _refuse_no_time()
        held = last.cpu().numpy() if isinstance(last, torch.Tensor) else as_array(last)
        previous = np.concatenate([held.reshape(-1, 1), times[:, :-1]], axis=1)
        bad = (times <= previous) & (previous != NO_TIME)
        if bad.any():
            row, step = (int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"time must increase within each stream: row {row} steps at "
                f"{int(times[row, step])} (step {step}) after {int(previous[row, step])}; give "
                "each step a later time than the stream's last (Unix seconds)"
            )
    if dates:
        check_date_range(earliest, latest, "time")
