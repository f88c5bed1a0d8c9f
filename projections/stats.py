"""`stats`: per-tenant event counters, an asynchronous projection run by projections/runner.py.

Unlike the inline read models (projections/readmodels.py: each row a fold of one stream, rewritten
whole), this one is genuinely incremental: every batch adds `n` to `events` and to the per-type
counters. Applying an event twice or losing one would therefore show, which is what makes it the
proof of the runner's exactly-once bookkeeping (rows and checkpoint in one transaction). Replay
rebuilds it by applying the whole log from position 0 in the same (transaction_id, position) order.

No HTTP here; imports only the store's types.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import msgspec

_JSON = msgspec.json.Encoder()


@dataclass(slots=True)
class _TenantBatch:
    events: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    last_position: int = 0
    last_recorded_at: datetime | None = None


class Logged(Protocol):
    """What this projection reads of an event (a RecordedEvent, or replay's light entry)."""

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
    needs_event_data: bool = False

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
        table = (tables or {}).get(self.table, self.table)
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
