"""The baselines validation chose run inside the step function: each baseline stream
against a plain per-step reference (chunked == whole, reset == separate, exact resume), and
RunStep over a table of every kind of run with a selection (network only, baseline only, a
combination, two seeds, differencing, calendar) equal to the table-level reference
(``predict_table`` / ``forecast_table`` per member, then :class:`Selection`'s own formula)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqstate.recipe.baselines import (
    STREAMS,
    baseline_forecasts,
    baseline_predictions,
    baseline_stream,
    origin_forecasts,
)
from seqstate.recipe.run_forecaster import RunForecaster, forecast_table, predict_table
from seqstate.recipe.scaling import ScalingConfig
from seqstate.recipe.selection import Selection
from seqstate.recipe.step import RunState, RunStep
from seqstate.recipe.step import tables as step_tables
from test_run_step import (
    assert_close,
    future_of,
    hourly_table,
    members_for,
    monthly_table,
)

# --------------------------------------------------------------------------------------------
# A plain reference: every grid point's recursion one value at a time, in Python floats
# --------------------------------------------------------------------------------------------

ALPHAS, BETA_SHARES, PHIS, GAMMA_SHARES = (
    (0.05, 0.2, 0.5, 0.9),
    (0.0, 0.05, 0.3),
    (0.9, 0.98),
    (
        0.0,
        0.05,
        0.3,
    ),
)


def plain_grid(m):
    points = []
    for alpha, beta_share, phi, gamma_share in itertools.product(
        ALPHAS, BETA_SHARES, PHIS, GAMMA_SHARES
    ):
        if beta_share == 0.0 and phi != PHIS[-1]:
            continue
        if m == 1 and gamma_share != 0.0:
            continue
        points.append((alpha, beta_share * alpha, phi, gamma_share * (1.0 - alpha)))
    return points


def plain_ets(values, m, horizon):
    """Damped ETS chosen by mean one-step squared error past the first season, then its
    forecast, all in plain Python (the docstring of recipe/baselines.py)."""
    values = [float(v) for v in values]
    n = len(values)
    burn_in = min(m, max(n - 1, 0))
    best = None
    for alpha, beta, phi, gamma in plain_grid(m):
        head = values[:m]
        level = sum(head) / len(head) if head else 0.0
        season = [0.0] * m
        if m > 1:
            for i, v in enumerate(head):
                season[i] = v - level
        trend = 0.0
        if n >= 2 * m and m > 1:
            trend = (sum(values[m : 2 * m]) / m - level) / m
        position, squared, counted = 0, 0.0, 0
        for t, y in enumerate(values):
            predicted = level + phi * trend + season[position]
            if t >= burn_in:
                squared += (y - predicted) ** 2
                counted += 1
            error = y - predicted
            level = level + phi * trend + alpha * error
            trend = phi * trend + beta * error
            season[position] += gamma * error
            position = (position + 1) % m
        score = squared / max(counted, 1)
        if best is None or score < best[0]:
            path, damping = [], 0.0
            for h in range(1, horizon + 1):
                damping += phi**h
                path.append(level + damping * trend + season[(position + h - 1) % m])
            best = (score, path)
    assert best is not None
    return np.array(best[1])


def plain_naive(values, m, horizon):
    values = list(values)
    if len(values) >= m:
        return np.array([values[len(values) - m + (h % m)] for h in range(horizon)])
    return np.full(horizon, values[-1])


THETA_ALPHAS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)


def plain_indices(values, m):
    """Additive seasonal indices from scratch: per slot, the mean of the value less its
    centred moving average (2 x m for even m), less the mean over the slots seen."""
    if m == 1:
        return [0.0]
    sums, counts = [0.0] * m, [0] * m
    span = m + 1 if m % 2 == 0 else m
    for end in range(span, len(values) + 1):
        w = values[end - span : end]
        if m % 2 == 0:
            average, centre = (0.5 * w[0] + sum(w[1:-1]) + 0.5 * w[-1]) / m, m // 2
        else:
            average, centre = sum(w) / m, (m - 1) // 2
        slot = (end - span + centre) % m
        sums[slot] += w[centre] - average
        counts[slot] += 1
    raw = [sums[k] / counts[k] if counts[k] else 0.0 for k in range(m)]
    seen = [k for k in range(m) if counts[k]]
    centre = sum(raw[k] for k in seen) / max(len(seen), 1)
    return [raw[k] - centre if counts[k] else 0.0 for k in range(m)]


def plain_ses(adjusted, alpha):
    level = adjusted[0]
    for a in adjusted[1:]:
        level = alpha * a + (1 - alpha) * level
    return level


def plain_theta(values, m, horizon):
    """Theta recomputed from scratch at every step (the docstring of ThetaStream): alpha by
    the mean squared one-step SES error from step m on, each with the indices of the values
    before it; then SES + half the least-squares slope of the adjusted series + the index."""
    values = [float(v) for v in values]
    n = len(values)
    best = None
    for alpha in THETA_ALPHAS:
        squared, counted = 0.0, 0
        for t in range(max(m, 1), n):
            s = plain_indices(values[:t], m)
            level = plain_ses([values[i] - s[i % m] for i in range(t)], alpha)
            squared += (values[t] - s[t % m] - level) ** 2
            counted += 1
        score = squared / max(counted, 1)
        if best is None or score < best[0]:
            best = (score, alpha)
    alpha = best[1]
    s = plain_indices(values, m)
    adjusted = [values[i] - s[i % m] for i in range(n)]
    level = plain_ses(adjusted, alpha)
    slope = np.polyfit(np.arange(n), adjusted, 1)[0] if n >= 2 else 0.0
    return np.array(
        [
            level
            + slope / 2 * ((h - 1) + 1 / alpha - (1 - alpha) ** n / alpha)
            + s[(n - 1 + h) % m]
            for h in range(1, horizon + 1)
        ]
    )


def plain(name, values, horizon):
    kind, _, season = name.rpartition("_")
    reference = {"ets": plain_ets, "theta": plain_theta, "seasonal_naive": plain_naive}[kind]
    return reference(values, int(season), horizon)


@settings(max_examples=30, deadline=None)
@given(
    length=st.integers(1, 30),
    name=st.sampled_from(
        [
            *("ets_1", "ets_3", "ets_4", "seasonal_naive_1", "seasonal_naive_5"),
            *("theta_1", "theta_3", "theta_4"),
        ]
    ),
    chunks=st.lists(st.integers(1, 7), min_size=1, max_size=5),
    seed=st.integers(0, 2**16),
)
def test_a_baseline_stream_equals_the_plain_reference_in_any_chunking(length, name, chunks, seed):
    rng = np.random.default_rng(seed)
    values = 5 + rng.normal(size=length).cumsum() + 2 * np.sin(np.arange(length))
    stream = baseline_stream(name)
    state = stream.initial_state(1)
    answers, begin, turn = [], 0, 0
    while begin < length:
        end = min(length, begin + chunks[turn % len(chunks)])
        predicted, state = stream.step(state, values[None, begin:end])
        answers.append(predicted[0])
        begin, turn = end, turn + 1
    answers = np.concatenate(answers)
    # after value t: the forecast of t + 1 from the values up to t
    expected = [plain(name, values[: t + 1], 1)[0] for t in range(length)]
    np.testing.assert_allclose(answers, expected, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(stream.forecast(state, 6)[0], plain(name, values, 6), rtol=1e-9)
    # the whole-history functions are the same baseline
    np.testing.assert_allclose(baseline_forecasts(name, [values], 6)[0], plain(name, values, 6))
    np.testing.assert_allclose(baseline_predictions(name, [values])[0], expected, rtol=1e-9)


@settings(max_examples=15, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 25), min_size=2, max_size=4),
    name=st.sampled_from(["ets_3", "seasonal_naive_4", "theta_4"]),
    seed=st.integers(0, 2**16),
)
def test_a_baseline_stream_keeps_its_rows_apart(lengths, name, seed):
    """Rows of one batch (streams at different points of their warm-up) answer as alone."""
    rng = np.random.default_rng(seed)
    stream = baseline_stream(name)
    histories = [rng.normal(size=n).cumsum() for n in lengths]
    # row i is first stepped through its own prefix alone, then all rows step together
    offsets = [n // 2 for n in lengths]
    states = []
    for history, offset in zip(histories, offsets, strict=True):
        state = stream.initial_state(1)
        if offset:
            _, state = stream.step(state, history[None, :offset])
        states.append(state)
    batched = {key: np.concatenate([s[key] for s in states]) for key in states[0]}
    steps = min(n - o for n, o in zip(lengths, offsets, strict=True))
    together = np.stack([h[o : o + steps] for h, o in zip(histories, offsets, strict=True)])
    predicted, _ = stream.step(batched, together)
    for row, (history, offset) in enumerate(zip(histories, offsets, strict=True)):
        for t in range(steps):
            expected = plain(name, history[: offset + t + 1], 1)[0]
            np.testing.assert_allclose(predicted[row, t], expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["seasonal_naive_4", "ets_4", "theta_4"])
def test_forecasts_from_several_origins_in_one_pass_equal_each_history_cut(name):
    """Validation's rolling origins: one pass of the stream forecasts from every origin of
    every series as each history cut at that origin does."""
    rng = np.random.default_rng(3)
    histories = [10 + rng.normal(size=n).cumsum() for n in (30, 17, 24)]
    origins = [[12, 20, 26], [5, 17], [24]]
    steps = [4, 6, 3]
    got = origin_forecasts(name, histories, origins, steps)
    for i, history in enumerate(histories):
        for k, origin in enumerate(origins[i]):
            want = baseline_forecasts(name, [history[:origin]], steps[i])[0]
            np.testing.assert_allclose(got[i][k], want, rtol=1e-9, atol=1e-9)


def test_every_registered_kind_is_a_stream():
    for kind in STREAMS:
        stream = baseline_stream(f"{kind}_2")
        state = stream.initial_state(3)
        assert all(value.shape[0] == 3 for value in state.values())
        predicted, state = stream.step(state, np.ones((3, 4)))
        assert predicted.shape == (3, 4) and stream.forecast(state, 5).shape == (3, 5)
    with pytest.raises(ValueError, match="unknown baseline 'arima_3'"):
        baseline_stream("arima_3")


# --------------------------------------------------------------------------------------------
# Runs with a selection: RunStep == the table-level reference
# --------------------------------------------------------------------------------------------


def selection(weights):
    return Selection(
        weights=weights,
        chosen="+".join(weights),
        scores={},
        season=12,
        horizon=6,
        windows=1,
        series=1,
    )


RUNS = {
    # name: (table, scaling config, calendar, seeds, weights)
    "network only": (monthly_table, ScalingConfig(season=12), ("month",), 1, {"network": 1.0}),
    "baseline only": (monthly_table, ScalingConfig(season=12), (), 1, {"seasonal_naive_12": 1.0}),
    "ets only": (monthly_table, None, (), 1, {"ets_12": 1.0}),
    "combination": (
        monthly_table,
        ScalingConfig(season=12),
        ("month",),
        1,
        {"network": 0.25, "seasonal_naive_12": 0.25, "ets_12": 0.25, "theta_12": 0.25},
    ),
    "statistics only": (
        monthly_table,
        ScalingConfig(season=12),
        (),
        1,
        {"seasonal_naive_12": 1 / 3, "ets_12": 1 / 3, "theta_12": 1 / 3},
    ),
    "seeds 2": (monthly_table, ScalingConfig(), ("month",), 2, {"network": 0.5, "ets_12": 0.5}),
    "difference": (
        monthly_table,
        ScalingConfig(difference=1, season=12),
        ("month",),
        1,
        {"network": 0.5, "ets_12": 0.5},
    ),
    "difference, baseline only": (
        monthly_table,
        ScalingConfig(difference=1),
        (),
        1,
        {"ets_12": 0.75, "seasonal_naive_12": 0.25},
    ),
    "calendar and covariate": (
        hourly_table,
        ScalingConfig(season=24),
        ("weekday", "hour"),
        1,
        {"network": 0.5, "ets_24": 0.5},
    ),
}


def build(name):
    make, config, calendar, seeds, weights = RUNS[name]
    table = make()
    members = members_for(table, config, calendar, seeds)
    chosen = selection(weights)
    run_step = RunStep(
        [(m.model, m.scaling, m.calendar) for m in members], table.columns, selection=chosen
    )
    return table, members, chosen, run_step


def reference_predictions(members, chosen, table):
    """predict as the table code does it: each member's decoded predictions, their mean,
    then the selection's combination with the baselines' one-step predictions."""
    parts = [
        predict_table([m.model], table, scaling=m.scaling, calendar=m.calendar).mean
        for m in members
    ]
    network = [np.mean([p[i] for p in parts], axis=0) for i in range(len(table))]
    return chosen.predict(network, table)


def reference_forecasts(members, chosen, table, horizon):
    times, covariates, names = future_of(table, horizon)
    parts = [
        forecast_table(
            [m.model],
            table,
            horizon,
            scaling=m.scaling,
            calendar=m.calendar,
            future_times=times,
            covariates=covariates,
            covariate_names=names,
        ).mean
        for m in members
    ]
    network = [np.mean([p[i] for p in parts], axis=0) for i in range(len(table))]
    return chosen.forecast(network, table, horizon), times, covariates


@pytest.mark.parametrize("name", list(RUNS))
def test_a_run_with_its_selection_steps_like_predict_and_forecast(name):
    table, members, chosen, run_step = build(name)
    expected = reference_predictions(members, chosen, table)
    got = step_tables.predict_table(run_step, table, chunk=7, batch_size=3)
    for i in range(len(table)):
        assert_close(got.answers[i], expected[i])
        assert np.array_equal(np.isnan(got.answers[i]), np.isnan(expected[i]))
    horizon = 8
    paths, times, covariates = reference_forecasts(members, chosen, table, horizon)
    answers, _ = step_tables.forecast_table(
        run_step, table, horizon, times=times, covariates=covariates
    )
    for i in range(len(table)):
        assert_close(answers[i], paths[i])


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.lists(st.floats(0.0, 1.0), min_size=1, max_size=3),
    st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 2)),
)
def test_the_combination_is_the_same_in_torch_numpy_and_floats(seed, weights, shape):
    from seqstate.recipe.step.blend import Blend

    names = ["network", "seasonal_naive_2", "ets_4"][: len(weights)]
    blend = Blend(dict(zip(names, weights, strict=False)), [0] * shape[2])
    rng = np.random.default_rng(seed)
    network = rng.normal(size=shape)
    parts = {name: rng.normal(size=shape) for name in blend.names}
    for part in parts.values():  # no value yet (NaN) or a bad one: the network stands in
        part[rng.random(shape) < 0.3] = np.nan
        part[rng.random(shape) < 0.1] = np.inf
    expected = blend.combine(
        torch.from_numpy(network), {n: torch.from_numpy(p) for n, p in parts.items()}
    ).numpy()
    assert np.array_equal(blend.combine_rows(network, parts), expected)
    flat = {name: part.ravel().tolist() for name, part in parts.items()}
    assert blend.combine_one(network.ravel().tolist(), flat) == expected.ravel().tolist()


@pytest.mark.parametrize("name", ["combination", "difference, baseline only"])
def test_a_stream_one_step_at_a_time_answers_as_the_table(name):
    table, _, _, run_step = build(name)
    whole = step_tables.predict_table(run_step, table)
    i = 2
    x = step_tables.table_inputs(run_step, table, i)[None]
    time = step_tables.table_times(run_step, table.times[i])[None]
    state = run_step.initial_state([table.ids[i]])
    answers = []
    for t in range(x.shape[1]):
        y, state = run_step.step(state, x[:, t], time[:, t])
        answers.append(y[0, 0].numpy())
    assert_close(np.stack(answers), whole.answers[i])


def test_a_restarted_row_equals_a_separate_stream_and_resume_is_exact():
    table, _, _, run_step = build("combination")
    a = step_tables.table_inputs(run_step, table, 0)
    b = step_tables.table_inputs(run_step, table, 1)
    ta = step_tables.table_times(run_step, table.times[0])
    tb = step_tables.table_times(run_step, table.times[1])
    state = run_step.initial_state([table.ids[0], table.ids[1]])
    _, state = run_step.step(state, np.stack([a[:20], b[:20]]), np.stack([ta[:20], tb[:20]]))
    # row 0 restarts for series b; row 1 goes on with b: row 0 now answers as b alone
    state = state.scatter([0], run_step.initial_state([table.ids[1]]))
    restarted, state = run_step.step(
        state, np.stack([b[:12], b[20:32]]), np.stack([tb[:12], tb[20:32]])
    )
    alone, _ = run_step.step(run_step.initial_state([table.ids[1]]), b[None, :12], tb[None, :12])
    np.testing.assert_array_equal(restarted[0].numpy(), alone[0].numpy())
    # exact resume through the codec: baselines' states are in the bytes
    blob = state.to_bytes()
    restored = RunState.from_bytes(blob)
    assert restored.equal(state) and any(k.startswith("baseline.") for k in restored.transforms)
    went_on, _ = run_step.step(state, np.stack([b[32:37], b[32:37]]), np.stack([tb[32:37]] * 2))
    resumed, _ = run_step.step(restored, np.stack([b[32:37], b[32:37]]), np.stack([tb[32:37]] * 2))
    assert torch.equal(went_on, resumed)
    stamps = np.stack([tb[32:37], tb[32:37]])  # (any times: the calendar reads them)
    _, path = run_step.forecast(state, 5, times=stamps)
    _, again = run_step.forecast(restored, 5, times=stamps)
    np.testing.assert_array_equal(path.numpy(), again.numpy())  # (row 0 is still warming: NaN)
    assert np.isfinite(path[1].numpy()).all()


def test_the_forecaster_answers_with_the_step_function_and_its_selection():
    table, members, chosen, _ = build("combination")
    for member in members:
        object.__setattr__(member, "metadata", {"selection": chosen.to_dict()})
    forecaster = RunForecaster(members)
    assert forecaster.step_function(table.columns).blend is not None
    expected = reference_predictions(members, chosen, table)
    for got, want in zip(forecaster.predict(table), expected, strict=True):
        assert_close(got, want)


def test_sample_paths_of_a_selection_combine_each_path():
    """Each path is the selection's weights over the network's path and the baselines'
    forecasts, so the point forecast's combination holds path by path."""
    table, members, _, run_step = build("combination")
    _, state = step_tables.warm_up(run_step, table)
    network = RunStep([(m.model, m.scaling, m.calendar) for m in members], table.columns)
    times, _, _ = future_of(table, 4)
    stamps = np.stack([step_tables.table_times(run_step, t) for t in times])
    # a network without a distribution head cannot draw: the blended run refuses as it does
    with pytest.raises(ValueError, match="distribution head"):
        run_step.sample_forecast(state, 4, times=stamps, samples=2, seed=0)
    _, point = run_step.forecast(state, 4, times=stamps)
    _, alone = network.forecast(RunState(dict(state.transforms), state.models), 4, times=stamps)
    parts = run_step.blend.forecast(state.transforms, 4)
    assert_close(point.numpy(), run_step.blend.combine(alone, parts).numpy())


