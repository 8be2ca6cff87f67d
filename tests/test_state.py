"""Tests of the State containers: row operations, immutability, gradients, serialisation."""

from __future__ import annotations

import copy as copy_module
import dataclasses
import json
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save as safetensors_save

from seqstate.core.state import GRUState, LSTMState, RNNState, State

pytestmark = pytest.mark.numerics  # run again on another kernel path: scripts/test

STATE_TYPES = (LSTMState, GRUState, RNNState)
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def numbered(cls: type[State], layers: int = 2, batch: int = 4, hidden: int = 3) -> State:
    """A state whose entries are all distinct, so a misplaced row cannot go unnoticed."""
    size = layers * batch * hidden
    return cls(
        *(
            torch.arange(size, dtype=torch.float64).view(layers, batch, hidden) + 1000 * i
            for i, _ in enumerate(cls.field_names())
        )
    )


def copy(state: State) -> State:
    return state.map(torch.clone)


# --- construction and structure --------------------------------------------------------------


@pytest.mark.parametrize("cls", STATE_TYPES)
def test_zeros_shape_dtype_and_properties(cls: type[State]) -> None:
    state = cls.zeros(2, 5, 3, dtype=torch.float64)
    assert (state.num_layers, state.batch_size, state.hidden_size) == (2, 5, 3)
    assert state.dtype == torch.float64 and state.device == torch.device("cpu")
    assert all(t.shape == (2, 5, 3) and bool((t == 0).all()) for t in state.tensors())
    assert len(list(state)) == len(cls.field_names())


def test_lstm_state_unpacks_like_a_torch_tuple() -> None:
    state = numbered(LSTMState)
    hidden, cell = state
    assert hidden is state.hidden and cell is state.cell


@pytest.mark.parametrize("cls", STATE_TYPES)
def test_zeros_like_keeps_everything_but_batch(cls: type[State]) -> None:
    state = numbered(cls).to(dtype=torch.float32)
    zeros = state.zeros_like(7)
    assert type(zeros) is cls and zeros.dtype == torch.float32
    assert (zeros.num_layers, zeros.batch_size, zeros.hidden_size) == (2, 7, 3)
    assert all(bool((t == 0).all()) for t in zeros.tensors())
    assert state.zeros_like().batch_size == 4


