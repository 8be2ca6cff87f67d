"""Bad input to training and its neighbours is refused before anything changes: callbacks,
label and count domains, horizons that leave no targets, float16 with Adam, config values,
split_table, Forecast and read_table flags."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import seqstate as ss
from seqstate.inference.sampling import Forecast
from seqstate.recipe.splits import split_table


def _sequences(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((n, 2)).astype(np.float32) for n in (9, 12, 7, 10)]


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _unchanged(model: torch.nn.Module, before: list[torch.Tensor]) -> bool:
    return all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("hook", ["on_window", "on_epoch"])
def test_a_callback_that_is_not_callable_is_refused_before_training(hook):
    model = ss.SequenceModel(input_size=2, output_size=2, hidden_size=4)
    lanes = ss.Lanes.from_sequences(_sequences(), lanes=2, window=4)
    before = _weights(model)
    with pytest.raises(TypeError, match=hook):
        ss.fit(model, lanes, epochs=1, progress=False, **{hook: 5})
    assert _unchanged(model, before)


@pytest.mark.parametrize("labels", [[0, 1, 2, 7], [0, -1, 1, 2]])
def test_labels_outside_the_classes_are_refused_before_any_step(labels):
    model = ss.SequenceModel(input_size=2, output_size=3, hidden_size=4, task="classification")
    lanes = ss.Lanes.from_sequences(_sequences(), None, labels=np.array(labels), lanes=2, window=4)
    before = _weights(model)
    with pytest.raises(ValueError, match=r"class labels must be in \[0, 3\)"):
        ss.fit(model, lanes, epochs=1, progress=False)
    assert _unchanged(model, before)


def test_per_step_labels_outside_the_classes_are_refused_before_any_step():
    rng = np.random.default_rng(1)
    sequences = _sequences()
    targets = [rng.integers(0, 3, size=len(s)) for s in sequences]
    targets[2][-1] = 3  # one step of the last window holds class 3 of 3
    model = ss.SequenceModel(input_size=2, output_size=3, hidden_size=4, task="classification")
    lanes = ss.Lanes.from_sequences(sequences, targets, lanes=2, window=4)
    before = _weights(model)
    with pytest.raises(ValueError, match="labels from 0 to 3"):
        ss.fit(model, lanes, epochs=1, progress=False)
    assert _unchanged(model, before)


def test_negative_targets_for_a_negative_binomial_head_are_refused():
    sequences = _sequences()
    targets = [np.abs(s[:, :1]) for s in sequences]
    targets[1][5, 0] = -0.5
    model = ss.SequenceModel(input_size=2, output_size=1, hidden_size=4, distribution="negbin")
    lanes = ss.Lanes.from_sequences(sequences, targets, lanes=2, window=4)
    before = _weights(model)
    with pytest.raises(ValueError, match=r"negbin.*-0\.5"):
        ss.fit(model, lanes, epochs=1, progress=False)
    assert _unchanged(model, before)
    targets[1][5, 0] = 0.5  # counts >= 0 (scaled, so not integers) train
    ss.fit(model, ss.Lanes.from_sequences(sequences, targets, lanes=2, window=4), epochs=1,
           progress=False)  # fmt: skip


def test_the_domain_check_reads_only_steps_that_have_targets():
    # horizon targets y[t] = x[t + 2]: the first two steps of a sequence are never a target
    sequences = [np.abs(s) for s in _sequences()]
    for s in sequences:
        s[:2] = -1.0
    lanes = ss.Lanes.from_sequences(sequences, 2, lanes=2, window=4)
    low, high = lanes.target_range()
    assert low >= 0.0 and high == max(float(s[2:].max()) for s in sequences)
    series = ss.Lanes.from_series(np.concatenate(sequences), targets=1, lanes=2, window=4)
    assert series.target_range()[0] == -1.0  # the second sequence's first rows are targets


def test_a_horizon_longer_than_every_sequence_is_refused_before_training():
    model = ss.SequenceModel(input_size=2, output_size=2, hidden_size=4)
    good = ss.Lanes.from_sequences(_sequences(), lanes=2, window=4)
    empty = ss.Lanes.from_sequences(_sequences(), 50, lanes=2, window=4)
    before = _weights(model)
    for kwargs in ({"train": empty}, {"train": good, "validation": empty}):
        name = "validation" if "validation" in kwargs else "train"
        with pytest.raises(ValueError, match=rf"{name} has horizon targets k=50.*has 12 steps"):
            ss.fit(model, epochs=1, progress=False, **kwargs)
        assert _unchanged(model, before)


def test_float16_weights_with_adam_are_refused_before_they_turn_to_nan():
    model = ss.SequenceModel(input_size=2, output_size=2, hidden_size=4).half()
    lanes = ss.Lanes.from_sequences(_sequences(), lanes=2, window=4)
    before = _weights(model)
    with pytest.raises(ValueError, match=r"float16.*optimizer='sgd'"):
        ss.fit(model, lanes, epochs=1, progress=False)
    assert _unchanged(model, before)


@pytest.mark.parametrize(
    ("fields", "error", "match"),
    [
        ({"momentum": 1.0}, ValueError, "momentum"),
        ({"lr": 1e-3, "min_lr": 1e-2}, ValueError, "min_lr"),
    ],
)
def test_fit_config_values_that_cannot_train_are_refused(fields, error, match):
    with pytest.raises(error, match=match):
        ss.FitConfig(**fields)


def test_fit_config_json_errors_say_what_was_read():
    with pytest.raises(ValueError, match="FitConfig JSON could not be read"):
        ss.FitConfig.from_json("{")
    with pytest.raises(ValueError, match="object of fields"):
        ss.FitConfig.from_json("[1, 2]")
    with pytest.raises(TypeError, match="JSON string"):
        ss.FitConfig.from_json(5)
    assert ss.FitConfig.from_json('{"epochs": 3}').epochs == 3


def test_split_table_checks_its_arguments():
    frame = pd.DataFrame({"id": [0] * 10 + [1] * 10, "v": np.arange(20.0)})
    table = ss.read_table(frame, features=["v"], targets=["v"], id_column="id", shift=1)
    with pytest.raises(TypeError, match="SequenceTable"):
        split_table(frame)
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        split_table(table, seed=-1)
    with pytest.raises(TypeError, match="seed must be an int"):
        split_table(table, seed="a")


def test_forecast_on_step_that_is_not_callable_is_refused_at_once():
    model = ss.SequenceModel(input_size=2, output_size=2, hidden_size=4)
    for horizon in (1, 3):
        with pytest.raises(TypeError, match="on_step"):
            ss.forecast(model, np.ones((5, 2), np.float32), horizon, on_step=5)


def test_forecast_objects_check_their_samples():
    with pytest.raises(TypeError, match="samples must be a NumPy array"):
        Forecast([[[1.0]]])
    with pytest.raises(ValueError, match=r"\[S, H, O\]"):
        Forecast(np.zeros((2, 3)))
    assert Forecast(np.zeros((4, 3, 1))).median.shape == (3, 1)


def test_read_table_require_targets_is_a_bool():
    frame = pd.DataFrame({"v": np.arange(5.0)})
    with pytest.raises(TypeError, match="require_targets must be True or False"):
        ss.read_table(frame, features=["v"], targets=["v"], shift=1, require_targets=1)
