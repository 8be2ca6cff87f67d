"""Fixtures for the server tests: a small saved model, in-process apps, server processes."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import torch

from seqstate.core.model import SequenceModel
from seqstate.core.saved import load_model, save_model
from seqstate.serve import ServeConfig, create_app

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FEATURES, OUTPUTS = 3, 2
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = SequenceModel(input_size=FEATURES, output_size=OUTPUTS, cell="lstm", hidden_size=8)
    model.set_normalization([0.5, -1.0, 2.0], [2.0, 0.5, 1.5], [1.0, -2.0], [3.0, 0.5])
    path = tmp_path_factory.mktemp("run")
    save_model(model, path)
    return path


@pytest.fixture(scope="session")
def model(run_dir: Path) -> SequenceModel:
    return load_model(run_dir)


def replay(model: SequenceModel, steps: list[tuple[list, bool]]) -> list[list]:
    """Expected answers: each step's x ([F] or [[F], ...]) run alone on one carried state."""
    answers, state = [], None
    with torch.no_grad():
        for x, start in steps:
            single = not isinstance(x[0], list)
            block = torch.tensor([x] if single else x, dtype=torch.float32)[None]  # (1, k, F)
            if start:
                state = None
            y, state = model(block, state)
            answers.append(y[0, 0].tolist() if single else y[0].tolist())
    return answers


def make_config(run_dir: Path, **overrides) -> ServeConfig:
    fields = {"store": "memory://", "token": TOKEN, "max_wait_ms": 1.0, **overrides}
    return ServeConfig(run_dir, **fields)


@contextlib.asynccontextmanager
async def serving(app, *, headers: dict | None = AUTH) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client of ``app`` with its lifespan running."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", headers=headers or {}
        ) as client:
            yield client


def in_process(run_dir: Path, **overrides):
    return serving(create_app(make_config(run_dir, **overrides)))


# --- real server processes -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m seqstate.serve`` on 127.0.0.1; always stopped by the fixture that made it."""

    def __init__(
        self, run_dir: Path, *args: str, port: int | None = None, max_files: int | None = None
    ) -> None:
        self.run_dir, self.args = run_dir, args
        self.max_files = max_files  # RLIMIT_NOFILE of the server (exhaustion tests)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by server_factory

    def start(self, timeout: float = 90.0) -> None:
        # (a bound for a server that never comes up, not a wait: a healthy one returns at
        # once; importing torch and the app on 2 busy cores has taken over 30 s)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        command = [
            sys.executable, "-m", "seqstate.serve", str(self.run_dir),
            "--port", str(self.port), "--token", TOKEN, "--torch-threads", "1", *self.args,
        ]  # fmt: skip
        limit = self.max_files

        def limit_files() -> None:
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        self.process = subprocess.Popen(
            command, env=env, stdout=self.log, stderr=self.log, preexec_fn=limit_files
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}: {self.output()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not become healthy in {timeout}s: {self.output()}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]


@pytest.fixture
def server_factory(run_dir: Path) -> Iterator:
    servers: list[ServerProcess] = []

    def make(*args: str, port: int | None = None, max_files: int | None = None) -> ServerProcess:
        server = ServerProcess(run_dir, *args, port=port, max_files=max_files)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
        server.log.close()


# --- redis --------------------------------------------------------------------------------


def _redis_binary() -> str | None:
    found = shutil.which("redis-server")
    if found or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "redis-server", "redis-tools"],
    ):
        subprocess.run(command, env=env, capture_output=True, timeout=300, check=False)
    return shutil.which("redis-server")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = _redis_binary()
    if binary is None:
        pytest.skip(
            "REDIS TESTS SKIPPED: redis-server is not installed and could not be installed "
            "(needs root and apt-get); install the Debian package redis-server to run them"
        )
    directory = tmp_path_factory.mktemp("redis")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
         "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _cluster_ports(count: int) -> list[int]:
    """Free loopback ports whose cluster bus port (port + 10000) is free too."""
    import random

    ports: list[int] = []
    while len(ports) < count:
        port = random.randint(20000, 45000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        if port not in ports:
            ports.append(port)
    return ports


class RedisCluster:
    """A real Redis Cluster on loopback: 3 masters with one replica each (6 redis-server)."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary, self.directory = binary, directory
        self.ports = _cluster_ports(6)
        self.processes: dict[int, subprocess.Popen] = {}

    def start_node(self, port: int) -> None:
        node_dir = self.directory / str(port)
        node_dir.mkdir(exist_ok=True)
        self.processes[port] = subprocess.Popen(
            [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir),
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", "1000", "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def start(self) -> None:
        import redis

        for port in self.ports:
            self.start_node(port)
        for port in self.ports:
            self.wait_ping(port)
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        created = subprocess.run(
            ["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", "1",
             "--cluster-yes"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-2000:]}")
        deadline = time.monotonic() + 30
        for port in self.ports:
            client = redis.Redis(host="127.0.0.1", port=port)
            while client.cluster("info").get("cluster_state") != "ok":
                if time.monotonic() > deadline:
                    raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
                time.sleep(0.1)
            client.close()

    def wait_ping(self, port: int) -> None:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.processes[port].poll() is not None:
                    raise RuntimeError(f"redis-server on port {port} did not start") from None
                time.sleep(0.05)
        client.close()

    def masters(self) -> list[int]:
        import redis

        masters = []
        for port, process in self.processes.items():
            if process.poll() is None:
                client = redis.Redis(host="127.0.0.1", port=port)
                if client.info("replication")["role"] == "master":
                    masters.append(port)
                client.close()
        return masters

    def replicated(self) -> bool:
        """Whether every master has a replica in sync."""
        import redis

        for port in self.masters():
            client = redis.Redis(host="127.0.0.1", port=port)
            info = client.info("replication")
            client.close()
            online = [v for k, v in info.items() if k.startswith("slave") and
                      isinstance(v, dict) and v.get("state") == "online"]  # fmt: skip
            if not online:
                return False
        return True

    def kill(self, port: int) -> None:
        self.processes[port].kill()  # kill -9
        self.processes[port].wait(timeout=10)

    @property
    def url(self) -> str:
        alive = [p for p in self.ports if self.processes[p].poll() is None]
        return f"redis+cluster://127.0.0.1:{alive[0]}"

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


@pytest.fixture
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    binary = _redis_binary()
    if binary is None or shutil.which("redis-cli") is None:
        pytest.skip(
            "REDIS CLUSTER TESTS SKIPPED: redis-server / redis-cli are not installed and could "
            "not be installed (Debian packages redis-server, redis-tools)"
        )
    for attempt in range(2):  # a port taken by someone else between the check and the bind
        cluster = RedisCluster(binary, tmp_path_factory.mktemp("redis-cluster"))
        try:
            cluster.start()
        except RuntimeError:
            cluster.stop()
            if attempt:
                raise
            continue
        break
    try:
        yield cluster
    finally:
        cluster.stop()
