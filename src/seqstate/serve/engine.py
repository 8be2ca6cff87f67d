"""Applying a batch of steps: load records, decide, one model call, one atomic commit.

Runs on the model worker thread (never on the event loop). For a batch of steps of distinct
streams::

    records  = store.get_many(streams)                 # one read
    decision = rules.decide(record, seq, start, ...)    # apply / replay / reject, per step
    fits?    = codec.fits(record.state)                 # per record: a bad one fails alone
    y, state = advance(model, codec.decode(rows), x [n, k, F])   # one call
    finite?  = y and the new state of each row          # NaN/inf: 422, nothing stored
    written  = store.commit(updates)                    # one transaction, CAS per stream
    lost CAS -> reload: the same step by another replica is a replay, anything else a 409

Steps with different numbers of timesteps ``k`` share the call: shorter ones are padded at
the end and masked, which the layers treat as "state unchanged" (so each row's returned state
is the state after its own last step).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from seqstate.core.state import State
from seqstate.inference.streams import advance
from seqstate.serve import jsonio
from seqstate.serve.codec import StateCodec
from seqstate.serve.livecount import LiveCount
from seqstate.serve.rules import Apply, Reject, Replay, decide
from seqstate.serve.stores.base import Record, StateStore, Update, kept_answers, new_record

__all__ = ["Engine", "Outcome", "Prepared", "StepRequest", "StepResult"]


@dataclasses.dataclass(frozen=True)
class StepRequest:
    """One validated step of one stream."""

    stream: str
    seq: int
    x: np.ndarray  # [k, F] float32, finite
    single: bool  # the request sent one step as [F]: answer y as [O] rather than [k, O]
    start: bool
    series: str | None = None  # the series whose scaling was applied (part of the digest)
    # model-space outputs [k, O] -> raw units (the run's scaling); None: answered as they are
    decode: Callable[[np.ndarray], np.ndarray] | None = dataclasses.field(
        default=None, compare=False
    )

    @property
    def digest(self) -> bytes:
        """Fingerprint of what the request asks for, to tell a retry from a different step."""
        h = hashlib.blake2b(digest_size=16)
        h.update(b"%d:%d:%d:" % (self.start, self.single, self.x.shape[0]))
        h.update(np.ascontiguousarray(self.x, dtype=np.float32).tobytes())
        if self.series is not None:  # absent: the digest of every request before #13's serving
            h.update(b":series:" + self.series.encode())
        return h.digest()


@dataclasses.dataclass(frozen=True)
class StepResult:
    seq: int
    output: bytes  # JSON of y
    replayed: bool  # True: a retry answered from the store, nothing applied


Outcome = StepResult | Reject


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


class Engine:
    """Applies batches of steps with ``model`` and ``store`` (see the module docstring)."""

    def __init__(
        self,
        model: torch.nn.Module,
        store: StateStore,
        *,
        ttl_s: float,
        device: torch.device | str = "cpu",
        clock: Callable[[], float] = time.time,
        max_live_streams: int | None = None,
        live: LiveCount | None = None,
        replay_window: int = 1,
    ) -> None:
        self.model = model
        self.store = store
        self.ttl_s = ttl_s
        self.device = torch.device(device)
        self.clock = clock
        self.max_live_streams = max_live_streams
        self.live = live if live is not None else LiveCount()  # never a scan per step
        self.replay_window = replay_window  # answers kept per stream (retries replayed)
        # template: type, layers, hidden size, dtype
        self._zero: State = model.initial_state(1)  # type: ignore[operator]
        self.codec = StateCodec(self._zero)

    def process(self, requests: Sequence[StepRequest]) -> list[Outcome]:
        """Apply ``requests`` (distinct streams) and make the new states durable."""
        return self.finish(self.prepare(requests))

    def prepare(self, requests: Sequence[StepRequest]) -> Prepared:
        """Read, decide and run the model; nothing is written yet (see :meth:`finish`)."""
        streams = [r.stream for r in requests]
        if len(set(streams)) != len(streams):
            raise ValueError("a batch must hold at most one step per stream")
        now = self.clock()
        records = self.store.get_many(streams)
        digests = [r.digest for r in requests]
        outcomes: list[Outcome | None] = [None] * len(requests)
        to_apply: list[tuple[int, Apply, bytes | None]] = []  # (index, decision, stored row)
        histories: dict[int, bytes] = {}  # index -> the answers the new record keeps
        for i, (request, record) in enumerate(zip(requests, records, strict=True)):
            decision = decide(
                record,
                stream=request.stream,
                seq=request.seq,
                start=request.start,
                digest=digests[i],
                now=now,
                ttl_s=self.ttl_s,
            )
            if isinstance(decision, Apply):
                row = None if decision.from_zero else self._stored_row(record)
                if row is None and not decision.from_zero:
                    outcomes[i] = _incompatible(request.seq)
                else:
                    to_apply.append((i, decision, row))
                    if (
                        record is not None
                        and not decision.creates
                        and record.intact(request.stream)
                    ):
                        histories[i] = kept_answers(record, self.replay_window - 1)
            elif isinstance(decision, Replay):
                outcomes[i] = StepResult(request.seq, decision.output, replayed=True)
            else:
                outcomes[i] = decision
        to_apply = self._within_capacity(to_apply, outcomes)
        prepared = Prepared(requests, digests, outcomes)
        if to_apply:
            self._apply(prepared, to_apply, now, histories)
        return prepared

    def finish(self, prepared: Prepared) -> list[Outcome]:
        """Commit what :meth:`prepare` computed (one atomic CAS write) and fill the outcomes."""
        outcomes, requests, digests = prepared.outcomes, prepared.requests, prepared.digests
        if prepared.updates:
            written = self.store.commit(prepared.updates)
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

    def _within_capacity(
        self, to_apply: list[tuple[int, Apply, bytes | None]], outcomes: list[Outcome | None]
    ) -> list[tuple[int, Apply, bytes | None]]:
        """Refuse new streams past ``max_live_streams`` (503 stream_capacity); steps of live
        streams always pass. The count is the kept estimate (``livecount.py``), never a scan."""
        limit = self.max_live_streams
        creating = [item for item in to_apply if item[1].creates]
        if limit is None or not creating:
            return to_apply
        room = max(limit - self.live.value, 0)
        refused = {i for i, _, _ in creating[room:]}
        for i in refused:
            outcomes[i] = Reject(
                503,
                "stream_capacity",
                f"the server holds its limit of {limit} live streams; end idle streams "
                "(DELETE), wait for them to expire, or raise --max-live-streams",
                1,
            )
        return [item for item in to_apply if item[0] not in refused]

    def _stored_row(self, record: Record | None) -> bytes | None:
        """The stored state row, or None when it does not fit this model (another model's
        store, an older format): that stream's 409, never its batch-mates' failure."""
        if record is None:  # decide() returns from_zero=False only for a stored record
            raise RuntimeError("internal error: a step continues a stream with no stored record")
        return record.state if self.codec.fits(record.state) else None

    @torch.inference_mode()
    def _run_model(self, xs: list[np.ndarray], state: State) -> tuple[torch.Tensor, State]:
        steps = [x.shape[0] for x in xs]
        k_max = max(steps)
        n, features = len(xs), xs[0].shape[1]
        x = np.zeros((n, k_max, features), dtype=np.float32)  # (n, k_max, F)
        for row, block in enumerate(xs):
            x[row, : block.shape[0]] = block
        dtype = self._zero.dtype
        inputs = torch.from_numpy(x).to(self.device, dtype)
        state = state.to(self.device)
        if k_max == 1:  # the streaming case: [n, F] takes advance's trusted cell-kernel step
            y, new_state = advance(self.model, state, inputs[:, 0])
            y = y[:, None]  # (n, 1, O)
        elif min(steps) == k_max:
            y, new_state = advance(self.model, state, inputs)
        else:
            mask = torch.arange(k_max)[None, :] < torch.tensor(steps)[:, None]  # (n, k_max)
            y, new_state = self.model(inputs, state, mask=mask.to(self.device))
        return y.float().cpu(), new_state.to("cpu")

    def _apply(
        self,
        prepared: Prepared,
        to_apply: list[tuple[int, Apply, bytes | None]],
        now: float,
        histories: dict[int, bytes],
    ) -> None:
        requests, outcomes = prepared.requests, prepared.outcomes
        state = self.codec.decode([row for _, _, row in to_apply])
        y, new_state = self._run_model([requests[i].x for i, _, _ in to_apply], state)
        finite = _finite_rows(y, new_state)  # (n,)
        rows = y.tolist()  # one conversion for the batch
        blobs = self.codec.encode(new_state)
        for row, (i, decision, _) in enumerate(to_apply):
            request = requests[i]
            if not finite[row]:
                outcomes[i] = _non_finite(request.seq)
                continue
            answer = rows[row][: request.x.shape[0]]
            if request.decode is not None:
                raw = request.decode(np.asarray(answer))  # [k, O] float64, raw units
                if not np.isfinite(raw).all():
                    outcomes[i] = _non_finite(request.seq)
                    continue
                answer = raw.tolist()
            output = jsonio.dumps_finite(answer[0] if request.single else answer)
            prepared.answers.append(output)
            prepared.committed.append(i)
            record = new_record(
                request.stream,
                seq=request.seq,
                state=blobs[row],
                output=output,
                digest=prepared.digests[i],
                updated=now,
                history=histories.get(i, b""),
            )
            prepared.updates.append(Update(request.stream, decision.expected, record))
            prepared.creates.append(decision.creates)

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


def _finite_rows(y: torch.Tensor, state: State) -> list[bool]:
    """Per batch row: whether its outputs ``y [n, ...]`` and its new state are all finite."""
    ok = torch.isfinite(y).flatten(1).all(1)  # (n,)
    for tensor in state.tensors():  # (L, n, H)
        ok &= torch.isfinite(tensor).transpose(0, 1).flatten(1).all(1)
    return ok.tolist()


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
