"""The shared seams: the SequenceCore check, the validation rule and the atomic write."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from seqstate import GRU, SequenceModel, evaluate, fit, forecast, predict
from seqstate._io import atomic_path, write_text_atomic
from seqstate._validate import check_int, check_number
from seqstate.core.protocol import SequenceCore, check_core, check_sized_core
from seqstate.lanes.lanes import Lanes


class NoSizes(nn.Module):
    """Follows the protocol except for the sizes: trainable, not predictable."""

    def __init__(self) -> None:
        super().__init__()
        self.recurrent = GRU(1, 2)

    def initial_state(self, batch_size: int):
        return self.recurrent.initial_state(batch_size)

    def forward(self, x, state=None, reset=None, mask=None):
        y, state = self.recurrent(x, state, reset, mask)
        return y[..., :1], state


def test_sequence_model_and_layers_follow_the_protocol():
    assert isinstance(SequenceModel(input_size=2, output_size=1), SequenceCore)
    assert check_sized_core(SequenceModel(input_size=2, output_size=3)) == (2, 3)
    assert check_sized_core(GRU(4, 5)) == (4, 5)  # a bare layer: output_size = hidden_size
    check_core(NoSizes())


@pytest.mark.parametrize(
    "call",
    [
        lambda m: fit(m, Lanes.from_series(np.arange(8.0), lanes=2, window=2), progress=False),
        lambda m: evaluate(m, Lanes.from_series(np.arange(8.0), lanes=2, window=2)),
        lambda m: predict(m, np.zeros((3, 1))),
        lambda m: forecast(m, np.zeros((3, 1)), 2),
    ],
)
def test_every_entry_point_refuses_a_non_core_with_one_message(call):
    with pytest.raises(TypeError, match=r"following seqstate\.SequenceCore.*received Linear"):
        call(nn.Linear(1, 1))


def test_prediction_also_needs_the_sizes():
    with pytest.raises(TypeError, match=r"NoSizes \(it has no int input_size and output"):
        predict(NoSizes(), np.zeros((3, 1)))


@pytest.mark.parametrize(
    ("value", "error"),
    [("3", TypeError), (2.0, TypeError), (True, TypeError), (None, TypeError), (0, ValueError)],
)
def test_one_rule_for_ints(value, error):
    with pytest.raises(error, match=r"chunk must be an int >= 1"):
        check_int(value, "chunk", 1)
    model = SequenceModel(input_size=1, output_size=1)
    with pytest.raises(error, match=r"horizon must be an int >= 1"):
        forecast(model, np.zeros((3, 1)), value)
    if value is not None:  # None means "the default" for chunk
        with pytest.raises(error, match=r"chunk must be an int >= 1"):
            forecast(model, np.zeros((3, 1)), 2, chunk=value)
    assert check_int(np.int64(3), "chunk", 1) == 3


def test_one_rule_for_numbers():
    with pytest.raises(TypeError, match=r"lr must be a number; received str"):
        check_number("0.1", "lr", minimum=0.0)
    with pytest.raises(ValueError, match=r"lr must be a finite number > 0"):
        check_number(float("nan"), "lr", minimum=0.0, strict=True)
    assert check_number(np.float32(0.5), "lr", minimum=0.0) == 0.5


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "metrics.jsonl"
    write_text_atomic(target, "old\n")
    with pytest.raises(RuntimeError, match="interrupted"), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no .tmp left
    write_text_atomic(target, "new\n", durable=True)
    assert target.read_text() == "new\n"


def test_fit_still_trains_a_module_without_sizes():
    torch.manual_seed(0)
    history = fit(
        NoSizes(), Lanes.from_series(np.arange(8.0), lanes=2, window=2), epochs=1, progress=False
    )
    assert len(history) == 1
