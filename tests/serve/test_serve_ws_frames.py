"""WebSocket frames that carry many steps of many streams, as JSON or as the binary encoding
(``serve/frames.py``), answered by one frame in the same order."""

from __future__ import annotations

import json

import numpy as np
import pytest
import websockets.sync.client
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import AUTH, FEATURES, OUTPUTS, ServerProcess, replay
from seqstate.serve.errors import ApiError
from seqstate.serve.frames import MAGIC, decode, decode_steps, encode

ATOL = 1e-5


def x_for(stream: int, seq: int) -> list[float]:
    return [np.sin(stream + 0.3 * seq), np.cos(0.7 * seq), 0.01 * ((stream * 31 + seq) % 17)]


@pytest.fixture(scope="module")
def server(run_dir):
    process = ServerProcess(run_dir, "--store", "memory://", "--max-wait-ms", "5")
    process.start()
    yield process
    process.stop()
    process.log.close()


def _connect(server):
    url = f"ws://127.0.0.1:{server.port}/v1/ws"
    return websockets.sync.client.connect(url, additional_headers=AUTH, open_timeout=10)


def _binary_steps(streams: list[str], seqs: list[int], x: np.ndarray, **fields) -> bytes:
    return encode({"op": "steps", "stream": streams, "seq": seqs, **fields}, x)


def test_json_and_binary_steps_frames_answer_every_item_in_order(server, model):
    n = 20
    names = [f"b{s}" for s in range(n)]
    with _connect(server) as ws:
        # two JSON frames pipelined (seq 1 and 2 of every stream; one item of 3 steps, one
        # invalid item): each answered by one frame, items in order, steps of a stream in order
        for seq in (1, 2):
            items: list[dict] = [
                {"stream": f"b{s}", "seq": seq, "x": x_for(s, seq)} for s in range(n)
            ]
            items[3]["x"] = [x_for(3, seq), x_for(3, seq + 10), x_for(3, seq + 20)]
            items.append({"stream": "bad", "seq": 1, "x": [1.0]})  # wrong feature count
            ws.send(json.dumps({"op": "steps", "steps": items}))
        answers = [json.loads(ws.recv(timeout=30)) for _ in range(2)]
        # then seq 3 of every stream but b3 as one binary frame, then a binary retry of it
        x = np.asarray([x_for(s, 3) for s in range(n) if s != 3], dtype=np.float32)[:, None]
        streams = [f"b{s}" for s in range(n) if s != 3]
        binary = _binary_steps(streams, [3] * len(streams), x)
        ws.send(binary)
        first = ws.recv(timeout=30)
        ws.send(binary)
        again = ws.recv(timeout=30)
        ws.send(MAGIC + b"\x05\x00\x00\x00{}")  # malformed: header past the frame
        malformed = json.loads(ws.recv(timeout=30))
    for seq, answer in zip((1, 2), answers, strict=True):
        assert answer["op"] == "steps" and len(answer["results"]) == n + 1
        results = answer["results"]
        assert [r["stream"] for r in results] == [*names, "bad"]
        assert results[-1]["status"] == 422 and results[-1]["error"]["code"] == "invalid_x"
        assert results[-1]["seq"] == 1 and "stream" not in results[-1]["error"]
        assert all(r["seq"] == seq and "y" in r for r in results[:-1]), results
    header, y = decode(first)
    assert header["stream"] == streams and header["status"] == [200] * len(streams)
    assert header["replayed"] == [False] * len(streams) and y.shape == (len(streams), 1, OUTPUTS)
    header_again, y_again = decode(again)
    assert header_again["replayed"] == [True] * len(streams)
    np.testing.assert_array_equal(y_again, y)
    assert malformed["status"] == 400 and malformed["error"]["code"] == "invalid_frame"
    for s in range(n):
        if s == 3:  # 3 steps per frame
            steps = [([x_for(3, q), x_for(3, q + 10), x_for(3, q + 20)], False) for q in (1, 2)]
        else:
            steps = [(x_for(s, q), False) for q in (1, 2, 3)]
        expected = replay(model, steps)
        got = [answers[0]["results"][s]["y"], answers[1]["results"][s]["y"]]
        if s != 3:
            got.append(y[streams.index(f"b{s}"), 0].tolist())
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_allclose(g, e, atol=ATOL)


