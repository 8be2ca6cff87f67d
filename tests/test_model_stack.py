"""SequenceModel as any recurrent stack: equal to a plain per-row, per-step reference (float64),
chunked == whole, reset == separate, batch-size free, gradients; every driver accepts it; old run
directories still load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqstate.core.layers import GRU, LSTM, RNN
from seqstate.core.model import ModelConfig, RecurrentSpec, SequenceModel
from seqstate.core.saved import load_model, read_model_json, save_model
from seqstate.core.state import State
from seqstate.core.stepwise import StepwiseLayer
from seqstate.inference.prediction import forecast, predict
from seqstate.inference.streams import Streams
from seqstate.lanes.lanes import Lanes
from seqstate.train import fit

pytestmark = pytest.mark.numerics  # run again on another kernel path: scripts/test

FIXTURE = Path(__file__).parent / "fixtures" / "run_v1"
F, O = 3, 2
# float64 up to rounding, relative + absolute: two paths may sum in orders that MKL/oneDNN pick
# by CPU (AVX2, AVX-512, MKL_CBWR)
EXACT = {"rtol": 1e-10, "atol": 1e-10}
CLOSE32 = {"rtol": 1e-6, "atol": 1e-5}  # float32, likewise

STACKS = {
    # every variant, masking, a head with activations; layers 0-1 share one fused call
    "mixed": {
        "layers": [
            {"kind": "lstm", "hidden_size": 4},
            {"kind": "lstm", "hidden_size": 4},
            {
                "kind": "gru",
                "hidden_size": 3,
                "recurrent_activation": "hard_sigmoid",
                "reset_after": False,
            },
            {"kind": "rnn", "hidden_size": 2, "activation": "linear"},
        ],
        "head": [{"units": 4, "activation": "relu"}, {"units": O}],
        "mask_value": 0.0,
    },
    "variants": {
        "layers": [
            {
                "kind": "lstm",
                "hidden_size": 3,
                "activation": "relu",
                "recurrent_activation": "hard_sigmoid_keras2",
            },
            {"kind": "gru", "hidden_size": 4, "activation": "linear"},
            {"kind": "rnn", "hidden_size": 3, "activation": "relu"},
            {"kind": "gru", "hidden_size": 2},
        ],
        "head": [{"units": O, "activation": "tanh"}],
    },
}

# --- an independent per-row, per-step reference ----------------------------------------------

ACT = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "linear": lambda v: v,
    "hard_sigmoid": lambda v: torch.clamp(v / 6 + 0.5, 0, 1),
    "hard_sigmoid_keras2": lambda v: torch.clamp(0.2 * v + 0.5, 0, 1),
}


def _parameters(model: SequenceModel, layer: int) -> list[torch.Tensor]:
    for (first, end), module in zip(model.config.groups(), model.groups, strict=True):
        if first <= layer < end:
            k = layer - first
            return [getattr(module, f"{n}_l{k}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]  # fmt: skip  # noqa: E501
    raise AssertionError(layer)


def _reference_cell(spec: RecurrentSpec, p, x, h, c):
    W, U, b, bh = p
    a, ra = ACT[spec.activation], ACT[spec.recurrent_activation]
    if spec.kind == "rnn":
        return a(W @ x + b + U @ h + bh), c
    if spec.kind == "lstm":
        i, f, g, o = (W @ x + b + U @ h + bh).chunk(4)
        c = ra(f) * c + ra(i) * a(g)
        return ra(o) * a(c), c
    xr, xz, xn = (W @ x + b).chunk(3)
    if spec.reset_after:
        hr, hz, hn = (U @ h + bh).chunk(3)
        r, z = ra(xr + hr), ra(xz + hz)
        n = a(xn + r * hn)
    else:
        (Ur, Uz, Un), (br, bz, bn) = U.chunk(3), bh.chunk(3)
        r, z = ra(xr + Ur @ h + br), ra(xz + Uz @ h + bz)
        n = a(xn + Un @ (r * h) + bn)
    return (1 - z) * n + z * h, c


def reference(model: SequenceModel, x, reset=None, mask=None):
    """Outputs [B, T, O] and per-layer final (h, c) lists, one row and one step at a time."""
    config = model.config
    B, T, _ = x.shape
    reset = torch.zeros(B, T, dtype=torch.bool) if reset is None else reset
    mask = torch.ones(B, T, dtype=torch.bool) if mask is None else mask
    if config.mask_value is not None:
        mask = mask & (x != config.mask_value).any(-1)
    params = [_parameters(model, i) for i in range(len(config.layers))]
    ys, finals = torch.zeros(B, T, O, dtype=x.dtype), []
    for b in range(B):
        hs = [x.new_zeros(s.hidden_size) for s in config.layers]
        cs = [x.new_zeros(s.hidden_size) for s in config.layers]
        for t in range(T):
            if reset[b, t]:
                hs, cs = [h * 0 for h in hs], [c * 0 for c in cs]
            if not mask[b, t]:
                continue
            v = (x[b, t] - model.input_shift) / model.input_scale
            for i, spec in enumerate(config.layers):
                hs[i], cs[i] = _reference_cell(spec, params[i], v, hs[i], cs[i])
                v = hs[i]
            for linear, dense in zip(model.dense_layers, config.head, strict=True):
                v = ACT.get(dense.activation, torch.tanh)(linear.weight @ v + linear.bias)
            ys[b, t] = v * model.output_scale + model.output_shift
        finals.append((hs, cs))
    return ys, finals


def _final_per_layer(model: SequenceModel, state: State, row: int) -> list[torch.Tensor]:
    return [
        t[layer, row]
        for group_state in model.group_states(state)
        for layer in range(group_state.num_layers)
        for t in group_state.tensors()[:1]
    ]


@pytest.fixture(scope="module")
def models() -> dict[str, SequenceModel]:
    built = {}
    for index, (name, fields) in enumerate(STACKS.items()):
        torch.manual_seed(index)
        model = SequenceModel(input_size=F, output_size=O, **fields).double()
        model.set_normalization([0.5, -1.0, 0.0], [2.0, 1.0, 0.5], [1.0, -2.0], [3.0, 0.5])
        built[name] = model.eval()
    return built


@st.composite
def windows(draw):
    B, T = draw(st.integers(1, 3)), draw(st.integers(1, 7))
    seed = draw(st.integers(0, 10_000))
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, F, generator=generator, dtype=torch.float64)
    holes = torch.rand(B, T, generator=generator) < 0.25
    x[holes] = 0.0  # padding for a masking model, real zeros for the others
    reset = torch.rand(B, T, generator=generator) < 0.2
    mask = torch.rand(B, T, generator=generator) < 0.8
    cut = draw(st.integers(0, T))
    return x, reset, mask, cut


@pytest.mark.parametrize("name", list(STACKS))
@settings(max_examples=12, deadline=None)
@given(window=windows())
def test_stack_equals_per_step_reference(models, name, window) -> None:
    model = models[name]
    x, reset, mask, cut = window
    with torch.no_grad():
        y, state = model(x, reset=reset, mask=mask)
        expected, finals = reference(model, x, reset, mask)
        torch.testing.assert_close(y, expected, **EXACT)
        for row, (hs, _) in enumerate(finals):
            for ours, theirs in zip(_final_per_layer(model, state, row), hs, strict=True):
                torch.testing.assert_close(ours, theirs, **EXACT)
        # chunked == whole: the same window in two calls, state carried
        first, state1 = model(x[:, :cut], reset=reset[:, :cut], mask=mask[:, :cut])
        second, state2 = model(x[:, cut:], state1, reset=reset[:, cut:], mask=mask[:, cut:])
    torch.testing.assert_close(torch.cat([first, second], 1), y, **EXACT)
    for a, b in zip(state2.tensors(), state.tensors(), strict=True):
        torch.testing.assert_close(a, b, **EXACT)


@pytest.mark.parametrize("name", list(STACKS))
def test_reset_equals_separate_and_batch_size_free(models, name) -> None:
    model = models[name]
    a, b = torch.randn(1, 4, F, dtype=torch.float64), torch.randn(1, 3, F, dtype=torch.float64)
    reset = torch.zeros(1, 7, dtype=torch.bool)
    reset[0, 4] = True
    other = torch.randn(4, 7, F, dtype=torch.float64)
    with torch.no_grad():
        packed, _ = model(torch.cat([a, b], 1), reset=reset)
        alone, _ = model(b)
        crowd, _ = model(torch.cat([other[:2], torch.cat([a, b], 1), other[2:]]),
                         reset=torch.cat([torch.zeros(2, 7, dtype=torch.bool), reset,
                                          torch.zeros(2, 7, dtype=torch.bool)]))  # fmt: skip
    torch.testing.assert_close(packed[:, 4:], alone, **EXACT)
    torch.testing.assert_close(crowd[2:3], packed, **EXACT)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_stepwise_path_equals_fused_kernel_outputs_and_gradients(kind) -> None:
    # With default activations the step-by-step layer computes what torch's kernel computes.
    torch.manual_seed(0)
    fused = {"lstm": LSTM, "gru": GRU, "rnn": RNN}[kind](F, 4).double()
    stepwise = StepwiseLayer(kind, F, 4).double()
    stepwise.load_state_dict(fused.state_dict())
    x = torch.randn(3, 6, F, dtype=torch.float64, requires_grad=True)
    reset = torch.zeros(3, 6, dtype=torch.bool)
    reset[1, 3] = True
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[2, 2:4] = False
    results = []
    for layer in (fused, stepwise):
        y, state = layer(x, reset=reset, mask=mask)
        loss = (y**2).sum() + sum((t**2).sum() for t in state.tensors())
        grads = torch.autograd.grad(loss, [x, *layer.parameters()])
        results.append((y, state, grads))
    (y1, s1, g1), (y2, s2, g2) = results
    torch.testing.assert_close(y2, y1, **EXACT)
    assert s1.equal(s2) or all(torch.allclose(a, b, **EXACT) for a, b in zip(s1, s2, strict=True))
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(b, a, **EXACT)


def test_describe_names_the_path_of_every_layer(models) -> None:
    text = models["mixed"].describe()
    assert "layer 0: lstm(4): fused kernel (torch.nn.LSTM, one call with layers 0-1)" in text
    assert (
        "layer 2: gru(3, recurrent_activation=hard_sigmoid, reset_after=False): step-by-step"
        in text
    )
    assert "masking: a step whose features all equal 0.0 is padding" in text
    assert "head: Dense(4, relu) -> Dense(2, linear)" in text


def test_stack_state_round_trips_and_refuses_other_states(models) -> None:
    model = models["mixed"]
    with torch.no_grad():
        _, state = model(torch.randn(3, 4, F, dtype=torch.float64))
    assert type(state).__name__ == (
        "StackState[l0_hidden:4,l0_cell:4,l1_hidden:4,l1_cell:4,l2_hidden:3,l3_hidden:2]"
    )
    restored = State.from_bytes(state.to_bytes())
    assert restored.equal(state)
    assert state.reset_rows([1]).select([1]).equal(model.initial_state(1, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"state must be a StackState\[l0_hidden:4"):
        model(torch.zeros(2, 5, F, dtype=torch.float64), models["variants"].initial_state(2))
    with pytest.raises(ValueError, match=r"mask must have shape \[B, T\]=\[2, 5\]"):
        model(torch.zeros(2, 5, F, dtype=torch.float64), mask=torch.ones(2, 4, dtype=torch.bool))


# --- config, run directories -----------------------------------------------------------------


def test_config_json_versions(tmp_path: Path, models) -> None:
    classic = ModelConfig(input_size=3, output_size=1, cell="gru", hidden_size=8, num_layers=2)
    assert "version" not in classic.to_dict() and classic.to_dict()["cell"] == "gru"
    assert (classic.cell, classic.hidden_size, classic.num_layers) == ("gru", 8, 2)
    mixed = models["mixed"].config
    assert mixed.to_dict()["version"] == 2 and mixed.cell is None and mixed.hidden_size is None
    assert ModelConfig.from_json(mixed.to_json()) == mixed
    run = save_model(models["mixed"], tmp_path / "run")
    loaded = load_model(run).double()
    x = torch.randn(2, 5, F, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], models["mixed"](x)[0], **EXACT)


def test_run_directory_written_before_stacks_still_loads() -> None:
    # tests/fixtures/run_v1 was written by the code before stacks (format 1, old key names).
    assert "version" not in read_model_json(FIXTURE)["model"]
    model = load_model(FIXTURE)
    expected = json.loads((FIXTURE / "expected.json").read_text())
    with torch.no_grad():
        y, state = model(torch.tensor(expected["x"]))
    # (recorded on another CPU: its kernels may have summed in another order)
    torch.testing.assert_close(y, torch.tensor(expected["y"]), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(state.cell, torch.tensor(expected["cell"]), rtol=1e-6, atol=1e-6)
    assert model.config.num_layers == 2 and type(state).__name__ == "LSTMState"


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        ({"cell": "gru", "layers": [{"kind": "gru"}]}, ValueError, r"either as layers= or with \['cell'\]"),  # noqa: E501
        ({"layers": [{"kind": "lstm", "activation": "swirl"}]}, ValueError, r"RecurrentSpec\.activation='swirl' is not a known"),  # noqa: E501
        ({"layers": [{"kind": "tree"}]}, ValueError, r"RecurrentSpec\.kind must be one of"),
        ({"layers": []}, ValueError, r"at least one recurrent layer"),
        ({"layers": [{"kind": "gru", "size": 3}]}, ValueError, r"unknown keys \['size'\]"),
        ({"head": [{"units": 3}]}, ValueError, r"end with a layer of output_size=2 units; received 3"),  # noqa: E501
        ({"head": [{"units": 2, "activation": "softmax"}], "task": "classification"}, ValueError, r"must be linear"),  # noqa: E501
        ({"mask_value": float("nan")}, ValueError, r"mask_value must be a finite number"),
        ({"mask_value": "0"}, TypeError, r"mask_value must be a number; received str"),
        ({"hidden_size": 0}, ValueError, r"hidden_size must be an int >= 1; received 0"),
        ({"num_layers": 2.0}, TypeError, r"num_layers must be an int >= 1; received float"),
        ({"dropout": 1.0}, ValueError, r"dropout must be in \[0, 1\); received 1.0"),
        ({"layers": "lstm"}, TypeError, r"layers must be a list of RecurrentSpec"),
    ],
)  # fmt: skip
def test_config_rejects_bad_input(fields, error, message) -> None:
    with pytest.raises(error, match=message):
        ModelConfig(input_size=F, output_size=O, **fields)


def test_config_refuses_an_unknown_version() -> None:
    with pytest.raises(ValueError, match=r"version 9 is not readable .* upgrade seqstate"):
        ModelConfig.from_dict({"version": 9, "input_size": 1})


# --- every driver accepts any stack ------------------------------------------------------------


def test_fit_predict_forecast_streams_accept_a_mixed_stack(tmp_path: Path) -> None:
    torch.manual_seed(0)
    fields = {**STACKS["variants"], "head": [{"units": 4, "activation": "relu"}, {"units": F}]}
    model = SequenceModel(input_size=F, output_size=F, **fields)
    rng = np.random.default_rng(0)
    series = [rng.standard_normal((int(n), F)).astype(np.float32) for n in (9, 6, 11, 7)]
    lanes = Lanes.from_sequences(series, lanes=2, window=4, shuffle=True, seed=1)
    history = fit(model, lanes, epochs=1, progress=False, run_dir=tmp_path / "run", seed=0)
    assert np.isfinite(history["loss"][-1])
    model = load_model(tmp_path / "run")  # fit wrote the stack as a run directory
    whole = predict(model, series)
    chunked = predict(model, series, chunk=3, batch_size=3)
    for a, b in zip(whole, chunked, strict=True):
        np.testing.assert_allclose(b, a, **CLOSE32)
    streams = Streams(model)
    steps = [streams.step(["a"], series[0][t : t + 1])[0] for t in range(len(series[0]))]
    np.testing.assert_allclose(np.stack(steps), whole[0], **CLOSE32)
    ahead = forecast(model, series[:2], horizon=3)
    assert ahead.shape == (2, 3, F) and np.isfinite(ahead).all()


def test_interrupted_fit_of_a_mixed_stack_resumes_bitwise(tmp_path: Path) -> None:
    from seqstate.train import FitConfig, WindowEnd

    rng = np.random.default_rng(1)
    series = [rng.standard_normal((int(n), F)).astype(np.float32) for n in (9, 6, 11, 7, 8)]

    def lanes() -> Lanes:
        return Lanes.from_sequences(series, lanes=2, window=4, shuffle=True, seed=1)

    def model() -> SequenceModel:
        torch.manual_seed(0)
        fields = {**STACKS["variants"], "head": [{"units": F}]}
        return SequenceModel(input_size=F, output_size=F, dropout=0.2, **fields)

    config = FitConfig(epochs=2, checkpoint_every=3, progress=False, seed=3)
    reference = model()
    fit(reference, lanes(), config=config)

    class Interrupted(Exception):
        pass

    def stop(end: WindowEnd) -> None:
        if end.window == 4:
            raise Interrupted

    with pytest.raises(Interrupted):
        fit(model(), lanes(), config=config, run_dir=tmp_path, on_window=stop)
    resumed = model()
    fit(resumed, lanes(), run_dir=tmp_path, resume=True)
    for (key, a), (_, b) in zip(
        reference.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        # bitwise on every CPU: both runs make the same kernel calls on the same shapes in one
        # process (one thread), and the checkpoint restores every value exactly
        assert torch.equal(a, b), key


def test_config_replace_keeps_what_is_not_changed(models) -> None:
    gru = ModelConfig(input_size=3, output_size=1, cell="gru", hidden_size=8, num_layers=2)
    wider = SequenceModel(gru, hidden_size=16, output_size=4).config
    assert (wider.cell, wider.hidden_size, wider.num_layers, wider.output_size) == ("gru", 16, 2, 4)
    assert gru.replace(dropout=0.5).layers == gru.layers
    mixed = models["mixed"].config
    assert mixed.replace(output_size=2).head == mixed.head
    with pytest.raises(ValueError, match=r"\['hidden_size'\] describe a stack of equal layers"):
        mixed.replace(hidden_size=8)


def test_a_stack_pickles(models, tmp_path: Path) -> None:
    # torch.save(model) and copy.deepcopy need picklable activations (no lambdas).
    model = SequenceModel(
        input_size=F,
        output_size=O,
        layers=[{"kind": "gru", "hidden_size": 3, "activation": "leaky_relu"}],
        head=[{"units": 4, "activation": "softmax"}, {"units": O, "activation": "log_softmax"}],
    )
    torch.save(model, tmp_path / "model.pt")
    again = torch.load(tmp_path / "model.pt", weights_only=False)
    x = torch.randn(2, 3, F)
    with torch.no_grad():
        # bitwise: the same weights through the same kernels
        torch.testing.assert_close(again(x)[0], model(x)[0], rtol=0, atol=0)


def test_layers_and_models_follow_the_sequence_core_protocol(models) -> None:
    from seqstate.core.protocol import SequenceCore

    assert isinstance(models["mixed"], SequenceCore)
    assert isinstance(StepwiseLayer("gru", F, 4), SequenceCore)
    assert StepwiseLayer("gru", F, 4).output_size == 4


# --- identity normalisation: skipped exactly, any change seen ---------------------------------


def _normalised_by_formula(model: SequenceModel, x: torch.Tensor, state: State) -> torch.Tensor:
    """The forward pass computing every normalisation op, skipped or not."""
    hidden, _ = model.recurrent((x - model.input_shift) / model.input_scale, state)
    return model.head(hidden) * model.output_scale + model.output_shift


def test_identity_normalisation_is_skipped_exactly_and_every_change_is_seen() -> None:
    torch.manual_seed(5)
    model = SequenceModel(input_size=F, output_size=O, cell="lstm", hidden_size=4).eval()
    keys = sorted(model.state_dict())
    x = torch.randn(2, 3, F)
    state = model.initial_state(2)

    def check(expected: tuple[bool, bool]) -> None:
        # bitwise on every CPU: the same kernel calls on the same shapes, and a skipped
        # normalisation is an exact identity (x - 0, x / 1, y * 1 + 0)
        with torch.no_grad():
            y, _ = model(x, state)
            assert torch.equal(y, _normalised_by_formula(model, x, state))
            for T in (1, 2):  # one step (the streaming path) as well
                step, _ = model(x[:, :T], state)
                assert torch.equal(step, _normalised_by_formula(model, x[:, :T], state))
        assert model._identity_normalisation() == expected

    check((True, True))
    model.set_normalization([0.5, -1.0, 0.0], [2.0, 1.0, 0.5])
    check((False, True))
    model.set_normalization([0.0] * F, [1.0] * F, [1.0, -2.0], [3.0, 0.5])
    check((True, False))
    model.set_normalization([0.0] * F, [1.0] * F, [0.0] * O, [1.0] * O)
    check((True, True))
    with torch.no_grad():
        model.input_scale.fill_(4.0)  # an in-place write to a buffer, no method involved
    check((False, True))
    other = SequenceModel(input_size=F, output_size=O, cell="lstm", hidden_size=4)
    model.load_state_dict(other.state_dict())  # identity again, through load_state_dict
    check((True, True))
    other.set_normalization([1.0] * F, [2.0] * F, [3.0] * O, [4.0] * O)
    model.load_state_dict(other.state_dict())
    check((False, False))
    model.double()  # new buffer tensors
    x, state = x.double(), model.initial_state(2)
    check((False, False))
    assert sorted(model.state_dict()) == keys  # nothing added to what is saved


def test_skipping_identity_normalisation_keeps_type_promotion() -> None:
    torch.manual_seed(6)
    model = SequenceModel(input_size=F, output_size=O, cell="gru", hidden_size=4).eval()
    integers = torch.randint(-3, 4, (2, 2, F))
    with torch.no_grad():
        # integer inputs became floats through the (identity) normalisation, and still do
        assert torch.equal(model(integers)[0], model(integers.float())[0])


def test_a_model_made_in_inference_mode_runs_and_copies() -> None:
    import copy
    import pickle

    with torch.inference_mode():  # inference tensors have no version counter
        model = SequenceModel(input_size=F, output_size=O, cell="lstm", hidden_size=4).eval()
        x = torch.randn(1, 2, F)
        plain, _ = model(x)
        model.set_normalization([1.0] * F, [2.0] * F)
        assert torch.equal(model(x)[0], _normalised_by_formula(model, x, model.initial_state(1)))
        assert not torch.equal(model(x)[0], plain)
    trained = SequenceModel(input_size=F, output_size=O, cell="lstm", hidden_size=4).eval()
    trained(torch.randn(1, 1, F))  # the identity check cached
    twin = copy.deepcopy(trained)
    twin.set_normalization([1.0] * F, [2.0] * F)
    assert trained._identity_normalisation() == (True, True)
    assert twin._identity_normalisation() == (False, True)
    assert pickle.loads(pickle.dumps(trained))._identity_normalisation() == (True, True)


def test_group_states_refuses_another_state_type(models) -> None:
    with pytest.raises(TypeError, match="group_states: state must be a StackState"):
        models["mixed"].group_states(models["variants"].initial_state(1))


class _Exported(torch.nn.Module):
    """A SequenceModel with its state as a plain tensor (what torch.export takes)."""

    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        y, _ = self.model(x, self.model.state_type(hidden))
        return y


# torch's RNN modules refresh their _flat_weights list when export swaps in its parameters
@pytest.mark.filterwarnings("ignore:The tensor attributes .*_flat_weights:UserWarning")
@pytest.mark.parametrize("normalised", [False, True])
def test_torch_export_traces_the_model_with_either_normalisation(normalised: bool) -> None:
    # regression: the cached identity check (data-dependent) broke torch.export's tracing
    torch.manual_seed(7)
    model = SequenceModel(input_size=F, output_size=O, cell="gru", hidden_size=4).eval()
    if normalised:
        model.set_normalization([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [0.5, 1.0], [2.0, 3.0])
    x, hidden = torch.randn(2, 5, F), torch.randn(1, 2, 4)
    exported = torch.export.export(_Exported(model), (x, hidden), strict=False)
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x, hidden), _Exported(model)(x, hidden))


def _step_models() -> list[tuple[str, dict[str, Any]]]:
    plain = [
        (
            f"{cell}{'-relu' if relu else ''}-x{layers}",
            {
                "cell": cell,
                "hidden_size": 5,
                "num_layers": layers,
                **({"nonlinearity": "relu"} if relu else {}),
            },
        )
        for cell in ("lstm", "gru", "rnn")
        for relu in ((False, True) if cell == "rnn" else (False,))
        for layers in (1, 2)
    ]
    stacks = [(name, fields) for name, fields in STACKS.items() if "mask_value" not in fields]
    return plain + stacks


@pytest.mark.parametrize(("name", "fields"), _step_models())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("normalised", [False, True])
def test_trusted_step_equals_forward_bitwise(name, fields, dtype, normalised) -> None:
    """The streaming hot path (advance, Streams.step) runs ``_trusted_step``: it must give
    forward's one-step outputs and state bit for bit, whatever the cells, stack, head,
    normalisation and dtype (on every CPU: both make the same cell and Linear kernel calls on
    the same rows)."""
    torch.manual_seed(len(name))
    model = SequenceModel(input_size=F, output_size=O, **fields).to(dtype).eval()
    if normalised:
        model.set_normalization([0.5, -1.0, 0.0], [2.0, 1.0, 0.5], [1.0, -2.0], [3.0, 0.5])
    assert model._steps_directly()
    x = torch.randn(4, F, dtype=dtype)
    state = model.initial_state(4).map(lambda t: torch.randn_like(t) * 0.5)
    with torch.no_grad():
        for _ in range(3):  # a few steps, each from the state the last one returned
            want_y, want_state = model(x[:, None], state)
            y, new_state = model._trusted_step(x, state)
            assert y.shape == (4, O) and y.dtype == dtype
            assert torch.equal(y, want_y[:, 0]), name
            assert type(new_state) is type(want_state) and new_state.equal(want_state), name
            state, x = new_state, torch.randn(4, F, dtype=dtype)


def test_trusted_step_is_refused_where_forward_must_run(models) -> None:
    """Masking from the input, an overridden forward and forward hooks (on the model, a layer,
    the head, or global) all send steps through forward."""
    assert not models["mixed"]._steps_directly()  # mask_value

    class Overridden(SequenceModel):
        def forward(self, x, state=None, reset=None, mask=None):
            return super().forward(x, state, reset, mask)

    assert not Overridden(input_size=F, output_size=O, hidden_size=4)._steps_directly()
    model = SequenceModel(input_size=F, output_size=O, hidden_size=4, num_layers=2)
    assert model._steps_directly()
    for module in (model, model.recurrent, model.head):
        for register in (module.register_forward_hook, module.register_forward_pre_hook):
            handle = register(lambda *args: None)
            assert not model._steps_directly()
            handle.remove()
            assert model._steps_directly()
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *args: None)
    try:
        assert not model._steps_directly()
    finally:
        handle.remove()
    model.recurrent.forward = model.recurrent.forward  # an instance attribute: a patch
    assert not model._steps_directly()


@pytest.mark.parametrize("where", ["model", "recurrent", "head", "global"])
@pytest.mark.parametrize("kind", ["hook", "pre-hook", "instance forward", "class forward"])
def test_what_sends_steps_through_forward_is_seen_after_the_answer_was_kept(
    where, kind, monkeypatch
) -> None:
    """_steps_directly keeps its answer between calls: a hook registered, an instance or class
    forward patched after it answered yes (on the model, its layer, its head, or globally)
    still turns the answer to no, and its removal back to yes."""
    model = SequenceModel(input_size=F, output_size=O, hidden_size=4, num_layers=2)
    for _ in range(2):  # (the second answer is the kept one)
        assert model._steps_directly()
    module = {"model": model, "recurrent": model.recurrent, "head": model.head}.get(where)
    undo: Any
    if kind in ("hook", "pre-hook"):
        if module is None:
            register = (
                torch.nn.modules.module.register_module_forward_hook
                if kind == "hook"
                else torch.nn.modules.module.register_module_forward_pre_hook
            )
        else:
            register = (
                module.register_forward_hook if kind == "hook" else module.register_forward_pre_hook
            )
        undo = register(lambda *args: None).remove
    elif module is None:
        return  # (no global forward to patch)
    elif kind == "instance forward":
        monkeypatch.setattr(module, "forward", module.forward)
        undo = monkeypatch.undo
    else:
        original = type(module).forward
        monkeypatch.setattr(type(module), "forward", lambda self, *a, **k: original(self, *a, **k))
        undo = monkeypatch.undo
    try:
        for _ in range(2):
            assert not model._steps_directly()
    finally:
        undo()
    assert model._steps_directly()


def test_every_module_of_a_stack_is_watched_after_the_answer_was_kept() -> None:
    """In a stack of several groups and head layers, a hook or an instance forward added to
    any group or head layer after the kept answer turns it to no (every module the trusted
    step runs is looked at, not only the first)."""
    fields = {key: value for key, value in STACKS["mixed"].items() if key != "mask_value"}
    model = SequenceModel(input_size=F, output_size=O, **fields).eval()
    modules = [*model.groups, *model.head]
    assert len(modules) == 5
    for module in modules:
        assert model._steps_directly() and model._steps_directly()
        handle = module.register_forward_pre_hook(lambda *args: None)
        assert not model._steps_directly()
        handle.remove()
        assert model._steps_directly()
        module.forward = module.forward  # an instance attribute: a patch
        assert not model._steps_directly()
        del module.forward
    assert model._steps_directly()


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copy_asks_again_whether_it_steps_directly(how) -> None:
    """What _steps_directly keeps (the hook counter, the attribute dicts) is the original's: a
    copied or unpickled model starts afresh, so an override of the copy is seen."""
    import copy
    import pickle

    model = SequenceModel(input_size=F, output_size=O, hidden_size=4)
    assert model._steps_directly()
    twin = copy.deepcopy(model) if how == "deepcopy" else pickle.loads(pickle.dumps(model))
    assert twin._steps_directly()
    twin.head.forward = twin.head.forward  # an instance attribute of the copy: a patch
    assert not twin._steps_directly()
    assert model._steps_directly()
    twin.recurrent = LSTM(F, 4)  # another layer: forward runs the new one
    del twin.head.forward
    assert not twin._steps_directly()


def test_the_step_plan_adds_no_parameters_or_state_dict_keys(models) -> None:
    """The trusted step's references to the layers are plain attributes: the parameters and
    state_dict keys are those of the modules alone (a second registration broke saving)."""
    for model in [*models.values(), SequenceModel(input_size=F, output_size=O, hidden_size=4)]:
        keys = list(model.state_dict())
        assert all(key.startswith(("recurrent.", "head.", "input_", "output_")) for key in keys)
        assert len(list(model.parameters())) == len(
            [k for k in keys if not k.startswith(("input_", "output_"))]
        )


def test_normalize_targets_skips_only_an_identity_of_the_same_dtype():
    """normalize_targets returns y itself while the output normalisation is the identity
    (the same values (y - 0) / 1 gives), and maps y as soon as the buffers change, also by
    an in-place write; a y of another dtype is promoted as the arithmetic would."""
    model = SequenceModel(input_size=F, output_size=O, hidden_size=4)
    y = torch.randn(2, 3, O)
    assert model.normalize_targets(y) is y
    assert model.normalize_targets(y.double()).dtype == torch.float64  # (buffers are float32)
    model.set_normalization([0.0] * F, [1.0] * F, [1.0, -2.0], [2.0, 4.0])
    expected = (y - torch.tensor([1.0, -2.0])) / torch.tensor([2.0, 4.0])
    torch.testing.assert_close(model.normalize_targets(y), expected, rtol=0, atol=0)
    model.set_normalization([0.0] * F, [1.0] * F, [0.0, 0.0], [1.0, 1.0])
    assert model.normalize_targets(y) is y
    with torch.no_grad():
        model.output_scale.mul_(3.0)  # an in-place write is seen
    torch.testing.assert_close(model.normalize_targets(y), y / 3.0, rtol=0, atol=0)
