"""A SequenceModel with a distribution head: config and JSON, exactness of the parameters
(chunked == whole, reset == separate), the NLL loss in training and evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqstate.core.distributions import DistributionHead
from seqstate.core.model import ModelConfig, SequenceModel
from seqstate.core.saved import load_model, save_model
from seqstate.lanes.lanes import Lanes
from seqstate.train import FitConfig, evaluate, fit
from seqstate.train.losses import MaskedLoss

EXACT = {"rtol": 1e-10, "atol": 1e-10}
F, O = 3, 2
HEADS = ["normal", "studentt", "negbin", "quantile"]
QUIET = {"progress": False}


def _model(name: str, seed: int = 0, **fields) -> SequenceModel:
    torch.manual_seed(seed)
    model = SequenceModel(
        input_size=F, output_size=O, cell="gru", hidden_size=8, distribution=name, **fields
    ).double()
    model.set_normalization([0.5, -1.0, 0.0], [2.0, 1.0, 0.5], [1.0, -2.0], [3.0, 0.5])
    return model.eval()


def _point_twin(model: SequenceModel) -> SequenceModel:
    """The same stack and head as a point model with k * O outputs and no output
    normalisation: its outputs are the distribution model's raw parameters, and the point
    model's outputs are tested against a per-step reference in test_model_stack.py."""
    head = model.config.distribution
    assert head is not None
    twin = SequenceModel(model.config.replace(output_size=O * head.parameter_count,
                                              distribution=None)).double()  # fmt: skip
    weights = {
        key: value for key, value in model.state_dict().items() if not key.startswith("output_")
    }
    twin.load_state_dict(weights, strict=False)
    twin.set_normalization(model.input_shift, model.input_scale)
    return twin.eval()


def test_point_config_json_is_unchanged_and_a_head_round_trips(tmp_path: Path) -> None:
    point = ModelConfig(F, O, cell="gru", hidden_size=8)
    assert "distribution" not in point.to_dict() and point.distribution is None
    assert point.to_dict()["cell"] == "gru"  # still the version-1 shorthand
    for name in HEADS:
        config = ModelConfig(F, O, cell="gru", hidden_size=8, distribution=name)
        assert config.head[-1].units == O * DistributionHead(name).parameter_count
        assert ModelConfig.from_json(config.to_json()) == config
    quantile = ModelConfig(F, O, distribution=DistributionHead("quantile", (0.05, 0.5, 0.95)))
    again = ModelConfig.from_dict(json.loads(quantile.to_json()))
    assert again.distribution == DistributionHead("quantile", (0.05, 0.5, 0.95))
    model = _model("studentt")
    save_model(model, tmp_path / "run")
    loaded = load_model(tmp_path / "run")
    x = torch.randn(2, 5, F, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.double()(x)[0], model(x)[0], **EXACT)


def test_config_refuses_a_head_on_classification_and_a_bad_head() -> None:
    with pytest.raises(ValueError, match="regression models only"):
        ModelConfig(F, 3, task="classification", distribution="normal")
    with pytest.raises(ValueError, match="must be one of"):
        ModelConfig(F, O, distribution="poisson")
    with pytest.raises(TypeError, match=r"ModelConfig\.distribution must be"):
        ModelConfig(F, O, distribution=3)
    with pytest.raises(ValueError, match="3 parameters of studentt = 6 units"):
        ModelConfig(F, O, distribution="studentt", head=[{"units": 2}])


@pytest.mark.parametrize("name", HEADS)
def test_parameters_equal_the_point_twin_and_outputs_are_medians(name: str) -> None:
    model = _model(name)
    twin = _point_twin(model)
    x = torch.randn(3, 6, F, dtype=torch.float64)
    mask = torch.rand(3, 6) < 0.8
    with torch.no_grad():
        raw, state = model.distribution_parameters(x, mask=mask)
        expected, twin_state = twin(x, mask=mask)
        y, _ = model(x, mask=mask)
    torch.testing.assert_close(raw, expected, **EXACT)
    for a, b in zip(state.tensors(), twin_state.tensors(), strict=True):
        torch.testing.assert_close(a, b, **EXACT)
    median = model.distribution(raw).median()
    torch.testing.assert_close(y, torch.where(mask[..., None], median, 0.0), **EXACT)


@st.composite
def windows(draw):
    B, T = draw(st.integers(1, 3)), draw(st.integers(1, 7))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 10_000)))
    x = torch.randn(B, T, F, generator=generator, dtype=torch.float64)
    reset = torch.rand(B, T, generator=generator) < 0.2
    mask = torch.rand(B, T, generator=generator) < 0.8
    return x, reset, mask, draw(st.integers(0, T))


