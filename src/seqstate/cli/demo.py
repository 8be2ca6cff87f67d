"""``seqstate demo``: what carrying the state buys, on generated data and on a real series.

Part 1, a memory task no window can solve. Each sequence has a *marker* channel that is 0
except at rare steps, where it is +1 or -1 and sets a latent sign; a second channel is noise.
The target at every step is the current sign (class 1 if positive)::

    marker  +1 0 0 0 0 0 0 0 0 0 0 0 0 0 -1 0 0 0 0 0 0 0 0 0 ...
    target   1 1 1 1 1 1 1 1 1 1 1 1 1 1  0 0 0 0 0 0 0 0 0 0 ...
            |--- window ---|--- window ---|--- window ---|
                            ^ no marker in this window: only the carried state knows the sign

Markers are 3 to 6 windows apart, so most windows contain none. The same LSTM is trained twice:
*stateful* (seqstate lanes: state carried across windows) and *stateless* (every sequence cut
into window-sized pieces, i.e. the state is reset at every window, what a plain windowed
dataset does). The stateless model is near chance; the stateful one is near perfect.

Part 2, a real series shipped with statsmodels (no download): monthly sea-surface temperature
of the El Niño region, 1950-2010. Trained through the same pipeline as ``seqstate train``
(:mod:`seqstate.recipe.sources`: split by time, normalisation fitted on the training years only),
scored one step ahead against persistence, then forecast 24 months against the monthly-average
(climatology) baseline.

Part 3, a panel (:mod:`seqstate.cli.demo_panel`): 12 quarterly US macro series of very different
scales (statsmodels), one LSTM over all of them, backtested from 3 origins against the naive
last value: per-series scaling of levels (the default with an id column), of lag-1 differences,
and one global scaling; the summary says plainly which beats the last value, and where.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from seqstate._validate import check_int

__all__ = ["DemoSizes", "memory_task", "run_demo"]


@dataclasses.dataclass(frozen=True)
class DemoSizes:
    """How big the demo runs (FULL for `seqstate demo`, QUICK for `--quick` and tests)."""

    sequences: int  # generated training sequences (validation: a quarter of this, >= 8)
    length: int  # steps per generated sequence (a multiple of window)
    window: int  # T: steps per window, for both parts of the memory task
    lanes: int  # B: lanes for the memory task
    hidden_size: int  # LSTM units (the same for stateful and stateless)
    epochs: int  # memory task epochs
    series_epochs: int  # El Niño epochs
    horizon: int  # months to forecast


FULL = DemoSizes(
    sequences=128,
    length=512,
    window=16,
    lanes=32,
    hidden_size=32,
    epochs=5,
    series_epochs=60,
    horizon=24,
)
QUICK = DemoSizes(
    sequences=32,
    length=256,
    window=8,
    lanes=16,
    hidden_size=32,
    epochs=8,
    series_epochs=4,
    horizon=12,
)
_MEMORY_LR = 0.02  # high for Adam, but this task has one thing to learn; stable at both sizes

_MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]


# --------------------------------------------------------------------------------------------
# Part 1: the memory task
# --------------------------------------------------------------------------------------------


def memory_task(
    count: int, length: int, window: int, seed: int = 0
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``count`` sequences ``[length, 2]`` (marker, noise) and per-step labels ``[length]``.

    A marker (+1 or -1) at step 0 and then every 3 to 6 windows sets the sign; the label is 1
    while the last marker was positive.
    """
    rng = np.random.default_rng(seed)
    sequences, labels = [], []
    for _ in range(count):
        x = np.zeros((length, 2), dtype=np.float32)
        x[:, 1] = rng.normal(size=length)
        y = np.zeros(length, dtype=np.int64)
        step = 0
        while step < length:
            sign = rng.choice([-1.0, 1.0])
            gap = int(rng.integers(3 * window, 6 * window + 1))
            x[step, 0] = sign
            y[step : step + gap] = int(sign > 0)
            step += gap
        sequences.append(x)
        labels.append(y)
    return sequences, labels


