"""Benchmark: stateful chunked `predict` vs a stateless sliding-window predictor, and Streams.

Not a test: it measures and writes the ``predict`` section of BENCHMARKS.md.

1. One long series (F=8, LSTM H=128, float32). ``predict`` runs it once, carrying the state
   chunk to chunk. The stateless baseline is what a user without carried state does: for each
   output step t, run the model over the previous 50 steps from a zero state, keep the last
   output; windows batched ``--window-batch`` at a time. Both side by side in one run, at
   several lengths, to show how each grows.
2. ``predict``'s chunk length on the longest series (how the default was chosen).
3. Streams: one step for n streams per call (n = 1, 10, 100, 1000), stream-steps/s, against a
   dict of per-stream states gathered with State.cat (the alternative design).
4. One step of 1 and of 1 000 streams (``Streams.step`` and ``advance``) against a bare
   ``nn.LSTMCell`` + ``nn.Linear`` call with the same weights (thread CPU time).

    .venv/bin/python benchmarks/predict.py --threads 1          # full run, rewrites its section
    .venv/bin/python benchmarks/predict.py --threads 1 --quick  # small sizes, a smoke run
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _report import cpu_model, load_average, write_section
from seqstate.core.model import SequenceModel
from seqstate.core.state import State
from seqstate.inference.prediction import DEFAULT_CHUNK, predict
from seqstate.inference.streams import Streams, advance

F, H, CONTEXT = 8, 128, 50


def best_of(repeats: int, fn) -> float:
    """Best wall time of ``repeats`` runs (the least disturbed by other load)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@torch.no_grad()
def sliding_window_predict(model, series: np.ndarray, context: int, batch: int) -> np.ndarray:
    """Stateless: output t = last output of the model over series[t-context+1 : t+1] from zeros."""
    x = torch.from_numpy(series)
    windows = x.unfold(0, context, 1).transpose(1, 2)  # (N - context + 1, context, F), a view
    out = []
    for begin in range(0, len(windows), batch):
        y, _ = model(windows[begin : begin + batch].contiguous())
        out.append(y[:, -1])
    return torch.cat(out).numpy()


def bench_series(model, lengths: list[int], repeats: int, window_batch: int) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    for length in lengths:
        series = rng.normal(size=(length, F)).astype(np.float32)
        stateful = best_of(repeats, lambda s=series: predict(model, s))
        stateless = best_of(
            repeats, lambda s=series: sliding_window_predict(model, s, CONTEXT, window_batch)
        )
        rows.append(
            {
                "length": length,
                "stateful_s": stateful,
                "stateless_s": stateless,
                "stateful_sps": length / stateful,
                "stateless_sps": (length - CONTEXT + 1) / stateless,
            }
        )
        print(rows[-1], flush=True)
    return rows


def bench_lanes(model, count: int, sizes: list[int], repeats: int) -> list[tuple[int, float]]:
    """Many sequences of different lengths: steps/s against the number of lanes."""
    rng = np.random.default_rng(3)
    sequences = [
        rng.normal(size=(int(n), F)).astype(np.float32) for n in rng.integers(100, 400, count)
    ]
    total = sum(len(s) for s in sequences)
    rows = []
    for size in sizes:
        seconds = best_of(repeats, lambda b=size: predict(model, sequences, batch_size=b))
        rows.append((size, total / seconds))
        print("lanes", size, rows[-1][1], flush=True)
    return rows


def bench_chunks(model, length: int, chunks: list[int], repeats: int) -> list[tuple[int, float]]:
    series = np.random.default_rng(1).normal(size=(length, F)).astype(np.float32)
    rows = []
    for chunk in chunks:
        seconds = best_of(repeats, lambda c=chunk: predict(model, series, chunk=c))
        rows.append((chunk, length / seconds))
        print("chunk", chunk, rows[-1][1], flush=True)
    return rows


class DictStreams:
    """The alternative design: a dict of per-stream batch-1 states, gathered with State.cat
    and split back with select (O(n) Python work per call)."""

    def __init__(self, model) -> None:
        self.model = model
        self.states: dict = {}

    def step(self, ids, x: np.ndarray) -> np.ndarray:
        zero = self.model.initial_state(1)
        state = State.cat([self.states.get(i, zero) for i in ids])
        y, state = advance(self.model, state, torch.from_numpy(x))
        for row, i in enumerate(ids):
            self.states[i] = state.select([row])
        return y.numpy()


