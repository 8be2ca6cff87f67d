"""The demo's panel data (the panel part itself runs in tests/test_demo.py)."""

from __future__ import annotations

from seqstate.cli.demo_panel import macro_table, panel_text


def test_macro_table_is_a_panel_of_very_different_scales():
    frame = macro_table()
    sizes = frame.groupby("series")["value"].median().abs()
    assert frame["series"].nunique() == 12 and sizes.max() / sizes.min() > 1e3


def test_the_panel_summary_says_plainly_which_variant_beats_the_last_value():
    panel = {
        "series": 12,
        "horizon": 8,
        "folds": 3,
        "origins": ["2003-10-01", "2005-10-01", "2007-10-01"],
        "mase_naive": 4.0,
        "fold_mase_naive": [3.0, 4.0, 5.0],
        "mase_levels": 5.0,
        "fold_mase_levels": [6.0, 6.0, 3.0],
        "mase_differences": 3.0,
        "fold_mase_differences": [2.0, 2.0, 5.0],
        "mase_global": 20.0,
    }
    text = "\n".join(panel_text(panel))
    assert "levels (the default): does not beat the last value on the mean, at 1 of 3 " in text
    assert "origins (2007-10-01)" in text
    assert "differences: beats the last value on the mean, at 2 of 3 origins (2003-10-01, " in text
    assert "naive last value" in text and "20.00" in text
