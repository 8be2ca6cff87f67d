"""The demo's panel data (the panel part itself runs in tests/test_demo.py)."""

from __future__ import annotations

from seqstate.cli.demo_panel import macro_table


def test_macro_table_is_a_panel_of_very_different_scales():
    frame = macro_table()
    sizes = frame.groupby("series")["value"].median().abs()
    assert frame["series"].nunique() == 12 and sizes.max() / sizes.min() > 1e3
