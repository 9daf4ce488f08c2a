"""Prometheus metrics, one registry per app (no import-time globals)."""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import HistogramMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from db.errors import LeaseConflict
from db.types import Effects

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
    1800,
)


class BatchHistogram(Collector):
    """A histogram with no labels that takes a batch of observations at once.

    ``prometheus_client.Histogram.observe`` takes a lock and walks the buckets for each value
    (about 2 µs): per step run and per metric on the hot path. This one bins a batch with
    ``bisect`` under one lock and exposes the same series (``_bucket``, ``_count``, ``_sum``).
    """

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = [float(b) for b in buckets]
        self._counts = [0] * (len(self._bounds) + 1)  # the last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe(self, value: float) -> None:
        self.observe_many((value,))

    def observe_many(self, values: Iterable[float]) -> None:
        bounds, where = self._bounds, bisect.bisect_left
        with self._lock:
            counts = self._counts
            total = 0.0
            for v in values:
                counts[where(bounds, v)] += 1  # le: a value equal to a bound falls in it
                total += v
            self._sum += total

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, buckets = 0, []
        for bound, n in zip([*self._bounds, math.inf], counts, strict=True):
            cumulative += n
            buckets.append(("+Inf" if bound == math.inf else repr(bound), cumulative))
        yield HistogramMetricFamily(
            self._name, self._documentation, buckets=buckets, sum_value=total
        )

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self._name, self._documentation)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.step_runs = Counter(
            "cairn_step_runs", "Step-run transitions into each status", ["status"], registry=r
        )
        self.runs = Counter("cairn_runs", "Runs finished, by final status", ["status"], registry=r)
        self.retries = Counter("cairn_retries", "Step runs re-queued after a failure", registry=r)
        self.lease_expirations = Counter(
            "cairn_lease_expirations", "Leases that expired without renewal", registry=r
        )
        self.duplicates = Counter(
            "cairn_duplicate_completions",
            "Rejected complete/fail calls (fencing); conflicting=true when the result differs "
            "from the stored one or comes from an older attempt",
            ["reason", "conflicting"],
            registry=r,
        )
        self.ignored_cancellations = Counter(
            "cairn_ignored_cancellations",
            "Heartbeats for step runs the worker was told are cancelled, past the grace period",
            registry=r,
        )
        self.queue_latency = BatchHistogram(
            "cairn_queue_latency_seconds", "Queued (available) to claimed", LATENCY_BUCKETS, r
        )
        self.step_duration = BatchHistogram(
            "cairn_step_duration_seconds", "Claimed to finished, per attempt", LATENCY_BUCKETS, r
        )
        self.queue_depth = Gauge(
            "cairn_queue_depth",
            "Queued step runs per action (from the database)",
            ["action"],
            registry=r,
        )
        self.workers_active = Gauge(
            "cairn_workers_active", "Workers seen recently (from the database)", registry=r
        )
        self.http_requests = Counter(
            "cairn_http_requests", "HTTP requests", ["method", "route", "status"], registry=r
        )
        self.http_latency = Histogram(
            "cairn_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # Pre-create the alerting series so they read 0 rather than absent.
        for reason in ("lease_lost", "cancelled", "already_finished"):
            for conflicting in ("true", "false"):
                self.duplicates.labels(reason=reason, conflicting=conflicting)
        self._known_actions: set[str] = set()

    def record(self, effects: Effects) -> None:
        for status, n in effects.step_statuses.items():
            if n:
                self.step_runs.labels(status=status).inc(n)
        for status, n in effects.run_statuses.items():
            if n:
                self.runs.labels(status=status).inc(n)
        if effects.retries:
            self.retries.inc(effects.retries)
        if effects.lease_expirations:
            self.lease_expirations.inc(effects.lease_expirations)
        if effects.ignored_cancellations:
            self.ignored_cancellations.inc(effects.ignored_cancellations)
        if effects.queue_latencies:
            self.queue_latency.observe_many(effects.queue_latencies)
        if effects.step_durations:
            self.step_duration.observe_many(effects.step_durations)

    def conflict(self, exc: LeaseConflict) -> None:
        self.duplicates.labels(reason=exc.code, conflicting=str(exc.conflicting).lower()).inc()

    def set_gauges(self, depth: dict[str, int], workers: int) -> None:
        for action in self._known_actions - set(depth):
            self.queue_depth.labels(action=action).set(0)
        for action, n in depth.items():
            self.queue_depth.labels(action=action).set(n)
        self._known_actions |= set(depth)
        self.workers_active.set(workers)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class HTTPMetricsMiddleware:
    """Counts requests and their latency by route template (not raw path: bounded labels)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "GET")
            self.metrics.http_requests.labels(method, template, str(status["code"])).inc()
            self.metrics.http_latency.labels(method, template).observe(time.perf_counter() - start)