def bench_streams(model, sizes: list[int], calls: int) -> list[dict]:
    rows = []
    rng = np.random.default_rng(2)
    for n in sizes:
        x = rng.normal(size=(n, F)).astype(np.float32)
        ids = [f"stream-{i}" for i in range(n)]
        result: dict[str, float] = {"streams": n}
        for name, make in (("stacked", Streams), ("dict", DictStreams)):
            streams = make(model)
            streams.step(ids, x)  # start every stream (and warm up)
            start = time.perf_counter()
            for _ in range(calls):
                streams.step(ids, x)
            seconds = time.perf_counter() - start
            result[f"{name}_calls_per_s"] = calls / seconds
            result[f"{name}_steps_per_s"] = calls * n / seconds
        rows.append(result)
        print(result, flush=True)
    return rows


def bench_step_vs_cell(model, sizes: list[int], blocks: int, calls: int) -> list[dict]:
    """One step of n streams: a bare nn.LSTMCell + nn.Linear call (the same weights, torch
    tensors in and out, no state bookkeeping) vs ``advance`` (torch in and out, validated;
    from one state again and again, and carried: ``y, state = advance(model, state, x)``)
    vs ``Streams.step`` (NumPy in and out, ids, state rows gathered and written back).

    Thread CPU time per call, median over ``blocks`` interleaved blocks of ``calls`` calls;
    each ratio to the cell is the median of the per-block ratios (a block's methods run
    back to back, so a change of the machine's load between blocks cancels out).
    """
    cell = torch.nn.LSTMCell(F, H)
    head = torch.nn.Linear(H, model.output_size)
    recurrent = model.recurrent
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(recurrent, f"{name}_l0"))
        head.load_state_dict(model.head.state_dict())
    rows = []
    rng = np.random.default_rng(4)
    for n in sizes:
        x = rng.normal(size=(n, F)).astype(np.float32)
        x_torch = torch.from_numpy(x)
        ids = list(range(n))
        streams = Streams(model)
        streams.step(ids, x)
        state = model.initial_state(n)
        hidden = (torch.zeros(n, H), torch.zeros(n, H))

        def bare(x_torch=x_torch, hidden=hidden) -> None:
            with torch.no_grad():
                h, _ = cell(x_torch, hidden)
                head(h)

        def stepped(x_torch=x_torch, state=state) -> None:
            advance(model, state, x_torch)

        carried = [state]

        def carrying(x_torch=x_torch, carried=carried) -> None:
            _, carried[0] = advance(model, carried[0], x_torch)

        def streamed(ids=ids, x=x, streams=streams) -> None:
            streams.step(ids, x)

        methods: dict[str, Callable[[], None]] = {
            "cell": bare,
            "advance": stepped,
            "advance, carried": carrying,
            "Streams.step": streamed,
        }
        samples: dict[str, list[float]] = {name: [] for name in methods}
        for block in range(blocks):
            names = list(methods)
            shift = block % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.thread_time()
                for _ in range(calls):
                    methods[name]()
                samples[name].append((time.thread_time() - start) / calls)
        row: dict = {"streams": n, **{k: statistics.median(v) for k, v in samples.items()}}
        row["ratio"] = {
            name: statistics.median(
                t / c for t, c in zip(samples[name], samples["cell"], strict=True)
            )
            for name in methods
        }
        rows.append(row)
        print(row, flush=True)
    return rows


def bench_step_test(model, blocks: int, calls: int = 20_000) -> float:
    """Thread CPU time of one call of the model's test that no hook or override needs
    ``forward`` (``SequenceModel._steps_directly``, asked before every direct step), median
    over ``blocks`` blocks of ``calls`` calls."""
    test = model._steps_directly
    if not test():
        raise RuntimeError("the benchmark model must step directly")
    samples = []
    for _ in range(blocks):
        start = time.thread_time()
        for _ in range(calls):
            test()
        samples.append((time.thread_time() - start) / calls)
    return statistics.median(samples)


def machine() -> str:
    return (
        f"{cpu_model()}, {os.cpu_count()} cores (shared with other jobs; load average at the "
        f"end {load_average()}), torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"Python {platform.python_version()}, {platform.system()}"
    )


