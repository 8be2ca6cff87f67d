"""Applying a batch of steps: load records, decide, one step-function call, one atomic commit.

Runs on the model worker thread (never on the event loop). For a batch of steps of distinct
streams::

    records  = store.get_many(streams)                 # one read
    decision = rules.decide(record, seq, start, ...)    # apply / replay / reject, per step
    fits?    = codec.fits(record.state)                 # per record: a bad one fails alone
    series   = the stream's bound series (first step: bound to the request's)
    y, state = run_step(codec.decode(rows), x [n, k, F_raw], time [n, k])   # raw units
    finite?  = y and the new state of each row          # NaN/inf: 422, nothing stored
    written  = store.commit(updates)                    # one transaction, CAS per stream
    lost CAS -> reload: the same step by another replica is a replay, anything else a 409

The state of a stream is the run's whole state (:class:`seqstate.recipe.step.RunState`: the
transform cells' rows, each ensemble member's recurrent state) with its series, one stored
row (:mod:`seqstate.serve.preprocess`); the answer is the members' mean in raw units, what
``seqstate predict`` answers for the same rows. Steps with the same number of timesteps ``k``
share one call (the step function takes no padding: a differenced stream's warm-up is
counted per row).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from seqstate.recipe.step import NO_TIME, RunState, RunStep
from seqstate.serve import jsonio
from seqstate.serve.errors import ApiError
from seqstate.serve.livecount import LiveCount
from seqstate.serve.preprocess import RunRowCodec, iso_times, model_step, template_series
from seqstate.serve.rules import Apply, Reject, Replay, decide, is_expired
from seqstate.serve.schemas import MAX_SAMPLED_STEPS
from seqstate.serve.stores.base import (
    Record,
    RowShape,
    StateStore,
    Update,
    kept_answers,
    new_record,
    step_digest,
)
from seqstate.serve.stores.memory import ColumnTable, ColumnWrite

__all__ = [
    "Engine",
    "FrameOutcome",
    "FrameSteps",
    "Outcome",
    "Prepared",
    "Sampling",
    "StepRequest",
    "StepResult",
]


class StepRequest(NamedTuple):
    """One validated step (or k steps) of one stream, in raw units. (A named tuple, not a
    frozen dataclass: one per step, and building one costs several times less.)"""

    stream: str
    seq: int
    x: np.ndarray  # [k, F_raw] float32, finite: the run's raw input columns
    single: bool  # the request sent one step as [F]: answer y as [O] rather than [k, O]
    start: bool
    series: str | None = None  # as sent; bound to the stream on its first step
    time: np.ndarray | None = None  # [k] int64 Unix seconds, as sent (None: not sent)

    @property
    def digest(self) -> bytes:
        """Fingerprint of what the request asks for, to tell a retry from a different step."""
        return step_digest(self.x, self.start, self.single, self.series, self.time)


@dataclasses.dataclass(frozen=True)
class Sampling:
    """What a forecast samples: ``samples`` paths (seeded by ``seed``, None: fresh
    entropy), answered as their ``quantiles`` per step."""

    samples: int
    quantiles: tuple[float, ...]
    seed: int | None = None


class StepResult(NamedTuple):
    """A step's answer. (A named tuple, not a frozen dataclass: one per step, and building a
    frozen dataclass costs several times more.)"""

    seq: int
    output: bytes  # JSON of y
    replayed: bool  # True: a retry answered from the store, nothing applied


Outcome = StepResult | Reject


class FrameSteps:
    """The steps of one binary frame, carried as arrays: the next step of each of ``n``
    distinct streams, one timestep each, sent as ``[F]``, without start or series, each with
    its time or none sent (the usual frame; any other goes as StepRequests). Each step follows
    the rules of the StepRequest it stands for (:meth:`request`): the usual ones are applied as
    arrays, the others (a first step, a retry, a gap, a time not after the stream's last) as
    that StepRequest."""

    __slots__ = ("seq", "streams", "time", "x")

    def __init__(
        self,
        streams: list[str],
        seq: np.ndarray,
        x: np.ndarray,
        time: np.ndarray | None = None,
    ) -> None:
        self.streams = streams  # [n] distinct ids
        self.seq = seq  # [n] int64
        self.x = x  # [n, 1, F_raw] float32, finite
        self.time = time  # [n] int64 Unix seconds, as sent; None: sent without

    def request(self, k: int) -> StepRequest:
        """Step ``k`` as a StepRequest (same digest: a retry may come either way)."""
        return _frame_step(self.streams, self.seq, self.x, k, self.time)


def _frame_step(
    streams: list[str],
    seq: np.ndarray,
    x: np.ndarray,
    k: int,
    time: np.ndarray | None = None,
    sent: np.ndarray | None = None,
) -> StepRequest:
    """Step ``k`` of a frame's arrays (``seq [n]``, ``x [n, 1, F]``, ``time [n]`` or None:
    none sent; ``sent [n]``: which steps sent theirs, None: all) as the StepRequest it stands
    for: one timestep sent as ``[F]``, no start or series."""
    stamp = None
    if time is not None and (sent is None or sent[k]):
        stamp = time[k : k + 1]  # [1] int64, as parse_step_times reads one step's time
    return StepRequest(streams[k], int(seq[k]), x[k], single=True, start=False, time=stamp)


class FrameOutcome(NamedTuple):
    """A frame's answers: ``y [n, 1, O]`` float64, each step applied in bulk's answer (NaN:
    none here, or none yet in a differenced stream's first steps); ``others``: the outcome
    of every other step (applied or replayed the per-stream way, or refused), by index."""

    y: np.ndarray
    others: dict[int, Outcome]


class _Bulk(NamedTuple):
    """What :meth:`Engine._continue` ran: the indices of the steps taken ``[t]``, their
    answers ``y [t, 1, O]``, warm-up steps ``[t, 1]``, finite rows ``[t]`` and the write of
    the finite ones (None: none)."""

    taken: np.ndarray
    y: torch.Tensor
    warm: np.ndarray
    finite: list[bool]
    write: ColumnWrite | None


@dataclasses.dataclass
class _FrameBatch:
    """A batch's frames, their steps concatenated (``n`` in all), between prepare and
    finish."""

    sizes: list[int]  # steps per frame
    streams: list[str]  # [n]
    seq: np.ndarray  # [n] int64
    x: np.ndarray  # [n, 1, F] float32
    time: np.ndarray | None  # [n] int64: the steps' times (None: none sent)
    sent: np.ndarray | None  # [n] bool: which steps sent a time (None: all, when time is)
    y: np.ndarray  # [n, 1, O] float64: the bulk steps' answers, NaN elsewhere
    others: dict[int, Outcome]  # step index -> its outcome, for the steps not applied in bulk
    written: np.ndarray  # the indices of the steps in ``write``, in its order
    write: ColumnWrite | None
    left: list[int]  # the indices of the steps left to the per-stream path
    requests: list[StepRequest]  # those steps, as StepRequests

    def request(self, k: int) -> StepRequest:
        return _frame_step(self.streams, self.seq, self.x, k, self.time, self.sent)

    def split(self) -> list[FrameOutcome]:
        """One :class:`FrameOutcome` per frame."""
        if len(self.sizes) == 1:
            return [FrameOutcome(self.y, self.others)]
        bounds = np.cumsum([0, *self.sizes])
        answers = [FrameOutcome(self.y[a:b], {}) for a, b in itertools.pairwise(bounds.tolist())]
        if self.others:
            keys = list(self.others)
            frame_of = np.searchsorted(bounds, keys, side="right") - 1
            for k, f in zip(keys, frame_of.tolist(), strict=True):
                answers[f].others[k - int(bounds[f])] = self.others[k]
        return answers


# a step to apply: (request index, the generation its commit expects (None: absent), whether
# it adds a live stream, stored row or None: from zero, the series the row is bound to)
Item = tuple[int, bytes | None, bool, bytes | None, str | None]


@dataclasses.dataclass
class Prepared:
    """A batch between :meth:`Engine.prepare` (model run) and :meth:`Engine.finish` (commit)."""

    requests: Sequence[StepRequest]
    digests: list[bytes]
    outcomes: list[Outcome | None]  # filled: rejects and replays now, applied steps on commit
    updates: list[Update] = dataclasses.field(default_factory=list)
    committed: list[int] = dataclasses.field(default_factory=list)  # request index per update
    answers: list[bytes] = dataclasses.field(default_factory=list)  # JSON of y per update
    creates: list[bool] = dataclasses.field(default_factory=list)  # per update: a new stream
    # request index -> the earlier answers its new record keeps (replayed after a drop)
    histories: dict[int, bytes] = dataclasses.field(default_factory=dict)
    # the steps continued in bulk on a row table (None: none): their request indices, what
    # to write and their answers' JSON
    columns: tuple[list[int], ColumnWrite, list[bytes]] | None = None
    # the frames of the batch (None: none) and where each item of the batch is: a
    # StepRequest's index in ``requests``, or -1 - the frame's number
    frames: _FrameBatch | None = None
    order: list[int] | None = None


class Engine:
    """Applies batches of steps of ``function`` (a run's step function) with ``store``.

    ``function`` is a :class:`seqstate.recipe.step.RunStep` (the run directory's, raw units in
    and out); a bare :class:`seqstate.SequenceModel` is served as a run without preprocessing.
    """

    def __init__(
        self,
        function: torch.nn.Module,
        store: StateStore,
        *,
        ttl_s: float,
        device: torch.device | str = "cpu",
        clock: Callable[[], float] = time.time,
        max_live_streams: int | None = None,
        live: LiveCount | None = None,
        replay_window: int = 1,
    ) -> None:
        if not isinstance(function, RunStep):
            function = model_step(function)
        self.device = torch.device(device)
        self.function: RunStep = function.to(self.device).eval()
        self.store = store
        self.ttl_s = ttl_s
        self.clock = clock
        self.max_live_streams = max_live_streams
        self.live = live if live is not None else LiveCount()  # never a scan per step
        self.replay_window = replay_window  # answers kept per stream (retries replayed)
        # the row layout: transform tensors, members' state types, layers, sizes, dtypes
        self.codec = RunRowCodec(self._to_cpu(function.initial_state([template_series(function)])))
        # the usual step (the next one of a stream, one timestep, nothing else asked) is
        # continued in bulk where the store holds streams as rows of arrays: a table that
        # keeps the steps' times where the store has one (it takes steps with and without a
        # time), else one without (steps without a time only: none for a run that reads
        # times)
        header = self.codec.header
        shape = RowShape(
            self.codec.body_bytes,
            len(self.function.inputs),
            max(replay_window, 1),
            len(self.function.targets),
            timed=True,
        )
        self.table: ColumnTable | None = store.table(header, shape)
        if self.table is None and not self.function.needs_time:
            self.table = store.table(header, shape._replace(timed=False))

    def process(self, requests: Sequence[StepRequest | FrameSteps]) -> list[Any]:
        """Apply ``requests`` (distinct streams) and make the new states durable: per item
        its :data:`Outcome`, a :class:`FrameOutcome` for a :class:`FrameSteps`."""
        return self.finish(self.prepare(requests))

    def prepare(self, requests: Sequence[StepRequest | FrameSteps]) -> Prepared:
        """Read, decide and run the model; nothing is written yet (see :meth:`finish`)."""
        if not any(type(r) is FrameSteps for r in requests):
            return self._prepare_steps(requests, self.clock())  # type: ignore[arg-type]
        frames: list[FrameSteps] = []
        steps: list[StepRequest] = []
        order: list[int] = []
        for r in requests:
            if type(r) is FrameSteps:
                order.append(-1 - len(frames))
                frames.append(r)
            else:
                order.append(len(steps))
                steps.append(r)  # type: ignore[arg-type]
        streams = [r.stream for r in steps]
        for frame in frames:
            streams.extend(frame.streams)
        if len(set(streams)) != len(streams):
            raise ValueError("a batch must hold at most one step per stream")
        now = self.clock()
        batch = self._frames(frames, now)
        # the frames' steps left to the per-stream path join the batch's other steps
        prepared = self._prepare_steps([*steps, *batch.requests], now)
        prepared.frames, prepared.order = batch, order
        return prepared

    def _prepare_steps(self, requests: Sequence[StepRequest], now: float) -> Prepared:
        """:meth:`prepare` of StepRequests."""
        streams = [r.stream for r in requests]
        if len(set(streams)) != len(streams):
            raise ValueError("a batch must hold at most one step per stream")
        outcomes: list[Outcome | None] = [None] * len(requests)
        columns = None
        rest: Sequence[int] = range(len(requests))
        if self.table is not None:
            columns, rest = self._columns(self.table, requests, now, outcomes)
        records = self.store.get_many([streams[i] for i in rest])
        digests: list[bytes] = [b""] * len(requests)  # the bulk steps' are derived when asked
        for i in rest:
            digests[i] = requests[i].digest
        # (index, decision, stored row or None: from zero, the series the row is bound to)
        to_apply: list[Item] = []
        histories: dict[int, bytes] = {}  # index -> the answers the new record keeps
        keep = self.replay_window - 1
        ttl_s, codec = self.ttl_s, self.codec
        for i, record in zip(rest, records, strict=True):
            request = requests[i]
            if (  # the usual step: the next one of a live stream (decide()'s Apply, inline)
                record is not None
                and not request.start
                and request.seq == record.seq + 1
                and record.intact(request.stream)
                and not (ttl_s > 0 and abs(now - record.updated) > ttl_s)
            ):
                refusal, bound = _continuation(codec, record, request)
                if refusal is not None:
                    outcomes[i] = refusal
                else:
                    to_apply.append((i, record.generation, False, record.state, bound))
                    if keep > 0:
                        histories[i] = kept_answers(record, keep)
                continue
            decision = decide(
                record,
                stream=request.stream,
                seq=request.seq,
                start=request.start,
                digest=digests[i],
                now=now,
                ttl_s=ttl_s,
            )
            if type(decision) is Apply:
                if decision.from_zero:
                    to_apply.append((i, decision.expected, decision.creates, None, request.series))
                    if (  # a restart keeps the answers of the stream it restarts
                        record is not None
                        and keep > 0
                        and not decision.creates
                        and record.intact(request.stream)
                    ):
                        histories[i] = kept_answers(record, keep)
                    continue
                if record is None:  # decide() continues only a stored record
                    raise RuntimeError(
                        "internal error: a step continues a stream with no stored record"
                    )
                refusal, bound = _continuation(codec, record, request)
                if refusal is not None:
                    outcomes[i] = refusal
                else:
                    to_apply.append((i, decision.expected, False, record.state, bound))
                    if keep > 0 and not decision.creates and record.intact(request.stream):
                        histories[i] = kept_answers(record, keep)
            elif type(decision) is Replay:
                outcomes[i] = StepResult(request.seq, decision.output, replayed=True)
            else:
                outcomes[i] = decision  # type: ignore[assignment]
        to_apply = self._within_capacity(to_apply, outcomes)
        prepared = Prepared(requests, digests, outcomes, columns=columns)
        if to_apply:
            self._apply(prepared, to_apply, now, histories)
        return prepared

    def _with_time(self, table: ColumnTable, timed: int, untimed: int) -> bool | None:
        """Which kind of a batch's ``timed`` steps sent with a time and ``untimed`` steps
        sent without ``table`` continues (they take separate model calls, as on the
        per-stream path): the more numerous kind it takes, the other the per-stream way.
        None: neither (a run that reads times refuses a step without one; an untimed table
        keeps no times)."""
        takes_timed = timed > 0 and table.timed
        takes_untimed = untimed > 0 and not self.function.needs_time
        if takes_timed and (not takes_untimed or timed >= untimed):
            return True
        return False if takes_untimed else None

    def _columns(
        self, table: ColumnTable, requests: Sequence[StepRequest], now: float, outcomes: list[Any]
    ) -> tuple[tuple[list[int], ColumnWrite, list[bytes]] | None, list[int]]:
        """Continue the usual steps in bulk: one gather of their rows, one model call, their
        answers and new rows as arrays. ``(what to write or None, the indices left to the
        per-stream path)``: a step is taken when it is the next one of a live stream, one
        timestep, without start or series, its time (if sent) after the stream's last (what
        :func:`decide` applies as a plain continuation); everything else (a first step, a
        restart, a retry, a gap, a time not after the last or missing, a row of another
        layout, an input the run refuses) goes the per-stream way, as before."""
        untimed: list[int] = []
        timed: list[int] = []
        for i, r in enumerate(requests):
            if not r.start and r.series is None and r.x.shape[0] == 1:
                (untimed if r.time is None else timed).append(i)
        with_time = self._with_time(table, len(timed), len(untimed))
        if with_time is None:
            return None, list(range(len(requests)))
        usual = timed if with_time else untimed
        streams = [requests[i].stream for i in usual]
        seqs = np.fromiter((requests[i].seq for i in usual), np.int64, len(usual))
        x = np.stack([requests[i].x for i in usual])  # (m, 1, F_raw)
        single = np.fromiter((requests[i].single for i in usual), bool, len(usual))
        time = None
        if with_time:
            stamps: list[Any] = [requests[i].time for i in usual]  # each [1] int64
            time = np.concatenate(stamps).astype(np.int64, copy=False)  # (m,)
        bulk = self._continue(table, streams, seqs, x, single, time, now)
        if bulk is None or not len(bulk.taken):
            return None, list(range(len(requests)))
        taken = bulk.taken.tolist()
        outputs = _outputs(bulk.y, bulk.warm, single[bulk.taken].tolist())
        kept, answers = [], []
        for j, good in enumerate(bulk.finite):
            i = usual[taken[j]]
            if good:
                kept.append(i)
                answers.append(outputs[j])
            else:
                outcomes[i] = _non_finite(requests[i].seq)
        taken_set = {usual[k] for k in taken}
        rest = [i for i in range(len(requests)) if i not in taken_set]
        if bulk.write is None:
            return None, rest
        return (kept, bulk.write, answers), rest

    def _continue(
        self,
        table: ColumnTable,
        streams: list[str],
        seqs: np.ndarray,
        x: np.ndarray,
        single: np.ndarray,
        time: np.ndarray | None,
        now: float,
    ) -> _Bulk | None:
        """The steps ``x [m, 1, F]`` (``seqs [m]``, sent as ``[F]`` where ``single [m]``, at
        ``time [m]`` int64 or None: sent without) of ``streams`` that continue a live stream
        of ``table`` (or a record of this layout, moved to the table on write), run in one
        model call; a step whose time is not after its stream's last is left to the
        per-stream path (which refuses it). None: the run refused an input (every step goes
        the per-stream way, which finds the row)."""
        read = table.read(streams)
        ok = (read.rows >= 0) & (read.seq + 1 == seqs)
        if self.ttl_s > 0:
            ok &= np.abs(now - read.updated) <= self.ttl_s
        m = len(streams)
        moved: list[Record | None] = [None] * m
        prefixes: list[bytes] = [b""] * m
        bodies = read.bodies
        body_bytes = self.codec.body_bytes
        for k in np.flatnonzero(read.rows < 0).tolist():  # a record: moved to the table
            record = read.records[k]
            request = StepRequest(streams[k], int(seqs[k]), x[k], bool(single[k]), False)
            # (the series and fit checks of _continuation; its time is checked below)
            if (
                record is not None
                and record.seq + 1 == request.seq
                and record.intact(request.stream)
                and not is_expired(record, now, self.ttl_s)
                and _continuation(self.codec, record, request)[0] is None
            ):
                ok[k] = True
                moved[k] = record
                prefixes[k] = record.state[:-body_bytes]
                at = len(record.state) - body_bytes
                bodies[k] = np.frombuffer(record.state, np.uint8, body_bytes, at)
        if time is not None:  # a stream's times increase (NO_TIME: it has none yet)
            last = self.codec.body_times(bodies)
            ok &= (last == NO_TIME) | (time > last)
        taken = np.flatnonzero(ok)
        if not len(taken):
            nothing = torch.empty((0, 1, len(self.function.targets)), dtype=torch.float64)
            return _Bulk(taken, nothing, np.empty((0, 1), bool), [], None)
        whole = len(taken) == m
        state = self.codec.decode_bodies(bodies if whole else bodies[taken])
        try:
            times = None if time is None else (time if whole else time[taken])[:, None]
            y, new_state = self._run(state, x if whole else x[taken], times)
        except ValueError:  # an input outside the run's domain: found row by row
            return None
        warm, finite = self._checks(state, y, new_state)
        keep = [j for j, good in enumerate(finite) if good]
        if not keep:
            return _Bulk(taken, y, warm, finite, None)
        chosen = taken[keep]
        answers = y.numpy()[keep, 0]  # (c, O) float64
        if warm.any():  # no answer yet (JSON null): kept as a NaN row
            answers = answers.copy()
            answers[warm[keep, 0]] = np.nan
        bodies = self.codec.encode_bodies(new_state)
        if len(keep) < len(taken):
            bodies = bodies[keep]
        write = ColumnWrite(
            streams=[streams[k] for k in chosen.tolist()],
            rows=read.rows[chosen],
            version=read.version[chosen],
            moved=[moved[k] for k in chosen.tolist()],
            prefixes=[prefixes[k] for k in chosen.tolist()],
            seq=seqs[chosen],
            bodies=bodies,
            y=answers,
            x=x[chosen, 0],
            single=single[chosen],
            updated=now,
            extra=None if read.extra is None else read.extra[chosen],
            time=None if time is None else time[chosen],
        )
        return _Bulk(taken, y, warm, finite, write)

    def _frames(self, frames: Sequence[FrameSteps], now: float) -> _FrameBatch:
        """The vectorised part of a batch's frames: their steps that continue a table row, in
        one model call; the others (a first step, a retry, a gap, a stale or expired stream, an
        input the run refuses) are left to the per-stream path, each as its StepRequest."""
        sizes = [len(frame.streams) for frame in frames]
        time: np.ndarray | None
        sent: np.ndarray | None = None
        if len(frames) == 1:
            streams, seqs, x, time = frames[0].streams, frames[0].seq, frames[0].x, frames[0].time
        else:
            streams = [stream for frame in frames for stream in frame.streams]
            seqs = np.concatenate([frame.seq for frame in frames])
            x = np.concatenate([frame.x for frame in frames])
            timed = [frame.time is not None for frame in frames]
            time = None
            if any(timed):  # (a frame sent without times: zeros, never read)
                time = np.concatenate(
                    [
                        np.zeros(size, np.int64) if frame.time is None else frame.time
                        for frame, size in zip(frames, sizes, strict=True)
                    ]
                )
                if not all(timed):
                    sent = np.repeat(timed, sizes)
        n = len(streams)
        outputs = len(self.function.targets)
        y = np.full((n, 1, outputs), np.nan, np.float64)  # (n, 1, O): NaN, no answer (yet)
        others: dict[int, Outcome] = {}
        bulk = None
        table = self.table
        if table is not None:
            # the steps sent with a time (the usual batch holds one kind: all, or none)
            every = n if time is not None else 0
            count = int(sent.sum()) if sent is not None else every
            with_time = self._with_time(table, count, n - count)
            if with_time is not None:
                pick = None if sent is None else np.flatnonzero(sent if with_time else ~sent)
                times = time if with_time else None
                bulk = self._continue_some(table, streams, seqs, x, times, pick, now)
        if bulk is None:
            left = np.arange(n)
            written = np.empty(0, np.int64)
        else:
            rest = np.ones(n, bool)
            rest[bulk.taken] = False
            left = np.flatnonzero(rest)
            finite = np.asarray(bulk.finite, bool)
            written = bulk.taken[finite] if len(finite) else bulk.taken[:0]
            if len(written):
                y[written] = bulk.y.numpy()[finite]
                if bulk.warm.any():
                    y[written[bulk.warm[finite, 0]]] = np.nan
            for k in bulk.taken[~finite].tolist() if len(finite) else []:
                others[k] = _non_finite(int(seqs[k]))
        requests = [_frame_step(streams, seqs, x, k, time, sent) for k in left.tolist()]
        return _FrameBatch(
            sizes, streams, seqs, x, time, sent, y, others, written,
            bulk.write if bulk else None, left.tolist(), requests,
        )  # fmt: skip

    def _continue_some(
        self,
        table: ColumnTable,
        streams: list[str],
        seqs: np.ndarray,
        x: np.ndarray,
        time: np.ndarray | None,
        pick: np.ndarray | None,
        now: float,
    ) -> _Bulk | None:
        """:meth:`_continue` of a frame's steps sent as ``[F]`` (``pick``: those of its
        indices only, None: all; ``time [n]`` or None: those steps were sent without), with
        ``taken`` as indices of all the steps."""
        if pick is None:
            return self._continue(table, streams, seqs, x, np.ones(len(streams), bool), time, now)
        chosen = [streams[k] for k in pick.tolist()]
        times = None if time is None else time[pick]
        bulk = self._continue(
            table, chosen, seqs[pick], x[pick], np.ones(len(pick), bool), times, now
        )
        if bulk is None:
            return None
        return bulk._replace(taken=pick[bulk.taken])

    def finish(self, prepared: Prepared) -> list[Any]:
        """Commit what :meth:`prepare` computed (one atomic CAS write) and fill the outcomes."""
        return self.finish_many([prepared])[0]

    def finish_many(self, batches: Sequence[Prepared]) -> list[list[Any]]:
        """Commit several prepared batches (of distinct streams) in ONE atomic write: one
        fsync for all of them (group commit). Nothing is acknowledged before it returns."""
        updates = [update for prepared in batches for update in prepared.updates]
        table = self.table
        writes: list[tuple[ColumnTable, ColumnWrite]] = []
        if table is not None:  # the bulk steps' rows, written with the records
            for prepared in batches:
                if prepared.columns is not None:
                    writes.append((table, prepared.columns[1]))
                if prepared.frames is not None and prepared.frames.write is not None:
                    writes.append((table, prepared.frames.write))
        if writes:
            written, rows_written = self.store.commit_with_rows(updates, writes)
        else:
            written, rows_written = (self.store.commit(updates) if updates else []), []
        results, at, next_write = [], 0, 0
        for prepared in batches:
            count = len(prepared.updates)
            if prepared.columns is not None and table is not None:
                self._settle_columns(prepared, rows_written[next_write])
                next_write += 1
            frames = prepared.frames
            if frames is not None and frames.write is not None and table is not None:
                self._settle_frames(frames, rows_written[next_write])
                next_write += 1
            outcomes = self._settle(prepared, written[at : at + count])
            results.append(outcomes if frames is None else self._assemble(prepared, outcomes))
            at += count
        return results

    def _settle_columns(self, prepared: Prepared, written: list[bool]) -> None:
        """Fill the outcomes of the bulk steps from what their row writes' CAS gave."""
        if prepared.columns is None:
            return
        indices, _, outputs = prepared.columns
        requests, outcomes, digests = prepared.requests, prepared.outcomes, prepared.digests
        lost = []
        for i, output, ok in zip(indices, outputs, written, strict=True):
            if ok:
                outcomes[i] = StepResult(requests[i].seq, output, replayed=False)
            else:
                lost.append(i)
                digests[i] = requests[i].digest
        if lost:
            self._report_lost(requests, digests, lost, outcomes)

    def _settle_frames(self, frames: _FrameBatch, written: list[bool]) -> None:
        """A frame step whose row write lost its CAS (another writer changed the stream since
        it was read) is answered as the per-stream path answers it: a replay when that
        writer applied this very step, else 409 seq_race; its answer is taken back."""
        ok = np.asarray(written, bool)
        if ok.all():
            return
        lost = frames.written[~ok].tolist()
        frames.y[lost] = np.nan
        requests = [frames.request(k) for k in lost]
        outcomes: list[Outcome | None] = [None] * len(lost)
        digests = [request.digest for request in requests]
        self._report_lost(requests, digests, list(range(len(lost))), outcomes)
        for k, outcome in zip(lost, outcomes, strict=True):
            frames.others[k] = outcome  # type: ignore[assignment]

    def _assemble(self, prepared: Prepared, outcomes: list[Outcome]) -> list[Any]:
        """The batch's outcomes in the order of its items: a StepRequest's, or a frame's
        :class:`FrameOutcome` (with the outcomes of its steps that went the per-stream way)."""
        frames, order = prepared.frames, prepared.order
        if frames is None or order is None:
            return outcomes
        plain = len(outcomes) - len(frames.left)
        for k, outcome in zip(frames.left, outcomes[plain:], strict=True):
            frames.others[k] = outcome
        answers = frames.split()
        return [outcomes[at] if at >= 0 else answers[-1 - at] for at in order]

    def _settle(self, prepared: Prepared, written: Sequence[bool]) -> list[Outcome]:
        """Fill the outcomes of ``prepared`` from what its updates' CAS gave."""
        outcomes, requests, digests = prepared.outcomes, prepared.requests, prepared.digests
        if prepared.updates:
            self.live.add(sum(ok and c for ok, c in zip(written, prepared.creates, strict=True)))
            lost = []
            for i, output, ok in zip(prepared.committed, prepared.answers, written, strict=True):
                if ok:
                    outcomes[i] = StepResult(requests[i].seq, output, replayed=False)
                else:
                    lost.append(i)
            if lost:
                self._report_lost(requests, digests, lost, outcomes)
        return outcomes  # type: ignore[return-value]  # every slot is filled

    def _within_capacity(self, to_apply: list[Item], outcomes: list[Outcome | None]) -> list[Item]:
        """Refuse new streams past ``max_live_streams`` (503 stream_capacity); steps of live
        streams always pass. The count is the kept estimate (``livecount.py``), never a scan."""
        limit = self.max_live_streams
        creating = [item for item in to_apply if item[2]]
        if limit is None or not creating:
            return to_apply
        room = max(limit - self.live.value, 0)
        refused = {item[0] for item in creating[room:]}
        for i in refused:
            outcomes[i] = Reject(
                503,
                "stream_capacity",
                f"the server holds its limit of {limit} live streams; end idle streams "
                "(DELETE), wait for them to expire, or raise --max-live-streams",
                1,
            )
        return [item for item in to_apply if item[0] not in refused]

    def _to_device(self, state: RunState) -> RunState:
        if self.device.type == "cpu":
            return state
        transforms = {name: t.to(self.device) for name, t in state.transforms.items()}
        return RunState(transforms, tuple(s.to(self.device) for s in state.models))

    def _to_cpu(self, state: RunState) -> RunState:
        if self.device.type == "cpu":  # (every tensor of a CPU run is there already)
            return state
        transforms = {name: t.cpu() for name, t in state.transforms.items()}
        return RunState(transforms, tuple(s.to("cpu") for s in state.models))

    def _fresh(self, request: StepRequest) -> RunState | Reject:
        """A new stream's state, bound to the request's series (the run's statistics)."""
        if self.function.needs_series and request.series is None:
            return Reject(
                422,
                "series_required",
                "this run scales each series with its own statistics: name the stream's "
                'series as "series" on its first step (the id column\'s value it was trained '
                "on); later steps may leave it out",
                request.seq,
            )
        try:  # on the CPU, like the rows decoded from the store it joins
            return self._to_cpu(self.function.initial_state([request.series]))
        except ValueError as error:
            return Reject(422, "unknown_series", str(error), request.seq)

    def _states(
        self, prepared: Prepared, to_apply: list[Item]
    ) -> tuple[RunState | None, list[int], list[str | None]]:
        """The batch state of ``to_apply`` (stored rows decoded at once, new streams bound to
        their series), each item's row in it (-1: refused) and its series."""
        requests, outcomes = prepared.requests, prepared.outcomes
        stored = [item[3] for item in to_apply if item[3] is not None]
        parts = [self.codec.decode(stored)] if stored else []
        position, series = [], []
        next_stored, next_fresh = 0, len(stored)
        for i, _, _, row, bound in to_apply:
            request = requests[i]
            series.append(bound)
            if row is not None:
                position.append(next_stored)
                next_stored += 1
                continue
            fresh = self._fresh(request)
            if isinstance(fresh, Reject):
                outcomes[i] = fresh
                position.append(-1)
            else:
                parts.append(fresh)
                position.append(next_fresh)
                next_fresh += 1
        if not parts:
            return None, position, series
        # (one part, the usual batch of stored streams or one new one: no copy to make)
        return (parts[0] if len(parts) == 1 else RunState.cat(parts)), position, series

    def _apply(
        self,
        prepared: Prepared,
        to_apply: list[Item],
        now: float,
        histories: dict[int, bytes],
    ) -> None:
        requests, outcomes = prepared.requests, prepared.outcomes
        prepared.histories = histories
        state, position, series = self._states(prepared, to_apply)
        if state is None:
            return
        last_time = state.transforms["time"].tolist()
        # one call per (steps, time sent?) group: the step function takes no padding
        groups: dict[tuple[int, bool], list[int]] = {}
        for j, item in enumerate(to_apply):
            i = item[0]
            request = requests[i]
            if position[j] < 0:
                continue
            if request.time is None and self.function.needs_time:
                outcomes[i] = _time_required(request.seq)
                continue
            last = last_time[position[j]]
            if request.time is not None and last != NO_TIME and int(request.time[0]) <= last:
                outcomes[i] = _time_not_after(request, last)
                continue
            groups.setdefault((request.x.shape[0], request.time is not None), []).append(j)
        for members in groups.values():
            self._apply_group(prepared, to_apply, state, position, series, members, now)

    @torch.inference_mode()
    def _run(
        self, state: RunState, xs: np.ndarray, times: np.ndarray | list[np.ndarray] | None
    ) -> tuple[torch.Tensor, RunState]:
        x = torch.from_numpy(xs).to(self.device)  # (n, k, F_raw)
        time_t = None
        if times is not None:  # (n, k) int64
            stamps = times if isinstance(times, np.ndarray) else np.stack(times)
            time_t = torch.from_numpy(stamps).to(self.device)
        # the run's answer: the members' mean, with the baselines validation chose
        y, new_state = self.function.step(self._to_device(state), x, time_t)
        return y.cpu(), self._to_cpu(new_state)  # (n, k, O) float64

    def _apply_group(
        self,
        prepared: Prepared,
        to_apply: list[Item],
        state: RunState,
        position: list[int],
        series: list[str | None],
        members: list[int],
        now: float,
    ) -> None:
        requests, outcomes = prepared.requests, prepared.outcomes
        indices = [to_apply[j][0] for j in members]
        picked = [position[j] for j in members]
        whole = len(picked) == state.batch_size and picked == list(range(len(picked)))
        rows = state if whole else state.select(picked)
        xs = [requests[i].x for i in indices]
        times = None if requests[indices[0]].time is None else [requests[i].time for i in indices]
        try:
            y, new_state = self._run(rows, np.stack(xs), times)  # type: ignore[arg-type]
        except ValueError as error:  # an input outside the run's domain (log of a negative)
            if len(members) > 1:  # find the row(s): each alone, the others still apply
                for j in members:
                    self._apply_group(prepared, to_apply, state, position, series, [j], now)
            else:
                seq = requests[indices[0]].seq
                outcomes[indices[0]] = Reject(422, "invalid_x", str(error), seq)
            return
        warm, finite = self._checks(rows, y, new_state)
        outputs = _outputs(y, warm, [requests[i].single for i in indices])
        bound = [series[j] for j in members]
        codec = self.codec
        blobs = codec.encode(new_state, bound)
        digests, histories = prepared.digests, prepared.histories
        fresh = os.urandom(16 * len(members))  # every new record's generation, drawn at once
        answered_list, committed, updates = prepared.answers, prepared.committed, prepared.updates
        creates = prepared.creates
        for row, (j, i) in enumerate(zip(members, indices, strict=True)):
            request = requests[i]
            if not finite[row]:
                outcomes[i] = _non_finite(request.seq)
                continue
            output = outputs[row]
            answered_list.append(output)
            committed.append(i)
            item = to_apply[j]
            record = new_record(
                request.stream,
                seq=request.seq,
                state=blobs[row],
                output=output,
                digest=digests[i],
                updated=now,
                history=histories.get(i, b""),
                generation=fresh[16 * row : 16 * row + 16],
            )
            record.row_label = (codec, bound[row])  # the next step need not parse the row
            updates.append(Update(request.stream, item[1], record))
            creates.append(item[2])

    def _checks(
        self, rows: RunState, y: torch.Tensor, new_state: RunState
    ) -> tuple[np.ndarray, list[bool]]:
        """``(warm [n, k], finite [n])`` of a model call on ``rows``: the steps with no answer
        yet, and whether each row's answers and new state are finite."""
        steps = y.shape[1]
        # a differenced stream's first steps have no past to difference (and with shift > 1
        # its answers come `delay` steps late): no answer (null)
        # (NumPy views of the CPU tensors: for a small batch each torch op costs more than
        # the work it does)
        seen = rows.transforms["steps"].numpy()[:, None] + np.arange(steps)  # (n, k)
        warm: np.ndarray = seen < self.function.order + self.function.delay
        # (a run answering with baselines alone has their answer there, as predict does)
        answered = np.isfinite(y.numpy()).all(axis=-1)  # (n, k)
        warm &= ~answered
        return warm, _finite_rows(answered, warm, new_state)

    # --- forecasts ---------------------------------------------------------------------------

    def forecast(
        self,
        stream: str,
        horizon: int,
        covariates: dict[str, list[float]] | None,
        sampling: Sampling | None = None,
        levels: Sequence[float] | None = None,
    ) -> tuple[int, list[Any], list[list[float]], dict[float, list[list[float]]] | None]:
        """``(seq, times [H], y [H][O], quantiles {level: [H][O]} or None)``: the stream's
        forecast from its stored state, which is not changed (nothing is written). Its
        quantiles: with ``sampling``, of that many sampled paths
        (:meth:`RunStep.sample_forecast`); else the run's calibrated intervals at ``levels``
        (default :data:`seqstate.recipe.intervals.DEFAULT_LEVELS`, what ``seqstate forecast``
        writes) by :meth:`RunStep.interval_quantiles`, None for a run without an interval
        table. Raises ApiError when it cannot be given."""
        if sampling is not None:
            self._check_sampling(sampling, horizon)
        else:
            levels = self._check_levels(levels)
        (record,) = self.store.get_many([stream])
        if record is not None and not record.intact(stream):
            raise ApiError(409, "state_incompatible", _incompatible(record.seq).message)
        if record is None or is_expired(record, self.clock(), self.ttl_s):
            raise ApiError(
                404,
                "stream_not_found",
                f"stream {stream!r} does not exist (never started, ended, or expired after the "
                "TTL)",
            )
        if not self.codec.fits(record.state):
            raise ApiError(409, "state_incompatible", _incompatible(record.seq).message)
        state = self.codec.decode([record.state])
        need = self.function.order + 1  # the first answer comes after the differencing's lags
        taken = int(state.transforms["steps"][0])
        if taken < need:
            raise ApiError(
                409,
                "stream_warming_up",
                f"stream {stream!r} has taken {taken} step(s); this run forecasts after {need} "
                "(its differencing needs that much past)",
            )
        future = self._covariates(covariates, horizon)
        try:
            with torch.inference_mode():
                times, y = self.function.forecast(self._to_device(state), horizon, future)
        except ValueError as error:
            raise ApiError(422, "invalid_forecast", str(error)) from None
        values = y[0].cpu()  # (H, O) float64
        if not bool(torch.isfinite(values).all()):
            raise ApiError(
                422,
                "non_finite_output",
                "the forecast overflowed to NaN or infinity; the stream is unchanged",
            )
        stamps = times[0].tolist()
        has_time = int(state.transforms["time"][0]) != NO_TIME
        shown: list[Any] = iso_times(stamps) if has_time and self.function.frequency else stamps
        quantiles = None
        if sampling is not None:
            series = self.codec.series(record.state)  # (its paths' key, as the CLI's)
            quantiles = self._quantiles(state, horizon, future, sampling, series)
        elif levels:
            bands = self.function.interval_quantiles(state, y.cpu(), levels)
            if bands is not None:  # [1, H, O, Q]
                quantiles = {level: bands[0, :, :, q].tolist() for q, level in enumerate(levels)}
        return record.seq, shown, values.tolist(), quantiles

    def _check_levels(self, levels: Sequence[float] | None) -> tuple[float, ...]:
        """The calibrated quantiles' levels: ``levels`` (422 when the run has no interval
        table or a level is outside (0, 1)), or the default ones where the run has a table."""
        from seqstate.recipe.intervals import DEFAULT_LEVELS

        if levels is None:
            return DEFAULT_LEVELS if self.function.intervals is not None else ()
        if self.function.intervals is None:
            raise ApiError(
                422,
                "intervals_unavailable",
                "this run has no interval table (it was trained before calibrated intervals, "
                "or with --split none), so it answers point forecasts only: leave quantiles "
                "out, send samples for a run with a distribution head, or train it again",
            )
        bad = [level for level in levels if not 0 < level < 1]
        if bad:
            raise ApiError(
                422, "invalid_quantiles", f"quantiles must be levels in (0, 1); received {bad}"
            )
        return tuple(float(level) for level in levels)

    def can_sample(self) -> bool:
        """Whether the run samples paths: every member has a distribution head."""
        return all(member.head is not None for member in self.function.members)

    def _check_sampling(self, sampling: Sampling, horizon: int) -> None:
        if not self.can_sample():
            raise ApiError(
                422,
                "sampling_unsupported",
                "this run has no distribution head, so it cannot sample paths: leave samples "
                "out (quantiles alone are the run's calibrated intervals), or train with "
                "seqstate train --distribution auto|normal|studentt|negbin|quantile",
            )
        if sampling.samples * horizon > MAX_SAMPLED_STEPS:
            raise ApiError(
                422,
                "too_many_samples",
                f"samples x horizon must be at most {MAX_SAMPLED_STEPS}; received "
                f"{sampling.samples} x {horizon}: ask fewer samples or a shorter horizon",
            )
        bad = [level for level in sampling.quantiles if not 0 < level < 1]
        if bad:
            raise ApiError(
                422, "invalid_quantiles", f"quantiles must be levels in (0, 1); received {bad}"
            )

    def _quantiles(
        self,
        state: RunState,
        horizon: int,
        future: np.ndarray | None,
        sampling: Sampling,
        series: str | None,
    ) -> dict[float, list[list[float]]]:
        try:
            with torch.inference_mode():
                _, paths = self.function.sample_forecast(
                    self._to_device(state),
                    horizon,
                    future,
                    samples=sampling.samples,
                    seed=sampling.seed,
                    keys=[series],
                )
        except ValueError as error:
            raise ApiError(422, "invalid_forecast", str(error)) from None
        drawn = paths[0].cpu().numpy()  # (K * samples, H, O) raw units
        if not np.isfinite(drawn).all():
            raise ApiError(
                422,
                "non_finite_output",
                "a sampled path overflowed to NaN or infinity; the stream is unchanged",
            )
        return {level: np.quantile(drawn, level, axis=0).tolist() for level in sampling.quantiles}

    def _covariates(
        self, covariates: dict[str, list[float]] | None, horizon: int
    ) -> np.ndarray | None:
        names = list(self.function.covariates)
        if not names:
            if covariates:
                raise ApiError(
                    422,
                    "invalid_covariates",
                    f"this run reads no covariates; received {sorted(covariates)[:5]}",
                )
            return None
        given = covariates or {}
        missing = [name for name in names if name not in given]
        extra = sorted(set(given) - set(names))
        if missing or extra:
            raise ApiError(
                422,
                "invalid_covariates",
                f"covariates must name exactly the run's known-future columns {names}, each "
                f"with {horizon} values (one per forecast step); missing {missing}, unknown "
                f"{extra}",
            )
        values = np.zeros((1, horizon, len(names)), dtype=np.float32)
        for k, name in enumerate(names):
            column = given[name]
            bad = [j for j, v in enumerate(column) if not np.isfinite(v)]
            if len(column) != horizon or bad:
                received = (
                    f"received {len(column)}"
                    if len(column) != horizon
                    else f"value {bad[0]} is {column[bad[0]]}"
                )
                raise ApiError(
                    422,
                    "invalid_covariates",
                    f"covariates[{name!r}] must hold {horizon} finite values (one per forecast "
                    f"step); {received}",
                )
            values[0, :, k] = column
        return values

    def _report_lost(
        self,
        requests: Sequence[StepRequest],
        digests: list[bytes],
        lost: list[int],
        outcomes: list[Outcome | None],
    ) -> None:
        # Another writer (a replica, a DELETE and re-create, the sweeper) changed the stream
        # between our read and our commit. Nothing of ours was written.
        current = self.store.get_many([requests[i].stream for i in lost])
        for i, now_stored in zip(lost, current, strict=True):
            request = requests[i]
            intact = now_stored if now_stored and now_stored.intact(request.stream) else None
            kept = None
            if intact is not None:
                same = intact.seq == request.seq
                kept = (intact.digest, intact.output) if same else intact.earlier(request.seq)
            if kept is not None and kept[0] == digests[i]:  # the other writer applied it
                outcomes[i] = StepResult(request.seq, kept[1], replayed=True)
            else:
                expected = intact.seq + 1 if intact else 1
                outcomes[i] = Reject(
                    409,
                    "seq_race",
                    f"stream changed while step {request.seq} was being applied (another "
                    f"replica or request advanced, ended or re-created it); expected "
                    f"{expected}",
                    expected,
                )


