"""The layer, training and streaming benchmarks on a CUDA device, in one short run.

    bash benchmarks/gpu.sh                 # or: python benchmarks/gpu.py [--quick] [--no-write]

Three parts, each timed with CUDA events around work that ends in a synchronisation, methods
interleaved (A B B A ...), medians reported:

* layers: one forward+backward of a window (B=32 and 256, T=50/100, H=128/256, LSTM and GRU),
  cuDNN's plain ``nn.LSTM``/``nn.GRU`` call (ignoring resets and padding: the ceiling) against
  seqstate's layer on the same window with resets (mean length 2T, 0.5T) or 20% padding, the
  window's timeline built with it (as ``Lanes`` does);
* training: ``fit`` on a series against the hand-written TBPTT loop of benchmarks/train.py, on
  the device;
* streaming: one ``Streams.step`` of 10 000 streams (NumPy in and out: a transfer each way)
  against a bare ``nn.LSTMCell`` + ``nn.Linear`` on device tensors.

Refuses to run without CUDA (it measures nothing on a CPU). Writes the ``gpu`` section of
BENCHMARKS.md unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _report import BENCHMARKS, load_average, write_section
from seqstate.core.layers import GRU, LSTM
from seqstate.core.model import SequenceModel
from seqstate.core.state import State
from seqstate.core.timeline import Timeline
from seqstate.inference.streams import Streams
from seqstate.lanes.lanes import Lanes
from seqstate.train import fit

FEATURES = 8


def timed(methods: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median milliseconds per call of each method, interleaved, order reversed every repeat."""
    for method in methods.values():
        method()  # warm-up (cuDNN plans, allocator)
    torch.cuda.synchronize()
    samples: dict[str, list[float]] = {name: [] for name in methods}
    names = list(methods)
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            methods[name]()
            end.record()
            end.synchronize()
            samples[name].append(start.elapsed_time(end))
    return {name: statistics.median(values) for name, values in samples.items()}


def window_pair(
    theirs: nn.RNNBase,
    ours: LSTM | GRU,
    x: torch.Tensor,
    state: State,
    reset: torch.Tensor | None,
    mask: torch.Tensor | None,
    timeline: Timeline,
) -> dict[str, Callable[[], object]]:
    """One training step of a window: cuDNN's plain call and seqstate's exact one."""
    hx = state.tensors()

    def plain() -> None:
        theirs.zero_grad(set_to_none=True)
        y, _ = theirs(x, hx if len(hx) > 1 else hx[0])
        y.square().mean().backward()

    def exact() -> None:
        ours.zero_grad(set_to_none=True)
        y, _ = ours(x, state, reset=reset, mask=mask, timeline=timeline)
        y.square().mean().backward()

    return {"cudnn": plain, "seqstate": exact}


def layer_rows(quick: bool) -> list[dict]:
    device = torch.device("cuda")
    shapes = [(32, 50, 128)] if quick else [(32, 50, 128), (32, 100, 256), (256, 50, 128)]
    rows = []
    for kind, ours_class, torch_class in (("LSTM", LSTM, nn.LSTM), ("GRU", GRU, nn.GRU)):
        for B, T, H in shapes:
            torch.manual_seed(0)
            theirs = torch_class(FEATURES, H, batch_first=True).to(device)
            ours = ours_class(FEATURES, H).to(device)
            ours.load_state_dict(theirs.state_dict())
            generator = torch.Generator().manual_seed(1)
            x = torch.randn(B, T, FEATURES, generator=generator).to(device)
            state = ours.initial_state(B).map(lambda t: torch.randn_like(t).tanh())
            for window in ("2T", "0.5T", "pad20"):
                reset = mask = None
                if window == "pad20":
                    padding = torch.randint(0, int(0.4 * T) + 1, (B,), generator=generator)
                    mask = (torch.arange(T)[None, :] < (T - padding)[:, None]).to(device)
                else:
                    mean = (2.0 if window == "2T" else 0.5) * T
                    reset = (torch.rand(B, T, generator=generator) < 1.0 / mean).to(device)
                timeline = Timeline(reset, mask)

                pair = window_pair(theirs, ours, x, state, reset, mask, timeline)
                ms = timed(pair, 7 if quick else 31)
                row = {"kind": kind, "B": B, "T": T, "H": H, "window": window, **ms}
                rows.append(row)
                print(row, flush=True)
    return rows


