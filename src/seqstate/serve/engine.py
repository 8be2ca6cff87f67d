"""Applying a batch of steps: load records, decide, one model call, one atomic commit.

Runs on the model worker thread (never on the event loop). For a batch of steps of distinct
streams::

    records  = store.get_many(streams)                 # one read
    decision = rules.decide(record, seq, start, ...)    # apply / replay / reject, per step
    y, state = model(x [n, k_max, F], State.cat(states), mask=[n, k_max])   # one call
    written  = store.commit(updates)                    # one transaction, CAS on seq per stream
    lost CAS -> reload: the same step by another replica is a replay, anything else a 409

Steps with different numbers of timesteps ``k`` share the call: shorter ones are padded at
the end and masked, which the layers treat as "state unchanged" (so each row's returned state
is the state after its own last step).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from seqstate.serve.rules import Apply, Reject, Replay, decide
from seqstate.serve.stores.base import Record, StateStore, Update
from seqstate.state import State

__all__ = ["Engine", "Outcome", "StepRequest", "StepResult"]


@dataclasses.dataclass(frozen=True)
class StepRequest:
    """One validated step of one stream."""

    stream: str
    seq: int
    x: np.ndarray  # [k, F] float32, finite
    single: bool  # the request sent one step as [F]: answer y as [O] rather than [k, O]
    start: bool

    @property
    def digest(self) -> bytes:
        """Fingerprint of what the request asks for, to tell a retry from a different step."""
        h = hashlib.blake2b(digest_size=16)
        h.update(b"%d:%d:%d:" % (self.start, self.single, self.x.shape[0]))
        h.update(np.ascontiguousarray(self.x, dtype=np.float32).tobytes())
        return h.digest()


@dataclasses.dataclass(frozen=True)
class StepResult:
    seq: int
    output: bytes  # JSON of y
    replayed: bool  # True: a retry answered from the store, nothing applied


Outcome = StepResult | Reject


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
    ) -> None:
        self.model = model
        self.store = store
        self.ttl_s = ttl_s
        self.device = torch.device(device)
        self.clock = clock
        self._zero = model.initial_state(1)  # template: type, layers, hidden size, dtype

    def process(self, requests: Sequence[StepRequest]) -> list[Outcome]:
        """Apply ``requests`` (distinct streams) and make the new states durable."""
        streams = [r.stream for r in requests]
        if len(set(streams)) != len(streams):
            raise ValueError("a batch must hold at most one step per stream")
        now = self.clock()
        records = self.store.get_many(streams)
        digests = [r.digest for r in requests]
        outcomes: list[Outcome | None] = [None] * len(requests)
        to_apply: list[tuple[int, Apply, State]] = []
        for i, (request, record) in enumerate(zip(requests, records, strict=True)):
            decision = decide(
                record,
                seq=request.seq,
                start=request.start,
                digest=digests[i],
                now=now,
                ttl_s=self.ttl_s,
            )
            if isinstance(decision, Apply):
                state = self._zero if decision.from_zero else self._load(record)
                if state is None:
                    outcomes[i] = _incompatible(request.seq)
                else:
                    to_apply.append((i, decision, state))
            elif isinstance(decision, Replay):
                outcomes[i] = StepResult(request.seq, decision.record.output, replayed=True)
            else:
                outcomes[i] = decision
        if to_apply:
            self._apply(requests, digests, to_apply, outcomes, now)
        return outcomes  # type: ignore[return-value]  # every slot is filled

    def _load(self, record: Record | None) -> State | None:
        """The stored state, or None when it does not fit this model (another model's store)."""
        if record is None:  # decide() returns from_zero=False only for a stored record
            raise RuntimeError("internal error: a step continues a stream with no stored record")
        try:
            state = State.from_bytes(record.state)
        except ValueError:
            return None
        zero = self._zero
        if type(state) is not type(zero) or (state.num_layers, state.hidden_size) != (
            zero.num_layers,
            zero.hidden_size,
        ):
            return None
        return state

    @torch.inference_mode()
    def _run_model(self, xs: list[np.ndarray], state: State) -> tuple[torch.Tensor, State]:
        steps = [x.shape[0] for x in xs]
        k_max = max(steps)
        n, features = len(xs), xs[0].shape[1]
        x = np.zeros((n, k_max, features), dtype=np.float32)  # (n, k_max, F)
        for row, block in enumerate(xs):
            x[row, : block.shape[0]] = block
        mask = None
        if min(steps) != k_max:
            mask = torch.arange(k_max)[None, :] < torch.tensor(steps)[:, None]  # (n, k_max)
            mask = mask.to(self.device)
        y, new_state = self.model(
            torch.from_numpy(x).to(self.device), state.to(self.device), mask=mask
        )
        return y.float().cpu(), new_state.to("cpu")

    def _apply(
        self,
        requests: Sequence[StepRequest],
        digests: list[bytes],
        to_apply: list[tuple[int, Apply, State]],
        outcomes: list[Outcome | None],
        now: float,
    ) -> None:
        state = State.cat([s for _, _, s in to_apply])
        y, new_state = self._run_model([requests[i].x for i, _, _ in to_apply], state)
        rows = y.tolist()  # one conversion for the batch
        updates = []
        answers = []
        for row, (i, decision, _) in enumerate(to_apply):
            request = requests[i]
            answer = rows[row][: request.x.shape[0]]
            output = json.dumps(answer[0] if request.single else answer).encode()
            answers.append(output)
            record = Record(
                seq=request.seq,
                state=new_state.map(lambda t, r=row: t[:, r : r + 1]).to_bytes(),
                output=output,
                digest=digests[i],
                updated=now,
            )
            updates.append(Update(request.stream, decision.expected_seq, record))
        written = self.store.commit(updates)
        lost = []
        for (i, _, _), output, ok in zip(to_apply, answers, written, strict=True):
            if ok:
                outcomes[i] = StepResult(requests[i].seq, output, replayed=False)
            else:
                lost.append(i)
        if lost:
            # Another writer (a replica, a DELETE, the sweeper) changed the stream between our
            # read and our commit. Nothing of ours was written; report what is stored now.
            current = self.store.get_many([requests[i].stream for i in lost])
            for i, record in zip(lost, current, strict=True):
                request = requests[i]
                if record is not None and record.seq == request.seq and record.digest == digests[i]:
                    outcomes[i] = StepResult(request.seq, record.output, replayed=True)
                else:
                    expected = record.seq + 1 if record is not None else 1
                    outcomes[i] = Reject(
                        409,
                        "seq_race",
                        f"stream changed while step {request.seq} was being applied (another "
                        f"replica or request advanced, ended or expired it); expected {expected}",
                        expected,
                    )


def _incompatible(seq: int) -> Reject:
    return Reject(
        409,
        "state_incompatible",
        "the stored state of this stream does not fit the served model (it was written by "
        "another model); end the stream (DELETE) or restart it with start=true",
        seq,
    )
