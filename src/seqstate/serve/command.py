"""``seqstate serve`` and ``python -m seqstate.serve``: options -> ServeConfig -> uvicorn.

The server runs on uvicorn with uvloop and httptools (the ``serve`` extra), behind the guarded
connection protocol of ``guard.py``. ``--workers N`` starts N processes on one port sharing the
store (SQLite file or Redis; not ``memory://``); they pass the configuration to each other in
the environment variable ``SEQSTATE_SERVE_CONFIG``. Workers die with their supervisor (a
parent-death signal), so a supervisor killed with ``kill -9`` leaves no process on the port.
Each serving process keeps the memory it frees for its next batches (``allocator.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import sys
from typing import Any

from seqstate.serve.config import ServeConfig

__all__ = ["add_arguments", "config_from_args", "config_options", "exposure_warning", "run"]

_CONFIG_ENV = "SEQSTATE_SERVE_CONFIG"
_PARENT_ENV = "SEQSTATE_SERVE_SUPERVISOR"  # the pid workers must die with


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the server's options to ``parser`` (used by ``seqstate serve`` and ``-m``).

    The options of :class:`ServeConfig` (defaults and help) are generated from its fields;
    only the process's own options (address, workers, event loop, parser, log level) are
    declared here.
    """
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory with model.json")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    for field in config_options():
        flag, help_text = field.metadata["flag"], field.metadata["help"]
        extra = {k: v for k, v in field.metadata.items() if k not in ("flag", "help")}
        if field.default is True:  # an opt-out: --no-auth, --no-batching
            parser.add_argument(
                flag, dest=field.name, action="store_false", default=True, help=help_text
            )
            continue
        shown = "" if field.default is None else f" (default: {_shown(field.default)})"
        extra.setdefault("metavar", flag[2:].upper().replace("-", "_"))
        parser.add_argument(
            flag,
            dest=field.name,
            type=_option_type(field),
            default=field.default,
            help=help_text + shown,
            **extra,
        )
    parser.add_argument(
        "--workers", type=int, default=1, help="server processes (shared store; default 1)"
    )
    parser.add_argument(
        "--loop", default="auto", choices=["auto", "asyncio", "uvloop"], help="event loop"
    )
    parser.add_argument(
        "--http", default="auto", choices=["auto", "httptools", "h11"], help="HTTP parser"
    )
    parser.add_argument(
        "--log-level", default="warning", help="uvicorn log level (default warning)"
    )


def config_options() -> list[dataclasses.Field[Any]]:
    """The fields of :class:`ServeConfig` that have a command-line option."""
    return [f for f in dataclasses.fields(ServeConfig) if f.metadata.get("flag")]


def _option_type(field: dataclasses.Field[Any]) -> Any:
    # the annotation is a string (postponed evaluation): its first type names the parser
    kind = str(field.type).split("|")[0].strip()
    return {"int": int, "float": float, "str": str}[kind]


def _shown(default: Any) -> str:
    if isinstance(default, int) and default >= 1 << 16 and not default & (default - 1):
        return f"2^{default.bit_length() - 1}"
    return str(default)


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """The :class:`ServeConfig` of parsed ``args`` (the token falls back to $SEQSTATE_TOKEN)."""
    values = {field.name: getattr(args, field.name) for field in config_options()}
    if values["token"] is None:
        values["token"] = os.environ.get("SEQSTATE_TOKEN") or None
    return ServeConfig(run_dir=args.run_dir, **values)


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
    from seqstate.serve.allocator import keep_freed_memory
    from seqstate.serve.app import create_app

    _die_with_parent(int(os.environ.get(_PARENT_ENV, "0")))
    keep_freed_memory()
    return create_app(ServeConfig(**json.loads(os.environ[_CONFIG_ENV])), freeze_startup=True)


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


def _cannot_listen(host: str, port: int) -> str | None:
    """Why the server could not listen on ``host:port`` (another server holds the port, an
    address this machine does not have), or None: a socket bound as uvicorn binds its own
    (``SO_REUSEADDR``) and closed at once. Port 0 (any free port) is not probed."""
    import socket

    if not port:
        return None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as error:
        return f"cannot listen on {host}:{port}: {error} (check --host)"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            return (
                f"cannot listen on {host}:{port}: {error.strerror or error} (another server "
                "on that port? pick another --port, or stop it)"
            )
    return None


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted; 0 on a clean exit, 2 on a configuration error."""
    try:
        config = config_from_args(args)
        from seqstate.serve.stores import store_kind

        store_kind(config.store_url)  # a bad URL: one line now, not a traceback after startup
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
    busy = _cannot_listen(args.host, args.port)
    if busy is not None:  # before the banner, which would say it serves there
        print(f"seqstate serve: error: {busy}", file=sys.stderr)
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
    from seqstate.serve.allocator import keep_freed_memory
    from seqstate.serve.app import create_app

    keep_freed_memory()
    try:
        app = create_app(config, freeze_startup=True)
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
