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
        return sums.settle()  # distributed: the sums over all ranks' lanes

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


# windows kept by EpochSums.add before they are folded in (one device sync each time)
_SETTLE_EVERY = 1024


@dataclasses.dataclass
class EpochSums:
    """Running totals of the current epoch (checkpointed, so a resumed epoch reports the same
    loss as an uninterrupted one).

    A window's loss is added with :meth:`add`, which only keeps it: folding it into ``loss``
    is a conversion, a product and a sum per window, each a tensor op that costs more than
    its work next to a small model's step (and a kernel launch on a GPU). :meth:`settle`
    folds the kept windows in one pass, in the same order and with the same float64
    roundings as ``loss += window_loss.double() * counted`` window by window; read ``loss``
    only after it.
    """

    loss: torch.Tensor  # float64 sum of per-step losses over counted steps
    counted: int = 0  # steps whose target counted
    real: int = 0  # non-padding steps consumed (for steps/s)
    seconds: float = 0.0
    # (window mean loss [] detached, its counted steps), not yet in ``loss``
    pending: list[tuple[torch.Tensor, int]] = dataclasses.field(default_factory=list)

    def add(self, window_loss: torch.Tensor, counted: int) -> None:
        """One window's mean loss over its ``counted`` steps."""
        self.counted += counted
        self.pending.append((window_loss, counted))
        if len(self.pending) >= _SETTLE_EVERY:  # a long epoch keeps a bounded list
            self.settle()

    def settle(self) -> EpochSums:
        """Fold the added windows into ``loss`` (one device sync); returns self."""
        if not self.pending:
            return self
        values = torch.stack([loss for loss, _ in self.pending]).double().tolist()
        # Python floats are IEEE doubles: the same roundings as the float64 tensor ops
        total = float(self.loss)
        for value, (_, counted) in zip(values, self.pending, strict=True):
            total += value * counted
        self.loss = torch.tensor(total, dtype=torch.float64, device=self.loss.device)
        self.pending.clear()
        return self

    def to_dict(self) -> dict[str, Any]:
        self.settle()
        return {
            "loss": float(self.loss),
            "counted": self.counted,
            "real": self.real,
            "seconds": self.seconds,
        }