def _outputs(y: torch.Tensor, warm: np.ndarray, single: Sequence[bool]) -> list[bytes]:
    """JSON of each row's answer ``y [n, k, O]`` (null at its ``warm [n, k]`` steps): ``[O]``
    where the step was sent as one ``[F]`` (``single``), else ``[k][O]``."""
    if y.shape[1] == 1 and y.shape[0] and not warm.any():
        # one timestep per row, no nulls: one JSON text of the batch, cut at the rows (a
        # number's text holds no bracket), each row's text as dumps of that row writes it
        parts = jsonio.dumps_finite(y[:, 0, :].tolist())[2:-2].split(b"],[")
        return [
            b"[" + part + b"]" if one else b"[[" + part + b"]]"
            for part, one in zip(parts, single, strict=True)
        ]
    answers: list[Any] = y.tolist()
    warm_rows: list[bool] = list(warm.any(axis=1).tolist())  # type: ignore[arg-type]
    dumps, outputs = jsonio.dumps_finite, []
    for row, answer in enumerate(answers):  # answer: [k][O]
        if warm_rows[row]:
            answer = [
                [None] * len(values) if warm[row, t] else values for t, values in enumerate(answer)
            ]
        outputs.append(dumps(answer[0] if single[row] else answer))
    return outputs


