"""Distributed fit: 2 gloo ranks x 16 lanes == 1 process x 32 lanes.

One ``torchrun --nproc_per_node 2`` job (this file run as a script, on 127.0.0.1) runs every
distributed scenario and writes its results; the tests compare them with single-process runs
of the same scenarios made here. Not bitwise: a gradient summed over 2 x 16 rows then added
across ranks is not rounded like one sum over 32 rows, so the float64 scenarios are compared at
1e-9 relative and the float32 one at 1e-5 (runs on the same world size, e.g. a 2-rank resume
against an uninterrupted 2-rank run, are compared bitwise).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from seqstate.core.model import SequenceModel
from seqstate.lanes.lanes import Lanes
from seqstate.train import FitConfig, History, WindowEnd, fit

WORLD_SIZE = 2
JOB_TIMEOUT = 240  # seconds for the whole torchrun job; it normally takes well under a minute
STATE_AT = (0, 3)  # (epoch, window) after which the carried state rows are compared

# --------------------------------------------------------------------------------------------
# Scenarios: shared by the torchrun workers and the single-process references
# --------------------------------------------------------------------------------------------


class Interrupted(Exception):
    pass


def sequences(count: int, seed: int, low: int = 2, high: int = 25) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.standard_normal((int(rng.integers(low, high)), 2)).astype(np.float32)
        for _ in range(count)
    ]


def train_lanes(lanes: int = 32) -> Lanes:
    # Variable lengths: padding, resets mid-window, and different counted steps per rank.
    return Lanes.from_sequences(sequences(80, seed=1), lanes=lanes, window=4, shuffle=True, seed=7)


def validation_lanes() -> Lanes:
    # 5 lanes: 3 on rank 0, 2 on rank 1.
    return Lanes.from_sequences(sequences(9, seed=2), lanes=5, window=4)


def idle_rank_lanes() -> Lanes:
    # Lanes 2 and 3 (rank 1) hold only 3 steps each: rank 1 is pure padding after window 0.
    rng = np.random.default_rng(3)
    lengths = [20, 20, 3, 3]
    return Lanes.from_sequences(
        [rng.standard_normal((n, 2)).astype(np.float32) for n in lengths], lanes=4, window=4
    )


def label_lanes(count: int, seed: int, lanes: int) -> Lanes:
    seqs = sequences(count, seed)
    labels = np.array([int(s[:, 0].sum() > 0) + int(len(s) > 12) for s in seqs], dtype=np.int64)
    return Lanes.from_sequences(seqs, labels=labels, lanes=lanes, window=5)


def make_model(dtype: torch.dtype = torch.float64, **fields: Any) -> SequenceModel:
    torch.manual_seed(0)
    fields = {"input_size": 2, "output_size": 2, "hidden_size": 8, "num_layers": 2, **fields}
    return SequenceModel(**fields).to(dtype)


CONFIG = FitConfig(epochs=2, lr=1e-2, progress=False, seed=11, clip_grad_norm=0.5)
CHECKPOINTED = FitConfig(
    epochs=2, lr=1e-2, progress=False, seed=11, checkpoint_every=3, schedule="cosine"
)


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def stop_after(windows: int, record: dict[str, Any] | None = None):
    """on_window hook: keep the state after STATE_AT in ``record``; raise after ``windows``."""
    seen = {"count": 0}

    def on_window(end: WindowEnd) -> None:
        if record is not None and (end.epoch, end.window) == STATE_AT:
            record["state"] = end.state
        seen["count"] += 1
        if seen["count"] == windows:
            raise Interrupted

    return on_window


def interrupted_fit(*args: Any, **kwargs: Any) -> None:
    try:
        fit(*args, **kwargs)
    except Interrupted:
        return
    raise AssertionError("the on_window interrupt did not happen")


def interrupt_point() -> int:
    # Mid-epoch 1, two windows past the last checkpoint (every 3 windows).
    first = train_lanes().num_windows(0)
    return first + 5


# --------------------------------------------------------------------------------------------
# The torchrun worker (this file run as a script)
# --------------------------------------------------------------------------------------------


def worker(out: Path) -> None:
    from seqstate.train.distributed import distributed

    torch.set_num_threads(1)
    with distributed(timeout=120) as info:
        rank = info.rank
        results: dict[str, Any] = {"rank": rank, "world_size": info.world_size}
        tensors: dict[str, torch.Tensor] = {}
        barrier = torch.distributed.barrier

        # A: equivalence + interrupted/resumed under 2 ranks (float64, LSTM, validation).
        record: dict[str, Any] = {}
        run_a = out / "A"
        interrupted_fit(
            make_model(),
            train_lanes(),
            validation=validation_lanes(),
            config=CHECKPOINTED,
            run_dir=run_a,
            on_window=stop_after(interrupt_point(), record),
        )
        barrier()
        if rank == 0:  # keep the 2-rank checkpoint for a 1-process resume in the tests
            shutil.copytree(run_a / "checkpoint", out / "A-interrupted" / "checkpoint")
        barrier()
        model = make_model()
        history = fit(
            model, train_lanes(), validation=validation_lanes(), run_dir=run_a, resume=True
        )
        results["A"] = history.to_dict()
        tensors.update({f"A.{k}": v for k, v in weights(model).items()})
        tensors.update({f"A.state.{i}": t for i, t in enumerate(record["state"].tensors())})

        # B: a single-process checkpoint (made by the test) resumed under 2 ranks.
        model = make_model()
        history = fit(model, train_lanes(), validation=validation_lanes(), resume=out / "B")
        results["B"] = history.to_dict()
        tensors.update({f"B.{k}": v for k, v in weights(model).items()})

        # C: rank 1 has no real step after window 0 (GRU, float64).
        model = make_model(cell="gru")
        fit(model, idle_rank_lanes(), config=CONFIG)
        tensors.update({f"C.{k}": v for k, v in weights(model).items()})

        # D: classification in float32, validation accuracy reduced across ranks.
        model = make_model(torch.float32, task="classification", output_size=3)
        history = fit(
            model,
            label_lanes(40, seed=4, lanes=16),
            validation=label_lanes(11, seed=5, lanes=3),
            config=CONFIG,
        )
        results["D"] = history.to_dict()
        tensors.update({f"D.{k}": v for k, v in weights(model).items()})

        # E: dropout; resumed 2-rank run == uninterrupted 2-rank run, bitwise.
        dropout = {"dropout": 0.3}
        model = make_model(**dropout)
        fit(model, train_lanes(), config=CHECKPOINTED, run_dir=out / "E-whole")
        tensors.update({f"E-whole.{k}": v for k, v in weights(model).items()})
        interrupted_fit(
            make_model(**dropout),
            train_lanes(),
            config=CHECKPOINTED,
            run_dir=out / "E",
            on_window=stop_after(interrupt_point()),
        )
        model = make_model(**dropout)
        fit(model, train_lanes(), run_dir=out / "E", resume=True)
        tensors.update({f"E.{k}": v for k, v in weights(model).items()})

        # F: refusals, raised on every rank at the same point (no rank left waiting).
        errors = {}
        for name, call in (
            ("indivisible", lambda: fit(make_model(), train_lanes(lanes=15), config=CONFIG)),
            ("mismatch", lambda: fit(make_model(), train_lanes(), lr=1e-2 * (1 + rank))),
        ):
            try:
                call()
                errors[name] = None
            except ValueError as error:
                errors[name] = str(error)
        results["errors"] = errors

        (out / f"rank{rank}.json").write_text(json.dumps(results))
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / f"rank{rank}.st"))


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def job(tmp_path_factory, one_thread) -> Path:
    """Run every distributed scenario in one torchrun job; return its output directory."""
    out = tmp_path_factory.mktemp("distributed")
    # B's input: a single-process run interrupted mid-epoch 1.
    interrupted_fit(
        make_model(),
        train_lanes(),
        validation=validation_lanes(),
        config=CHECKPOINTED,
        run_dir=out / "B",
        on_window=stop_after(interrupt_point()),
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        f"--nproc_per_node={WORLD_SIZE}",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        __file__,
        str(out),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="error")
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,  # its own process group: a timeout kills launcher and workers
    )
    try:
        output, _ = process.communicate(timeout=JOB_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"torchrun job exceeded {JOB_TIMEOUT}s; output:\n{output[-4000:]}")
    assert process.returncode == 0, f"torchrun job failed:\n{output[-6000:]}"
    return out


def rank_results(job: Path, rank: int) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    return json.loads((job / f"rank{rank}.json").read_text()), load_file(
        str(job / f"rank{rank}.st")
    )


def part(tensors: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    prefix = f"{name}."
    return {
        k[len(prefix) :]: v
        for k, v in tensors.items()
        if k.startswith(prefix) and not k.startswith(f"{name}.state.")
    }


def assert_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], rtol: float):
    assert sorted(got) == sorted(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=rtol, atol=rtol * 1e-2, msg=key)


def assert_histories_close(got: dict[str, Any], want: dict[str, Any], rtol: float) -> None:
    assert got["best_epoch"] == want["best_epoch"]
    assert got["stopped_early"] == want["stopped_early"]
    assert len(got["records"]) == len(want["records"])
    for mine, theirs in zip(got["records"], want["records"], strict=True):
        assert sorted(mine) == sorted(theirs)
        for key in ("loss", "lr", *(k for k in theirs if k.startswith("val_"))):
            assert mine[key] == pytest.approx(theirs[key], rel=rtol), key
        # steps/s counts the real steps of *all* ranks over the slowest rank's seconds
        assert mine["steps_per_s"] > 0


@pytest.fixture(scope="module")
def reference_a(one_thread) -> tuple[History, dict[str, torch.Tensor], Any]:
    record: dict[str, Any] = {}
    model = make_model()
    history = fit(
        model,
        train_lanes(),
        validation=validation_lanes(),
        config=CHECKPOINTED,
        on_window=stop_after(-1, record),
    )
    return history, weights(model), record["state"]


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


def test_ranks_see_different_numbers_of_counted_steps():
    # The scenarios are only a test of the global-count loss if the ranks' shares differ.
    lanes = train_lanes()
    per_rank = [
        [int(w.loss_mask.sum()) for w in lanes.windows(0, rows=slice(16 * r, 16 * (r + 1)))]
        for r in range(WORLD_SIZE)
    ]
    assert per_rank[0] != per_rank[1]
    assert any(w.reset[:, 1:].any() for w in lanes.windows(0))  # resets mid-window
    idle = [int(w.valid.sum()) for w in idle_rank_lanes().windows(0, rows=slice(2, 4))]
    assert idle[0] > 0 and idle[1:] == [0] * (len(idle) - 1)


def test_two_ranks_match_one_process_with_all_lanes(job, reference_a):
    history, want, _ = reference_a
    results, tensors = rank_results(job, 0)
    assert_close(part(tensors, "A"), want, rtol=1e-9)
    assert_histories_close(results["A"], history.to_dict(), rtol=1e-9)


def test_ranks_end_with_identical_weights(job):
    _, rank0 = rank_results(job, 0)
    _, rank1 = rank_results(job, 1)
    assert sorted(rank0) == sorted(rank1)
    for key in rank0:
        if ".state." not in key:  # bitwise: every rank applies the same all-reduced gradients
            assert torch.equal(rank0[key], rank1[key]), key


def test_each_rank_carries_its_own_block_of_lanes(job, reference_a):
    # Lane continuity across ranks: rank r's carried state after STATE_AT equals rows
    # 16r..16r+15 of the single-process state at the same point.
    _, _, state = reference_a
    for rank in range(WORLD_SIZE):
        _, tensors = rank_results(job, rank)
        rows = slice(16 * rank, 16 * (rank + 1))
        for index, full in enumerate(state.tensors()):
            mine = tensors[f"A.state.{index}"]
            assert mine.shape == (2, 16, 8)
            torch.testing.assert_close(mine, full[:, rows], rtol=1e-9, atol=1e-12)


def test_rank_with_only_padding_contributes_nothing(job):
    model = make_model(cell="gru")
    fit(model, idle_rank_lanes(), config=CONFIG)
    _, tensors = rank_results(job, 0)
    assert_close(part(tensors, "C"), weights(model), rtol=1e-9)


def test_float32_classification_and_accuracy_match(job):
    model = make_model(torch.float32, task="classification", output_size=3)
    history = fit(
        model,
        label_lanes(40, seed=4, lanes=16),
        validation=label_lanes(11, seed=5, lanes=3),
        config=CONFIG,
    )
    results, tensors = rank_results(job, 0)
    assert_close(part(tensors, "D"), weights(model), rtol=1e-5)
    assert_histories_close(results["D"], history.to_dict(), rtol=1e-5)
    assert [r["val_accuracy"] for r in results["D"]["records"]] == history["val_accuracy"]


def test_resume_under_two_ranks_is_bitwise_with_dropout(job):
    # Each rank's dropout stream is checkpointed and restored: resumed == uninterrupted.
    _, tensors = rank_results(job, 0)
    whole, resumed = part(tensors, "E-whole"), part(tensors, "E")
    for key in whole:  # bitwise: the same kernel calls on the same shapes, values restored exactly
        assert torch.equal(whole[key], resumed[key]), key
    saved = json.loads(next((job / "E" / "checkpoint").glob("e*/train.json")).read_text())
    assert saved["rng"]["world_size"] == WORLD_SIZE and len(saved["rng"]["ranks"]) == 1


def test_ranks_draw_different_dropout_masks(job):
    # Seeds are offset by rank: with one stream for all ranks, lane i of rank 0 and lane i of
    # rank 1 would get the same dropout masks. The checkpoint keeps both streams.
    folder = next((job / "E-whole" / "checkpoint").glob("e*"))
    rng = load_file(str(folder / "rng.safetensors"))
    assert not torch.equal(rng["torch"], rng["rank1.torch"])


def test_two_rank_checkpoint_resumes_in_one_process(job, reference_a):
    # The checkpoint holds all lanes' state in lane order: one process re-splits it.
    history, want, _ = reference_a
    model = make_model()
    resumed = fit(model, train_lanes(), validation=validation_lanes(), resume=job / "A-interrupted")
    assert_close(weights(model), want, rtol=1e-9)
    assert_histories_close(resumed.to_dict(), history.to_dict(), rtol=1e-9)


def test_one_process_checkpoint_resumes_under_two_ranks(job, reference_a):
    history, want, _ = reference_a
    results, tensors = rank_results(job, 0)
    assert_close(part(tensors, "B"), want, rtol=1e-9)
    assert_histories_close(results["B"], history.to_dict(), rtol=1e-9)


def test_rank_zero_writes_the_run_dir(job):
    run = job / "A"
    assert (run / "model.json").is_file() and (run / "model.safetensors").is_file()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    snapshot = json.loads(next((run / "checkpoint").glob("e*/train.json")).read_text())
    assert snapshot["epoch"] == 2 and snapshot["cursor"] == 0


def test_refusals_are_raised_on_every_rank(job):
    messages = [rank_results(job, rank)[0]["errors"] for rank in range(WORLD_SIZE)]
    for errors in messages:
        assert "train has 15 lanes, which 2 processes cannot share equally" in errors["indivisible"]
        assert "lanes=14 or 16" in errors["indivisible"]
        assert "rank 1 was given a different config than rank 0" in errors["mismatch"]


def test_init_from_env_outside_torchrun_says_how_to_launch(monkeypatch):
    from seqstate.train.distributed import init_from_env, is_main_process, rank_info

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="torchrun --nproc_per_node"):
        init_from_env()
    with pytest.raises(ValueError, match="backend must be one of"):
        init_from_env("mpi")
    assert rank_info() is None and is_main_process()


def test_lane_block_splits_contiguously():
    from seqstate.train.distributed import lane_block

    assert [lane_block(32, 4, r) for r in range(4)] == [
        slice(0, 8),
        slice(8, 16),
        slice(16, 24),
        slice(24, 32),
    ]
    with pytest.raises(ValueError, match="lanes=30 or 33"):
        lane_block(31, 3, 0)


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
