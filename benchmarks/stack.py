"""What a layer variant costs: the exact step-by-step path vs torch's fused kernel.

A stack layer whose variant torch has no kernel for (hard_sigmoid gates, GRU reset-before,
relu/linear LSTM/GRU activations) runs on ``seqstate.core.stepwise``. This measures, side by side in
one process, a training step (forward + backward) and an inference call of one layer:

* ``fused``: ``seqstate.LSTM`` / ``seqstate.GRU`` (torch's kernel);
* ``stepwise``: ``StepwiseLayer`` with the same default cell (same arithmetic, per-step path);
* ``variant``: ``StepwiseLayer`` with a variant (hard_sigmoid gates; GRU also reset-before).

Pairs are interleaved (fused, stepwise, variant, fused, ...) and the median of each is reported
with the ratio to fused. Run: ``PYTHONPATH=src .venv/bin/python benchmarks/stack.py [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from _report import machine_info, write_section
from seqstate.core.layers import GRU, LSTM
from seqstate.core.stepwise import StepwiseLayer

B, T, F, H = 32, 50, 16, 64


def _layers(kind: str) -> dict[str, torch.nn.Module]:
    fused = (LSTM if kind == "lstm" else GRU)(F, H)
    stepwise = StepwiseLayer(kind, F, H)
    stepwise.load_state_dict(fused.state_dict())
    variant = StepwiseLayer(
        kind, F, H, recurrent_activation="hard_sigmoid", reset_after=kind == "lstm"
    )
    variant.load_state_dict(fused.state_dict())
    return {"fused": fused, "stepwise": stepwise, "variant": variant}


def _time(layer: torch.nn.Module, x: torch.Tensor, train: bool) -> float:
    start = time.perf_counter()
    if train:
        y, state = layer(x)
        (y.square().mean() + state.tensors()[0].square().mean()).backward()
    else:
        with torch.no_grad():
            layer(x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    repeats = 5 if args.quick else 21
    x = torch.randn(B, T, F)
    rows = []
    for kind in ("lstm", "gru"):
        layers = _layers(kind)
        for train in (True, False):
            times: dict[str, list[float]] = {name: [] for name in layers}
            for _ in range(repeats):
                for name, layer in layers.items():  # interleaved
                    times[name].append(_time(layer, x, train))
            median = {name: statistics.median(t) * 1e3 for name, t in times.items()}
            rows.append(
                f"| {kind} | {'forward+backward' if train else 'forward (no_grad)'} | "
                f"{median['fused']:.2f} | {median['stepwise']:.2f} "
                f"({median['stepwise'] / median['fused']:.1f}x) | {median['variant']:.2f} "
                f"({median['variant'] / median['fused']:.1f}x) |"
            )
    table = "\n".join(
        [
            "| cell | call | fused kernel ms | step-by-step ms (x fused) | variant ms (x fused) |",
            "| --- | --- | ---: | ---: | ---: |",
            *rows,
        ]
    )
    text = (
        "## Stack layer variants: step-by-step path vs fused kernel (`benchmarks/stack.py`)\n\n"
        f"One layer, B={B}, T={T}, F={F}, H={H}, float32, CPU, median of {repeats} interleaved "
        "runs. The step-by-step path runs the variants torch has no kernel for "
        "(here: hard_sigmoid gates, GRU reset-before); `describe()` says which layers use it.\n\n"
        f"{table}\n\nMachine: {machine_info(threads=True)}.\n"
        "Command: `PYTHONPATH=src .venv/bin/python benchmarks/stack.py`\n"
    )
    print(text)
    write_section("stack", text)


if __name__ == "__main__":
    main()
