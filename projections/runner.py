"""The projection runner: tails the log from each asynchronous consumer's checkpoint and applies
events, with the consumer's rows and its checkpoint changed in one transaction.

Exactly once: a batch takes its checkpoint row FOR UPDATE, reads the events after it
(store.read_all, which never skips an event), applies them and moves the checkpoint, all in one
transaction; a crash anywhere rolls back both, and the next leader starts from the committed
checkpoint. The row lock also serialises the runner with `slotlog replay`, which swaps a rebuilt
table in and sets the checkpoint under the same lock (projections/replay.py). One runner per
cluster (service.workers.LeaderWorker holds an advisory lock), but correctness does not rest on
that: two runners would queue on the row lock and the second would find the checkpoint moved.

Wake-ups: LISTEN/NOTIFY is only a hint, polling stays behind it. We deliberately do NOT notify
from a trigger on `events`: a transaction that has issued NOTIFY takes a database-wide lock at
commit and holds it through the commit's WAL flush, so every notifying commit would be serialised
behind the previous one's fsync (factcast/factcast#3911 measured ~500 inserts/s that way). Instead
each API process pokes a `Notifier` after a command commits; it sends at most one NOTIFY per
20 ms from its own short transaction, so commands never wait on the notify queue. Events appended
by other means (scripts, another tool) are picked up by the poll within a second.

Imports the store and the projections, nothing from HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import asyncpg

from projections.stats import StatsProjection
from service import store
from service.logs import log
from service.store import START, Checkpoint, LogEntry
from service.tasks import cancel_and_wait

CHANNEL: Final = "slotlog_events"
LOCK_PROJECTOR: Final = 7320102


class Consumer(Protocol):
    """Anything that applies events in log order inside the caller's transaction. Consumers
    count and route events by tenant and type: they get LogEntry envelopes (store.read_log),
    without the events' data and metadata."""

    name: str

    async def apply(
        self,
        conn: Any,
        events: Sequence[LogEntry],
        *,
        tables: Mapping[str, str] | None = None,
    ) -> None: ...


class AsyncProjection(Consumer, Protocol):
    """A consumer whose rows live in one table that replay can rebuild and swap
    (projections/replay.py)."""

    table: str
    key: tuple[str, ...]

    async def rebuild(
        self, conn: Any, *, table: str, upto: Checkpoint | None
    ) -> tuple[Checkpoint, int]:
        """Fill the empty `table` as applying the log from position 0 would: every event that
        store.read_all returns now, up to and including `upto` if given. Returns the checkpoint
        reached and the number of events it covers."""
        ...


ASYNC_PROJECTIONS: tuple[AsyncProjection, ...] = (StatsProjection(),)


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


# ── checkpoints ──────────────────────────────────────────────────────────────


async def read_checkpoint(db: Any, name: str) -> Checkpoint:
    row = await db.fetchrow(
        "SELECT transaction_id, position FROM projection_checkpoints WHERE name = $1", name
    )
    return Checkpoint(int(row[0]), int(row[1])) if row else START


async def lock_checkpoint(conn: Any, name: str) -> Checkpoint:
    """The consumer's checkpoint, locked until the end of the caller's transaction."""
    sql = "SELECT transaction_id, position FROM projection_checkpoints WHERE name = $1 FOR UPDATE"
    row = await conn.fetchrow(sql, name)
    if row is None:
        await conn.execute(
            "INSERT INTO projection_checkpoints (name) VALUES ($1) ON CONFLICT DO NOTHING", name
        )
        row = await conn.fetchrow(sql, name)
    return Checkpoint(int(row[0]), int(row[1]))


async def save_checkpoint(conn: Any, name: str, checkpoint: Checkpoint) -> None:
    await conn.execute(
        "INSERT INTO projection_checkpoints AS c (name, transaction_id, position, updated_at) "
        "VALUES ($1, $2::bigint::text::xid8, $3, now()) ON CONFLICT (name) DO UPDATE SET "
        "transaction_id = excluded.transaction_id, position = excluded.position, "
        "updated_at = excluded.updated_at",
        name,
        checkpoint.transaction_id,
        checkpoint.position,
    )


#: Whether store.read_log would return anything after the consumer's checkpoint (a row, or
#: none), in one round trip: the log's visible part in its order, as read_log reads it, so that
#: the log's index finds it.
_ANYTHING_NEW = f"""
SELECT 1 FROM events
 WHERE ({store.LOG_ORDER}) > (
           coalesce((SELECT c.transaction_id FROM projection_checkpoints AS c
                      WHERE c.name = $1), '0'),
           coalesce((SELECT c.position FROM projection_checkpoints AS c WHERE c.name = $1), 0))
   AND {store.LOG_VISIBLE}
 ORDER BY {store.LOG_ORDER}
 LIMIT 1
"""


async def run_batch(
    pool: asyncpg.Pool, consumer: Consumer, limit: int, *, apply_delay: float = 0.0
) -> int:
    """Apply the next batch of at most `limit` events; returns how many were applied."""
    if await pool.fetchval(_ANYTHING_NEW, consumer.name) is None:
        return 0  # nothing to do: no transaction, no row lock, no xid
    async with pool.acquire() as conn, conn.transaction():
        checkpoint = await lock_checkpoint(conn, consumer.name)
        events = await store.read_log(conn, checkpoint, limit)
        if not events:
            return 0
        await consumer.apply(conn, events)
        if apply_delay:
            # A testing knob (SLOTLOG_PROJECTOR_APPLY_DELAY): widen the window in which the rows
            # are written but the checkpoint is not, so crash tests can kill us inside it.
            await asyncio.sleep(apply_delay)
        await save_checkpoint(conn, consumer.name, events[-1].checkpoint)
    return len(events)


