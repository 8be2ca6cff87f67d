"""The demo's panel part: many series of very different scales, one model, lanes side by side.

statsmodels' US macro data (no download): 12 quarterly series, 1959-2009, from the interest
rate (a few %) to real GDP (about 13 000 billion dollars). Stateful lanes carry every series
at once; the question is what a shared model needs to serve all of them. The same LSTM is
trained twice on the series without their last ``horizon`` quarters:

- *per series* (seqstate's default with an id column): each series scaled by its own
  training part's median and spread;
- *global*: one location and scale for the whole table (what a pooled normalisation does):
  the small series become flat lines next to GDP and the model learns nothing about them;

and each forecasts the held-out quarters, scored by MASE (MAE over the naive one-step MAE of
each series' history, so every series counts the same) against the naive last value.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PanelSizes", "macro_table", "panel_part"]

_SERIES = (
    "realgdp",
    "realcons",
    "realinv",
    "realgovt",
    "realdpi",
    "cpi",
    "m1",
    "tbilrate",
    "unemp",
    "pop",
    "infl",
    "realint",
)


@dataclasses.dataclass(frozen=True)
class PanelSizes:
    epochs: int  # training epochs for each of the two models
    horizon: int  # quarters held out and forecast
    hidden_size: int


FULL = PanelSizes(epochs=60, horizon=8, hidden_size=32)
QUICK = PanelSizes(epochs=6, horizon=8, hidden_size=16)


def macro_table() -> Any:
    """The 12 series of ``statsmodels.datasets.macrodata`` as a long table:
    ``series, quarter, value`` (quarter as the first day of the quarter)."""
    import pandas as pd
    import statsmodels.api as sm

    wide = sm.datasets.macrodata.load_pandas().data
    quarter = pd.to_datetime(
        {"year": wide["year"].astype(int), "month": 3 * wide["quarter"].astype(int) - 2, "day": 1}
    )
    parts = [
        pd.DataFrame({"series": name, "quarter": quarter, "value": wide[name].astype(float)})
        for name in _SERIES
    ]
    return pd.concat(parts, ignore_index=True)


def _mase(history: np.ndarray, truth: np.ndarray, predicted: np.ndarray) -> float:
    scale = np.mean(np.abs(np.diff(history))) or 1.0
    return float(np.mean(np.abs(predicted - truth)) / scale)


def panel_part(out: Path, sizes: PanelSizes, seed: int, progress: bool) -> dict[str, Any]:
    """Train per-series and global scaling, forecast, plot; returns the summary entry."""
    import pandas as pd
    import torch

    from seqstate.core.model import SequenceModel
    from seqstate.core.saved import save_model
    from seqstate.recipe.preparation import prepare, resolve, save
    from seqstate.recipe.run_forecaster import forecast_table
    from seqstate.recipe.sources import Normalization, read_table
    from seqstate.train import fit

    frame = macro_table()
    frame.to_csv(out / "macro.csv", index=False)
    horizon = sizes.horizon
    position = frame.groupby("series").cumcount(ascending=False)
    history_frame = frame[position >= horizon]
    table = read_table(
        history_frame,
        features=["value"],
        targets=["value"],
        id_column="series",
        time_column="quarter",
    )
    truth = {
        key: group.sort_values("quarter")["value"].to_numpy()
        for key, group in frame[position < horizon].groupby("series")
    }
    results: dict[str, Any] = {"series": len(table), "horizon": horizon}
    forecasts = {}
    for method in ("series", "global"):
        preparation = resolve(table, {"method": method})
        train, _, scaling, _ = prepare(table, lambda t: (t, None), preparation)
        torch.manual_seed(seed)
        model = SequenceModel(
            input_size=train.num_features, output_size=1, hidden_size=sizes.hidden_size
        )
        Normalization.fit(train).apply(model)
        print(f"  training with {method} scaling on {len(table)} series ...", flush=True)
        fit(
            model,
            train.lanes(lanes=len(train), window=32, shuffle=True, seed=seed),
            epochs=sizes.epochs,
            lr=1e-2,
            seed=seed,
            progress=progress,
            device="cpu",
        )
        future_times = [
            pd.date_range(times[-1], periods=horizon + 1, freq="QS")[1:].to_numpy()
            for times in table.times
        ]
        result = forecast_table(
            [model],
            table,
            horizon,
            scaling=scaling,
            calendar=preparation.calendar,
            future_times=future_times,
        )
        forecasts[method] = {key: m[:, 0] for key, m in zip(table.ids, result.mean, strict=True)}
        results[f"mase_{method}"] = float(
            np.mean(
                [
                    _mase(table.targets[i][:, 0], truth[key], forecasts[method][key])
                    for i, key in enumerate(table.ids)
                ]
            )
        )
        if method == "series":
            metadata = {
                "demo": "panel",
                "data": {"source": "macro.csv", "columns": table.columns.to_dict()},
                **save(out / "panel", scaling, preparation),
            }
            save_model(model, out / "panel", metadata=metadata)
    results["mase_naive"] = float(
        np.mean(
            [
                _mase(
                    table.targets[i][:, 0], truth[key], np.repeat(table.targets[i][-1, 0], horizon)
                )
                for i, key in enumerate(table.ids)
            ]
        )
    )
    _plot_panel(out / "panel.png", table, truth, forecasts, horizon)
    return results


def _plot_panel(
    path: Path,
    table: Any,
    truth: dict[Any, np.ndarray],
    forecasts: dict[str, dict[Any, np.ndarray]],
    horizon: int,
) -> None:
    import pandas as pd
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = ["realgdp", "cpi", "unemp", "tbilrate"]
    figure = Figure(figsize=(10.0, 6.0), dpi=100)
    FigureCanvasAgg(figure)
    for k, key in enumerate(shown):
        index = table.ids.index(key)
        axes = figure.add_subplot(2, 2, k + 1)
        times = table.times[index][-40:]
        future = pd.date_range(table.times[index][-1], periods=horizon + 1, freq="QS")[1:]
        axes.plot(times, table.targets[index][-40:, 0], color="black", linewidth=1)
        axes.plot(future, truth[key], color="black", linestyle=":", label="actual")
        axes.plot(future, forecasts["series"][key], color="tab:red", label="per-series scaling")
        axes.plot(
            future, forecasts["global"][key], color="tab:blue", linestyle="--", label="global"
        )
        axes.set_title(key, fontsize=10)
        if k == 0:
            axes.legend(fontsize=7, loc="upper left")
        for label in axes.get_xticklabels():
            label.set_fontsize(7)
    figure.suptitle(f"One LSTM for 12 US macro series: {horizon}-quarter forecasts")
    figure.tight_layout()
    figure.savefig(path)