def test_a_binary_step_is_the_json_single_step_and_refusals_are_per_item(server, model):
    with _connect(server) as ws:
        ws.send(json.dumps({"stream": "mix", "seq": 1, "x": x_for(1, 1)}))
        json_answer = json.loads(ws.recv(timeout=30))
        x = np.asarray([[x_for(1, 1)], [x_for(1, 1)], [[np.nan, 0, 0]]], dtype=np.float32)
        # item 0: the JSON step retried in binary (replayed); 1: a gap; 2: NaN
        ws.send(_binary_steps(["mix", "gap", "nan"], [1, 5, 1], x))
        header, y = decode(ws.recv(timeout=30))
    assert header["status"] == [200, 404, 422]
    assert header["replayed"][0] is True
    np.testing.assert_allclose(y[0, 0], json_answer["y"], rtol=1e-6)  # float32 of the same
    assert np.isnan(y[1:]).all()
    assert header["errors"]["1"]["code"] == "stream_not_found"
    assert header["errors"]["2"]["code"] == "invalid_x"


def test_a_time_past_int64_refuses_its_item_and_the_connection_goes_on(server):
    # (a time past int64 once raised OverflowError in the frame's path and dropped the
    # connection with every frame pipelined after it)
    x = np.asarray([[x_for(7, 1)], [x_for(8, 1)]], dtype=np.float32)
    with _connect(server) as ws:
        ws.send(_binary_steps(["t7", "t8"], [1, 1], x, time=[[100], [2**63 + 5]]))
        ws.send(json.dumps({"stream": "t9", "seq": 1, "x": x_for(9, 1), "time": -(2**63)}))
        ws.send(json.dumps({"stream": "t9", "seq": 1, "x": x_for(9, 1)}))
        # (answers to different streams may come in any order)
        answers = [ws.recv(timeout=30) for _ in range(3)]
    (header, _), *_ = [decode(a) for a in answers if isinstance(a, bytes)]
    texts = [json.loads(a) for a in answers if isinstance(a, str)]
    refused, applied = sorted(texts, key=lambda answer: "error" not in answer)
    assert header["status"] == [200, 422]
    assert header["errors"]["1"]["code"] == "invalid_time"
    assert refused["error"]["code"] == "invalid_time" and applied["seq"] == 1


def test_whole_frame_refusals_name_the_problem(server):
    with _connect(server) as ws:
        too_many = np.zeros((1025, 1, FEATURES), dtype=np.float32)
        ws.send(_binary_steps([f"s{i}" for i in range(1025)], [1] * 1025, too_many))
        ws.send(_binary_steps(["s"], [1], np.zeros((1, 1, FEATURES + 1), dtype=np.float32)))
        ws.send(json.dumps({"op": "steps", "steps": []}))
        codes = [json.loads(ws.recv(timeout=30))["error"]["code"] for _ in range(3)]
    assert codes == ["too_many_streams", "invalid_x", "invalid_request"]


@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(1, 5),
    k=st.integers(1, 4),
    values=st.lists(st.floats(-1e6, 1e6, width=32), min_size=60, max_size=60),
    start=st.lists(st.booleans(), min_size=5, max_size=5),
)
def test_binary_frames_round_trip(n, k, values, start):
    x = np.asarray(values[: n * k * FEATURES], dtype=np.float32).reshape(n, k, FEATURES)
    streams = [f"s{i}" for i in range(n)]
    raw = _binary_steps(streams, list(range(1, n + 1)), x, start=start[:n])
    decoded = decode_steps(raw, FEATURES, max_items=10, max_steps=10)
    assert decoded.stream == streams and decoded.seq == list(range(1, n + 1))
    assert decoded.start == start[:n] and decoded.series == [None] * n
    np.testing.assert_array_equal(decoded.x, x)
    for broken in (raw[:-1], b"XXXX" + raw[4:], raw[:6]):
        with pytest.raises(ApiError, match=r"must|runs past"):
            decode_steps(broken, FEATURES, max_items=10, max_steps=10)
    bad_seq = _binary_steps(streams, [True] * n, x)  # a bool is not a seq
    with pytest.raises(ApiError, match=r"header\.seq"):
        decode_steps(bad_seq, FEATURES, max_items=10, max_steps=10)
    misspelt = _binary_steps(streams, list(range(1, n + 1)), x, serie=["a"] * n)
    with pytest.raises(ApiError, match=r"header\.serie is not a steps frame's key"):
        decode_steps(misspelt, FEATURES, max_items=10, max_steps=10)


