"""The lane layout plan: which sequence and step sits in which lane and window (pure NumPy).

A plan is a pure function of (sequence lengths, lanes, window, shuffle seed, epoch); it never
touches the data. :class:`seqstate.Lanes` gathers windows of data through it, and
:func:`seqstate.predict` runs its chunks through it, so both lay sequences out the same way.
See :mod:`seqstate.lanes.lanes` for the pictures.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass

import numpy as np

__all__ = ["Plan", "pack", "packed_plan", "plan_from_members", "segment_plan"]


@dataclass(frozen=True)
class Plan:
    """Where every sequence sits for one epoch.

    Sequence ``order[j]`` starts at position ``keys[j] - lane[j] * span`` of lane ``lane[j]``,
    where ``span = num_windows * window``; ``keys`` is sorted, so the sequence under any
    (lane, position) is one ``searchsorted`` away.
    """

    num_windows: int
    order: np.ndarray  # (n,) sequence index, lane by lane, in lane order
    lane: np.ndarray  # (n,)
    keys: np.ndarray  # (n,) lane * span + start position in the lane
    lengths: np.ndarray  # (n,) lengths[order]
    num_lanes: int
    window: int  # T

    def locate(self, k: int, lane_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``seq``, ``step`` (-1 on padding) and ``valid`` for window ``k``, each ``(B, T)``
        for the lanes ``lane_rows`` (``(B,)`` lane indices)."""
        T = self.window
        span = self.num_windows * T
        keys = lane_rows[:, None] * span + (k * T + np.arange(T))[None, :]  # (B, T)
        j = np.searchsorted(self.keys, keys, side="right") - 1
        jc = np.maximum(j, 0)
        # The candidate may end before this position, or belong to an earlier lane: padding.
        valid = (j >= 0) & (keys < self.keys[jc] + self.lengths[jc])
        seq = np.where(valid, self.order[jc], -1)
        step = np.where(valid, keys - self.keys[jc], -1)
        return seq, step, valid

    def assignment(self) -> list[np.ndarray]:
        """For each lane, the indices of its sequences in the order the lane plays them."""
        bounds = np.searchsorted(self.lane, np.arange(self.num_lanes + 1))
        return [self.order[a:b].copy() for a, b in itertools.pairwise(bounds)]


def pack(lengths: np.ndarray, lanes: int, rng: np.random.Generator | None) -> list[list[int]]:
    """Sequences per lane: longest first into the least-loaded lane (LPT scheduling).

    With ``rng``, equal lengths are tie-broken at random and each block of ``lanes`` consecutive
    (similar-length) sequences is placed in random order, so the sequence-to-lane assignment
    changes every epoch while the lanes stay as balanced as plain LPT. Lane numbers and the
    order inside each lane are then permuted too.
    """
    n = len(lengths)
    if rng is None:
        order = np.argsort(-lengths, kind="stable")
    else:
        order = np.lexsort((rng.random(n), -lengths))
        order = order[np.lexsort((rng.random(n), np.arange(n) // lanes))]
    heap = [(0, lane) for lane in range(lanes)]
    members: list[list[int]] = [[] for _ in range(lanes)]
    sizes = lengths.tolist()
    for index in order.tolist():
        load, lane = heapq.heappop(heap)
        members[lane].append(index)
        heapq.heappush(heap, (load + sizes[index], lane))
    if rng is None:
        return [sorted(m) for m in members]  # original order inside a lane: easiest to read
    members = [members[lane] for lane in rng.permutation(lanes).tolist()]
    return [[m[i] for i in rng.permutation(len(m)).tolist()] for m in members]


def plan_from_members(members: list[list[int]], lengths: np.ndarray, window: int) -> Plan:
    """The plan of lanes holding ``members[lane]`` (sequence indices, in play order)."""
    loads = [int(lengths[m].sum()) for m in members]
    num_windows = max(1, -(-max(loads) // window))
    span = num_windows * window
    order = np.fromiter((i for m in members for i in m), dtype=np.int64, count=len(lengths))
    lane = np.repeat(np.arange(len(members), dtype=np.int64), [len(m) for m in members])
    ordered = lengths[order]
    keys = lane * span
    if len(order):
        # start inside the lane = cumulative length of the sequences before it in that lane
        cumulative = np.cumsum(ordered) - ordered
        lane_first = np.searchsorted(lane, lane, side="left")
        keys = keys + cumulative - cumulative[lane_first]
    return Plan(
        num_windows=num_windows,
        order=order,
        lane=lane,
        keys=keys,
        lengths=ordered,
        num_lanes=len(members),
        window=window,
    )


def packed_plan(
    lengths: np.ndarray,
    lanes: int,
    window: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
) -> Plan:
    """Sequences of ``lengths`` packed into ``lanes`` lanes (shuffled per epoch with
    ``shuffle``, deterministically from ``seed`` and ``epoch``)."""
    rng = np.random.default_rng([seed, epoch]) if shuffle else None
    return plan_from_members(pack(lengths, lanes, rng), lengths, window)


def segment_plan(lengths: np.ndarray, window: int) -> Plan:
    """One sequence per lane, in order: the segments of one long series."""
    return plan_from_members([[lane] for lane in range(len(lengths))], lengths, window)
