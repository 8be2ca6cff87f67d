"""Keras import: models built and saved by Keras 3 itself, loaded without Keras, outputs equal.

Each model is built once (module-scoped), saved as ``.keras`` and ``.h5``, and run by Keras on
the same inputs; the imported seqstate module must reproduce Keras's outputs at every real step
within 1e-5 (float32), with the state carried explicitly where Keras keeps it inside.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ["KERAS_BACKEND"] = "torch"  # before keras is imported; keras is a dev dependency
keras = pytest.importorskip("keras", reason="keras (a dev dependency) is needed to build models")
h5py = pytest.importorskip("h5py", reason="h5py (the [keras] extra) reads Keras files")

from keras import layers  # noqa: E402

from seqstate.checkpoint import load_model, read_model_json  # noqa: E402
from seqstate.interop import keras as keras_import  # noqa: E402
from seqstate.interop.keras import KerasImportError, last_step  # noqa: E402
from seqstate.model import SequenceModel  # noqa: E402
from seqstate.state import State  # noqa: E402

# Keras's torch backend calls np.array(tensor, copy=False) under NumPy 2, which warns; the
# warning is Keras's, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

TOL = {"rtol": 0.0, "atol": 1e-5}
F = 3  # features
FORMATS = ("keras", "h5")


def _inputs(batch: int, steps: int, seed: int, pad_tail: bool = False) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(batch, steps, F)).astype(np.float32)
    if pad_tail:  # row 0 ends 2 steps early; row 1 has a padded step in the middle
        x[0, -2:] = 0.0
        if batch > 1:
            x[1, 2] = 0.0
    return x


@dataclass
class Case:
    name: str
    build: Callable[[], keras.Model]
    expect: type  # SequenceModel or KerasStack
    masked: bool = False


def _sequential(*stack) -> keras.Model:
    return keras.Sequential([keras.Input(shape=(None, F)), *stack])


def _functional() -> keras.Model:
    inputs = keras.Input(shape=(None, F))
    hidden = layers.LSTM(5, return_sequences=True, name="encoder")(inputs)
    hidden = layers.LSTM(5, return_sequences=True)(hidden)
    return keras.Model(inputs, layers.Dense(2)(hidden))


CASES = [
    Case(
        "lstm",
        lambda: _sequential(layers.LSTM(4, return_sequences=True), layers.Dense(2)),
        SequenceModel,
    ),
    Case(
        "gru_stack_dropout",
        lambda: _sequential(
            layers.GRU(3, return_sequences=True),
            layers.Dropout(0.2),
            layers.GRU(3, return_sequences=True),
            layers.TimeDistributed(layers.Dense(1)),
        ),
        SequenceModel,
    ),
    Case(
        "rnn_relu_last",
        lambda: _sequential(layers.SimpleRNN(4, activation="relu"), layers.Dense(2)),
        SequenceModel,
    ),
    Case(
        "rnn_linear",
        lambda: _sequential(
            layers.SimpleRNN(3, activation="linear", return_sequences=True), layers.Dense(1)
        ),
        SequenceModel,
    ),
    Case(
        "gru_reset_before",
        lambda: _sequential(
            layers.GRU(4, reset_after=False, return_sequences=True),
            layers.TimeDistributed(layers.Dense(2)),
        ),
        SequenceModel,
    ),
    Case(
        "lstm_hard_sigmoid_relu",
        lambda: _sequential(
            layers.LSTM(3, activation="relu", recurrent_activation="hard_sigmoid"),
            layers.Dense(3, activation="softmax"),
        ),
        SequenceModel,
    ),
    Case(
        "gru_hard_sigmoid_no_bias",
        lambda: _sequential(
            layers.GRU(
                3,
                recurrent_activation="hard_sigmoid",
                activation="linear",
                use_bias=False,
                return_sequences=True,
            ),
            layers.Dense(2, use_bias=False),
        ),
        SequenceModel,
    ),
    Case(
        "mixed_masked",
        lambda: _sequential(
            layers.Masking(0.0),
            layers.LSTM(4, return_sequences=True),
            layers.GRU(3, reset_after=False, return_sequences=True),
            layers.SimpleRNN(2, return_sequences=True),
            layers.Dense(3, activation="relu"),
            layers.Dense(1),
        ),
        SequenceModel,
        masked=True,
    ),
    Case(
        "masked_last",
        lambda: _sequential(
            layers.Masking(0.0), layers.GRU(4), layers.Dense(2, activation="sigmoid")
        ),
        SequenceModel,
        masked=True,
    ),
    Case("functional", _functional, SequenceModel),
]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, dict]:
    """name -> {"keras": path, "h5": path, "x": inputs, "y": Keras's outputs}."""
    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("keras_models")
    result = {}
    for index, case in enumerate(CASES):
        model = case.build()
        x = _inputs(3, 6, seed=index, pad_tail=case.masked)
        y = model.predict_on_batch(x)
        paths = {}
        for fmt in FORMATS:
            paths[fmt] = root / f"{case.name}.{fmt}"
            model.save(paths[fmt])
        result[case.name] = {**paths, "x": x, "y": np.asarray(y)}
    return result


def _real_steps(x: np.ndarray, masked: bool) -> np.ndarray:
    return (x != 0).any(-1) if masked else np.ones(x.shape[:2], dtype=bool)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_outputs_equal_keras(saved, case: Case, fmt: str) -> None:
    entry = saved[case.name]
    model = keras_import.load(entry[fmt])
    assert type(model) is case.expect
    assert not model.training
    info = keras_import.describe(entry[fmt])
    x = torch.from_numpy(entry["x"])
    real = torch.from_numpy(_real_steps(entry["x"], case.masked))
    with torch.no_grad():
        y, state = model(x)
    assert state.batch_size == x.shape[0]
    expected = torch.from_numpy(entry["y"])
    if info.return_sequences:
        assert y.shape == expected.shape
        torch.testing.assert_close(y[real], expected[real], **TOL)
    else:
        assert expected.shape == (x.shape[0], info.output_size)
        torch.testing.assert_close(last_step(y, real), expected, **TOL)
    if case.masked:  # seqstate outputs zero at padding (Keras repeats the previous output)
        assert bool((y[~real] == 0).all())


def test_describe_reports_structure(saved) -> None:
    info = keras_import.describe(saved["mixed_masked"]["keras"])
    assert (info.input_size, info.output_size, info.mask_value) == (F, 1, 0.0)
    assert info.return_sequences and not info.stateful
    assert info.keras_version == keras.__version__
    assert info.layers[0] == "masking: Masking(mask_value=0.0)"
    assert "GRU(3, reset_after=False, return_sequences)" in info.layers[2]
    last = keras_import.describe(saved["rnn_relu_last"]["h5"])
    assert not last.return_sequences and last.batch_size is None


# --- stateful models: chunk by chunk with the state carried ---------------------------------


@pytest.fixture(scope="module")
def stateful(tmp_path_factory) -> dict:
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input(batch_shape=(2, None, F)),
            layers.Masking(0.0),
            layers.LSTM(4, stateful=True, return_sequences=True),
            layers.GRU(3, stateful=True, reset_after=False, return_sequences=True),
            layers.Dense(2),
        ]
    )
    uniform = keras.Sequential(
        [
            keras.Input(batch_shape=(2, None, F)),
            layers.GRU(4, stateful=True, return_sequences=True),
            layers.GRU(4, stateful=True, return_sequences=True),
            layers.Dense(1),
        ]
    )
    x = _inputs(2, 9, seed=7, pad_tail=True)
    chunks = [x[:, :3], x[:, 3:4], x[:, 4:]]
    root = tmp_path_factory.mktemp("stateful")
    result = {"x": x, "chunks": chunks}
    for name, net in (("mixed", model), ("uniform", uniform)):
        outputs = [np.asarray(net.predict_on_batch(chunk)) for chunk in chunks]
        for layer in net.layers:  # Keras's reset_states(): back to zeros
            if hasattr(layer, "reset_states"):
                layer.reset_states()
        after_reset = np.asarray(net.predict_on_batch(chunks[0]))
        for fmt in FORMATS:
            net.save(root / f"{name}.{fmt}")
        result[name] = {"outputs": outputs, "after_reset": after_reset, "dir": root}
    return result


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", ["mixed", "uniform"])
def test_stateful_chunked_equals_keras(stateful, name: str, fmt: str) -> None:
    entry = stateful[name]
    path = entry["dir"] / f"{name}.{fmt}"
    info = keras_import.describe(path)
    assert info.stateful and info.batch_size == 2
    model = keras_import.load(path)
    state = None
    with torch.no_grad():
        for chunk, expected in zip(stateful["chunks"], entry["outputs"], strict=True):
            y, state = model(torch.from_numpy(chunk), state)
            real = torch.from_numpy((chunk != 0).any(-1))
            torch.testing.assert_close(y[real], torch.from_numpy(expected)[real], **TOL)
        # reset_states() in Keras == a reset of every row (or a fresh state) in seqstate
        first = torch.from_numpy(stateful["chunks"][0])
        reset = torch.zeros(first.shape[:2], dtype=torch.bool)
        reset[:, 0] = True
        y, _ = model(first, state, reset=reset)
    real = torch.from_numpy((stateful["chunks"][0] != 0).any(-1))
    torch.testing.assert_close(y[real], torch.from_numpy(entry["after_reset"])[real], **TOL)


