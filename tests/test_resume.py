"""Exact resume: an interrupted fit continued from its checkpoint ends bitwise where an
uninterrupted run ends; a checkpoint that cannot be continued exactly is refused."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open

from seqstate.core.model import SequenceModel
from seqstate.lanes.lanes import Lanes
from seqstate.train import FitConfig, WindowEnd, fit
from seqstate.train.snapshots import decode, encode, load_snapshot

pytestmark = pytest.mark.numerics  # run again on another kernel path: scripts/test

CONFIG = FitConfig(
    epochs=3,
    lr=5e-3,
    schedule="plateau",  # scheduler state with inf in it
    lr_patience=0,
    patience=5,  # early-stopping bookkeeping and best weights in the checkpoint
    checkpoint_every=4,
    progress=False,
    seed=3,
)


class Interrupted(Exception):
    pass


def sequences(count: int = 14, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.standard_normal((int(rng.integers(3, 16)), 2)).astype(np.float32) for _ in range(count)
    ]


def make_lanes(window: int = 5, shuffle: bool = True) -> Lanes:
    return Lanes.from_sequences(sequences(), lanes=3, window=window, shuffle=shuffle, seed=1)


def make_model(**fields) -> SequenceModel:
    torch.manual_seed(0)
    fields = {
        "input_size": 2,
        "output_size": 2,
        "hidden_size": 10,
        "num_layers": 2,
        "dropout": 0.3,
        **fields,
    }
    return SequenceModel(**fields)


def interrupt_after(windows: int):
    seen = {"count": 0}

    def on_window(end: WindowEnd) -> None:
        seen["count"] += 1
        if seen["count"] == windows:
            raise Interrupted(f"stopped after {windows} windows")

    return on_window


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    # Exact resume is bitwise on every CPU: the resumed run makes the same kernel calls on the
    # same shapes in one process (one thread) from exactly restored values.
    for (key, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), key


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("seconds", "steps_per_s")} for r in records]


@pytest.mark.parametrize(
    "stop_after",
    [
        6,  # mid-epoch 0, two windows past the last checkpoint: they are replayed
        8,  # exactly at a window checkpoint
        12,  # in epoch 1 (shuffled differently), past an epoch-end checkpoint
    ],
)
# without shuffle fit keeps the first epoch's windows: a resumed epoch starts past window 0
@pytest.mark.parametrize("shuffle", [True, False])
def test_interrupted_run_resumes_bitwise(tmp_path, stop_after, shuffle):
    validation = Lanes.from_sequences(sequences(4, seed=7), lanes=2, window=6)
    reference = make_model()
    expected = fit(reference, make_lanes(shuffle=shuffle), validation=validation, config=CONFIG)

    model = make_model()
    with pytest.raises(Interrupted):
        fit(
            model,
            make_lanes(shuffle=shuffle),
            validation=validation,
            config=CONFIG,
            run_dir=tmp_path,
            on_window=interrupt_after(stop_after),
        )
    torch.manual_seed(12345)  # the resumed process starts from unrelated RNG states
    np.random.seed(12345)
    resumed_model = make_model()
    resumed = fit(
        resumed_model,
        make_lanes(shuffle=shuffle),
        validation=validation,
        run_dir=tmp_path,
        resume=True,
    )

    assert_same_weights(reference, resumed_model)
    assert without_timing(resumed.records) == without_timing(expected.records)
    assert resumed.best_epoch == expected.best_epoch
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


@pytest.mark.parametrize("schedule", ["2", "end", "1,30s"])
def test_resume_is_exact_with_epoch_checkpoint_schedules(tmp_path, schedule):
    # Epoch-end checkpoints on a schedule: an interruption replays from the last one written
    # (or from the start) and still ends bitwise where the uninterrupted run ends.
    import dataclasses

    config = dataclasses.replace(
        CONFIG, epochs=4, checkpoint_every=None, epoch_checkpoints=schedule, plot_every="end"
    )
    reference = make_model()
    expected = fit(reference, make_lanes(), config=config)
    windows_per_epoch = make_lanes().num_windows(0)
    model = make_model()
    with pytest.raises(Interrupted):
        fit(
            model,
            make_lanes(),
            config=config,
            run_dir=tmp_path,
            on_window=interrupt_after(3 * windows_per_epoch + 2),
        )
    if schedule == "end":  # nothing was written before the end: nothing to resume from
        assert not (tmp_path / "checkpoint" / "latest").exists()
        with pytest.raises(FileNotFoundError, match="no training checkpoint"):
            fit(make_model(), make_lanes(), run_dir=tmp_path, resume=True)
        return
    resumed_model = make_model()
    resumed = fit(resumed_model, make_lanes(), run_dir=tmp_path, resume=True)
    assert_same_weights(reference, resumed_model)
    assert without_timing(resumed.records) == without_timing(expected.records)


def test_resume_from_another_directory_and_extend_epochs(tmp_path):
    lanes = make_lanes()
    config = FitConfig(epochs=2, progress=False, checkpoint_every=3)
    first = make_model()
    fit(first, lanes, config=config, run_dir=tmp_path / "a")
    continued = make_model()
    history = fit(continued, lanes, resume=tmp_path / "a", run_dir=tmp_path / "b", epochs=3)
    reference = make_model()
    fit(reference, lanes, config=config, epochs=3)
    assert_same_weights(reference, continued)
    assert len(history) == 3
    assert (tmp_path / "b" / "model.json").is_file()


def test_resume_of_a_finished_run_changes_nothing(tmp_path):
    lanes = make_lanes()
    model = make_model()
    fit(model, lanes, epochs=1, progress=False, run_dir=tmp_path)
    again = make_model()
    history = fit(again, lanes, run_dir=tmp_path, resume=True)
    assert len(history) == 1
    assert_same_weights(model, again)


def test_checkpoint_is_complete_and_pickle_free(tmp_path):
    model = make_model()
    with pytest.raises(Interrupted):
        fit(model, make_lanes(), config=CONFIG, run_dir=tmp_path, on_window=interrupt_after(5))
    directory = tmp_path / "checkpoint"
    latest = (directory / "latest").read_text()
    assert latest == "e00000-w0000004"
    assert sorted(p.name for p in directory.iterdir()) == ["e00000-w0000004", "latest"]
    files = sorted(p.name for p in (directory / latest).iterdir())
    # No best weights yet: they appear once an epoch has ended.
    assert files == [
        "optimizer.safetensors",
        "rng.safetensors",
        "state.safetensors",
        "train.json",
        "weights.safetensors",
    ]
    snapshot = load_snapshot(directory)
    assert snapshot.info["epoch"] == 0 and snapshot.info["cursor"] == 4
    assert snapshot.carried_state is not None and snapshot.best_weights is None
    json.loads((directory / latest / "train.json").read_text())  # strict JSON (no NaN/inf)
    for name in files:
        if name.endswith(".safetensors"):  # plain safetensors, nothing to unpickle
            with safe_open(directory / latest / name, framework="pt") as handle:
                assert list(handle.keys())


def test_snapshot_codec_round_trips_optimizer_structures():
    value = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2, 3)}},
        "param_groups": [{"betas": (0.9, 0.999), "lr": 1e-3, "params": [0], "fused": None}],
        "best": math.inf,
        "worse": -math.inf,
    }
    tensors: dict[str, torch.Tensor] = {}
    text = json.dumps(encode(value, tensors, "optimizer"), allow_nan=False)
    back = decode(json.loads(text), tensors)
    assert back["param_groups"][0]["betas"] == (0.9, 0.999)
    assert list(back["state"]) == [0]
    assert torch.equal(back["state"][0]["exp_avg"], torch.ones(2, 3))
    assert back["best"] == math.inf and back["worse"] == -math.inf
    with pytest.raises(TypeError, match="only tensors, numbers"):
        encode({"bad": object()}, {}, "x")


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    """A run stopped in epoch 1 (epoch 0 has 11 windows), last checkpoint at window 12."""
    run_dir = tmp_path_factory.mktemp("interrupted")
    model = make_model()
    with pytest.raises(Interrupted):
        fit(model, make_lanes(), config=CONFIG, run_dir=run_dir, on_window=interrupt_after(14))
    return run_dir


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": {"hidden_size": 11}}, "the model .* differs"),
        ({"model": {"dropout": 0.1}}, "the model .* differs"),
        ({"lanes": {"window": 6}}, "training data or lane layout .* window=5 but received 6"),
        ({"config": {"lr": 1e-2}}, r"FitConfig fields changed \(lr: 0.005 -> 0.01\)"),
        ({"config": {"seed": 4}}, "FitConfig fields changed"),
        (
            {"config": {"epochs": 1}},
            "stopped at epoch 1, window 1, past epochs=1; give epochs >= 2",
        ),
    ],
)
def test_resume_refuses_what_it_cannot_continue_exactly(interrupted_run, change, message):
    snapshot_before = (interrupted_run / "checkpoint" / "latest").read_text()
    model = make_model(**change.get("model", {}))
    weights_before = {k: v.clone() for k, v in model.state_dict().items()}
    lanes = make_lanes(**change.get("lanes", {}))
    overrides = change.get("config", {})
    with pytest.raises(ValueError, match=message):
        fit(model, lanes, run_dir=interrupted_run, resume=True, **overrides)
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights_before[key])
    assert (interrupted_run / "checkpoint" / "latest").read_text() == snapshot_before


def test_resume_allows_progress_and_checkpoint_frequency_to_change(interrupted_run, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(interrupted_run, run_dir)
    model = make_model()
    history = fit(
        model, make_lanes(), run_dir=run_dir, resume=True, checkpoint_every=2, progress=True
    )
    assert len(history) == CONFIG.epochs


@pytest.mark.parametrize(("first", "then"), [("mse", None), (None, "mse")])
def test_resume_reads_the_default_loss_as_its_name(tmp_path, first, then):
    # loss=None is the model's default loss ("mse" here): naming it, or leaving it out, on
    # resume continues the same run; another loss is still refused.
    with pytest.raises(Interrupted):
        fit(
            make_model(),
            make_lanes(),
            config=dataclasses.replace(CONFIG, loss=first),
            run_dir=tmp_path / "run",
            on_window=interrupt_after(14),
        )
    resumed = make_model()
    fit(
        resumed,
        make_lanes(),
        config=dataclasses.replace(CONFIG, loss=then),
        run_dir=tmp_path / "a",
        resume=tmp_path / "run",
    )
    whole = make_model()
    fit(whole, make_lanes(), config=CONFIG, run_dir=tmp_path / "b")
    assert_same_weights(resumed, whole)
    with pytest.raises(ValueError, match="the loss differs"):
        fit(
            make_model(),
            make_lanes(),
            config=dataclasses.replace(CONFIG, loss="mae"),
            run_dir=tmp_path / "c",
            resume=tmp_path / "run",
        )


def test_resume_on_other_values_of_the_same_layout_is_refused(interrupted_run, tmp_path):
    # The checkpoint's signature held the lanes' layout only: a resume on other data of the
    # same lengths continued silently. The data's digest is kept and compared now; a
    # checkpoint written before it (no digest) still resumes.
    other = [s + 1.0 for s in sequences()]
    lanes = Lanes.from_sequences(other, lanes=3, window=5, shuffle=True, seed=1)
    with pytest.raises(ValueError, match=r"training data or lane layout .* data="):
        fit(make_model(), lanes, run_dir=interrupted_run, resume=True)
    legacy = tmp_path / "legacy"
    shutil.copytree(interrupted_run, legacy)
    folder = legacy / "checkpoint" / (legacy / "checkpoint" / "latest").read_text().strip()
    document = json.loads((folder / "train.json").read_text())
    del document["signature"]["train"]["data"]  # as a checkpoint of the previous release
    (folder / "train.json").write_text(json.dumps(document, indent=1, sort_keys=True))
    resumed = make_model()
    history = fit(resumed, make_lanes(), run_dir=legacy, resume=True)
    assert len(history) == CONFIG.epochs


def test_a_non_finite_validation_loss_is_checkpointed_and_resumed_exactly(tmp_path):
    # inf in the history (a validation set the model cannot fit) used to fail every checkpoint
    def sequences(seed: int, scale: float = 1.0) -> list[np.ndarray]:
        rng = np.random.default_rng(seed)
        return [scale * rng.standard_normal((8, 2)).astype(np.float32) for _ in range(6)]

    train = Lanes.from_sequences(sequences(0), lanes=2, window=4)
    validation = Lanes.from_sequences(sequences(9, 1e20), lanes=2, window=4)
    torch.manual_seed(0)
    whole = SequenceModel(input_size=2, output_size=2, hidden_size=4)
    history = fit(
        whole, train, validation=validation, epochs=3, progress=False, run_dir=tmp_path / "a"
    )
    assert history["val_loss"][0] == math.inf

    class Stop(Exception):
        pass

    def stop_in_epoch_two(end: WindowEnd) -> None:
        if end.epoch == 1 and end.window == 1:
            raise Stop

    torch.manual_seed(0)
    model = SequenceModel(input_size=2, output_size=2, hidden_size=4)
    config = {"epochs": 3, "progress": False, "checkpoint_every": 1}
    with pytest.raises(Stop):
        fit(
            model,
            train,
            validation=validation,
            run_dir=tmp_path / "b",
            on_window=stop_in_epoch_two,
            **config,
        )
    records = load_snapshot(tmp_path / "b" / "checkpoint").info["history"]["records"]
    assert [r["val_loss"] for r in records] == [math.inf]
    resumed = fit(
        model, train, validation=validation, run_dir=tmp_path / "b", resume=True, **config
    )
    assert resumed["val_loss"] == history["val_loss"]
    for name, value in whole.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