class ProjectionRunner:
    """The `projector` background worker's step: catch every async projection up to the head."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        consumers: Sequence[Consumer] = ASYNC_PROJECTIONS,
        *,
        batch: int | None = None,
        apply_delay: float | None = None,
    ) -> None:
        self.pool = pool
        self.consumers = consumers
        self.batch = batch or int(env_float("SLOTLOG_PROJECTOR_BATCH", 2000))
        self.apply_delay = (
            apply_delay
            if apply_delay is not None
            else env_float("SLOTLOG_PROJECTOR_APPLY_DELAY", 0.0)
        )
        self.applied = 0

    async def step(self) -> float | None:
        """Apply batches for about half a second; ask to be called again at once if behind."""
        deadline = time.monotonic() + 0.5
        behind = False
        for consumer in self.consumers:
            while True:
                n = await run_batch(self.pool, consumer, self.batch, apply_delay=self.apply_delay)
                self.applied += n
                if n < self.batch:
                    break
                if time.monotonic() > deadline:
                    behind = True
                    break
        return 0.001 if behind else None

    async def catch_up(self) -> int:
        """Run until every consumer has applied every event visible now (tests, CLI)."""
        before = self.applied
        while await self.step() is not None or await self._behind():
            pass
        return self.applied - before

    async def _behind(self) -> bool:
        for consumer in self.consumers:
            if await store.read_log(self.pool, await read_checkpoint(self.pool, consumer.name), 1):
                return True
        return False


# ── lag ──────────────────────────────────────────────────────────────────────


@dataclass(frozen=True, slots=True)
class Lag:
    name: str
    checkpoint: Checkpoint
    events: int
    seconds: float


LAG_COUNT_CAP: Final = 1_000_000


async def lag(db: Any, names: Sequence[str]) -> dict[str, Lag]:
    """How far each consumer is behind the log: committed events after its checkpoint (counted up
    to a million) and the age of the oldest of them."""
    rows = await db.fetch(
        "SELECT n.name, coalesce(c.transaction_id, '0'::xid8) AS transaction_id, "
        "coalesce(c.position, 0) AS position, "
        "(SELECT count(*) FROM (SELECT 1 FROM events e WHERE (e.transaction_id, e.position) > "
        "(coalesce(c.transaction_id, '0'::xid8), coalesce(c.position, 0)) LIMIT $2) AS x) "
        "AS behind, "
        "(SELECT extract(epoch FROM clock_timestamp() - e.recorded_at)::float8 FROM events e "
        "WHERE (e.transaction_id, e.position) > "
        "(coalesce(c.transaction_id, '0'::xid8), coalesce(c.position, 0)) "
        "ORDER BY e.transaction_id, e.position LIMIT 1) AS seconds "
        "FROM unnest($1::text[]) AS n (name) LEFT JOIN projection_checkpoints c USING (name)",
        list(names),
        LAG_COUNT_CAP,
    )
    return {
        r["name"]: Lag(
            r["name"],
            Checkpoint(int(r["transaction_id"]), int(r["position"])),
            int(r["behind"]),
            max(0.0, float(r["seconds"] or 0.0)),
        )
        for r in rows
    }


# ── wake-up hints ────────────────────────────────────────────────────────────


class Notifier:
    """Coalesces 'events were appended' pokes into at most one NOTIFY per `interval` seconds,
    each from its own short transaction (see the module docstring for why not a trigger).

    A lone command's NOTIFY goes out at once; under a steady load the consumers are woken ten
    times a second and take what came meanwhile in one batch. Every wake-up costs each consumer
    its round trips (checkpoint, read, write, commit) whether it brings one event or a hundred:
    at 20 ms these took more of a worker's CPU than the commands' own statements (py-spy)."""

    def __init__(self, pool: asyncpg.Pool, interval: float = 0.1) -> None:
        self.pool = pool
        self.interval = interval
        self._pending = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def poke(self) -> None:
        self._pending.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="notifier")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        while True:
            await self._pending.wait()
            self._pending.clear()
            try:
                await self.pool.execute("SELECT pg_notify($1, '')", CHANNEL, timeout=2)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # only a hint: the pollers will catch up anyway
                log.debug("notifier.failed", error=repr(exc))
            await asyncio.sleep(self.interval)


class Listener:
    """One LISTEN connection per process; every NOTIFY sets the given wake-up events."""

    def __init__(self, url: str, wakes: Sequence[asyncio.Event]) -> None:
        self.url = url
        self.wakes = list(wakes)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="listener")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    def _wake(self, *_: Any) -> None:
        for w in self.wakes:
            w.set()

    async def _run(self) -> None:
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(
                    self.url, server_settings={"application_name": "slotlog:listener"}
                )
                await conn.add_listener(CHANNEL, self._wake)
                self._wake()  # whatever was missed while (re)connecting
                while True:
                    await asyncio.sleep(5)
                    await conn.fetchval("SELECT 1", timeout=5)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("listener.reconnecting", error=repr(exc))
                await asyncio.sleep(1)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(conn.close(timeout=2))
