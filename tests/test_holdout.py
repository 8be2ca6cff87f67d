"""Warm tail validation: each series played whole, only its tail scored; never trained on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from seqstate.core.model import SequenceModel
from seqstate.recipe.holdout import ScoredFrom, split_tail
from seqstate.recipe.sources import read_table
from seqstate.train import evaluate, fit


def make_table(lengths=(23, 17, 30)):
    rng = np.random.default_rng(0)
    frames = [
        pd.DataFrame({"id": f"s{k}", "t": np.arange(n), "v": rng.normal(size=n).cumsum()})
        for k, n in enumerate(lengths)
    ]
    frame = pd.concat(frames, ignore_index=True)
    return read_table(frame, features=["v"], targets=["v"], id_column="id", time_column="t")


def make_model():
    torch.manual_seed(0)
    return SequenceModel(input_size=1, output_size=1, hidden_size=5, num_layers=2).double().eval()


@pytest.mark.parametrize(("lanes", "window"), [(1, 4), (2, 7), (3, 64)])
def test_scores_exactly_the_tail_after_a_warm_up(lanes, window):
    table = make_table()
    model = make_model()
    train, tail = split_tail(table, 0.25)
    assert train.lengths.tolist() == [17, 12, 22]
    assert tail.lengths.tolist() == [6, 5, 8] and len(tail) == 3 and tail.ids == table.ids
    validation = tail.lanes(lanes=lanes, window=window)
    metrics = evaluate(model, validation)
    errors = []
    for features, cut in zip(table.features, train.lengths.tolist(), strict=True):
        with torch.no_grad():
            y, _ = model(torch.as_tensor(features, dtype=torch.float64)[None])
        predicted, actual = y[0, :-1, 0].numpy(), features[1:, 0]
        errors.append(np.abs(predicted - actual)[cut - 1 :])  # targets at rows >= cut
    assert metrics["mae"] == pytest.approx(np.concatenate(errors).mean(), rel=1e-10)


def test_a_cold_tail_scores_differently():
    table = make_table()
    model = make_model()
    train, tail = split_tail(table, 0.25)
    warm = tail.lanes(lanes=2, window=8)
    cold = table.slice_steps(train.lengths.tolist(), table.lengths.tolist())
    cold_lanes = cold.lanes(lanes=2, window=8, segments=False)
    assert evaluate(model, warm)["mae"] != pytest.approx(evaluate(model, cold_lanes)["mae"])


def test_fit_with_warm_validation_changes_no_weight():
    table = make_table()
    train, tail = split_tail(table, 0.25)
    validation = tail.lanes(lanes=2, window=8)
    lanes = train.lanes(lanes=2, window=8)
    with_validation, without = make_model().float(), make_model().float()
    history = fit(with_validation, lanes, validation=validation, epochs=2, progress=False)
    fit(without, lanes, epochs=2, progress=False)
    assert "val_loss" in history
    # bitwise on every CPU: validation runs on its own state and touches no training kernel call
    for a, b in zip(with_validation.parameters(), without.parameters(), strict=True):
        assert torch.equal(a, b)


def test_bad_input():
    table = make_table()
    base = table.lanes(lanes=2, window=8, segments=False)
    with pytest.raises(ValueError, match="one step per sequence"):
        ScoredFrom(base, [1, 2])
    with pytest.raises(ValueError, match="must be a step inside sequence"):
        ScoredFrom(base, [1, 2, 99])
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        split_tail(table, 1.0)
    with pytest.raises(ValueError, match="series 's1' has 2 steps: holding out its last 25%"):
        split_tail(make_table((23, 2, 30)), 0.25)
