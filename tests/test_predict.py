"""predict (chunked == whole, batch-size free) and forecast (== a plain step-by-step loop)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqstate.core.model import SequenceModel
from seqstate.inference.prediction import forecast, predict

pytestmark = pytest.mark.numerics  # run again on another kernel path: scripts/test

F, O, H = 3, 2, 8


def make_model(
    cell: str = "lstm",
    *,
    input_size: int = F,
    output_size: int = O,
    dtype: torch.dtype = torch.float64,
    **kwargs,
) -> SequenceModel:
    torch.manual_seed(0)
    model = SequenceModel(
        input_size=input_size,
        output_size=output_size,
        cell=cell,
        hidden_size=H,
        num_layers=2,
        **kwargs,
    )
    return model.to(dtype).eval()


def whole(model: SequenceModel, sequence: np.ndarray):
    """The reference: one call over the whole sequence from a zero state."""
    with torch.no_grad():
        x = torch.as_tensor(sequence, dtype=next(model.parameters()).dtype)
        y, state = model(x[None])
    return y[0].numpy(), state


MODELS = {cell: make_model(cell) for cell in ("lstm", "gru", "rnn")}


@settings(max_examples=40, deadline=None)
@given(
    cell=st.sampled_from(["lstm", "gru", "rnn"]),
    lengths=st.lists(st.integers(1, 30), min_size=1, max_size=6),
    chunk=st.integers(1, 12),
    batch_size=st.integers(1, 7),
    seed=st.integers(0, 2**16),
)
def test_chunked_equals_whole_float64(cell, lengths, chunk, batch_size, seed):
    model = MODELS[cell]
    rng = np.random.default_rng(seed)
    sequences = [rng.normal(size=(length, F)) for length in lengths]
    outputs, final = predict(
        model, sequences, chunk=chunk, batch_size=batch_size, return_state=True
    )
    assert isinstance(outputs, list) and len(outputs) == len(sequences)
    # Without return_state padding runs unmasked (a different code path): same outputs.
    plain = predict(model, sequences, chunk=chunk, batch_size=batch_size)
    for i, sequence in enumerate(sequences):
        expected, state = whole(model, sequence)
        assert outputs[i].shape == (len(sequence), O) and outputs[i].dtype == np.float64
        np.testing.assert_allclose(outputs[i], expected, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(plain[i], expected, rtol=1e-10, atol=1e-10)
        for got, want in zip(final.select([i]).tensors(), state.tensors(), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@settings(max_examples=10, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 40), min_size=1, max_size=5),
    chunk=st.integers(1, 16),
    batch_size=st.integers(1, 5),
)
def test_chunked_equals_whole_float32(lengths, chunk, batch_size):
    model = make_model("lstm", dtype=torch.float32)
    rng = np.random.default_rng(len(lengths))
    sequences = [rng.normal(size=(length, F)).astype(np.float32) for length in lengths]
    outputs = predict(model, sequences, chunk=chunk, batch_size=batch_size)
    for sequence, output in zip(sequences, outputs, strict=True):
        assert output.dtype == np.float32
        np.testing.assert_allclose(output, whole(model, sequence)[0], rtol=1e-6, atol=1e-5)


def test_defaults_on_a_long_sequence_and_many_short_ones():
    model = MODELS["gru"]
    rng = np.random.default_rng(1)
    sequences = [rng.normal(size=(700, F)), *(rng.normal(size=(n, F)) for n in range(1, 30))]
    outputs = predict(model, sequences)
    for sequence, output in zip(sequences, outputs, strict=True):
        np.testing.assert_allclose(output, whole(model, sequence)[0], rtol=1e-10, atol=1e-10)


def test_input_forms_give_outputs_in_the_same_form():
    model = MODELS["lstm"]
    rng = np.random.default_rng(2)
    batch = rng.normal(size=(4, 9, F))
    one = predict(model, batch[0])
    assert one.shape == (9, O)
    np.testing.assert_allclose(one, whole(model, batch[0])[0], atol=1e-10)
    stacked = predict(model, batch, chunk=4)
    assert stacked.shape == (4, 9, O)
    np.testing.assert_allclose(stacked[2], whole(model, batch[2])[0], atol=1e-10)
    as_tensors = predict(model, [torch.from_numpy(b) for b in batch])
    np.testing.assert_allclose(np.stack(as_tensors), stacked, atol=1e-10)
    _, state = predict(model, batch[0], return_state=True)
    assert state.batch_size == 1


def test_univariate_sequences_may_be_one_dimensional():
    model = make_model("gru", input_size=1, output_size=1)
    series = np.sin(np.arange(50) / 5)
    out = predict(model, series, chunk=7)
    assert out.shape == (50, 1)
    np.testing.assert_allclose(out, whole(model, series[:, None])[0], atol=1e-10)
    ints = predict(model, [np.arange(5), np.arange(3)])  # integers are cast to the model dtype
    np.testing.assert_allclose(ints[1], whole(model, np.arange(3.0)[:, None])[0], atol=1e-10)


def test_classification_outputs_logits():
    model = make_model("lstm", output_size=4, task="classification")
    out = predict(model, np.ones((6, F)))
    assert out.shape == (6, 4)
    np.testing.assert_allclose(out, whole(model, np.ones((6, F)))[0], atol=1e-10)


def test_runs_in_eval_mode_and_restores_the_training_flag():
    model = make_model("lstm", dropout=0.5)  # dropout acts between layers in training only
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sequence = np.random.default_rng(3).normal(size=(20, F))
    first = predict(model, sequence, chunk=3)
    second = predict(model, sequence, chunk=5)
    assert model.training
    np.testing.assert_allclose(first, second, atol=1e-10)
    model.eval()
    np.testing.assert_allclose(first, whole(model, sequence)[0], atol=1e-10)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def test_device_argument_leaves_the_model_where_it_is():
    model = MODELS["rnn"]
    sequence = np.random.default_rng(4).normal(size=(10, F))
    np.testing.assert_allclose(
        predict(model, sequence, device="cpu"), whole(model, sequence)[0], atol=1e-10
    )
    assert next(model.parameters()).device.type == "cpu"


@pytest.mark.parametrize(
    ("sequences", "error", "message"),
    [
        (np.zeros((5, F + 1)), ValueError, "has 4 features but the model expects F=3"),
        ([np.zeros((5, F)), np.zeros((4, 2))], ValueError, r"sequences\[1\] has 2 features"),
        (np.zeros(5), ValueError, "one feature per step, but the model expects F=3"),
        ([np.zeros((5, F)), np.zeros((0, F))], ValueError, r"sequences\[1\] is empty"),
        ([], ValueError, "empty list"),
        (np.zeros((2, 3, 4, F)), ValueError, "received an array of shape"),
        ("abc", TypeError, "must be an array"),
        ([np.array([["a", "b", "c"]])], TypeError, "must hold numbers"),
    ],
)
def test_bad_sequences_raise_clear_errors(sequences, error, message):
    with pytest.raises(error, match=message):
        predict(MODELS["lstm"], sequences)


def test_nan_is_reported_with_sequence_and_step():
    sequences = [np.zeros((5, F)), np.zeros((8, F))]
    sequences[1][6, 2] = np.nan
    with pytest.raises(ValueError, match=r"sequences\[1\] holds NaN or inf at step 6"):
        predict(MODELS["lstm"], sequences)
    overflow = np.full((3, F), 1e300)  # finite in float64, inf in the model's float32
    with pytest.raises(ValueError, match="at step 0"):
        predict(make_model("lstm", dtype=torch.float32), overflow)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"chunk": 0}, ValueError),
        ({"chunk": 2.5}, TypeError),
        ({"batch_size": -1}, ValueError),
        ({"batch_size": True}, TypeError),
        ({"return_state": 1}, TypeError),
    ],
)
def test_bad_options_raise(kwargs, error):
    with pytest.raises(error, match=next(iter(kwargs))):
        predict(MODELS["lstm"], np.zeros((4, F)), **kwargs)


def test_model_must_follow_the_protocol():
    with pytest.raises(TypeError, match="initial_state"):
        predict(torch.nn.Linear(3, 2), np.zeros((4, 3)))


# --- forecast -------------------------------------------------------------------------------


def loop_forecast(model, context, horizon, covariates=None, target_features=None):
    """The reference: warm up one step at a time, then feed each output back, one step a call."""
    dtype = next(model.parameters()).dtype
    F_in = model.input_size
    target_features = list(range(F_in)) if target_features is None else list(target_features)
    others = [c for c in range(F_in) if c not in target_features]
    state = model.initial_state(1)
    with torch.no_grad():
        for row in torch.as_tensor(np.asarray(context), dtype=dtype):
            y, state = model(row[None, None], state)
        out = [y[0, 0]]
        for h in range(1, horizon):
            x = torch.empty(F_in, dtype=dtype)
            x[target_features] = out[-1]
            if others:
                x[others] = torch.as_tensor(covariates[h - 1], dtype=dtype)
            y, state = model(x[None, None], state)
            out.append(y[0, 0])
    return torch.stack(out).numpy()


def test_forecast_equals_a_step_by_step_loop():
    model = make_model("lstm", output_size=F)
    context = np.random.default_rng(5).normal(size=(23, F))
    result = forecast(model, context, 7, chunk=5)
    assert result.shape == (7, F)
    np.testing.assert_allclose(result, loop_forecast(model, context, 7), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(forecast(model, context, 1), result[:1], atol=1e-10)


@settings(max_examples=10, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 25), min_size=1, max_size=5),
    horizon=st.integers(1, 6),
    batch_size=st.integers(1, 5),
)
def test_forecast_many_series_of_different_lengths_as_one_batch(lengths, horizon, batch_size):
    model = make_model("gru", output_size=F)
    rng = np.random.default_rng(sum(lengths))
    contexts = [rng.normal(size=(length, F)) for length in lengths]
    result = forecast(model, contexts, horizon, chunk=4, batch_size=batch_size)
    assert result.shape == (len(contexts), horizon, F)
    for context, got in zip(contexts, result, strict=True):
        np.testing.assert_allclose(got, loop_forecast(model, context, horizon), atol=1e-10)


def test_forecast_with_covariates_feeds_outputs_into_the_target_columns():
    model = make_model("lstm", input_size=4, output_size=2)
    rng = np.random.default_rng(6)
    contexts = rng.normal(size=(3, 12, 4))
    covariates = rng.normal(size=(3, 5, 2))
    result = forecast(model, contexts, 5, covariates=covariates, target_features=[3, 1])
    assert result.shape == (3, 5, 2)
    for i in range(3):
        expected = loop_forecast(model, contexts[i], 5, covariates[i], [3, 1])
        np.testing.assert_allclose(result[i], expected, atol=1e-10)
    one = forecast(model, contexts[0], 5, covariates=covariates[0], target_features=[3, 1])
    np.testing.assert_allclose(one, result[0], atol=1e-10)


def test_forecast_float32_and_restores_training_flag():
    model = make_model("rnn", output_size=F, dtype=torch.float32).train()
    context = np.random.default_rng(7).normal(size=(30, F)).astype(np.float32)
    result = forecast(model, context, 4)
    assert model.training and result.dtype == np.float32
    model.eval()
    np.testing.assert_allclose(result, loop_forecast(model, context, 4), atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({}, ValueError, "give target_features"),
        ({"target_features": [0, 1]}, ValueError, "covariates are required"),
        ({"target_features": [0, 0], "covariates": np.zeros((3, 2))}, ValueError, "distinct"),
        ({"target_features": [0, 4], "covariates": np.zeros((3, 2))}, ValueError, "distinct"),
        ({"target_features": "01", "covariates": np.zeros((3, 2))}, TypeError, "list of 2"),
        ({"target_features": [0, 1], "covariates": np.zeros((2, 2))}, ValueError, r"\(3, 2\)"),
        ({"target_features": [0, 1], "covariates": np.zeros((3, 3))}, ValueError, r"\(3, 2\)"),
        (
            {"target_features": [0, 1], "covariates": np.full((3, 2), np.inf)},
            ValueError,
            "NaN or inf",
        ),
    ],
)
def test_forecast_bad_covariates_and_target_features(kwargs, error, message):
    model = make_model("lstm", input_size=4, output_size=2)
    with pytest.raises(error, match=message):
        forecast(model, np.zeros((6, 4)), 3, **kwargs)


def test_forecast_refuses_classifiers_bad_horizon_and_needless_covariates():
    context = np.zeros((6, F))
    with pytest.raises(ValueError, match="classifier"):
        forecast(make_model("lstm", output_size=3, task="classification"), context, 2)
    model = make_model("lstm", output_size=F)
    for horizon in (0, -1):
        with pytest.raises(ValueError, match="horizon"):
            forecast(model, context, horizon)
    for horizon in (2.0, True, "3"):  # wrong type: TypeError, like chunk= and batch_size=
        with pytest.raises(TypeError, match="horizon must be an int >= 1"):
            forecast(model, context, horizon)
    with pytest.raises(ValueError, match="drop covariates"):
        forecast(model, context, 2, covariates=np.zeros((2, 1)))
    with pytest.raises(ValueError, match=r"one block per series"):
        many = make_model("lstm", input_size=4, output_size=2)
        forecast(many, [np.zeros((5, 4))] * 3, 2, target_features=[0, 1], covariates=[])
