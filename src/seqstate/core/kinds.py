"""The names of the recurrent cell kinds, importable without torch.

The command line's ``--cell`` choices and the run settings read the names here; every other
fact about a kind is its row in :data:`seqstate.core.cells.CELLS`, keyed by these names (a
test holds the two equal).
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["KINDS", "Kind"]

Kind = Literal["lstm", "gru", "rnn"]
#: Every cell kind, in the order people are offered them.
KINDS: tuple[Kind, ...] = get_args(Kind)
