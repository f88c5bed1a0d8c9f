"""Bookings: hold (POST /v1/bookings), seats (POST /v1/sessions/{id}/bookings), the lifecycle
commands, reads, the cursor-paginated list and the audit history."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from projections.readmodels import booking_from_row
from service import store, streams
from service.api.common import (
    TimeOrderedQuery,
    authenticate,
    encode_json,
    idempotency,
    if_match,
    in_utc_and_bounds,
    json_body,
    json_response,
    meta,
    new_id,
    now,
    pool,
    query_str,
    run_command,
    wait_for_position,
)
from service.api.schemas import BookingPage, BookingView, HistoryEntry, HistoryView
from service.batching import HoldBatcher, SeatBatcher
from service.catalogue import ID_PATTERN, check_metadata
from service.commands import (
    AddSeats,
    ApproveBooking,
    BookingCommand,
    CancelBooking,
    ConfirmBooking,
    ExtendHold,
    HoldSlot,
    RejectBooking,
    RescheduleBooking,
)
from service.decider import (
    Booking,
)
from service.errors import NotFound, ValidationFailed
from service.events import Customer
from service.handler import Done
from service.openapi import CURSOR, IDEMPOTENCY, IF_MATCH, LIMIT, MIN_POSITION, Op, Param
from service.store import RecordedEvent
from service.usecases import booking_after, booking_decision, hold_decision, seats_decision

ClientId = Annotated[str, Meta(pattern=ID_PATTERN)]
Text = Annotated[str, Meta(max_length=2000)]
Reason = Annotated[str, Meta(max_length=2000)]


class Body(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class HoldBody(Body, kw_only=True):
    service: ClientId
    start: datetime
    duration_minutes: Annotated[int, Meta(ge=1, le=1440)] | None = None
    resources: Annotated[list[ClientId], Meta(min_length=1, max_length=100)] | None = None
    customer: Customer | None = None
    notes: Text | None = None
    metadata: dict[str, Any] = {}
    confirm: bool = False


class SeatsBody(Body, kw_only=True):
    # Both required (SPEC 3: `{seats: 1.., customer, confirm?}`).
    seats: Annotated[int, Meta(ge=1, le=10_000)]
    customer: Customer
    notes: Text | None = None
    metadata: dict[str, Any] = {}
    confirm: bool = False


class ConfirmBody(Body, kw_only=True):
    customer: Customer | None = None


class ReasonBody(Body, kw_only=True):
    reason: Reason | None = None


class CancelBody(Body, kw_only=True):
    reason: Reason | None = None
    # Required (SPEC 3): defaulting to the owner let a client that left it out cancel inside
    # the customer's cancel window.
    by: Literal["customer", "owner"]


class RescheduleBody(Body, kw_only=True):
    start: datetime
    duration_minutes: Annotated[int, Meta(ge=1, le=1440)] | None = None
    by: Literal["customer", "owner"] = "owner"


class ExtendBody(Body, kw_only=True):
    seconds: Annotated[int, Meta(ge=1)]


def aware(value: datetime, path: str) -> datetime:
    """A client timestamp must carry an offset; it is kept (and answered) in UTC."""
    if value.tzinfo is None:
        raise ValidationFailed([(path, "the timestamp needs a UTC offset (RFC 3339)")])
    return in_utc_and_bounds(value, path)


def check_customer(customer: Customer | None) -> list[tuple[str, str]]:
    if customer is not None and customer.metadata is not None:
        return check_metadata(customer.metadata, "customer.metadata")
    return []


# ── views ────────────────────────────────────────────────────────────────────


def booking_view(b: Booking, at: datetime) -> BookingView:
    ended = b.status in ("cancelled", "rejected")
    return BookingView(
        id=b.id,
        kind=b.kind,
        status=b.effective_status(at),
        service=b.service_id,
        session=b.session_id,
        resources=b.resources,
        start=b.start,
        end=b.end,
        seats=b.seats,
        customer=b.customer,
        notes=b.notes,
        metadata=b.metadata,
        # Kept once the hold has lapsed, before HoldExpired is written and after alike.
        expires_at=b.expires_at if b.status in ("held", "expired") else None,
        version=b.version,
        position=b.position,
        created_at=b.created_at,
        updated_at=b.updated_at,
        cancelled_by=b.cancelled_by if ended else None,  # type: ignore[arg-type]
        reason=b.reason,
    )


def command_view(done: Done, stream_id: str, at: datetime) -> BookingView:
    """A command's answer: the booking as it left it, with the position of the command's last
    event (SPEC 3), which may be a claim in a day stream written after the booking's own; the
    booking's own when the command wrote nothing."""
    view = booking_view(booking_after(done, stream_id), at)
    if done.position:
        view = msgspec.structs.replace(view, position=done.position)
    return view