def training_rows(quick: bool) -> list[dict]:
    import train as train_benchmark  # benchmarks/train.py: the same workload as on the CPU

    device = torch.device("cuda")
    B, T, F, H = train_benchmark.B, train_benchmark.T, train_benchmark.F, train_benchmark.H
    windows = 10 if quick else 40
    series = train_benchmark.make_series(windows)
    lanes = Lanes.from_series(series, lanes=B, window=T)
    steps = windows * B * T

    def run_fit() -> None:
        torch.manual_seed(0)
        model = SequenceModel(input_size=F, output_size=F, hidden_size=H)
        fit(model, lanes, epochs=1, progress=False, seed=0, device="cuda", clip_grad_norm=1.0)

    def run_plain() -> None:
        torch.manual_seed(0)
        model = train_benchmark.PlainLSTM().to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        columns, targets, masks = (t.to(device) for t in train_benchmark.batchify(series))
        train_benchmark.plain_epoch(model, optimizer, columns, targets, masks)

    ms = timed({"fit": run_fit, "plain": run_plain}, 3 if quick else 7)
    row = {"steps": steps, **ms}
    print(row, flush=True)
    return [row]


def streaming_rows(quick: bool) -> list[dict]:
    device = torch.device("cuda")
    H, n = 128, 1000 if quick else 10_000
    torch.manual_seed(0)
    model = SequenceModel(input_size=FEATURES, output_size=FEATURES, hidden_size=H).to(device)
    model.eval()
    cell = nn.LSTMCell(FEATURES, H).to(device)
    head = nn.Linear(H, FEATURES).to(device)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(model.recurrent, f"{name}_l0"))
        head.load_state_dict(model.head.state_dict())
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, FEATURES)).astype(np.float32)
    x_device = torch.from_numpy(x).to(device)
    hidden = (torch.zeros(n, H, device=device), torch.zeros(n, H, device=device))
    ids = list(range(n))
    streams = Streams(model)
    streams.step(ids, x)

    def bare() -> None:
        with torch.no_grad():
            h, _ = cell(x_device, hidden)
            head(h)

    def bare_numpy() -> None:
        with torch.no_grad():
            h, _ = cell(torch.from_numpy(x).to(device), hidden)
            head(h).cpu().numpy()

    def stepped() -> None:
        streams.step(ids, x)

    ms = timed({"cell": bare, "cell+numpy": bare_numpy, "Streams.step": stepped}, 21)
    row = {"streams": n, **ms}
    print(row, flush=True)
    return [row]


def render(layers: list[dict], training: list[dict], streaming: list[dict], command: str) -> str:
    name = torch.cuda.get_device_name(0)
    lines = [
        "## GPU: layers, training and streaming on CUDA (`benchmarks/gpu.py`)",
        "",
        f"Command: `{command}`. Device: {name}; torch {torch.__version__}, cuDNN "
        f"{torch.backends.cudnn.version()}; host load average at the end {load_average()}. "
        "CUDA-event time, medians of interleaved repeats.",
        "",
        "One forward+backward of a window, float32 (cuDNN: the plain call, ignoring resets "
        "and padding; seqstate: exact, its timeline built with the window):",
        "",
        "| cell | B | T | H | window | cuDNN ms | seqstate ms | seqstate / cuDNN throughput |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for row in layers:
        lines.append(
            f"| {row['kind']} | {row['B']} | {row['T']} | {row['H']} | {row['window']} | "
            f"{row['cudnn']:.2f} | {row['seqstate']:.2f} | {row['cudnn'] / row['seqstate']:.2f} |"
        )
    for row in training:
        lines += [
            "",
            f"Training, one epoch of {row['steps']:,} timesteps (benchmarks/train.py's "
            f"workload): `fit` {row['fit']:.0f} ms, plain loop {row['plain']:.0f} ms: "
            f"**{row['plain'] / row['fit']:.2f}x** the plain loop's throughput.",
        ]
    for row in streaming:
        lines += [
            "",
            f"Streaming, one step of {row['streams']:,} streams: bare cell + head on device "
            f"tensors {row['cell']:.3f} ms, the same with NumPy in and out "
            f"{row['cell+numpy']:.3f} ms, `Streams.step` {row['Streams.step']:.3f} ms: "
            f"**{row['cell+numpy'] / row['Streams.step']:.2f}x** the bare NumPy-in-and-out "
            f"throughput ({row['cell'] / row['Streams.step']:.2f}x the device-only one).",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="one shape, fewer repeats")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("gpu.py: no CUDA device here; it measures nothing on a CPU")
    arguments = sys.argv[1:] if argv is None else argv
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/gpu.py", *arguments])
    started = time.perf_counter()
    layers = layer_rows(args.quick)
    training = training_rows(args.quick)
    streaming = streaming_rows(args.quick)
    section = render(layers, training, streaming, command)
    section += f"\n\n({(time.perf_counter() - started) / 60:.1f} min in all.)"
    print(section)
    if not args.no_write:
        write_section("gpu", section, BENCHMARKS)


if __name__ == "__main__":
    main()
