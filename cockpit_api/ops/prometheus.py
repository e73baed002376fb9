"""Prometheus metrics: one registry per app instance, and the API other parts report through.

Nothing here touches ``prometheus_client``'s module-global default registry: two
apps in one process (tests, sandboxes) keep separate numbers. ``GET /metrics``
(handlers/ops.py) renders :attr:`Metrics.registry` after :meth:`Metrics.refresh`
has read the backend's hosts and migrations.

What others call (all cheap, none blocks):

- the request middleware (cockpit_api/http/access.py): :meth:`Metrics.request_started`
  and :meth:`Metrics.request_finished`;
- the libvirt backend: its ``call_observer`` attribute is set to
  :meth:`Metrics.observe_libvirt_call` (``call`` is the fixed description of the
  call, e.g. ``"list domains"``; never a domain name);
- the store: :meth:`Metrics.observe_store` or ``with metrics.store_timer("op"):``;
- the event feed: :class:`cockpit_api.feed.changes.StreamGate` sets ``feed_subscribers`` to the
  streams and long polls it admitted, whenever one opens or closes;
- sandboxes: ``metrics.sandboxes.set(n)`` whenever their number changes.

Labels are bounded: operation ids from the specs (``other`` for what no
operation routes: the specs themselves, Swagger UI, unknown paths), status
codes, host names from the configuration or the scenario, and the fixed call
names above.
"""

from __future__ import annotations

import itertools
import time
from bisect import bisect_left
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from cockpit_api.backends.base import FINAL_MIGRATION_STATUSES, MigrationFilter, PageRequest

if TYPE_CHECKING:
    from cockpit_api.backends.base import Backend

# Request latencies of a mock answering in ~1-10 ms and a real backend in up to seconds.
_REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_CALL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
UNMATCHED = "other"  # not an API operation: specs, Swagger UI, unknown paths


