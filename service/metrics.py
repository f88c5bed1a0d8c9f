"""Prometheus metrics: what is counted in-process, what is read from the database at scrape time,
and the counting of HTTP requests (service/app.py's App times every request).

In-process (per process; with several uvicorn workers each scrape sees the worker that answered
it, so sum over instances or scrape each worker — see README "Operations"):
`slotlog_http_requests_total{method,route,status}`, `slotlog_http_request_duration_seconds`,
`slotlog_events_appended_total`, `slotlog_version_conflicts_total`, `slotlog_command_retries_total`,
`slotlog_decision_cache_lookups_total{result}`,
`slotlog_worker_leading{worker}`, `slotlog_webhook_attempts_total{result}`.
From the database (cluster-wide, refreshed by each scrape): projection lag in events and seconds,
the age of the oldest open transaction (the xmin horizon that holds every subscriber of the log
back, see service/store.py), and the webhook backlog.

Each app gets its own CollectorRegistry, so several apps in one process (tests) never collide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from service.handler import Commands, Done

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _CommandCounters(Collector):
    """Reads Commands' plain counters at scrape time (the handler stays free of Prometheus)."""

    def __init__(self) -> None:
        self.commands: Commands | None = None

    def collect(self) -> Iterable[Metric]:
        conflicts = CounterMetricFamily(
            "slotlog_version_conflicts", "Appends refused because a stream had moved on"
        )
        retries = CounterMetricFamily(
            "slotlog_command_retries", "Commands re-decided after a version conflict"
        )
        recalled = CounterMetricFamily(
            "slotlog_decision_cache_lookups",
            "Streams a decision looked up in the process's memory (service/cache.py), by result",
            labels=["result"],
        )
        conflicts.add_metric([], self.commands.conflicts if self.commands else 0)
        retries.add_metric([], self.commands.retries if self.commands else 0)
        cache = self.commands.cache if self.commands else None
        recalled.add_metric(["hit"], cache.hits if cache else 0)
        recalled.add_metric(["miss"], cache.misses if cache else 0)
        yield conflicts
        yield retries
        yield recalled


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "slotlog_http_requests",
            "HTTP requests by route template, method and status",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "slotlog_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["method", "route"],
            buckets=BUCKETS,
            registry=registry,
        )
        self.events_appended = Counter(
            "slotlog_events_appended",
            "Events appended by this process's commands",
            registry=registry,
        )
        self.webhook_attempts = Counter(
            "slotlog_webhook_attempts",
            "Webhook delivery attempts by this process, by result",
            ["result"],
            registry=registry,
        )
        self.lag_events = Gauge(
            "slotlog_projection_lag_events",
            "Committed events not yet applied by an asynchronous consumer",
            ["projection"],
            registry=registry,
        )
        self.lag_seconds = Gauge(
            "slotlog_projection_lag_seconds",
            "Age of the oldest event an asynchronous consumer has not applied yet",
            ["projection"],
            registry=registry,
        )
        self.oldest_transaction = Gauge(
            "slotlog_oldest_transaction_age_seconds",
            "Age of the oldest open transaction holding an xid or xmin (holds subscribers back)",
            registry=registry,
        )
        self.webhook_backlog = Gauge(
            "slotlog_webhook_backlog",
            "Webhook deliveries pending (not yet delivered or given up)",
            registry=registry,
        )
        self.leading = Gauge(
            "slotlog_worker_leading",
            "1 when this process runs the background worker",
            ["worker"],
            registry=registry,
        )
        self._commands = _CommandCounters()
        registry.register(self._commands)
        # The labelled children per (method, route, status): `labels()` costs a lock and a tuple
        # hash each call, four times the counting itself. Bounded: routes are templates.
        self._served: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def served(self, method: str, template: str, status: int, seconds: float) -> None:
        """Count one HTTP request and record its latency, by its route's template."""
        key = (method, template, status)
        children = self._served.get(key)
        if children is None:
            children = self._served[key] = (
                self.requests.labels(method, template, str(status)),
                self.latency.labels(method, template),
            )
        children[0].inc()
        children[1].observe(seconds)

    def watch(self, commands: Commands) -> None:
        self._commands.commands = commands

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MeteredCommands(Commands):
    """Commands that count appended events and poke the wake-up notifier after each commit."""

    def __init__(
        self, pool: asyncpg.Pool, metrics: Metrics, on_commit: Callable[[], None] | None = None
    ) -> None:
        super().__init__(pool)
        self.metrics = metrics
        self.on_commit = on_commit
        metrics.watch(self)

    async def run(self, *args: Any, **kwargs: Any) -> Any:
        result = await super().run(*args, **kwargs)
        if isinstance(result, Done) and result.new:
            self.metrics.events_appended.inc(sum(len(v) for v in result.new.values()))
            if self.on_commit is not None:
                self.on_commit()
        return result


async def refresh_from_database(
    metrics: Metrics, pool: asyncpg.Pool, consumers: Sequence[str]
) -> None:
    """Set the database-derived gauges (raises if the database is unreachable)."""
    from projections.runner import lag

    for name, behind in (await lag(pool, consumers)).items():
        metrics.lag_events.labels(name).set(behind.events)
        metrics.lag_seconds.labels(name).set(behind.seconds)
    row = await pool.fetchrow(
        "SELECT coalesce(extract(epoch FROM clock_timestamp() - min(xact_start)), 0)::float8 "
        "AS oldest FROM pg_stat_activity "
        "WHERE (backend_xid IS NOT NULL OR backend_xmin IS NOT NULL) AND pid <> pg_backend_pid() "
        "AND datname = current_database()",
    )
    metrics.oldest_transaction.set(float(row["oldest"]))
    backlog = await pool.fetchval(
        "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'"
    )
    metrics.webhook_backlog.set(int(backlog))