def test_imported_model_serves_any_batch_size(stateful) -> None:
    # Keras fixed batch_shape=(2, ...); the imported module runs 1 or 3 rows with equal outputs.
    model = keras_import.load(stateful["mixed"]["dir"] / "mixed.keras")
    x = torch.from_numpy(stateful["x"])
    with torch.no_grad():
        both, _ = model(x)
        one, _ = model(x[1:])
        three, _ = model(torch.cat([x, x[:1]]))
    torch.testing.assert_close(one, both[1:], rtol=0, atol=1e-6)
    torch.testing.assert_close(three[:2], both, rtol=0, atol=1e-6)


# --- the seqstate protocol on the general stack ----------------------------------------------


@pytest.fixture(scope="module")
def stack(saved) -> SequenceModel:
    model = keras_import.load(saved["mixed_masked"]["keras"])
    assert isinstance(model, SequenceModel)
    return model


def test_stack_chunked_equals_whole(stack) -> None:
    x = torch.randn(2, 10, F)
    with torch.no_grad():
        whole, final = stack(x)
        state, pieces = None, []
        for start, end in ((0, 4), (4, 5), (5, 10)):
            y, state = stack(x[:, start:end], state)
            pieces.append(y)
    torch.testing.assert_close(torch.cat(pieces, 1), whole, rtol=0, atol=1e-6)
    assert all(
        torch.allclose(a, b, rtol=0, atol=1e-6)
        for a, b in zip(state.tensors(), final.tensors(), strict=True)
    )