def created(stream_id: str, at: datetime) -> Any:
    def render(done: Done) -> tuple[int, bytes]:
        return 201, encode_json(command_view(done, stream_id, at))

    return render


# ── hold and seats ───────────────────────────────────────────────────────────


async def post_booking(request: Request) -> Response:
    principal = await authenticate(request)
    body = await json_body(request, HoldBody)
    errors = check_customer(body.customer) + check_metadata(body.metadata)
    if errors:
        raise ValidationFailed(errors)
    tenant, at = principal.tenant_id, now()
    cmd = HoldSlot(
        tenant=tenant,
        now=at,
        booking_id=new_id("bk"),
        service_id=body.service,
        start=aware(body.start, "start"),
        duration_minutes=body.duration_minutes,
        resources=body.resources,
        customer=body.customer,
        notes=body.notes,
        metadata=body.metadata,
        confirm=body.confirm,
    )
    own = streams.booking(tenant, cmd.booking_id)
    if idempotency(request) is not None:
        decide = hold_decision(cmd)
        return await run_command(request, principal, decide, created(own, at), recall=True)
    # Without an Idempotency-Key, concurrent holds of a tenant share commits (group commit).
    batcher: HoldBatcher = request.app.state.hold_batcher
    done = await batcher.submit(cmd, meta(request, principal))
    status, body = created(own, at)(done)
    return Response(body, status, media_type="application/json")


async def post_seats(request: Request) -> Response:
    principal = await authenticate(request)
    body = await json_body(request, SeatsBody)
    errors = check_customer(body.customer) + check_metadata(body.metadata)
    if errors:
        raise ValidationFailed(errors)
    tenant, at = principal.tenant_id, now()
    session_id = request.path_params["id"]
    cmd = AddSeats(
        tenant=tenant,
        now=at,
        booking_id=new_id("bk"),
        session_id=session_id,
        seats=body.seats,
        customer=body.customer,
        notes=body.notes,
        metadata=body.metadata,
        confirm=body.confirm,
    )
    own = streams.booking(tenant, cmd.booking_id)
    decide = seats_decision(cmd)
    if idempotency(request) is not None:
        return await run_command(request, principal, decide, created(own, at))
    # Without an Idempotency-Key, seat bookings of one session share commits (group commit).
    batcher: SeatBatcher = request.app.state.seat_batcher
    done = await batcher.submit(cmd, meta(request, principal))
    status, body = created(own, at)(done)
    return Response(body, status, media_type="application/json")


# ── lifecycle commands ───────────────────────────────────────────────────────


async def _booking_command(request: Request, principal: Any, cmd: BookingCommand) -> Response:
    own = streams.booking(cmd.tenant, cmd.booking_id)
    decide = booking_decision(cmd, if_match(request))

    def render(done: Done) -> tuple[int, bytes]:
        return 200, encode_json(command_view(done, own, cmd.now))

    return await run_command(request, principal, decide, render, recall=True)


async def confirm(request: Request) -> Response:
    principal = await authenticate(request)
    body = await json_body(request, ConfirmBody, allow_empty=True)
    cmd = ConfirmBooking(
        tenant=principal.tenant_id,
        now=now(),
        booking_id=request.path_params["id"],
        customer=body.customer,
    )
    return await _booking_command(request, principal, cmd)


async def approve(request: Request) -> Response:
    principal = await authenticate(request)
    body = await json_body(request, ReasonBody, allow_empty=True)
    cmd = ApproveBooking(
        tenant=principal.tenant_id,
        now=now(),
        booking_id=request.path_params["id"],
        reason=body.reason,
    )
    return await _booking_command(request, principal, cmd)


