"""Keras import: models built and saved by Keras 3 itself, loaded without Keras, outputs equal.

Each model is built once (module-scoped), saved as ``.keras`` and ``.h5``, and run by Keras on
the same inputs; the imported SequenceModel must reproduce Keras's outputs at every real step
within 1e-5 (float32), with the state carried explicitly where Keras keeps it inside. Imported
models then go the whole way: run directory -> load -> predict -> serve -> ONNX Runtime.
"""

from __future__ import annotations

import json
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

from seqstate.core.model import SequenceModel  # noqa: E402
from seqstate.core.saved import load_model, read_model_json  # noqa: E402
from seqstate.interop import keras as keras_import  # noqa: E402
from seqstate.interop.keras import KerasImportError, last_step  # noqa: E402

# Keras's torch backend calls np.array(tensor, copy=False) under NumPy 2, which warns; the
# warning is Keras's, not ours.
pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
    pytest.mark.numerics,  # run again on another kernel path: scripts/test
]

# Keras's kernels and ours (and MKL's, chosen by CPU) sum in their own orders: relative + absolute
TOL = {"rtol": 1e-6, "atol": 1e-5}
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
    masked: bool = False


def _sequential(*stack) -> keras.Model:
    return keras.Sequential([keras.Input(shape=(None, F)), *stack])


def _functional(masking: bool = False) -> Callable[[], keras.Model]:
    def build() -> keras.Model:
        inputs = keras.Input(shape=(None, F))
        # Keras 3 saves a functional Masking with its mask ops (NotEqual, Any) as graph nodes.
        hidden = layers.Masking(0.0)(inputs) if masking else inputs
        hidden = layers.LSTM(5, return_sequences=True, name="encoder")(hidden)
        hidden = layers.GRU(3, reset_after=False, return_sequences=True)(hidden)
        hidden = layers.Dense(4, activation="relu")(hidden)
        return keras.Model(inputs, layers.Dense(2)(hidden))

    return build


CASES = [
    Case("lstm", lambda: _sequential(layers.LSTM(4, return_sequences=True), layers.Dense(2))),
    Case(
        "gru_stack_dropout",
        lambda: _sequential(
            layers.GRU(3, return_sequences=True),
            layers.Dropout(0.2),
            layers.GRU(3, return_sequences=True),
            layers.TimeDistributed(layers.Dense(1)),
        ),
    ),
    Case(
        "lstm_32_16",
        lambda: _sequential(layers.LSTM(6, return_sequences=True), layers.LSTM(3), layers.Dense(2)),
    ),
    Case(
        "rnn_relu_last",
        lambda: _sequential(layers.SimpleRNN(4, activation="relu"), layers.Dense(2)),
    ),
    Case(
        "rnn_linear_no_head",
        lambda: _sequential(layers.SimpleRNN(3, activation="linear", return_sequences=True)),
    ),
    Case(
        "gru_reset_before",
        lambda: _sequential(
            layers.GRU(4, reset_after=False, return_sequences=True),
            layers.TimeDistributed(layers.Dense(2)),
        ),
    ),
    Case(
        "lstm_hard_sigmoid_relu",
        lambda: _sequential(
            layers.LSTM(3, activation="relu", recurrent_activation="hard_sigmoid"),
            layers.Dense(3, activation="softmax"),
        ),
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
            layers.Dense(2, use_bias=False, activation="swish"),
        ),
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
        masked=True,
    ),
    Case(
        "masked_last",
        lambda: _sequential(
            layers.Masking(0.0), layers.GRU(4), layers.Dense(2, activation="sigmoid")
        ),
        masked=True,
    ),
    Case("functional", _functional()),
    Case("functional_masked", _functional(masking=True), masked=True),
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


def _assert_equals_keras(model, entry: dict, info, masked: bool) -> None:
    x = torch.from_numpy(entry["x"])
    real = torch.from_numpy(_real_steps(entry["x"], masked))
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
    if masked:  # seqstate outputs zero at padding (Keras repeats the previous output)
        assert bool((y[~real] == 0).all())


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_outputs_equal_keras(saved, case: Case, fmt: str) -> None:
    entry = saved[case.name]
    model = keras_import.load(entry[fmt])
    assert type(model) is SequenceModel and not model.training
    assert model.masks_input == case.masked
    _assert_equals_keras(model, entry, keras_import.describe(entry[fmt]), case.masked)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_every_import_is_a_run_directory(saved, case: Case, tmp_path: Path) -> None:
    entry = saved[case.name]
    run = keras_import.import_keras(entry["h5"], tmp_path / "run")
    document = read_model_json(run)
    assert document["metadata"]["source"]["format"] == "keras"
    info = keras_import.describe(entry["h5"])
    columns = document["metadata"]["data"]["columns"]
    assert columns["features"] == [f"x{i}" for i in range(F)]
    assert columns["targets"] == [f"y{i}" for i in range(info.output_size)]
    _assert_equals_keras(load_model(run), entry, info, case.masked)


