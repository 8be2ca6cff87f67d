"""``seqstate serve`` and ``python -m seqstate.serve``: options -> ServeConfig -> uvicorn."""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["add_arguments", "config_from_args", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the server's options to ``parser`` (used by ``seqstate serve`` and ``-m``)."""
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory with model.json")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    parser.add_argument(
        "--store",
        default=None,
        help="memory:// | sqlite:///path.db | redis://host:port/db "
        "(default: sqlite file RUN_DIR/streams.sqlite)",
    )
    parser.add_argument(
        "--token", default=None, help="bearer token clients must send (default: $SEQSTATE_TOKEN)"
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
    )


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted; 0 on a clean exit, 2 on a configuration error."""
    try:
        config = config_from_args(args)
    except ValueError as error:
        print(f"seqstate serve: error: {error}", file=sys.stderr)
        return 2
    import uvicorn

    from seqstate.serve.app import create_app

    try:
        app = create_app(config)
    except ValueError as error:
        print(f"seqstate serve: error: {error}", file=sys.stderr)
        return 2
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            access_log=False,
            lifespan="on",
        )
    )
    server.run()
    return 0 if server.started else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m seqstate.serve",
        description="Serve a seqstate model: one durable recurrent state per stream.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