class Metrics:
    """Every series this server exports, in its own :class:`CollectorRegistry`."""

    def __init__(self, backend_kind: str = "sim", version: str = "") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        Gauge("cockpit_build_info", "The server's version and backend (always 1).",
              ["version", "backend"], registry=r).labels(version, backend_kind).set(1)
        self.requests = _RequestSeries(_REQUEST_BUCKETS)
        r.register(self.requests)
        self.login_failures = Counter("cockpit_login_failures",
                                      "Logins refused for bad credentials (401).", registry=r)
        self.login_throttled = Counter("cockpit_login_throttled",
                                       "Logins refused by throttling (429).", registry=r)
        self.migrations_active = Gauge(
            "cockpit_migrations_active", "Migration jobs initiated or running, by status.",
            ["status"], registry=r)
        self.migrations_finished = Counter(
            "cockpit_migrations_finished", "Migration jobs seen finished, by outcome.",
            ["outcome"], registry=r)
        for outcome in sorted(FINAL_MIGRATION_STATUSES):
            self.migrations_finished.labels(outcome)  # 0 from the start: rate() needs it
        self.host_connected = Gauge(
            "cockpit_host_connected", "1 when the server is connected to the host, else 0.",
            ["host"], registry=r)
        self.libvirt_call_seconds = Histogram(
            "cockpit_libvirt_call_duration_seconds",
            "libvirt calls made in worker threads, by call and outcome (ok, error).",
            ["call", "outcome"], buckets=_CALL_BUCKETS, registry=r)
        self.store_seconds = Histogram(
            "cockpit_store_call_duration_seconds", "Store operations, by operation.",
            ["operation"], buckets=_CALL_BUCKETS, registry=r)
        self.feed_subscribers = Gauge("cockpit_feed_subscribers",
                                      "Open event-feed streams and long polls.", registry=r)
        self.sandboxes = Gauge("cockpit_sandboxes", "Live sandboxes (the root one excluded).",
                               registry=r)
        self._seen_finished: set[str] = set()
        self._hosts_seen: set[str] = set()
        # The backend the host and migration series describe: the default world's, set by
        # the app. A sandbox's /metrics renders these same series (one server, one registry)
        # and must never refresh them from its own world.
        self.source: Backend | None = None

    # ------------------------------------------------------------ requests

    def request_started(self) -> None:
        self.requests.in_flight += 1

    def request_finished(self, operation: str, status: int, seconds: float) -> None:
        self.requests.observe(operation, status, seconds)
        if operation == "login":
            if status == 401:
                self.login_failures.inc()
            elif status == 429:
                self.login_throttled.inc()

    # ------------------------------------------------------------ hooks for others

    def observe_libvirt_call(self, call: str, seconds: float, ok: bool) -> None:
        self.libvirt_call_seconds.labels(call, "ok" if ok else "error").observe(seconds)

    def observe_store(self, operation: str, seconds: float) -> None:
        self.store_seconds.labels(operation).observe(seconds)

    @contextmanager
    def store_timer(self, operation: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.observe_store(operation, time.perf_counter() - t0)

    # ------------------------------------------------------------ read at scrape time

    async def refresh(self, backend: Backend) -> None:
        """Read host states and migration jobs from the backend, just before a scrape.

        Reading them here rather than hooking every change keeps the backends free
        of metrics code. Outcomes are counted once per job id: a job that starts
        and finishes between two scrapes is still counted, unless the backend
        forgot it first (past its retention of 10,000 jobs, or a simulator reset).
        Everything is read first and applied after, with no await in between: two
        scrapes at once count each job once.
        """
        hosts: dict[str, str] = {}
        cursor: str | None = None
        while True:
            page = await backend.list_hosts(PageRequest(limit=1000, cursor=cursor))
            hosts.update((h.hostname, h.status) for h in page.items)
            cursor = page.next_cursor
            if cursor is None:
                break
        jobs: dict[str, str] = {}
        cursor = None
        while True:
            found = await backend.list_migrations(PageRequest(limit=1000, cursor=cursor),
                                                  MigrationFilter())
            jobs.update((m.id, m.status) for m in found.items)
            cursor = found.next_cursor
            if cursor is None:
                break
        # From here on, no await: what a concurrent scrape applies is not applied twice.
        for name in self._hosts_seen - hosts.keys():
            self.host_connected.remove(name)  # gone with a new scenario: no stale series
        for name, status in hosts.items():
            self.host_connected.labels(name).set(1 if status == "connected" else 0)
        self._hosts_seen = set(hosts)
        active = {"initiated": 0, "running": 0}
        finished: set[str] = set()
        for job_id, status in jobs.items():
            if status in FINAL_MIGRATION_STATUSES:
                finished.add(job_id)
                if job_id not in self._seen_finished:
                    self.migrations_finished.labels(status).inc()
            else:
                active[status] += 1
        # Only ids the backend still holds: bounded by its retention.
        self._seen_finished = finished
        for status, n in active.items():
            self.migrations_active.labels(status).set(n)


class _Series:
    __slots__ = ("count", "per_bucket", "total")

    def __init__(self, n_buckets: int) -> None:
        self.count = 0
        self.total = 0.0
        self.per_bucket = [0] * n_buckets  # not cumulative; +Inf last


class _RequestSeries:
    """Request counts, latency histograms and in-flight requests as plain numbers.

    prometheus_client's Counter and Histogram take a lock on every update: ~11 us
    a request on this project's machine, half the 5 % budget the request layer
    has. These are only ever updated on the event loop's thread, so plain ints
    do, and the families are built when a scrape asks (``collect``).
    """

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.bounds = [*(repr(float(b)) for b in buckets), "+Inf"]
        self.in_flight = 0
        self.series: dict[tuple[str, int], _Series] = {}

    def observe(self, operation: str, status: int, seconds: float) -> None:
        self.in_flight -= 1
        s = self.series.get((operation, status))
        if s is None:
            s = self.series[(operation, status)] = _Series(len(self.bounds))
        s.count += 1
        s.total += seconds
        s.per_bucket[bisect_left(self.buckets, seconds)] += 1

    def collect(self) -> Iterator[Metric]:
        counts = CounterMetricFamily(
            "cockpit_http_requests", "HTTP requests answered, by operation id and status.",
            labels=["operation", "status"])
        seconds = HistogramMetricFamily(
            "cockpit_http_request_duration_seconds",
            "Time from a request's arrival to its last body byte, by operation id and status.",
            labels=["operation", "status"])
        for (operation, status), s in list(self.series.items()):
            labels = [operation, str(status)]
            counts.add_metric(labels, s.count)
            cumulative = itertools.accumulate(s.per_bucket)
            seconds.add_metric(labels, list(zip(self.bounds, cumulative, strict=True)),
                               sum_value=s.total)
        yield counts
        yield seconds
        yield GaugeMetricFamily("cockpit_http_requests_in_flight", "Requests being answered now.",
                                value=self.in_flight)
