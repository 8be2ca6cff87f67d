"""ServeConfig: everything the server needs, defaults in one place."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from pathlib import Path
from typing import Any

__all__ = ["MIN_TOKEN_LENGTH", "STREAM_ID_PATTERN", "ServeConfig", "default_state_dir"]

#: Shorter bearer tokens are refused: guessable, and usually a placeholder left in by mistake.
MIN_TOKEN_LENGTH = 16

#: Stream ids: short, printable, safe in URLs, SQL parameters and Redis keys.
STREAM_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"


def _option(default: Any, flag: str | None, help: str, **argparse: Any) -> Any:
    """A field with its one default and its one description; ``flag`` is its command-line
    option (``seqstate serve``), generated from here by ``command.py``; None: Python only."""
    return dataclasses.field(default=default, metadata={"flag": flag, "help": help, **argparse})


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """Configuration of one server process (see ``docs/serving.md``).

    Each field is declared once, with its default and its description; the options and help of
    ``seqstate serve`` are generated from these fields (``seqstate.serve.command``), so the
    defaults of the Python API and of the command line cannot drift apart.
    """

    run_dir: str | os.PathLike[str]  # run directory holding model.json + model.safetensors
    store: str | None = _option(
        None,
        "--store",
        "memory:// | sqlite:///path.db | redis://host:port/db (default: an SQLite file of the "
        "server's own outside RUN_DIR, in $SEQSTATE_STATE_DIR or ~/.local/state/seqstate)",
        metavar="URL",
    )
    token: str | None = _option(
        None,
        "--token",
        "bearer token clients must send, >= 16 characters; surrounding whitespace is stripped "
        "(default: $SEQSTATE_TOKEN)",
    )
    auth: bool = _option(True, "--no-auth", "serve without authentication (explicit opt-out)")
    batching: bool = _option(
        True,
        "--no-batching",
        "one model call per request (the baseline); by default concurrent steps of different "
        "streams are stacked into one model call",
    )
    max_batch: int = _option(256, "--max-batch", "most steps (streams) in one model call")
    max_wait_ms: float = _option(
        2.0,
        "--max-wait-ms",
        "longest a step waits for others to join its batch while a commit is in flight (ms); "
        "an idle server takes what is queued at once",
    )
    ttl_s: float = _option(
        3600.0, "--ttl", "idle streams expire after this many seconds (0: never)"
    )
    sweep_interval_s: float | None = _option(
        None, "--sweep-interval", "seconds between expiry sweeps (default: ttl/2, at most 60)"
    )
    max_body_bytes: int = _option(
        1 << 20, "--max-body-bytes", "larger request bodies (and WebSocket frames) are refused"
    )
    max_steps_per_request: int = _option(1024, "--max-steps", "most timesteps in one step item")
    max_streams_per_request: int = _option(
        1024, "--max-streams", "most items in one POST /v1/steps request or WebSocket steps frame"
    )
    device: str = _option("cpu", "--device", "torch device the model runs on")
    # 1, not torch's default (all cores): measured faster for the server's per-step batches,
    # where the model thread, the commit thread and the event loop otherwise fight for the
    # cores (see BENCHMARKS.md); an embedding process that manages torch's threads itself
    # passes None, which leaves them as they are.
    torch_threads: int | None = _option(
        1,
        "--torch-threads",
        "torch intra-op threads for the model (1: measured faster for per-step batches; the "
        "model thread and the event loop otherwise fight for the cores)",
    )
    max_live_streams: int | None = _option(
        1_000_000, "--max-live-streams", "live streams; new ones past this get 503"
    )
    max_inflight_bytes: int = _option(
        64 << 20, "--max-inflight-bytes", "request bytes held at once; past it 429 server_busy"
    )
    max_connections: int = _option(
        1024, "--max-connections", "open HTTP connections; idle ones are evicted past it"
    )
    max_websockets: int = _option(
        256, "--max-websockets", "open WebSocket connections; past it the upgrade is refused"
    )
    max_ws_pending: int = _option(
        1024, "--max-ws-pending", "frames one WebSocket may have in flight before reads pause"
    )
    max_ws_pending_bytes: int = _option(
        4 << 20,
        "--max-ws-pending-bytes",
        "bytes of frames and unwritten answers one WebSocket may hold before reads pause",
    )
    replay_window: int = _option(
        16,
        "--replay-window",
        "answers kept per stream (retries of any of them are replayed); also the most steps "
        "of one stream in flight on a WebSocket",
    )
    header_timeout_s: float = _option(
        10.0, "--header-timeout", "seconds a request's headers may take (slowloris)"
    )
    body_timeout_s: float = _option(
        30.0, "--body-timeout", "seconds a request's body may take after its headers (408)"
    )
    keepalive_timeout_s: float = _option(
        5.0, "--keepalive-timeout", "idle keep-alive connections are closed after this (s)"
    )
    shutdown_grace_s: float = _option(
        5.0, "--shutdown-grace", "on SIGTERM, requests in flight get this long to finish (s)"
    )
    max_model_parameters: int = _option(
        1 << 28, "--max-model-parameters", "a run directory asking for more is refused"
    )

    def __post_init__(self) -> None:
        if isinstance(self.token, str):
            # strip here, where it is set, so the check below and the comparison with what
            # clients send (stripped by the HTTP layer) agree: "tok\n" from a file just works
            object.__setattr__(self, "token", self.token.strip() or None)
        if not Path(self.run_dir).is_dir():
            raise ValueError(
                f"run_dir must be an existing run directory (with model.json); received "
                f"{str(self.run_dir)!r}"
            )
        if self.auth and not self.token:
            raise ValueError(
                "a bearer token is required: pass token=... (CLI: --token or env SEQSTATE_TOKEN), "
                "or disable authentication explicitly with auth=False (CLI: --no-auth)"
            )
        if self.token is not None:
            if len(self.token) < MIN_TOKEN_LENGTH:
                raise ValueError(
                    f"the bearer token must be at least {MIN_TOKEN_LENGTH} characters; received "
                    f"one of {len(self.token)}. Generate one with: python -c 'import secrets; "
                    "print(secrets.token_urlsafe(32))'"
                )
            if any(c.isspace() or not c.isprintable() for c in self.token):
                raise ValueError(
                    "the bearer token must not contain whitespace or control characters (an "
                    "HTTP header cannot carry them reliably); received one that does"
                )
        positive_ints: tuple[str, ...] = (
            "max_batch",
            "max_body_bytes",
            "max_steps_per_request",
            "max_streams_per_request",
            "max_inflight_bytes",
            "max_connections",
            "max_websockets",
            "max_ws_pending",
            "max_ws_pending_bytes",
            "replay_window",
            "max_model_parameters",
        )
        if self.max_live_streams is not None:
            positive_ints += ("max_live_streams",)
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ServeConfig.{name} must be an int >= 1; received {value!r}")
        for name in ("header_timeout_s", "body_timeout_s", "keepalive_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"ServeConfig.{name} must be a number > 0; received {value!r}")
        for name in ("max_wait_ms", "ttl_s", "shutdown_grace_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value < 0:
                raise ValueError(f"ServeConfig.{name} must be a number >= 0; received {value!r}")
        if self.sweep_interval_s is not None and not self.sweep_interval_s > 0:
            raise ValueError(
                "ServeConfig.sweep_interval_s must be > 0 or None; received "
                f"{self.sweep_interval_s!r}"
            )
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(
                f"ServeConfig.torch_threads must be >= 1 or None; received {self.torch_threads!r}"
            )

    @property
    def store_url(self) -> str:
        """The store URL; by default an SQLite file of this server's own, OUTSIDE the run
        directory (a run directory is often copied from elsewhere: a ``streams.sqlite`` in it
        must never be taken as live state). One file per run directory, so two servers on one
        run directory share it, safely (compare-and-set on a per-write generation)."""
        if self.store:
            return self.store
        run = str(Path(self.run_dir).resolve())
        name = f"streams-{hashlib.sha256(run.encode()).hexdigest()[:16]}.sqlite"
        return f"sqlite:///{default_state_dir() / name}"

    @property
    def sweep_every_s(self) -> float:
        if self.sweep_interval_s is not None:
            return self.sweep_interval_s
        return min(max(self.ttl_s / 2, 0.05), 60.0)


def valid_stream_id(stream: str) -> bool:
    return _STREAM_ID.fullmatch(stream) is not None


def valid_stream_ids(streams: list[str]) -> bool:
    """Whether every id of ``streams`` is valid (a frame's ids checked in one pass)."""
    return all(map(_STREAM_ID.fullmatch, streams))


_STREAM_ID = re.compile(STREAM_ID_PATTERN)


def default_state_dir() -> Path:
    """Where default stores live: ``$SEQSTATE_STATE_DIR``, else ``$XDG_STATE_HOME/seqstate``,
    else ``~/.local/state/seqstate``."""
    explicit = os.environ.get("SEQSTATE_STATE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "seqstate"
