"""A trained run as one stateful step function (:class:`RunStep`, :class:`RunState`) and the
cells it is made of.

function.py        RunStep and MemberStep: raw rows in, raw answers out, state carried
state.py           RunState: the whole state as one typed record (safetensors codec)
cells.py           transform cells: scaling, log, differencing, calendar
blend.py           the validation's choice: baselines stepped beside the network, combined
baseline_cells.py  baselines as torch cells over explicit state (the ONNX graph's form)
history_scale.py   each stream's MASE scale, kept as it streams (the intervals' width)
tables.py          predict and forecast of a whole table through RunStep
"""

from seqstate.recipe.step.function import NO_TIME, MemberStep, RunStep
from seqstate.recipe.step.state import RunState

__all__ = ["NO_TIME", "MemberStep", "RunState", "RunStep"]
