"""Bad input to the core (SequenceModel, ModelConfig, the layers, State): a clear error that
changes nothing. A wrong type raises TypeError, a wrong value ValueError; the message names the
argument. Each test of a refusal failed before its fix; the rest pin what stays accepted."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import seqstate as ss
from seqstate.core.layers import GRU, LSTM, RNN
from seqstate.core.model_config import ModelConfig
from seqstate.core.state import LSTMState
from seqstate.core.stepwise import StepwiseLayer


def _model(**fields: Any) -> ss.SequenceModel:
    torch.manual_seed(0)
    return ss.SequenceModel(input_size=2, output_size=1, hidden_size=4, **fields)


def _buffers(model: ss.SequenceModel) -> dict[str, torch.Tensor]:
    return {name: buffer.clone() for name, buffer in model.named_buffers()}


# --- 1. SequenceModel.set_normalization ---------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        pytest.param(
            ([1, 2], [3, 4], [float("nan")], [1]),
            ValueError,
            r"output_mean must be finite",
            id="bad-output-after-good-input",
        ),
        pytest.param(
            ([1, 2], [3, 4], [0.5], [-2.0]),
            ValueError,
            r"output_std must be >= 0.*\[-2.0\]",
            id="negative-output-std",
        ),
        pytest.param(([1, 2], [-1, 1]), ValueError, r"input_std must be >= 0", id="negative-std"),
        pytest.param(
            ([1, 2], [3, 4], [1]),
            ValueError,
            r"output_mean and output_std must be given together.*output_std=None",
            id="mean-without-std",
        ),
        pytest.param(
            ([1, 2], [3, 4], None, [1]),
            ValueError,
            r"output_mean and output_std must be given together.*output_mean=None",
            id="std-without-mean",
        ),
        pytest.param(("ab", [1, 1]), TypeError, r"input_mean must be 2 numbers.*str", id="str"),
        pytest.param(
            ([1, 2], {"a": 1}), TypeError, r"input_std must be 2 numbers.*dict", id="dict"
        ),
        pytest.param(
            ([1, 2], [3, 4], ["x"], [1]),
            TypeError,
            r"output_mean must be 1 numbers.*list",
            id="str-in-list",
        ),
        pytest.param(
            ([1, 2], [3, 4], [1, 2], [1]),
            ValueError,
            r"output_mean must have 1 values.*received 2",
            id="too-many",
        ),
    ],
)
def test_set_normalization_refuses_bad_statistics_and_changes_nothing(
    arguments: tuple[Any, ...], error: type[Exception], message: str
) -> None:
    model = _model()
    model.set_normalization([5, 6], [7, 8], [9], [10])
    before = _buffers(model)
    with pytest.raises(error, match=message):
        model.set_normalization(*arguments)
    after = _buffers(model)
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_set_normalization_keeps_the_documented_zero_and_non_finite_std() -> None:
    model = _model()
    model.set_normalization([1, 2], [0.0, float("inf")], [3], [float("nan")])
    assert model.input_scale.tolist() == [1.0, 1.0]
    assert model.output_scale.tolist() == [1.0]
    assert model.input_shift.tolist() == [1.0, 2.0]


# --- 2. nonlinearity with a cell other than rnn -------------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru", None])
def test_nonlinearity_applies_to_the_rnn_cell_only(cell: str | None) -> None:
    with pytest.raises(ValueError, match=r"nonlinearity applies to cell='rnn' only"):
        ModelConfig(2, 1, cell=cell, nonlinearity="relu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"nonlinearity='relu' with cell="):
        ss.SequenceModel(input_size=2, output_size=1, cell=cell, nonlinearity="relu")


def test_the_default_nonlinearity_and_a_cell_change_stay_accepted() -> None:
    # version-1 JSON writes nonlinearity='tanh' for every cell
    assert ModelConfig(2, 1, cell="lstm", nonlinearity="tanh").layers[0].activation == "tanh"
    relu = ModelConfig(2, 1, cell="rnn", nonlinearity="relu")
    assert relu.replace(cell="lstm").layers[0].kind == "lstm"
    assert relu.replace(hidden_size=3).layers[0].activation == "relu"


# --- 3. a layer's initial_state(batch_size) ------------------------------------------------------


@pytest.mark.parametrize("layer_type", [LSTM, GRU, RNN])
@pytest.mark.parametrize("batch_size", ["2", 2.0, True, None])
def test_layer_initial_state_wrong_type_is_a_type_error(layer_type: type, batch_size: Any) -> None:
    with pytest.raises(TypeError, match=r"batch_size must be an int >= 0"):
        layer_type(3, 4).initial_state(batch_size)


@pytest.mark.parametrize("layer_type", [LSTM, GRU, RNN])
def test_layer_initial_state_takes_a_numpy_int_and_refuses_a_negative(layer_type: type) -> None:
    layer = layer_type(3, 4)
    state = layer.initial_state(np.int64(2))
    assert state.batch_size == 2 and isinstance(state.batch_size, int)
    with pytest.raises(ValueError, match=r"batch_size must be an int >= 0; received -1"):
        layer.initial_state(-1)


# --- 4. State rows, cat and zeros ---------------------------------------------------------------


def _state() -> LSTMState:
    return LSTMState(torch.arange(8.0).view(1, 2, 4), -torch.arange(8.0).view(1, 2, 4))


@pytest.mark.parametrize("rows", [[5], [-3]])
def test_select_out_of_range_is_a_value_error(rows: list[int]) -> None:
    with pytest.raises(ValueError, match=r"rows index out of range for batch size 2"):
        _state().select(rows)


@pytest.mark.parametrize("rows", ["a", None, [[0], [0, 1]]])
def test_select_of_no_rows_form_is_a_type_error(rows: Any) -> None:
    with pytest.raises(TypeError, match=r"rows must be a bool mask"):
        _state().select(rows)


def test_cat_of_states_with_other_hidden_sizes_is_a_value_error() -> None:
    other = LSTMState.zeros(1, 2, 3)
    with pytest.raises(ValueError, match=r"State.cat needs states that differ only in batch"):
        LSTMState.cat([_state(), other])
    with pytest.raises(ValueError, match=r"states\[1\] has \(\[\(2, 4\), \(2, 4\)\]"):
        LSTMState.cat([_state(), LSTMState.zeros(2, 1, 4)])


@pytest.mark.parametrize(
    ("shape", "error", "name"),
    [
        ((1, -1, 4), ValueError, "batch_size"),
        ((0, 2, 4), ValueError, "num_layers"),
        ((1, 2, -4), ValueError, "hidden_size"),
        ((1, 2.0, 4), TypeError, "batch_size"),
        ((1, 2, True), TypeError, "hidden_size"),
    ],
)
def test_zeros_of_a_bad_shape_names_the_argument(
    shape: tuple[Any, ...], error: type[Exception], name: str
) -> None:
    with pytest.raises(error, match=rf"{name} must be an int"):
        LSTMState.zeros(*shape)


def test_zeros_like_of_a_bad_batch_size_names_it() -> None:
    state = _state()
    with pytest.raises(ValueError, match=r"batch_size must be an int >= 0; received -2"):
        state.zeros_like(-2)
    with pytest.raises(TypeError, match=r"batch_size must be an int"):
        state.zeros_like(2.5)  # type: ignore[arg-type]
    assert state.zeros_like(np.int64(3)).batch_size == 3


# --- 5. one dtype and one device across a state's fields ----------------------------------------


def test_state_of_mixed_dtypes_is_refused() -> None:
    with pytest.raises(ValueError, match=r"LSTMState.cell must have the dtype and device.*float64"):
        LSTMState(torch.zeros(1, 2, 4), torch.zeros(1, 2, 4, dtype=torch.float64))


def test_state_of_mixed_devices_is_refused() -> None:
    with pytest.raises(ValueError, match=r"LSTMState.cell must have the dtype and device.*meta"):
        LSTMState(torch.zeros(1, 2, 4), torch.zeros(1, 2, 4, device="meta"))


def test_state_map_to_one_dtype_still_works() -> None:
    state = _state().to(dtype=torch.float64)
    assert state.dtype == torch.float64 and state.cell.dtype == torch.float64


# --- 6. timeline of the wrong type ---------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: LSTM(2, 4),
        lambda: GRU(2, 4),
        lambda: RNN(2, 4),
        lambda: StepwiseLayer("gru", 2, 4, recurrent_activation="hard_sigmoid"),
    ],
)
def test_layer_timeline_of_the_wrong_type_is_a_type_error(make) -> None:
    layer = make()
    with pytest.raises(TypeError, match=r"timeline must be a seqstate Timeline.*received str"):
        layer(torch.zeros(2, 3, 2), timeline="abc")


def test_model_timeline_of_the_wrong_type_is_a_type_error() -> None:
    for model in (_model(), _model(mask_value=0.0)):
        with pytest.raises(TypeError, match=r"timeline must be a seqstate Timeline"):
            model(torch.ones(2, 3, 2), timeline="abc")


# --- 7. layer constructors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        pytest.param(lambda: LSTM(True, 4), TypeError, r"input_size must be an int", id="bool"),
        pytest.param(lambda: GRU(3, 4.0), TypeError, r"hidden_size must be an int", id="float"),
        pytest.param(lambda: LSTM(3, 4, "2"), TypeError, r"num_layers must be an int", id="str"),
        pytest.param(lambda: RNN(3, 4, 0), ValueError, r"num_layers must be an int >= 1", id="0"),
        pytest.param(
            lambda: LSTM(3, 4, dropout="0.1"), TypeError, r"dropout must be a number", id="drop"
        ),
        pytest.param(
            lambda: LSTM(3, 4, 2, dropout=1.5), ValueError, r"dropout must be a prob", id="p>1"
        ),
        pytest.param(
            lambda: GRU(3, 4, bias="no"), TypeError, r"bias must be True or False", id="bias"
        ),
        pytest.param(
            lambda: LSTM(3, 4, dtype=torch.int64),
            ValueError,
            r"dtype must be a floating dtype.*torch.int64",
            id="int-dtype",
        ),
        pytest.param(
            lambda: LSTM(3, 4, dtype="float32"), TypeError, r"dtype must be a torch.dtype", id="s"
        ),
    ],
)
def test_layer_constructor_refuses_bad_arguments(
    make: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        make()


def test_layer_constructor_takes_numpy_ints() -> None:
    layer = LSTM(np.int64(3), np.int64(4), np.int64(2))
    assert (layer.input_size, layer.hidden_size, layer.num_layers) == (3, 4, 2)
    assert all(type(v) is int for v in (layer.input_size, layer.hidden_size, layer.num_layers))
    y, state = layer(torch.zeros(1, 2, 3))
    assert y.shape == (1, 2, 4) and state.num_layers == 2


# --- 8. the mask of a model with mask_value ------------------------------------------------------


@pytest.mark.parametrize(
    ("mask", "error", "message"),
    [
        pytest.param(torch.full((2, 3), 0.5), TypeError, r"mask must be a bool", id="float"),
        pytest.param(torch.full((2, 3), 2), ValueError, r"mask must hold only 0/1", id="int-2"),
        pytest.param(np.ones((2, 3), bool), TypeError, r"mask must be a bool torch", id="numpy"),
    ],
)
def test_masking_model_checks_a_given_mask_like_the_plain_one(
    mask: Any, error: type[Exception], message: str
) -> None:
    for model in (_model(mask_value=0.0), _model()):
        with pytest.raises(error, match=message):
            model(torch.ones(2, 3, 2), mask=mask)


def test_masking_model_takes_a_0_1_int_mask_as_bool() -> None:
    model = _model(mask_value=0.0)
    x = torch.ones(2, 3, 2)
    flags = torch.tensor([[1, 1, 0], [1, 0, 1]])
    y_int, state_int = model(x, mask=flags)
    y_bool, state_bool = model(x, mask=flags.bool())
    assert torch.equal(y_int, y_bool) and state_int.equal(state_bool)


def test_a_state_of_integer_tensors_is_a_type_error():
    with pytest.raises(TypeError, match="must hold floating values"):
        LSTMState(torch.zeros(1, 2, 4, dtype=torch.int64), torch.zeros(1, 2, 4, dtype=torch.int64))
