"""What torch.compile buys a SequenceModel: eager vs compiled, side by side.

A 2-layer LSTM model with a 2-layer Dense head, trained on windows with per-row resets and
padding (the timeline path) and run for inference on plain windows (one fused call per group).
Dynamo does not trace into torch's RNN modules (it runs them as they are) and the timeline's
plan stays host NumPy, so compilation reaches only the code around the recurrent kernels:
normalisation, the head, the loss. This measures, in one process, eager and
``torch.compile(model)`` (inductor) per call, after compilation (whose one-off time is
reported too). Pairs are interleaved and the median of each is reported with the ratio.
Run: ``PYTHONPATH=src .venv/bin/python benchmarks/compile.py [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from _report import machine_info, write_section
from seqstate import SequenceModel

B, T, F, H, O = 32, 50, 8, 64, 4


def _window() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, F, generator=generator)
    y = torch.randn(B, T, O, generator=generator)
    reset = torch.rand(B, T, generator=generator) < 0.02  # a new sequence every ~50 steps
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[: B // 4, -10:] = False  # a quarter of the lanes end in padding
    return x, y, reset, mask


def _train_step(model, x, y, reset, mask) -> float:
    start = time.perf_counter()
    out, _ = model(x, reset=reset, mask=mask)
    loss = ((out - y).square() * mask[..., None]).sum() / mask.sum()
    loss.backward()
    return time.perf_counter() - start


def _inference(model, x) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        model(x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    repeats = 7 if args.quick else 31
    model = SequenceModel(
        input_size=F,
        output_size=O,
        cell="lstm",
        hidden_size=H,
        num_layers=2,
        head=[{"units": 32, "activation": "relu"}, {"units": O}],
    )
    compiled = torch.compile(model)
    x, y, reset, mask = _window()
    calls = {
        "forward+backward, resets and padding": lambda m: _train_step(m, x, y, reset, mask),
        "inference (no_grad), plain windows": lambda m: _inference(m, x),
    }
    rows = []
    for name, call in calls.items():
        first = call(compiled)  # compiles (and a recompile or two for new guards)
        first += call(compiled)
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        for _ in range(repeats):
            times["eager"].append(call(model))  # interleaved
            times["compiled"].append(call(compiled))
        median = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        rows.append(
            f"| {name} | {median['eager']:.2f} | {median['compiled']:.2f} | "
            f"{median['eager'] / median['compiled']:.2f}x | {first:.0f} s |"
        )
    table = "\n".join(
        [
            "| call | eager ms | compiled ms | speed-up | compiling (first 2 calls) |",
            "| --- | ---: | ---: | ---: | ---: |",
            *rows,
        ]
    )
    text = (
        "## torch.compile of a SequenceModel (`benchmarks/compile.py`)\n\n"
        f"2-layer LSTM (H={H}) + Dense head 32-{O}, B={B}, T={T}, F={F}, float32, CPU, "
        f"inductor, median of {repeats} interleaved calls after compilation. Dynamo runs "
        "torch's RNN modules as they are and the timeline's plan on the host, so only the "
        "code around the recurrent kernels is compiled.\n\n"
        f"{table}\n\nMachine: {machine_info(threads=True)}.\n"
        "Command: `PYTHONPATH=src .venv/bin/python benchmarks/compile.py`\n"
    )
    print(text)
    write_section("compile", text)


if __name__ == "__main__":
    main()
