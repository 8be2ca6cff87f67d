"""Checks shared by the tests that compare the server's bulk (row table) path with its
per-stream path: the same outcomes, answers and stored records."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import torch

from seqstate.serve.preprocess import RunRowCodec
from seqstate.serve.rules import Reject
from seqstate.serve.stores import MemoryStore
from seqstate.serve.stores.base import history_entries


def close_answers(a: bytes, b: bytes) -> None:
    """Two answers' JSON: the same nulls, numbers equal to float32 rounding (the bulk path
    runs its own model call, and a batch's composition moves the last bit, as it does for
    the batcher's batches)."""
    x = np.asarray(json.loads(a), dtype=np.float64)  # null -> nan
    y = np.asarray(json.loads(b), dtype=np.float64)
    assert x.shape == y.shape and np.allclose(x, y, rtol=1e-5, atol=1e-6, equal_nan=True)


def same_outcomes(got: list, want: list) -> None:
    """The same refusals, and the same seqs, replay flags and (close) answers."""
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert type(a) is type(b), (a, b)
        if isinstance(a, Reject):
            assert a == b
        else:
            assert (a.seq, a.replayed) == (b.seq, b.replayed)
            close_answers(a.output, b.output)


def same_records(
    codec: RunRowCodec,
    table_store: MemoryStore,
    plain_store: MemoryStore,
    streams: list[str],
    exact: Sequence[str] = (),
) -> None:
    """Every stream's record in both stores: the same seq, digest, time, header and label,
    replay window (seqs and digests, close answers), and state (close; the transform fields
    named in ``exact`` equal)."""
    got = table_store.get_many(streams)
    want = plain_store.get_many(streams)
    for stream, a, b in zip(streams, got, want, strict=True):
        assert (a is None) == (b is None), stream
        if a is None:
            continue
        assert a.intact(stream)
        assert (a.seq, a.digest, a.updated) == (b.seq, b.digest, b.updated), stream
        close_answers(a.output, b.output)
        head = len(a.state) - codec.body_bytes
        assert a.state[:head] == b.state[:head]  # header and series label
        sa, sb = codec.decode([a.state]), codec.decode([b.state])
        for name in exact:
            assert torch.equal(sa.transforms[name], sb.transforms[name]), (stream, name)
        tensors_a = [*sa.transforms.values(), *(t for m in sa.models for t in m.tensors())]
        tensors_b = [*sb.transforms.values(), *(t for m in sb.models for t in m.tensors())]
        for x, y in zip(tensors_a, tensors_b, strict=True):
            assert torch.allclose(x, y, rtol=1e-5, atol=1e-6, equal_nan=True), stream
        ha, hb = history_entries(a.history), history_entries(b.history)
        assert [e[:2] for e in ha] == [e[:2] for e in hb], stream  # seqs and digests
        for ea, eb in zip(ha, hb, strict=True):
            close_answers(ea[2], eb[2])
