"""The demo's panel part: many series of very different scales, one model, lanes side by side.

statsmodels' US macro data (no download): 12 quarterly series, 1959-2009, from the interest
rate (a few %) to real GDP (about 13 000 billion dollars). Stateful lanes carry every series
at once; the question is what a shared model needs to serve all of them, scored honestly: a
backtest (:func:`seqstate.recipe.backtest.backtest`) trains each variant once on the quarters
before the first of 3 origins, then at each origin warms up on every series' history and
forecasts 8 quarters, against the naive last value from the same history (MASE: MAE over the
in-sample one-step naive MAE of each series, so every series counts the same).

- *per series, levels* (seqstate's default with an id column): each series scaled by its own
  training part's median and spread;
- *per series, lag-1 differences* (``--difference 1``, which ``doctor`` suggests for
  trending series): the model forecasts the changes, so it can carry a trend forward;
- *global*: one location and scale for the whole table (what a pooled normalisation does):
  the small series become flat lines next to GDP and the model learns nothing about them.

Most of these series trend, and near-random-walk series are where the last value is hardest
to beat; the summary says in numbers which variant beats it, and at which origins.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

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
    epochs: int  # training epochs for each variant
    horizon: int  # quarters forecast at each origin
    folds: int  # origins per series
    hidden_size: int


FULL = PanelSizes(epochs=40, horizon=8, folds=3, hidden_size=32)
QUICK = PanelSizes(epochs=4, horizon=8, folds=3, hidden_size=16)

#: The variants trained, by name: [scaling] settings and what the summary calls them.
VARIANTS: dict[str, tuple[dict[str, Any], str]] = {
    "differences": ({"method": "series", "difference": 1}, "per-series scaling, lag-1 differences"),
    "levels": ({"method": "series"}, "per-series scaling, levels (the default)"),
    "global": ({"method": "global"}, "one global scaling, levels"),
}


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


def panel_part(out: Path, sizes: PanelSizes, seed: int, progress: bool) -> dict[str, Any]:
    """Backtest the variants against the naive last value, plot, save the differences model;
    returns the summary entry."""
    import torch

    from seqstate.core.model import SequenceModel
    from seqstate.core.saved import save_model
    from seqstate.recipe.backtest import backtest
    from seqstate.recipe.preparation import prepare, resolve, save
    from seqstate.recipe.run_forecaster import RunForecaster, RunMember
    from seqstate.recipe.sources import Normalization, read_table
    from seqstate.train import fit

    frame = macro_table()
    frame.to_csv(out / "macro.csv", index=False)
    table = read_table(
        frame, features=["value"], targets=["value"], id_column="series", time_column="quarter"
    )
    trained: dict[str, Any] = {}

    def trainer(name: str) -> Any:
        scaling_settings = {**VARIANTS[name][0], "season": 0, "calendar": "none"}

        def train(history: Any) -> Any:
            preparation = resolve(history, scaling_settings)
            train_table, _, scaling, _ = prepare(history, lambda t: (t, None), preparation)
            torch.manual_seed(seed)
            model = SequenceModel(
                input_size=train_table.num_features, output_size=1, hidden_size=sizes.hidden_size
            )
            Normalization.fit(train_table).apply(model)
            fit(
                model,
                train_table.lanes(lanes=len(train_table), window=32, shuffle=True, seed=seed),
                epochs=sizes.epochs,
                lr=1e-2,
                seed=seed,
                progress=progress,
                device="cpu",
            )
            trained[name] = (model, scaling, preparation)
            return RunForecaster([RunMember(model, scaling, preparation.calendar)])

        return train

    results: dict[str, Any] = {
        "series": len(table),
        "horizon": sizes.horizon,
        "folds": sizes.folds,
    }
    backtests = {}
    for name, (_, label) in VARIANTS.items():
        print(f"  backtest: {label}, {len(table)} series ...", flush=True)
        # season 1: the "seasonal naive" of the backtest is the naive last value
        backtests[name] = backtest(
            table, trainer(name), folds=sizes.folds, horizon=sizes.horizon, season=1
        )
        results[f"mase_{name}"] = backtests[name].summary["model_mase"]
        results[f"fold_mase_{name}"] = [f["model_mase"] for f in backtests[name].folds]
    first = backtests["differences"]
    results["mase_naive"] = first.summary["naive_mase"]
    results["fold_mase_naive"] = [f["naive_mase"] for f in first.folds]
    results["origins"] = [f["origin_from"] for f in first.folds]
    model, scaling, preparation = trained["differences"]
    metadata = {
        "demo": "panel",
        "data": {"source": "macro.csv", "columns": table.columns.to_dict()},
        **save(out / "panel", scaling, preparation),
    }
    save_model(model, out / "panel", metadata=metadata)
    _plot_panel(out / "panel.png", table, backtests, sizes)
    return results


def panel_text(panel: dict[str, Any]) -> list[str]:
    """The summary's lines on the panel: each variant's mean MASE, then in plain words which
    beat the naive last value, and at which origins."""
    lines = [
        f"Panel of {panel['series']} US macro series: one LSTM per variant, trained once, then "
        f"{panel['horizon']}-quarter forecasts",
        f"from {panel['folds']} origins ({', '.join(panel['origins'])}); mean MASE, lower is "
        "better:",
    ]
    naive = panel["mase_naive"]
    for name, (_, label) in VARIANTS.items():
        lines.append(f"  {label:<42} {panel[f'mase_{name}']:.2f}")
    lines.append(f"  {'naive last value':<42} {naive:.2f}")
    for name in ("levels", "differences"):
        folds = panel[f"fold_mase_{name}"]
        wins = [
            origin
            for origin, model, base in zip(
                panel["origins"], folds, panel["fold_mase_naive"], strict=True
            )
            if model < base
        ]
        label = VARIANTS[name][1]
        verdict = "beats" if panel[f"mase_{name}"] < naive else "does not beat"
        at = f"at {len(wins)} of {len(folds)} origins" + (f" ({', '.join(wins)})" if wins else "")
        lines.append(f"  {label}: {verdict} the last value on the mean, {at}")
    lines += [
        "  (Most of these series trend like random walks, where the last value is the forecast",
        "  to beat: a model of levels cannot carry a trend past the values it has seen, while",
        "  lag-1 differences (doctor suggests --difference 1 for trends) forecast the change.",
        "  No model of the past foresees a shock such as the 2008 recession; the folds show",
        "  where it lands. One global scaling flattens the small series: the scaling matters.)",
    ]
    return lines


def _plot_panel(path: Path, table: Any, backtests: dict[str, Any], sizes: PanelSizes) -> None:
    """Four series: the actual quarters and each origin's forecasts by the differences and
    levels models and the naive last value. The y axis is the actual data's range: a forecast
    that leaves it is cut at the frame (the global model's are, far off)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = ["realgdp", "cpi", "unemp", "tbilrate"]
    figure = Figure(figsize=(11.0, 6.5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    differences, levels = backtests["differences"], backtests["levels"]
    for k, key in enumerate(shown):
        index = table.ids.index(key)
        axes = figure.add_subplot(2, 2, k + 1)
        origins = differences.origins[index]
        start = max(0, origins[0] - 3 * sizes.horizon)
        times, actual = table.times[index][start:], table.targets[index][start:, 0]
        axes.plot(times, actual, color="black", linewidth=1.2, label="actual")
        for fold, origin in enumerate(origins):
            span = table.times[index][origin : origin + sizes.horizon]
            model, naive = differences.forecasts[(fold, index)]
            first = fold == 0
            axes.plot(
                span,
                model[:, 0],
                color="tab:red",
                linewidth=1.6,
                label="LSTM, lag-1 differences" if first else None,
            )
            axes.plot(
                span,
                levels.forecasts[(fold, index)][0][:, 0],
                color="tab:orange",
                linestyle="--",
                label="LSTM, levels (default)" if first else None,
            )
            axes.plot(
                span,
                naive[:, 0],
                color="grey",
                linestyle=":",
                linewidth=1.6,
                label="naive last value" if first else None,
            )
            axes.axvline(span[0], color="lightgrey", linewidth=0.8, zorder=0)
        low, high = float(actual.min()), float(actual.max())
        margin = 0.15 * (high - low or 1.0)
        axes.set_ylim(low - margin, high + margin)
        axes.set_title(key, fontsize=10)
        axes.tick_params(labelsize=8)
        if k == 0:
            axes.legend(fontsize=8, loc="upper left")
    figure.suptitle(
        f"One LSTM for 12 US macro series: {sizes.horizon}-quarter forecasts from "
        f"{sizes.folds} origins (grey lines)"
    )
    figure.savefig(path)
