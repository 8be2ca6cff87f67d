"""Training-step throughput of seqstate.LSTM/GRU against plain torch and a per-step cell loop.

    python benchmarks/layers.py --threads 1          # full run (about 2-4 minutes on 2 cores)
    python benchmarks/layers.py --threads 1 --quick  # smoke run (under a minute), same tables

Throughput is timesteps/s = B*T per forward+backward of one window, after warm-up, median over
repeats. Every method sees the same windows (inputs, carried state, resets) and the methods
are interleaved inside each repeat, so a noisy neighbour slows all of them alike.

Methods:
  torch          nn.LSTM / nn.GRU (batch_first), one fused call; *ignores* the resets, so it is
                 the speed ceiling, not a correct implementation of them
  auto           seqstate's default: plans each window as a few spans (``_plan_bounds``); a
                 span boundary at a reset column costs one more fused call, a reset inside a
                 span one more row running to the span's end (hold steps); it picks the plan
                 with the fewest extra row-steps + calls * ``_CALL_COST[cell]`` (exact)
  split          seqstate, a boundary at every distinct reset column: one fused call per span
                 (exact)
  aligned        seqstate, no boundaries: one fused call over every row piece with hold steps
                 (exact)
  loop           nn.LSTMCell / nn.GRUCell over steps with ``state * (1 - reset)`` (what most
                 hand-written stateful code does; exact too)

A second table sweeps reset density (mean sequence length 4T .. 0.25T) for split, aligned and
auto at B=32, T=50, H=128, and calibrates ``_CALL_COST``: split's extra time per distinct reset
column (one fused call) against aligned's extra time per extra row-step, as a ratio in
row-steps next to the constant ``auto`` uses.

The script replaces its own section of BENCHMARKS.md (between the layers markers) and leaves
the rest of the file alone (it re-reads the file right before writing).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _report import BENCHMARKS, cpu_model, load_average, write_section
from seqstate.layers import _CALL_COST, _HELD_SPAN_COST, GRU, LSTM, _plan_bounds
from seqstate.state import GRUState, LSTMState, State

BATCH, FEATURES = 32, 8
KINDS = ("LSTM", "GRU")
METHODS = ("torch", "auto", "split", "aligned", "loop")
CALL_COST = {"LSTM": _CALL_COST[nn.LSTM], "GRU": _CALL_COST[nn.GRU]}  # what ``auto`` uses
HELD_COST = {"LSTM": _HELD_SPAN_COST[nn.LSTM], "GRU": _HELD_SPAN_COST[nn.GRU]}
GROUP_ROWS = 64  # rows per aligned call (seqstate.layers._ALIGNED_GROUP_ROWS, at least B)
BEAT = 0.10  # main table: the better of split/aligned "beats" auto by more than this
RATIO_OFF = 2.0  # calibration: measured call cost this far from ``_CALL_COST`` is flagged
# mean sequence length as a multiple of T -> label (a reset per step with probability 1/length)
DENSITIES = {"none": None, "2T": 2.0, "0.5T": 0.5}
SWEEP_DENSITIES = {"4T": 4.0, "2T": 2.0, "T": 1.0, "0.5T": 0.5, "0.25T": 0.25}
SWEEP_T, SWEEP_H = 50, 128
LOOP_GOAL = 1.2  # "clearly ahead of the loop": at least this ratio


@dataclass(frozen=True)
class Window:
    x: torch.Tensor  # (B, T, F)
    reset: torch.Tensor  # (B, T) bool
    state: State  # (1, B, H) carried from "the previous window", detached


def make_windows(
    kind: str, T: int, H: int, mean_length: float | None, count: int, seed: int
) -> list[Window]:
    """``count`` windows; resets drawn per step with probability 1/mean_length (None: none)."""
    generator = torch.Generator().manual_seed(seed)
    state_type = LSTMState if kind == "LSTM" else GRUState
    probability = 0.0 if mean_length is None else 1.0 / mean_length
    windows = []
    for _ in range(count):
        x = torch.randn(BATCH, T, FEATURES, generator=generator)
        reset = torch.rand(BATCH, T, generator=generator) < probability
        tensors = [
            torch.randn(1, BATCH, H, generator=generator) * 0.1 for _ in state_type.field_names()
        ]
        windows.append(Window(x, reset, state_type(*tensors)))
    return windows


def planned_spans(kind: str, reset: torch.Tensor) -> int:
    """Fused calls ``auto`` makes on this window (1 = aligned's plan, columns + 1 = split's)."""
    if not bool(reset[:, 1:].any()):
        return 1
    return len(_plan_bounds(reset, CALL_COST[kind], HELD_COST[kind])) + 1


def window_shape(kind: str, windows: list[Window]) -> dict[str, float]:
    """Means over the windows: distinct reset columns after 0 (split's extra calls), rows of
    aligned's call (B + mid-window resets), aligned's calls of at most 64 rows, auto's spans."""
    pieces = [BATCH + int(w.reset[:, 1:].sum()) for w in windows]
    group = max(BATCH, GROUP_ROWS)
    return {
        "columns": statistics.mean(int(w.reset[:, 1:].any(0).sum()) for w in windows),
        "pieces": statistics.mean(pieces),
        "groups": statistics.mean(-(-p // group) for p in pieces),
        "spans": statistics.mean(planned_spans(kind, w.reset) for w in windows),
    }


# --- the methods: each returns a function running one training step on a window ------------


def seqstate_step(kind: str, H: int, strategy: str) -> Callable[[Window], None]:
    torch.manual_seed(0)
    layer = (LSTM if kind == "LSTM" else GRU)(FEATURES, H, strategy=strategy)

    def step(window: Window) -> None:
        layer.zero_grad(set_to_none=True)
        y, _ = layer(window.x, window.state, reset=window.reset)
        y.square().mean().backward()

    return step


def torch_step(kind: str, H: int) -> Callable[[Window], None]:
    torch.manual_seed(0)
    layer = (nn.LSTM if kind == "LSTM" else nn.GRU)(FEATURES, H, batch_first=True)

    def step(window: Window) -> None:
        layer.zero_grad(set_to_none=True)
        tensors = window.state.tensors()
        y, _ = layer(window.x, tensors if kind == "LSTM" else tensors[0])
        y.square().mean().backward()

    return step


def loop_step(kind: str, H: int) -> Callable[[Window], None]:
    torch.manual_seed(0)
    cell = (nn.LSTMCell if kind == "LSTM" else nn.GRUCell)(FEATURES, H)

    def step(window: Window) -> None:
        cell.zero_grad(set_to_none=True)
        keep = 1 - window.reset.to(window.x.dtype)[:, :, None]  # (B, T, 1)
        hidden = window.state.tensors()[0][0]
        memory = window.state.tensors()[1][0] if kind == "LSTM" else None
        outputs = []
        for t in range(window.x.shape[1]):
            hidden = hidden * keep[:, t]
            if memory is not None:
                memory = memory * keep[:, t]
                hidden, memory = cell(window.x[:, t], (hidden, memory))
            else:
                hidden = cell(window.x[:, t], hidden)
            outputs.append(hidden)
        torch.stack(outputs, 1).square().mean().backward()

    return step


def make_method(method: str, kind: str, H: int) -> Callable[[Window], None]:
    if method == "torch":
        return torch_step(kind, H)
    if method == "loop":
        return loop_step(kind, H)
    return seqstate_step(kind, H, method)


# --- timing ----------------------------------------------------------------------------------


def measure(
    steps: dict[str, Callable[[Window], None]],
    windows: list[Window],
    *,
    warmup: int,
    repeats: int,
    iterations: int,
) -> dict[str, float]:
    """Median seconds per step of each method; methods interleaved within every repeat."""
    for step in steps.values():
        for i in range(warmup):
            step(windows[i % len(windows)])
    samples: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for repeat in range(repeats):
        # rotate the order every repeat so no method always runs right after the same one
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            for i in range(iterations):
                steps[name](windows[(repeat * iterations + i) % len(windows)])
            samples[name].append((time.perf_counter() - start) / iterations)
    return {name: statistics.median(values) for name, values in samples.items()}


@dataclass
class Settings:
    warmup: int
    repeats: int
    iterations: int
    windows: int
    lengths: tuple[int, ...]
    hidden_sizes: tuple[int, ...]
    sweep_repeats: int


FULL = Settings(1, 9, 2, 6, (50, 100), (128, 256), 11)
QUICK = Settings(1, 2, 1, 2, (50,), (128,), 2)


def density_table(settings: Settings) -> list[dict[str, object]]:
    rows = []
    for kind in KINDS:
        for T in settings.lengths:
            for H in settings.hidden_sizes:
                steps = {m: make_method(m, kind, H) for m in METHODS}
                for label, multiple in DENSITIES.items():
                    mean_length = None if multiple is None else multiple * T
                    windows = make_windows(kind, T, H, mean_length, settings.windows, seed=T + H)
                    seconds = measure(
                        steps,
                        windows,
                        warmup=settings.warmup,
                        repeats=settings.repeats,
                        iterations=settings.iterations,
                    )
                    rate = {m: BATCH * T / s for m, s in seconds.items()}
                    rows.append(
                        {
                            "kind": kind,
                            "T": T,
                            "H": H,
                            "resets": label,
                            **window_shape(kind, windows),
                            **rate,
                        }
                    )
                    print(format_density_row(rows[-1]), flush=True)
    return rows


HELD_WIDTH = 10  # span width of the held-span probe (a typical auto span at T=50)


def held_overhead(kind: str, settings: Settings) -> dict[str, float]:
    """Seconds per training step of one span of ``HELD_WIDTH`` steps, B rows, H=SWEEP_H: a plain
    fused call (``_call_rows``) and the held path (``_run_aligned``) with one reset inside."""
    torch.manual_seed(0)
    layer = (LSTM if kind == "LSTM" else GRU)(FEATURES, SWEEP_H)
    window = make_windows(kind, HELD_WIDTH, SWEEP_H, None, 1, seed=7)[0]
    reset = torch.zeros(BATCH, HELD_WIDTH, dtype=torch.bool)
    reset[0, HELD_WIDTH // 2] = True

    def plain(w: Window) -> None:
        layer.zero_grad(set_to_none=True)
        y, _ = layer._call_rows(w.x, w.state, None)
        y.square().mean().backward()

    def held(w: Window) -> None:
        layer.zero_grad(set_to_none=True)
        y, _ = layer._run_aligned(w.x, w.state, reset)
        y.square().mean().backward()

    return measure(
        {"plain": plain, "held": held},
        [window],
        warmup=3,
        repeats=settings.sweep_repeats,
        iterations=5,
    )


def sweep_table(settings: Settings) -> list[dict[str, object]]:
    rows = []
    T, H = SWEEP_T, SWEEP_H
    for kind in KINDS:
        steps = {m: make_method(m, kind, H) for m in ("split", "aligned", "auto")}
        for label, multiple in SWEEP_DENSITIES.items():
            windows = make_windows(kind, T, H, multiple * T, settings.windows, seed=100 + T)
            seconds = measure(
                steps,
                windows,
                warmup=settings.warmup,
                repeats=settings.sweep_repeats,
                iterations=settings.iterations,
            )
            rows.append(
                {
                    "kind": kind,
                    "resets": label,
                    **window_shape(kind, windows),
                    **seconds,
                }
            )
            print(format_sweep_row(rows[-1]), flush=True)
        probe = held_overhead(kind, settings)
        rows.append({"kind": kind, "resets": "probe", **probe})
        print(kind, "held-span probe (ms):", {k: round(v * 1e3, 3) for k, v in probe.items()})
    return rows


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y on x."""
    mx = statistics.mean(x for x, _ in points)
    my = statistics.mean(y for _, y in points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else float("nan")


# --- report ----------------------------------------------------------------------------------


def auto_vs_best(row: dict[str, object]) -> float:
    """Main table: auto's throughput / the better of split's and aligned's (> 1: auto faster)."""
    best = max(float(row["split"]), float(row["aligned"]))  # type: ignore[arg-type]
    return float(row["auto"]) / best  # type: ignore[arg-type]


def format_density_row(row: dict[str, object]) -> str:
    k = {m: float(row[m]) / 1e3 for m in METHODS}  # type: ignore[arg-type]
    versus = f"{auto_vs_best(row):.2f}" if row["resets"] != "none" else "—"
    return (
        f"| {row['kind']} | {row['T']} | {row['H']} | {row['resets']} | {row['columns']:.1f} | "
        f"{row['pieces']:.1f} | {row['spans']:.1f} | "
        + " | ".join(f"{k[m]:.0f}" for m in METHODS)
        + f" | **{k['auto'] / k['torch']:.2f}x** | {k['split'] / k['torch']:.2f}x"
        + f" | {k['aligned'] / k['torch']:.2f}x | {versus} | **{k['auto'] / k['loop']:.1f}x** |"
    )


TIE = 0.05  # sweep: times within this fraction of each other count as a tie (noise)


def sweep_winner(row: dict[str, object]) -> str:
    split, aligned = float(row["split"]), float(row["aligned"])  # type: ignore[arg-type]
    if abs(aligned / split - 1) <= TIE:
        return "tie"
    return "aligned" if aligned < split else "split"


def format_sweep_row(row: dict[str, object]) -> str:
    split, aligned = float(row["split"]), float(row["aligned"])  # type: ignore[arg-type]
    auto = float(row["auto"])  # type: ignore[arg-type]
    ratio = auto / min(split, aligned)
    shown = f"**{ratio:.2f}**" if ratio > 1 + BEAT else f"{ratio:.2f}"
    return (
        f"| {row['kind']} | {row['resets']} | {row['columns']:.1f} | {row['pieces']:.1f} | "
        f"{row['spans']:.1f} | {split * 1e3:.1f} | {aligned * 1e3:.1f} | {auto * 1e3:.1f} | "
        f"{sweep_winner(row)} | {shown} |"
    )


def machine_info() -> str:
    return (
        f"CPU: {cpu_model()}, {os.cpu_count()} logical cores; torch {torch.__version__} "
        f"({torch.get_num_threads()} intra-op threads, oneDNN "
        f"{'on' if torch.backends.mkldnn.is_available() else 'off'}); "
        f"Python {platform.python_version()}; {platform.system()} {platform.release()}"
    )


WHY = """\
Why the numbers look like this (CPU, torch's own kernels):

- No resets: every strategy makes exactly one fused call, the same call as plain torch, so
  auto/torch is 1.0 up to noise.
- `split` costs per *distinct reset column*, not per reset: it makes one fused call per span
  between columns where any row resets. B=32 independent lanes spread their resets over many
  columns: ~13-16 per window at mean length 2T, ~35-50 at 0.5T (the `cols` column).
  On CPU torch's LSTM goes to oneDNN, whose forward+backward has a fixed cost per call
  (primitive setup, workspace, weight/layout reorders) that a one- or few-step span cannot
  amortise, so LSTM `split` pays that cost once per column. torch's CPU GRU (and RNN) has no
  oneDNN path: the "fused" call is a C++ loop over steps with little fixed cost (plain torch
  and the `GRUCell` loop run at about the same speed in the table), so a call costs GRU little.
- `aligned` costs per *extra row*: one call per layer however many resets, but every reset
  turns the rest of its row into a new row (a *piece*) that runs the full width T, hold steps
  first. Rows = B + mid-window resets (`rows` column), so each reset costs T row-steps of real
  kernel work, in calls of at most 64 rows (past that the CPU kernel's cost per row grows), so
  past 64 rows it also pays for more calls.
- `auto` mixes the two per window: a span boundary at a reset column costs one fused call
  (`_CALL_COST[cell]` row-steps: LSTM 100, GRU 25), a reset left inside a span costs one extra
  row over the rest of that span (span width row-steps) and each span run with hold steps a
  fixed `_HELD_SPAN_COST[cell]` (LSTM 180, GRU 100: per-layer calls, weight concatenation and
  gathers, measured by the held-span probe). `_plan_bounds` tries 1, 2, 3, 4, 6,
  8, 12, 16 and C+1 spans (C = distinct reset columns; boundaries snapped to the reset
  columns nearest even cuts) and keeps the cheapest. Expensive calls (oneDNN LSTM) give few
  spans, near `aligned` but with its longest extra rows cut short; cheap calls (GRU) give many,
  near `split` (`spans` column: mean calls auto planned per window; 1 = aligned's plan,
  cols + 1 = split's). Counting in row-steps makes the plan follow T: a longer window makes
  every extra row dearer, so auto cuts more. It is a cost model with one constant per cell,
  not a per-window measurement: the calibration lines under the sweep check the constant
  against this machine (T=50, H=128 only; the balance between call cost and row-step cost also
  moves with H), and auto can lose to the better of split/aligned where it does not fit.
  The model also prices a span with resets inside like a plain call, but that span goes
  through the held path (gather the pieces, append the hold column to the weights, one
  single-layer call per layer, scatter back), which has a fixed cost of its own: the held-span
  probe under the sweep measures it.
- With padding (masks) hold steps are not possible, so auto falls back to `split` (as does
  the tanh RNN); this benchmark has no padding.
- The per-step `*Cell` loop is exact and is the fair comparison for correctness; on CPU it is
  not slow for GRU (same GEMMs as torch's CPU GRU kernel), so a large gap to it is an LSTM /
  oneDNN effect here, and would be a cuDNN effect on GPU.
- GPU is not measured: this task has no GPU. With cuDNN the per-call cost and the cost of
  extra rows are both different (extra rows are nearly free up to the GPU's width), so
  `_CALL_COST` is a CPU calibration and may not fit there.
"""


def targets(density: list[dict[str, object]]) -> list[str]:
    """One line per target: met or missed, with the worst case and by how much."""

    def ratio(row: dict[str, object], numerator: str, denominator: str) -> float:
        return float(row[numerator]) / float(row[denominator])  # type: ignore[arg-type]

    lines = ["Targets (worst case over the table above):", ""]
    for label, denominator, goal, text in (
        ("none", "torch", 0.95, "no resets: auto >= 0.95x plain torch"),
        ("2T", "torch", 0.8, "mean length 2T: auto >= 0.8x plain torch"),
        (
            "*",
            "loop",
            LOOP_GOAL,
            f"every density: auto clearly ahead of the loop (>= {LOOP_GOAL}x)",
        ),
    ):
        rows = [r for r in density if label == "*" or r["resets"] == label]
        if not rows:
            continue
        row = min(rows, key=lambda r: ratio(r, "auto", denominator))
        worst = ratio(row, "auto", denominator)
        failing = [r for r in rows if ratio(r, "auto", denominator) < goal]
        if not failing:
            verdict = "met"
        else:
            where = ", ".join(
                f"{r['kind']} T={r['T']} H={r['H']} {r['resets']} "
                f"{ratio(r, 'auto', denominator):.2f}x"
                for r in failing
            )
            verdict = (
                f"**missed** by {(goal - worst) / goal:.0%} at worst; "
                f"{len(failing)}/{len(rows)} rows under: {where}"
            )
        lines.append(
            f"- {text}: worst {worst:.2f}x ({row['kind']} T={row['T']} H={row['H']} "
            f"resets={row['resets']}) — {verdict}"
        )
    return lines


def calibration(rows: list[dict[str, object]]) -> tuple[float, float]:
    """(ms per fused call, ms per row-step) from the sweep rows of one cell.

    Per call: least-squares slope of split's time on distinct reset columns (split does the
    same row-steps as one call, plus one call per column). Per row-step: slope of aligned's
    time on its extra row-steps ((rows - B) * T), after taking off the per-call cost times its
    calls of at most 64 rows (so the calls past 64 rows are not counted as row work).
    """
    per_call = slope([(float(r["columns"]), float(r["split"]) * 1e3) for r in rows])  # type: ignore[arg-type]
    per_row_step = slope(
        [
            (
                (float(r["pieces"]) - BATCH) * SWEEP_T,  # type: ignore[arg-type]
                float(r["aligned"]) * 1e3 - per_call * float(r["groups"]),  # type: ignore[arg-type]
            )
            for r in rows
        ]
    )
    return per_call, per_row_step


def sweep_summary(sweep: list[dict[str, object]]) -> list[str]:
    lines = []
    for kind in KINDS:
        rows = [r for r in sweep if r["kind"] == kind and r["resets"] != "probe"]
        probes = [r for r in sweep if r["kind"] == kind and r["resets"] == "probe"]
        if not rows:
            continue
        per_call, per_row_step = calibration(rows)
        constant = CALL_COST[kind]
        if per_call > 0 and per_row_step > 0:
            ratio = per_call / per_row_step
            off = max(ratio / constant, constant / ratio)
            fit = (
                f"{off:.2f}x off, within the {RATIO_OFF:.0f}x tolerance (not flagged)"
                if off <= RATIO_OFF
                else f"**{off:.2f}x off (more than {RATIO_OFF:.0f}x): the constant does not fit "
                f"this machine; measured calls are {'dearer' if ratio > constant else 'cheaper'} "
                f"than `auto` assumes**"
            )
            measured = f"a call ≈ **{ratio:.0f} row-steps**"
        else:
            fit = "not measurable this run (a slope came out <= 0: noise)"
            measured = "ratio n/a"
        ratios = {
            str(r["resets"]): float(r["auto"]) / min(float(r["split"]), float(r["aligned"]))
            for r in rows
        }  # type: ignore[arg-type]
        slow = [f"{label} ({value:.2f})" for label, value in ratios.items() if value > 1 + BEAT]
        verdict = (
            f"auto's time is within {BEAT:.0%} of the faster of split/aligned or better at every "
            f"density"
            if not slow
            else f"**auto is more than {BEAT:.0%} slower than the faster of split/aligned at "
            + ", ".join(slow)
            + "**"
        )
        held_text = ""
        if probes:
            plain, held = float(probes[0]["plain"]) * 1e3, float(probes[0]["held"]) * 1e3  # type: ignore[arg-type]
            excess = held - plain - HELD_WIDTH * per_row_step
            in_steps = (
                f" ≈ {excess / per_row_step:.0f} row-steps ({excess / per_row_step / constant:.1f}"
                f" x `_CALL_COST`)"
                if per_row_step > 0
                else ""
            )
            held_text = (
                f" Held-span probe ({HELD_WIDTH} steps, B={BATCH}, one reset inside): the held "
                f"path takes {held:.2f} ms against {plain:.2f} ms for a plain fused call, "
                f"{excess:.2f} ms more than its one extra row accounts for{in_steps} — a fixed "
                "cost of a span with resets inside that `_plan_bounds` does not count (it prices "
                "every span as one call)."
            )
        lines.append(
            f"- {kind} calibration: one fused call ≈ {per_call:.2f} ms (split: extra ms per "
            f"distinct reset column), one row-step ≈ {per_row_step * 1e3:.1f} µs (aligned: extra "
            f"ms per extra row / T, less the calls past 64 rows), so {measured}; `_CALL_COST` "
            f"= {constant:.0f}, {fit}. Rough: five noisy points, and cols and rows grow "
            f"together. auto / best of two (time): {min(ratios.values()):.2f}-"
            f"{max(ratios.values()):.2f}, median {statistics.median(ratios.values()):.2f}; "
            f"{verdict}.{held_text}"
        )
    return lines


def auto_vs_table(density: list[dict[str, object]]) -> list[str]:
    """Rows where the better of split/aligned beats auto by more than ``BEAT``, and the median."""
    with_resets = [r for r in density if r["resets"] != "none"]
    if not with_resets:
        return []
    values = [auto_vs_best(r) for r in with_resets]
    beaten = [
        f"{r['kind']} T={r['T']} H={r['H']} {r['resets']} "
        f"({'split' if float(r['split']) >= float(r['aligned']) else 'aligned'} "  # type: ignore[arg-type]
        f"{1 / auto_vs_best(r):.2f}x auto's throughput)"
        for r in with_resets
        if 1 / auto_vs_best(r) > 1 + BEAT
    ]
    median = (
        f"- Main table, auto vs the better of split/aligned (`auto/best`, throughput, > 1 = auto "
        f"faster): median **{statistics.median(values):.2f}** over the {len(values)} rows with "
        f"resets (range {min(values):.2f}-{max(values):.2f})."
    )
    if not beaten:
        return [
            median,
            f"- The better of split/aligned beats auto by more than {BEAT:.0%} in no row.",
        ]
    return [
        median,
        f"- **The better of split/aligned beats auto by more than {BEAT:.0%} in "
        f"{len(beaten)} row(s)**: " + "; ".join(beaten) + ".",
    ]


def render(
    density: list[dict[str, object]],
    sweep: list[dict[str, object]],
    settings: Settings,
    command: str,
    notes: str,
    loads: tuple[str, str],
    minutes: float,
) -> str:
    lines = [
        "## Recurrent layers: training-step throughput (`benchmarks/layers.py`)",
        "",
        f"Command: `{command}` ({minutes:.1f} min)  ",
        f"Machine: {machine_info()}  ",
        f"Load average (1, 5, 15 min): {loads[0]} at start, {loads[1]} at the end — a 2-core "
        "machine shared with other jobs, so absolute numbers move by up to 2x between runs; "
        "read ratios within a row.  ",
        f"Settings: B={BATCH}, F={FEATURES}, 1 layer, float32, forward+backward per window; "
        f"{settings.warmup} warm-up step(s), median of {settings.repeats} repeats of "
        f"{settings.iterations} steps (sweep: {settings.sweep_repeats} repeats); methods "
        "interleaved within every repeat (order rotated), all on the same windows.",
        "",
        "Throughput in thousands of timesteps/s (B*T per forward+backward; higher is better). "
        "`resets`: mean sequence length (a reset per step with probability 1/length); "
        "`cols`: mean distinct reset columns per window (split's extra calls); `rows`: mean "
        "rows of aligned's call (B + mid-window resets); `spans`: mean fused calls `auto` "
        "planned per window (1 = aligned's plan, cols + 1 = split's). `torch` ignores the "
        "resets (the speed ceiling); `loop` is a per-step `*Cell` loop with "
        "`state * (1 - reset)`. `auto/best`: auto's throughput / the better of split's and "
        "aligned's (> 1: auto faster than both).",
        "",
        "| model | T | H | resets | cols | rows | spans | torch | auto | split | aligned | loop "
        "| auto/torch | split/torch | aligned/torch | auto/best | auto/loop |",
        "|---|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        *(format_density_row(row) for row in density),
        "",
        *targets(density),
        *auto_vs_table(density),
        "",
        f"### split, aligned and auto by reset density (B={BATCH}, T={SWEEP_T}, H={SWEEP_H}; "
        "ms per training step, lower is better)",
        "",
        "`faster of two`: split or aligned (a tie within 5%); `auto/best`: auto ms / the faster "
        "of split, aligned (< 1: auto faster than both; bold: over 10% slower).",
        "",
        "| model | resets | cols | rows | spans | split ms | aligned ms | auto ms "
        "| faster of two | auto/best |",
        "|---|---|--:|--:|--:|--:|--:|--:|---|--:|",
        *(format_sweep_row(row) for row in sweep if row["resets"] != "probe"),
        "",
        *sweep_summary(sweep),
        "",
        WHY.strip(),
    ]
    if notes.strip():
        lines += ["", notes.strip()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument(
        "--output",
        type=Path,
        default=BENCHMARKS,
        help="markdown file whose layers section is replaced (default: BENCHMARKS.md)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument(
        "--notes", type=Path, default=None, help="markdown file appended under the tables"
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    settings = QUICK if args.quick else FULL
    arguments = sys.argv[1:] if argv is None else argv
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/layers.py", *arguments])

    started, load_start = time.perf_counter(), load_average()
    density = density_table(settings)
    sweep = sweep_table(settings)
    minutes = (time.perf_counter() - started) / 60
    notes = args.notes.read_text() if args.notes else ""
    section = render(
        density, sweep, settings, command, notes, (load_start, load_average()), minutes
    )
    print(section)
    if not args.no_write:
        write_section("layers", section, args.output)
        print(f"wrote the layers section of {args.output}")


if __name__ == "__main__":
    main()
