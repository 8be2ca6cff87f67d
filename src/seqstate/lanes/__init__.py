"""The data layout: sequences laid out as B parallel lanes cut into windows of T steps.

    layout.py   the pure plan: which sequence and step sits in which lane and window
    inputs.py   reading sequences, targets and labels into lanes (validated once)
    window.py   Window: one batch of the layout (x, y, masks, reset, seq, step)
    lanes.py    Lanes: the iterable of windows, per epoch

``from seqstate.lanes import Lanes, Window`` is the public way in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Lanes", "Window"]

if TYPE_CHECKING:  # pragma: no cover
    from seqstate.lanes.lanes import Lanes
    from seqstate.lanes.window import Window


def __getattr__(name: str) -> Any:
    # lazy: seqstate.lanes.layout (pure NumPy) must not pull torch in through this package
    if name == "Lanes":
        from seqstate.lanes.lanes import Lanes

        return Lanes
    if name == "Window":
        from seqstate.lanes.window import Window

        return Window
    raise AttributeError(f"module 'seqstate.lanes' has no attribute {name!r}")
