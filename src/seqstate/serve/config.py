"""ServeConfig: everything the server needs, defaults in one place."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

__all__ = ["STREAM_ID_PATTERN", "ServeConfig"]

#: Stream ids: short, printable, safe in URLs, SQL parameters and Redis keys.
STREAM_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """Configuration of one server process (see ``docs/serving.md``)."""

    run_dir: str | os.PathLike[str]  # run directory holding model.json + model.safetensors
    store: str | None = None  # memory:// | sqlite:///path | redis://…; None: run_dir sqlite
    token: str | None = None  # bearer token clients must send; required unless auth=False
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

    def __post_init__(self) -> None:
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
        positive_ints = ("max_batch", "max_body_bytes", "max_steps_per_request")
        for name in (*positive_ints, "max_streams_per_request"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ServeConfig.{name} must be an int >= 1; received {value!r}")
        for name in ("max_wait_ms", "ttl_s"):
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
        """The store URL, defaulting to an SQLite file inside the run directory."""
        if self.store:
            return self.store
        return f"sqlite:///{Path(self.run_dir).resolve() / 'streams.sqlite'}"

    @property
    def sweep_every_s(self) -> float:
        if self.sweep_interval_s is not None:
            return self.sweep_interval_s
        return min(max(self.ttl_s / 2, 0.05), 60.0)


def valid_stream_id(stream: str) -> bool:
    return _STREAM_ID.fullmatch(stream) is not None


_STREAM_ID = re.compile(STREAM_ID_PATTERN)