def test_constructor_rejects_non_tensors_and_mismatched_shapes() -> None:
    with pytest.raises(TypeError, match=r"LSTMState.cell must be a torch.Tensor"):
        LSTMState(torch.zeros(1, 2, 3), [[0.0]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"LSTMState.cell must have shape.*received \(1, 3, 3\)"):
        LSTMState(torch.zeros(1, 2, 3), torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match=r"GRUState.hidden must have shape.*received \(2, 3\)"):
        GRUState(torch.zeros(2, 3))


def test_fields_may_differ_in_hidden_size() -> None:
    state = LSTMState(torch.zeros(1, 2, 3), torch.zeros(1, 2, 5))
    assert state.select([1]).cell.shape == (1, 1, 5)


def test_states_are_frozen() -> None:
    state = numbered(GRUState)
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.hidden = torch.zeros(2, 4, 3)  # type: ignore[misc]


# --- cat --------------------------------------------------------------------------------------


def test_cat_concatenates_rows_in_order() -> None:
    a, b = numbered(LSTMState, batch=2), numbered(LSTMState, batch=3).map(lambda t: -t)
    both = LSTMState.cat([a, b])
    assert both.batch_size == 5
    assert both.select([0, 1]).equal(a) and both.select([2, 3, 4]).equal(b)


def test_cat_rejects_empty_and_mixed_types() -> None:
    with pytest.raises(ValueError, match=r"at least one state"):
        State.cat([])
    with pytest.raises(TypeError, match=r"one type.*GRUState.*RNNState"):
        State.cat([GRUState.zeros(1, 1, 2), RNNState.zeros(1, 1, 2)])


# --- row operations ---------------------------------------------------------------------------

# The same rows {1, 3} of a batch of 4, in every form ``Rows`` accepts.
ROWS_1_3 = [
    pytest.param([1, 3], id="list"),
    pytest.param((3, 1), id="tuple-unordered"),
    pytest.param([-3, -1], id="negative"),
    pytest.param(torch.tensor([1, 3]), id="int-tensor"),
    pytest.param(torch.tensor([1, 3], dtype=torch.int32), id="int32-tensor"),
    pytest.param(torch.tensor([False, True, False, True]), id="bool-tensor"),
    pytest.param([False, True, False, True], id="bool-list"),
    pytest.param(slice(1, None, 2), id="slice"),
]


@pytest.mark.parametrize("rows", ROWS_1_3)
@pytest.mark.parametrize("cls", STATE_TYPES)
def test_reset_rows_zeroes_exactly_the_given_rows(cls: type[State], rows: object) -> None:
    state = numbered(cls)
    before = copy(state)
    reset = state.reset_rows(rows)
    for t_new, t_old in zip(reset.tensors(), state.tensors(), strict=True):
        assert bool((t_new[:, [1, 3]] == 0).all())
        assert torch.equal(t_new[:, [0, 2]], t_old[:, [0, 2]])
    assert reset is not state and state.equal(before)


@pytest.mark.parametrize("rows", ROWS_1_3)
def test_select_takes_rows_in_index_order(rows: object) -> None:
    state = numbered(LSTMState)
    selected = state.select(rows)
    order = [3, 1] if isinstance(rows, tuple) else [1, 3]
    for t_sel, t in zip(selected.tensors(), state.tensors(), strict=True):
        assert torch.equal(t_sel, t[:, order])


def test_select_single_int_keeps_the_batch_dimension() -> None:
    state = numbered(GRUState)
    assert state.select(2).hidden.shape == (2, 1, 3)
    assert torch.equal(state.select(-1).hidden, state.hidden[:, 3:4])


@pytest.mark.parametrize("rows", ROWS_1_3)
def test_scatter_writes_rows_and_keeps_the_rest(rows: object) -> None:
    state = numbered(LSTMState)
    before = copy(state)
    other = LSTMState.zeros(2, 2, 3, dtype=torch.float64).map(lambda t: t - 1)
    other_before = copy(other)
    result = state.scatter(rows, other)
    for t_new, t_old in zip(result.tensors(), state.tensors(), strict=True):
        assert bool((t_new[:, [1, 3]] == -1).all())
        assert torch.equal(t_new[:, [0, 2]], t_old[:, [0, 2]])
    assert state.equal(before) and other.equal(other_before)


def test_scatter_of_select_is_identity() -> None:
    state = numbered(LSTMState)
    assert state.scatter([3, 0], state.select([3, 0])).equal(state)


def test_scatter_casts_other_to_this_dtype() -> None:
    state = numbered(GRUState)
    result = state.scatter([0], GRUState(torch.ones(2, 1, 3, dtype=torch.float32)))
    assert result.dtype == torch.float64
    assert bool((result.hidden[:, 0] == 1).all())


def test_empty_rows_are_allowed() -> None:
    """Regression: ``[]`` became a float32 tensor and was rejected as "not an integer index"."""
    state = numbered(RNNState)
    assert state.reset_rows([]).equal(state)
    assert state.select([]).batch_size == 0
    assert state.scatter([], state.select([])).equal(state)
    assert state.select(torch.tensor([], dtype=torch.long)).batch_size == 0


@given(
    batch=st.integers(1, 6),
    data=st.data(),
)
@settings(max_examples=40, deadline=None)
def test_select_scatter_reset_agree_with_plain_indexing(batch: int, data: st.DataObject) -> None:
    state = numbered(LSTMState, batch=batch)
    rows = data.draw(st.lists(st.integers(-batch, batch - 1), unique_by=lambda r: r % batch))
    positive = [r % batch for r in rows]
    selected = state.select(rows)
    assert torch.equal(selected.hidden, state.hidden[:, positive])
    reset = state.reset_rows(rows)
    expected = state.hidden.clone()
    expected[:, positive] = 0
    assert torch.equal(reset.hidden, expected)
    assert state.scatter(rows, selected.map(lambda t: t * 0)).equal(reset)


# --- row operation errors ---------------------------------------------------------------------


@pytest.mark.parametrize("op", ["reset_rows", "select"])
@pytest.mark.parametrize(
    ("rows", "error", "message"),
    [
        pytest.param([4], IndexError, r"rows index out of range for batch size 4", id="too-big"),
        pytest.param([-5], IndexError, r"out of range.*\[-5, -5\]", id="too-negative"),
        pytest.param(
            torch.tensor([True, False]), ValueError, r"shape \(batch,\)=\(4,\)", id="mask-short"
        ),
        pytest.param(
            [True] * 5, ValueError, r"shape \(batch,\)=\(4,\).*\(5,\)", id="bool-list-long"
        ),
        pytest.param([0.5], TypeError, r"rows must be a bool mask.*float", id="float-list"),
        pytest.param(torch.tensor([[0, 1]]), TypeError, r"1-D integer index.*\(1, 2\)", id="2-d"),
        pytest.param(torch.tensor([1.0]), TypeError, r"rows must be.*float32", id="float-tensor"),
    ],
)
def test_bad_rows_are_rejected(op: str, rows: object, error: type, message: str) -> None:
    state = numbered(LSTMState)
    before = copy(state)
    with pytest.raises(error, match=message):
        getattr(state, op)(rows)
    assert state.equal(before)


def test_scatter_rejects_other_type_and_mismatched_rows() -> None:
    state = numbered(LSTMState)
    before = copy(state)
    with pytest.raises(TypeError, match=r"other must be a LSTMState; received GRUState"):
        state.scatter([0], GRUState.zeros(2, 1, 3))
    with pytest.raises(ValueError, match=r"one row per selected row: batch 2; received batch 3"):
        state.scatter([0, 1], LSTMState.zeros(2, 3, 3))
    with pytest.raises(ValueError, match=r"\(num_layers, hidden\)=\(2, 3\); received \(1, 3\)"):
        state.scatter([0], LSTMState.zeros(1, 1, 3))
    with pytest.raises(ValueError, match=r"received \(2, 4\)"):
        state.scatter([0], LSTMState.zeros(2, 1, 4))
    with pytest.raises(IndexError, match=r"out of range"):
        state.scatter([9], LSTMState.zeros(2, 1, 3))
    assert state.equal(before)


def test_scatter_rejects_duplicate_rows() -> None:
    """Regression: duplicates were accepted and the winner depended on index_copy's order."""
    state = numbered(GRUState)
    with pytest.raises(ValueError, match=r"rows must not repeat a row.*\[1\]"):
        state.scatter([1, -3], GRUState.zeros(2, 2, 3, dtype=torch.float64))


# --- NaN safety and gradients -----------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_reset_rows_gives_exact_zeros_for_non_finite_rows(bad: float) -> None:
    state = numbered(LSTMState).map(lambda t: t.index_fill(1, torch.tensor([2]), bad))
    reset = state.reset_rows([2])
    for t in reset.tensors():
        assert bool((t[:, 2] == 0).all()) and not bool(t[:, 2].signbit().any())
        assert bool(torch.isfinite(t).all())


def _leaf(cls: type[State]) -> State:
    return numbered(cls).map(lambda t: t.clone().requires_grad_())


@pytest.mark.parametrize("cls", STATE_TYPES)
def test_gradients_flow_through_kept_rows_of_reset_rows(cls: type[State]) -> None:
    state = _leaf(cls)
    total = sum(t.sum() for t in state.reset_rows([0, 2]).tensors())
    total.backward()
    for t in state.tensors():
        expected = torch.ones_like(t)
        expected[:, [0, 2]] = 0
        assert torch.equal(t.grad, expected)


def test_gradients_flow_through_select_and_scatter() -> None:
    state = _leaf(LSTMState)
    other = LSTMState.zeros(2, 2, 3, dtype=torch.float64).map(lambda t: t.requires_grad_())
    weights = torch.arange(24, dtype=torch.float64).view(2, 4, 3)
    combined = state.scatter([1, 2], other)
    (
        sum((t * weights).sum() for t in combined.tensors()) + state.select([3]).hidden.sum()
    ).backward()
    expected = weights.clone()
    expected[:, [1, 2]] = 0  # overwritten rows get no gradient
    assert torch.equal(state.cell.grad, expected)
    expected_hidden = expected.clone()
    expected_hidden[:, 3] += 1  # and the selected row gets the select's gradient too
    assert torch.equal(state.hidden.grad, expected_hidden)
    for t in other.tensors():
        assert torch.equal(t.grad, weights[:, [1, 2]])


def test_detach_cuts_the_graph_and_keeps_values() -> None:
    state = _leaf(GRUState)
    derived = state.map(lambda t: t * 2)
    detached = derived.detach()
    assert derived.hidden.requires_grad and not detached.hidden.requires_grad
    assert detached.equal(derived.map(torch.Tensor.detach))


# --- immutability -----------------------------------------------------------------------------


OPERATIONS = {
    "reset_rows": lambda s: s.reset_rows([0]),
    "select": lambda s: s.select([1]),
    "scatter": lambda s: s.scatter([1], s.select([0])),
    "detach": lambda s: s.detach(),
    "to-float32": lambda s: s.to(dtype=torch.float32),
    "to-same": lambda s: s.to(dtype=torch.float64),
    "zeros_like": lambda s: s.zeros_like(),
    "map": lambda s: s.map(lambda t: t + 1),
    "cat": lambda s: State.cat([s, s]),
}
# Like torch's own detach/to, these may return views of the same storage; that is safe because
# no State operation ever writes in place.
SHARE_STORAGE = {"detach", "to-same"}


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_operations_return_new_objects_and_leave_the_original(name: str) -> None:
    state = numbered(LSTMState)
    before = copy(state)
    result = OPERATIONS[name](state)
    assert result is not state and type(result) is LSTMState
    assert state.equal(before)
    if name not in SHARE_STORAGE:
        # writing into the result never reaches the original
        for t in result.tensors():
            t.detach().fill_(-7)
        assert state.equal(before)


# --- equal and to -----------------------------------------------------------------------------


def test_equal_compares_type_shape_and_values() -> None:
    state = numbered(GRUState)
    assert state.equal(copy(state))
    assert not state.equal(RNNState(state.hidden))
    assert not state.equal(state.select([0, 1]))
    assert not state.equal(state.reset_rows([0]))


def test_to_casts_dtype() -> None:
    state = numbered(LSTMState).to(dtype=torch.float32)
    assert state.dtype == torch.float32 and state.cell.dtype == torch.float32
    assert state.to("cpu").device == torch.device("cpu")


# --- serialisation ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls", STATE_TYPES)
def test_bytes_round_trip_is_exact(cls: type[State], dtype: torch.dtype) -> None:
    state = numbered(cls, layers=3, batch=2, hidden=5).map(lambda t: (t / 7).to(dtype))
    blob = state.to_bytes()
    assert isinstance(blob, bytes)
    restored = State.from_bytes(blob)
    assert type(restored) is cls and restored.dtype == dtype
    assert restored.equal(state)
    assert cls.from_bytes(bytearray(blob)).equal(state)
    assert State.from_bytes(memoryview(blob), device="cpu").equal(state)


def test_to_bytes_handles_views_and_grad() -> None:
    state = _leaf(LSTMState).map(lambda t: t.transpose(0, 1).transpose(0, 1)[:, 1:])
    assert State.from_bytes(state.to_bytes()).equal(state.detach())


def test_empty_batch_round_trips() -> None:
    state = GRUState.zeros(2, 0, 3)
    assert State.from_bytes(state.to_bytes()).equal(state)


def _blob(tensors: dict[str, torch.Tensor], meta: object | None) -> bytes:
    metadata = None if meta is None else {"seqstate": json.dumps(meta)}
    return safetensors_save(tensors, metadata=metadata)


GOOD_META = {"format": "seqstate.state/1", "type": "GRUState"}
ONE = {"hidden": torch.zeros(1, 2, 3)}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"", r"not a serialised seqstate State", id="empty"),
        pytest.param(b"garbage" * 10, r"not a serialised seqstate State", id="garbage"),
        pytest.param(
            GRUState.zeros(1, 2, 3).to_bytes()[:-5], r"not a serialised seqstate", id="truncated"
        ),
        pytest.param(
            GRUState.zeros(1, 2, 3).to_bytes()[:20], r"not a serialised seqstate", id="header-cut"
        ),
        pytest.param(_blob(ONE, None), r"not a serialised seqstate State", id="no-metadata"),
        pytest.param(
            safetensors_save(ONE, metadata={"other": "x"}), r"not a serialised", id="other-metadata"
        ),
        pytest.param(_blob(ONE, {**GOOD_META, "type": "Evil"}), r"unknown state", id="bad-type"),
        pytest.param(_blob(ONE, {**GOOD_META, "type": "State"}), r"unknown state", id="base-type"),
        pytest.param(_blob(ONE, {**GOOD_META, "format": "v9"}), r"unknown state", id="format"),
        pytest.param(_blob(ONE, [1, 2]), r"not a serialised seqstate", id="meta-list"),
        pytest.param(_blob(ONE, "GRUState"), r"not a serialised seqstate", id="meta-string"),
        pytest.param(_blob(ONE, {**GOOD_META, "type": ["x"]}), r"unknown state", id="type-list"),
        pytest.param(
            _blob({"cell": torch.zeros(1, 2, 3)}, GOOD_META),
            r"lacks fields \['hidden'\]",
            id="field",
        ),
        pytest.param(
            _blob({"hidden": torch.zeros(2, 3)}, GOOD_META), r"must have shape", id="rank"
        ),
        pytest.param(
            _blob({"hidden": torch.zeros(1, 2, 3, dtype=torch.int64)}, GOOD_META),
            r"floating",
            id="int-dtype",
        ),
        pytest.param(
            _blob(
                {"hidden": torch.zeros(1, 2, 3), "cell": torch.zeros(1, 2, 3, dtype=torch.float64)},
                {**GOOD_META, "type": "LSTMState"},
            ),
            r"one dtype",
            id="mixed-dtypes",
        ),
    ],
)
def test_from_bytes_rejects_anything_else_with_value_error(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        State.from_bytes(data)


def test_from_bytes_rejects_non_bytes() -> None:
    with pytest.raises(TypeError, match=r"data must be bytes; received str"):
        State.from_bytes("abc")  # type: ignore[arg-type]


def test_from_bytes_never_unpickles(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pickle payload is refused, and no unpickling is attempted at all on the way."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("from_bytes must not unpickle")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    payload = pickle.dumps(GRUState.zeros(1, 1, 1), protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(ValueError, match=r"not a serialised seqstate State"):
        State.from_bytes(payload)
    buffer = __import__("io").BytesIO()
    torch.save({"hidden": torch.zeros(1, 1, 1)}, buffer)
    with pytest.raises(ValueError, match=r"not a serialised seqstate State"):
        State.from_bytes(buffer.getvalue())
    # and a real state still loads with pickle unavailable
    assert State.from_bytes(GRUState.zeros(1, 1, 1).to_bytes()).equal(GRUState.zeros(1, 1, 1))


# --- the unchecked constructor (internal) and the checked public paths -----------------------


@pytest.mark.parametrize("cls", STATE_TYPES)
def test_unchecked_constructor_equals_the_checked_one(cls: type[State]) -> None:
    state = numbered(cls)
    same = cls._unchecked(*state.tensors())
    assert type(same) is cls and same.equal(state) and same == state
    assert same.tensors() == state.tensors()  # the very tensors, in field order
    with pytest.raises(dataclasses.FrozenInstanceError):
        same.hidden = same.hidden  # type: ignore[misc]


def test_map_with_a_callers_function_stays_checked() -> None:
    state = numbered(LSTMState)
    with pytest.raises(ValueError, match=r"LSTMState\.hidden must have shape"):
        state.map(lambda t: t[0])


# --- a state of per-layer 2-D fields, made 3-D when read (internal: the streamed step) --------


def per_layer(state: State) -> list[list[torch.Tensor]]:
    """The fields of ``state`` as the cell kernels give them: per layer, [B, H] copies."""
    return [[t[layer].clone() for t in state.tensors()] for layer in range(state.num_layers)]


@pytest.mark.parametrize("cls", STATE_TYPES)
@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize(
    "read",
    ["tensors", "attribute", "iterate", "equal", "select", "to_bytes", "pickle", "deepcopy"],
)
def test_a_state_of_layers_reads_as_the_stacked_state(
    cls: type[State], layers: int, read: str
) -> None:
    """Whatever reads it first, a state made of per-layer [B, H] fields is the state whose
    fields stack them: the same type, values, shapes and serialisation."""
    want = numbered(cls, layers=layers)
    state = cls._of_layers(per_layer(want))
    assert type(state) is cls
    if read == "tensors":
        got: State = cls._unchecked(*state.tensors())
    elif read == "attribute":
        got = cls._unchecked(*[getattr(state, name) for name in cls.field_names()])
    elif read == "iterate":
        got = cls._unchecked(*state)
    elif read == "equal":
        assert state.equal(want) and want.equal(state)
        got = state
    elif read == "select":
        got = state.select([1, 0, 2, 3]).select([1, 0, 2, 3])
    elif read == "to_bytes":
        got = State.from_bytes(state.to_bytes())
    elif read == "pickle":
        got = pickle.loads(pickle.dumps(state))
    else:
        got = copy_module.deepcopy(state)
    assert got.equal(want)
    assert all(t.shape == (layers, 4, 3) for t in got.tensors())
    assert state.tensors() == state.tensors()  # made once: the same tensors every time
    assert dataclasses.replace(state, **{cls.field_names()[0]: want.tensors()[0]}).equal(want)
    assert torch.utils._pytree.tree_flatten(state)[0] == list(state.tensors())


def test_one_layer_fields_are_views_of_the_per_layer_tensors() -> None:
    """One layer: the 3-D fields share the 2-D tensors' storage (an in-place change of one is
    seen through the other), and the 2-D tensors stay available."""
    rows = per_layer(numbered(LSTMState, layers=1))
    state = LSTMState._of_layers(rows)
    assert state._layers() is rows
    state.hidden.mul_(-1)
    assert torch.equal(rows[0][0], state.hidden[0]) and state._layers() is rows
    rows[0][1].add_(5)
    assert torch.equal(state.cell[0], rows[0][1])


def test_several_layers_are_stacked_once_and_the_per_layer_tensors_forgotten() -> None:
    """Several layers: reading the fields stacks them (copies), after which _layers is None,
    so a reader of the 2-D tensors never misses an in-place change of a field."""
    state = GRUState._of_layers(per_layer(numbered(GRUState, layers=2)))
    assert state._layers() is not None
    hidden = state.hidden
    assert state._layers() is None and state.hidden is hidden
    assert numbered(GRUState).equal(state)


def test_a_state_of_layers_is_frozen_and_has_only_its_fields() -> None:
    state = LSTMState._of_layers(per_layer(numbered(LSTMState)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.hidden = state.cell  # type: ignore[misc]
    with pytest.raises(AttributeError, match="'LSTMState' object has no attribute 'missing'"):
        state.missing  # type: ignore[attr-defined]
    assert not hasattr(state, "missing") and hasattr(state, "cell")
    assert not hasattr(numbered(LSTMState), "missing") and numbered(LSTMState)._layers() is None
