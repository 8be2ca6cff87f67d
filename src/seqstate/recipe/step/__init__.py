"""A trained run as one stateful step function (:class:`RunStep`, :class:`RunState`) and the
transform cells it is made of (:mod:`seqstate.recipe.step.cells`)."""

from seqstate.recipe.step.function import NO_TIME, MemberStep, RunStep
from seqstate.recipe.step.state import RunState

__all__ = ["NO_TIME", "MemberStep", "RunState", "RunStep"]
