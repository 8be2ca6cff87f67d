"""ServeConfig: everything the server needs, defaults in one place."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from pathlib import Path

__all__ = ["MIN_TOKEN_LENGTH", "STREAM_ID_PATTERN", "ServeConfig", "default_state_dir"]

#: Shorter bearer tokens are refused: guessable, and usually a placeholder left in by mistake.
MIN_TOKEN_LENGTH = 16

#: Stream ids: short, printable, safe in URLs, SQL parameters and Redis keys.
STREAM_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """Configuration of one server process (see ``docs/serving.md``)."""

    run_dir: str | os.PathLike[str]  # run directory holding model.json + model.safetensors
    store: str | None = None  # memory:// | sqlite:///path | redis://…; None: see store_url
    token: str | None = None  # bearer token (>= 16 chars, surrounding whitespace stripped)
    auth: bool = True  # False only when explicitly asked for (--no-auth)
    batching: bool = True  # stack concurrent steps of different streams into one model call
    max_batch: int = 256  # most steps (streams) in one model call
    max_wait_ms: float = 2.0  # longest a step waits for others to join its batch
    ttl_s: float = 3600.0  # idle streams expire after this many seconds; 0 disables expiry
    sweep_interval_s: float | None = None  # seconds between expiry sweeps; None: ttl/2, <= 60
    max_body_bytes: int = 1 << 20  # larger request bodies are refused (413) before parsing
    max_steps_per_request: int = 1024  # most timesteps k in one request item
    max_streams_per_request: int = 1024  # most items in one POST /v1/steps request
    device: str = "cpu"  # torch device the model runs on
    torch_threads: int | None = None  # torch intra-op threads for the model; None: torch default
    max_live_streams: int | None = 1_000_000  # new streams past this get 503 stream_capacity
    max_inflight_bytes: int = 64 << 20  # request bytes held at once; past it 429 server_busy
    max_connections: int = 1024  # open HTTP connections; idle ones are evicted past it
    max_websockets: int = 256  # open WebSocket connections; past it the upgrade gets 503
    max_ws_pending: int = 1024  # frames one WebSocket may have in flight before reads pause
    max_ws_pending_bytes: int = 4 << 20  # and bytes of frames + unwritten answers in flight
    replay_window: int = 16  # answers kept per stream: a retry of any of them is replayed
    header_timeout_s: float = 10.0  # a request's headers must arrive within this (slowloris)
    body_timeout_s: float = 30.0  # and its body within this after the headers (408)
    keepalive_timeout_s: float = 5.0  # idle keep-alive connections are closed after this
    shutdown_grace_s: float = 5.0  # on SIGTERM, requests in flight get this long to finish
    max_model_parameters: int = 1 << 28  # a run directory asking for more is refused

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


_STREAM_ID = re.compile(STREAM_ID_PATTERN)


def default_state_dir() -> Path:
    """Where default stores live: ``$SEQSTATE_STATE_DIR``, else ``$XDG_STATE_HOME/seqstate``,
    else ``~/.local/state/seqstate``."""
    explicit = os.environ.get("SEQSTATE_STATE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "seqstate"
