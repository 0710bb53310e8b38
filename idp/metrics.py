"""Prometheus metrics. With several worker processes ``PROMETHEUS_MULTIPROC_DIR`` must be set before import."""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REQUESTS = Counter("idhub_http_requests_total", "HTTP requests", ["method", "endpoint", "status"])
LATENCY = Histogram(
    "idhub_http_request_duration_seconds",
    "HTTP request latency",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
SIGNINS = Counter("idhub_signins_total", "Sign-in attempts by outcome", ["outcome"])
AUDIT_STREAM_EVENTS = Counter("idhub_audit_stream_events_total", "Audit events delivered to a SIEM sink", ["sink"])
AUDIT_STREAM_FAILURES = Counter("idhub_audit_stream_failures_total", "Failed deliveries to a SIEM sink (retried)",
                                ["sink"])
# 1 while a backend answers, 0 while it is away (Redis: its circuit breaker is open); the lowest of the live workers
BACKEND_UP = Gauge("idhub_backend_up", "Whether a backend (database, redis) answers", ["backend"],
                   multiprocess_mode="livemin")
REDIS_BREAKER_OPENED = Counter("idhub_redis_circuit_opened_total", "Times Redis was found away (circuit opened)")


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
