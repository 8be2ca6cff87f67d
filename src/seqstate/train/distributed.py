"""Distributed training on ``torch.distributed``: lanes split across ranks, one result.

Every rank runs the same script (``torchrun --nproc_per_node N train.py``), calls
:func:`init_from_env` (or enters :func:`distributed`), then calls :func:`seqstate.fit` with the
same arguments. ``fit`` sees the initialised process group and gives each rank a contiguous
block of lanes; each rank lays out, runs and carries the state of its own lanes only::

    lanes=8, 2 ranks          window 0       window 1       window 2
    rank 0   lanes 0..3    [a0 a1 a2 a3]  [a4 a5 a6 a7]  [a8 .  .  . ]   state rows 0..3
    rank 1   lanes 4..7    [e0 e1 e2 e3]  [e4 e5 f0 f1]  [f2 f3 f4 . ]   state rows 4..7

Per window, each rank sums its loss over its own counted steps and divides by the count of
counted steps over *all* ranks (one all-reduce of the count); the gradients are then summed
(one all-reduce, SUM, not mean), so every rank steps with exactly the gradient of the masked
mean over all lanes that one process with all lanes would compute. Epoch losses and validation
metrics are sums and counts gathered from every rank, so the history is the single-process one
(validation lanes are split across ranks too). Results equal one process up to the order of
floating-point summation (a sum over 2 x 16 rows is not bitwise a sum over 32).

Rank 0 writes ``run_dir``. A checkpoint holds the carried state of *all* lanes (gathered from
every rank, in lane order), epoch sums over all ranks and each rank's random generators; it
has the single-process layout, so a run can resume with another world size (lanes re-split,
exact when the model draws no random numbers; with dropout, each rank that existed keeps its
own generator stream and a new rank starts a fresh one).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from seqstate.core.state import State
from seqstate.lanes.lanes import Lanes
from seqstate.train.evaluation import lane_metric_sums
from seqstate.train.losses import MaskedLoss, MetricSums
from seqstate.train.replica import EpochSums, Replica
from seqstate.train.snapshots import restore_rng
from seqstate.train.windows import WindowCache

__all__ = [
    "RankInfo",
    "distributed",
    "init_from_env",
    "is_main_process",
    "lane_block",
    "rank_info",
    "shutdown",
]

BACKENDS = ("gloo", "nccl")
# Set by torchrun for every worker; init_from_env needs all of them.
_ENVIRONMENT = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_CPU = torch.device("cpu")


@dataclasses.dataclass(frozen=True)
class RankInfo:
    """Where this process stands in a distributed job."""

    rank: int  # global rank, 0 .. world_size - 1; rank 0 writes files
    world_size: int  # number of processes in the job
    local_rank: int  # rank on this machine; picks the GPU (cuda:LOCAL_RANK)
    backend: str  # gloo (CPU) | nccl (CUDA)
    device: torch.device  # where this rank trains: cuda:LOCAL_RANK when CUDA is used, else cpu

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# --------------------------------------------------------------------------------------------
# Process group
# --------------------------------------------------------------------------------------------


def init_from_env(backend: str | None = None, *, timeout: float | None = None) -> RankInfo:
    """Join the job ``torchrun`` started: read RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
    MASTER_PORT, pick the device and initialise the default process group.

    Args:
        backend: ``"gloo"`` or ``"nccl"``; None: nccl when CUDA is available, else gloo.
        timeout: seconds a collective may wait for the other ranks before failing; None:
            torch's default (30 minutes).

    Returns:
        This process's :class:`RankInfo`. Calling it again returns the same information
        without initialising twice.
    """
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)} or None; received {backend!r}")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
    ):
        wrong_type = isinstance(timeout, bool) or not isinstance(timeout, int | float)
        raise (TypeError if wrong_type else ValueError)(
            f"timeout must be a positive number of seconds; received {timeout!r}"
        )
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed support")
    if dist.is_initialized():
        return _current_info()

    missing = [name for name in _ENVIRONMENT if not os.environ.get(name)]
    if missing:
        raise ValueError(
            f"init_from_env needs the environment torchrun sets ({', '.join(_ENVIRONMENT)}); "
            f"missing {missing}. Launch with `torchrun --nproc_per_node N script.py` (or "
            "`torchrun --no-python --nproc_per_node N seqstate train DATA --distributed ...`)."
        )
    rank = _env_int("RANK", 0)
    world_size = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    if rank >= world_size:
        raise ValueError(f"RANK={rank} must be < WORLD_SIZE={world_size}")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl" and not torch.cuda.is_available():
        raise ValueError(
            "backend 'nccl' needs CUDA GPUs but torch.cuda.is_available() is False; use "
            "backend='gloo' (or None) to train on CPUs"
        )
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ValueError(
                f"LOCAL_RANK={local_rank} but this machine has {count} CUDA device(s); start at "
                f"most {count} processes per machine (torchrun --nproc_per_node {count})"
            )
        torch.cuda.set_device(local_rank)  # so device 'cuda' / 'auto' means this rank's GPU
    options: dict[str, Any] = {}
    if timeout is not None:
        options["timeout"] = datetime.timedelta(seconds=float(timeout))
    dist.init_process_group(
        backend, init_method="env://", rank=rank, world_size=world_size, **options
    )
    return _current_info()


def shutdown() -> None:
    """Leave the process group (no-op when none is initialised)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed(backend: str | None = None, *, timeout: float | None = None) -> Iterator[RankInfo]:
    """``with distributed() as info: fit(...)``: :func:`init_from_env` on entry; on a normal
    exit, wait for every rank (rank 0 may still be writing files) and leave the process group.
    A group that was already initialised is left as it was."""
    owned = not (dist.is_available() and dist.is_initialized())
    info = init_from_env(backend, timeout=timeout)
    try:
        yield info
    except BaseException:
        if owned:
            shutdown()  # no barrier: the other ranks may never arrive
        raise
    if owned:
        dist.barrier()
        shutdown()


