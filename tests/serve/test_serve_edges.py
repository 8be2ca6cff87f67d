"""The connection edge of a real server process: slowloris, SIGTERM."""

from __future__ import annotations

import contextlib
import socket
import time

import httpx

from conftest import AUTH

X = [0.3, -0.2, 0.9]


def open_crowd(port: int, count: int) -> list[socket.socket]:
    """Sockets that connect and dribble the start of a request, never finishing its headers."""
    crowd = []
    for i in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"POST /v1/streams/x/steps HTTP/1.1\r\nHost: a\r\n" if i % 2 else b"")
        crowd.append(s)
    return crowd


def test_a_slowloris_crowd_does_not_starve_a_real_client(server_factory):
    # The server may hold 200 files: without a cap, 300 idle sockets would exhaust them and a
    # real client would wait in the accept queue until it times out.
    server = server_factory(
        "--store", "memory://", "--max-connections", "64", "--header-timeout", "30",
        max_files=200,
    )  # fmt: skip
    server.start()
    crowd = open_crowd(server.port, 300)
    try:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=5) as client:
            for seq in range(1, 6):
                response = client.post("/v1/streams/real/steps", json={"seq": seq, "x": X})
                assert response.status_code == 200, response.text
                for s in crowd[:3]:  # the crowd keeps dribbling
                    with contextlib.suppress(OSError):
                        s.sendall(b"X")
    finally:
        for s in crowd:
            s.close()
    assert server.process.poll() is None


def test_header_deadline_and_sigterm_within_the_grace_period_despite_a_dribbling_body(
    server_factory,
):
    server = server_factory(
        "--store", "memory://", "--header-timeout", "0.5", "--shutdown-grace", "1",
        "--body-timeout", "60",
    )  # fmt: skip
    server.start()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        started = time.monotonic()
        assert s.recv(100) == b""  # closed by the server, not by our timeout
        assert time.monotonic() - started < 8
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(
            b"POST /v1/streams/d/steps HTTP/1.1\r\nHost: a\r\nAuthorization: "
            + AUTH["Authorization"].encode()
            + b'\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"seq"'
        )
        time.sleep(0.3)
        started = time.monotonic()
        server.process.terminate()
        for _ in range(30):  # keep dribbling while the server shuts down
            if server.process.poll() is not None:
                break
            try:
                s.sendall(b" ")
            except OSError:
                break
            time.sleep(0.1)
        server.process.wait(timeout=20)
        assert time.monotonic() - started < 10
