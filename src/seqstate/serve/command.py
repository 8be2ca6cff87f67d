"""``seqstate serve`` and ``python -m seqstate.serve``: options -> ServeConfig -> uvicorn.

The server runs on uvicorn with uvloop and httptools (the ``serve`` extra), behind the guarded
connection protocol of ``guard.py``. ``--workers N`` starts N processes on one port sharing the
store (SQLite file or Redis; not ``memory://``); they pass the configuration to each other in
the environment variable ``SEQSTATE_SERVE_CONFIG``. Workers die with their supervisor (a
parent-death signal), so a supervisor killed with ``kill -9`` leaves no process on the port.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import sys
from typing import Any

__all__ = ["add_arguments", "config_from_args", "exposure_warning", "run"]

_CONFIG_ENV = "SEQSTATE_SERVE_CONFIG"
_PARENT_ENV = "SEQSTATE_SERVE_SUPERVISOR"  # the pid workers must die with


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the server's options to ``parser`` (used by ``seqstate serve`` and ``-m``)."""
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory with model.json")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    parser.add_argument(
        "--store",
        default=None,
        help="memory:// | sqlite:///path.db | redis://host:port/db (default: an SQLite file "
        "of the server's own outside RUN_DIR, in $SEQSTATE_STATE_DIR or ~/.local/state/seqstate)",
    )
    parser.add_argument(
        "--token",
        default=None,
        help="bearer token clients must send, >= 16 characters (default: $SEQSTATE_TOKEN)",
    )
    parser.add_argument(
        "--no-auth", action="store_true", help="serve without authentication (explicit opt-out)"
    )
    parser.add_argument(
        "--no-batching", action="store_true", help="one model call per request (baseline)"
    )
    parser.add_argument("--max-batch", type=int, default=256, help="steps per model call")
    parser.add_argument(
        "--max-wait-ms", type=float, default=2.0, help="longest wait for a batch to fill"
    )
    parser.add_argument(
        "--ttl", type=float, default=3600.0, help="idle stream expiry in seconds (0: never)"
    )
    parser.add_argument("--max-body-bytes", type=int, default=1 << 20, help="request body limit")
    parser.add_argument("--max-steps", type=int, default=1024, help="timesteps per request item")
    parser.add_argument("--max-streams", type=int, default=1024, help="items per /v1/steps")
    parser.add_argument(
        "--max-live-streams", type=int, default=1_000_000, help="live streams (503 past it)"
    )
    parser.add_argument(
        "--max-inflight-bytes", type=int, default=64 << 20, help="request bytes held at once"
    )
    parser.add_argument("--max-connections", type=int, default=1024, help="open HTTP connections")
    parser.add_argument("--max-websockets", type=int, default=256, help="open WebSockets")
    parser.add_argument(
        "--max-ws-pending-bytes",
        type=int,
        default=4 << 20,
        help="bytes of frames and unwritten answers one WebSocket may hold before reads pause",
    )
    parser.add_argument(
        "--replay-window",
        type=int,
        default=16,
        help="answers kept per stream (retries of any of them are replayed); also the most "
        "steps of one stream in flight on a WebSocket",
    )
    parser.add_argument("--header-timeout", type=float, default=10.0, help="seconds for headers")
    parser.add_argument("--body-timeout", type=float, default=30.0, help="seconds for a body")
    parser.add_argument("--keepalive-timeout", type=float, default=5.0, help="idle keep-alive s")
    parser.add_argument(
        "--shutdown-grace", type=float, default=5.0, help="seconds requests get after SIGTERM"
    )
    parser.add_argument(
        "--max-model-parameters", type=int, default=1 << 28, help="largest model served"
    )
    parser.add_argument("--workers", type=int, default=1, help="server processes (shared store)")
    parser.add_argument(
        "--loop", default="auto", choices=["auto", "asyncio", "uvloop"], help="event loop"
    )
    parser.add_argument(
        "--http", default="auto", choices=["auto", "httptools", "h11"], help="HTTP parser"
    )
    parser.add_argument("--device", default="cpu", help="torch device for the model")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: measured faster for per-step batches, the "
        "model thread and the event loop otherwise fight for the cores)",
    )
    parser.add_argument("--log-level", default="warning", help="uvicorn log level")