def rank_info() -> RankInfo | None:
    """This process's :class:`RankInfo`, or None outside a distributed job."""
    if dist.is_available() and dist.is_initialized():
        return _current_info()
    return None


def is_main_process() -> bool:
    """True on rank 0, and in a process that is not part of a distributed job. Guard printing
    and file writing outside :func:`seqstate.fit` with it."""
    info = rank_info()
    return info is None or info.is_main


def lane_block(num_lanes: int, world_size: int, rank: int) -> slice:
    """The contiguous lanes ``rank`` trains on: ``num_lanes / world_size`` of them.

    Raises ValueError when ``num_lanes`` is not a multiple of ``world_size``: every rank must
    carry the same number of lanes.
    """
    if num_lanes % world_size:
        lower = num_lanes // world_size * world_size
        options = [str(n) for n in (lower, lower + world_size) if n > 0]
        divisors = [str(d) for d in range(1, num_lanes + 1) if num_lanes % d == 0][:8]
        raise ValueError(
            f"train has {num_lanes} lanes, which {world_size} processes cannot share equally: "
            f"every rank carries the same number of lanes. Use lanes={' or '.join(options)} (a "
            f"multiple of the world size), or a process count that divides {num_lanes} "
            f"({', '.join(divisors)}, ...)"
        )
    per_rank = num_lanes // world_size
    return slice(rank * per_rank, (rank + 1) * per_rank)


def _split_block(num_lanes: int, world_size: int, rank: int) -> slice:
    """Contiguous, as-equal-as-possible blocks (validation lanes need not divide evenly)."""
    bounds = np.linspace(0, num_lanes, world_size + 1).round().astype(int)
    return slice(int(bounds[rank]), int(bounds[rank + 1]))


def _current_info() -> RankInfo:
    backend = str(dist.get_backend())
    local_rank = _env_int("LOCAL_RANK", 0)
    if torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    return RankInfo(dist.get_rank(), dist.get_world_size(), local_rank, backend, device)


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(
            f"environment variable {name} must be an integer; received {text!r}"
        ) from None
    if value < 0:
        raise ValueError(f"environment variable {name} must be >= 0; received {value}")
    return value


# --------------------------------------------------------------------------------------------
# fit's view of one rank (see seqstate.train.replica.Replica for the hook points)
# --------------------------------------------------------------------------------------------