def test_the_forecast_reports_progress_as_the_horizon_advances():
    table, _, _, run_step = build("seeds 2")
    _, state = step_tables.warm_up(run_step, table)
    calls = []
    _, path = run_step.forecast(
        state,
        40,
        times=np.zeros((len(table), 40), dtype=np.int64) + np.arange(40),
        on_step=lambda done, total: calls.append((done, total)),
    )
    assert calls == [(16, 40), (32, 40), (40, 40)]
    _, quiet = run_step.forecast(
        state, 40, times=np.zeros((len(table), 40), dtype=np.int64) + np.arange(40)
    )
    assert torch.equal(path, quiet)
    with pytest.raises(TypeError, match="on_step must be a callable"):
        run_step.forecast(state, 3, on_step=3)


def test_the_forecaster_progress_moves_before_the_end():
    table, members, _, _ = build("seeds 2")
    forecaster = RunForecaster(members)
    horizon = 50
    times, _, _ = future_of(table, horizon)
    import dataclasses

    future = dataclasses.replace(
        table,
        features=[np.zeros((horizon, 1), dtype=np.float32) for _ in table.ids],
        times=times,
    )
    seen = []
    forecaster.forecast_outputs(table, horizon, future, on_step=seen.append)
    assert seen == [16, 32, 48, 50]