async def reject(request: Request) -> Response:
    principal = await authenticate(request)
    body = await json_body(request, ReasonBody, allow_empty=True)
    cmd = RejectBooking(
        tenant=principal.tenant_id,
        now=now(),
        booking_id=request.path_params["id"],
        reason=body.reason,
    )
    return await _booking_command(request, principal, cmd)


async def cancel(request: Request) -> Response:
    principal = await authenticate(request)
    body = await json_body(request, CancelBody)
    cmd = CancelBooking(
        tenant=principal.tenant_id,
        now=now(),
        booking_id=request.path_params["id"],
        by=body.by,
        reason=body.reason,
    )
    return await _booking_command(request, principal, cmd)


async def reschedule(request: Request) -> Response:
    principal = await authenticate(request)
    body = await json_body(request, RescheduleBody)
    cmd = RescheduleBooking(
        tenant=principal.tenant_id,
        now=now(),
        booking_id=request.path_params["id"],
        start=aware(body.start, "start"),
        duration_minutes=body.duration_minutes,
        by=body.by,
    )
    return await _booking_command(request, principal, cmd)


async def extend(request: Request) -> Response:
    principal = await authenticate(request)
    body = await json_body(request, ExtendBody)
    cmd = ExtendHold(
        tenant=principal.tenant_id,
        now=now(),
        booking_id=request.path_params["id"],
        seconds=body.seconds,
    )
    return await _booking_command(request, principal, cmd)


# ── reads ────────────────────────────────────────────────────────────────────


#: The rm_bookings columns booking_from_row needs.
BOOKING_COLUMNS = (
    "booking_id, kind, status, service_id, session_id, resources, start_at, end_at, "
    "expires_at, seats, state, version, position, created_at, updated_at"
)


async def get_booking(request: Request) -> Response:
    principal = await authenticate(request)
    await wait_for_position(request)
    row = await pool(request).fetchrow(
        f"SELECT {BOOKING_COLUMNS} FROM rm_bookings WHERE tenant_id = $1 AND booking_id = $2",
        principal.tenant_id,
        request.path_params["id"],
    )
    if row is None:
        raise NotFound(f"booking {request.path_params['id']!r} does not exist")
    b = booking_from_row(row)
    return json_response(booking_view(b, now()), headers={"ETag": f'"{b.version}"'})


STATUSES = ("held", "pending", "confirmed", "cancelled", "rejected", "expired")


async def list_bookings(request: Request) -> Response:
    principal = await authenticate(request)
    await wait_for_position(request)
    at = now()
    q = TimeOrderedQuery(request, principal.tenant_id, "booking_id")
    if (resource := query_str(request, "resource")) is not None:
        q.add(f"{q.arg(resource)} = ANY(resources)")
    if (service := query_str(request, "service")) is not None:
        q.add(f"service_id = {q.arg(service)}")
    if (session := query_str(request, "session")) is not None:
        q.add(f"session_id = {q.arg(session)}")
    if (status := query_str(request, "status")) is not None:
        if status not in STATUSES:
            raise ValidationFailed([("status", f"must be one of {', '.join(STATUSES)}")])
        if status == "held":
            q.add(f"status = 'held' AND expires_at > {q.arg(at)}")
        elif status == "expired":
            q.add(f"(status = 'expired' OR (status = 'held' AND expires_at <= {q.arg(at)}))")
        else:
            q.add(f"status = {q.arg(status)}")
    page, next_cursor = await q.page("rm_bookings", BOOKING_COLUMNS)
    data = [booking_view(booking_from_row(r), at) for r in page]
    return json_response(BookingPage(data=data, next_cursor=next_cursor))


def history_entry(e: RecordedEvent) -> HistoryEntry:
    data = msgspec.to_builtins(e.event)
    data.pop("type", None)
    return HistoryEntry(
        position=e.position,
        version=e.version,
        type=e.type,
        data=data,
        recorded_at=e.recorded_at,
        actor=e.metadata.actor,
        reason=data.get("reason") or data.get("message") or e.metadata.reason,
        request_id=e.metadata.request_id,
    )


