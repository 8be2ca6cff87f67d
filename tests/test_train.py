"""fit / evaluate: TBPTT over lanes, masked losses, validation isolation, early stopping,
schedules, run-dir outputs and bad input. Exact resume lives in test_resume.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from seqstate.core.layers import GRU
from seqstate.core.model import SequenceModel
from seqstate.core.saved import load_model
from seqstate.core.state import GRUState
from seqstate.lanes.lanes import Lanes
from seqstate.train import FitConfig, History, WindowEnd, evaluate, fit
from seqstate.train.losses import MaskedLoss


def sine_series(n: int = 600, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    wave = np.stack([np.sin(0.2 * t), np.cos(0.13 * t)], axis=1)
    return (wave + 0.05 * rng.standard_normal((n, 2))).astype(np.float32)


def variable_sequences(count: int = 12, seed: int = 0, features: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.standard_normal((int(rng.integers(3, 20)), features)).astype(np.float32)
        for _ in range(count)
    ]


def make_model(seed: int = 0, **fields) -> SequenceModel:
    torch.manual_seed(seed)
    fields = {"input_size": 2, "output_size": 2, "hidden_size": 12, **fields}
    return SequenceModel(**fields)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    # Bitwise on every CPU: both runs make the same kernel calls on the same shapes in one
    # process (what the runs compare, padding values or validation, never reaches them).
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


QUIET = {"progress": False}


# --------------------------------------------------------------------------------------------
# Learning
# --------------------------------------------------------------------------------------------


def test_loss_decreases_on_a_learnable_series():
    series = sine_series()
    model = make_model()
    history = fit(model, Lanes.from_series(series, lanes=6, window=20), epochs=6, lr=1e-2, **QUIET)
    assert isinstance(history, History) and len(history) == 6
    assert history["epoch"] == list(range(6))
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert not model.training  # fit leaves the model ready for prediction


def test_classification_with_per_sequence_labels():
    rng = np.random.default_rng(1)
    sequences, labels = [], []
    for _ in range(48):
        label = int(rng.integers(0, 2))
        length = int(rng.integers(4, 10))
        sequences.append(rng.standard_normal((length, 1)) * 0.3 + (1 if label else -1))
        labels.append(label)
    lanes = Lanes.from_sequences(
        [s.astype(np.float32) for s in sequences], labels=np.array(labels), lanes=8, window=6
    )
    torch.manual_seed(0)
    model = SequenceModel(input_size=1, output_size=2, hidden_size=8, task="classification")
    before = evaluate(model, lanes)
    history = fit(model, lanes, epochs=12, lr=2e-2, **QUIET)
    after = evaluate(model, lanes)
    assert set(after) == {"loss", "accuracy"}
    assert after["loss"] < before["loss"]
    assert after["accuracy"] >= 0.9
    assert history["loss"][-1] < history["loss"][0]


@pytest.mark.parametrize("loss", ["mse", "mae", "huber"])
def test_each_regression_loss_trains(loss):
    model = make_model()
    lanes = Lanes.from_series(sine_series(300), lanes=4, window=15)
    history = fit(model, lanes, epochs=3, lr=1e-2, loss=loss, **QUIET)
    assert history["loss"][-1] < history["loss"][0]


def test_masked_loss_matches_reference_on_counted_steps_only():
    generator = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 5, 2, generator=generator)
    target = torch.randn(3, 5, 2, generator=generator)
    mask = torch.rand(3, 5, generator=generator) > 0.4
    references = {
        "mse": nn.functional.mse_loss,
        "mae": nn.functional.l1_loss,
        "huber": nn.functional.huber_loss,
    }
    for name, reference in references.items():
        loss = MaskedLoss(name)
        expected = reference(pred[mask], target[mask]) * int(mask.sum())
        torch.testing.assert_close(loss.sum(pred, target, mask), expected)
        # Anything at a step that does not count (even NaN) changes nothing.
        noisy_pred, noisy_target = pred.clone(), target.clone()
        noisy_pred[~mask] = float("nan")
        noisy_target[~mask] = 1e6
        # bitwise: the same reduction over the same shape, masked entries zero either way
        assert torch.equal(loss.sum(noisy_pred, noisy_target, mask), loss.sum(pred, target, mask))
    logits = torch.randn(3, 5, 4, generator=generator)
    labels = torch.randint(0, 4, (3, 5, 1), generator=generator)
    expected = nn.functional.cross_entropy(logits[mask], labels[..., 0][mask]) * int(mask.sum())
    torch.testing.assert_close(MaskedLoss("cross_entropy").sum(logits, labels, mask), expected)
    # Per-sequence labels repeat at steps that do not count; an out-of-range one there is unused.
    labels[~mask] = 99
    torch.testing.assert_close(MaskedLoss("cross_entropy").sum(logits, labels, mask), expected)


def test_padded_targets_do_not_change_training():
    rng = np.random.default_rng(3)
    lengths = np.array([5, 9, 3, 12, 7, 4])
    x = rng.standard_normal((6, 12, 2)).astype(np.float32)
    y = rng.standard_normal((6, 12, 2)).astype(np.float32)
    garbage = y.copy()
    for i, length in enumerate(lengths):
        garbage[i, length:] = 1e6  # targets after each sequence's end are padding
    results = []
    for targets in (y, garbage):
        model = make_model()
        lanes = Lanes.from_sequences(x, targets, lanes=3, window=5, lengths=lengths)
        fit(model, lanes, epochs=2, **QUIET)
        results.append(weights(model))
    assert_same_weights(*results)


def test_loss_is_computed_in_the_normalised_target_space():
    # Same data in units 1000x larger, with matching normalisation: same unit-free loss.
    series = sine_series(200)
    losses = []
    for scale in (1.0, 1000.0):
        model = make_model()
        model.set_normalization(np.zeros(2), np.ones(2) * scale, np.zeros(2), np.ones(2) * scale)
        history = fit(
            model, Lanes.from_series(series * scale, lanes=4, window=10), epochs=1, **QUIET
        )
        losses.append(history["loss"][0])
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


# --------------------------------------------------------------------------------------------
# Truncated BPTT
# --------------------------------------------------------------------------------------------


class RecordingGRU(nn.Module):
    """A protocol-following module that is not a SequenceModel; records its incoming state."""

    def __init__(self, input_size: int, output_size: int, hidden_size: int = 8) -> None:
        super().__init__()
        self.recurrent = GRU(input_size, hidden_size)
        self.head = nn.Linear(hidden_size, output_size)
        self.incoming: list[GRUState | None] = []

    def initial_state(self, batch_size: int) -> GRUState:
        return self.recurrent.initial_state(batch_size)

    def forward(self, x, state=None, reset=None, mask=None):
        self.incoming.append(state)
        hidden, state = self.recurrent(x, state, reset, mask)
        return self.head(hidden), state


def test_state_is_carried_and_detached_between_windows():
    torch.manual_seed(0)
    model = RecordingGRU(2, 2)
    lanes = Lanes.from_series(sine_series(200), lanes=4, window=10)
    seen: list[WindowEnd] = []
    fit(model, lanes, epochs=1, on_window=seen.append, **QUIET)
    assert len(model.incoming) == len(lanes) == len(seen)
    # Window k+1 starts from exactly the (detached) state window k ended with.
    for end, incoming in zip(seen[:-1], model.incoming[1:], strict=True):
        assert incoming is end.state
        assert not incoming.hidden.requires_grad and incoming.hidden.grad_fn is None
    assert not torch.equal(model.incoming[1].hidden, torch.zeros_like(model.incoming[1].hidden))


def test_fit_equals_a_hand_written_tbptt_loop():
    lanes = Lanes.from_sequences(variable_sequences(10), lanes=3, window=6)
    model = make_model(dropout=0.0)
    fit(model, lanes, epochs=2, clip_grad_norm=None, seed=None, **QUIET)

    reference = make_model(dropout=0.0)
    optimizer = torch.optim.Adam(reference.parameters(), lr=1e-3)
    reference.train()
    for epoch in range(2):
        state = reference.initial_state(3)
        for window in lanes.windows(epoch):
            y, state = reference(window.x, state, reset=window.reset, mask=window.valid)
            per_step = ((y - window.y) ** 2).mean(dim=2)
            loss = torch.where(window.loss_mask, per_step, 0.0).sum() / window.loss_mask.sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            state = state.detach()
    for key, value in weights(reference).items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Validation, determinism, early stopping, schedules
# --------------------------------------------------------------------------------------------


def test_validation_never_touches_training():
    train = Lanes.from_sequences(variable_sequences(12), lanes=4, window=5, shuffle=True)
    validation = Lanes.from_sequences(variable_sequences(5, seed=9), lanes=3, window=7)

    def run(with_validation: bool):
        model = make_model(num_layers=2, dropout=0.3)  # dropout: RNG use would show
        per_epoch, checks = [], []
        last: dict = {}

        def on_window(end: WindowEnd) -> None:
            last["state"] = end.state
            last["copy"] = end.state.map(torch.clone)

        def on_epoch(record) -> None:
            per_epoch.append(weights(model))
            checks.append(last["state"].equal(last["copy"]))  # after validation ran

        history = fit(
            model,
            train,
            validation=validation if with_validation else None,
            epochs=3,
            on_window=on_window,
            on_epoch=on_epoch,
            **QUIET,
        )
        return per_epoch, checks, history

    with_val, checks, history = run(True)
    without_val, _, _ = run(False)
    assert all(checks)
    for a, b in zip(with_val, without_val, strict=True):
        assert_same_weights(a, b)
    assert {"val_loss", "val_mae", "val_rmse"} <= set(history.keys())
    assert history.monitor == "val_loss"


def test_kept_validation_windows_score_each_epoch_as_a_fresh_pass():
    # fit builds the validation windows once and reuses them every epoch; each epoch's
    # metrics must equal a pass over freshly built windows (padding, resets and a timeline
    # in play: variable lengths, several lanes).
    train = Lanes.from_sequences(variable_sequences(12), lanes=4, window=5, shuffle=True)
    validation = Lanes.from_sequences(variable_sequences(7, seed=9), lanes=3, window=4)
    model = make_model(num_layers=2, dropout=0.3)
    fresh: list[dict[str, float]] = []
    history = fit(
        model,
        train,
        validation=validation,
        epochs=4,
        on_epoch=lambda record: fresh.append(evaluate(model, validation)),
        **QUIET,
    )
    assert len(fresh) == 4
    for record, reference in zip(history.records, fresh, strict=True):
        for name in ("loss", "mae", "rmse"):
            assert record[f"val_{name}"] == reference[name], name


def test_window_cache_keeps_the_first_pass_within_its_budget():
    from seqstate.train.windows import WindowCache

    lanes = Lanes.from_sequences(variable_sequences(7, seed=9), lanes=3, window=4)
    cpu = torch.device("cpu")
    cache = WindowCache()
    first = list(cache.windows(lanes, None, cpu, torch.float32))
    again = list(cache.windows(lanes, None, cpu, torch.float32))
    assert len(first) == len(lanes) and all(a is b for a, b in zip(first, again, strict=True))
    other = Lanes.from_sequences(variable_sequences(7, seed=9), lanes=3, window=4)
    rebuilt = list(cache.windows(other, None, cpu, torch.float32))  # other lanes: built anew
    assert all(a is not b for a, b in zip(first, rebuilt, strict=True))
    for a, b in zip(first, rebuilt, strict=True):
        assert torch.equal(a.x, b.x) and torch.equal(a.reset, b.reset) and a.counted == b.counted
    tight = WindowCache(budget=0)  # nothing fits: every pass builds its windows
    once = list(tight.windows(lanes, None, cpu, torch.float32))
    twice = list(tight.windows(lanes, None, cpu, torch.float32))
    assert all(a is not b for a, b in zip(once, twice, strict=True))
    with pytest.raises(ValueError, match="budget"):
        WindowCache(budget=-1)


def test_window_cache_resumes_from_a_cursor_like_a_fresh_pass():
    from seqstate.train.windows import WindowCache, prepared_windows

    lanes = Lanes.from_sequences(variable_sequences(9, seed=4), lanes=2, window=5)
    cpu = torch.device("cpu")
    cache = WindowCache()
    late = list(cache.windows(lanes, None, cpu, torch.float32, start=2))  # not kept
    first = list(cache.windows(lanes, None, cpu, torch.float32))
    assert all(a is not b for a, b in zip(late, first[2:], strict=True))
    for start in range(len(lanes) + 1):
        kept = list(cache.windows(lanes, None, cpu, torch.float32, start=start))
        assert all(a is b for a, b in zip(kept, first[start:], strict=True))
        fresh = list(prepared_windows(lanes, None, cpu, torch.float32, start=start))
        assert len(kept) == len(fresh) == len(lanes) - start
        for a, b in zip(kept, fresh, strict=True):
            for name in ("x", "y", "mask", "reset", "seq"):
                assert torch.equal(getattr(a, name), getattr(b, name)), name
            assert (a.counted, a.real, a.label_range) == (b.counted, b.real, b.label_range)
    with pytest.raises(ValueError, match="past the end"):
        list(cache.windows(lanes, None, cpu, torch.float32, start=len(lanes) + 1))


def test_prepared_windows_count_real_and_counted_steps_and_read_the_labels():
    from seqstate.train.windows import prepared_windows

    sequences = variable_sequences(7, seed=2)
    labels = np.array([2, 0, 1, 1, 0, 2, 1])
    for lanes in (
        Lanes.from_sequences(sequences, lanes=3, window=4),
        Lanes.from_sequences(sequences, labels=labels, lanes=3, window=4),
    ):
        windows = list(prepared_windows(lanes, None, torch.device("cpu"), torch.float32))
        for window, plain in zip(windows, lanes.windows(), strict=True):
            assert window.real == int(plain.valid.sum())
            assert window.counted == int(plain.loss_mask.sum())
            assert (window.model_mask is None) == bool(plain.valid.all())
            if plain.y.is_floating_point() or not window.counted:
                assert window.label_range is None
            else:
                counted = plain.y[..., 0][plain.loss_mask]
                assert window.label_range == (int(counted.min()), int(counted.max()))


@pytest.mark.parametrize("shuffle", [False, True])
def test_training_windows_are_built_once_when_the_layout_is_fixed(monkeypatch, shuffle):
    """Without shuffle every epoch trains on the same windows: fit builds them in the first
    epoch and keeps them; with shuffle each epoch builds its own. Both train exactly as a fit
    that keeps nothing."""
    import seqstate.train.loop as loop_module
    from seqstate.train.windows import WindowCache

    lanes = Lanes.from_sequences(variable_sequences(10), lanes=3, window=6, shuffle=shuffle)
    built: list[int] = []
    plain_windows = Lanes.windows
    monkeypatch.setattr(
        Lanes,
        "windows",
        lambda self, epoch=0, **kw: built.append(epoch) or plain_windows(self, epoch, **kw),
    )
    kept = make_model(num_layers=2, dropout=0.2)
    kept_history = fit(kept, lanes, epochs=4, seed=3, **QUIET)
    assert built == ([0, 1, 2, 3] if shuffle else [0])

    built.clear()
    monkeypatch.setattr(loop_module, "WindowCache", lambda: WindowCache(budget=0))
    rebuilt = make_model(num_layers=2, dropout=0.2)
    rebuilt_history = fit(rebuilt, lanes, epochs=4, seed=3, **QUIET)
    assert len(built) == 4
    assert_same_weights(weights(kept), weights(rebuilt))
    assert kept_history["loss"] == rebuilt_history["loss"]


@settings(max_examples=60, deadline=None)
@given(
    start=st.floats(0, 1e6, allow_nan=False),
    windows=st.lists(
        st.tuples(st.floats(0, 1e4, allow_nan=False, width=32), st.integers(1, 10**6)),
        max_size=40,
    ),
    settle_at=st.sets(st.integers(0, 40)),
)
def test_epoch_sums_fold_windows_exactly_as_window_by_window_tensor_sums(start, windows, settle_at):
    """EpochSums keeps each window's loss and folds them in later; the total must be bitwise
    the float64 tensor sum taken window by window (the history and checkpoints hold it)."""
    from seqstate.train.replica import EpochSums

    reference = torch.tensor(start, dtype=torch.float64)
    sums = EpochSums(loss=torch.tensor(start, dtype=torch.float64))
    for index, (value, counted) in enumerate(windows):
        window_loss = torch.tensor(value, dtype=torch.float32)
        reference += window_loss.double() * counted
        sums.add(window_loss, counted)
        if index in settle_at:  # (a checkpoint or the progress bar reads it mid-epoch)
            sums.settle()
    assert sums.counted == sum(counted for _, counted in windows)
    assert sums.settle().loss.item() == reference.item()
    assert sums.to_dict()["loss"] == reference.item() and not sums.pending


def test_seeded_training_is_bitwise_deterministic():
    lanes = Lanes.from_sequences(variable_sequences(10), lanes=3, window=6, shuffle=True)
    runs = []
    for seed in (5, 5, 6):
        model = make_model(num_layers=2, dropout=0.25)
        history = fit(model, lanes, epochs=2, seed=seed, **QUIET)
        runs.append((weights(model), history["loss"]))
    assert_same_weights(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]
    assert not torch.equal(runs[0][0]["head.weight"], runs[2][0]["head.weight"])  # dropout


def test_early_stopping_restores_the_best_weights():
    lanes = Lanes.from_series(sine_series(200), lanes=4, window=10)
    per_epoch = []
    model = make_model()
    history = fit(
        model,
        lanes,
        validation=lanes,
        epochs=10,
        patience=2,
        min_delta=1e9,  # no epoch after the first counts as an improvement
        on_epoch=lambda record: per_epoch.append(weights(model)),
        **QUIET,
    )
    assert history.stopped_early
    assert len(history) == 3
    assert history.best_epoch == 0
    assert_same_weights(weights(model), per_epoch[0])

    kept = make_model()
    fit(
        kept,
        lanes,
        validation=lanes,
        epochs=3,
        patience=2,
        min_delta=1e9,
        restore_best=False,
        **QUIET,
    )
    assert torch.equal(kept.head.weight, per_epoch[-1]["head.weight"])


def test_learning_rate_schedules():
    lanes = Lanes.from_series(sine_series(100), lanes=2, window=25)
    cosine = fit(make_model(), lanes, epochs=4, lr=1.0, schedule="cosine", **QUIET)
    expected = [0.5 * (1 + np.cos(np.pi * e / 4)) for e in range(4)]
    assert cosine["lr"] == pytest.approx(expected)
    step = fit(make_model(), lanes, epochs=5, lr=1.0, schedule="step", lr_step=2, **QUIET)
    assert step["lr"] == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01])
    plateau = fit(
        make_model(),
        lanes,
        epochs=4,
        lr=1e-3,
        schedule="plateau",
        lr_patience=0,
        lr_factor=0.5,
        min_delta=0.0,
        **QUIET,
    )
    assert plateau["lr"][0] == 1e-3 and all(
        b <= a for a, b in zip(plateau["lr"], plateau["lr"][1:], strict=False)
    )
    sgd = fit(make_model(), lanes, epochs=1, optimizer="sgd", lr=1e-2, **QUIET)
    adamw = fit(make_model(), lanes, epochs=1, optimizer="adamw", weight_decay=0.1, **QUIET)
    assert np.isfinite(sgd["loss"][0]) and np.isfinite(adamw["loss"][0])


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------


def test_evaluate_does_not_depend_on_lanes_or_window():
    sequences = variable_sequences(9, seed=4)
    targets = [s[:, :1] * 2.0 for s in sequences]
    model = make_model(output_size=1)
    model.eval()
    results = [
        evaluate(model, Lanes.from_sequences(sequences, targets, lanes=lanes, window=window))
        for lanes, window in ((1, 50), (2, 7), (5, 3), (9, 16))
    ]
    for result in results[1:]:
        for key in ("loss", "mae", "rmse"):
            assert result[key] == pytest.approx(results[0][key], rel=1e-5)
    # ... and equals running each sequence alone, weighted by its steps.
    errors = []
    with torch.no_grad():
        for x, y in zip(sequences, targets, strict=True):
            pred, _ = model(torch.from_numpy(x)[None])
            errors.append((pred[0] - torch.from_numpy(y)).numpy())
    errors = np.concatenate(errors)
    assert results[0]["mae"] == pytest.approx(np.abs(errors).mean(), rel=1e-5)
    assert results[0]["rmse"] == pytest.approx(np.sqrt((errors**2).mean()), rel=1e-5)
    assert results[0]["loss"] == pytest.approx((errors**2).mean(), rel=1e-5)


def test_evaluate_restores_the_model_mode():
    model = make_model(dropout=0.0)
    model.train()
    evaluate(model, Lanes.from_series(sine_series(50), lanes=2, window=8))
    assert model.training


# --------------------------------------------------------------------------------------------
# Run directory
# --------------------------------------------------------------------------------------------


def test_metrics_file_appends_exactly_what_a_whole_rewrite_writes(tmp_path):
    from seqstate.train.runfiles import METRICS_FILE, MetricsFile, write_metrics

    records = [{"epoch": k, "loss": 1.0 / (k + 1), "val_loss": 0.5 + k} for k in range(5)]
    (tmp_path / "ref").mkdir()

    def reference(count: int) -> str:
        write_metrics(tmp_path / "ref", History(records=records[:count]))
        return (tmp_path / "ref" / METRICS_FILE).read_text()

    path = tmp_path / METRICS_FILE
    path.write_text("stale line from an interrupted epoch\n" * 9)  # first write: rewritten
    metrics = MetricsFile(tmp_path)
    for count in (2, 2, 3, 5):  # (2 twice: nothing new, nothing appended)
        metrics.write(History(records=records[:count]))
        assert path.read_text() == reference(count)
    metrics.write(History(records=records[:1]))  # fewer records than written: rewritten
    assert path.read_text() == reference(1)
    path.unlink()  # gone: written whole again
    metrics.write(History(records=records[:4]))
    assert path.read_text() == reference(4)


def test_metrics_file_is_strict_json_when_a_loss_diverges(tmp_path):
    from seqstate.train.runfiles import METRICS_FILE, MetricsFile

    def strict(text: str) -> dict:
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))

    records = [
        {"epoch": 0, "loss": 1.5, "val_loss": float("inf")},
        {"epoch": 1, "loss": float("nan"), "val_loss": float("-inf")},
    ]
    metrics = MetricsFile(tmp_path)
    metrics.write(History(records=records[:1]))  # whole
    metrics.write(History(records=records))  # appended
    lines = [strict(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
    assert lines == [
        {"epoch": 1, "epoch_index": 0, "loss": 1.5, "val_loss": None},
        {"epoch": 2, "epoch_index": 1, "loss": None, "val_loss": None},
    ]


def test_run_dir_holds_model_metrics_and_plot(tmp_path):
    lanes = Lanes.from_series(sine_series(200), lanes=4, window=10)
    model = make_model()
    history = fit(model, lanes, validation=lanes, epochs=2, run_dir=tmp_path, **QUIET)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # metrics.jsonl numbers epochs from 1, as printed; epoch_index is the History's index.
    assert [{**r, "epoch": r["epoch"] - 1} for r in records] == [
        {**r, "epoch_index": r["epoch"]} for r in history.records
    ]
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loaded = load_model(tmp_path)
    x = torch.from_numpy(sine_series(30))[None]
    with torch.no_grad():
        assert torch.equal(loaded(x)[0], model(x)[0])  # the same weights, the same kernels
    metadata = json.loads((tmp_path / "model.json").read_text())["metadata"]
    assert metadata["fit"] == FitConfig(epochs=2, progress=False).to_dict()
    assert metadata["loss"] == "mse"


def test_custom_module_trains_with_run_dir(tmp_path):
    torch.manual_seed(0)
    model = RecordingGRU(2, 2)
    history = fit(
        model,
        Lanes.from_series(sine_series(100), lanes=2, window=10),
        epochs=2,
        run_dir=tmp_path,
        **QUIET,
    )
    assert len(history) == 2
    assert (tmp_path / "checkpoint" / "latest").is_file()
    assert not (tmp_path / "model.json").exists()  # no config to save a custom module with


def test_progress_bar_shows_loss_and_throughput(capsys, monkeypatch):
    import seqstate.train.loop as train_module

    monkeypatch.setattr(train_module, "_PROGRESS_REFRESH", 0.0)
    lanes = Lanes.from_series(sine_series(100), lanes=2, window=10)
    fit(make_model(), lanes, epochs=1, progress="bar")
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "loss=" in err and "steps/s=" in err
    fit(make_model(), lanes, epochs=1, **QUIET)
    assert capsys.readouterr().err == ""


def test_progress_in_a_log_is_one_line_per_epoch(capsys):
    # stderr is not a terminal here: the default (auto) writes lines, no carriage returns.
    fit(make_model(), Lanes.from_series(sine_series(100), lanes=2, window=10), epochs=3)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert [line.split("  ")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert "loss " in lines[0] and "steps/s" in lines[0] and "\r" not in err


def test_plot_and_checkpoint_follow_their_schedules(tmp_path, monkeypatch):
    import seqstate.train.loop as loop

    written = {"plot": [], "checkpoint": []}
    real_plot, real_save = loop.write_plot, loop.save_snapshot
    monkeypatch.setattr(
        loop, "write_plot", lambda d, h: (written["plot"].append(len(h)), real_plot(d, h))
    )
    monkeypatch.setattr(
        loop,
        "save_snapshot",
        lambda d, name, s: (written["checkpoint"].append(name), real_save(d, name, s))[1],
    )
    lanes = Lanes.from_series(sine_series(100), lanes=2, window=10)
    fit(
        make_model(),
        lanes,
        epochs=7,
        run_dir=tmp_path / "a",
        plot_every="3",
        epoch_checkpoints="end",
        **QUIET,
    )
    assert written["plot"] == [3, 6, 7]  # every 3 epochs, and the last
    assert written["checkpoint"] == ["e00007-w0000000"]  # only the end
    assert (tmp_path / "a" / "loss.png").is_file()
    written["plot"].clear()
    written["checkpoint"].clear()
    fit(
        make_model(),
        lanes,
        epochs=4,
        run_dir=tmp_path / "b",
        plot_every="1",
        epoch_checkpoints="2",
        **QUIET,
    )
    assert written["plot"] == [1, 2, 3, 4]
    assert written["checkpoint"] == ["e00002-w0000000", "e00004-w0000000"]


def test_background_writer_runs_one_job_at_a_time_in_order_and_reports_errors():
    import threading

    from seqstate.train.runfiles import BackgroundWriter

    writer = BackgroundWriter()
    done: list[int] = []
    running = threading.Event()

    def job(number: int) -> None:
        assert not running.is_set()  # never two at once
        running.set()
        done.append(number)
        running.clear()

    for number in range(5):
        writer.submit(job, number)
    writer.wait()
    assert done == [0, 1, 2, 3, 4]

    def failing() -> None:
        raise OSError("disk full")

    writer.submit(failing)
    with pytest.raises(OSError, match="disk full"):
        writer.wait()
    writer.wait()  # reported once
    writer.submit(failing)
    writer.wait(raise_error=False)  # dropped when another error is being reported
    writer.wait()


def test_a_failed_plot_fails_fit_and_fit_returns_after_the_plot(tmp_path, monkeypatch):
    import seqstate.train.loop as loop

    lanes = Lanes.from_series(sine_series(100), lanes=2, window=10)
    finished: list[int] = []
    real_plot = loop.write_plot

    def slow_plot(run_dir, history):
        real_plot(run_dir, history)
        finished.append(len(history))

    monkeypatch.setattr(loop, "write_plot", slow_plot)
    fit(make_model(), lanes, epochs=3, run_dir=tmp_path / "a", plot_every="1", **QUIET)
    assert finished == [1, 2, 3]  # every plot is written when fit returns

    def failing_plot(run_dir, history):
        raise OSError("no space left for loss.png")

    monkeypatch.setattr(loop, "write_plot", failing_plot)
    with pytest.raises(OSError, match="no space left"):
        fit(make_model(), lanes, epochs=2, run_dir=tmp_path / "b", **QUIET)

    def stop(record):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "write_plot", slow_plot)
    finished.clear()
    with pytest.raises(KeyboardInterrupt):  # the training error wins; the plot is finished
        fit(
            make_model(),
            lanes,
            epochs=3,
            run_dir=tmp_path / "c",
            plot_every="1",
            on_epoch=stop,
            **QUIET,
        )
    assert finished == [1]


# --------------------------------------------------------------------------------------------
# Configuration and bad input
# --------------------------------------------------------------------------------------------


def test_fit_config_json_round_trip():
    config = FitConfig(epochs=3, loss="huber", schedule="plateau", patience=4, seed=None)
    assert FitConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="unknown fit config keys"):
        FitConfig.from_dict({"epochs": 2, "lr_decay": 0.1})


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        ({"epochs": 0}, ValueError, "epochs must be an int >= 1; received 0"),
        ({"epochs": 2.5}, TypeError, "epochs must be an int"),
        ({"loss": "hinge"}, ValueError, "loss must be one of"),
        ({"optimizer": "lion"}, ValueError, "optimizer must be one of"),
        ({"schedule": "linear"}, ValueError, "schedule must be one of"),
        ({"lr": 0.0}, ValueError, "lr must be a finite number > 0"),
        ({"lr": float("nan")}, ValueError, "lr must be a finite number"),
        ({"clip_grad_norm": -1.0}, ValueError, "clip_grad_norm"),
        ({"patience": 0}, ValueError, "Use None to turn early stopping off"),
        ({"lr_factor": 1.5}, ValueError, "lr_factor must be in"),
        ({"device": "tpu:x"}, ValueError, "device must be"),
        ({"progress": "yes"}, ValueError, "progress must be True, False or one of"),
        ({"progress": 1.0}, TypeError, "progress must be True, False or one of"),
        ({"plot_every": "often"}, ValueError, "plot_every must be a schedule like"),
        ({"epoch_checkpoints": 0}, ValueError, "epoch_checkpoints must be a schedule"),
        ({"checkpoint_every": 0}, ValueError, "checkpoint_every"),
    ],
)
def test_bad_fit_config_is_refused(fields, error, message):
    with pytest.raises(error, match=message):
        FitConfig(**fields)


def test_bad_input_fails_before_training_and_changes_nothing(tmp_path):
    series = sine_series(100)
    lanes = Lanes.from_series(series, lanes=2, window=10)
    model = make_model()
    before = weights(model)
    run_dir = tmp_path / "run"
    cases = [
        (
            lambda: fit(make_model(input_size=3), lanes, run_dir=run_dir, **QUIET),
            ValueError,
            r"train has 2 features per step but the model expects input_size=3;"
            r".*a model with input_size=2\)",
        ),
        (
            lambda: fit(
                model,
                lanes,
                validation=Lanes.from_series(series[:, :1], lanes=2, window=5),
                run_dir=run_dir,
                **QUIET,
            ),
            ValueError,
            "validation has 1 features",
        ),
        (lambda: fit(model, lanes, loss="hinge"), ValueError, "loss must be one of"),
        (lambda: fit(model, lanes, optimizer="lion"), ValueError, "optimizer must be one of"),
        (lambda: fit(model, lanes, epochs=0), ValueError, "epochs must be an int >= 1"),
        (lambda: fit(model, lanes, learning_rate=0.1), TypeError, "unknown keyword arguments"),
        (lambda: fit(model, series), TypeError, "train must be seqstate.Lanes"),
        (lambda: fit(model, lanes, config={"epochs": 1}), TypeError, "config must be a FitC"),
        (lambda: fit(nn.Linear(2, 2), lanes), TypeError, "initial_state"),
        (
            lambda: fit(model, Lanes.from_series(series, lanes=2, window=10, targets=None)),
            ValueError,
            "has no targets",
        ),
        (
            lambda: fit(make_model(output_size=1), lanes),
            ValueError,
            "train has 2 targets per step but the model has output_size=1",
        ),
        (lambda: fit(model, lanes, resume=True), ValueError, "resume=True needs run_dir"),
        (lambda: fit(model, lanes, resume=tmp_path), FileNotFoundError, "no training checkpoint"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
    assert_same_weights(before, weights(model))
    assert not run_dir.exists()


def test_classification_target_mismatches_are_explained():
    sequences = variable_sequences(6, features=1)
    float_labels = Lanes.from_sequences(sequences, labels=np.linspace(0, 1, 6), lanes=2, window=4)
    int_labels = Lanes.from_sequences(sequences, labels=np.arange(6) % 2, lanes=2, window=4)
    classifier = SequenceModel(input_size=1, output_size=2, task="classification")
    regressor = SequenceModel(input_size=1, output_size=1)
    with pytest.raises(ValueError, match="classification model needs integer class labels"):
        fit(classifier, float_labels, **QUIET)
    with pytest.raises(ValueError, match="needs float targets but train holds integer"):
        fit(regressor, int_labels, **QUIET)
    with pytest.raises(ValueError, match=r"class labels must be in \[0, 2\)"):
        fit(
            classifier,
            Lanes.from_sequences(sequences, labels=np.arange(6), lanes=2, window=4),
            **QUIET,
        )
    with pytest.raises(ValueError, match="loss must be one of"):
        evaluate(classifier, int_labels, loss="hinge")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_device_without_cuda_is_refused():
    with pytest.raises(ValueError, match="CUDA is not available"):
        fit(make_model(), Lanes.from_series(sine_series(50), lanes=2, window=5), device="cuda")


def test_windows_without_counted_targets_do_not_step_the_optimizer():
    # One label per sequence, counted at its last step: windows 0 and 1 of this lane (steps
    # 0-7 of a 10-step sequence) have no target, so the weights must not move there.
    sequence = np.linspace(-1, 1, 10, dtype=np.float32)[:, None]
    lanes = Lanes.from_sequences([sequence], labels=np.array([1]), lanes=1, window=4)
    torch.manual_seed(0)
    model = SequenceModel(input_size=1, output_size=2, hidden_size=4, task="classification")
    start = weights(model)
    after: list[tuple[torch.Tensor | None, dict]] = []
    fit(
        model,
        lanes,
        epochs=1,
        on_window=lambda end: after.append((end.loss, weights(model))),
        **QUIET,
    )
    assert [loss is None for loss, _ in after] == [True, True, False]
    assert_same_weights(after[0][1], start)
    assert_same_weights(after[1][1], start)
    assert not torch.equal(after[2][1]["head.weight"], start["head.weight"])


class Exploding(RecordingGRU):
    def forward(self, x, state=None, reset=None, mask=None):
        y, state = super().forward(x, state, reset, mask)
        return y * float("inf"), state


def test_non_finite_loss_stops_with_an_explanation(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(FloatingPointError, match="training loss became nan in epoch 0"):
        fit(
            Exploding(2, 2),
            Lanes.from_series(sine_series(60), lanes=2, window=10),
            run_dir=tmp_path,
            **QUIET,
        )
    assert not (tmp_path / "metrics.jsonl").exists()  # the failed epoch is not recorded


# --------------------------------------------------------------------------------------------
# The window's timeline reaches the layers
# --------------------------------------------------------------------------------------------


def test_fit_and_evaluate_hand_each_windows_timeline_to_the_layers(monkeypatch):
    """Lanes plans each window once (Window.timeline); the training step and evaluation pass
    it through the model, so no layer plans a window again."""
    import seqstate.core.layers as layers_module

    calls = []
    planner = layers_module.plan_window
    monkeypatch.setattr(
        layers_module, "plan_window", lambda *args: calls.append(1) or planner(*args)
    )
    lanes = Lanes.from_sequences(variable_sequences(10), lanes=3, window=6)
    assert any(not w.timeline.plain for w in lanes.windows())  # resets inside rows, padding
    model = make_model(dropout=0.0)
    fit(model, lanes, epochs=1, validation=lanes, clip_grad_norm=None, seed=None, **QUIET)
    evaluate(model, lanes)
    assert calls == []


def test_call_model_passes_the_timeline_only_where_it_is_taken():
    from seqstate.train.tensors import call_model, takes_timeline

    model = make_model()
    assert takes_timeline(model) and takes_timeline(model.distribution_parameters)

    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = make_model()

        def forward(self, x, state=None, reset=None, mask=None):
            return self.inner(x, state, reset=reset, mask=mask)

        def initial_state(self, batch_size):
            return self.inner.initial_state(batch_size)

    plain = Plain()
    assert not takes_timeline(plain)
    window = next(iter(Lanes.from_sequences(variable_sequences(6), lanes=2, window=5).windows()))
    timeline = window.timeline
    plain.inner.load_state_dict(model.state_dict())
    y_plain, _ = call_model(plain, window.x, None, timeline.reset, timeline.mask, timeline)
    y, _ = call_model(model, window.x, None, timeline.reset, timeline.mask, timeline)
    torch.testing.assert_close(y, y_plain, rtol=0, atol=0)