def test_a_saved_run_with_a_selection_streams_and_forecasts_as_predict_and_forecast(tmp_path):
    """Through the run directory (what `seqstate serve` and `RunStreams` load): a stream fed
    row by row answers what predict answers, and its forecast after row t equals forecast on
    the table cut at t."""
    import dataclasses

    from seqstate.recipe.run import Run, RunMember
    from seqstate.recipe.run_forecaster import load_forecaster
    from seqstate.recipe.run_streams import RunStreams

    table, members, chosen, _ = build("seeds 2")
    saved = [
        RunMember(m.model, m.scaling, m.calendar, {"selection": chosen.to_dict()}) for m in members
    ]
    path = Run(saved, table.columns).save(tmp_path / "run")
    forecaster = load_forecaster(path)
    assert Run.load(path).describe()["selection"] == chosen.weights
    predicted = forecaster.predict(table)
    streams = RunStreams.from_run(path)
    function = streams.function
    i, cut = 1, 30
    x = step_tables.table_inputs(function, table, i)
    time = step_tables.table_times(function, table.times[i])
    answers = [
        streams.step(["a"], x[None, t], time=time[None, t], series=[table.ids[i]])[0]
        for t in range(cut)
    ]
    assert_close(np.stack(answers), predicted[i][:cut])
    horizon = 6
    stamps = time[None, cut : cut + horizon]
    _, path_after = streams.forecast(["a"], horizon, times=stamps)
    head = table.select([i]).slice_steps(0, [cut])
    future = dataclasses.replace(
        head,
        features=[np.zeros((horizon, 1), dtype=np.float32)],
        times=[table.times[i][cut : cut + horizon]],
    )
    assert_close(path_after[0], forecaster.forecast(head, horizon, future)[0])


