"""The replica seam: how one process shares a fit with others.

:class:`Replica` is one process training all lanes; ``seqstate.train.distributed`` subclasses it
(one rank of a ``torch.distributed`` group) and overrides its hooks. The training loop calls
only these hooks, so it never knows whether it runs alone.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from seqstate.core.state import State
from seqstate.lanes.lanes import Lanes
from seqstate.train.evaluation import lane_metrics
from seqstate.train.losses import MaskedLoss
from seqstate.train.snapshots import restore_rng
from seqstate.train.windows import WindowCache

__all__ = ["EpochSums", "Replica"]


@dataclasses.dataclass(frozen=True)
class Replica:
    """One process training all lanes. A distributed driver gives each rank its lanes
    (``rows``, passed to ``Lanes.windows``), sums target counts and gradients across ranks,
    and lets one rank write files; the loss is then each rank's sum over the *global* count,
    so summed gradients equal one process with all lanes."""

    rows: Any = None  # this rank's lanes; None: all
    is_main: bool = True  # writes run_dir files
    rank: int = 0  # offsets the seed, so ranks draw different dropout masks

    def start(self, model: nn.Module) -> None:
        return None  # distributed: every rank starts from rank 0's weights

    def total_count(self, count: int) -> int:
        return count

    def reduce_gradients(self, model: nn.Module) -> None:
        return None

    def reduce_epoch(self, sums: EpochSums) -> EpochSums:
        return sums  # distributed: the sums over all ranks' lanes

    def evaluate(
        self,
        model: nn.Module,
        lanes: Lanes,
        loss: MaskedLoss,
        device: torch.device,
        cache: WindowCache | None = None,
    ) -> dict[str, float]:
        return lane_metrics(model, lanes, loss, device, cache)

    def gather_checkpoint(
        self, state: State | None, sums: EpochSums | None, rng: Any
    ) -> tuple[State | None, EpochSums | None, Any]:
        """What the main rank saves (called on every rank: distributed, it is collective)."""
        return state, sums, rng

    def restore_checkpoint(
        self, state: State | None, sums: EpochSums | None, rng: Any
    ) -> tuple[State | None, EpochSums | None]:
        """This rank's share of a saved state and sums; restores the random generators."""
        restore_rng(*rng)
        return state, sums


@dataclasses.dataclass
class EpochSums:
    """Running totals of the current epoch (checkpointed, so a resumed epoch reports the same
    loss as an uninterrupted one)."""

    loss: torch.Tensor  # float64 sum of per-step losses over counted steps
    counted: int = 0  # steps whose target counted
    real: int = 0  # non-padding steps consumed (for steps/s)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "loss": float(self.loss),
            "counted": self.counted,
            "real": self.real,
            "seconds": self.seconds,
        }