def _finite_rows(answered: np.ndarray, warm: np.ndarray, state: RunState) -> list[bool]:
    """Per batch row: whether its answers (``answered [n, k]``: finite, outside the warm-up
    steps ``warm [n, k]``, which have none) and its new model states are all finite."""
    ok = (answered | warm).all(axis=1)  # (n,)
    for model_state in state.models:
        for tensor in model_state.tensors():  # (L, n, H)
            values = tensor.detach().cpu().numpy()
            ok &= np.isfinite(values).all(axis=(0, 2))
    return ok.tolist()


def _continuation(
    codec: RunRowCodec, record: Record, request: StepRequest
) -> tuple[Reject | None, Any]:
    """(the step's refusal or None, the series the stream is bound to) of ``request``
    continuing the stored ``record``: a row that does not fit this run (another run's store,
    an older format) is that stream's 409, never its batch-mates' failure; a step naming
    another series than the stream's is refused."""
    label = record.row_label
    if label is not None and label[0] is codec:  # built by this engine: no parse of the row
        fits, bound = True, label[1]
    else:
        fits, bound = codec.read_label(record.state)
    if not fits:
        return _incompatible(request.seq), bound
    if request.series is not None and request.series != bound:
        return _series_mismatch(request, bound), bound
    return None, bound