def rank_replica(
    train: Lanes, validation: Lanes | None, device: torch.device, agreement: dict[str, Any]
) -> _RankReplica:
    """This rank's share of a :func:`seqstate.fit` call; called by ``fit`` on every rank.

    ``agreement`` holds what every rank must have been given alike (config, model and lane
    signatures, run_dir, resume point); a difference is refused on every rank at once.
    """
    rank, world_size = dist.get_rank(), dist.get_world_size()
    backend = str(dist.get_backend())
    if backend == "nccl" and device.type != "cuda":
        raise ValueError(
            f"the process group uses nccl, which needs CUDA tensors, but fit runs on {device}; "
            "use device='auto' or 'cuda', or initialise with backend='gloo'"
        )
    if device.type == "cuda" and device.index is not None:
        current = torch.cuda.current_device()
        if device.index != current:
            raise ValueError(
                f"fit(device={str(device)!r}) on a rank whose GPU is cuda:{current} "
                "(LOCAL_RANK); use device='auto' or 'cuda' and let LOCAL_RANK pick the GPU"
            )
    comm_device = device if backend == "nccl" else torch.device("cpu")
    _check_agreement(agreement, rank, world_size, comm_device)
    return _RankReplica(
        rows=lane_block(train.num_lanes, world_size, rank),
        is_main=rank == 0,
        rank=rank,
        world_size=world_size,
        comm_device=comm_device,
    )


def _check_agreement(
    agreement: dict[str, Any], rank: int, world_size: int, comm_device: torch.device
) -> None:
    names = sorted(agreement)
    digests = [
        hashlib.sha256(json.dumps(agreement[name], sort_keys=True).encode()).digest()
        for name in names
    ]
    local = torch.tensor(list(b"".join(digests)), dtype=torch.uint8, device=comm_device)
    gathered = [torch.empty_like(local) for _ in range(world_size)]
    dist.all_gather(gathered, local)
    reference = gathered[0].view(len(names), -1)
    for other_rank in range(1, world_size):
        differs = (gathered[other_rank].view(len(names), -1) != reference).any(dim=1).tolist()
        parts = [name for name, bad in zip(names, differs, strict=True) if bad]
        if parts:
            raise ValueError(
                f"distributed fit: rank {other_rank} was given a different {', '.join(parts)} "
                f"than rank 0 (this is rank {rank}). Every rank must call fit with the same "
                "model, lanes, FitConfig (except progress and device), run_dir and resume; "
                "run the same script with the same arguments on every rank"
            )


