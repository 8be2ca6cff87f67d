"""Sample paths through a run (RunStep): sampled in model space, each path inverted through
the run's transforms (scaling, log, differencing, calendar, covariates)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqstate.core.model import SequenceModel
from seqstate.recipe.covariates import calendar_names
from seqstate.recipe.run_forecaster import RunMember
from seqstate.recipe.scaling import Scaling
from seqstate.recipe.step import RunState, RunStep
from seqstate.recipe.step import tables as step_tables
from test_run_step import RUNS, assert_close, future_of, reference_predictions

KINDS = ["monthly defaults", "hourly calendar covariate", "log1p difference",
         "seasonal and lag difference", "seeds 3", "plain"]  # fmt: skip


def build(name: str, distribution: str = "normal", narrow: bool = False):
    """The run ``name`` of test_run_step.py with distribution heads; ``narrow``: every sd at
    its floor (1e-6 in model space), so each path must retrace the point forecast."""
    make, config, calendar, seeds, fitted_on = RUNS[name]
    table = make()
    inputs = len(table.columns.features) + len(calendar_names(calendar))
    members = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        model = SequenceModel(
            input_size=inputs, output_size=1, hidden_size=8, distribution=distribution
        )
        if narrow:
            with torch.no_grad():  # the sd's raw parameter: softplus(-40) ~ 0
                model.head.weight[1:].zero_()
                model.head.bias[1:] = -40.0
        scaling = None
        if config is not None:
            part = table if fitted_on is None else table.select(fitted_on[seed])
            scaling = Scaling.fit(part, config)
        members.append(RunMember(model.eval(), scaling, tuple(calendar)))
    run_step = RunStep([(m.model, m.scaling, m.calendar) for m in members], table.columns)
    return table, members, run_step


def warm(run_step, table, horizon):
    _, state = step_tables.warm_up(run_step, table)
    times, covariates, _ = future_of(table, horizon)
    stamps = np.stack([step_tables.table_times(run_step, t) for t in times])
    return state, (np.stack(covariates) if covariates is not None else None), stamps


@pytest.mark.parametrize("name", KINDS)
def test_a_distribution_run_steps_its_medians_like_the_table_reference(name: str) -> None:
    table, members, run_step = build(name, "studentt")
    expected = reference_predictions(members, table)
    got = step_tables.predict_table(run_step, table, chunk=5, batch_size=3).members
    for i in range(len(table)):
        for k in range(len(members)):
            assert_close(got[i][k], expected[k][i])


@pytest.mark.parametrize("name", KINDS)
def test_narrow_paths_retrace_the_point_forecast_through_every_transform(name: str) -> None:
    table, members, run_step = build(name, narrow=True)
    horizon = 5
    state, covariates, stamps = warm(run_step, table, horizon)
    _, point = run_step.forecast_members(state, horizon, covariates, times=stamps)  # [K, n, H, 1]
    _, paths = run_step.sample_forecast(state, horizon, covariates, times=stamps, samples=3, seed=0)
    assert paths.shape == (len(table), 3 * len(members), horizon, 1)
    for k in range(len(members)):
        for s in range(3):
            got = paths[:, k * 3 + s].numpy()
            np.testing.assert_allclose(got, point[k].numpy(), rtol=1e-4, atol=1e-6)


def test_run_paths_are_reproducible_spread_and_leave_the_state_unchanged() -> None:
    table, _, run_step = build("log1p difference", "studentt")
    state, covariates, stamps = warm(run_step, table, 4)
    before = state.to_bytes()
    _, first = run_step.sample_forecast(state, 4, covariates, times=stamps, samples=20, seed=3)
    _, again = run_step.sample_forecast(state, 4, covariates, times=stamps, samples=20, seed=3)
    _, other = run_step.sample_forecast(state, 4, covariates, times=stamps, samples=20, seed=4)
    assert state.to_bytes() == before
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert bool((first.std(dim=1) > 0).all())  # the paths spread
    assert bool(torch.isfinite(first).all()) and bool((first > -1).all())  # log1p's domain


def test_a_streams_paths_depend_on_its_key_not_on_the_other_streams() -> None:
    # Each stream draws from its own generator seeded by (seed, key): the paths of stream 1
    # are the same alone as beside the others, and keyed by its series id they follow it to
    # another row; two keys give two sets of paths.
    table, _, run_step = build("log1p difference", "studentt")
    state, covariates, stamps = warm(run_step, table, 3)
    ids = list(table.ids)
    _, together = run_step.sample_forecast(
        state, 3, covariates, times=stamps, samples=7, seed=5, keys=ids
    )
    one = state.select([1])
    row = lambda a: None if a is None else a[1:2]  # noqa: E731
    _, alone = run_step.sample_forecast(
        one, 3, row(covariates), times=row(stamps), samples=7, seed=5, keys=ids[1:2]
    )
    torch.testing.assert_close(alone[0], together[1], rtol=1e-12, atol=0)
    _, renamed = run_step.sample_forecast(
        one, 3, row(covariates), times=row(stamps), samples=7, seed=5, keys=["other"]
    )
    assert not torch.equal(renamed[0], together[1])
    with pytest.raises(ValueError, match="keys must hold one key"):
        run_step.sample_forecast(state, 3, covariates, times=stamps, samples=2, keys=ids[:1])


def test_a_point_run_refuses_sample_paths() -> None:
    make, *_ = RUNS["plain"]
    table = make()
    model = SequenceModel(input_size=1, output_size=1, hidden_size=4).eval()
    run_step = RunStep([(model, None, ())], table.columns)
    _, state = step_tables.warm_up(run_step, table)
    with pytest.raises(ValueError, match="need a run trained with a distribution head"):
        run_step.sample_forecast(state, 2, samples=2)
    with pytest.raises(ValueError, match="samples must be an int >= 1"):
        run_step.sample_forecast(state, 2, samples=0)


@pytest.mark.parametrize("name", ["monthly defaults", "seeds 3"])
def test_paths_of_a_run_with_baselines_are_each_path_combined_like_the_point_forecast(name):
    """A run whose validation chose network + ETS + seasonal naive: every path is the
    network's path (the same draws) re-centred from the paths' median onto the selection's
    weights over that median and the baselines' forecasts; narrow heads retrace the
    (combined) point forecast that predict answers."""
    from seqstate.recipe.selection import Selection

    table, members, network = build(name, narrow=True)
    weights = {"network": 0.5, "ets_12": 0.25, "seasonal_naive_12": 0.25}
    chosen = Selection(weights, "network+ets_12+seasonal_naive_12", {}, 12, 24, 1, 1)
    run_step = RunStep(
        [(m.model, m.scaling, m.calendar) for m in members], table.columns, selection=chosen
    )
    horizon = 5
    state, covariates, stamps = warm(run_step, table, horizon)
    # (an even count: the median is the mean of the middle two, as np.median and the CLI)
    _, paths = run_step.sample_forecast(state, horizon, covariates, times=stamps, samples=4, seed=1)
    # the network alone, from the same state (its baselines' entries are not read), same seed
    alone_state = RunState(
        {k: v for k, v in state.transforms.items() if not k.startswith("baseline.")},
        state.models,
    )
    _, alone = network.sample_forecast(
        alone_state, horizon, covariates, times=stamps, samples=4, seed=1
    )
    parts = run_step.blend.forecast(state.transforms, horizon)
    centre = torch.from_numpy(np.median(alone.numpy(), axis=1, keepdims=True))
    answer = sum(w * (centre if n == "network" else parts[n][:, None]) for n, w in weights.items())
    np.testing.assert_allclose(paths.numpy(), (alone - centre + answer).numpy(), rtol=1e-12)
    if len(members) == 1:  # (an ensemble's point forecast combines the members' mean)
        _, point = run_step.forecast(state, horizon, covariates, times=stamps)
        for s in range(paths.shape[1]):
            np.testing.assert_allclose(paths[:, s].numpy(), point.numpy(), rtol=1e-4, atol=1e-6)


def test_paths_of_a_run_answering_with_baselines_alone_keep_the_network_spread():
    """Validation chose seasonal naive alone: the paths centre on its forecast (their median
    is the run's point forecast) and keep the network's spread, not none."""
    from seqstate.recipe.selection import Selection

    table, members, network = build("monthly defaults")
    chosen = Selection({"seasonal_naive_12": 1.0}, "seasonal_naive_12", {}, 12, 24, 1, 1)
    run_step = RunStep(
        [(m.model, m.scaling, m.calendar) for m in members], table.columns, selection=chosen
    )
    horizon = 4
    state, covariates, stamps = warm(run_step, table, horizon)
    _, paths = run_step.sample_forecast(
        state, horizon, covariates, times=stamps, samples=40, seed=3
    )
    _, point = run_step.forecast(state, horizon, covariates, times=stamps)
    np.testing.assert_allclose(np.median(paths.numpy(), axis=1), point.numpy(), rtol=1e-9)
    alone_state = RunState(
        {k: v for k, v in state.transforms.items() if not k.startswith("baseline.")},
        state.models,
    )
    _, alone = network.sample_forecast(
        alone_state, horizon, covariates, times=stamps, samples=40, seed=3
    )
    spread = paths.quantile(0.9, dim=1) - paths.quantile(0.1, dim=1)
    expected = alone.quantile(0.9, dim=1) - alone.quantile(0.1, dim=1)
    assert float(spread.min()) > 0
    np.testing.assert_allclose(spread.numpy(), expected.numpy(), rtol=1e-9)