@pytest.mark.parametrize("name", ["combination", "difference, baseline only"])
def test_the_server_engine_answers_each_step_as_predict(name):
    """The server's engine steps the same function: every answer equals predict's for that
    row (null where predict has none: the network's warm-up in a blend), the baselines'
    answers included where a differenced run answers with them alone."""
    import json

    from seqstate.serve.engine import Engine, StepRequest, StepResult
    from seqstate.serve.stores import MemoryStore

    table, _, _, run_step = build(name)
    expected = step_tables.predict_table(run_step, table).answers
    engine = Engine(run_step, MemoryStore(), ttl_s=0)
    i = 1
    x = step_tables.table_inputs(run_step, table, i)
    time = step_tables.table_times(run_step, table.times[i])
    for t in range(len(x)):
        request = StepRequest(
            "s",
            t + 1,
            x[t : t + 1],
            single=True,
            start=False,
            series=table.ids[i],
            time=time[t : t + 1],
        )
        (outcome,) = engine.process([request])
        assert isinstance(outcome, StepResult), outcome
        answer = np.array(json.loads(outcome.output), dtype=np.float64)  # null -> nan
        np.testing.assert_allclose(answer, expected[i][t], rtol=1e-5)


@pytest.mark.parametrize("streams", [1, 3])
@pytest.mark.parametrize("name", ["combination", "difference, baseline only", "ets only"])
def test_a_chain_of_fast_steps_with_baselines_equals_one_whose_state_is_tensors(name, streams):
    # A fast step hands the next one the baselines' fields as the arrays it computed
    # (StepTransforms); a chain whose every state is made plain tensors again steps alike.
    table, _, _, run_step = build(name)
    table = table.select(list(range(streams)))
    length = min(len(t) for t in table.times)
    x = np.stack([step_tables.table_inputs(run_step, table, i)[:length] for i in range(streams)])
    time = np.stack([step_tables.table_times(run_step, t)[:length] for t in table.times])
    fast = plain = run_step.initial_state(list(table.ids), context=table)
    for j in range(length):
        y_fast, fast = run_step.step(fast, x[:, j], time[:, j])
        y_plain, stepped = run_step.step(plain, x[:, j], time[:, j])
        plain = RunState({k: v.clone() for k, v in stepped.transforms.items()}, stepped.models)
        np.testing.assert_array_equal(y_fast.numpy(), y_plain.numpy())
    assert fast.equal(plain)


