"""Prometheus metrics, one registry per app (no import-time globals)."""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.metrics_core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.routing import BaseRoute, Match
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
    ``bisect`` and adds each bucket's count once, and exposes the same series (``_bucket``,
    ``_count``, ``_sum``). Its values are prometheus_client's own (``value_class``, by default
    the library's: a file shared with the other server processes in multi-process mode, where
    ``MultiProcessCollector`` sums them like those of a ``Histogram``).
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        registry: CollectorRegistry,
        *,
        value_class: Any = None,
    ) -> None:
        make = value_class if value_class is not None else values.ValueClass
        self._name = name
        self._documentation = documentation
        self._bounds = [float(b) for b in buckets]
        labels = [repr(b) for b in self._bounds] + ["+Inf"]
        # Per bucket, not cumulative (as Histogram stores them); the last one is +Inf.
        self._counts = [
            make("histogram", name, f"{name}_bucket", ("le",), (le,), documentation)
            for le in labels
        ]
        self._sum = make("histogram", name, f"{name}_sum", (), (), documentation)
        self._lock = threading.Lock()
        registry.register(self)

    def observe(self, value: float) -> None:
        self.observe_many((value,))

    def observe_many(self, values: Iterable[float]) -> None:
        bounds, where = self._bounds, bisect.bisect_left
        binned: dict[int, int] = {}
        total = 0.0
        for v in values:
            i = where(bounds, v)  # le: a value equal to a bound falls in it
            binned[i] = binned.get(i, 0) + 1
            total += v
        if not binned:
            return
        with self._lock:
            for i, n in binned.items():
                self._counts[i].inc(n)
            self._sum.inc(total)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            counts, total = [c.get() for c in self._counts], self._sum.get()
        cumulative, buckets = 0.0, []
        for bound, n in zip([*self._bounds, math.inf], counts, strict=True):
            cumulative += n
            buckets.append(("+Inf" if bound == math.inf else repr(bound), cumulative))
        yield HistogramMetricFamily(
            self._name, self._documentation, buckets=buckets, sum_value=total
        )

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self._name, self._documentation)


class DatabaseGauges(Collector):
    """``cairn_queue_depth`` and ``cairn_workers_active``: read from the database at each scrape.

    Whichever server process answers the scrape reads them, so they are the same from every
    process (nothing per process to merge). An action seen once stays, at 0 when none is queued.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._depth: dict[str, int] = {}
        self._workers: int | None = None  # None: the last read failed, the values are unknown
        self._lock = threading.Lock()
        registry.register(self)

    def set(self, depth: dict[str, int], workers: int) -> None:
        with self._lock:
            self._depth = {**dict.fromkeys(self._depth, 0), **depth}
            self._workers = workers

    def unknown(self) -> None:
        """The database could not be read: leave both out (absent, not a stale or false 0)."""
        with self._lock:
            self._workers = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            depth, workers = dict(self._depth), self._workers
        if workers is None:
            return
        yield from self._families(depth, workers)

    def _families(self, depth: dict[str, int], workers: int) -> Iterator[GaugeMetricFamily]:
        doc = "Queued step runs per action (from the database)"
        family = GaugeMetricFamily("cairn_queue_depth", doc, labels=["action"])
        for action, n in sorted(depth.items()):
            family.add_metric([action], n)
        yield family
        yield GaugeMetricFamily(
            "cairn_workers_active", "Workers seen recently (from the database)", value=workers
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield from self._families({}, 0)


class Metrics:
    """The server's metrics, one set per app.

    In multi-process mode (``PROMETHEUS_MULTIPROC_DIR`` set before prometheus_client is imported,
    as ``cairn serve --workers N`` does) every process writes its counters and histograms to
    files in that directory and a scrape, whichever process answers it, reads all of them:
    totals across the processes, not one process's share.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.multiprocess = bool(getattr(values.ValueClass, "_multiprocess", False))
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
        self.database_gauges = DatabaseGauges(r)
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
        self._exposed = r
        if self.multiprocess:
            self._exposed = CollectorRegistry()
            merge: Any = MultiProcessCollector  # untyped: reads every process's files
            merge(self._exposed)
            self._exposed.register(self.database_gauges)

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
        self.database_gauges.set(depth, workers)

    def gauges_unknown(self) -> None:
        self.database_gauges.unknown()

    def render(self) -> bytes:
        return generate_latest(self._exposed)


class HTTPMetricsMiddleware:
    """Counts requests and their latency by route template (not raw path: bounded labels)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Sequence[BaseRoute] = ()) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = list(routes)  # for answers given before routing (``route_template``)

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

        method = scope.get("method", "GET")
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or route_template(scope, self.routes)
            self.metrics.http_requests.labels(method, template, str(status["code"])).inc()
            self.metrics.http_latency.labels(method, template).observe(time.perf_counter() - start)


def route_template(scope: Scope, routes: Sequence[BaseRoute]) -> str:
    """The template of the route a request was for when the router did not say (an answer
    given before routing, such as 413 or 408, or a request a middleware rewrote: ``HEAD``, a
    trailing slash); ``unmatched`` when none of ``routes`` has its path."""
    method = scope.get("method", "GET")
    probe = {
        **scope,
        "method": "GET" if method == "HEAD" else method,
        "path": scope.get("path", "").rstrip("/") or "/",
    }
    partial = None
    for candidate in routes:
        match, _ = candidate.matches(probe)
        if match is Match.FULL:
            return str(getattr(candidate, "path", "unmatched"))
        if match is Match.PARTIAL and partial is None:
            partial = str(getattr(candidate, "path", "unmatched"))  # another method's (405)
    return partial or "unmatched"
