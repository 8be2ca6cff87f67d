"""Tests for seqstate.lanes: the lane layout invariants, targets, resume/partition, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqstate.lanes.lanes import Lanes, Window

SETTINGS = settings(max_examples=40, deadline=None)


# ---- helpers --------------------------------------------------------------------------------


def make_sequences(lengths: list[int], features: int, seed: int = 0) -> list[np.ndarray]:
    """Sequences whose values encode (sequence, step) so a misplaced step cannot go unseen."""
    rng = np.random.default_rng(seed)
    out = []
    for i, length in enumerate(lengths):
        base = 1000.0 * (i + 1) + np.arange(length, dtype=np.float32)[:, None]
        out.append((base + rng.random((length, features))).astype(np.float32))
    return out


def stitch(windows: list[Window]) -> dict[str, np.ndarray]:
    """Concatenate windows along time: every field becomes (B, num_windows * T, ...)."""
    names = ["x", "y", "loss_mask", "reset", "seq", "step"]
    return {name: torch.cat([getattr(w, name) for w in windows], dim=1).numpy() for name in names}


def check_layout(lanes: Lanes, sequences: list[np.ndarray], epoch: int = 0) -> dict:
    """Assert the layout invariants of DESIGN.md for one epoch; return the stitched arrays."""
    windows = list(lanes.windows(epoch))
    assert len(windows) == lanes.num_windows(epoch)
    full = stitch(windows)
    B, total = full["seq"].shape
    assert lanes.num_lanes == B and total == len(windows) * lanes.window
    seq, step, valid = full["seq"], full["step"], full["seq"] >= 0

    # Padding: mask False, seq/step -1, zero x and y, no reset; only at the end of a lane.
    padding = ~valid
    assert not full["loss_mask"][padding].any()
    assert (step[padding] == -1).all()
    assert not full["reset"][padding].any()
    assert (full["x"][padding] == 0).all() and (full["y"][padding] == 0).all()
    for row in valid:
        real = int(row.sum())
        assert row[:real].all(), "padding must only follow a lane's sequences"

    # Every step of every sequence exactly once, in order, in one lane, with its data.
    for i, sequence in enumerate(sequences):
        rows, cols = np.nonzero(seq == i)
        assert len(rows) == len(sequence), f"sequence {i}: {len(rows)} steps placed"
        assert (rows == rows[0]).all(), f"sequence {i} is split across lanes"
        assert (np.diff(cols) == 1).all(), f"sequence {i} is not contiguous"
        np.testing.assert_array_equal(step[rows, cols], np.arange(len(sequence)))
        np.testing.assert_array_equal(full["x"][rows, cols], sequence.reshape(len(sequence), -1))
    assert set(np.unique(seq[valid]).tolist()) == set(range(len(sequences)))

    # reset exactly at each sequence's first step.
    expected_reset = valid & (step == 0)
    np.testing.assert_array_equal(full["reset"], expected_reset)
    assert full["reset"].sum() == len(sequences)
    return full


# ---- Window -----------------------------------------------------------------------------


def test_window_properties_and_to():
    lanes = Lanes.from_sequences(make_sequences([5, 3], 2), lanes=2, window=4)
    window = next(lanes.windows())
    assert (window.batch_size, window.length) == (2, 4)
    assert window.x.dtype == torch.float32 and window.y.dtype == torch.float32
    assert window.loss_mask.dtype == torch.bool and window.reset.dtype == torch.bool
    assert window.seq.dtype == torch.int64 and window.step.dtype == torch.int64
    np.testing.assert_array_equal(window.valid.numpy(), window.seq.numpy() >= 0)
    moved = window.to("cpu")
    assert isinstance(moved, Window)
    for name in ["x", "y", "loss_mask", "reset", "seq", "step"]:
        assert torch.equal(getattr(moved, name), getattr(window, name))
    assert "B=2" in repr(window)


def test_module_docstring_has_the_lane_diagram():
    import seqstate.lanes.lanes

    doc = seqstate.lanes.lanes.__doc__
    assert "lane 0" in doc and "window 1" in doc and "reset" in doc


# ---- from_sequences: invariants ---------------------------------------------------------


@st.composite
def packing_case(draw):
    lengths = draw(st.lists(st.integers(1, 15), min_size=1, max_size=12))
    lanes = draw(st.integers(1, len(lengths)))
    window = draw(st.integers(1, 7))
    features = draw(st.integers(1, 3))
    return lengths, lanes, window, features


@SETTINGS
@given(case=packing_case(), shuffle=st.booleans(), seed=st.integers(0, 5), epoch=st.integers(0, 3))
def test_sequences_layout_invariants(case, shuffle, seed, epoch):
    lengths, lanes_count, window, features = case
    sequences = make_sequences(lengths, features)
    lanes = Lanes.from_sequences(
        sequences, lanes=lanes_count, window=window, shuffle=shuffle, seed=seed
    )
    assert lanes.num_sequences == len(lengths)
    np.testing.assert_array_equal(lanes.lengths, lengths)
    assert (lanes.num_lanes, lanes.window, lanes.num_features) == (lanes_count, window, features)
    check_layout(lanes, sequences, epoch)
    assert len(lanes) == lanes.num_windows(0)
    total = lanes.num_windows(epoch) * window * lanes_count
    assert lanes.padding_fraction_for(epoch) == pytest.approx(1 - sum(lengths) / total)
    # The number of windows is set by the longest lane: no window is all padding.
    loads = [int(np.asarray(lengths)[m].sum()) for m in lanes.assignment(epoch)]
    assert lanes.num_windows(epoch) == -(-max(loads) // window)


@SETTINGS
@given(case=packing_case(), shuffle=st.booleans(), seed=st.integers(0, 5), epoch=st.integers(0, 3))
def test_layout_is_deterministic(case, shuffle, seed, epoch):
    lengths, lanes_count, window, features = case
    sequences = make_sequences(lengths, features)

    def build():
        lanes = Lanes.from_sequences(
            sequences, lanes=lanes_count, window=window, shuffle=shuffle, seed=seed
        )
        return stitch(list(lanes.windows(epoch)))

    first, second = build(), build()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])


@SETTINGS
@given(case=packing_case(), shuffle=st.booleans(), epoch=st.integers(0, 2))
def test_collect_inverts_the_layout(case, shuffle, epoch):
    lengths, lanes_count, window, features = case
    sequences = make_sequences(lengths, features)
    lanes = Lanes.from_sequences(sequences, lanes=lanes_count, window=window, shuffle=shuffle)
    collected = lanes.collect((w.x for w in lanes.windows(epoch)), epoch=epoch)
    assert len(collected) == len(sequences)
    for got, want in zip(collected, sequences, strict=True):
        np.testing.assert_array_equal(got, want)
    # Outputs of another trailing shape (B, T, 1) and numpy input work too.
    steps = lanes.collect([w.step.numpy()[..., None] for w in lanes.windows(epoch)], epoch)
    for got, length in zip(steps, lengths, strict=True):
        np.testing.assert_array_equal(got[:, 0], np.arange(length))


def test_packing_is_balanced_longest_first():
    lengths = [9, 7, 6, 5, 4, 3, 2, 2, 1, 1]
    lanes = Lanes.from_sequences(make_sequences(lengths, 1), lanes=3, window=4)
    loads = sorted(int(np.asarray(lengths)[m].sum()) for m in lanes.assignment())
    assert loads == [13, 13, 14]  # 40 steps into 3 lanes: LPT is optimal here
    # Unshuffled lanes keep their sequences in the original order.
    for members in lanes.assignment():
        assert list(members) == sorted(members)


def test_packing_example_from_the_docstring():
    # p (6), q (3), r (4), s (2), lanes=2, window=4: see the module docstring.
    lanes = Lanes.from_sequences(make_sequences([6, 3, 4, 2], 1), lanes=2, window=4)
    assert [list(m) for m in lanes.assignment()] == [[0, 3], [1, 2]]
    assert len(lanes) == 2
    assert lanes.padding_fraction == pytest.approx(1 / 16)
    reset = stitch(list(lanes.windows()))["reset"]
    np.testing.assert_array_equal(np.argwhere(reset), [[0, 0], [0, 6], [1, 0], [1, 3]])


def test_three_dimensional_array_and_lengths():
    rng = np.random.default_rng(1)
    data = rng.standard_normal((5, 6, 2)).astype(np.float32)
    lanes = Lanes.from_sequences(data, lanes=2, window=4)
    check_layout(lanes, list(data))
    # Padded rows with real lengths: steps past the length are ignored, even NaN.
    padded = data.copy()
    lengths = np.array([6, 2, 4, 1, 3])
    for i, length in enumerate(lengths):
        padded[i, length:] = np.nan
    lanes = Lanes.from_sequences(padded, targets=None, lanes=2, window=3, lengths=lengths)
    check_layout(lanes, [data[i, :length] for i, length in enumerate(lengths)])


def test_torch_tensor_sequences():
    sequences = make_sequences([4, 6, 3], 2)
    lanes = Lanes.from_sequences([torch.from_numpy(s) for s in sequences], lanes=2, window=3)
    check_layout(lanes, sequences)
    series = Lanes.from_series(torch.arange(10.0), lanes=2, window=3)
    assert series.segment_starts.tolist() == [0, 5]


def test_one_dimensional_and_integer_sequences_become_float32_features():
    lanes = Lanes.from_sequences([np.arange(5), np.arange(3)], lanes=2, window=2)
    assert lanes.num_features == 1
    window = next(lanes.windows())
    assert window.x.dtype == torch.float32 and window.x.shape == (2, 2, 1)
    check_layout(lanes, [np.arange(5.0), np.arange(3.0)])


# ---- shuffle ---------------------------------------------------------------------------


def test_shuffle_changes_assignment_across_epochs_and_is_deterministic():
    lengths = list(range(5, 25))  # all different: shuffling cannot rely on ties
    sequences = make_sequences(lengths, 1)
    lanes = Lanes.from_sequences(sequences, lanes=4, window=8, shuffle=True, seed=3)
    layouts = [tuple(tuple(m) for m in lanes.assignment(epoch)) for epoch in range(6)]
    assert len(set(layouts)) > 1, "shuffle must change the assignment across epochs"
    groupings = {frozenset(frozenset(m) for m in layout) for layout in layouts}
    assert len(groupings) > 1, "shuffle must change which sequences share a lane"

    again = Lanes.from_sequences(sequences, lanes=4, window=8, shuffle=True, seed=3)
    for epoch in range(6):
        assert [list(m) for m in again.assignment(epoch)] == [list(m) for m in layouts[epoch]]
        check_layout(lanes, sequences, epoch)  # sequences whole and in order every epoch
    other_seed = Lanes.from_sequences(sequences, lanes=4, window=8, shuffle=True, seed=4)
    assert [tuple(tuple(m) for m in other_seed.assignment(e)) for e in range(6)] != layouts


def test_without_shuffle_every_epoch_is_the_same():
    sequences = make_sequences([3, 8, 5, 2, 7], 1)
    lanes = Lanes.from_sequences(sequences, lanes=2, window=3)
    first = stitch(list(lanes.windows(0)))
    later = stitch(list(lanes.windows(5)))
    for name in first:
        np.testing.assert_array_equal(first[name], later[name])


def test_shuffled_padding_stays_low():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 60, size=300).tolist()
    sequences = [np.zeros((length, 1), np.float32) for length in lengths]
    plain = Lanes.from_sequences(sequences, lanes=16, window=32)
    shuffled = Lanes.from_sequences(sequences, lanes=16, window=32, shuffle=True, seed=1)
    assert plain.padding_fraction < 0.05
    for epoch in range(5):
        assert shuffled.padding_fraction_for(epoch) < 0.06
        loads = [sum(lengths[i] for i in m) for m in shuffled.assignment(epoch)]
        assert max(loads) - min(loads) <= max(lengths)


# ---- from_series ------------------------------------------------------------------------


@SETTINGS
@given(
    length=st.integers(2, 60),
    lanes_count=st.integers(1, 8),
    window=st.integers(1, 9),
    features=st.sampled_from([0, 1, 3]),  # 0: a 1-D series
)
def test_series_segments_and_next_targets(length, lanes_count, window, features):
    lanes_count = min(lanes_count, length)
    shape = (length,) if features == 0 else (length, features)
    series = np.arange(np.prod(shape), dtype=np.float64).reshape(shape) * 0.5
    lanes = Lanes.from_series(series, lanes=lanes_count, window=window)

    segment_lengths = lanes.lengths
    assert segment_lengths.sum() == length and segment_lengths.max() - segment_lengths.min() <= 1
    starts = lanes.segment_starts
    np.testing.assert_array_equal(starts, np.concatenate([[0], np.cumsum(segment_lengths)[:-1]]))
    segments = [series[s : s + n] for s, n in zip(starts, segment_lengths, strict=True)]
    full = check_layout(lanes, segments)
    # Lane i holds segment i: row i of window k+1 continues row i of window k.
    for i in range(lanes_count):
        assert set(full["seq"][i][full["seq"][i] >= 0].tolist()) == {i}

    # "next" targets computed on the whole series: only the very last step is masked.
    rows = series.reshape(length, -1)
    valid = full["seq"] >= 0
    position = starts[full["seq"][valid]] + full["step"][valid]
    has_target = position + 1 < length
    np.testing.assert_array_equal(full["loss_mask"][valid], has_target)
    np.testing.assert_array_equal(full["y"][valid][has_target], rows[position[has_target] + 1])
    assert full["loss_mask"].sum() == length - 1


def test_series_next_target_crosses_segment_boundary():
    series = np.arange(10.0)
    lanes = Lanes.from_series(series, lanes=2, window=5)
    (window,) = list(lanes.windows())
    assert window.x[0, :, 0].tolist() == [0, 1, 2, 3, 4]
    assert window.y[0, :, 0].tolist() == [1, 2, 3, 4, 5]  # segment 0's last step targets 5
    assert window.loss_mask[0].all()
    assert window.y[1, :, 0].tolist() == [6, 7, 8, 9, 0]
    assert window.loss_mask[1].tolist() == [True, True, True, True, False]
    assert window.reset[:, 0].all() and not window.reset[:, 1:].any()


def test_series_segment_lengths_differ_by_at_most_one():
    lanes = Lanes.from_series(np.zeros(11), lanes=4, window=2)
    assert lanes.lengths.tolist() == [3, 3, 3, 2]
    assert lanes.segment_starts.tolist() == [0, 3, 6, 9]
    assert len(lanes) == 2
    assert lanes.padding_fraction == pytest.approx(1 - 11 / 16)


def test_series_horizon_explicit_and_no_targets():
    series = np.arange(12.0)
    horizon = Lanes.from_series(series, lanes=3, window=4, targets=3)
    full = stitch(list(horizon.windows()))
    assert horizon.target_kind == "horizon" and horizon.horizon == 3
    position = horizon.segment_starts[:, None] + full["step"]
    np.testing.assert_array_equal(full["loss_mask"], position + 3 < 12)
    np.testing.assert_array_equal(
        full["y"][..., 0][full["loss_mask"]], position[full["loss_mask"]] + 3
    )

    classes = (np.arange(12) % 3).astype(np.int32)
    explicit = Lanes.from_series(series, lanes=3, window=4, targets=classes)
    full = stitch(list(explicit.windows()))
    assert explicit.num_outputs == 1 and full["y"].dtype == np.int64
    assert full["loss_mask"].all()
    np.testing.assert_array_equal(full["y"][..., 0], classes.reshape(3, 4))

    none = Lanes.from_series(series, lanes=3, window=4, targets=None)
    window = next(none.windows())
    assert none.num_outputs == 0 and none.target_kind is None
    assert window.y.shape == (3, 4, 0) and not window.loss_mask.any() and window.valid.all()


def test_series_from_memmap(tmp_path):
    data = np.random.default_rng(0).standard_normal((101, 3)).astype(np.float32)
    path = tmp_path / "series.f32"
    data.tofile(path)
    mapped = np.memmap(path, dtype=np.float32, mode="r", shape=data.shape)
    from_map = Lanes.from_series(mapped, lanes=4, window=8)
    in_memory = Lanes.from_series(data, lanes=4, window=8)
    # The memmap itself is kept (no whole copy); windows gather only their rows.
    assert isinstance(from_map._source.data, np.memmap)
    for got, want in zip(from_map.windows(), in_memory.windows(), strict=True):
        for name in ["x", "y", "loss_mask", "reset", "seq", "step"]:
            assert torch.equal(getattr(got, name), getattr(want, name))


def test_sequences_from_memmap(tmp_path):
    data = np.random.default_rng(0).standard_normal((7, 9, 2)).astype(np.float32)
    path = tmp_path / "sequences.f32"
    data.tofile(path)
    mapped = np.memmap(path, dtype=np.float32, mode="r", shape=data.shape)
    lengths = np.array([9, 3, 5, 9, 1, 2, 8])
    lanes = Lanes.from_sequences(mapped, lanes=3, window=4, lengths=lengths, shuffle=True)
    assert isinstance(lanes._source.data, np.memmap)
    for epoch in range(2):
        check_layout(lanes, [data[i, :n] for i, n in enumerate(lengths)], epoch)


# ---- from_sequences targets --------------------------------------------------------------


def test_sequence_next_and_horizon_targets():
    sequences = make_sequences([5, 2, 4], 2)
    for k, kind in [(1, "next"), (2, "horizon")]:
        targets = "next" if k == 1 else k
        lanes = Lanes.from_sequences(sequences, targets, lanes=2, window=3)
        assert lanes.target_kind == kind and lanes.num_outputs == 2
        full = stitch(list(lanes.windows()))
        for i, sequence in enumerate(sequences):
            rows, cols = np.nonzero(full["seq"] == i)
            expected_mask = np.arange(len(sequence)) + k < len(sequence)
            np.testing.assert_array_equal(full["loss_mask"][rows, cols], expected_mask)
            np.testing.assert_array_equal(
                full["y"][rows, cols][expected_mask], sequence[k:], err_msg=f"sequence {i}"
            )


def test_sequence_per_step_targets_list_and_array():
    sequences = make_sequences([5, 2, 4], 1)
    per_step = [np.arange(len(s)) * 10 + i for i, s in enumerate(sequences)]  # int labels
    lanes = Lanes.from_sequences(sequences, per_step, lanes=2, window=3)
    assert lanes.target_kind == "steps" and lanes.target_dtype == torch.int64
    full = stitch(list(lanes.windows()))
    assert full["y"].dtype == np.int64
    np.testing.assert_array_equal(full["loss_mask"], full["seq"] >= 0)
    for i, target in enumerate(per_step):
        rows, cols = np.nonzero(full["seq"] == i)
        np.testing.assert_array_equal(full["y"][rows, cols, 0], target)

    data = np.random.default_rng(0).standard_normal((4, 5, 2)).astype(np.float32)
    targets = np.random.default_rng(1).standard_normal((4, 5, 3))
    lanes = Lanes.from_sequences(data, targets, lanes=2, window=5)
    full = stitch(list(lanes.windows()))
    assert full["y"].dtype == np.float32 and lanes.num_outputs == 3
    for i in range(4):
        rows, cols = np.nonzero(full["seq"] == i)
        np.testing.assert_allclose(full["y"][rows, cols], targets[i], rtol=1e-6)


def test_sequence_labels_count_only_at_the_last_step():
    sequences = make_sequences([5, 2, 4, 1], 2)
    labels = np.array([3, 0, 1, 2])
    lanes = Lanes.from_sequences(sequences, labels=labels, lanes=2, window=3)
    assert lanes.target_kind == "labels" and lanes.num_outputs == 1
    full = stitch(list(lanes.windows()))
    assert full["y"].dtype == np.int64
    assert full["loss_mask"].sum() == 4
    for i, sequence in enumerate(sequences):
        rows, cols = np.nonzero(full["seq"] == i)
        np.testing.assert_array_equal(full["y"][rows, cols, 0], labels[i])
        expected = np.arange(len(sequence)) == len(sequence) - 1
        np.testing.assert_array_equal(full["loss_mask"][rows, cols], expected)

    # Float labels (n, O), and targets=None given explicitly alongside labels.
    vectors = np.random.default_rng(0).standard_normal((4, 3))
    lanes = Lanes.from_sequences(sequences, None, labels=vectors, lanes=2, window=3)
    full = stitch(list(lanes.windows()))
    assert full["y"].dtype == np.float32 and lanes.num_outputs == 3
    last = full["loss_mask"]
    np.testing.assert_allclose(full["y"][last], vectors[full["seq"][last]], rtol=1e-6)


def test_sequence_no_targets():
    lanes = Lanes.from_sequences(make_sequences([3, 4], 2), None, lanes=2, window=3)
    window = next(lanes.windows())
    assert window.y.shape == (2, 3, 0) and not window.loss_mask.any() and window.valid.all()


# ---- start and rows -----------------------------------------------------------------------


@SETTINGS
@given(case=packing_case(), shuffle=st.booleans(), data=st.data())
def test_start_and_rows_equal_slicing_the_full_iteration(case, shuffle, data):
    lengths, lanes_count, window, features = case
    lanes = Lanes.from_sequences(
        make_sequences(lengths, features), lanes=lanes_count, window=window, shuffle=shuffle
    )
    epoch = data.draw(st.integers(0, 2))
    full = list(lanes.windows(epoch))
    start = data.draw(st.integers(0, len(full)))
    resumed = list(lanes.windows(epoch, start=start))
    assert len(resumed) == len(full) - start
    selector = data.draw(
        st.one_of(
            st.builds(slice, st.integers(0, lanes_count), st.integers(0, lanes_count)),
            st.builds(slice, st.none(), st.none(), st.integers(1, 3)),
            st.lists(st.integers(0, lanes_count - 1), max_size=lanes_count).map(np.array),
        )
    )
    partial = list(lanes.windows(epoch, start=start, rows=selector))
    for got, resumed_window, want in zip(partial, resumed, full[start:], strict=True):
        for name in ["x", "y", "loss_mask", "reset", "seq", "step"]:
            assert torch.equal(getattr(resumed_window, name), getattr(want, name))
            assert torch.equal(getattr(got, name), getattr(want, name)[selector])


def test_rows_partition_lanes_like_distributed_ranks():
    lanes = Lanes.from_series(np.arange(50.0), lanes=6, window=4)
    full = stitch(list(lanes.windows()))
    ranks = [stitch(list(lanes.windows(rows=slice(r, None, 3)))) for r in range(3)]
    merged = np.empty_like(full["x"])
    for r, part in enumerate(ranks):
        merged[r::3] = part["x"]
    np.testing.assert_array_equal(merged, full["x"])
    mask = np.array([True, False, True, False, False, True])
    masked = stitch(list(lanes.windows(rows=torch.from_numpy(mask))))
    np.testing.assert_array_equal(masked["seq"], full["seq"][mask])


def test_windows_are_lazy_and_start_at_end_is_empty():
    lanes = Lanes.from_series(np.arange(40.0), lanes=2, window=5)
    iterator = lanes.windows()
    assert not isinstance(iterator, list)
    assert next(iterator).x[0, 0, 0].item() == 0
    assert list(lanes.windows(start=len(lanes))) == []


# ---- bad input -----------------------------------------------------------------------------


GOOD = [np.ones((5, 2)), np.ones((3, 2))]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"lanes": 0}, ValueError, r"lanes must be an int >= 1; received 0"),
        ({"lanes": 2.0}, TypeError, r"lanes must be an int >= 1; received float"),
        ({"lanes": True}, TypeError, r"lanes must be an int"),
        ({"window": 0}, ValueError, r"window must be an int >= 1; received 0"),
        ({"window": "4"}, TypeError, r"window must be an int >= 1; received str"),
        ({"lanes": 3}, ValueError, r"lanes=3 is more than the 2 sequences.*lanes <= 2"),
        ({"seed": -1}, ValueError, r"seed must be an int >= 0"),
        ({"shuffle": "yes"}, TypeError, r"shuffle must be True or False"),
        ({"targets": "prev"}, ValueError, r"targets must be 'next'.*received the string 'prev'"),
        ({"targets": 1.5}, TypeError, r"targets must be 'next'.*received float"),
        ({"targets": True}, TypeError, r"targets must be 'next'.*received bool"),
        ({"targets": 0}, ValueError, r"targets must be an int >= 1; received 0.*horizon"),
        ({"targets": [np.ones(5)]}, ValueError, r"targets has 1 items but there are 2 sequences"),
        (
            {"targets": [np.ones(5), np.ones(4)]},
            ValueError,
            r"targets\[1\] must have shape \(3,\) or \(3, O\).*received shape \(4,\)",
        ),
        (
            {"targets": [np.ones((5, 2)), np.ones((3, 1))]},
            ValueError,
            r"targets\[1\] has 1 outputs but targets\[0\] has 2",
        ),
        (
            {"targets": [np.ones(5), np.array([1.0, np.nan, 2.0])]},
            ValueError,
            r"targets\[1\] holds NaN or inf at step 1",
        ),
        ({"targets": np.array([1, 2])}, ValueError, r"one value per sequence.*labels="),
        ({"targets": [1, 2]}, ValueError, r"targets\[0\] is a single value.*labels="),
        ({"targets": [np.ones(5), np.ones(3, int)]}, TypeError, r"targets mix integer and float"),
        ({"labels": np.array([1, 2]), "targets": 2}, TypeError, r"either targets.*or labels"),
        ({"labels": np.array([1, 2]), "targets": "next"}, TypeError, r"received targets='next'"),
        ({"labels": np.array([1, 2, 3])}, ValueError, r"labels must have shape \(2,\) or \(2, O\)"),
        ({"labels": np.array([1.0, np.inf])}, ValueError, r"labels\[1\] is NaN or inf"),
        ({"lengths": [5, 3]}, TypeError, r"lengths applies only to a 3-D sequences array"),
    ],
)
def test_from_sequences_bad_arguments(kwargs, error, match):
    arguments = {"lanes": 2, "window": 3, **kwargs}
    with pytest.raises(error, match=match):
        Lanes.from_sequences(GOOD, **arguments)


@pytest.mark.parametrize(
    ("sequences", "error", "match"),
    [
        ([], ValueError, r"sequences is empty"),
        ([np.ones((5, 2)), np.ones((4, 3))], ValueError, r"sequences\[1\] has 3 features but"),
        ([np.ones((5, 2)), np.ones((0, 2))], ValueError, r"sequences\[1\] is empty"),
        (
            [np.ones((5, 2)), np.array([[1.0, 2.0], [3.0, np.nan]])],
            ValueError,
            r"sequences\[1\] holds NaN or inf at step 1",
        ),
        ([np.ones(4), np.array([0.0, 1.0, -np.inf])], ValueError, r"sequences\[1\].*at step 2"),
        ([np.ones((5, 2, 2))], ValueError, r"sequences\[0\] must have shape \(L,\) or \(L, F\)"),
        ([np.array(["a", "b"]), np.ones(2)], TypeError, r"sequences\[0\] must hold numbers"),
        (np.ones((4, 5)), ValueError, r"sequences must be .*shape \(4, 5\).*ambiguous"),
        (np.ones((2, 0, 3)), ValueError, r"sequences array \(n, L, F\) must have n, L, F >= 1"),
        ("abc", TypeError, r"sequences must be a list of arrays.*received str"),
    ],
)
def test_from_sequences_bad_sequences(sequences, error, match):
    with pytest.raises(error, match=match):
        Lanes.from_sequences(sequences, lanes=1, window=3)


def test_from_sequences_bad_padded_input():
    data = np.ones((3, 4, 2))
    with pytest.raises(ValueError, match=r"lengths\[1\]=0 must be between 1 and L=4"):
        Lanes.from_sequences(data, lanes=2, window=2, lengths=[4, 0, 2])
    with pytest.raises(ValueError, match=r"lengths must be 3 ints"):
        Lanes.from_sequences(data, lanes=2, window=2, lengths=[4, 2])
    data[2, 1, 0] = np.nan
    with pytest.raises(ValueError, match=r"sequences\[2\] holds NaN or inf at step 1"):
        Lanes.from_sequences(data, lanes=2, window=2)
    with pytest.raises(ValueError, match=r"targets must have shape \(3, 4\) or \(3, 4, O\)"):
        Lanes.from_sequences(np.ones((3, 4, 2)), np.ones((3, 5)), lanes=2, window=2)


@pytest.mark.parametrize(
    ("series", "kwargs", "error", "match"),
    [
        (np.arange(3.0), {"lanes": 4}, ValueError, r"series has 3 steps, fewer than lanes=4"),
        (np.ones((2, 3, 4)), {}, ValueError, r"series must have shape \(N,\) or \(N, F\)"),
        (np.array([0.0, 1.0, np.nan, 3.0]), {}, ValueError, r"series holds NaN or inf at step 2"),
        (np.arange(10.0), {"window": -1}, ValueError, r"window must be an int >= 1"),
        (np.arange(10.0), {"targets": "last"}, ValueError, r"targets must be 'next'"),
        (np.arange(10.0), {"targets": 10}, ValueError, r"horizon k=10 leaves no targets.*k < 10"),
        (np.arange(10.0), {"targets": np.ones(9)}, ValueError, r"targets must have shape \(10,\)"),
        (np.arange(10.0), {"targets": 2.5}, TypeError, r"targets must be 'next'.*received float"),
        (np.array(["a", "b"]), {"lanes": 1}, TypeError, r"series must hold numbers"),
    ],
)
def test_from_series_bad_arguments(series, kwargs, error, match):
    arguments = {"lanes": 2, "window": 3, **kwargs}
    with pytest.raises(error, match=match):
        Lanes.from_series(series, **arguments)


def test_bad_iteration_arguments():
    lanes = Lanes.from_series(np.arange(20.0), lanes=2, window=3)
    with pytest.raises(ValueError, match=r"start=9 is past the end of epoch 0, which has 4"):
        lanes.windows(start=9)
    with pytest.raises(ValueError, match=r"epoch must be an int >= 0"):
        lanes.windows(-1)
    with pytest.raises(ValueError, match=r"rows must be lane indices in \[0, 2\)"):
        lanes.windows(rows=[0, 2])
    with pytest.raises(TypeError, match=r"rows must be a slice"):
        lanes.windows(rows=np.array([0.5]))
    with pytest.raises(ValueError, match=r"rows as a boolean mask must have shape \(2,\)"):
        lanes.windows(rows=np.array([True]))
    outputs = [w.x for w in lanes.windows()]
    with pytest.raises(ValueError, match=r"outputs has 3 windows; epoch 0 has 4"):
        lanes.collect(outputs[:3])
    with pytest.raises(ValueError, match=r"outputs\[1\] must have shape \(B, T, \.\.\.\)"):
        lanes.collect([outputs[0], outputs[1][:1], *outputs[2:]])
    # A failed call leaves the object usable and unchanged.
    assert len(list(lanes.windows())) == 4


def test_bad_input_changes_nothing():
    sequences = [np.array([1.0, 2.0, 3.0]), np.array([4.0, np.nan])]
    copies = [s.copy() for s in sequences]
    with pytest.raises(ValueError, match="NaN"):
        Lanes.from_sequences(sequences, lanes=2, window=2)
    for got, want in zip(sequences, copies, strict=True):
        np.testing.assert_array_equal(got, want)
    # Building and iterating valid lanes never writes to the caller's arrays either.
    good = [np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0])]
    before = [g.copy() for g in good]
    lanes = Lanes.from_sequences(good, lanes=2, window=2, shuffle=True)
    for window in lanes.windows(1):
        window.x.add_(1.0)  # mutating a window must not reach the source data
    for got, want in zip(good, before, strict=True):
        np.testing.assert_array_equal(got, want)
    check_layout(lanes, good, 1)


def test_deprecated_names_still_work_and_warn():
    """Window.mask and from_series(target=) were renamed (loss_mask, targets=); the old names
    keep working for one release, with a DeprecationWarning."""
    series = np.arange(20.0)
    new = Lanes.from_series(series, lanes=2, window=3, targets=2)
    with pytest.warns(DeprecationWarning, match=r"use targets="):
        old = Lanes.from_series(series, lanes=2, window=3, target=2)
    for a, b in zip(new.windows(), old.windows(), strict=True):
        assert torch.equal(a.y, b.y) and torch.equal(a.loss_mask, b.loss_mask)
    window = next(new.windows())
    with pytest.warns(DeprecationWarning, match=r"Window.loss_mask"):
        assert window.mask is window.loss_mask
    with pytest.raises(TypeError, match=r"targets=\.\.\. only"):
        Lanes.from_series(series, lanes=2, window=3, targets=2, target=2)


# ---- the window's timeline ------------------------------------------------------------------


def test_each_window_carries_the_timeline_of_its_reset_and_valid_steps():
    import dataclasses

    from seqstate.core.timeline import Timeline

    sequences = make_sequences([7, 3, 12, 5, 9, 2, 4], features=2)
    lanes = Lanes.from_sequences(sequences, lanes=3, window=6)
    for window in lanes.windows():
        timeline = window.timeline
        assert timeline is not None and timeline.reset is window.reset
        valid = window.valid
        if bool(valid.all()):
            assert timeline.mask is None
        else:
            assert timeline.mask is not None and torch.equal(timeline.mask, valid)
        fresh = Timeline(window.reset, valid)
        assert timeline.plain == fresh.plain
        if fresh.plan is not None:
            assert timeline.plan is not None
            for name in ("reads", "writes", "fill", "last"):
                np.testing.assert_array_equal(
                    getattr(timeline.plan, name), getattr(fresh.plan, name)
                )
        moved = window.to("cpu")
        assert moved.timeline is not None and moved.timeline.plain == timeline.plain
        replaced = dataclasses.replace(window, loss_mask=~window.loss_mask)
        assert replaced.timeline is timeline


@pytest.mark.parametrize("padded", [False, True])
def test_windows_own_their_arrays(padded):
    """A window (with or without padding) never shares memory with the data it was read
    from: writing into its x and y changes neither the data nor a window built again."""
    series = np.arange(24.0 if not padded else 23.0, dtype=np.float32).reshape(-1, 1)
    kept = series.copy()
    lanes = Lanes.from_series(series, lanes=2, window=6)
    first = list(lanes.windows())
    assert bool((first[-1].seq < 0).any()) == padded
    for window in first:
        window.x.add_(100.0)
        window.y.add_(100.0)
    np.testing.assert_array_equal(series, kept)
    for window, again in zip(first, lanes.windows(), strict=True):
        torch.testing.assert_close(window.x - 100.0, again.x)
