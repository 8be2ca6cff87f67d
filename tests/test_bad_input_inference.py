"""Bad input to predict, forecast, Streams, save_model and load_model: a clear error that names
the argument and changes nothing; and what they accept, they run (bfloat16, float64 runs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from seqstate.core.model import SequenceModel
from seqstate.core.saved import MODEL_FILE, MODEL_JSON, load_model, read_model_json, save_model
from seqstate.inference.forecasting import forecast
from seqstate.inference.prediction import predict
from seqstate.inference.streams import Streams

F, O, H = 2, 1, 4

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def make_model(cell: str = "lstm", hidden_size: int = H) -> SequenceModel:
    torch.manual_seed(0)
    return SequenceModel(input_size=F, output_size=O, cell=cell, hidden_size=hidden_size).eval()


def snapshot(streams: Streams) -> tuple[list, dict]:
    return streams.ids, streams.export_states()


def files_of(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir())}


# --- 1. ending the last row, then stepping every live stream --------------------------------


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_ending_the_last_row_then_stepping_all_streams_equals_a_fresh_stream(cell):
    model = make_model(cell)
    x = np.random.default_rng(1).normal(size=(4, 2, F)).astype(np.float32)  # (T, n, F)
    streams = Streams(model)
    streams.step(["a", "b"], x[0])  # the hot path (C-contiguous float32): rows kept pending
    streams.step(["a", "b"], x[1])
    streams.end("b")  # the last row: nothing moves
    got = np.concatenate([streams.step(["a"], x[t, :1]) for t in (2, 3)])

    fresh = Streams(model)
    want = np.concatenate([fresh.step(["a"], x[t, :1]) for t in range(4)][2:])
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got, predict(model, x[:, 0])[2:], atol=1e-6)
    assert streams.export_states() == fresh.export_states()


def test_ending_a_middle_row_after_hot_steps_keeps_every_state():
    model = make_model("gru")
    x = np.random.default_rng(2).normal(size=(3, 3, F)).astype(np.float32)  # (T, n, F)
    streams = Streams(model)
    for t in range(2):
        streams.step(["a", "b", "c"], x[t])
    streams.end("a")  # "c" moves into row 0
    got = np.stack([streams.step(["c", "b"], x[2, [2, 1]]), streams.step(["c", "b"], x[2, [2, 1]])])
    want = predict(model, np.concatenate([x[:, [2, 1]], x[2:, [2, 1]]]).transpose(1, 0, 2))[:, 2:]
    np.testing.assert_allclose(got.transpose(1, 0, 2), want, atol=1e-6)


# --- 2. end / state check the id's type --------------------------------------------------------


@pytest.mark.parametrize("bad", [True, 1.0, None, b"a"])
@pytest.mark.parametrize("method", ["end", "state"])
def test_end_and_state_refuse_ids_that_are_not_str_or_int(method, bad):
    streams = Streams(make_model())
    streams.step([0, 1], np.ones((2, F), np.float32))
    before = snapshot(streams)
    with pytest.raises(TypeError, match=r"stream_id must be a str or an int; received"):
        getattr(streams, method)(bad)
    assert snapshot(streams) == before


def test_end_and_state_accept_numpy_integer_ids():
    streams = Streams(make_model())
    streams.step([0, 1], np.ones((2, F), np.float32))
    assert streams.state(np.int64(1)).batch_size == 1
    streams.end(np.int64(1))
    assert streams.ids == [0]


# --- 3. step refuses unordered ids ------------------------------------------------------------


@pytest.mark.parametrize(
    "ids", [{"a", "b"}, frozenset({"a", "b"}), {"a": 0, "b": 1}, {"a": 0, "b": 1}.keys()]
)
def test_step_refuses_ids_without_an_order(ids):
    streams = Streams(make_model())
    streams.step(["a", "b"], np.ones((2, F), np.float32))
    before = snapshot(streams)
    with pytest.raises(
        TypeError, match=r"ids must be an ordered sequence such as a list or tuple"
    ) as error:
        streams.step(ids, np.arange(2 * F, dtype=np.float32).reshape(2, F))
    assert f"received {type(ids).__name__}" in str(error.value)
    assert snapshot(streams) == before


def test_step_still_takes_tuples_and_generators():
    model = make_model()
    x = np.random.default_rng(3).normal(size=(2, F)).astype(np.float32)
    want = Streams(model).step(["a", "b"], x)
    np.testing.assert_array_equal(Streams(model).step(("a", "b"), x), want)
    np.testing.assert_array_equal(Streams(model).step(iter(["a", "b"]), x), want)


# --- 4. save and load keep the dtype ----------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_a_saved_model_loads_in_its_dtype(tmp_path, dtype):
    model = make_model().to(dtype)
    save_model(model, tmp_path / "run")
    loaded = load_model(tmp_path / "run")
    assert {p.dtype for p in loaded.parameters()} == {dtype}
    for name, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, rtol=0, atol=0)


def test_a_float64_model_predicts_the_same_after_loading(tmp_path):
    model = make_model().double()
    save_model(model, tmp_path / "run")
    x = np.random.default_rng(4).normal(size=(6, F))
    want = predict(model, x)
    got = predict(load_model(tmp_path / "run"), x)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, want)


# --- 5. bfloat16 models ---------------------------------------------------------------------


def test_predict_runs_a_bfloat16_model_and_gives_float32():
    model = make_model().to(torch.bfloat16)
    x = np.random.default_rng(5).normal(size=(5, F)).astype(np.float32)
    got = predict(model, x)
    assert got.dtype == np.float32 and got.shape == (5, O)
    with torch.no_grad():
        y, _ = model(torch.from_numpy(x)[None].to(torch.bfloat16), model.initial_state(1))
    np.testing.assert_array_equal(got, y[0].float().numpy())
    assert next(model.parameters()).dtype == torch.bfloat16
    as_tensor = predict(model, torch.from_numpy(x).to(torch.bfloat16))  # bfloat16 input too
    np.testing.assert_array_equal(as_tensor, got)


def test_streams_run_a_bfloat16_model_and_give_float32():
    model = make_model("gru").to(torch.bfloat16)
    x = np.random.default_rng(6).normal(size=(2, 3, F)).astype(np.float32)
    streams = Streams(model)
    got = np.stack([streams.step(["a", "b"], x[:, t]) for t in range(3)], axis=1)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, predict(model, x), atol=1e-2)
    whole = Streams(model).step(["a", "b"], x)  # k steps at once
    np.testing.assert_allclose(got, whole, atol=1e-2)
    assert streams.state("a").tensors()[0].dtype == torch.bfloat16


def test_forecast_and_sample_paths_run_a_bfloat16_model_and_give_float32():
    model = make_model().to(torch.bfloat16)
    reference = make_model().to(torch.bfloat16).float()  # the same rounded weights, in float32
    context = np.random.default_rng(7).normal(size=(5, F)).astype(np.float32)
    covariates = np.ones((3, F - 1), np.float32)
    got = forecast(model, context, horizon=3, target_features=[0], covariates=covariates)
    expected = forecast(reference, context, horizon=3, target_features=[0], covariates=covariates)
    assert got.dtype == np.float32 and got.shape == (3, O)
    np.testing.assert_allclose(got, expected, atol=5e-2)
    torch.manual_seed(0)
    head = SequenceModel(input_size=F, output_size=O, hidden_size=H, distribution="normal")
    paths = forecast(head.to(torch.bfloat16), context, 3, target_features=[0],
                     covariates=covariates, samples=4, seed=0)  # fmt: skip
    assert paths.samples.dtype == np.float32 and paths.samples.shape == (4, 3, O)
    assert np.isfinite(paths.samples).all()


# --- 6. device strings ------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["gpu", "cuda:x", ""])
def test_predict_and_streams_refuse_a_device_name_torch_does_not_know(device):
    model = make_model()
    x = np.ones((5, F), np.float32)
    with pytest.raises(ValueError, match=rf"device must be 'auto', 'cpu', 'cuda'.*{device!r}"):
        predict(model, x, device=device)
    with pytest.raises(ValueError, match="device must be 'auto'"):
        Streams(model, device=device)


@pytest.mark.parametrize("device", [True, 1.0, ["cpu"]])
def test_a_device_of_another_type_is_a_type_error(device):
    with pytest.raises(TypeError, match="device must be a string such as 'auto'"):
        predict(make_model(), np.ones((5, F), np.float32), device=device)


@no_cuda
def test_an_int_device_is_a_cuda_index_as_torch_reads_it():
    with pytest.raises(ValueError, match="device='cuda:5' but CUDA is not available"):
        predict(make_model(), np.ones((5, F), np.float32), device=5)


@no_cuda
def test_cuda_on_a_machine_without_it_is_a_value_error_in_fits_words(tmp_path):
    model = make_model()
    save_model(model, tmp_path / "run")
    before = files_of(tmp_path / "run")
    message = r"device='cuda' but CUDA is not available on this machine; use device='cpu'"
    with pytest.raises(ValueError, match=message):
        predict(model, np.ones((5, F), np.float32), device="cuda")
    with pytest.raises(ValueError, match=message):
        Streams(model, device=torch.device("cuda"))
    with pytest.raises(ValueError, match=message):
        load_model(tmp_path / "run", device="cuda")
    assert files_of(tmp_path / "run") == before
    assert next(model.parameters()).device.type == "cpu"


def test_auto_and_cpu_devices_run(tmp_path):
    model = make_model()
    x = np.ones((5, F), np.float32)
    want = predict(model, x)
    np.testing.assert_array_equal(predict(model, x, device="cpu"), want)
    np.testing.assert_allclose(predict(model, x, device="auto"), want, atol=1e-5)
    save_model(model, tmp_path / "run")
    assert isinstance(load_model(tmp_path / "run", device="cpu"), SequenceModel)


# --- 7. damaged run directories ---------------------------------------------------------------


@pytest.fixture
def run(tmp_path) -> Path:
    return save_model(make_model(), tmp_path / "run")


def test_a_model_json_without_the_model_entry(run):
    document = read_model_json(run)
    del document["model"]
    (run / MODEL_JSON).write_text(json.dumps(document))
    with pytest.raises(ValueError, match=r"model\.json has no 'model' entry"):
        load_model(run)


def test_a_model_json_with_an_unreadable_config(run):
    document = read_model_json(run)
    document["model"] = "abc"
    (run / MODEL_JSON).write_text(json.dumps(document))
    with pytest.raises(ValueError, match=r"model\.json holds an unreadable model config"):
        load_model(run)


def test_junk_weights(run):
    (run / MODEL_FILE).write_bytes(b"not safetensors at all")
    with pytest.raises(ValueError, match=r"model\.safetensors is not a readable safetensors"):
        load_model(run)


def test_weights_of_another_hidden_size(run, tmp_path):
    other = save_model(make_model(hidden_size=H + 2), tmp_path / "other")
    (run / MODEL_FILE).write_bytes((other / MODEL_FILE).read_bytes())
    message = r"model\.safetensors does not match the config in model\.json.*expected \[16, 2\], found \[24, 2\]"  # noqa: E501
    with pytest.raises(ValueError, match=message):
        load_model(run)


# --- 8. save_model's arguments ----------------------------------------------------------------


@pytest.mark.parametrize("metadata", [[1, 2], "abc", 5])
def test_metadata_that_is_not_a_dict(tmp_path, metadata):
    with pytest.raises(TypeError, match=r"metadata must be a dict of JSON values.*received"):
        save_model(make_model(), tmp_path / "run", metadata=metadata)
    assert not (tmp_path / "run").exists()


def test_metadata_that_json_cannot_write_creates_nothing(tmp_path):
    with pytest.raises(TypeError, match=r"metadata must hold only JSON values"):
        save_model(make_model(), tmp_path / "run", metadata={"a": np.ones(2)})
    assert not (tmp_path / "run").exists()


def test_run_dir_that_is_not_a_path():
    with pytest.raises(TypeError, match=r"run_dir must be a path .*received int 5"):
        save_model(make_model(), 5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"run_dir must be a path .*received int 5"):
        load_model(5)  # type: ignore[arg-type]


def test_forecast_reads_no_covariate_from_the_last_row_so_nan_there_is_taken():
    model = SequenceModel(input_size=F, output_size=O, hidden_size=H).eval()
    context = np.random.default_rng(8).normal(size=(5, F)).astype(np.float32)
    covariates = np.ones((3, F - 1), np.float32)
    expected = forecast(model, context, 3, target_features=[0], covariates=covariates)
    covariates[-1] = np.nan  # the docstring: the last row feeds no step
    got = forecast(model, context, 3, target_features=[0], covariates=covariates)
    np.testing.assert_array_equal(got, expected)
    covariates[0] = np.nan
    with pytest.raises(ValueError, match="covariates"):
        forecast(model, context, 3, target_features=[0], covariates=covariates)
