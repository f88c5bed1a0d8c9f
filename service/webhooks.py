"""Webhook delivery: signed POSTs of a tenant's events to each subscription, in order, at least
once, retried with exponential backoff for 24 hours.

Two steps, both run by the `webhook-sender` background worker (one per cluster):
- dispatch: an asynchronous consumer of the log (checkpoint 'webhooks', projections/runner.py)
  that adds one `webhook_deliveries` row per matching subscription and event, in log order, in the
  same transaction as its checkpoint, so no event is ever skipped or dispatched twice;
- send: for each subscription, only its oldest pending delivery is attempted, so event k+1 is never
  sent before event k was delivered (2xx) or given up. Subscriptions are sent to concurrently and
  every attempt has a timeout, so a slow or dead receiver holds back only its own subscription.
Commands never wait on any of this: they only append events; delivery runs in this worker, on its
own connections, possibly in another process.

At least once: an attempt that succeeded but whose bookkeeping failed (crash) is sent again;
receivers deduplicate by the payload's `id`. Signature (Stripe-style): header
`Slotlog-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`.

Settings (environment): SLOTLOG_WEBHOOK_TIMEOUT (5 s per attempt), SLOTLOG_WEBHOOK_BACKOFF_BASE
(2 s, doubled per failed attempt), SLOTLOG_WEBHOOK_BACKOFF_MAX (1 h), SLOTLOG_WEBHOOK_GIVE_UP
(86400 s after the first attempt), SLOTLOG_WEBHOOK_CONCURRENCY (32 subscriptions at once).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import asyncpg
import httpx
import msgspec

from projections.runner import env_float, run_batch
from service.logs import log
from service.store import LogEntry
from service.tasks import cancel_and_wait

SIGNATURE_HEADER: Final = "Slotlog-Signature"
LOCK_WEBHOOKS: Final = 7320103
_JSON = msgspec.json.Encoder()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The `Slotlog-Signature` header value for `body` sent at `timestamp`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, header: str, body: bytes, *, tolerance: float | None = 300) -> bool:
    """What a receiver does: check the HMAC (and, with `tolerance`, the timestamp's age)."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if tolerance is not None and abs(time.time() - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


@dataclass(frozen=True, slots=True)
class Settings:
    timeout: float = 5.0
    backoff_base: float = 2.0
    backoff_max: float = 3600.0
    give_up_after: float = 86400.0
    concurrency: int = 32

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            timeout=env_float("SLOTLOG_WEBHOOK_TIMEOUT", 5.0),
            backoff_base=env_float("SLOTLOG_WEBHOOK_BACKOFF_BASE", 2.0),
            backoff_max=env_float("SLOTLOG_WEBHOOK_BACKOFF_MAX", 3600.0),
            give_up_after=env_float("SLOTLOG_WEBHOOK_GIVE_UP", 86400.0),
            concurrency=int(env_float("SLOTLOG_WEBHOOK_CONCURRENCY", 32)),
        )

    def backoff(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th failed attempt (1, 2, …)."""
        return float(min(self.backoff_max, self.backoff_base * 2 ** min(failures - 1, 40)))


def matches(wanted: Sequence[str], event_type: str) -> bool:
    return "*" in wanted or event_type in wanted


class Dispatcher:
    """The consumer that turns log events into pending deliveries (checkpoint 'webhooks')."""

    name = "webhooks"

    async def apply(
        self,
        conn: Any,
        events: Sequence[LogEntry],
        *,
        tables: Mapping[str, str] | None = None,
    ) -> None:
        tenants = sorted({e.tenant_id for e in events})
        subs = await conn.fetch(
            "SELECT tenant_id, webhook_id, events FROM webhook_subscriptions "
            "WHERE tenant_id = ANY($1::text[]) ORDER BY tenant_id, webhook_id",
            tenants,
        )
        if not subs:
            return
        by_tenant: dict[str, list[tuple[str, list[str]]]] = {}
        for s in subs:
            by_tenant.setdefault(s["tenant_id"], []).append((s["webhook_id"], s["events"]))
        rows: list[tuple[str, str, int, str]] = []
        for e in events:  # log order: delivery ids grow in the order events must be sent
            for webhook_id, wanted in by_tenant.get(e.tenant_id, ()):
                if matches(wanted, e.type):
                    rows.append((e.tenant_id, webhook_id, e.position, e.type))
        if rows:
            await conn.executemany(
                "INSERT INTO webhook_deliveries (tenant_id, webhook_id, event_position, "
                "event_type) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                rows,
            )


@dataclass(frozen=True, slots=True)
class Due:
    delivery_id: int
    tenant_id: str
    webhook_id: str
    url: str
    secret: str
    event_position: int
    attempt_count: int
    created_at: datetime
    first_attempt_at: datetime | None


class WebhookSender:
    """The `webhook-sender` worker's step: dispatch new events, then start the due deliveries."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings | None = None,
        *,
        on_attempt: Callable[[str], None] | None = None,
        batch: int = 2000,
    ) -> None:
        self.pool = pool
        self.settings = settings or Settings.from_env()
        self.on_attempt = on_attempt
        self.batch = batch
        self.dispatcher = Dispatcher()
        self.wake: asyncio.Event | None = None
        self._client: httpx.AsyncClient | None = None
        self._inflight: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.attempts = 0

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.settings.timeout),
                follow_redirects=False,
                limits=httpx.Limits(max_connections=self.settings.concurrency * 2),
                headers={"User-Agent": "slotlog-webhooks/1"},
            )
        return self._client

    async def close(self) -> None:
        await cancel_and_wait(*self._inflight.values())
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def step(self) -> float | None:
        deadline = time.monotonic() + 0.5
        behind = False
        while (n := await run_batch(self.pool, self.dispatcher, self.batch)) == self.batch:
            if time.monotonic() > deadline:
                behind = True
                break
        del n
        next_due = await self._start_due()
        if behind:
            return 0.001
        return None if next_due is None else max(0.01, min(next_due, 1.0))

    async def _start_due(self) -> float | None:
        """Start an attempt for each subscription whose oldest pending delivery is due; returns
        the seconds until the next one not yet due (None: nothing pending but in flight)."""
        free = self.settings.concurrency - len(self._inflight)
        if free <= 0:
            return None
        rows = await self.pool.fetch(
            "SELECT h.delivery_id, h.tenant_id, h.webhook_id, s.url, s.secret, h.event_position, "
            "h.attempt_count, h.created_at, (h.attempts -> 0 ->> 'at')::timestamptz AS first_at, "
            "extract(epoch FROM h.next_attempt_at - clock_timestamp())::float8 AS wait "
            "FROM (SELECT DISTINCT ON (tenant_id, webhook_id) * FROM webhook_deliveries "
            "      WHERE status = 'pending' ORDER BY tenant_id, webhook_id, delivery_id) AS h "
            "JOIN webhook_subscriptions s USING (tenant_id, webhook_id) "
            "ORDER BY h.next_attempt_at"
        )
        soonest: float | None = None
        for r in rows:
            key = (r["tenant_id"], r["webhook_id"])
            if key in self._inflight:
                continue
            if r["wait"] > 0:
                soonest = r["wait"] if soonest is None else min(soonest, r["wait"])
                continue
            if free <= 0:
                break
            free -= 1
            due = Due(
                r["delivery_id"],
                r["tenant_id"],
                r["webhook_id"],
                r["url"],
                r["secret"],
                r["event_position"],
                r["attempt_count"],
                r["created_at"],
                r["first_at"],
            )
            task = asyncio.create_task(self._attempt(due), name=f"webhook:{due.delivery_id}")
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._done, key))
        return soonest

    def _done(self, key: tuple[str, str], task: asyncio.Task[None]) -> None:
        self._inflight.pop(key, None)
        if self.wake is not None:
            self.wake.set()  # the subscription's next delivery may be due now

    async def payload(self, position: int) -> bytes | None:
        row = await self.pool.fetchrow(
            "SELECT position, type, data::text AS data, recorded_at FROM events "
            "WHERE position = $1",
            position,
        )
        if row is None:
            return None
        return _JSON.encode(
            {
                "id": f"evt_{row['position']}",
                "type": row["type"],
                "position": row["position"],
                "recorded_at": row["recorded_at"],
                "data": msgspec.Raw(row["data"].encode()),
            }
        )

    async def _attempt(self, due: Due) -> None:
        try:
            await self._attempt_once(due)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database went away mid-attempt: retried on a later step
            log.warning("webhook.attempt_error", delivery=due.delivery_id, error=repr(exc))

    async def _attempt_once(self, due: Due) -> None:
        body = await self.payload(due.event_position)
        started_at = datetime.now(UTC)
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        if body is None:
            error = "event not found"
        else:
            headers = {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign(due.secret, int(time.time()), body),
                "Slotlog-Delivery-Id": str(due.delivery_id),
                "Slotlog-Event-Id": f"evt_{due.event_position}",
            }
            try:
                async with self.client.stream("POST", due.url, content=body, headers=headers) as r:
                    status = r.status_code
            except httpx.TimeoutException:
                error = f"timed out after {self.settings.timeout:g} s"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"[:500]
        ok = status is not None and 200 <= status < 300
        if not ok and error is None:
            error = f"answered HTTP {status}"
        elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
        attempt = {
            "at": started_at.isoformat(),
            "status_code": status,
            "error": error,
            "duration_ms": elapsed_ms,
        }
        first = due.first_attempt_at or started_at
        failures = due.attempt_count + 1
        if ok:
            state, next_at = "delivered", None
        elif (started_at - first).total_seconds() >= self.settings.give_up_after:
            state, next_at = "failed", None  # given up after the retry period
        else:
            state = "pending"
            next_at = datetime.now(UTC) + timedelta(seconds=self.settings.backoff(failures))
        self.attempts += 1
        if self.on_attempt is not None:
            self.on_attempt("delivered" if ok else ("given_up" if state == "failed" else "failed"))
        await self.pool.execute(
            "UPDATE webhook_deliveries SET attempt_count = attempt_count + 1, "
            "attempts = attempts || $2::jsonb, status = $3, "
            "next_attempt_at = coalesce($4, next_attempt_at), "
            "completed_at = CASE WHEN $3 = 'pending' THEN NULL ELSE clock_timestamp() END "
            "WHERE delivery_id = $1 AND status = 'pending'",
            due.delivery_id,
            _JSON.encode([attempt]).decode(),
            state,
            next_at,
        )
        if not ok:
            log.info(
                "webhook.attempt_failed",
                webhook=due.webhook_id,
                delivery=due.delivery_id,
                error=error,
                state=state,
            )