def _cut(arrays: list[np.ndarray], window: int) -> list[np.ndarray]:
    # Window-sized pieces, each its own sequence: a reset at every window start.
    return [a[i : i + window] for a in arrays for i in range(0, len(a), window)]


def _memory_part(out: Path, sizes: DemoSizes, seed: int, progress: bool) -> dict[str, Any]:
    import torch

    from seqstate.core.model import SequenceModel
    from seqstate.core.saved import save_model
    from seqstate.lanes.lanes import Lanes
    from seqstate.train import fit

    T, B = sizes.window, sizes.lanes
    train_x, train_y = memory_task(sizes.sequences, sizes.length, T, seed)
    valid_x, valid_y = memory_task(max(8, sizes.sequences // 4), sizes.length, T, seed + 1)
    positive = float(np.concatenate(valid_y).mean())
    result: dict[str, Any] = {"chance": max(positive, 1.0 - positive), "curves": {}}
    setups = {
        "stateful": (train_x, train_y, valid_x, valid_y),
        "stateless": (_cut(train_x, T), _cut(train_y, T), _cut(valid_x, T), _cut(valid_y, T)),
    }
    for name, (tx, ty, vx, vy) in setups.items():
        print(f"  training the {name} model ...", end=" ", flush=True)
        torch.manual_seed(seed)
        model = SequenceModel(
            input_size=2, output_size=2, hidden_size=sizes.hidden_size, task="classification"
        )
        train = Lanes.from_sequences(tx, ty, lanes=B, window=T, shuffle=True, seed=seed)
        validation = Lanes.from_sequences(vx, vy, lanes=min(B, len(vx)), window=T)
        started = time.perf_counter()
        history = fit(
            model,
            train,
            validation=validation,
            epochs=sizes.epochs,
            lr=_MEMORY_LR,
            seed=seed,
            progress=progress,
            device="cpu",
        )
        result[name] = float(history["val_accuracy"][-1])
        result["curves"][name] = [float(v) for v in history["val_accuracy"]]
        result[f"{name}_seconds"] = time.perf_counter() - started
        print(f"validation accuracy {result[name]:.1%} ({result[f'{name}_seconds']:.0f} s)")
        if name == "stateful":
            save_model(model, out / "memory-stateful", metadata={"demo": "memory task"})
    _plot_memory(out / "memory.png", result, sizes)
    return result


def _plot_memory(path: Path, result: dict[str, Any], sizes: DemoSizes) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 3.8), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name, curve in result["curves"].items():
        axes.plot(range(1, len(curve) + 1), curve, marker="o", label=name)
    axes.axhline(result["chance"], color="grey", linestyle="--", label="chance")
    axes.set_xlabel("epoch")
    axes.set_ylabel("validation accuracy")
    axes.set_ylim(0.0, 1.02)
    axes.set_title(f"Remember a sign set 3-6 windows back (window = {sizes.window} steps)")
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path)


# --------------------------------------------------------------------------------------------
# Part 2: El Niño sea-surface temperature
# --------------------------------------------------------------------------------------------


def elnino_table() -> Any:
    """statsmodels' El Niño data (61 years x 12 months, wide) as a long table: month, sst,
    and the month of the year as two known-ahead features (month_sin, month_cos)."""
    import pandas as pd
    import statsmodels.api as sm

    wide = sm.datasets.elnino.load_pandas().data
    long = wide.melt(id_vars="YEAR", var_name="name", value_name="sst")
    number = long["name"].map({name: i + 1 for i, name in enumerate(_MONTHS)})
    long["month"] = pd.to_datetime({"year": long["YEAR"].astype(int), "month": number, "day": 1})
    long = long.sort_values("month").reset_index(drop=True)
    angle = 2 * np.pi * long["month"].dt.month.to_numpy() / 12
    return pd.DataFrame(
        {
            "month": long["month"],
            "sst": long["sst"].astype(float),
            "month_sin": np.sin(angle),
            "month_cos": np.cos(angle),
        }
    )