def _reshaped_advance(blend, transforms, values):
    """:meth:`Blend.advance_rows` as plain reshapes: each field ``[B, O, ...]`` read as
    ``[B * O, ...]``, the stream's new fields and answers reshaped back."""
    b, steps, outputs = values.shape
    rows = values.transpose(0, 2, 1).reshape(-1, steps)
    parts, new = {}, {}
    for name, stream in blend.streams.items():
        state = {}
        for field, key in blend.fields[name]:
            value = transforms[key].numpy()
            state[field] = value.reshape(-1, *value.shape[2:])
        predictions, stepped = stream.step(state, rows)
        parts[name] = predictions.reshape(b, outputs, steps).transpose(0, 2, 1)
        for field, key in blend.fields[name]:
            new[key] = stepped[field].reshape(b, outputs, *stepped[field].shape[1:])
    return parts, new


def _same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


@settings(max_examples=30, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 3),
    st.integers(1, 3),
    st.lists(st.integers(1, 5), min_size=1, max_size=6),
)
def test_the_blend_steps_its_fields_as_plain_reshapes_of_them(seed, batch, outputs, chunks):
    # One target reads and writes its fields as views of the column (no reshape); any number
    # of targets equals the fields reshaped to the streams' rows and back, bit for bit, and
    # the next step reads the arrays a step wrote as it reads tensors.
    from seqstate.recipe.step.blend import Blend
    from seqstate.recipe.step.state import StepTransforms

    names = ["network", "ets_4", "theta_4", "seasonal_naive_2"]
    blend = Blend(dict.fromkeys(names, 0.25), list(range(outputs)))
    rng = np.random.default_rng(seed)
    fast = plain = blend.initial_state(batch)
    for steps in chunks:
        values = rng.normal(size=(batch, steps, outputs))
        values[rng.random(values.shape) < 0.1] = np.nan
        parts, new = blend.advance_rows(fast, values)
        expected_parts, expected = _reshaped_advance(blend, plain, values)
        for name in blend.names:
            assert _same_bits(parts[name], expected_parts[name]), name
        assert new.keys() == expected.keys()
        for key in expected:
            assert _same_bits(new[key], expected[key]), key
        fast = StepTransforms(dict(new))  # (the arrays as held, as a fast step hands them on)
        plain = {key: torch.from_numpy(value.copy()) for key, value in expected.items()}


@pytest.mark.parametrize("columns", [[0], [2], [1, 2, 3], [3, 1], [0, 2], [2, 2]])
def test_the_blend_reads_its_targets_columns_as_the_list_names_them(columns):
    from seqstate.recipe.step.blend import Blend

    blend = Blend({"network": 0.5, "ets_4": 0.5}, columns)
    x = np.random.default_rng(0).normal(size=(3, 5, 4)).astype(np.float32)
    read = x[:, :, blend.target_index].astype(np.float64)
    assert _same_bits(read, x[:, :, columns].astype(np.float64))
