"""`stats`: per-tenant event counters, an asynchronous projection run by projections/runner.py.

Unlike the inline read models (projections/readmodels.py: each row a fold of one stream, rewritten
whole), this one is genuinely incremental: every batch adds `n` to `events` and to the per-type
counters. Applying an event twice or losing one would therefore show, which is what makes it the
proof of the runner's exactly-once bookkeeping (rows and checkpoint in one transaction). Replay
rebuilds it from position 0 with `rebuild`: the same counters, summed by PostgreSQL in one aggregate
over the events `store.read_all` would return, and written by the statement `apply` uses.

No HTTP here; imports only the store's types.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import msgspec

from service.store import START, Checkpoint

_JSON = msgspec.json.Encoder()


@dataclass(slots=True)
class _TenantBatch:
    events: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    last_position: int = 0
    last_recorded_at: datetime | None = None


class Logged(Protocol):
    """What this projection reads of an event (a store.RecordedEvent)."""

    @property
    def tenant_id(self) -> str: ...

    @property
    def type(self) -> str: ...

    @property
    def position(self) -> int: ...

    @property
    def recorded_at(self) -> datetime: ...


class StatsProjection:
    """rm_tenant_stats(tenant_id, events, by_type, last_position, last_recorded_at)."""

    name: str = "stats"
    table: str = "rm_tenant_stats"
    key: tuple[str, ...] = ("tenant_id",)

    async def apply(
        self,
        conn: Any,
        events: Sequence[Logged],
        *,
        tables: Mapping[str, str] | None = None,
    ) -> None:
        """Add `events` (in log order) to the counters, in one statement."""
        if not events:
            return
        batches: dict[str, _TenantBatch] = {}
        for rec in events:
            b = batches.setdefault(rec.tenant_id, _TenantBatch())
            b.events += 1
            b.by_type[rec.type] += 1
            b.last_position = rec.position
            b.last_recorded_at = rec.recorded_at
        await self._add(conn, (tables or {}).get(self.table, self.table), batches)

    async def rebuild(
        self, conn: Any, *, table: str, upto: Checkpoint | None
    ) -> tuple[Checkpoint, int]:
        """Fill the empty `table` from position 0: what `apply` would make of every event that
        store.read_all returns now (those of transactions that ended before every transaction still
        running), up to and including `upto` if given. The counters are sums, so PostgreSQL counts
        them in one aggregate rather than this process adding every event; each tenant's last
        event in log order gives its last_position and last_recorded_at. One REPEATABLE READ
        snapshot; returns the checkpoint reached (the last event counted) and the events counted."""
        async with conn.transaction(isolation="repeatable_read"):
            xmin = await conn.fetchval("SELECT pg_snapshot_xmin(pg_current_snapshot())")
            where = "transaction_id < $1::xid8"
            args: list[Any] = [xmin]
            if upto is not None:
                where += " AND (transaction_id, position) <= ($2::xid8, $3)"
                args += [upto.transaction_id, upto.position]
            counts = await conn.fetch(
                f"SELECT tenant_id, type, count(*) FROM events WHERE {where} GROUP BY 1, 2", *args
            )
            batches: dict[str, _TenantBatch] = {}
            for tenant, type_, n in counts:
                b = batches.setdefault(tenant, _TenantBatch())
                b.events += n
                b.by_type[type_] += n
            lasts = await conn.fetch(
                "SELECT t.tenant_id, e.transaction_id, e.position, e.recorded_at "
                f"FROM unnest(${len(args) + 1}::text[]) AS t (tenant_id) CROSS JOIN LATERAL "
                f"(SELECT transaction_id, position, recorded_at FROM events WHERE {where} "
                "AND tenant_id = t.tenant_id ORDER BY transaction_id DESC, position DESC "
                "LIMIT 1) AS e",
                *args,
                list(batches),
            )
            reached = START
            for tenant, tx, position, at in lasts:
                b = batches[tenant]
                b.last_position, b.last_recorded_at = position, at
                reached = max(reached, Checkpoint(int(tx), int(position)))
            await self._add(conn, table, batches)
        return reached, sum(b.events for b in batches.values())

    @staticmethod
    async def _add(conn: Any, table: str, batches: Mapping[str, _TenantBatch]) -> None:
        if not batches:
            return
        tenants = sorted(batches)
        await conn.execute(
            f"INSERT INTO {table} AS s "
            "(tenant_id, events, by_type, last_position, last_recorded_at) "
            "SELECT * FROM unnest($1::text[], $2::bigint[], $3::jsonb[], $4::bigint[], "
            "$5::timestamptz[]) "
            "ON CONFLICT (tenant_id) DO UPDATE SET "
            "events = s.events + excluded.events, "
            "by_type = slotlog_add_counts(s.by_type, excluded.by_type), "
            "last_position = excluded.last_position, "
            "last_recorded_at = excluded.last_recorded_at",
            tenants,
            [batches[t].events for t in tenants],
            [_JSON.encode(dict(sorted(batches[t].by_type.items()))).decode() for t in tenants],
            [batches[t].last_position for t in tenants],
            [batches[t].last_recorded_at for t in tenants],
        )
