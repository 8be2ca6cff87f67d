"""A negative binomial run in ONNX: its median (the run's answer) by the pmf's recurrence.

``predict`` takes the median from the pmf written with ``lgamma``; ONNX has no ``lgamma``
operator, so the graph sums the pmf by its recurrence in float64
(``negbin_quantiles_by_recurrence``). Here: that form equals the lgamma form in float64 on a
grid and a random sample, and on float32 parameters (both sum in float64 inside, where float32
lgamma would move the median near the dispersion's floor); ONNX Runtime answers as the torch
step function, chunk by chunk.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqstate.core.distributions import DistributionHead, negbin_quantiles_by_recurrence
from seqstate.core.model import SequenceModel

onnx = pytest.importorskip("onnx", reason="onnx (the [onnx] extra) is needed to export")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime (the [onnx] extra) runs the graph")

MEANS = (1e-6, 1e-3, 0.01, 0.1, 0.3, 0.5, 0.69, 0.7, 1, 1.5, 2, 3.3, 5, 7.5, 10, 25, 50, 99.5,
         100, 200, 333.3, 500, 777, 1000)  # fmt: skip
DISPERSIONS = (1e-6, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.3, 0.5, 1, 2, 5, 10, 50)
LEVELS = (0.05, 0.1, 0.5, 0.9, 0.99)


def _inverse_softplus(value: torch.Tensor) -> torch.Tensor:
    return value + torch.log(-torch.expm1(-value))


def _grid(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    mean, dispersion = torch.meshgrid(
        torch.tensor(MEANS, dtype=torch.float64),
        torch.tensor(DISPERSIONS, dtype=torch.float64),
        indexing="ij",
    )
    # the parameters as the head makes them (softplus + floor), so both forms see the same
    head = DistributionHead("negbin")
    raw = torch.stack(
        [_inverse_softplus(mean.clamp_min(2e-6) - 1e-6),
         _inverse_softplus(dispersion.clamp_min(2e-6) - 1e-6)], -1
    ).to(dtype)  # fmt: skip
    params = head.distribution(raw, torch.zeros(1, dtype=dtype), torch.ones(1, dtype=dtype))
    return params.params["mean"], params.params["dispersion"]  # [24, 13, 1]


def test_the_recurrence_equals_the_lgamma_form_in_float64_on_a_grid() -> None:
    """Means from 1e-6 to 1000 and dispersions from 1e-6 to 50, at five levels: the same counts
    (including pmf(0) = exp(r log(r / (r + m))) far below float64's smallest number, at
    mean 1000 and dispersion 1e-6, where a product of pmfs would be 0 throughout)."""
    mean, dispersion = _grid(torch.float64)
    expected = _lgamma_quantiles_direct(mean, dispersion, LEVELS)
    got = negbin_quantiles_by_recurrence(mean, dispersion, LEVELS)
    assert got.dtype == torch.float64 and got.shape == (len(MEANS), len(DISPERSIONS), 1, 5)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    r = 1 / dispersion
    assert (r * torch.log(r / (r + mean))).min() < -745  # exp underflows to 0 in float64
    # and against scipy's negative binomial where it is exact: a few points
    stats = pytest.importorskip("scipy.stats")
    for m, d in ((0.7, 0.3), (99.5, 0.05), (1000.0, 1e-6), (5.0, 50.0)):
        n = 1 / d
        want = stats.nbinom.ppf(0.5, n, n / (n + m))
        point = negbin_quantiles_by_recurrence(
            torch.tensor([m], dtype=torch.float64), torch.tensor([d], dtype=torch.float64), [0.5]
        )
        assert float(point) == want


def _lgamma_quantiles_direct(mean, dispersion, levels) -> torch.Tensor:
    """The lgamma form on these exact parameters (``OutputDistribution.quantile``)."""
    from seqstate.core.distributions import OutputDistribution

    distribution = OutputDistribution(
        DistributionHead("negbin"), {"mean": mean, "dispersion": dispersion}
    )
    return distribution.quantile(list(levels))


def test_the_recurrence_equals_the_lgamma_form_in_float64_on_random_parameters() -> None:
    generator = torch.Generator().manual_seed(0)
    mean = torch.exp(torch.rand(4000, 1, generator=generator, dtype=torch.float64) * 13 - 7)
    dispersion = torch.exp(torch.rand(4000, 1, generator=generator, dtype=torch.float64) * 12 - 9)
    for chunk in range(0, 4000, 500):  # the bound is the chunk's largest mean + 12 sd
        m, d = mean[chunk : chunk + 500], dispersion[chunk : chunk + 500]
        assert torch.equal(
            negbin_quantiles_by_recurrence(m, d, [0.5]), _lgamma_quantiles_direct(m, d, [0.5])
        )


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(1e-6, 2000.0), min_size=1, max_size=6),
    st.floats(1e-6, 100.0),
    st.floats(0.01, 0.99),
)
def test_the_recurrence_equals_the_lgamma_form_in_float64_for_any_parameters(
    means: list[float], dispersion: float, level: float
) -> None:
    """Rows of one call share the bound (the largest mean + 12 sd): a row far below it sums
    many more counts than it needs, and still lands on the same count."""
    mean = torch.tensor(means, dtype=torch.float64)[:, None]
    spread = torch.full_like(mean, dispersion)
    assert torch.equal(
        negbin_quantiles_by_recurrence(mean, spread, [level]),
        _lgamma_quantiles_direct(mean, spread, [level]),
    )


def test_float32_parameters_get_the_exact_median_from_both_forms() -> None:
    """A head in float32 (as ``predict`` runs it): lgamma of counts in the hundreds (or of
    r = 1 / dispersion near 1e6) has an ulp of 1e-4 to 1 there, which would move a median whose
    cdf passes 0.5 within it; both forms sum in float64 inside, so they answer the exact
    quantiles (those of the float64 parameters) and equal each other."""
    mean, dispersion = _grid(torch.float32)
    got = negbin_quantiles_by_recurrence(mean, dispersion, LEVELS)
    assert got.dtype == torch.float32
    exact = _lgamma_quantiles_direct(mean.double(), dispersion.double(), LEVELS)
    assert torch.equal(got.double(), exact)
    assert torch.equal(_lgamma_quantiles_direct(mean, dispersion, LEVELS), got)


# --- the run in ONNX Runtime -----------------------------------------------------------------


def _identity_run(tmp_path: Path) -> Path:
    """A run whose network passes its two inputs through to the head's raw parameters: a
    linear RNN with identity input weights, no recurrence, an identity head. Column ``y`` is
    the mean's raw parameter, ``z`` the dispersion's, so the test picks both per step."""
    from seqstate.recipe.run import Run, RunMember
    from seqstate.recipe.table import Columns

    model = SequenceModel(
        input_size=2,
        output_size=1,
        layers=[{"kind": "rnn", "hidden_size": 2, "activation": "linear"}],
        distribution="negbin",
    )
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            eye = name.endswith("weight_ih_l0") or name == "head.weight"
            parameter.copy_(torch.eye(2) if eye else torch.zeros_like(parameter))
    member = RunMember(model, None, (), {})
    return Run([member], Columns(features=("y", "z"), targets=("y",))).save(tmp_path / "run")


def _raw_inputs(batch: int, steps: int, seed: int) -> np.ndarray:
    """Raw parameters per step: means from softplus(-12) ~ 6e-6 to 600, dispersions from the
    floor (1e-6) to 20."""
    rng = np.random.default_rng(seed)
    mean_raw = rng.choice([-12.0, -6.0, -2.0, 0.0, 1.0, 3.0, 20.0, 150.0, 600.0], (batch, steps))
    mean_raw += rng.uniform(-0.5, 0.5, (batch, steps))
    dispersion_raw = rng.choice([-30.0, -7.0, -4.0, -1.0, 0.5, 2.0, 20.0], (batch, steps))
    dispersion_raw += rng.uniform(-0.5, 0.5, (batch, steps))
    return np.stack([mean_raw, dispersion_raw], -1).astype(np.float32)


def test_onnx_runtime_answers_the_exact_median_the_step_function_answers(tmp_path: Path) -> None:
    """At T = 1, 7 and whole, for one row and four: the graph's parameters equal the step
    function's, and its ``y`` is the exact median of them (the lgamma form in float64), which
    the step function answers too."""
    from seqstate.interop.onnx import export_run_onnx, run_onnx_names
    from seqstate.recipe.run import Run
    from test_onnx_run_baselines import run_onnx

    run = _identity_run(tmp_path)
    path = export_run_onnx(run, tmp_path / "run.onnx")
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "Range" in ops and "CumSum" in ops  # the counts, sized in the graph
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    function = Run.load(run).step_function()
    model = function.members[0].model
    _, outputs = run_onnx_names(function)
    assert outputs[-1] == "m0.distribution_parameters"
    inputs = run_onnx_names(function)[0]
    for batch in (1, 4):
        x = _raw_inputs(batch, 15, seed=batch)
        expected, _ = function.step(function.initial_state([None] * batch), x)
        with torch.no_grad():
            raw, _ = model.distribution_parameters(torch.from_numpy(x), model.initial_state(batch))
            distribution = model.distribution(raw)  # float32, as the step function's
        params = distribution.params
        assert float(params["mean"].min()) < 1e-4 and float(params["mean"].max()) > 500
        assert float(params["dispersion"].min()) < 2e-6 and float(params["dispersion"].max()) > 10
        exact = _lgamma_quantiles_direct(
            params["mean"].double(), params["dispersion"].double(), [0.5]
        )[..., 0].float()  # the exact median, as the graph computes it (float32 out)
        # (no transforms: y is the median)
        assert torch.equal(expected.float(), distribution.median())
        assert torch.equal(expected.float(), exact)
        for chunk in (1, 7, x.shape[1]):
            got, _ = run_onnx(session, function, x, None, [None] * batch, chunk)
            np.testing.assert_array_equal(got, exact.double().numpy())
        # the graph's own parameters output, one whole chunk
        state = function.initial_state([None] * batch)
        tensors = [t.numpy() for t in state.transforms.values()]
        tensors += [t.numpy() for m in state.models for t in m.tensors()]
        result = session.run(None, dict(zip(inputs, [x, *tensors], strict=True)))
        np.testing.assert_allclose(result[-1], raw.numpy(), rtol=1e-6, atol=1e-6)


def test_a_trained_counts_run_exports_and_answers_as_the_step_function(tmp_path: Path) -> None:
    """``seqstate train --distribution auto`` on counts (a negative binomial head), then
    ``seqstate export-onnx``: ONNX Runtime's ``y`` equals the step function's at T = 1, 7 and
    whole for one row and four (series of rare, few and hundreds of counts; the parameters'
    whole range is the test above's)."""
    import pandas as pd

    from seqstate.cli.dispatch import main
    from seqstate.recipe.run import Run
    from test_onnx_run_baselines import run_onnx

    rng = np.random.default_rng(0)
    months = pd.date_range("2015-01-01", periods=30, freq="MS")
    rates = {"rare": 0.2, "few": 5.0, "many": 300.0}
    frame = pd.concat(
        pd.DataFrame({"id": name, "month": months, "value": rng.poisson(rate, size=30)})
        for name, rate in rates.items()
    )
    frame.to_csv(tmp_path / "counts.csv", index=False)
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "counts.csv"), "-t", "value", "-f", "value", "--id", "id",
                 "--time", "month", "--select", "network", "--distribution", "auto",
                 "--scaling", "none", "--difference", "0", "--seasonal-difference", "0",
                 "--epochs", "2", "--hidden-size", "4", "--quiet", "--no-progress",
                 "--out", str(run)]) == 0  # fmt: skip
    loaded = Run.load(run)
    assert loaded.members[0].model.config.distribution.name == "negbin"
    assert main(["export-onnx", str(run), str(tmp_path / "run.onnx")]) == 0
    session = ort.InferenceSession(str(tmp_path / "run.onnx"), providers=["CPUExecutionProvider"])
    function = loaded.step_function()
    for series in (["many"], ["rare", "few", "many", "rare"]):
        x = np.stack(
            [frame.loc[frame["id"] == name, ["value"]].to_numpy(np.float32) for name in series]
        )  # (B, 30, 1)
        expected, _ = function.step(function.initial_state(series), x)
        for chunk in (1, 7, x.shape[1]):
            got, _ = run_onnx(session, function, x, None, series, chunk)
            np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=0)