def _rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def _series_part(out: Path, sizes: DemoSizes, seed: int, progress: bool) -> dict[str, Any]:
    from seqstate.core.saved import save_model
    from seqstate.inference.prediction import forecast, predict
    from seqstate.recipe.sources import Normalization, read_table, split_table
    from seqstate.recipe.training import build_model
    from seqstate.train import fit

    frame = elnino_table()
    frame.to_csv(out / "elnino.csv", index=False)
    features = ["sst", "month_sin", "month_cos"]
    table = read_table(frame, features=features, targets=["sst"], time_column="month")
    train, validation = split_table(table, by="time", fraction=0.2)
    lanes, window = 8, 24
    model = build_model(table, seed=seed, hidden_size=32)  # input 3, output 1, as seqstate train
    stats = Normalization.fit(train)  # training years only
    stats.apply(model)
    print("  training on 1950-1998, validating on 1998-2010 ...", flush=True)
    history = fit(
        model,
        train.lanes(lanes=lanes, window=window),
        validation=validation.lanes(lanes=lanes, window=window, segments=False),
        epochs=sizes.series_epochs,
        lr=1e-2,
        seed=seed,
        progress=progress,
        device="cpu",
    )
    metadata = {
        "demo": "elnino",
        "data": {"source": "elnino.csv", "columns": table.columns.to_dict()},
        "split": {"by": "time", "fraction": 0.2},
        "layout": {"lanes": lanes, "window": window},
        "normalization": stats.to_dict(),
    }
    save_model(model, out / "elnino", metadata=metadata)

    history_sst = train.features[0][:, 0]
    actual = validation.features[0][:, 0]
    # One step ahead over the validation years: the state is warmed up on the training years.
    whole = predict(model, table.features[0])[:, 0]
    start = len(history_sst)
    one_step = whole[start - 1 : -1]  # output at t predicts t + 1
    horizon = sizes.horizon
    covariates = validation.features[0][:horizon, 1:]  # month of year: known ahead
    path = forecast(model, train.features[0], horizon, covariates=covariates, target_features=[0])
    climatology = np.array([history_sst[m::12].mean() for m in range(12)])
    baseline = climatology[(start + np.arange(horizon)) % 12]
    result = {
        "epochs": len(history),
        "one_step_rmse": _rmse(one_step, actual),
        "persistence_rmse": _rmse(actual[1:], actual[:-1]),
        "forecast_rmse": _rmse(path[:, 0], actual[:horizon]),
        "climatology_rmse": _rmse(baseline, actual[:horizon]),
        "horizon": horizon,
    }
    _plot_series(out / "elnino.png", table, start, path[:, 0], baseline, horizon)
    return result