async def get_history(request: Request) -> Response:
    principal = await authenticate(request)
    await wait_for_position(request)
    booking_id = request.path_params["id"]
    events = await store.read_stream(
        pool(request), streams.booking(principal.tenant_id, booking_id)
    )
    if not events:
        raise NotFound(f"booking {booking_id!r} does not exist")
    return json_response(
        HistoryView(booking_id=booking_id, events=[history_entry(e) for e in events])
    )


routes = [
    Route("/v1/bookings", post_booking, methods=["POST"]),
    Route("/v1/bookings", list_bookings, methods=["GET"]),
    Route("/v1/bookings/{id}", get_booking, methods=["GET"]),
    Route("/v1/bookings/{id}/history", get_history, methods=["GET"]),
    Route("/v1/bookings/{id}/confirm", confirm, methods=["POST"]),
    Route("/v1/bookings/{id}/approve", approve, methods=["POST"]),
    Route("/v1/bookings/{id}/reject", reject, methods=["POST"]),
    Route("/v1/bookings/{id}/cancel", cancel, methods=["POST"]),
    Route("/v1/bookings/{id}/reschedule", reschedule, methods=["POST"]),
    Route("/v1/bookings/{id}/extend", extend, methods=["POST"]),
    Route("/v1/sessions/{id}/bookings", post_seats, methods=["POST"]),
]


_CMD = [IDEMPOTENCY, IF_MATCH]
_CONFLICTS = [404, 409, 412, 422]
operations = [
    Op(
        "POST",
        "/v1/bookings",
        "Hold a slot (or book it at once with confirm: true)",
        body=HoldBody,
        responses={201: BookingView},
        params=[IDEMPOTENCY],
        errors=[404, 409],
    ),
    Op(
        "GET",
        "/v1/bookings",
        "List bookings",
        params=[
            Param("resource"),
            Param("service"),
            Param("session"),
            Param("status", {"type": "string", "enum": list(STATUSES)}),
            Param("from"),
            Param("to"),
            LIMIT,
            CURSOR,
            MIN_POSITION,
        ],
        responses={200: BookingPage},
        errors=[422],
    ),
    Op(
        "GET",
        "/v1/bookings/{id}",
        "Read a booking (ETag: its version)",
        params=[MIN_POSITION],
        responses={200: BookingView},
        errors=[404],
    ),
    Op(
        "GET",
        "/v1/bookings/{id}/history",
        "Every event of a booking, oldest first",
        params=[MIN_POSITION],
        responses={200: HistoryView},
        errors=[404, 422],
    ),
    Op(
        "POST",
        "/v1/bookings/{id}/confirm",
        "Confirm a hold (pending if approval is required)",
        body=ConfirmBody,
        responses={200: BookingView},
        params=_CMD,
        errors=_CONFLICTS,
    ),
    Op(
        "POST",
        "/v1/bookings/{id}/approve",
        "Approve a pending booking",
        body=ReasonBody,
        responses={200: BookingView},
        params=_CMD,
        errors=_CONFLICTS,
    ),
    Op(
        "POST",
        "/v1/bookings/{id}/reject",
        "Reject a pending booking",
        body=ReasonBody,
        responses={200: BookingView},
        params=_CMD,
        errors=_CONFLICTS,
    ),
    Op(
        "POST",
        "/v1/bookings/{id}/cancel",
        "Cancel a booking (customer cut-off applies)",
        body=CancelBody,
        responses={200: BookingView},
        params=_CMD,
        errors=_CONFLICTS,
    ),
    Op(
        "POST",
        "/v1/bookings/{id}/reschedule",
        "Move a booking to a new time, atomically",
        body=RescheduleBody,
        responses={200: BookingView},
        params=_CMD,
        errors=_CONFLICTS,
    ),
    Op(
        "POST",
        "/v1/bookings/{id}/extend",
        "Extend a hold's expiry",
        body=ExtendBody,
        responses={200: BookingView},
        params=_CMD,
        errors=_CONFLICTS,
    ),
    Op(
        "POST",
        "/v1/sessions/{id}/bookings",
        "Take seats in a session",
        body=SeatsBody,
        responses={201: BookingView},
        params=[IDEMPOTENCY],
        errors=[404, 409],
    ),
]
