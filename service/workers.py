"""Background workers, exactly one of each per cluster.

Each worker holds a session-level PostgreSQL advisory lock on a dedicated connection while it
runs; every process tries to take it, and the one that does works until its connection (or
process) dies, which releases the lock so another process takes over within `retry` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Final

import asyncpg

from service.commands import ExpireHold
from service.events import EventMeta
from service.handler import Commands
from service.logs import log
from service.tasks import cancel_and_wait
from service.usecases import booking_decision

LOCK_EXPIRER: Final = 7320101


class LeaderWorker:
    """Runs `step` every `interval` seconds while holding advisory lock `key`."""

    def __init__(
        self,
        name: str,
        url: str,
        key: int,
        step: Callable[[], Awaitable[float | None]],
        *,
        interval: float = 1.0,
        retry: float = 2.0,
    ) -> None:
        self.name = name
        self.url = url
        self.key = key
        self.step = step
        self.interval = interval
        self.retry = retry
        self.leading = False
        self._task: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"worker:{self.name}")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(
                    self.url, server_settings={"application_name": f"slotlog:{self.name}"}
                )
                while True:
                    if await conn.fetchval("SELECT pg_try_advisory_lock($1)", self.key):
                        break
                    await asyncio.sleep(self.retry)
                self.leading = True
                log.info("worker.leading", worker=self.name)
                checked = 0.0
                while True:
                    # The lock lives as long as this connection: prove it is still alive, once
                    # per interval (not on every wake-up: under load that is many per second).
                    if time.monotonic() - checked >= self.interval:
                        await conn.fetchval("SELECT 1", timeout=5)
                        checked = time.monotonic()
                    pause = await self.step()
                    # asyncio.timeout, not wait_for: Python 3.11's wait_for returns the wake-up
                    # when it comes in the same turn of the loop as a cancellation, which is then
                    # lost, and a worker with work left never stopped.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(pause or self.interval):
                            await self.wake.wait()
                    self.wake.clear()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a lost database must not kill the worker
                log.warning("worker.error", worker=self.name, error=repr(exc))
                await asyncio.sleep(self.retry)
            finally:
                self.leading = False
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(conn.close(timeout=2))


#: A hold whose expiry failed is tried again after this many seconds, doubling up to the last,
#: so that holds that keep failing (a stream the row has no events for, say) are not the oldest
#: `batch` of every step, holding back the expiry of everyone else's.
RETRY_FAILED: Final = (1.0, 60.0)


class HoldExpirer:
    """Writes HoldExpired for holds past their expiry (they already block nothing)."""

    def __init__(self, pool: asyncpg.Pool, commands: Commands, batch: int = 200) -> None:
        self.pool = pool
        self.commands = commands
        self.batch = batch
        self.expired = 0
        # (tenant, booking) -> (when to try again, on time.monotonic(); the last wait)
        self.failing: dict[tuple[str, str], tuple[float, float]] = {}

    async def step(self) -> float | None:
        now, clock = datetime.now(UTC), time.monotonic()
        waiting = {key for key, (again, _) in self.failing.items() if again > clock}
        rows = await self.pool.fetch(
            "SELECT tenant_id, booking_id FROM rm_bookings WHERE status = 'held' "
            "AND expires_at <= $1 ORDER BY expires_at LIMIT $2",
            now,
            self.batch + len(waiting),
        )
        due = [r for r in rows if (r["tenant_id"], r["booking_id"]) not in waiting][: self.batch]
        expired = 0
        for row in due:
            key = (row["tenant_id"], row["booking_id"])
            cmd = ExpireHold(tenant=key[0], now=now, booking_id=key[1])
            meta = EventMeta(tenant=key[0], actor="system:hold-expirer")
            try:
                await self.commands.run(meta, booking_decision(cmd))
            except Exception as exc:
                last = self.failing.get(key, (0.0, RETRY_FAILED[0] / 2))[1]
                wait = min(last * 2, RETRY_FAILED[1])
                self.failing[key] = (time.monotonic() + wait, wait)
                log.warning("expirer.failed", booking=key[1], error=repr(exc), retry_in=wait)
                continue
            self.failing.pop(key, None)
            expired += 1
        self.expired += expired
        if len(self.failing) > 10 * self.batch:  # holds expired elsewhere meanwhile: forget
            self.failing = {k: v for k, v in self.failing.items() if v[0] > time.monotonic()}
        return 0.05 if len(due) == self.batch and expired else None
