"""Sample-path forecasts: calibration on a known process, reproducibility, the plain loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqstate.core.model import SequenceModel
from seqstate.inference.forecasting import forecast
from seqstate.inference.sampling import Forecast, sample_forecast, stream_seed
from seqstate.lanes.lanes import Lanes
from seqstate.train import fit


def _ar1_student_t(series: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """y[t] = 0.6 y[t-1] + e[t], e ~ Student-t(4): [series, length]."""
    y = np.zeros((series, length), dtype=np.float32)
    for t in range(1, length):
        y[:, t] = 0.6 * y[:, t - 1] + rng.standard_t(4, size=series)
    return y


@pytest.fixture(scope="module")
def trained() -> tuple[SequenceModel, np.ndarray]:
    rng = np.random.default_rng(0)
    train, test = _ar1_student_t(64, 200, rng), _ar1_student_t(400, 41, rng)
    torch.manual_seed(0)
    model = SequenceModel(input_size=1, output_size=1, hidden_size=16, distribution="studentt")
    lanes = Lanes.from_sequences([s[:, None] for s in train], lanes=16, window=50)
    fit(model, lanes, epochs=10, lr=1e-2, progress=False)
    return model, test


def test_intervals_are_calibrated_on_an_ar1_with_student_t_noise(trained) -> None:
    model, test = trained
    x, y = torch.from_numpy(test[:, :-1, None]), torch.from_numpy(test[:, 1:, None])
    with torch.no_grad():
        raw, _ = model.distribution_parameters(x)
        q = model.distribution(raw).quantile((0.025, 0.1, 0.9, 0.975))
    # 400 series x 40 steps: the estimate's own standard error is about 0.003
    coverage_80 = float(((y >= q[..., 1]) & (y <= q[..., 2])).double().mean())
    coverage_95 = float(((y >= q[..., 0]) & (y <= q[..., 3])).double().mean())
    assert abs(coverage_80 - 0.80) < 0.03, coverage_80
    assert abs(coverage_95 - 0.95) < 0.02, coverage_95


def test_sample_paths_are_the_plain_loop_and_reproducible(trained) -> None:
    model, test = trained
    context = [s[:-5, None] for s in test[:3]]
    result = forecast(model, context, 4, samples=7, seed=11)
    assert isinstance(result, Forecast) and result.samples.shape == (3, 7, 4, 1)
    again = sample_forecast(model, context, 4, samples=7, seed=11)
    np.testing.assert_array_equal(result.samples, again.samples)
    other = sample_forecast(model, context, 4, samples=7, seed=12)
    assert not np.array_equal(result.samples, other.samples)
    # the plain loop: warm up each series, 7 rows of its state, sample (series i from its own
    # generator, seeded by the seed and its key, its position), feed back
    generators = [torch.Generator().manual_seed(stream_seed(11, i)) for i in range(3)]
    with torch.no_grad():
        raws, states = [], []
        for series in context:
            raw, state = model.distribution_parameters(torch.from_numpy(series)[None])
            raws.append(raw[:, -1].repeat(7, 1))
            states.append(state.select([0] * 7))
        raw, state = torch.cat(raws), type(states[0]).cat(states)
        paths = []
        for _ in range(4):
            value = torch.cat(
                [
                    model.distribution(raw[7 * i : 7 * i + 7]).sample(generator=g)
                    for i, g in enumerate(generators)
                ]
            )  # [21, 1]
            paths.append(value)
            step, state = model.distribution_parameters(value[:, None], state)
            raw = step[:, 0]
    expected = torch.stack(paths, 1).reshape(3, 7, 4, 1).numpy()
    np.testing.assert_allclose(result.samples, expected, rtol=1e-5, atol=1e-6)
    # keyed, a series draws the same paths alone as beside the others
    keyed = sample_forecast(model, context, 4, samples=7, seed=11, keys=["a", "b", "c"])
    alone = sample_forecast(model, context[1:2], 4, samples=7, seed=11, keys=["b"])
    np.testing.assert_allclose(alone.samples[0], keyed.samples[1], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="keys must hold one key per series"):
        sample_forecast(model, context, 4, samples=7, seed=11, keys=["a"])


def test_forecast_quantiles_are_monotone_and_named(trained) -> None:
    model, test = trained
    result = forecast(model, test[0, :, None], 6, samples=50, quantiles=(0.025, 0.1, 0.9), seed=0)
    assert result.samples.shape == (50, 6, 1) and result.median.shape == (6, 1)
    named = result.quantiles()
    assert list(named) == ["q2.5", "q10", "q90"]
    assert (named["q2.5"] <= named["q10"]).all() and (named["q10"] <= result.median).all()
    assert (result.median <= named["q90"]).all()


def test_sampling_refuses_what_it_cannot_do() -> None:
    point = SequenceModel(input_size=1, output_size=1, hidden_size=4)
    with pytest.raises(ValueError, match="need a SequenceModel with a distribution head"):
        sample_forecast(point, np.zeros((5, 1), np.float32), 2)
    with pytest.raises(ValueError, match="give samples=N too"):
        forecast(point, np.zeros((5, 1), np.float32), 2, seed=3)
    model = SequenceModel(input_size=1, output_size=1, hidden_size=4, distribution="normal")
    with pytest.raises(ValueError, match="samples"):
        sample_forecast(model, np.zeros((5, 1), np.float32), 2, samples=0)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        sample_forecast(model, np.zeros((5, 1), np.float32), 2, quantiles=(0.5, 1.5))
