"""Fast seeding of confirmed slot bookings: the events a confirmed hold writes (SlotHeld and
BookingConfirmed in the booking's stream, TimeClaimed in the resource's day stream), appended in
bulk through `service.store.append` (many bookings per call, whole days at a time) and, when
asked, their read-model rows written by `projections.engine.write_streams` in the same
transaction, exactly as the command shell would have written them one booking at a time.

Days are seeded whole so that each day stream is created by one append (NO_STREAM) and its
read-model rows are folded from all of its events.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import asyncpg
import msgspec

from projections.engine import write_streams
from service import store, streams
from service.decider import claim
from service.events import (
    BookingConfirmed,
    BookingPolicy,
    Customer,
    Event,
    EventMeta,
    SlotHeld,
    encode,
    type_name,
)
from service.store import AppendStream, RecordedEvent

POLICY = BookingPolicy(hold_seconds=600)
EVENT_COLUMNS = ("stream_id", "version", "tenant_id", "type", "data", "metadata")


@dataclass(frozen=True, slots=True)
class Plan:
    """`days[d]` bookings of `minutes` each on `resource_id` on each day d, spread evenly from
    midnight UTC."""

    tenant: str
    resource_id: str
    service_id: str
    days: Mapping[date, int]
    minutes: int = 10
    read_models: bool = True


def _day_appends(plan: Plan, day: date, serial: int) -> list[AppendStream]:
    """The streams of one day's bookings: one booking stream each, one day stream."""
    n = plan.days[day]
    if n == 0:
        return []
    spacing = 1440 // n
    if spacing < plan.minutes:
        raise ValueError(f"{n} bookings of {plan.minutes} min do not fit in a day")
    midnight = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
    held_at = midnight - timedelta(days=30)
    out: list[AppendStream] = []
    day_events: dict[str, list[Event]] = {}
    for k in range(n):
        booking_id = f"bk_seed_{plan.resource_id}_{serial}_{k}"
        start = midnight + timedelta(minutes=k * spacing)
        end = start + timedelta(minutes=plan.minutes)
        customer = Customer(name=f"Seed customer {k}", email=f"seed{k}@example.com")
        held = SlotHeld(
            booking_id=booking_id,
            service_id=plan.service_id,
            resources=[plan.resource_id],
            start=start,
            end=end,
            expires_at=held_at + timedelta(seconds=POLICY.hold_seconds),
            policy=POLICY,
            customer=customer,
        )
        confirmed = BookingConfirmed(booking_id=booking_id)
        stream = streams.booking(plan.tenant, booking_id)
        out.append(AppendStream(stream, store.NO_STREAM, [held, confirmed]))
        for day_stream, events in claim(
            plan.tenant, booking_id, [plan.resource_id], start, end, POLICY, None
        ).items():
            day_events.setdefault(day_stream, []).extend(events)
    out += [AppendStream(s, store.NO_STREAM, events) for s, events in day_events.items()]
    return out


async def _write(
    conn: asyncpg.Connection, batch: list[AppendStream], meta: EventMeta, read_models: bool
) -> int:
    async with conn.transaction():
        appended = await store.append(conn, batch, meta)
        if read_models:
            at = {(a.stream_id, a.version): a for a in appended}
            recorded: dict[str, list[RecordedEvent]] = {}
            for s in batch:
                for version, event in enumerate(s.events, 1):
                    a = at[(s.stream_id, version)]
                    recorded.setdefault(s.stream_id, []).append(
                        RecordedEvent(
                            position=a.position,
                            transaction_id=0,
                            stream_id=s.stream_id,
                            version=version,
                            tenant_id=meta.tenant,
                            event=event,  # type: ignore[arg-type]
                            metadata=meta,
                            recorded_at=a.recorded_at,
                        )
                    )
            await write_streams(conn, recorded)
    return len(appended)


async def _copy(conn: asyncpg.Connection, batch: list[AppendStream], meta: EventMeta) -> int:
    """The same rows `store.append` would write, by COPY: the events (position, transaction id
    and time from the table's defaults). Only for new streams; the immutability triggers stay on
    (COPY only inserts)."""
    meta_json = msgspec.json.encode(meta).decode()
    records = [
        (s.stream_id, version, meta.tenant, type_name(e), encode(e), meta_json)
        for s in batch
        for version, e in enumerate(s.events, 1)
    ]
    await conn.copy_records_to_table("events", records=records, columns=EVENT_COLUMNS)
    return len(records)


async def seed(
    url: str,
    plans: Sequence[Plan],
    *,
    batch_bookings: int = 100,
    connections: int = 2,
    copy: bool = False,
    progress: Callable[[int], None] | None = None,
) -> tuple[int, float]:
    """Seed every plan; returns (events written, seconds). Batches of about `batch_bookings`
    bookings (whole days) run on `connections` connections at once: through `store.append`, or
    with `copy` by COPY (faster, for plans without read models)."""
    if copy and any(p.read_models for p in plans):
        raise ValueError("COPY seeding writes no read models")
    jobs: list[tuple[Plan, list[date]]] = []
    for plan in plans:
        chunk: list[date] = []
        size = 0
        for day, n in plan.days.items():
            chunk.append(day)
            size += n
            if size >= batch_bookings:
                jobs.append((plan, chunk))
                chunk, size = [], 0
        if chunk:
            jobs.append((plan, chunk))
    queue = iter(enumerate(jobs))
    total = 0
    started = time.perf_counter()

    async def worker() -> None:
        nonlocal total
        conn = await asyncpg.connect(url)
        try:
            for serial, (plan, days) in queue:
                batch = [
                    s
                    for i, day in enumerate(days)
                    for s in _day_appends(plan, day, serial * 1000 + i)
                ]
                meta = EventMeta(tenant=plan.tenant, actor="key_bench_seed")
                if copy:
                    n = await _copy(conn, batch, meta)
                else:
                    n = await _write(conn, batch, meta, plan.read_models)
                total += n
                if progress is not None:
                    progress(n)
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    conn = await asyncpg.connect(url)
    try:
        # Fresh statistics, as after any bulk load: without them the planner assumes 1/200 of
        # `events` per stream id and may pick parallel scans for one stream's read. And the
        # seeded rows at rest, as a log's older rows are: vacuumed (hint bits set, pages
        # all-visible) and checkpointed. Otherwise the first scenario to read them pays for that
        # work in the middle of its measurement: the replay bar's first bare read set the hint
        # bits and the checkpointer wrote those pages out during the replay (its fold ran 5.2-5.7
        # s against 4.6-4.8 s on rows at rest, while the bare read was the same either way).
        await conn.execute("VACUUM ANALYZE")
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):  # superusers only
            await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
    return total, time.perf_counter() - started
