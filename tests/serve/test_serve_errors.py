"""One mapping from a failure to its answer (``serve/errors.py``), the same on every transport;
one source of the server's defaults (``ServeConfig``), from which the CLI is generated."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import threading
import time

import httpx
import numpy as np
import pytest
import uvicorn
import websockets.sync.client
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from conftest import AUTH, TOKEN, free_port, make_config
from seqstate.serve import create_app
from seqstate.serve.command import add_arguments, config_from_args, config_options
from seqstate.serve.config import ServeConfig
from seqstate.serve.errors import ApiError, api_error, http_response, item_error
from seqstate.serve.frames import decode, encode
from seqstate.serve.rules import Reject
from seqstate.serve.schemas import StepBody
from seqstate.serve.stores import MemoryStore, StoreError
from seqstate.serve.stores.base import StoreFullError


def _validation_error(raw: str) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        StepBody.model_validate_json(raw)
    return caught.value


# failure -> (status, code, message or a part of it)
MAPPING = [
    (ApiError(413, "too_many_steps", "split it", limit=3), 413, "too_many_steps", "split it"),
    (Reject(409, "seq_gap", "expected 4", 4), 409, "seq_gap", "expected 4"),
    (StoreFullError("disk full"), 507, "store_full", "disk full"),
    (StoreError("refused"), 503, "store_unavailable", "state store unavailable: refused"),
    (_validation_error("{"), 400, "invalid_json", "body is not valid JSON"),
    (_validation_error('{"seq": 0, "x": [1]}'), 422, "invalid_request", "seq:"),
    (RequestValidationError([{"type": "missing", "loc": ("body", "horizon"), "msg": "m"}]),
     422, "invalid_request", "horizon: m"),
    (ValueError("unexpected character"), 400, "invalid_json", "body is not valid JSON"),
    (HTTPException(404, "Not Found"), 404, "not_found", "Not Found"),
    (HTTPException(405, "Method Not Allowed"), 405, "method_not_allowed", "Method Not Allowed"),
    (RuntimeError("boom"), 500, "internal", "internal error"),
]  # fmt: skip


@pytest.mark.parametrize(("error", "status", "code", "message"), MAPPING)
def test_every_failure_maps_to_one_status_code_and_message(error, status, code, message):
    problem = api_error(error)
    assert (problem.status, problem.code) == (status, code)
    assert message in problem.message
    response = http_response(error)
    body = json.loads(response.body)
    assert response.status_code == status
    assert body["code"] == code and body["message"] == problem.message
    item = json.loads(item_error(error, key="stream", stream="s", seq=7))
    assert item["stream"] == "s" and item["seq"] == 7 and item["status"] == status
    assert item["error"] == body  # the same body inside an item as on its own


def test_a_refusal_carries_its_expected_seq_and_an_api_error_its_extra_fields():
    assert json.loads(http_response(Reject(409, "seq_gap", "m", 4)).body)["expected_seq"] == 4
    assert json.loads(http_response(ApiError(413, "c", "m", limit=3)).body)["limit"] == 3


class _DownStore(MemoryStore):
    """A store whose writes fail: reads work, every commit raises StoreError."""

    def commit(self, updates):
        raise StoreError("the disk went away")


@contextlib.contextmanager
def _served(app):
    """``app`` on 127.0.0.1 in a thread of this process (its store is an object of ours)."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_the_same_failure_is_answered_alike_on_every_transport(run_dir):
    """A refusal by the rules and a failing store, over a stream's step route, POST
    /v1/steps and the WebSocket: the same status, code and message on each."""
    app = create_app(make_config(run_dir), store=_DownStore())
    x = [0.1, 0.2, 0.3]
    with (
        _served(app) as port,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=10) as client,
    ):
        answers: dict[str, list[dict]] = {}
        for seq in (1, 5):  # 1: the store fails on commit; 5: a step of a stream never made
            single = client.post("/v1/streams/s/steps", json={"seq": seq, "x": x})
            batch = client.post("/v1/steps", json={"steps": [{"id": "s", "seq": seq, "x": x}]})
            with websockets.sync.client.connect(
                f"ws://127.0.0.1:{port}/v1/ws", additional_headers=AUTH, open_timeout=10
            ) as ws:
                ws.send(json.dumps({"stream": "s", "seq": seq, "x": x}))
                frame = json.loads(ws.recv(timeout=10))
                # a binary frame of one valid step: queued as one block
                ws.send(encode({"op": "steps", "stream": ["s"], "seq": [seq]}, np.array([[x]])))
                header, _ = decode(ws.recv(timeout=10))
            (item,) = batch.json()["results"]
            answers[str(seq)] = [
                {"status": single.status_code, **single.json()},
                {"status": item["status"], **item["error"]},
                {"status": frame["status"], **frame["error"]},
                {"status": header["status"][0], **header["errors"]["0"]},
            ]
    down, gap = answers["1"], answers["5"]
    assert down[0]["status"] == 503 and down[0]["code"] == "store_unavailable"
    assert gap[0]["status"] == 404 and gap[0]["code"] == "stream_not_found"
    for same in (down, gap):
        assert same[0] == same[1] == same[2] == same[3], same


