"""A table is many steps: ``predict`` and ``forecast`` of a raw table through :class:`RunStep`.

    for each group of series (batch_size at a time):
        state = run_step.initial_state(ids, context=group)
        for each chunk of T steps:  y, state = run_step.step(state, x[:, chunk], time[:, chunk])

Series of different lengths share a batch: a shorter one is padded after its end by repeating
its last row (finite, in the transforms' domain); the padded steps' answers are dropped, and no
row's answers depend on another row's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from seqstate.recipe.step.function import OnStep, RunStep
from seqstate.recipe.step.state import RunState

__all__ = [
    "TableAnswers",
    "forecast_table",
    "predict_table",
    "table_inputs",
    "table_times",
    "warm_up",
]

DEFAULT_CHUNK = 512
DEFAULT_BATCH = 256


def table_inputs(run_step: RunStep, table: Any, index: int) -> np.ndarray:
    """``[L_i, F_raw]`` float32: series ``index`` of ``table`` as the step function's raw
    columns (:attr:`RunStep.inputs`)."""
    columns = table.columns
    features = np.asarray(table.features[index], dtype=np.float32)
    extra = run_step.inputs[len(columns.features) :]
    if not extra:
        return features
    targets = np.asarray(table.targets[index])
    if targets.ndim != 2 or targets.shape[1] != len(columns.targets):
        raise ValueError(
            f"the run differences its targets {list(columns.targets)}, so turning its outputs "
            f"back into values needs their past; {table.source} was read without them. "
            "Include the target columns."
        )
    picked = [columns.targets.index(name) for name in extra]
    return np.concatenate([features, targets[:, picked].astype(np.float32)], axis=1)


def table_times(run_step: RunStep, times: Any) -> np.ndarray | None:
    """``[L]`` int64 step times (Unix seconds for dates), or None where they are not whole
    numbers (a run without calendar features needs none)."""
    values = np.asarray(times)
    if np.issubdtype(values.dtype, np.datetime64):
        return values.astype("datetime64[s]").astype(np.int64)
    if np.issubdtype(values.dtype, np.integer):
        return values.astype(np.int64)
    if run_step.needs_time:
        raise ValueError(
            f"the run reads calendar features, which need dates in the time column; it holds "
            f"{values.dtype} values"
        )
    return None


class TableAnswers(NamedTuple):
    """Per series: ``answers`` ``[L_i, O]`` (the run's answer: the members' mean, combined
    with the baselines validation chose) and ``members`` ``[K, L_i, O]`` (the network
    members' own), float64 raw units."""

    answers: list[np.ndarray]
    members: list[np.ndarray]


def _run_group(
    run_step: RunStep, table: Any, chunk: int, context: Any
) -> tuple[list[torch.Tensor], list[torch.Tensor], RunState]:
    """Each series' answers ``[L_i, O]``, member outputs ``[K, L_i, O]`` and the state after
    its last step."""
    n = len(table)
    lengths = [len(f) for f in table.features]
    longest = max(lengths)
    blocks = [table_inputs(run_step, table, i) for i in range(n)]
    x = np.stack([np.concatenate([b, np.repeat(b[-1:], longest - len(b), axis=0)]) for b in blocks])
    stamps = [table_times(run_step, t) for t in table.times]
    time = None
    if all(s is not None for s in stamps):
        # (a shorter series' padding steps on after its end: times must increase, and
        # nothing of those steps is kept)
        time = np.stack(
            [
                np.concatenate([s, s[-1] + np.arange(1, longest - len(s) + 1)])
                for s in stamps
                if s is not None
            ]
        )
    state = run_step.initial_state(list(table.ids), context=table if context is None else context)
    # Chunks also end at each series' end, so its final state is taken before any padding.
    bounds = sorted({*range(chunk, longest, chunk), *lengths, longest})
    pieces, answers = [], []
    finals: dict[int, RunState] = {}
    begin = 0
    for end in bounds:
        outputs, state = run_step.step_outputs(
            state,
            torch.from_numpy(x[:, begin:end]),
            torch.from_numpy(time[:, begin:end]) if time is not None else None,
        )
        pieces.append(outputs.members)
        answers.append(outputs.answer)
        ended = [i for i, length in enumerate(lengths) if length == end]
        if ended:
            picked = state.select(ended)
            for position, i in enumerate(ended):
                finals[i] = picked.select([position])
        begin = end
    members = torch.cat(pieces, dim=2)  # (K, n, longest, O)
    answer = torch.cat(answers, dim=1)  # (n, longest, O)
    delay = run_step.delay
    if delay:
        # row t's answer came at step t + delay (a differenced run with shift > 1); the last
        # `delay` rows of each series have none yet, as the table code leaves them
        answer = _realign(answer, lengths, delay, dim=1)
        members = _realign(members, lengths, delay, dim=2)
    return (
        [answer[i, :length] for i, length in enumerate(lengths)],
        [members[:, i, :length] for i, length in enumerate(lengths)],
        RunState.cat([finals[i] for i in range(n)]),
    )


def _realign(values: torch.Tensor, lengths: Sequence[int], delay: int, dim: int) -> torch.Tensor:
    """Each series' answers moved ``delay`` steps back along ``dim`` (series on ``dim - 1``),
    NaN after its ``length - delay`` first rows."""
    moved = torch.full_like(values, float("nan"))
    for i, length in enumerate(lengths):
        if length > delay:
            source = values.select(dim - 1, i).narrow(dim - 1, delay, length - delay)
            moved.select(dim - 1, i).narrow(dim - 1, 0, length - delay).copy_(source)
    return moved


def predict_table(
    run_step: RunStep,
    table: Any,
    *,
    chunk: int | None = None,
    batch_size: int | None = None,
    context: Any = None,
) -> TableAnswers:
    """Each series' predictions (row t: the targets ``shift`` steps later; NaN while
    differencing has no past), the answers and the members'. ``context``: a table of the same
    series (in order) whose rows give the statistics of the series the run never saw (default:
    ``table``'s own; evaluation gives the warm-up rows, so a score reads no later row)."""
    outputs, _ = _each_group(run_step, table, chunk, batch_size, context)
    return outputs


def warm_up(
    run_step: RunStep,
    table: Any,
    *,
    chunk: int | None = None,
    batch_size: int | None = None,
    context: Any = None,
) -> tuple[TableAnswers, RunState]:
    """:func:`predict_table` and the state after each series' last row (batch n)."""
    return _each_group(run_step, table, chunk, batch_size, context)


def _each_group(
    run_step: RunStep, table: Any, chunk: int | None, batch_size: int | None, context: Any = None
) -> tuple[TableAnswers, RunState]:
    chunk = chunk or DEFAULT_CHUNK
    batch_size = batch_size or DEFAULT_BATCH
    order = np.argsort([-len(f) for f in table.features], kind="stable")  # similar lengths
    answers: list[np.ndarray] = [np.empty(0)] * len(table)
    outputs: list[np.ndarray] = [np.empty(0)] * len(table)
    states: list[RunState] = []
    positions: list[int] = []
    for begin in range(0, len(table), batch_size):
        members = [int(i) for i in order[begin : begin + batch_size]]
        given = None if context is None else context.select(members)
        answer, result, state = _run_group(run_step, table.select(members), chunk, given)
        for position, i in enumerate(members):
            answers[i] = answer[position].numpy()
            outputs[i] = result[position].numpy()
        states.append(state)
        positions += members
    joined = RunState.cat(states)
    inverse = np.argsort(positions)
    return TableAnswers(answers, outputs), joined.select(torch.from_numpy(inverse))


def forecast_table(
    run_step: RunStep,
    table: Any,
    horizon: int,
    *,
    times: Sequence[np.ndarray] | None = None,
    covariates: Sequence[np.ndarray] | None = None,
    batch_size: int | None = None,
    on_step: OnStep | None = None,
    state: RunState | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Forecasts ``[n, H, O]`` (the run's answer) and the network members' ``[K, n, H, O]``,
    float64 raw units: warm up on each series of the raw ``table``, then roll out ``horizon``
    steps (``on_step(done, total)`` told as it advances).

    Args:
        times: one ``[horizon]`` array of the forecast steps' times per series (datetime64 or
            int); default: from the run's frequency.
        covariates: one ``[horizon, K]`` array per series of :attr:`RunStep.covariates`.
        state: the state after each series of ``table`` (:func:`warm_up`'s), when the caller
            has it already.
    """
    if state is None:
        _, state = warm_up(run_step, table, batch_size=batch_size)
    stamps = None
    if times is not None:
        converted = [table_times(run_step, t) for t in times]
        if all(c is not None for c in converted):
            stamps = np.stack([np.asarray(c)[:horizon] for c in converted if c is not None])
    known = None
    if covariates is not None:
        known = np.stack([np.asarray(c, dtype=np.float32)[:horizon] for c in covariates])
    outputs = run_step.forecast_outputs(state, horizon, known, times=stamps, on_step=on_step)
    return outputs.answer.numpy(), outputs.members.numpy()