def test_import_checks_where_it_writes_before_reading(saved, tmp_path: Path) -> None:
    source = saved[CASES[0].name]["h5"]
    with pytest.raises(TypeError, match="out_run_dir must be a path"):
        keras_import.import_keras(source, None)
    taken = tmp_path / "taken"
    taken.write_text("a file")
    with pytest.raises(ValueError, match=r"out_run_dir .* is a file"):
        keras_import.import_keras(source, taken)
    assert taken.read_text() == "a file"


def test_describe_reports_structure(saved) -> None:
    info = keras_import.describe(saved["mixed_masked"]["keras"])
    assert (info.input_size, info.output_size, info.mask_value) == (F, 1, 0.0)
    assert info.return_sequences and not info.stateful and not info.notes
    assert info.keras_version == keras.__version__
    assert info.layers[0] == "masking: Masking(mask_value=0.0)"
    assert "GRU(3, reset_after=False, return_sequences)" in info.layers[2]
    last = keras_import.describe(saved["rnn_relu_last"]["h5"])
    assert not last.return_sequences and last.batch_size is None
    text = keras_import.load(saved["mixed_masked"]["keras"]).describe()
    assert "layer 0: lstm(4): fused kernel (torch.nn.LSTM)" in text
    assert "layer 1: gru(3, reset_after=False): step-by-step path" in text


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
    # Keras fixed batch_shape=(2, ...); the imported model runs 1 or 3 rows with equal outputs.
    model = keras_import.load(stateful["mixed"]["dir"] / "mixed.keras")
    x = torch.from_numpy(stateful["x"])
    with torch.no_grad():
        both, _ = model(x)
        one, _ = model(x[1:])
        three, _ = model(torch.cat([x, x[:1]]))
    torch.testing.assert_close(one, both[1:], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(three[:2], both, rtol=1e-6, atol=1e-6)


def test_caller_mask_combines_with_masking(saved) -> None:
    model = keras_import.load(saved["mixed_masked"]["keras"])
    x = torch.randn(2, 5, F)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[0, 3:] = False
    with torch.no_grad():
        y, state = model(x, mask=mask)
        prefix, prefix_state = model(x[:1, :3])
    assert bool((y[0, 3:] == 0).all())
    torch.testing.assert_close(y[0, :3], prefix[0], rtol=1e-6, atol=1e-6)
    for ours, alone in zip(state.select([0]).tensors(), prefix_state.tensors(), strict=True):
        torch.testing.assert_close(ours, alone, rtol=1e-6, atol=1e-6)


# --- the whole way: run directory -> predict -> serve -> ONNX Runtime ------------------------


@pytest.mark.parametrize("name", ["mixed_masked", "functional_masked"])
def test_imported_run_predicts_serves_and_exports(saved, name: str, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("httpx")
    import asyncio

    import httpx

    from seqstate.inference.prediction import predict
    from seqstate.interop.onnx import export_onnx, onnx_input_names
    from seqstate.serve import ServeConfig, create_app

    entry = saved[name]
    run = keras_import.import_keras(
        entry["keras"], tmp_path / "run", features=["a", "b", "c"], targets=None
    )
    model = load_model(run)
    x = entry["x"]
    real = _real_steps(x, masked=True)
    with torch.no_grad():
        y, _ = model(torch.from_numpy(x))
    expected = entry["y"]
    np.testing.assert_allclose(y.numpy()[real], expected[real], rtol=1e-6, atol=1e-5)
    # predict: each row as its own sequence, in chunks
    predicted = predict(model, [row for row in x], chunk=2)
    for row in range(x.shape[0]):
        np.testing.assert_allclose(predicted[row][real[row]], expected[row][real[row]], atol=1e-5)
    # serve: one step of row 0 over HTTP (in process)

    async def one_step() -> list:
        token = "keras-import-test-token"  # the server refuses tokens under 16 characters
        app = create_app(ServeConfig(run, store="memory://", token=token, max_wait_ms=1.0))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport,
                base_url="http://test",
                headers={"Authorization": f"Bearer {token}"},
            ) as client:
                response = await client.post(
                    "/v1/streams/s1/steps", json={"seq": 1, "x": x[0, 0].tolist()}
                )
                assert response.status_code == 200, response.text
                return response.json()["y"]

    np.testing.assert_allclose(asyncio.run(one_step()), expected[0, 0], rtol=1e-6, atol=1e-5)
    # ONNX Runtime, two chunks with the state fed back
    path = export_onnx(run, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    state = [t.numpy() for t in model.initial_state(x.shape[0]).tensors()]
    outputs = []
    for chunk in (x[:, :4], x[:, 4:]):
        feeds = [chunk, np.ones(chunk.shape[:2], dtype=bool), *state]
        result = session.run(None, dict(zip(onnx_input_names(model), feeds, strict=True)))
        outputs.append(result[0])
        state = result[1:]
    np.testing.assert_allclose(np.concatenate(outputs, 1)[real], expected[real], atol=1e-5)


def test_imported_stack_of_fused_groups_runs_in_onnx_at_any_chunk(saved, tmp_path: Path) -> None:
    # Regression: LSTM -> LSTM -> Dense (two fused groups) ran in ONNX Runtime only at the
    # export example's T=3.
    ort = pytest.importorskip("onnxruntime")
    from seqstate.interop.onnx import export_onnx, onnx_input_names

    entry = saved["lstm_32_16"]
    model = keras_import.load(entry["keras"])
    path = export_onnx(model, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = np.random.default_rng(batch).normal(size=(batch, 9, F)).astype(np.float32)
        with torch.no_grad():
            whole, _ = model(torch.from_numpy(x))
        for chunk in (1, 7, x.shape[1]):
            state = [t.numpy() for t in model.initial_state(batch).tensors()]
            parts = []
            for start in range(0, x.shape[1], chunk):
                feeds = [x[:, start : start + chunk], *state]
                result = session.run(None, dict(zip(onnx_input_names(model), feeds, strict=True)))
                parts.append(result[0])
                state = result[1:]
            np.testing.assert_allclose(np.concatenate(parts, 1), whole.numpy(), rtol=0, atol=1e-5)
    # the imported run as a whole (raw inputs, the run's state explicit): the same answers
    from seqstate.interop.onnx import export_run_onnx, run_onnx_names
    from seqstate.recipe.run import Run

    run = keras_import.import_keras(entry["keras"], tmp_path / "run")
    session = ort.InferenceSession(
        str(export_run_onnx(run, tmp_path / "run.onnx")), providers=["CPUExecutionProvider"]
    )
    function = Run.load(run).step_function()
    names, _ = run_onnx_names(function)
    x = np.random.default_rng(0).normal(size=(4, 9, F)).astype(np.float32)
    with torch.no_grad():
        whole, _ = model(torch.from_numpy(x))
    for chunk in (1, 7, x.shape[1]):
        initial = function.initial_state([None] * 4)
        state = [t.numpy() for t in initial.transforms.values()]
        state += [t.numpy() for member in initial.models for t in member.tensors()]
        parts = []
        for start in range(0, x.shape[1], chunk):
            feeds = [x[:, start : start + chunk], *state]
            result = session.run(None, dict(zip(names, feeds, strict=True)))
            parts.append(result[0])
            state = result[1:]
        np.testing.assert_allclose(np.concatenate(parts, 1), whole.numpy(), rtol=0, atol=1e-5)


# --- files from other Keras versions ----------------------------------------------------------


def _rewrite_archive(source: Path, target: Path, edit_config, keras_version: str) -> None:
    """A copy of a .keras archive as an older Keras writes it: ``edit_config`` applied, the
    version set, and no layer names on the weight groups (Keras 3.0 and tf.keras 2 address
    weights by snake-cased class name only)."""
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w") as out:
        for item in archive.namelist():
            data = archive.read(item)
            if item == "config.json":
                config = json.loads(data)
                edit_config(config)
                data = json.dumps(config).encode()
            elif item == "metadata.json":
                metadata = json.loads(data)
                metadata["keras_version"] = keras_version
                data = json.dumps(metadata).encode()
            elif item == "model.weights.h5":
                weights = target.with_suffix(".weights.h5")
                weights.write_bytes(data)
                with h5py.File(weights, "r+") as h5:
                    h5.visititems(lambda _, obj: obj.attrs.pop("name", None))
                data = weights.read_bytes()
            out.writestr(item, data)


def test_keras_3_0_file_without_layer_names_in_op_configs(saved, tmp_path: Path) -> None:
    # Keras 3.0 writes a functional layer's name next to its config; operations such as Any
    # and NotEqual have no name inside their config (a KeyError: 'name' before).
    def strip(config: dict) -> None:
        for layer in config["config"]["layers"]:
            if layer["class_name"] in ("Any", "NotEqual"):
                layer["config"].pop("name", None)

    old = tmp_path / "keras30.keras"
    _rewrite_archive(saved["functional_masked"]["keras"], old, strip, "3.0.0")
    assert keras_import.describe(old).keras_version == "3.0.0"
    _assert_equals_keras(
        keras_import.load(old), saved["functional_masked"], keras_import.describe(old), True
    )


def test_tf_keras_2_archive_uses_keras_2_hard_sigmoid(saved, tmp_path: Path) -> None:
    entry = saved["lstm_hard_sigmoid_relu"]
    old = tmp_path / "tf_keras.keras"
    _rewrite_archive(entry["keras"], old, lambda config: None, "2.15.0")
    model = keras_import.load(old)
    assert "recurrent_activation=hard_sigmoid_keras2" in model.describe()
    with torch.no_grad():
        ours, _ = model(torch.from_numpy(entry["x"]))
        keras3, _ = keras_import.load(entry["keras"])(torch.from_numpy(entry["x"]))
    assert not torch.allclose(ours, keras3, atol=1e-4)  # same weights, the other definition


def test_keras2_hard_sigmoid_and_files_without_a_version(saved, tmp_path: Path) -> None:
    # tf.keras 2 defined hard_sigmoid as clip(0.2 x + 0.5, 0, 1); Keras 3 as relu6(x + 3) / 6.
    source = saved["lstm_hard_sigmoid_relu"]["h5"]
    old = tmp_path / "old.h5"
    shutil.copy(source, old)
    with h5py.File(old, "r+") as h5:
        h5["model_weights"].attrs["keras_version"] = "2.15.0"
    assert keras_import.describe(old).keras_version == "2.15.0"
    assert "recurrent_activation=hard_sigmoid_keras2" in keras_import.load(old).describe()
    x = torch.from_numpy(saved["lstm_hard_sigmoid_relu"]["x"])
    with torch.no_grad():
        new_y, _ = keras_import.load(source)(x)
        old_y, _ = keras_import.load(old)(x)
    assert not torch.allclose(new_y, old_y, atol=1e-4)
    # no version recorded: refused, unless the caller says which Keras wrote it
    unknown = tmp_path / "unknown.h5"
    shutil.copy(source, unknown)
    with h5py.File(unknown, "r+") as h5:
        del h5["model_weights"].attrs["keras_version"]
        del h5.attrs["keras_version"]
    with pytest.raises(ValueError, match=r"does not record the Keras version .* keras_version="):
        keras_import.load(unknown)
    with pytest.raises(ValueError, match=r"does not record the Keras version"):
        keras_import.import_keras(unknown, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with torch.no_grad():
        given, _ = keras_import.load(unknown, keras_version="2.15.0")(x)
    torch.testing.assert_close(given, old_y, rtol=0, atol=0)  # one model, the same kernels


def test_float16_policy_is_noted(tmp_path: Path) -> None:
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        net = _sequential(layers.LSTM(3, return_sequences=True), layers.Dense(1))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    net.save(tmp_path / "half.keras")
    notes = keras_import.describe(tmp_path / "half.keras").notes
    assert notes and "'mixed_float16'" in notes[0] and "seqstate in float32" in notes[0]
    run = keras_import.import_keras(tmp_path / "half.keras", tmp_path / "run")
    assert read_model_json(run)["metadata"]["source"]["notes"] == list(notes)


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
    (lambda: _sequential(layers.LSTM(2, activation="sparsemax")), r"activation='sparsemax' is not"),
    (_functional_two_inputs, r"2 inputs and 1 outputs"),
    (lambda: _sequential(layers.Dense(2)), r"no SimpleRNN/LSTM/GRU layer"),
    (
        lambda: _sequential(layers.Dense(2), layers.LSTM(2)),
        r"layer 'dense\w*': a Dense layer before or between recurrent layers is not supported",
    ),
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
    saved_model = tmp_path / "exported"
    saved_model.mkdir()
    (saved_model / "saved_model.pb").write_bytes(b"")
    with pytest.raises(
        ValueError, match=r"TensorFlow SavedModel folder.*model\.save\('model\.keras'\)"
    ):
        keras_import.load(saved_model)
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


def test_import_keras_names_columns_and_checks_them(saved, tmp_path: Path) -> None:
    entry = saved["lstm"]
    run = keras_import.import_keras(entry["keras"], tmp_path / "run", features=["a", "b", "c"],
                                    targets=["p", "q"])  # fmt: skip
    columns = read_model_json(run)["metadata"]["data"]["columns"]
    assert (columns["features"], columns["targets"], columns["shift"]) == (
        ["a", "b", "c"],
        ["p", "q"],
        0,
    )
    with pytest.raises(ValueError, match=r"features must name the model's 3 inputs; received 2"):
        keras_import.import_keras(entry["keras"], tmp_path / "bad", features=["a", "b"])
    with pytest.raises(TypeError, match=r"targets must be a list of column names"):
        keras_import.import_keras(entry["keras"], tmp_path / "bad", targets="p")
    assert not (tmp_path / "bad").exists()


# --- the documented CLI flow: import-keras -> predict ----------------------------------------


def test_cli_import_keras_then_predict(saved, tmp_path: Path, capsys) -> None:
    pd = pytest.importorskip("pandas")
    from seqstate.cli.dispatch import main

    entry = saved["mixed_masked"]
    run = tmp_path / "run"
    code = main(["import-keras", str(entry["h5"]), str(run), "--features", "a,b,c",
                 "--targets", "load"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "step-by-step path" in printed and f"next: seqstate predict {run}" in printed
    x = entry["x"]  # 3 series of 6 steps, zero rows are Keras's padding
    table = pd.DataFrame(
        {
            "series": np.repeat(np.arange(x.shape[0]), x.shape[1]),
            **{name: x[:, :, j].reshape(-1) for j, name in enumerate("abc")},
        }
    )
    table.to_csv(tmp_path / "data.csv", index=False)
    out = tmp_path / "predictions.csv"
    # one series per id: the imported run has no id column, so predict each series' file
    for series in range(x.shape[0]):
        table[table.series == series].to_csv(tmp_path / f"s{series}.csv", index=False)
        assert main(["predict", str(run), str(tmp_path / f"s{series}.csv"), "--out", str(out),
                     "--no-progress"]) == 0  # fmt: skip
        predicted = pd.read_csv(out)["predicted_load"].to_numpy()
        real = _real_steps(x[series : series + 1], masked=True)[0]
        np.testing.assert_allclose(predicted[real], entry["y"][series, real, 0], atol=1e-5)
    assert main(["import-keras", str(entry["h5"]), str(tmp_path / "bad"), "--features", "a,b"]) == 1
    assert "features must name the model's 3 inputs" in capsys.readouterr().err


def _edit_h5_config(source: Path, target: Path, edit, keras_version: str) -> None:
    """A copy of an .h5 file with ``edit`` applied to each GRU layer's config."""
    shutil.copy(source, target)
    with h5py.File(target, "r+") as h5:
        config = json.loads(h5.attrs["model_config"])
        for layer in config["config"]["layers"]:
            if layer["class_name"] == "GRU":
                edit(layer["config"])
        h5.attrs["model_config"] = json.dumps(config)
        h5["model_weights"].attrs["keras_version"] = keras_version


@pytest.mark.parametrize("name", ["gru_reset_before", "gru_stack_dropout"])
def test_gru_without_reset_after_in_its_config_reads_it_from_the_bias(saved, name, tmp_path):
    # Keras before 2.1.3 wrote no reset_after (its GRU reset before the product); the bias's
    # shape tells the two apart, so a file from either side imports as Keras ran it.
    old = tmp_path / "old.h5"
    _edit_h5_config(saved[name]["h5"], old, lambda config: config.pop("reset_after"), "2.1.2")
    _assert_equals_keras(keras_import.load(old), saved[name], keras_import.describe(old), False)


def test_gru_whose_config_and_bias_disagree_is_refused(saved, tmp_path: Path) -> None:
    bad = tmp_path / "bad.h5"
    edit = lambda config: config.update(reset_after=True)  # noqa: E731
    _edit_h5_config(saved["gru_reset_before"]["h5"], bad, edit, "2.15.0")
    with pytest.raises(KerasImportError, match=r"GRU\(reset_after=True\) has a bias of shape"):
        keras_import.load(bad)