def _series_mismatch(request: StepRequest, bound: str | None) -> Reject:
    return Reject(
        409,
        "series_mismatch",
        f"stream {request.stream!r} is bound to series {bound!r} (named on its first step); "
        f"this step names {request.series!r}. Leave series out after the first step, or end "
        "the stream (DELETE) to start it on another series",
        request.seq,
    )


def _time_required(seq: int) -> Reject:
    return Reject(
        422,
        "time_required",
        'this run reads calendar features computed from each step\'s time: send "time" '
        "(Unix seconds or a date like 2024-01-31T12:00:00; a list for k steps)",
        seq,
    )


def _time_not_after(request: StepRequest, last: int) -> Reject:
    received = str(np.datetime64(int(request.time[0]), "s")) if request.time is not None else "?"
    return Reject(
        422,
        "invalid_time",
        f"step {request.seq} is at {received}, not after the stream's last step at "
        f"{np.datetime64(int(last), 's')}; a stream's times must increase (a table with "
        "repeated or unordered times is refused by predict too). Nothing was applied",
        request.seq,
    )


def _incompatible(seq: int) -> Reject:
    return Reject(
        409,
        "state_incompatible",
        "the stored state of this stream does not fit the served model (another model's "
        "state, or a damaged record); end the stream (DELETE) or restart it with start=true",
        seq,
    )


def _non_finite(seq: int) -> Reject:
    return Reject(
        422,
        "non_finite_output",
        f"step {seq} made the model's output or state NaN or infinite (the input overflows "
        "after normalisation: check its scale); nothing was stored, the stream is unchanged",
        seq,
    )
