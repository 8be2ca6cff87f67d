"""The engine under a lost compare-and-set: another writer advanced the stream in between."""

from __future__ import annotations

import numpy as np
import torch

from seqstate.core.model import SequenceModel
from seqstate.serve.engine import Engine, StepRequest, StepResult
from seqstate.serve.rules import Reject
from seqstate.serve.stores import MemoryStore


class RacingStore(MemoryStore):
    """Lets ``rival`` run right after our read, before our commit (a replica racing us)."""

    def __init__(self) -> None:
        super().__init__()
        self.rival = None

    def get_many(self, streams):
        records = super().get_many(streams)
        rival, self.rival = self.rival, None
        if rival is not None:
            rival()
        return records


def request(seq: int, value: float) -> StepRequest:
    x = np.full((1, 3), value, np.float32)
    return StepRequest("s", seq, x, single=True, start=False)


def test_a_lost_race_is_a_replay_for_the_same_body_and_a_409_otherwise(model):
    store = RacingStore()
    ours, theirs = Engine(model, store, ttl_s=0), Engine(model, store, ttl_s=0)
    ours.process([request(1, 0.5)])

    store.rival = lambda: theirs.process([request(2, 1.0)])
    (same,) = ours.process([request(2, 1.0)])
    assert isinstance(same, StepResult) and same.replayed  # the rival applied our exact step

    store.rival = lambda: theirs.process([request(3, 2.0)])
    (different,) = ours.process([request(3, -2.0)])
    assert isinstance(different, Reject)
    assert (different.status, different.code, different.expected_seq) == (409, "seq_race", 4)

    # applied once each: the stored state is the rival's steps 2 and 3 on top of step 1
    (record,) = store.get_many(["s"])
    with torch.no_grad():
        x = torch.tensor([[[0.5] * 3, [1.0] * 3, [2.0] * 3]])
        y, _ = model(x)
    assert record.seq == 3
    import json

    assert np.allclose(json.loads(record.output), y[0, 2].tolist(), atol=1e-5)


def test_a_state_from_another_model_is_refused_not_crashed(model):
    store = MemoryStore()
    engine = Engine(model, store, ttl_s=0)
    engine.process([request(1, 0.5)])
    other = SequenceModel(input_size=3, output_size=2, cell="lstm", hidden_size=16)  # wider
    (outcome,) = Engine(other, store, ttl_s=0).process([request(2, 0.5)])
    assert isinstance(outcome, Reject) and outcome.code == "state_incompatible"
