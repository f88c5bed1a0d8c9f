"""GET /v1/events: the audit feed, the tenant's events in global log order with an opaque cursor.

The order and the cursor are the store's (`read_all`): (transaction_id, position), never skipping
an event, so a client that keeps passing `next` back as `after` sees every event exactly once. The
feed only shows events of transactions that ended before every transaction still running (the
snapshot guard), so it can trail the newest commits by the age of the oldest open transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service import store
from service.api.common import (
    BIGINT_MAX,
    authenticate,
    digits,
    json_response,
    pool,
    query_int,
    query_str,
    wait_for_position,
)
from service.api.schemas import View
from service.errors import ValidationFailed
from service.openapi import MIN_POSITION, Op, Param
from service.store import START, Checkpoint, RecordedEvent


class EventEntry(View, kw_only=True):
    position: int
    stream: str
    version: int
    type: str
    data: dict[str, Any]
    metadata: dict[str, Any]
    recorded_at: datetime


class EventPage(View, kw_only=True):
    events: list[EventEntry]
    #: Pass back as `after` to continue; an empty page means the feed is caught up.
    next: str | None


def entry(e: RecordedEvent) -> EventEntry:
    meta = msgspec.to_builtins(e.metadata)
    meta.pop("tenant", None)
    return EventEntry(
        position=e.position,
        stream=e.stream_id.split(":", 1)[1],
        version=e.version,
        type=e.type,
        data=msgspec.to_builtins(e.event),
        metadata=meta,
        recorded_at=e.recorded_at,
    )


async def parse_after(request: Request, tenant: str) -> Checkpoint:
    """`after`: a page's `next`, or the position of one of the tenant's events (the events after
    it in log order follow; 0 is the start)."""
    raw = query_str(request, "after")
    if raw is None:
        return START
    position = digits(raw)
    if position is not None:
        if position == 0:
            return START
        tx = None
        if position <= BIGINT_MAX:
            tx = await pool(request).fetchval(
                "SELECT transaction_id FROM events WHERE position = $1 AND tenant_id = $2",
                position,
                tenant,
            )
        if tx is None:  # another tenant's event answers the same: nothing of theirs shows
            raise ValidationFailed([("after", f"no event of this tenant at position {position}")])
        return Checkpoint(int(tx), position)
    try:
        return Checkpoint.parse(raw)
    except ValueError:
        raise ValidationFailed(
            [
                (
                    "after",
                    "invalid cursor; pass back the `next` of a previous page unchanged, "
                    "or an event's position",
                )
            ]
        ) from None


async def list_events(request: Request) -> Response:
    principal = await authenticate(request)
    await wait_for_position(request, feed=True)
    after = await parse_after(request, principal.tenant_id)
    limit = query_int(request, "limit", 100, lo=1, hi=1000)
    assert limit is not None
    events = await store.read_all(pool(request), after, limit, tenant=principal.tenant_id)
    last = events[-1].checkpoint if events else (after if after != START else None)
    page = EventPage(events=[entry(e) for e in events], next=last.encode() if last else None)
    return json_response(page)


routes = [Route("/v1/events", list_events, methods=["GET"])]

operations = [
    Op(
        "GET",
        "/v1/events",
        "The tenant's events in global order (audit feed)",
        params=[
            Param(
                "after",
                description=(
                    "the `next` of the previous page, or the position of one of the tenant's "
                    "events (0: from the start)"
                ),
            ),
            Param("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
            MIN_POSITION,
        ],
        responses={200: EventPage},
        errors=[422],
    )
]