def test_stack_reset_equals_separate(stack) -> None:
    first, second = torch.randn(1, 3, F), torch.randn(1, 4, F)
    reset = torch.zeros(1, 7, dtype=torch.bool)
    reset[0, 3] = True
    with torch.no_grad():
        packed, _ = stack(torch.cat([first, second], 1), stack.initial_state(1), reset=reset)
        alone, _ = stack(second)
    torch.testing.assert_close(packed[:, 3:], alone, rtol=0, atol=1e-6)


def test_stack_caller_mask_combines_with_masking(stack) -> None:
    x = torch.randn(2, 5, F)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[0, 3:] = False
    with torch.no_grad():
        y, state = stack(x, mask=mask)
        prefix, prefix_state = stack(x[:1, :3])
    assert bool((y[0, 3:] == 0).all())
    torch.testing.assert_close(y[0, :3], prefix[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(state.select([0]).tensors()[0], prefix_state.tensors()[0])


def test_stack_state_round_trips_through_bytes(stack) -> None:
    with torch.no_grad():
        _, state = stack(torch.randn(3, 4, F))
    assert type(state).__name__.startswith("KerasStackState[lstm0_hidden,lstm0_cell,gru1_hidden")
    assert [t.shape[2] for t in state.tensors()] == [4, 4, 3, 2]
    restored = State.from_bytes(state.to_bytes())
    assert restored.equal(state)
    assert state.reset_rows([1]).select([1]).equal(stack.initial_state(1))


def test_stack_rejects_bad_input(stack) -> None:
    with pytest.raises(ValueError, match=r"\[B, T, F\]=\[batch, time, 3\]; received \(2, 5, 4\)"):
        stack(torch.zeros(2, 5, 4))
    with pytest.raises(TypeError, match=r"x is torch\.float64 on cpu but the parameters are"):
        stack(torch.zeros(2, 5, F, dtype=torch.float64))
    with pytest.raises(ValueError, match="add a batch dimension"):
        stack(torch.zeros(5, F))
    with pytest.raises(TypeError, match="state must be a KerasStackState"):
        stack(torch.zeros(2, 5, F), SequenceModel(input_size=F, output_size=1).initial_state(2))
    with pytest.raises(ValueError, match=r"state has batch 3 but x has 2 rows"):
        stack(torch.zeros(2, 5, F), stack.initial_state(3))
    with pytest.raises(ValueError, match=r"reset must be a bool tensor of shape \[B, T\]=\[2, 5\]"):
        stack(torch.zeros(2, 5, F), reset=torch.zeros(2, 4, dtype=torch.bool))


# --- run directories -------------------------------------------------------------------------


def test_import_keras_writes_a_run(saved, tmp_path: Path) -> None:
    entry = saved["gru_stack_dropout"]
    run = keras_import.import_keras(entry["h5"], tmp_path / "run")
    document = read_model_json(run)
    assert document["model"]["cell"] == "gru" and document["model"]["num_layers"] == 2
    assert document["model"]["dropout"] == pytest.approx(0.2)
    assert document["metadata"]["source"]["format"] == "keras"
    model = load_model(run)
    with torch.no_grad():
        y, _ = model(torch.from_numpy(entry["x"]))
    torch.testing.assert_close(y, torch.from_numpy(entry["y"]), **TOL)


def test_import_keras_masking_becomes_explicit_mask(saved, tmp_path: Path) -> None:
    # Masking + uniform stack: saved as a SequenceModel; padding is passed as mask.
    keras.utils.set_random_seed(3)
    net = _sequential(layers.Masking(0.0), layers.LSTM(4, return_sequences=True), layers.Dense(1))
    x = _inputs(3, 6, seed=3, pad_tail=True)
    expected = torch.from_numpy(np.asarray(net.predict_on_batch(x)))
    net.save(tmp_path / "masked.keras")
    assert isinstance(keras_import.load(tmp_path / "masked.keras"), KerasStack)
    run = keras_import.import_keras(tmp_path / "masked.keras", tmp_path / "run")
    assert read_model_json(run)["metadata"]["source"]["mask_value"] == 0.0
    real = torch.from_numpy((x != 0).any(-1))
    with torch.no_grad():
        y, _ = load_model(run)(torch.from_numpy(x), mask=real)
    torch.testing.assert_close(y[real], expected[real], **TOL)


def test_import_keras_refuses_general_stack_and_writes_nothing(saved, tmp_path: Path) -> None:
    with pytest.raises(KerasImportError, match=r"needs a step-by-step cell .*GRU\(4, reset_after"):
        keras_import.import_keras(saved["gru_reset_before"]["keras"], tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(KerasImportError, match=r"seqstate\.interop\.keras\.load"):
        keras_import.import_keras(saved["mixed_masked"]["keras"], tmp_path / "run")


# --- what is refused, and how ----------------------------------------------------------------


def _functional_two_inputs() -> keras.Model:
    a, b = keras.Input(shape=(None, F)), keras.Input(shape=(None, F))
    return keras.Model([a, b], layers.LSTM(2)(layers.Concatenate()([a, b])))


UNSUPPORTED = [
    (
        lambda: _sequential(layers.Bidirectional(layers.LSTM(2))),
        r"'bidirectional'.*Bidirectional.*needs the whole sequence",
    ),
    (lambda: _sequential(layers.LSTM(2, go_backwards=True)), r"go_backwards=True\) is not"),
    (lambda: _sequential(layers.Conv1D(2, 2), layers.LSTM(2)), r"class 'Conv1D' is not supported"),
    (lambda: _sequential(layers.LSTM(2, activation="selu")), r"activation='selu' is not supp"),
    (
        lambda: _sequential(layers.GRU(2, recurrent_activation="tanh")),
        r"recurrent_activation='tanh' is not supported; supported: 'sigmoid', 'hard_sigmoid'",
    ),
    (_functional_two_inputs, r"2 inputs and 1 outputs"),
    (lambda: _sequential(layers.Dense(2)), r"no SimpleRNN/LSTM/GRU layer"),
]


@pytest.mark.parametrize(("build", "message"), UNSUPPORTED)
def test_unsupported_layers_are_named(tmp_path: Path, build, message: str) -> None:
    path = tmp_path / "model.keras"
    build().save(path)
    with pytest.raises(KerasImportError, match=message):
        keras_import.load(path)


def test_not_a_keras_file(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"neither a Keras 3 .keras archive"):
        keras_import.load(text)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        keras_import.load(tmp_path / "missing.keras")
    archive = tmp_path / "other.keras"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("config.json", "{}")
    with pytest.raises(ValueError, match=r"lacks \['model.weights.h5'\]"):
        keras_import.load(archive)
    weights_only = tmp_path / "weights.h5"
    with h5py.File(weights_only, "w") as h5:
        h5.create_group("dense")
    with pytest.raises(ValueError, match=r"model\.save_weights"):
        keras_import.load(weights_only)


def test_keras2_hard_sigmoid_definition(saved, tmp_path: Path) -> None:
    # tf.keras 2 defined hard_sigmoid as clip(0.2 x + 0.5, 0, 1); Keras 3 as relu6(x + 3) / 6.
    from seqstate.interop._keras_cells import activation_function

    probe = torch.tensor([-4.0, -1.0, 0.0, 1.0, 4.0])
    torch.testing.assert_close(
        activation_function("hard_sigmoid", "2.15.0")(probe),
        torch.tensor([0.0, 0.3, 0.5, 0.7, 1.0]),
    )
    torch.testing.assert_close(
        activation_function("hard_sigmoid", "3.3.0")(probe),
        torch.tensor([0.0, 2 / 6, 0.5, 4 / 6, 1.0]),
    )
    old = tmp_path / "old.h5"
    shutil.copy(saved["lstm_hard_sigmoid_relu"]["h5"], old)
    with h5py.File(old, "r+") as h5:
        h5["model_weights"].attrs["keras_version"] = "2.15.0"
    assert keras_import.describe(old).keras_version == "2.15.0"
    x = torch.from_numpy(saved["lstm_hard_sigmoid_relu"]["x"])
    with torch.no_grad():
        new_y, _ = keras_import.load(saved["lstm_hard_sigmoid_relu"]["h5"])(x)
        old_y, _ = keras_import.load(old)(x)
    assert not torch.allclose(new_y, old_y, atol=1e-4)