def render(args, series_rows, chunk_rows, lane_rows, stream_rows, step_rows) -> str:
    lines = [
        "## predict: stateful chunked prediction vs stateless sliding windows; Streams",
        "",
        f"Command: `{args.command}`",
        "",
        f"Machine: {machine()}. CPU only. Best of {args.repeats} runs; absolute figures "
        "on a shared 2-core machine are noisy, the ratios are the point.",
        "",
        f"Model: `SequenceModel` LSTM, F={F}, H={H}, 1 layer, float32, eval mode. `predict` "
        f"runs the series once (default chunk {DEFAULT_CHUNK}, one lane: a single series "
        f"cannot be split without changing its state). Stateless: for each output step, the "
        f"model over the previous {CONTEXT} steps from a zero state, {args.window_batch} "
        "windows per call (what a user without carried state does; it also forgets "
        f"everything older than {CONTEXT} steps).",
        "",
        "| series length | predict (s) | predict steps/s | sliding window (s) | "
        "sliding window steps/s | speed-up |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in series_rows:
        lines.append(
            f"| {row['length']:,} | {row['stateful_s']:.2f} | {row['stateful_sps']:,.0f} | "
            f"{row['stateless_s']:.2f} | {row['stateless_sps']:,.0f} | "
            f"{row['stateless_s'] / row['stateful_s']:.1f}x |"
        )
    lines += [
        "",
        f"`predict` chunk length on {chunk_rows and args.lengths[-1]:,} steps (steps/s):",
        "",
        "| chunk | " + " | ".join(str(c) for c, _ in chunk_rows) + " |",
        "|---|" + "---:|" * len(chunk_rows),
        "| steps/s | " + " | ".join(f"{sps:,.0f}" for _, sps in chunk_rows) + " |",
        "",
        f"`predict` over {args.sequences:,} sequences of 100-399 steps, packed into lanes "
        "(`batch_size`; default 256), all steps/s:",
        "",
        "| lanes | " + " | ".join(str(b) for b, _ in lane_rows) + " |",
        "|---|" + "---:|" * len(lane_rows),
        "| steps/s | " + " | ".join(f"{sps:,.0f}" for _, sps in lane_rows) + " |",
        "",
        f"Streams: one step for each of n streams per `step` call ({args.calls} calls), "
        "`Streams` (one stacked state buffer, id -> row) vs a dict of per-stream states "
        "joined with `State.cat` and split with `select`:",
        "",
        "| streams per call | Streams calls/s | Streams stream-steps/s | dict calls/s | "
        "dict stream-steps/s |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in stream_rows:
        lines.append(
            f"| {row['streams']:,} | {row['stacked_calls_per_s']:,.0f} | "
            f"{row['stacked_steps_per_s']:,.0f} | {row['dict_calls_per_s']:,.0f} | "
            f"{row['dict_steps_per_s']:,.0f} |"
        )
    lines += ["", render_steps(args, step_rows)]
    return "\n".join(lines)


def render_steps(args, step_rows) -> str:
    """The table of one step of n streams against the bare cell, and why."""
    lines = [
        "One step of n streams against a bare `nn.LSTMCell` + `nn.Linear` call on the same "
        f"weights (F={F}, H={H}; torch tensors in and out, no state bookkeeping, no checks): "
        "thread CPU time per call (with one thread torch computes on the calling thread; "
        "CPU time leaves out the waits on this shared machine), median of "
        f"{args.step_blocks} interleaved blocks of calls; each ratio is the median of the "
        "per-block ratios (the methods of a block run back to back). `advance` takes and "
        "returns torch tensors and validates them, from one state again and again and "
        "carried (`y, state = advance(model, state, x)`); `Streams.step` takes and returns "
        "NumPy, maps ids to state rows, gathers them and writes them back.",
        "",
        "| streams | cell (us) | advance (us) | advance, carried (us) | Streams.step (us) | "
        "advance / cell | advance, carried / cell | Streams.step / cell | target |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in step_rows:
        n, cell, ratio = row["streams"], row["cell"], row["ratio"]
        # (one stream: advance <= 1.1x and Streams.step <= 1.2x the cell; 1 000 streams:
        # Streams.step's throughput >= 0.95x the cell's)
        goals = (
            [("advance", 1.1), ("Streams.step", 1.2)] if n == 1 else [("Streams.step", 1 / 0.95)]
        )
        verdicts = []
        for name, limit in goals:
            verdict = "met" if ratio[name] <= limit else f"**missed** ({ratio[name]:.2f}x)"
            verdicts.append(f"{name} <= {limit:.3g}x cell: {verdict}")
        lines.append(
            f"| {n:,} | {1e6 * cell:,.1f} | {1e6 * row['advance']:,.1f} | "
            f"{1e6 * row['advance, carried']:,.1f} | {1e6 * row['Streams.step']:,.1f} | "
            f"{ratio['advance']:.2f} | {ratio['advance, carried']:.2f} | "
            f"{ratio['Streams.step']:.2f} | {'; '.join(verdicts)} |"
        )
    lines += ["", STEP_WHY]
    return "\n".join(lines)


STEP_WHY = """\
Where a single step's time goes: `advance` and `Streams.step` validate at the public boundary,
then run each layer's cell kernel (`lstm_cell`, the call `nn.LSTMCell` makes, with the layer's
own weights) and the head's linear maps directly (`DirectStep`), without `nn.Module.__call__`
or the layers' re-validation (hooks, an overridden forward or input masking send steps through
`forward` instead; the result is `forward`'s bit for bit, tested). `advance` returns a state
that keeps the kernels' 2-D outputs and makes its 3-D fields only when something reads them,
and recognises a step from such a state (or from the state it was given last) with a few
identity and shape tests; whether the normalisation may be skipped is kept with its buffers and
the sum of their versions. What the bare call does not do and these still do: the model's test
that no hook or override needs `forward` (0.45-0.55 us per call alone, about 0.012x of the bare
step: it looks at the hooks only after torch registered one somewhere, and tests the overrides
on every call), the NaN/inf check (a sum of the inputs first; it cannot look at the outputs
instead: an inf input can saturate every gate and give finite outputs), the shape and dtype
tests; `Streams.step` also converts NumPy in and out, checks the ids (exact types, the live
streams in row order) and keeps a few streams' new states as the kernels return them (larger
states are copied back into the buffer rows: keeping the kernels' outputs there makes the
allocator fault in fresh pages every step, 90-200 minor faults per step at 1 000 x 128 against
0-10 for the copy). With 1 000 streams the kernel dominates; what remains is the ids' check,
the finite check and the copy back of two 512 KiB fields, 2-5% together, which is the size of
this shared machine's noise."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md")
    parser.add_argument("--window-batch", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument(
        "--steps-only", action="store_true", help="only one step vs a bare cell; print only"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    args.command = " ".join([".venv/bin/python benchmarks/predict.py", *sys.argv[1:]])
    if args.quick:
        args.lengths, args.repeats, args.calls = [2_000, 5_000], 1, 20
        chunks, sizes = [64, 512], [1, 10, 100]
        args.sequences, lane_sizes = 100, [16, 100]
        args.step_blocks, step_calls = 3, 50
    else:
        args.lengths, args.repeats, args.calls = [10_000, 30_000, 100_000], 2, 100
        chunks, sizes = [64, 256, 512, 2048], [1, 10, 100, 1000]
        args.sequences, lane_sizes = 1000, [16, 64, 256, 1000]
        args.step_blocks, step_calls = 15, 200

    torch.manual_seed(0)
    model = SequenceModel(input_size=F, output_size=F, hidden_size=H).eval()
    if args.steps_only:
        args.step_blocks, step_rows = 21, []
        for n, calls in ((1, 400), (1000, 8)):
            row = bench_step_vs_cell(model, [n], args.step_blocks, calls)[0]
            step_rows.append(row)
            ratio = row["ratio"]
            print(
                f"streams={n}: advance/cell {ratio['advance']:.3f}, advance carried/cell "
                f"{ratio['advance, carried']:.3f}, Streams.step/cell {ratio['Streams.step']:.3f}"
            )
            if n == 1:
                test = bench_step_test(model, args.step_blocks)
                print(
                    f"the model's hook/override test: {1e9 * test:.0f} ns per call, "
                    f"{test / row['cell']:.4f} of the cell's step"
                )
        print(f"\nCommand: `{args.command}`; {machine()}.\n")
        print(render_steps(args, step_rows))
        return
    predict(model, np.zeros((1000, F), np.float32))  # warm up kernels and allocator
    series_rows = bench_series(model, args.lengths, args.repeats, args.window_batch)
    chunk_rows = bench_chunks(model, args.lengths[-1], chunks, args.repeats)
    lane_rows = bench_lanes(model, args.sequences, lane_sizes, args.repeats)
    stream_rows = bench_streams(model, sizes, args.calls)
    step_rows = [
        *bench_step_vs_cell(model, [1], args.step_blocks, step_calls),
        *bench_step_vs_cell(model, [1000], args.step_blocks, max(1, step_calls // 50)),
    ]
    section = render(args, series_rows, chunk_rows, lane_rows, stream_rows, step_rows)
    print(section)
    if not args.no_write:
        write_section("predict", section)


if __name__ == "__main__":
    main()
