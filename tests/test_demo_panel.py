"""The demo's panel part: per-series scaling beats one global scaling on real macro data."""

from __future__ import annotations

from seqstate.checkpoint import load_model, read_model_json
from seqstate.demo_panel import QUICK, macro_table, panel_part
from seqstate.scaling import Scaling


def test_macro_table_is_a_panel_of_very_different_scales():
    frame = macro_table()
    sizes = frame.groupby("series")["value"].median().abs()
    assert frame["series"].nunique() == 12 and sizes.max() / sizes.min() > 1e3


def test_quick_panel_part_writes_a_run_and_per_series_scaling_wins(tmp_path):
    result = panel_part(tmp_path, QUICK, seed=0, progress=False)
    assert result["series"] == 12
    assert result["mase_series"] * 3 < result["mase_global"]  # deterministic (seed 0)
    assert (tmp_path / "panel.png").stat().st_size > 0
    load_model(tmp_path / "panel")
    assert read_model_json(tmp_path / "panel")["metadata"]["preparation"]["scaling"]["method"] == (
        "series"
    )
    assert Scaling.load(tmp_path / "panel") is not None
