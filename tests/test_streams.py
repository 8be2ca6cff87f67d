"""Streams: step-by-step == predict on the whole sequence, batched, atomic on bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqstate.core.layers import GRU
from seqstate.core.model import SequenceModel
from seqstate.core.state import GRUState, LSTMState
from seqstate.inference.prediction import predict
from seqstate.inference.streams import Streams, advance

pytestmark = pytest.mark.numerics  # run again on another kernel path: scripts/test

F, O, H = 3, 2, 8


def make_model(cell: str = "lstm", dtype: torch.dtype = torch.float64, **kwargs) -> SequenceModel:
    torch.manual_seed(0)
    model = SequenceModel(
        input_size=F, output_size=O, cell=cell, hidden_size=H, num_layers=2, **kwargs
    )
    return model.to(dtype).eval()


MODELS = {cell: make_model(cell) for cell in ("lstm", "gru", "rnn")}


def snapshot(streams: Streams) -> dict:
    return streams.export_states()


@settings(max_examples=30, deadline=None)
@given(data=st.data(), cell=st.sampled_from(["lstm", "gru", "rnn"]))
def test_random_interleavings_equal_predict_on_each_whole_sequence(data, cell):
    model = MODELS[cell]
    lengths = data.draw(st.lists(st.integers(1, 20), min_size=1, max_size=6), label="lengths")
    rng = np.random.default_rng(sum(lengths))
    sequences = {f"s{i}" if i % 2 else i: rng.normal(size=(n, F)) for i, n in enumerate(lengths)}
    streams = Streams(model)
    position = dict.fromkeys(sequences, 0)
    outputs: dict = {key: [] for key in sequences}
    for _ in range(200):  # bounded; each call consumes at least one step
        live = [key for key in sequences if position[key] < len(sequences[key])]
        if not live:
            break
        chosen = data.draw(st.lists(st.sampled_from(live), min_size=1, unique=True), label="ids")
        room = min(len(sequences[key]) - position[key] for key in chosen)
        k = data.draw(st.integers(1, room), label="k")
        one_step = k == 1 and data.draw(st.booleans(), label="(n, F) form")
        x = np.stack([sequences[key][position[key] : position[key] + k] for key in chosen])
        y = streams.step(chosen, x[:, 0] if one_step else x)
        assert y.shape == ((len(chosen), O) if one_step else (len(chosen), k, O))
        for row, key in enumerate(chosen):
            outputs[key].append(y[row : row + 1] if one_step else y[row])
            position[key] += k
    expected = predict(model, list(sequences.values()), return_state=True)
    for i, key in enumerate(sequences):
        np.testing.assert_allclose(np.concatenate(outputs[key]), expected[0][i], atol=1e-10)
        for got, want in zip(
            streams.state(key).tensors(), expected[1].select([i]).tensors(), strict=True
        ):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert sorted(map(str, streams.ids)) == sorted(map(str, sequences))


def test_one_model_call_per_step_whatever_the_number_of_streams():
    model = make_model("gru")
    calls = []
    handle = model.register_forward_hook(lambda module, args, output: calls.append(args[0].shape))
    try:
        streams = Streams(model)
        streams.step(list(range(50)), np.zeros((50, F)))
        streams.step([3, 7, "new"], np.zeros((3, 4, F)))
    finally:
        handle.remove()
    assert calls == [torch.Size([50, 1, F]), torch.Size([3, 4, F])]


def test_many_streams_growing_and_ending_keep_their_own_states():
    model = MODELS["lstm"]
    rng = np.random.default_rng(0)
    streams = Streams(model)
    history: dict = {}
    for round_ in range(6):  # grow past the initial capacity, end some, start others
        ids = [f"{round_}-{i}" for i in range(20)] + [k for k in list(history)[:15]]
        x = rng.normal(size=(len(ids), 2, F))
        y = streams.step(ids, x)
        for row, key in enumerate(ids):
            history.setdefault(key, []).append((x[row], y[row]))
        for key in list(history)[::4]:
            if key in streams:
                streams.end(key)
                del history[key]
    assert len(streams) == len(history)
    for pieces in history.values():
        sequence = np.concatenate([x for x, _ in pieces])
        np.testing.assert_allclose(
            np.concatenate([y for _, y in pieces]), predict(model, sequence), atol=1e-10
        )


def test_lifecycle_start_reset_end_state_and_membership():
    model = MODELS["gru"]
    streams = Streams(model)
    x = np.ones((2, 5, F))
    first = streams.step(["a", 1], x)
    assert streams.ids == ["a", 1] and len(streams) == 2 and "a" in streams and 2 not in streams
    np.testing.assert_allclose(first[0], first[1])  # same input, both from zeros

    streams.reset("a")  # zeroed: replays like a fresh stream
    np.testing.assert_allclose(streams.step(["a"], x[:1])[0], first[0])
    streams.start(1)  # start on a live stream also zeroes it
    assert torch.equal(streams.state(1).hidden, torch.zeros(2, 1, H, dtype=torch.float64))
    streams.start("c")
    assert "c" in streams and streams.state("c").batch_size == 1

    copy = streams.state("a")
    copy.hidden.fill_(123.0)  # a copy: the stream is untouched
    assert not torch.equal(streams.state("a").hidden, copy.hidden)

    streams.end("a")
    assert "a" not in streams and streams.ids == [1, "c"]
    with pytest.raises(KeyError, match="unknown stream 'a'"):
        streams.end("a")
    with pytest.raises(KeyError, match=r"unknown stream 'zz'.*live streams: \[1, 'c'\]"):
        streams.state("zz")
    # an ended stream's id starts again from zero
    np.testing.assert_allclose(streams.step(["a"], x[:1])[0], first[0])


def test_export_and_import_states_continue_exactly():
    model = MODELS["lstm"]
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(12, F)), rng.normal(size=(9, F))
    streams = Streams(model)
    streams.step(["a", "b"], np.stack([a[:5], b[:5]]))
    saved = streams.export_states()
    assert set(saved) == {"a", "b"} and all(isinstance(v, bytes) for v in saved.values())

    restored = Streams(model)
    restored.import_states(saved)
    assert restored.ids == ["a", "b"]
    y = restored.step(["b", "a"], np.stack([b[5:9], a[5:9]]))
    np.testing.assert_allclose(y[0], predict(model, b[:9])[5:], atol=1e-10)
    np.testing.assert_allclose(y[1], predict(model, a[:9])[5:], atol=1e-10)
    # import overwrites live streams too, and accepts State objects
    restored.import_states({"a": LSTMState.from_bytes(saved["a"])})
    assert restored.state("a").equal(streams.state("a"))


def test_bad_imports_change_nothing():
    model = MODELS["lstm"]
    streams = Streams(model)
    streams.step(["a"], np.ones((1, F)))
    before = snapshot(streams)
    good = streams.export_states()["a"]
    bad_cases = [
        ({"b": good, "c": b"not a state"}, ValueError, r"states\['c'\]"),
        ({"b": good, "c": GRUState.zeros(2, 1, H).to_bytes()}, TypeError, "GRUState"),
        ({"b": LSTMState.zeros(2, 2, H).to_bytes()}, ValueError, r"\[2, 1, 8\]"),
        ({"b": LSTMState.zeros(1, 1, H).to_bytes()}, ValueError, "different model"),
        ({1.5: good}, TypeError, "str or an int"),
        ({"b": 3}, TypeError, "bytes"),
        ([("b", good)], TypeError, "mapping"),
    ]
    for mapping, error, message in bad_cases:
        with pytest.raises(error, match=message):
            streams.import_states(mapping)
        assert streams.ids == ["a"] and snapshot(streams) == before


@pytest.mark.parametrize(
    ("ids", "x", "error", "message"),
    [
        (["a", "b"], np.ones((2, F + 1)), ValueError, r"F=3"),
        (["a", "b"], np.ones((3, F)), ValueError, r"one row per stream id \(2\)"),
        (["a", "b"], np.ones(F), ValueError, r"received \(3,\)"),
        (["a", "b"], np.ones((2, 1, 1, F)), ValueError, "k steps per stream"),
        (["a", "a"], np.ones((2, F)), ValueError, "'a' more than once"),
        ("a", np.ones((1, F)), TypeError, r"pass \[id\]"),
        ([1.0, "b"], np.ones((2, F)), TypeError, "str or an int"),
        ([True, "b"], np.ones((2, F)), TypeError, "str or an int"),
        (["a", "b"], np.array([["x"] * F] * 2), TypeError, "numbers"),
    ],
)
def test_bad_steps_raise_and_change_no_state(ids, x, error, message):
    streams = Streams(MODELS["rnn"])
    streams.step(["a", "b"], np.ones((2, 3, F)))
    before = snapshot(streams)
    with pytest.raises(error, match=message):
        streams.step(ids, x)
    assert streams.ids == ["a", "b"] and snapshot(streams) == before


def test_nan_names_the_stream_and_no_stream_starts():
    streams = Streams(MODELS["lstm"])
    streams.step(["a"], np.ones((1, F)))
    before = snapshot(streams)
    x = np.ones((3, 4, F))
    x[2, 3, 0] = np.inf
    with pytest.raises(ValueError, match=r"stream 'new' at step 3.*no state was changed"):
        streams.step(["a", 7, "new"], x)
    assert streams.ids == ["a"] and snapshot(streams) == before


def test_a_failing_model_call_starts_no_stream():
    class Broken(SequenceModel):
        def forward(self, x, state=None, reset=None, mask=None):
            raise RuntimeError("boom")

    torch.manual_seed(0)
    streams = Streams(Broken(input_size=F, output_size=O, hidden_size=H))
    with pytest.raises(RuntimeError, match="boom"):
        streams.step(["a", "b"], np.ones((2, F)))
    assert len(streams) == 0


def test_empty_steps_and_float32_torch_inputs():
    model = make_model("lstm", dtype=torch.float32)
    streams = Streams(model)
    assert streams.step([], np.zeros((0, F))).shape == (0, O)
    assert streams.step(["a"], np.zeros((1, 0, F))).shape == (1, 0, O)
    assert len(streams) == 0
    x = torch.randn(2, 6, F)
    y = streams.step(["a", "b"], x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y[1], predict(model, x[1].numpy()), atol=1e-5)


def test_training_flag_is_restored_and_dropout_is_off():
    model = make_model("gru", dropout=0.5).train()
    streams = Streams(model)
    x = np.random.default_rng(2).normal(size=(1, 10, F))
    y = streams.step(["a"], x)
    assert model.training
    model.eval()
    np.testing.assert_allclose(y[0], predict(model, x[0]), atol=1e-10)


def test_advance_is_pure_and_equals_the_model_call():
    model = MODELS["lstm"]
    state = model.initial_state(3).map(lambda t: t + 0.1)
    kept = state.map(torch.clone)
    x = torch.randn(3, 4, F, dtype=torch.float64)
    y, new_state = advance(model, state, x)
    with torch.no_grad():
        want_y, want_state = model(x, state)
    # bitwise: advance makes the model's own call (the same kernels on the same shapes)
    assert torch.equal(y, want_y) and new_state.equal(want_state) and state.equal(kept)
    y1, _ = advance(model, state, x[:, 0])
    assert y1.shape == (3, O)
    torch.testing.assert_close(y1, want_y[:, 0], rtol=1e-12, atol=1e-12)
    assert not y.requires_grad


@pytest.mark.parametrize(
    ("state", "x", "error", "message"),
    [
        (None, torch.zeros(3, F, dtype=torch.float64), TypeError, "seqstate State"),
        ("gru", torch.zeros(3, F, dtype=torch.float64), TypeError, "LSTMState"),
        ("lstm", torch.zeros(2, F, dtype=torch.float64), ValueError, r"\[n, F\]=\[3, 3\]"),
        ("lstm", torch.zeros(3, F), TypeError, "float32"),
        ("lstm", torch.full((3, F), float("nan"), dtype=torch.float64), ValueError, "NaN"),
        ("lstm", np.zeros((3, F)), TypeError, "torch.Tensor"),
    ],
)
def test_advance_rejects_bad_input(state, x, error, message):
    states = {"lstm": LSTMState.zeros(2, 3, H, dtype=torch.float64), "gru": GRUState.zeros(2, 3, H)}
    with pytest.raises(error, match=message):
        advance(MODELS["lstm"], states.get(state), x)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_one_step_runs_the_cell_kernels_and_equals_the_sequence_path(cell, monkeypatch):
    """The hot path: a step of T=1 never reaches the sequence kernel, and stepping a stream
    one step at a time gives predict's outputs and final state for the whole sequence."""
    model = MODELS[cell]

    def no_sequence_kernel(*args):
        raise AssertionError("a single step reached the sequence kernel")

    sequence = np.random.default_rng(5).normal(size=(12, F))
    expected, final = predict(model, sequence, return_state=True)
    monkeypatch.setattr(model.recurrent, "fused", no_sequence_kernel)
    streams = Streams(model)
    outputs = [streams.step(["a"], sequence[t][None]) for t in range(len(sequence))]
    np.testing.assert_allclose(np.concatenate(outputs), expected, atol=1e-10)
    for got, want in zip(streams.state("a").tensors(), final.tensors(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    state = model.initial_state(2)
    y, _ = advance(model, state, torch.from_numpy(np.stack([sequence[0], sequence[1]])))
    np.testing.assert_allclose(y[:1].numpy(), expected[:1], atol=1e-10)


def test_advance_notices_a_model_moved_to_another_dtype():
    model = make_model("gru")
    state = model.initial_state(2)
    advance(model, state, torch.zeros(2, F, dtype=torch.float64))
    model.float()
    with pytest.raises(TypeError, match="float32"):
        advance(model, state.to(dtype=torch.float32), torch.zeros(2, F, dtype=torch.float64))
    y, _ = advance(model, state.to(dtype=torch.float32), torch.zeros(2, F))
    assert y.dtype == torch.float32


def test_all_streams_in_row_order_and_in_any_other_order_agree():
    """Stepping every live stream in row order uses the buffer rows in place; any other
    order gathers them; both give each stream the same outputs and states."""
    model = MODELS["lstm"]
    rng = np.random.default_rng(7)
    ids = [f"s{i}" for i in range(5)]
    in_order, shuffled = Streams(model), Streams(model)
    for round_ in range(4):
        x = rng.normal(size=(5, F))
        order = rng.permutation(5) if round_ else np.arange(5)
        y_in_order = in_order.step(ids, x)
        y_shuffled = shuffled.step([ids[i] for i in order], x[order])
        np.testing.assert_allclose(y_shuffled, y_in_order[order], rtol=1e-12, atol=1e-12)
    for key in ids:  # (rows in another order: the same to rounding, not bitwise)
        for a, b in zip(in_order.state(key).tensors(), shuffled.state(key).tensors(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


class _Wrapped(torch.nn.Module):
    """A user module of the same protocol, without SequenceModel's trusted step entry."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.inner = GRU(F, H, 2).double()
        self.input_size, self.output_size = F, H
        self.calls = 0

    def forward(self, x, state=None, reset=None, mask=None):
        self.calls += 1
        return self.inner(x, state, reset, mask)

    def initial_state(self, batch_size):
        return self.inner.initial_state(batch_size)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_one_step_is_bitwise_the_forward_step(cell):
    """Streams.step and advance take the model's trusted step; outputs and states are
    forward's bit for bit, for every stream, in row order or not."""
    model = MODELS[cell]
    rng = np.random.default_rng(11)
    streams = Streams(model)
    ids = ["a", "b", "c"]
    state = model.initial_state(3)
    for round_ in range(4):
        x = rng.normal(size=(3, F))
        order = np.arange(3) if round_ % 2 == 0 else np.array([2, 0, 1])
        y = streams.step([ids[i] for i in order], x[order])
        with torch.no_grad():
            want_y, state = model(torch.from_numpy(x)[:, None], state)
        # the buffer rows as they are: bitwise on every CPU (the same cell kernels, same rows)
        if round_ % 2 == 0:
            assert np.array_equal(y, want_y[:, 0].numpy())
        else:  # rows gathered in another order: the same to rounding (as the matmul groups)
            np.testing.assert_allclose(y, want_y[order, 0].numpy(), rtol=1e-12, atol=1e-12)
        got_y, got_state = advance(model, model.initial_state(3), torch.from_numpy(x))
        with torch.no_grad():
            fresh_y, fresh_state = model(torch.from_numpy(x)[:, None], model.initial_state(3))
        assert torch.equal(got_y, fresh_y[:, 0]) and got_state.equal(fresh_state)
    for row, key in enumerate(ids):
        for got, want in zip(
            streams.state(key).tensors(), state.select([row]).tensors(), strict=True
        ):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_a_model_without_the_trusted_step_runs_its_forward():
    model = _Wrapped()
    sequence = np.random.default_rng(12).normal(size=(6, F))
    expected, final = predict(model, sequence, return_state=True)
    model.calls = 0
    streams = Streams(model)
    outputs = [streams.step(["a"], sequence[t][None]) for t in range(len(sequence))]
    assert model.calls == len(sequence)
    np.testing.assert_allclose(np.concatenate(outputs), expected, rtol=1e-12, atol=1e-12)
    for got, want in zip(streams.state("a").tensors(), final.tensors(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    layer = model.inner  # a bare layer: the same protocol, forward too
    y, new_state = advance(layer, layer.initial_state(2), torch.ones(2, F, dtype=torch.float64))
    with torch.no_grad():
        want_y, want_state = layer(torch.ones(2, 1, F, dtype=torch.float64))
    assert torch.equal(y, want_y[:, 0]) and new_state.equal(want_state)


def test_advance_tells_nan_and_inf_from_large_finite_values():
    """The finite check sums x first: a sum that overflows is checked value by value, so
    large finite inputs pass and a NaN or inf anywhere is refused, nothing changed."""
    model = MODELS["lstm"]
    state = model.initial_state(2)
    kept = state.map(torch.clone)
    big = torch.full((2, F), 1e308, dtype=torch.float64)  # finite; the sum overflows to inf
    advance(model, state, big)
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.zeros(2, F, dtype=torch.float64)
        x[1, 2] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            advance(model, state, x)
    assert state.equal(kept)


def test_bad_one_steps_change_no_stream_on_the_trusted_path():
    model = MODELS["gru"]
    streams = Streams(model)
    streams.step(["a", "b"], np.ones((2, F)))
    before = snapshot(streams)
    for x in (np.ones((2, F + 1)), np.full((2, F), np.nan), np.ones((3, F))):
        with pytest.raises(ValueError):
            streams.step(["b", "new"], x)
    assert streams.ids == ["a", "b"] and snapshot(streams) == before


def test_streams_take_large_finite_values_whose_sum_overflows():
    model = MODELS["lstm"]
    streams = Streams(model)
    y = streams.step(["a"], np.full((1, F), 1e308))  # finite; the sum overflows to inf
    assert np.isfinite(y).all()
    before = snapshot(streams)
    with pytest.raises(ValueError, match="stream 'a' at step 0"):
        streams.step(["a"], np.array([[1e308, -np.inf, 0.0]]))
    assert snapshot(streams) == before


# --- the direct one-step path ----------------------------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("num_layers", [1, 3])
def test_the_direct_step_is_bitwise_forward_with_normalisation_and_a_deep_head(
    cell, num_layers, monkeypatch
):
    """Streams.step (all streams in row order) and advance run the cell kernels and the head
    directly, never the model's forward nor its trusted step; outputs and states are
    forward's bit for bit, the normalisation and a two-layer head included."""
    torch.manual_seed(3)
    model = SequenceModel(
        input_size=F,
        output_size=O,
        cell=cell,
        hidden_size=H,
        num_layers=num_layers,
        head=[{"units": 5, "activation": "tanh"}, {"units": O}],
    ).to(torch.float64)
    model.set_normalization(
        np.array([0.5, -1.0, 2.0]), np.array([2.0, 0.5, 1.5]), np.array([1.0, -2.0]), [3.0, 0.1]
    )
    model.eval()
    reference = SequenceModel(model.config).to(torch.float64).eval()
    reference.load_state_dict(model.state_dict())
    rng = np.random.default_rng(7)
    streams = Streams(model)
    streams.step(["a", "b"], rng.normal(size=(2, F)))  # starts them (the general path)
    state = streams._buffer.select([0, 1])

    def refuse(*args, **kwargs):
        raise AssertionError("the direct step ran the model's forward or trusted step")

    monkeypatch.setattr(model, "forward", refuse)
    monkeypatch.setattr(model, "_trusted_step", refuse)
    monkeypatch.setattr(model, "_steps_directly", lambda: True)  # (forward is patched above)
    for _ in range(3):
        x = rng.normal(size=(2, F))
        y = streams.step(["a", "b"], x)
        with torch.no_grad():
            want_y, state = reference(torch.from_numpy(x)[:, None], state)
        assert np.array_equal(y, want_y[:, 0].numpy())
        assert streams._buffer.select([0, 1]).equal(state)
        got_y, got_state = advance(model, state, torch.from_numpy(x))
        with torch.no_grad():
            next_y, next_state = reference(torch.from_numpy(x)[:, None], state)
        assert torch.equal(got_y, next_y[:, 0]) and got_state.equal(next_state)


def test_a_hook_sends_direct_steps_through_forward():
    """A forward hook must see every step: while one is registered, the direct path steps
    aside (Streams.step and advance alike), and the results stay forward's."""
    model = make_model("lstm")
    seen = []
    handle = model.register_forward_hook(lambda module, args, output: seen.append(1))
    try:
        streams = Streams(model)
        streams.step(["a"], np.ones((1, F)))
        streams.step(["a"], np.ones((1, F)))  # all streams in row order: the direct case
        advance(model, model.initial_state(1), torch.ones(1, F, dtype=torch.float64))
    finally:
        handle.remove()
    assert len(seen) == 3


@pytest.mark.parametrize("where", ["model", "head", "global"])
def test_a_hook_registered_after_direct_steps_sees_the_next_ones(where):
    """The model keeps its answer that no hook needs forward between steps: a hook registered
    after steps took the direct path sees every later step (Streams.step and advance), and
    once it is removed the steps are forward's results still."""
    model = make_model("lstm")
    streams = Streams(model)
    state = model.initial_state(1)
    x = np.ones((1, F))
    for _ in range(3):  # the direct path, its answer kept
        streams.step(["a"], x)
        _, state = advance(model, state, torch.ones(1, F, dtype=torch.float64))
    seen = []
    hook = lambda *args: seen.append(1)  # noqa: E731
    if where == "global":
        handle = torch.nn.modules.module.register_module_forward_hook(hook)
    else:
        handle = (model if where == "model" else model.head).register_forward_hook(hook)
    try:
        streams.step(["a"], x)
        advance(model, state, torch.ones(1, F, dtype=torch.float64))
    finally:
        handle.remove()
    assert len(seen) >= 2  # (a global hook sees the model's modules too)
    before = streams.state("a")
    y = streams.step(["a"], x)
    with torch.no_grad():
        want_y, want_state = model(torch.from_numpy(x)[:, None], before)
    assert np.array_equal(y, want_y[:, 0].numpy()) and streams.state("a").equal(want_state)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_hot_paths_pending_states_reach_every_reader_and_writer(cell):
    """Steps of every live stream in row order keep their new states as the kernels return
    them and write them into the buffer only when something else needs it: every reader
    (state, export, a step in another order) and writer (start, end, a new stream, import)
    sees exactly the states one advance per stream gives."""
    model = MODELS[cell]
    rng = np.random.default_rng(11)
    streams = Streams(model)
    reference: dict[str, object] = {}

    def hot_step() -> None:
        ids = streams.ids
        x = rng.normal(size=(len(ids), F))
        y = streams.step(ids, x)
        for row, key in enumerate(ids):
            state = reference.get(key) or model.initial_state(1)
            y_ref, reference[key] = advance(model, state, torch.from_numpy(x[row : row + 1]))
            np.testing.assert_allclose(y[row], y_ref[0].numpy(), rtol=1e-12, atol=1e-12)

    def check() -> None:
        assert set(streams.ids) == set(reference)
        for key, state in reference.items():
            for a, b in zip(streams.state(key).tensors(), state.tensors(), strict=True):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)

    for key in ("a", "b", "c"):
        streams.start(key)
        reference[key] = model.initial_state(1)
    hot_step()
    hot_step()
    check()
    streams.start("b")  # a reset of a live stream, after hot steps
    reference["b"] = model.initial_state(1)
    hot_step()
    x = rng.normal(size=(2, F))
    streams.step(["c", "a"], x)  # another order: the general path
    for row, key in enumerate(["c", "a"]):
        reference[key] = advance(model, reference[key], torch.from_numpy(x[row : row + 1]))[1]
    hot_step()
    streams.end("a")  # the last row moves into a's
    del reference["a"]
    hot_step()
    ids = [*streams.ids, "d"]  # a new stream: the buffer grows around pending rows
    x = rng.normal(size=(3, F))
    y = streams.step(ids, x)
    reference["d"] = model.initial_state(1)
    for row, key in enumerate(ids):
        y_ref, reference[key] = advance(model, reference[key], torch.from_numpy(x[row : row + 1]))
        np.testing.assert_allclose(y[row], y_ref[0].numpy(), rtol=1e-12, atol=1e-12)
    hot_step()
    check()
    copy = Streams(model)
    copy.import_states(streams.export_states())  # exported right after hot steps
    x = rng.normal(size=(3, F))
    np.testing.assert_array_equal(copy.step(streams.ids, x), streams.step(streams.ids, x))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_advance_in_a_loop_sees_in_place_changes_and_never_mixes_states(cell):
    """advance keeps the 2-D views of the last states it saw: a loop over its own returned
    states, an in-place change of a state between steps, repeated steps from one state and
    new states (at the addresses of freed ones) all give forward's answer for that state."""
    torch.manual_seed(4)
    model = SequenceModel(input_size=F, output_size=O, cell=cell, hidden_size=H)
    model = model.to(torch.float64).eval()
    rng = np.random.default_rng(12)

    def forward(state, x):
        with torch.no_grad():
            y, new = model(x[:, None], state.map(torch.clone))
        return y[:, 0], new

    state = model.initial_state(2)
    for step in range(6):
        x = torch.from_numpy(rng.normal(size=(2, F)))
        want_y, want_state = forward(state, x)
        y, state = advance(model, state, x)
        assert torch.equal(y, want_y) and state.equal(want_state)
        if step % 2 == 0:
            state.hidden.mul_(-0.5)  # (seen by the next step)
    x = torch.from_numpy(rng.normal(size=(2, F)))
    want_y, want_state = forward(state, x)
    for _ in range(2):  # from the same state twice: the same answer, the state unchanged
        y, new = advance(model, state, x)
        assert torch.equal(y, want_y) and new.equal(want_state)
    for _ in range(5):  # fresh states, each freed before the next is made
        fresh = model.initial_state(2).map(lambda t: t + float(rng.normal()))
        want_y, _ = forward(fresh, x)
        assert torch.equal(advance(model, fresh, x)[0], want_y)
        del fresh


def test_advance_refuses_a_state_of_another_layer_count():
    model = make_model("lstm")  # two layers
    state = LSTMState.zeros(1, 3, H, dtype=torch.float64)
    with pytest.raises(
        ValueError, match=r"\[layers, n, H\]=\[2, n, 8\] for this model; received \[1, 3, 8\]"
    ):
        advance(model, state, torch.zeros(3, F, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_direct_step_sees_every_change_of_the_normalisation(dtype):
    """The direct step keeps whether the normalisation is the identity with the buffers it
    read and their versions: writing a buffer in place, replacing one, loading a state dict
    and going back to the identity are each seen by the next step (Streams.step and advance
    alike), whose answers stay forward's."""
    torch.manual_seed(5)
    model = SequenceModel(input_size=F, output_size=O, hidden_size=H).to(dtype).eval()
    other = SequenceModel(input_size=F, output_size=O, hidden_size=H).to(dtype).eval()
    other.load_state_dict(model.state_dict())
    other.set_normalization([1.0, 2.0, 3.0], [2.0, 2.0, 0.5], [-1.0, 1.0], [0.5, 4.0])
    rng = np.random.default_rng(9)
    streams = Streams(model)
    state = model.initial_state(1)  # the stream's, by forward
    advanced = model.initial_state(1)  # advance's own loop, from the same states
    changes = [
        lambda: None,
        lambda: model.set_normalization([0.5, -1.0, 2.0], [2.0, 0.5, 1.5]),  # in place
        lambda: model.input_scale.mul_(3.0),  # in place, by hand
        lambda: model.set_normalization([0.0] * F, [1.0] * F),  # the identity again
        lambda: setattr(model, "input_shift", torch.full((F,), 0.25, dtype=dtype)),  # replaced
        lambda: model.load_state_dict(other.state_dict()),  # output normalisation too
        lambda: model.load_state_dict(other.state_dict() | {"output_scale": torch.ones(O)}),
        lambda: model.set_normalization([0.0] * F, [1.0] * F, [0.0] * O, [1.0] * O),
    ]
    for change in changes:
        change()
        for _ in range(2):
            x = rng.normal(size=(1, F)).astype(np.dtype(str(dtype).split(".")[1]))
            with torch.no_grad():
                want_y, want_state = model(torch.from_numpy(x)[:, None], state)
                want_advanced = model(torch.from_numpy(x)[:, None], advanced)[0][:, 0]
            assert np.array_equal(streams.step(["a"], x), want_y[:, 0].numpy())
            y, advanced = advance(model, advanced, torch.from_numpy(x))
            assert torch.equal(y, want_advanced)
            state = want_state
        assert streams.state("a").equal(state)


def test_the_direct_step_of_a_model_made_in_inference_mode():
    """Buffers made under torch.inference_mode have no version counters: the direct step
    then asks the model on every step, and its answers are still forward's."""
    torch.manual_seed(6)
    with torch.inference_mode():
        model = SequenceModel(input_size=F, output_size=O, hidden_size=H).eval()
        model.set_normalization([0.5, -1.0, 2.0], [2.0, 0.5, 1.5])
    streams = Streams(model)
    state = model.initial_state(1)
    rng = np.random.default_rng(10)
    for _ in range(3):
        x = rng.normal(size=(1, F)).astype(np.float32)
        with torch.no_grad():
            want_y, state = model(torch.from_numpy(x)[:, None], state)
        assert np.array_equal(streams.step(["a"], x), want_y[:, 0].numpy())
        y, _ = advance(model, state, torch.from_numpy(x))
        with torch.no_grad():
            assert torch.equal(y, model(torch.from_numpy(x)[:, None], state)[0][:, 0])


@pytest.mark.parametrize(
    ("x", "error", "message"),
    [
        (torch.zeros(2, F, dtype=torch.float64), ValueError, r"\[n, F\]=\[3, 3\]"),
        (torch.zeros(3, F + 1, dtype=torch.float64), ValueError, r"\[n, F\]=\[3, 3\]"),
        (torch.zeros(3 * F, dtype=torch.float64), ValueError, r"\[n, F\]=\[3, 3\]"),
        (torch.zeros(3, F), TypeError, "float32"),
        (torch.full((3, F), float("nan"), dtype=torch.float64), ValueError, "NaN"),
        (
            torch.tensor([[0.0, 0.0, 0.0]] * 2 + [[0.0, -np.inf, 1.0]], dtype=torch.float64),
            ValueError,
            "NaN or inf",
        ),
        (np.zeros((3, F)), TypeError, "torch.Tensor"),
    ],
)
def test_advance_refuses_bad_steps_from_a_state_it_returned(x, error, message):
    """The states advance returns carry their per-layer tensors and take the hot path: bad
    input from one is refused with the messages a plain state gets, nothing changed."""
    model = MODELS["lstm"]
    _, state = advance(model, model.initial_state(3), torch.ones(3, F, dtype=torch.float64))
    assert state._layers() is not None  # (the state a step returned: the hot path's)
    kept = [[t.clone() for t in layer] for layer in state._layers()]
    with pytest.raises(error, match=message):
        advance(model, state, x)
    assert state._layers() is not None
    for layer, kept_layer in zip(state._layers(), kept, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(layer, kept_layer, strict=True))


def test_advance_refuses_a_returned_state_of_another_model():
    """A state a step of one model returned, given to another: refused by the type and
    layout checks, whose messages count its per-layer tensors as layers."""
    one_layer = SequenceModel(input_size=F, output_size=O, hidden_size=H).double().eval()
    x = torch.ones(3, F, dtype=torch.float64)
    _, state = advance(one_layer, one_layer.initial_state(3), x)
    with pytest.raises(ValueError, match=r"\[2, n, 8\] for this model; received \[1, 3, 8\]"):
        advance(MODELS["lstm"], state, x)
    _, gru_state = advance(MODELS["gru"], MODELS["gru"].initial_state(3), x)
    with pytest.raises(TypeError, match="must be a LSTMState for this model; received GRUState"):
        advance(MODELS["lstm"], gru_state, x)
    y, _ = advance(one_layer, state, x)  # and its own model still takes it
    with torch.no_grad():
        assert torch.equal(y, one_layer(x[:, None], state)[0][:, 0])


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_advance_steps_from_its_returned_states_as_forward_does(cell, num_layers):
    """A loop of single steps from the states advance returns, with k-step calls and reads
    of the state in between, equals forward on the same states bit for bit."""
    torch.manual_seed(8)
    model = SequenceModel(
        input_size=F, output_size=O, cell=cell, hidden_size=H, num_layers=num_layers
    )
    model = model.double().eval()
    rng = np.random.default_rng(13)
    state = want = model.initial_state(2)
    for step in range(8):
        k = 3 if step == 4 else 1
        x = torch.from_numpy(rng.normal(size=(2, k, F)))
        with torch.no_grad():
            want_y, want = model(x, want)
        y, state = advance(model, state, x if k > 1 else x[:, 0])
        assert torch.equal(y, want_y if k > 1 else want_y[:, 0])
        if step % 3 == 2:
            assert state.equal(want)  # (reads the 3-D fields between steps)
    assert state.equal(want) and state.select([1, 0]).equal(want.select([1, 0]))


def test_the_direct_step_skips_the_normalisation_exactly_when_forward_does():
    """forward skips an identity normalisation when the input's shift and the output's scale
    are of x's kind, whatever the other two buffers are: replacing those two by float64
    ones leaves forward's answer in float32, and the direct step's with it."""
    torch.manual_seed(7)
    model = SequenceModel(input_size=F, output_size=O, hidden_size=H).eval()
    model.input_scale = torch.ones(F, dtype=torch.float64)
    model.output_shift = torch.zeros(O, dtype=torch.float64)
    x = np.random.default_rng(11).normal(size=(1, F)).astype(np.float32)
    with torch.no_grad():
        want_y, want_state = model(torch.from_numpy(x)[:, None])
    streams = Streams(model)
    streams.step(["a"], np.zeros((1, F), np.float32))
    streams.start("a")  # (the next step takes the hot path from a zero state)
    y = streams.step(["a"], x)
    assert y.dtype == np.float32 and np.array_equal(y, want_y[:, 0].numpy())
    y, state = advance(model, model.initial_state(1), torch.from_numpy(x))
    assert torch.equal(y, want_y[:, 0]) and state.equal(want_state)