def test_answer_frames_read_answers_of_either_nesting():
    """A k=1 answer is [O] (one step sent as [F]) or [[O]] (sent as [[F]]); an answer frame
    holding both (a replay of a JSON step beside a binary one) reads each."""
    from seqstate.serve.frames import encode_answers

    results = [
        (200, b"[1.5,2.5]", False, None),
        (200, b"[[3.5,null]]", True, None),
        (409, None, False, {"code": "seq_gap"}),
    ]
    header, y = decode(encode_answers(["a", "b", "c"], [1, 2, 3], results, 1, 2))
    assert y.shape == (3, 1, 2) and header["status"] == [200, 200, 409]
    assert y[0, 0].tolist() == [1.5, 2.5] and y[1, 0, 0] == 3.5
    assert np.isnan(y[1, 0, 1]) and np.isnan(y[2]).all()
    assert header["errors"] == {"2": {"code": "seq_gap"}} and header["replayed"][1] is True


def test_binary_frames_of_many_streams_answer_as_the_per_stream_engine(server, model):
    """A real client over loopback: binary frames of 150 streams, two pipelined before their
    answers are read (the second frame's steps continue the first's), a retry of an
    acknowledged frame, a frame with a gap and a repeated stream. Every answer (status,
    replayed, y, the error's code and expected seq) equals the engine's per-stream path in
    this process (a records-only store) given the same frames."""
    from seqstate.serve.engine import Engine, StepRequest
    from seqstate.serve.rules import Reject
    from seqstate.serve.stores import MemoryStore

    reference = Engine(model, MemoryStore(columns=False), ttl_s=0, replay_window=16)
    n = 150
    streams = [f"many{s}" for s in range(n)]

    def frame(seq_of: list[int], names: list[str] = streams) -> tuple[bytes, list[StepRequest]]:
        x = np.asarray(
            [
                x_for(int(name.removeprefix("many")), seq)
                for name, seq in zip(names, seq_of, strict=True)
            ],
            dtype=np.float32,
        )[:, None]
        requests = [
            StepRequest(name, seq, x[i], single=True, start=False)
            for i, (name, seq) in enumerate(zip(names, seq_of, strict=True))
        ]
        return _binary_steps(names, seq_of, x), requests

    def expected(requests: list[StepRequest]) -> list:
        outcomes: list = []
        for at in range(0, len(requests)):  # in order: a repeated stream's steps one by one
            (outcome,) = reference.process([requests[at]])
            outcomes.append(outcome)
        return outcomes

    def check(answer: bytes, outcomes: list) -> None:
        header, y = decode(answer)
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, Reject):
                assert header["status"][i] == outcome.status
                error = header["errors"][str(i)]
                assert (error["code"], error["expected_seq"]) == (
                    outcome.code,
                    outcome.expected_seq,
                )
            else:
                assert header["status"][i] == 200 and header["replayed"][i] == outcome.replayed
                want = np.asarray(json.loads(outcome.output), dtype=np.float32)
                np.testing.assert_allclose(y[i, 0], want, atol=ATOL, rtol=1e-5)

    sent: dict[int, bytes] = {}
    with _connect(server) as ws:
        for seq in range(1, 7, 2):  # two frames in flight: seq and seq + 1 of every stream
            first, first_requests = frame([seq] * n)
            second, second_requests = frame([seq + 1] * n)
            sent[seq], sent[seq + 1] = first, second
            ws.send(first)
            ws.send(second)
            check(ws.recv(timeout=60), expected(first_requests))
            check(ws.recv(timeout=60), expected(second_requests))
        ws.send(sent[5])  # a retry of an acknowledged frame: replayed, the same answers
        _, retry_requests = frame([5] * n)
        check(ws.recv(timeout=60), expected(retry_requests))
        seqs = [7] * n
        seqs[10] = 9  # a gap
        gap, gap_requests = frame(seqs)
        ws.send(gap)
        check(ws.recv(timeout=60), expected(gap_requests))
        names = [streams[0], streams[1], streams[0]]  # a stream twice: seq 8 then 9
        repeated, repeated_requests = frame([8, 8, 9], names)
        ws.send(repeated)
        check(ws.recv(timeout=60), expected(repeated_requests))


def test_a_refused_forecast_answers_with_its_op(server):
    # a client that routes answers by "op" found its forecast's error without one
    with _connect(server) as ws:
        ws.send(json.dumps({"op": "forecast", "stream": "never-stepped", "horizon": 2}))
        answer = json.loads(ws.recv(timeout=30))
    assert answer["op"] == "forecast" and answer["stream"] == "never-stepped"
    assert answer["status"] == 404 and answer["error"]["code"] == "stream_not_found"
