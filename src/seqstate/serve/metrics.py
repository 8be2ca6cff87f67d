"""Prometheus metrics of one app, in its own registry (two apps in a process never mix)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "seqstate_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "seqstate_request_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.steps = Counter(
            "seqstate_steps",
            "Steps by outcome (applied, replayed, rejected)",
            ["outcome"],
            registry=r,
        )
        # resolved once: a labels() lookup per step costs a lock and a dict walk
        self.step_outcomes = tuple(
            self.steps.labels(outcome) for outcome in ("applied", "replayed", "rejected")
        )
        self.batch_size = Histogram(
            "seqstate_batch_size", "Steps per model call", buckets=_BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "seqstate_batch_seconds",
            "Time to apply one batch (read, model, durable commit)",
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.live_streams = Gauge(
            "seqstate_live_streams", "Streams held by the store (updated on scrape)", registry=r
        )
        self.store_errors = Counter(
            "seqstate_store_errors", "Store operations that failed", ["operation"], registry=r
        )
        self.busy = Counter(
            "seqstate_busy_refusals", "Requests refused: in-flight bytes at the bound", registry=r
        )
        self.websockets = Gauge("seqstate_websockets", "Open WebSocket connections", registry=r)
        self.expired = Counter(
            "seqstate_expired_streams", "Streams removed by the TTL sweeper", registry=r
        )

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
