"""GET /v1/availability: free slots of a service, from the busy-time read model and the pure
slot computation (service/availability.py). Public and secret keys may call it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.api.catalogue import load_service
from service.api.common import (
    authenticate,
    json_response,
    now,
    parse_instant,
    parse_zone,
    pool,
    query_int,
    query_str,
    wait_for_position,
)
from service.api.schemas import AvailabilityByDay, AvailabilityView, DaySlots, SlotView
from service.availability import Busy, Slot, SlotRules, compute_slots
from service.decider import calendar, duration_for, selected_resources, slot_rules
from service.errors import ValidationFailed
from service.openapi import MIN_POSITION, Op, Param

MAX_RANGE = timedelta(days=62)


async def busy_by_resource(
    request: Request, tenant: str, resource_ids: list[str], lo: datetime, hi: datetime
) -> dict[str, list[Busy]]:
    """Active-or-held claims on the resources whose blocked time overlaps [lo, hi) (holds are
    filtered by expiry in the slot computation, at the `now` of this request)."""
    lo, hi = lo.astimezone(UTC), hi.astimezone(UTC)  # day streams are UTC days
    rows = await pool(request).fetch(
        "SELECT DISTINCT ON (resource_id, claim_id) resource_id, start_at, end_at, block_start, "
        "block_end, expires_at FROM rm_busy WHERE tenant_id = $1 AND resource_id = ANY($2::text[]) "
        "AND day BETWEEN $3 AND $4 AND block_start < $6 AND block_end > $5",
        tenant,
        resource_ids,
        lo.date(),
        hi.date(),
        lo,
        hi,
    )
    out: dict[str, list[Busy]] = {r: [] for r in resource_ids}
    for resource_id, start_at, end_at, block_start, block_end, expires_at in rows:
        out[resource_id].append(Busy(start_at, end_at, block_start, block_end, expires_at))
    return out


def busy_range(
    rules: SlotRules, start: datetime, end: datetime, *, counted: bool
) -> tuple[datetime, datetime]:
    """The span whose claims the slots of [start, end) depend on: those whose blocked time
    reaches a candidate's (a candidate starts before `end` and lasts `rules.duration`, buffers
    around it), and, when round robin chooses among several resources by their bookings on the
    candidate's local date (`counted`), those starting within two days of the range."""
    margin = timedelta(days=2) if counted else timedelta(0)
    return (
        start - rules.buffer_before - margin,
        end + rules.duration + rules.buffer_after + margin,
    )


def render_slot(slot: Slot, zone: ZoneInfo) -> SlotView:
    return SlotView(
        start=slot.start.astimezone(zone),
        end=slot.end.astimezone(zone),
        resources=list(slot.resources),
    )


async def get_availability(request: Request) -> Response:
    principal = await authenticate(request, public_ok=True)
    await wait_for_position(request)
    service_id = query_str(request, "service", required=True)
    zone = parse_zone(query_str(request, "timezone"))
    raw_from = query_str(request, "from", required=True)
    raw_to = query_str(request, "to", required=True)
    assert service_id is not None and raw_from is not None and raw_to is not None
    start = parse_instant(raw_from, "from", zone)
    end = parse_instant(raw_to, "to", zone, end_of_day=True)
    if end <= start:
        raise ValidationFailed([("to", "must be after from")])
    # 62 days of the calendar in `timezone`: wall-clock time, so a range across a change of
    # the clocks is not an hour too long.
    if (
        end.astimezone(zone).replace(tzinfo=None) - start.astimezone(zone).replace(tzinfo=None)
        > MAX_RANGE
    ):
        raise ValidationFailed([("to", "the range may span at most 62 days")])
    group_by = query_str(request, "group_by")
    if group_by not in (None, "day"):
        raise ValidationFailed([("group_by", "the only grouping is 'day'")])
    wanted = query_str(request, "resources")
    duration_q = query_int(request, "duration", None, lo=1, hi=1440)

    service, catalogue = await load_service(request, principal.tenant_id, service_id)
    try:
        duration = duration_for(service, duration_q)
    except ValidationFailed as exc:  # the decider names the body's field; here it is a query's
        raise ValidationFailed(
            [("duration", e["message"]) for e in exc.details["errors"]]
        ) from None
    if wanted:
        try:
            chosen = selected_resources(service, wanted.split(","))
        except ValidationFailed as exc:
            raise ValidationFailed(
                [(e["path"], e["message"]) for e in exc.details["errors"]]
            ) from None
    else:
        chosen = sorted(service.resources)
    rules = slot_rules(service, duration)
    counted = service.assignment == "any" and len(chosen) > 1
    lo, hi = busy_range(rules, start, end, counted=counted)
    busy = await busy_by_resource(request, principal.tenant_id, chosen, lo, hi)
    calendars = [calendar(catalogue[r], busy[r]) for r in chosen if r in catalogue]
    if service.assignment == "all" and len(calendars) < len(chosen):
        calendars = []
    slots = compute_slots(calendars, rules, start, end, now(), service.assignment)
    if group_by == "day":
        days: dict[str, list[SlotView]] = {}
        for slot in slots:
            day = slot.start.astimezone(zone).date().isoformat()
            days.setdefault(day, []).append(render_slot(slot, zone))
        return json_response(
            AvailabilityByDay(
                service=service_id,
                timezone=str(zone),
                days=[DaySlots(date=d, slots=s) for d, s in days.items()],
            )
        )
    return json_response(
        AvailabilityView(
            service=service_id, timezone=str(zone), data=[render_slot(s, zone) for s in slots]
        )
    )


routes = [Route("/v1/availability", get_availability, methods=["GET"])]

__all__ = ["UTC", "routes"]


operations = [
    Op(
        "GET",
        "/v1/availability",
        "Free slots of a service; ?group_by=day answers AvailabilityByDay",
        key="pk",
        params=[
            Param("service", required=True),
            Param("from", required=True, description="RFC 3339 with offset, or YYYY-MM-DD"),
            Param("to", required=True, description="RFC 3339 with offset, or YYYY-MM-DD"),
            Param("timezone", description="IANA zone the slots are shown in (default UTC)"),
            Param("resources", description="comma-separated ids narrowing the pool"),
            Param("duration", {"type": "integer", "minimum": 1, "maximum": 1440}),
            Param("group_by", {"type": "string", "enum": ["day"]}),
            MIN_POSITION,
        ],
        responses={200: (AvailabilityView, AvailabilityByDay)},
        errors=[404, 422],
    )
]