def _plot_series(
    path: Path, table: Any, start: int, predicted: np.ndarray, baseline: np.ndarray, horizon: int
) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    times, sst = table.times[0], table.features[0][:, 0]
    shown = slice(max(0, start - 120), min(len(sst), start + horizon + 24))
    future = times[start : start + horizon]
    figure = Figure(figsize=(8.0, 3.8), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(times[shown], sst[shown], color="black", linewidth=1, label="observed")
    axes.plot(future, predicted, color="tab:red", linewidth=2, label="seqstate forecast")
    axes.plot(future, baseline, color="tab:blue", linestyle="--", label="monthly average")
    axes.axvline(times[start], color="grey", linewidth=0.8)
    axes.set_ylabel("sea-surface temperature (°C)")
    axes.set_title(f"El Niño region SST: {horizon}-month forecast from the end of training")
    axes.legend(loc="upper left", fontsize=8)
    figure.autofmt_xdate()
    figure.tight_layout()
    figure.savefig(path)


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def run_demo(out: Path | str = "seqstate-demo", *, quick: bool = False, seed: int = 0) -> dict:
    """Run both parts, write plots, models and ``summary.json`` into ``out``, print a summary.

    Returns the summary (also written to ``out/summary.json``).
    """
    import torch

    seed = check_int(seed, "seed", 0)
    sizes = QUICK if quick else FULL
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    progress = sys.stderr.isatty() and not quick
    threads = torch.get_num_threads()
    # The demo's models are tiny: a second intra-op thread buys nothing, and its spin-waiting
    # made runs 10x slower on a busy 2-core machine. Restored on the way out.
    torch.set_num_threads(1)
    try:
        return _run(out, sizes, quick, seed, progress)
    finally:
        torch.set_num_threads(threads)


def _run(out: Path, sizes: DemoSizes, quick: bool, seed: int, progress: bool) -> dict:
    started = time.perf_counter()
    print(f"seqstate demo ({'quick' if quick else 'full'} size, seed {seed}) -> {out}/")
    from seqstate.cli.demo_panel import FULL as PANEL_FULL
    from seqstate.cli.demo_panel import QUICK as PANEL_QUICK
    from seqstate.cli.demo_panel import panel_part

    print(
        f"[1/3] memory task: a sign set {3 * sizes.window}-{6 * sizes.window} steps back, "
        f"windows of {sizes.window} steps"
    )
    memory = _memory_part(out, sizes, seed, progress)
    print("[2/3] El Niño sea-surface temperature, monthly 1950-2010 (statsmodels)")
    series = _series_part(out, sizes, seed, progress)
    print("[3/3] a panel: 12 US macro series of very different scales, quarterly (statsmodels)")
    panel = panel_part(out, PANEL_QUICK if quick else PANEL_FULL, seed, progress)
    summary = {
        "quick": quick,
        "seed": seed,
        "seconds": time.perf_counter() - started,
        "torch_threads": 1,
        "memory": {k: v for k, v in memory.items() if k != "curves"},
        "memory_curves": memory["curves"],
        "elnino": series,
        "panel": panel,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(_summary_text(summary, out))
    return summary


def _summary_text(summary: dict[str, Any], out: Path) -> str:
    from seqstate.cli.demo_panel import panel_text

    memory, series, panel = summary["memory"], summary["elnino"], summary["panel"]
    gain = 1.0 - series["forecast_rmse"] / series["climatology_rmse"]
    verdict = (
        f"the forecast beats the monthly average by {gain:.0%}"
        if gain > 0
        else "the forecast does not beat the monthly average"
    )
    return "\n".join(
        [
            "",
            "Memory task, validation accuracy (same LSTM, same data, same epochs):",
            f"  stateful  (state carried across windows)  {memory['stateful']:.1%}",
            f"  stateless (state reset every window)      {memory['stateless']:.1%}",
            f"  chance    (always the commoner class)     {memory['chance']:.1%}",
            "",
            "El Niño SST, validation years 1998-2010 (°C):",
            f"  one step ahead   seqstate RMSE {series['one_step_rmse']:.3f}   "
            f"persistence {series['persistence_rmse']:.3f}",
            f"  {series['horizon']}-month forecast  seqstate RMSE {series['forecast_rmse']:.3f}   "
            f"monthly average {series['climatology_rmse']:.3f}",
            f"  ({verdict}; it is a strong baseline for SST, and El Niño",
            "  events are not predictable from past temperature alone)",
            "",
            *panel_text(panel),
            "",
            f"Wrote {out}/: memory.png, elnino.png, elnino.csv, panel.png, macro.csv, "
            "summary.json, and the models",
            f"  {out}/memory-stateful/, {out}/elnino/ and {out}/panel/ (model.json + "
            "model.safetensors).",
            f"Done in {summary['seconds']:.0f} s.",
            "",
            "Try next:",
            f"  seqstate doctor {out}/elnino.csv --features sst,month_sin,month_cos --targets sst "
            "--time month --lanes 8 --window 24",
            f"  seqstate predict {out}/elnino {out}/elnino.csv --out predictions.csv",
            f"  seqstate forecast {out}/panel {out}/macro.csv --horizon 8 --out panel.csv",
            "  seqstate train YOUR.csv --features a,b --targets b --id series --time t",
        ]
    )