def config_from_args(args: argparse.Namespace):  # -> ServeConfig (import kept lazy)
    from seqstate.serve.config import ServeConfig

    token = args.token if args.token is not None else os.environ.get("SEQSTATE_TOKEN")
    return ServeConfig(
        run_dir=args.run_dir,
        store=args.store,
        token=token or None,
        auth=not args.no_auth,
        batching=not args.no_batching,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        ttl_s=args.ttl,
        max_body_bytes=args.max_body_bytes,
        max_steps_per_request=args.max_steps,
        max_streams_per_request=args.max_streams,
        device=args.device,
        torch_threads=args.torch_threads,
        max_live_streams=args.max_live_streams,
        max_inflight_bytes=args.max_inflight_bytes,
        max_connections=args.max_connections,
        max_websockets=args.max_websockets,
        max_ws_pending_bytes=args.max_ws_pending_bytes,
        replay_window=args.replay_window,
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
        keepalive_timeout_s=args.keepalive_timeout,
        shutdown_grace_s=args.shutdown_grace,
        max_model_parameters=args.max_model_parameters,
    )


def exposure_warning(host: str, auth: bool) -> str | None:
    """The warning for serving without auth on an address other machines can reach."""
    if auth:
        return None
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback:
        return None
    bar = "!" * 78
    return (
        f"{bar}\nWARNING: --no-auth on {host!r}, an address other machines can reach: ANYONE "
        "who can connect may read, advance and delete every stream. Bind 127.0.0.1 or set a "
        f"token (--token / SEQSTATE_TOKEN).\n{bar}"
    )


def _app_from_env() -> Any:
    """The app of one worker process (``--workers N``): the config comes in the environment."""
    from seqstate.serve.app import create_app
    from seqstate.serve.config import ServeConfig

    _die_with_parent(int(os.environ.get(_PARENT_ENV, "0")))
    return create_app(ServeConfig(**json.loads(os.environ[_CONFIG_ENV])))


def _die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this worker when its supervisor dies (Linux' parent-death
    signal), so a ``kill -9`` of the supervisor never leaves workers holding the port and a
    restart binds. Killing a worker loses no acknowledged step (they are durable first)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if parent and os.getppid() != parent:  # the supervisor died before the signal was set
        os._exit(1)


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted; 0 on a clean exit, 2 on a configuration error."""
    try:
        config = config_from_args(args)
        if args.workers < 1:
            raise ValueError(f"--workers must be >= 1; received {args.workers}")
        if args.workers > 1 and config.store_url == "memory://":
            raise ValueError(
                "--workers > 1 needs a shared store (sqlite:///… or redis://…): each worker "
                "would hold its own memory:// store and lose streams between them"
            )
    except ValueError as error:
        print(f"seqstate serve: error: {error}", file=sys.stderr)
        return 2
    warning = exposure_warning(args.host, config.auth)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    from seqstate.serve.guard import GuardedConfig, GuardedHttpToolsProtocol

    if args.http == "h11":
        http: Any = "h11"  # the pure-Python parser: only to measure what httptools buys
    else:
        http = GuardedHttpToolsProtocol
    options: dict[str, Any] = dict(
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        lifespan="on",
        loop=args.loop,
        http=http,
        ws="websockets-sansio",
        ws_max_size=config.max_body_bytes,
        ws_per_message_deflate=False,  # small JSON frames: compression costs more than it saves
        timeout_keep_alive=config.keepalive_timeout_s,
        timeout_graceful_shutdown=config.shutdown_grace_s,
        header_timeout_s=config.header_timeout_s,
        max_connections=config.max_connections,
        token=config.token if config.auth else None,
    )
    import uvicorn

    from seqstate.serve.rundir import run_summary

    try:
        summary = run_summary(config.run_dir)
    except (ValueError, OSError) as error:
        print(f"seqstate serve: error: {error}", file=sys.stderr)
        return 2
    # one line a person (or a script) can read: where, what, and what a step must carry
    print(f"seqstate serve: http://{args.host}:{args.port} {summary}", flush=True)
    if args.workers > 1:
        fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        fields["run_dir"] = str(fields["run_dir"])
        fields["store"] = config.store_url  # every worker opens the same store
        os.environ[_CONFIG_ENV] = json.dumps(fields)
        os.environ[_PARENT_ENV] = str(os.getpid())
        uvicorn_config = GuardedConfig(
            "seqstate.serve.command:_app_from_env", factory=True, workers=args.workers, **options
        )
        from uvicorn.supervisors import Multiprocess

        sock = uvicorn_config.bind_socket()
        Multiprocess(uvicorn_config, sockets=[sock]).run()  # SIGTERM: stops every worker
        return 0
    from seqstate.serve.app import create_app

    try:
        app = create_app(config)
    except ValueError as error:
        print(f"seqstate serve: error: {error}", file=sys.stderr)
        return 2
    server = uvicorn.Server(GuardedConfig(app, **options))
    server.run()
    return 0 if server.started else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m seqstate.serve",
        description="Serve a seqstate model: one durable recurrent state per stream.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