@pytest.mark.parametrize("name", ["studentt", "negbin"])
@settings(max_examples=10, deadline=None)
@given(window=windows())
def test_parameters_chunked_equal_whole(name: str, window) -> None:
    model = _model(name)
    x, reset, mask, cut = window
    with torch.no_grad():
        whole, state = model.distribution_parameters(x, reset=reset, mask=mask)
        first, s1 = model.distribution_parameters(
            x[:, :cut], reset=reset[:, :cut], mask=mask[:, :cut]
        )
        second, s2 = model.distribution_parameters(
            x[:, cut:], s1, reset=reset[:, cut:], mask=mask[:, cut:]
        )
    torch.testing.assert_close(torch.cat([first, second], 1), whole, **EXACT)
    for a, b in zip(s2.tensors(), state.tensors(), strict=True):
        torch.testing.assert_close(a, b, **EXACT)


@pytest.mark.parametrize("name", HEADS)
def test_parameters_reset_equal_separate(name: str) -> None:
    model = _model(name)
    a, b = torch.randn(1, 4, F, dtype=torch.float64), torch.randn(1, 3, F, dtype=torch.float64)
    reset = torch.zeros(1, 7, dtype=torch.bool)
    reset[0, 4] = True
    with torch.no_grad():
        packed, _ = model.distribution_parameters(torch.cat([a, b], 1), reset=reset)
        alone, _ = model.distribution_parameters(b)
    torch.testing.assert_close(packed[:, 4:], alone, **EXACT)


def _ar_series(n: int = 800, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = np.zeros(n, dtype=np.float32)
    for t in range(1, n):
        y[t] = 0.7 * y[t - 1] + rng.standard_t(5) * 0.5
    return (10 + y).astype(np.float32)


def test_nll_trains_and_evaluate_reports_raw_metrics_of_the_median() -> None:
    series = _ar_series()
    torch.manual_seed(0)
    model = SequenceModel(input_size=1, output_size=1, hidden_size=16, distribution="studentt")
    model.set_normalization([10.0], [1.0], [10.0], [1.0])
    lanes = Lanes.from_series(series, lanes=8, window=25)
    history = fit(model, lanes, epochs=8, lr=1e-2, **QUIET)
    assert history["loss"][-1] < history["loss"][0] - 0.1
    metrics = evaluate(model, Lanes.from_series(series, lanes=1, window=25))
    with torch.no_grad():  # the median's one-step error, by hand
        x = torch.from_numpy(series[:-1]).reshape(1, -1, 1)
        y, _ = model(x)
    mae = float((y[0, :, 0] - torch.from_numpy(series[1:])).abs().mean())
    assert metrics["mae"] == pytest.approx(mae, rel=1e-4)
    assert metrics["loss"] == pytest.approx(history["loss"][-1], abs=0.2)


def test_nll_is_the_only_loss_for_a_head_and_needs_one() -> None:
    model = _model("normal")
    lanes = Lanes.from_series(np.random.default_rng(0).normal(size=(60, F)), lanes=2, window=5)
    with pytest.raises(ValueError, match="does not fit a model with a normal distribution"):
        fit(model, lanes, config=FitConfig(loss="mse"), epochs=1, **QUIET)
    with pytest.raises(ValueError, match="nll loss needs a model with a distribution head"):
        MaskedLoss("nll")


def test_masked_nll_counts_only_masked_steps() -> None:
    model = _model("studentt")
    x = torch.randn(2, 5, F, dtype=torch.float64)
    y = torch.randn(2, 5, O, dtype=torch.float64)
    mask = torch.rand(2, 5) < 0.6
    raw, _ = model.distribution_parameters(x)
    raw = raw.detach().clone()
    raw[~mask] = float("nan")  # what a step that does not count holds must not leak
    loss = MaskedLoss("nll", head_loss=model.distribution_loss)
    expected = sum(
        float(model.distribution_loss(raw[b : b + 1, t : t + 1], y[b : b + 1, t : t + 1]).mean())
        for b in range(2)
        for t in range(5)
        if mask[b, t]
    )
    assert float(loss.sum(raw, y, mask)) == pytest.approx(expected, rel=1e-12)


def test_streams_and_predict_give_the_medians() -> None:
    from seqstate import Streams, predict

    model = _model("studentt").float()
    x = np.random.default_rng(0).normal(size=(6, F)).astype(np.float32)
    whole = predict(model, x)
    with torch.no_grad():
        raw, _ = model.distribution_parameters(torch.from_numpy(x)[None])
        medians = model.distribution(raw).median()[0].numpy()
    np.testing.assert_allclose(whole, medians, rtol=1e-5, atol=1e-6)
    streams = Streams(model)
    stepped = np.concatenate([streams.step(["a"], x[t][None]) for t in range(6)])
    np.testing.assert_allclose(stepped, whole, rtol=1e-5, atol=1e-6)
