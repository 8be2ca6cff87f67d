"""Benchmark: what a run's preprocessing costs per step (the ``run_step`` section of BENCHMARKS.md).

One step (T = 1) of ``RunStep.step`` for B streams, four runs with the same LSTM weights:

- ``model``: the bare model call, ``model(x, state)`` (no run around it);
- ``plain``: a run without preparation (no scaling, differencing or calendar);
- ``default``: what ``train`` picks for hourly sensors: per-series scaling, lag-24 seasonal
  differencing, weekday and hour calendar features, one known-future covariate, and the
  calibrated intervals' running MASE scale of each stream (every trained run keeps it);
- ``ETS blend``: the default run answering with ``0.5 x network + 0.5 x damped ETS (season
  24)``, as validation chooses on data the network does not beat (the baseline's state, its
  60-point grid, steps beside the network's);
- ``blended``: the default run answering with ``network + ets_24 + theta_24`` (a third
  each), the combination ``train``'s validation chooses on the serving benchmark's sensors
  (``benchmarks/serve_run.py``): damped ETS and Theta (its 8 smoothing coefficients, its
  seasonal indices) step beside the network.

``streamed``: the default run through :class:`seqstate.recipe.run_streams.RunStreams`, the
same streams every call (what a Python caller streaming sensors runs: the step plus the
streams' bookkeeping).

Each call steps the state the previous call returned, as a stream does (a caller's loop,
``RunStreams``): the same raw row and time every call, the state moving on.

``preprocessing`` is ``(default - plain) / default``: the share of a default step spent in
the transform cells and their inverse. (One step of CPU rows past the warm-up runs them on
NumPy rows, or on Python floats for one stream: ``RunStep.forward_rows``.) Timings are the
calling thread's CPU time (so time spent waiting for a core on a shared machine is not
counted), interleaved rounds (A B C D, D C B A, ...), best of each, on one torch thread;
ratios, not absolute claims.

    .venv/bin/python benchmarks/run_step.py --threads 1            # prints, writes its section
    .venv/bin/python benchmarks/run_step.py --threads 1 --quick    # a smoke run

``--baseline-src DIR`` (a source tree of earlier code: ``git archive REV | tar -x -C DIR``)
adds a table of this tree against that one: each (hidden, streams) measured ``--repeats``
times in fresh processes, the two trees alternating (each process imports its own tree's
``benchmarks/run_step.py`` and ``src``), best of each.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _report import load_average, machine_info, write_section
from seqstate.core.model import SequenceModel
from seqstate.recipe.intervals import fit_table
from seqstate.recipe.run_streams import RunStreams
from seqstate.recipe.scaling import Scaling, ScalingConfig
from seqstate.recipe.selection import Selection
from seqstate.recipe.sources import read_table
from seqstate.recipe.step import RunStep, tables


def sensors(n: int, hours: int = 24 * 4) -> object:
    rng = np.random.default_rng(0)
    times = pd.date_range("2024-03-01", periods=hours, freq="h")
    parts = []
    for i in range(n):
        # Values of order 1, as scaled ones are: the plain run feeds them to the LSTM as
        # they are, and large inputs saturate its gates, which on some CPUs changes the cost
        # of the model call itself (a slower exp path), not that of the run around it.
        day = np.sin(2 * np.pi * np.arange(hours) / 24)
        temp = 0.5 * day + 0.3 * rng.standard_normal(hours)
        load = 1 + 0.2 * (i % 10) + 0.5 * day + 0.2 * temp + 0.1 * rng.random(hours)
        parts.append(pd.DataFrame({"id": f"s{i}", "time": times, "load": load, "temp": temp}))
    frame = pd.concat(parts, ignore_index=True)
    return read_table(
        frame, features=["load", "temp"], targets=["load"], id_column="id", time_column="time"
    )


#: the selections of the blended runs: name -> (weights, the selection's name)
BLENDS = {
    "ets blend": ({"network": 0.5, "ets_24": 0.5}, "network+ets_24"),
    "blended": ({"network": 1 / 3, "ets_24": 1 / 3, "theta_24": 1 / 3}, "network+ets_24+theta_24"),
}


def build(table, hidden: int, default: bool, blended: str | None = None) -> RunStep:
    calendar = ("weekday", "hour") if default else ()
    torch.manual_seed(0)
    model = SequenceModel(input_size=2 + 2 * len(calendar), output_size=1, hidden_size=hidden)
    scaling = Scaling.fit(table, ScalingConfig(season=24)) if default else None
    selection = None
    if blended is not None:
        weights, name = BLENDS[blended]
        selection = Selection(weights, name, {}, 24, 48, 1, 1)
    # (any table of validation errors: the step keeps the MASE scale whatever its numbers)
    errors = np.random.default_rng(1).normal(size=(8, 24))
    intervals = fit_table(errors, season=24) if default else None
    return RunStep(
        [(model.eval(), scaling, calendar)],
        table.columns,
        selection=selection,
        intervals=intervals,
    )


class _Run:
    """What RunStreams reads of a run: its step function."""

    def __init__(self, function: RunStep) -> None:
        self.function = function

    def step_function(self) -> RunStep:
        return self.function


def measure(hidden: int, batch: int, rounds: int, calls: int) -> dict[str, float]:
    table = sensors(batch)
    runs = {
        "plain": build(table, hidden, False),
        "default": build(table, hidden, True),
        **{name: build(table, hidden, True, blended=name) for name in BLENDS},
    }
    warm = 60  # past the 24 warm-up steps of the differencing and ETS's 48
    x = np.stack([tables.table_inputs(runs["default"], table, i) for i in range(batch)])
    t = np.stack([tables.table_times(runs["default"], s) for s in table.times])
    step_x, step_t = (
        torch.from_numpy(x[:, warm : warm + 1]),
        torch.from_numpy(t[:, warm : warm + 1]),
    )
    states = {}
    for name, run in runs.items():
        state = run.initial_state(list(table.ids))
        _, states[name] = run.step(state, x[:, :warm], t[:, :warm])
    streams = RunStreams(_Run(runs["default"]))
    ids = [f"stream {i}" for i in range(batch)]
    streams.step(ids, x[:, :warm], t[:, :warm], series=list(table.ids))
    stream_x, stream_t = x[:, warm], t[:, warm]
    model = runs["plain"]._members()[0].model
    model_state = states["plain"].models[0]
    model_x = step_x.clone()

    def bare() -> None:
        with torch.no_grad():
            model(model_x, model_state)

    def stepper(name: str) -> Callable[[], None]:
        def step() -> None:  # (each call from the state the last one returned)
            _, states[name] = runs[name].step(states[name], step_x, step_t)

        return step

    work = {
        "model": bare,
        "plain": stepper("plain"),
        "default": stepper("default"),
        **{name: stepper(name) for name in BLENDS},
        "streamed": lambda: streams.step(ids, stream_x, stream_t),
    }
    best = dict.fromkeys(work, float("inf"))
    order = list(work.items())
    for turn in range(rounds):
        # interleaved, the order reversed every other round: load changes hit all alike
        for name, fn in order if turn % 2 == 0 else order[::-1]:
            start = time.thread_time()
            for _ in range(calls):
                fn()
            best[name] = min(best[name], (time.thread_time() - start) / calls)
    return best


def inside(hidden: int, batch: int, rounds: int, calls: int) -> dict[str, float]:
    """The blended run's baseline streams timed inside its steps, alone (each call from the
    state the last returned, nothing between), and alone with a bare model call before each
    step (the network's work between two baseline steps, as in a run step): thread CPU time
    of one stream's ``step`` per call, best of ``rounds`` interleaved rounds."""
    table = sensors(batch)
    run = build(table, hidden, True, blended="blended")
    blend = run.blend
    if blend is None:
        raise RuntimeError("the blended run has no baselines")
    warm = 60
    x = np.stack([tables.table_inputs(run, table, i) for i in range(batch)])
    t = np.stack([tables.table_times(run, s) for s in table.times])
    step_x = torch.from_numpy(x[:, warm : warm + 1])
    step_t = torch.from_numpy(t[:, warm : warm + 1])
    _, state = run.step(run.initial_state(list(table.ids)), x[:, :warm], t[:, :warm])
    spent = dict.fromkeys(blend.streams, 0.0)
    given: dict[str, tuple[dict, np.ndarray]] = {}
    plain = {name: stream.step for name, stream in blend.streams.items()}

    def timed(name: str) -> Callable:
        def step(stream_state: dict, rows: np.ndarray) -> tuple:
            given[name] = (stream_state, rows.copy())
            start = time.thread_time()
            answer = plain[name](stream_state, rows)
            spent[name] += time.thread_time() - start
            return answer

        return step

    for name, stream in blend.streams.items():  # (an instance attribute shadows the method)
        stream.step = timed(name)  # type: ignore[method-assign]
    model, model_state = run._members()[0].model, state.models[0]
    model_x = torch.zeros(batch, 1, model.input_size)
    best: dict[str, float] = {}

    def keep(key: str, seconds: float) -> None:
        best[key] = min(best.get(key, float("inf")), seconds / calls)

    for _ in range(rounds):
        spent.update(dict.fromkeys(spent, 0.0))
        for _ in range(calls):
            _, state = run.step(state, step_x, step_t)
        for name in blend.streams:
            keep(f"{name} inside", spent[name])
        for label, between in (("alone", False), ("after a model call", True)):
            chained = {name: given[name][0] for name in blend.streams}
            took = dict.fromkeys(blend.streams, 0.0)
            for _ in range(calls):
                if between:
                    with torch.no_grad():
                        model(model_x, model_state)
                for name in blend.streams:
                    start = time.thread_time()
                    _, chained[name] = plain[name](chained[name], given[name][1])
                    took[name] += time.thread_time() - start
            for name in blend.streams:
                keep(f"{name} {label}", took[name])
    return best


# Run in a fresh process: ``measure`` of the tree given, its JSON on stdout.
_MEASURE = """
import json, sys
from pathlib import Path
tree = Path(sys.argv[1]).resolve()
sys.path[:0] = [str(tree / "benchmarks"), str(tree / "src")]
import torch
torch.set_num_threads(int(sys.argv[6]))
import run_step
import seqstate
if not Path(seqstate.__file__).resolve().is_relative_to(tree):
    raise SystemExit(f"imported seqstate from {seqstate.__file__}, not from {tree}")
print(json.dumps(run_step.measure(*(int(a) for a in sys.argv[2:6]))))
"""


def measure_in(tree: Path, hidden: int, batch: int, rounds: int, calls: int, threads: int) -> dict:
    """:func:`measure` of the source tree ``tree``, in a fresh process."""
    arguments = [str(v) for v in (tree, hidden, batch, rounds, calls, threads)]
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, *arguments], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"measuring {tree} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(args: argparse.Namespace, rounds: int, calls: int) -> list[str]:
    """The table of this tree against ``args.baseline_src``, processes alternating."""
    this, baseline = Path(__file__).resolve().parents[1], Path(args.baseline_src).resolve()
    lines = [
        "",
        f"This tree against `{args.baseline_src}` (`--baseline-src`): each row measured "
        f"{args.repeats} times per tree in fresh processes, the trees alternating "
        f"(previous, this, this, previous, ...), best of each; load average at start "
        f"{load_average()}.",
        "",
        "| hidden | streams | plain µs prev / this | default µs prev / this "
        "| preprocessing share prev / this | ETS blend µs prev / this | blended µs prev / this "
        "| blended / plain prev / this | streamed µs prev / this | load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for hidden in args.hidden:
        for batch in args.streams:
            best: dict[str, dict[str, float]] = {"prev": {}, "this": {}}
            for repeat in range(args.repeats):
                pair = [("prev", baseline), ("this", this)]
                for tag, tree in pair if repeat % 2 == 0 else pair[::-1]:
                    found = measure_in(tree, hidden, batch, rounds, calls, args.threads)
                    for key, value in found.items():
                        best[tag][key] = min(best[tag].get(key, float("inf")), value)
            prev, now = best["prev"], best["this"]

            def share(b: dict[str, float]) -> float:
                return (b["default"] - b["plain"]) / b["default"]

            lines.append(
                f"| {hidden} | {batch} | {prev['plain'] * 1e6:.0f} / {now['plain'] * 1e6:.0f} | "
                f"{prev['default'] * 1e6:.0f} / {now['default'] * 1e6:.0f} | "
                f"{share(prev):.0%} / {share(now):.0%} | "
                f"{prev['ets blend'] * 1e6:.0f} / {now['ets blend'] * 1e6:.0f} | "
                f"{prev['blended'] * 1e6:.0f} / {now['blended'] * 1e6:.0f} | "
                f"{prev['blended'] / prev['plain']:.2f} / {now['blended'] / now['plain']:.2f} | "
                f"{prev['streamed'] * 1e6:.0f} / {now['streamed'] * 1e6:.0f} | "
                f"{load_average()} |"
            )
            print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (60)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 100])
    parser.add_argument(
        "--baseline-src",
        default=None,
        help="a source tree of earlier code: add a table of this tree against it",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="processes per tree and row (--baseline-src)"
    )
    parser.add_argument(
        "--inside",
        action="store_true",
        help="print the blended run's baseline streams timed inside its steps and alone",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rounds, calls = (3, 20) if args.quick else (60, 20)
    rounds = args.rounds or rounds
    if args.inside:
        for hidden in args.hidden:
            for batch in args.streams:
                found = inside(hidden, batch, rounds, calls)
                cells = ", ".join(f"{key} {value * 1e6:.1f}" for key, value in found.items())
                print(f"hidden {hidden}, streams {batch} (µs per step): {cells}", flush=True)
        return
    lines = [
        "## run step: the cost of a run's preprocessing per step",
        "",
        f"`benchmarks/run_step.py --threads {args.threads}`; {machine_info(threads=True)}; "
        f"thread CPU time per step, best of {rounds} interleaved rounds of {calls} calls, each "
        "call stepping the state the last one returned.",
        "",
        "| hidden | streams | model µs | plain run µs | default run µs | ETS blend µs "
        "| blended run µs | streamed µs | default / plain | preprocessing share "
        "| blended / plain |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for hidden in args.hidden:
        for batch in args.streams:
            best = measure(hidden, batch, rounds, calls)
            share = (best["default"] - best["plain"]) / best["default"]
            lines.append(
                f"| {hidden} | {batch} | {best['model'] * 1e6:.0f} | {best['plain'] * 1e6:.0f} | "
                f"{best['default'] * 1e6:.0f} | {best['ets blend'] * 1e6:.0f} | "
                f"{best['blended'] * 1e6:.0f} | {best['streamed'] * 1e6:.0f} | "
                f"{best['default'] / best['plain']:.2f} | {share:.0%} | "
                f"{best['blended'] / best['plain']:.2f} |"
            )
            print(lines[-1], flush=True)
    if args.baseline_src:
        lines += compare(args, rounds, calls)
    text = "\n".join(lines)
    print(text)
    if not args.no_write and not args.quick:
        write_section("run_step", text)


if __name__ == "__main__":
    main()