@dataclasses.dataclass(frozen=True)
class _RankReplica(Replica):
    """One rank of a distributed fit: its lanes, the collectives and checkpoint gathering."""

    world_size: int = 1
    comm_device: torch.device = _CPU  # where collective tensors live

    def start(self, model: nn.Module) -> None:
        # Ranks may have built the model from different seeds: start from rank 0's weights.
        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                self._broadcast_(tensor.detach())

    def total_count(self, count: int) -> int:
        total = torch.tensor([count], dtype=torch.int64, device=self.comm_device)
        dist.all_reduce(total)
        return int(total.item())

    def reduce_gradients(self, model: nn.Module) -> None:
        # The loss was already divided by the global count: the gradients must be SUMMED.
        parameters = [p for p in model.parameters() if p.requires_grad]
        by_dtype: dict[torch.dtype, list[nn.Parameter]] = {}
        for parameter in parameters:
            by_dtype.setdefault(parameter.dtype, []).append(parameter)
        for group in by_dtype.values():
            # A rank whose lanes held no real step may have no gradient: it contributes zeros.
            flat = torch.cat(
                [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group]
            ).to(self.comm_device)
            dist.all_reduce(flat)  # one collective per dtype per window
            offset = 0
            for parameter in group:
                chunk = flat[offset : offset + parameter.numel()].view_as(parameter)
                offset += parameter.numel()
                if parameter.grad is None:
                    parameter.grad = chunk.to(parameter.device).clone()
                else:
                    parameter.grad.copy_(chunk)

    def reduce_epoch(self, sums: EpochSums) -> EpochSums:
        sums.settle()
        values = [float(sums.loss), float(sums.counted), float(sums.real), sums.seconds]
        gathered = self._gather_values(values)
        return EpochSums(
            loss=torch.tensor(
                sum(row[0] for row in gathered), dtype=torch.float64, device=sums.loss.device
            ),
            counted=int(sum(row[1] for row in gathered)),
            real=int(sum(row[2] for row in gathered)),
            seconds=max(row[3] for row in gathered),  # wall time: the slowest rank
        )

    def evaluate(
        self,
        model: nn.Module,
        lanes: Lanes,
        loss: MaskedLoss,
        device: torch.device,
        cache: WindowCache | None = None,
    ) -> dict[str, float]:
        names = ["loss", "accuracy"] if loss.is_classification else ["loss", "mae", "mse"]
        rows = _split_block(lanes.num_lanes, self.world_size, self.rank)
        local = MetricSums(loss, device)
        if rows.stop > rows.start:
            local = lane_metric_sums(model, lanes, loss, device, rows=rows, cache=cache)
        unexpected = sorted(set(local.totals) - set(names))
        if unexpected:
            raise RuntimeError(f"distributed training does not reduce metrics {unexpected} yet")
        values = [float(local.steps)] + [float(local.totals.get(n, 0.0)) for n in names]
        gathered = self._gather_values(values)
        total = MetricSums(loss, device)
        total.steps = int(sum(row[0] for row in gathered))
        for index, name in enumerate(names, start=1):
            total.totals[name] = torch.tensor(
                sum(row[index] for row in gathered), dtype=torch.float64
            )
        return total.result()

    def gather_checkpoint(
        self, state: State | None, sums: EpochSums | None, rng: Any
    ) -> tuple[State | None, EpochSums | None, Any]:
        if state is not None:
            state = type(state).cat(
                [
                    state._replace(parts)
                    for parts in zip(*(self._all_gather(t) for t in state.tensors()), strict=True)
                ]
            )  # all lanes, in lane order: the single-process layout
        if sums is not None:
            # Saved summed over ranks; on resume rank 0 carries them and the others start at 0.
            sums = self.reduce_epoch(sums)
        return state, sums, self._gather_rng(rng)

    def restore_checkpoint(
        self, state: State | None, sums: EpochSums | None, rng: Any
    ) -> tuple[State | None, EpochSums | None]:
        if state is not None:
            state = state.select(self.rows)
        if sums is not None and self.rank != 0:
            sums = EpochSums(loss=torch.zeros_like(sums.loss))
        self._restore_rng(rng)
        return state, sums

    # --- helpers ----------------------------------------------------------------------------

    def _broadcast_(self, tensor: torch.Tensor) -> None:
        if tensor.device == self.comm_device:
            dist.broadcast(tensor, src=0)
            return
        staged = tensor.to(self.comm_device)
        dist.broadcast(staged, src=0)
        tensor.copy_(staged)

    def _all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        local = tensor.contiguous().to(self.comm_device)
        gathered = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(gathered, local)
        return [part.to(tensor.device) for part in gathered]

    def _gather_values(self, values: list[float]) -> list[list[float]]:
        """Every rank's ``values``, in rank order: each rank sums them in the same order, so
        every rank computes bitwise the same totals (and takes the same early-stopping,
        schedule and non-finite-loss decisions)."""
        local = torch.tensor(values, dtype=torch.float64, device=self.comm_device)
        return [part.tolist() for part in self._all_gather(local)]

    def _gather_rng(self, rng: tuple[dict[str, Any], dict[str, torch.Tensor]]) -> Any:
        """Rank 0's generators in the single-process fields, every rank's under ``ranks``."""
        info, tensors = rng
        blob = save_tensors(
            {k: v.contiguous() for k, v in tensors.items()},
            metadata={"info": json.dumps(info)},
        )
        local = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
        sizes = [int(s) for s in self._all_gather(torch.tensor([local.numel()]))]
        padded = torch.zeros(max(sizes), dtype=torch.uint8)
        padded[: local.numel()] = local
        blobs = [blob[:size] for blob, size in zip(self._all_gather(padded), sizes, strict=True)]
        merged_info = dict(info, world_size=self.world_size, ranks=[])
        merged_tensors = dict(tensors)
        for other in range(1, self.world_size):
            other_info, other_tensors = _decode_rng(blobs[other].numpy().tobytes())
            merged_info["ranks"].append(other_info)
            merged_tensors.update({f"rank{other}.{k}": v for k, v in other_tensors.items()})
        return merged_info, merged_tensors

    def _restore_rng(self, rng: tuple[dict[str, Any], dict[str, torch.Tensor]]) -> None:
        info, tensors = rng
        saved_ranks = int(info.get("world_size", 1))
        if self.rank == 0:
            restore_rng(info, tensors)
        elif self.rank < saved_ranks:
            prefix = f"rank{self.rank}."
            own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            restore_rng(info["ranks"][self.rank - 1], own)
        else:
            # A rank the checkpoint did not have: a stream of its own, derived from rank 0's.
            restore_rng(info, tensors)
            seed = (int(torch.randint(0, 2**31, ())) + self.rank) % 2**31
            torch.manual_seed(seed)
            np.random.seed(seed)
            random.seed(seed)


def _decode_rng(blob: bytes) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Inverse of the safetensors blob built in ``_gather_rng``; the JSON part is in its
    header's metadata (8-byte little-endian header length, then the header)."""
    header_length = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + header_length])
    return json.loads(header["__metadata__"]["info"]), load_tensors(blob)