# --- one source of the defaults -------------------------------------------------------------


def _parsed(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_the_cli_defaults_are_the_config_defaults(run_dir):
    config = config_from_args(_parsed(str(run_dir), "--token", TOKEN))
    for field in dataclasses.fields(ServeConfig):
        if field.name in ("run_dir", "token"):
            continue
        assert getattr(config, field.name) == field.default, field.name
    assert config.torch_threads == 1  # one model thread: measured faster for per-step batches
    flagged = {f.name for f in config_options()}
    assert flagged == {f.name for f in dataclasses.fields(ServeConfig)} - {"run_dir"}


def test_every_option_reaches_its_field(run_dir):
    args = _parsed(
        str(run_dir), "--token", TOKEN, "--no-batching", "--max-batch", "7", "--ttl", "9.5",
        "--max-steps", "3", "--max-streams", "4", "--max-ws-pending", "5",
        "--sweep-interval", "2", "--torch-threads", "2", "--store", "memory://",
    )  # fmt: skip
    config = config_from_args(args)
    assert (config.batching, config.max_batch, config.ttl_s) == (False, 7, 9.5)
    assert (config.max_steps_per_request, config.max_streams_per_request) == (3, 4)
    assert (config.max_ws_pending, config.sweep_interval_s, config.torch_threads) == (5, 2.0, 2)
    assert config.store == "memory://"


def test_the_help_shows_each_default_once():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert "most steps (streams) in one model call (default: 256)" in text
    assert "(default: 2^20)" in text  # max-body-bytes
    with pytest.raises(ValueError, match="max_batch"):
        config_from_args(_parsed("/", "--token", TOKEN, "--max-batch", "0"))


@pytest.mark.parametrize(
    ("store", "message"),
    [("foo://x", "unknown store 'foo://x'"), ("sqlite:///", "names no file")],
)
def test_a_bad_store_url_is_one_line_before_the_server_starts(
    tmp_path, capsys, monkeypatch, store, message
):
    """Checked with the other options (exit 2, nothing started, no traceback), not by the
    server's startup after its banner."""
    import uvicorn

    from seqstate.serve.command import run as serve

    def started(*args, **kwargs):
        raise AssertionError("the server started with a bad --store")

    monkeypatch.setattr(uvicorn.Server, "run", started)
    args = _parsed(str(tmp_path), "--token", TOKEN, "--store", store, "--port", "1")
    assert serve(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("seqstate serve: error: ") and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_port_another_server_holds_is_one_line_before_the_banner(tmp_path, capsys, monkeypatch):
    """The banner says where the server listens: with the port taken it is never printed,
    and the error names the port and the likely fix (it was uvicorn's bind error after it)."""
    import socket

    import uvicorn

    from seqstate.serve.command import run as serve

    def started(*args, **kwargs):
        raise AssertionError("the server started on a port in use")

    monkeypatch.setattr(uvicorn.Server, "run", started)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        args = _parsed(str(tmp_path), "--token", TOKEN, "--host", "127.0.0.1", "--port", str(port))
        assert serve(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no banner
    assert captured.err.startswith(f"seqstate serve: error: cannot listen on 127.0.0.1:{port}")
    assert "pick another --port" in captured.err and len(captured.err.strip().splitlines()) == 1
