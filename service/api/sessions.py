"""Group sessions over HTTP: schedule (PUT with a client id, POST with a server id, optionally a
weekly series), the public listing, one session with its seat bookings, and the owner's cancel.

Seats are counted at read time from the session's seat claims (rm_sessions.claims) with the
current clock, so a hold past its expiry frees its seats at once, before HoldExpired is written.
The public listing renders only the session itself: no customer data ever reaches it. Adding
seats (`POST /v1/sessions/{id}/bookings`) lives with the other booking commands in
service/api/bookings.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from projections.readmodels import booking_from_row
from service import streams
from service.api.bookings import BOOKING_COLUMNS, aware, booking_view
from service.api.common import (
    TimeOrderedQuery,
    authenticate,
    encode_json,
    json_body,
    json_response,
    new_id,
    now,
    pool,
    query_str,
    run_command,
    wait_for_position,
)
from service.api.schemas import BookingView, View
from service.catalogue import ID_PATTERN, check_id, check_metadata
from service.commands import CancelSession, ScheduleSessions
from service.errors import NotFound, ValidationFailed
from service.events import BookingCancelled
from service.handler import Done
from service.openapi import CURSOR, IDEMPOTENCY, LIMIT, MIN_POSITION, Op, Param
from service.sessions import member_ids
from service.tenants import Principal
from service.usecases import cancel_session_decision, schedule_decision, session_of

ClientId = Annotated[str, Meta(pattern=ID_PATTERN)]
Minutes = Annotated[int, Meta(ge=0, le=525_600)]


class Body(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class RepeatBody(Body, kw_only=True):
    every: Literal["week"]
    count: Annotated[int, Meta(ge=1, le=52)]


class SessionBody(Body, kw_only=True):
    resource: ClientId
    start: datetime
    end: datetime
    title: Annotated[str, Meta(min_length=1, max_length=200)]
    description: Annotated[str, Meta(max_length=5000)] | None = None
    location: Annotated[str, Meta(max_length=500)] | None = None
    max_seats: Annotated[int, Meta(ge=1, le=10_000)]
    min_booking_notice_minutes: Minutes = 0
    max_advance_days: Annotated[int, Meta(ge=1, le=3650)] | None = None
    min_cancel_notice_minutes: Minutes = 0
    hold_seconds: Annotated[int, Meta(ge=1, le=86_400)] = 600
    metadata: dict[str, Any] = {}
    repeat: RepeatBody | None = None


class CancelSessionBody(Body, kw_only=True):
    message: Annotated[str, Meta(max_length=2000)] | None = None


class StoredSession(msgspec.Struct, kw_only=True):
    """rm_sessions.body: the scheduled session as last updated, plus the cancel message."""

    session_id: str
    resource_id: str
    start: datetime
    end: datetime
    title: str
    description: str | None = None
    location: str | None = None
    max_seats: int
    min_booking_notice_minutes: int = 0
    max_advance_days: int | None = None
    min_cancel_notice_minutes: int = 0
    hold_seconds: int = 600
    series_id: str | None = None
    metadata: dict[str, Any] = {}
    message: str | None = None


class StoredClaim(msgspec.Struct, kw_only=True):
    seats: int
    expires_at: datetime | None = None


SESSION_DECODER = msgspec.json.Decoder(StoredSession)
CLAIMS_DECODER = msgspec.json.Decoder(dict[str, StoredClaim])


# ── views ────────────────────────────────────────────────────────────────────

SessionStatus = Literal["scheduled", "cancelled"]
Claims = Iterable[tuple[int, datetime | None]]


class SeatsView(View, kw_only=True):
    max: int
    taken: int
    held: int
    left: int


class PublicSessionView(View, kw_only=True):
    """What anyone holding the public key may see: the session, never who booked it."""

    id: str
    series_id: str | None
    resource: str
    start: datetime
    end: datetime
    title: str
    description: str | None
    location: str | None
    status: SessionStatus
    seats: SeatsView


class SessionView(PublicSessionView, kw_only=True, omit_defaults=True):
    """The owner's view; `position` on command answers, `bookings` with ?include=bookings."""

    message: str | None
    max_seats: int
    min_booking_notice_minutes: int
    max_advance_days: int | None
    min_cancel_notice_minutes: int
    hold_seconds: int
    metadata: dict[str, Any]
    version: int
    position: int | None = None
    bookings: list[BookingView] | None = None


class CancelledSessionView(SessionView, kw_only=True, omit_defaults=True):
    cancelled_bookings: list[str]


class SeriesView(View, kw_only=True):
    series_id: str
    data: list[SessionView]
    position: int


class SessionPage(View, kw_only=True):
    data: list[PublicSessionView]
    next_cursor: str | None


def seats_view(max_seats: int, status: SessionStatus, claims: Claims, at: datetime) -> SeatsView:
    """taken: confirmed or pending seats; held: unexpired holds; left: what can still be booked
    (none once the session is cancelled)."""
    taken = held = 0
    for seats, expires_at in claims:
        if expires_at is None:
            taken += seats
        elif at < expires_at:
            held += seats
    left = max(0, max_seats - taken - held) if status == "scheduled" else 0
    return SeatsView(max=max_seats, taken=taken, held=held, left=left)


def _public_fields(
    s: StoredSession, status: SessionStatus, claims: Claims, at: datetime
) -> dict[str, Any]:
    return {
        "id": s.session_id,
        "series_id": s.series_id,
        "resource": s.resource_id,
        "start": s.start,
        "end": s.end,
        "title": s.title,
        "description": s.description,
        "location": s.location,
        "status": status,
        "seats": seats_view(s.max_seats, status, claims, at),
    }


def public_view(
    s: StoredSession, status: SessionStatus, claims: Claims, at: datetime
) -> PublicSessionView:
    return PublicSessionView(**_public_fields(s, status, claims, at))


def full_view(
    s: StoredSession,
    status: SessionStatus,
    claims: Claims,
    at: datetime,
    version: int,
    kind: type[SessionView] = SessionView,
    **extra: Any,
) -> SessionView:
    return kind(
        **_public_fields(s, status, claims, at),
        message=s.message,
        max_seats=s.max_seats,
        min_booking_notice_minutes=s.min_booking_notice_minutes,
        max_advance_days=s.max_advance_days,
        min_cancel_notice_minutes=s.min_cancel_notice_minutes,
        hold_seconds=s.hold_seconds,
        metadata=s.metadata,
        version=version,
        **extra,
    )


def view_after(
    done: Done,
    tenant: str,
    session_id: str,
    at: datetime,
    kind: type[SessionView] = SessionView,
    **extra: Any,
) -> SessionView:
    """The session as the command left it, with the position of the command's last event (SPEC
    3: a claim of its time, or a seat booking it cancelled, may come after the session's own),
    or of its stream's last event when the command wrote nothing."""
    events = done.stream(streams.session(tenant, session_id))
    state = session_of(events)
    assert state.scheduled is not None
    stored = StoredSession(**msgspec.structs.asdict(state.scheduled), message=state.message)
    claims = [(c.seats, c.expires_at) for c in state.claims.values()]
    position = done.position or (events[-1].position if events else 0)
    return full_view(
        stored, state.status, claims, at, state.version, kind, position=position, **extra
    )


def row_status(value: str) -> SessionStatus:
    return "cancelled" if value == "cancelled" else "scheduled"


def row_claims(raw: str) -> list[tuple[int, datetime | None]]:
    return [(c.seats, c.expires_at) for c in CLAIMS_DECODER.decode(raw).values()]


# ── commands ─────────────────────────────────────────────────────────────────


def schedule_command(
    tenant: str, at: datetime, session_id: str, body: SessionBody
) -> ScheduleSessions:
    errors = check_metadata(body.metadata)
    start, end = aware(body.start, "start"), aware(body.end, "end")
    if errors:
        raise ValidationFailed(errors)
    return ScheduleSessions(
        tenant=tenant,
        now=at,
        session_id=session_id,
        resource_id=body.resource,
        start=start,
        end=end,
        title=body.title,
        description=body.description,
        location=body.location,
        max_seats=body.max_seats,
        min_booking_notice_minutes=body.min_booking_notice_minutes,
        max_advance_days=body.max_advance_days,
        min_cancel_notice_minutes=body.min_cancel_notice_minutes,
        hold_seconds=body.hold_seconds,
        metadata=body.metadata,
        repeat_weeks=body.repeat.count if body.repeat is not None else None,
    )


async def _schedule(request: Request, cmd: ScheduleSessions, principal: Principal) -> Response:
    ids = member_ids(cmd)

    def render(done: Done) -> tuple[int, bytes]:
        created = any(
            not done.loaded.get(streams.session(cmd.tenant, sid))
            and done.new.get(streams.session(cmd.tenant, sid))
            for sid in ids
        )
        views = [view_after(done, cmd.tenant, sid, cmd.now) for sid in ids]
        status = 201 if created else 200
        if cmd.repeat_weeks is None:
            return status, encode_json(views[0])
        position = max(v.position or 0 for v in views)
        return status, encode_json(
            SeriesView(series_id=cmd.session_id, data=views, position=position)
        )

    return await run_command(request, principal, schedule_decision(cmd), render)


async def put_session(request: Request) -> Response:
    principal = await authenticate(request)
    session_id = request.path_params["id"]
    check_id("session", session_id)
    body = await json_body(request, SessionBody)
    cmd = schedule_command(principal.tenant_id, now(), session_id, body)
    return await _schedule(request, cmd, principal)


async def post_session(request: Request) -> Response:
    principal = await authenticate(request)
    body = await json_body(request, SessionBody)
    cmd = schedule_command(principal.tenant_id, now(), new_id("ss"), body)
    return await _schedule(request, cmd, principal)


async def cancel_session(request: Request) -> Response:
    principal = await authenticate(request)
    body = await json_body(request, CancelSessionBody, allow_empty=True)
    cmd = CancelSession(
        tenant=principal.tenant_id,
        now=now(),
        session_id=request.path_params["id"],
        message=body.message,
    )

    def render(done: Done) -> tuple[int, bytes]:
        cancelled = sorted(
            e.event.booking_id
            for events in done.new.values()
            for e in events
            if isinstance(e.event, BookingCancelled)
        )
        view = view_after(
            done,
            cmd.tenant,
            cmd.session_id,
            cmd.now,
            CancelledSessionView,
            cancelled_bookings=cancelled,
        )
        return 200, encode_json(view)

    return await run_command(request, principal, cancel_session_decision(cmd), render)


# ── reads ────────────────────────────────────────────────────────────────────

STATUSES = ("scheduled", "cancelled")


async def list_sessions(request: Request) -> Response:
    """The public listing (public or secret key): sessions and seat counts, no customer data."""
    principal = await authenticate(request, public_ok=True)
    await wait_for_position(request)
    at = now()
    q = TimeOrderedQuery(request, principal.tenant_id, "session_id")
    if (resource := query_str(request, "resource")) is not None:
        q.add(f"resource_id = {q.arg(resource)}")
    if (status := query_str(request, "status")) is not None:
        if status not in STATUSES:
            raise ValidationFailed([("status", f"must be one of {', '.join(STATUSES)}")])
        q.add(f"status = {q.arg(status)}")
    page, next_cursor = await q.page(
        "rm_sessions", "status, body::text AS body, claims::text AS claims"
    )
    data = [
        public_view(
            SESSION_DECODER.decode(r["body"]), row_status(r["status"]), row_claims(r["claims"]), at
        )
        for r in page
    ]
    return json_response(SessionPage(data=data, next_cursor=next_cursor))


async def get_session(request: Request) -> Response:
    principal = await authenticate(request)
    await wait_for_position(request)
    session_id = request.path_params["id"]
    include = {p for p in (query_str(request, "include") or "").split(",") if p}
    if include - {"bookings"}:
        raise ValidationFailed([("include", "the only inclusion is 'bookings'")])
    db = pool(request)
    row = await db.fetchrow(
        "SELECT status, version, body::text AS body, claims::text AS claims FROM rm_sessions "
        "WHERE tenant_id = $1 AND session_id = $2",
        principal.tenant_id,
        session_id,
    )
    if row is None:
        raise NotFound(f"session {session_id!r} does not exist", session=session_id)
    at = now()
    bookings: list[BookingView] | None = None
    if "bookings" in include:
        rows = await db.fetch(
            f"SELECT {BOOKING_COLUMNS} FROM rm_bookings WHERE tenant_id = $1 "
            "AND session_id = $2 ORDER BY created_at, booking_id",
            principal.tenant_id,
            session_id,
        )
        bookings = [booking_view(booking_from_row(b), at) for b in rows]
    view = full_view(
        SESSION_DECODER.decode(row["body"]),
        row_status(row["status"]),
        row_claims(row["claims"]),
        at,
        row["version"],
        bookings=bookings,
    )
    return json_response(view, headers={"ETag": f'"{row["version"]}"'})


routes = [
    Route("/v1/sessions", post_session, methods=["POST"]),
    Route("/v1/sessions", list_sessions, methods=["GET"]),
    Route("/v1/sessions/{id}", put_session, methods=["PUT"]),
    Route("/v1/sessions/{id}", get_session, methods=["GET"]),
    Route("/v1/sessions/{id}/cancel", cancel_session, methods=["POST"]),
]

operations = [
    Op(
        "POST",
        "/v1/sessions",
        "Schedule a session, or a weekly series with repeat (all or none)",
        body=SessionBody,
        responses={201: (SessionView, SeriesView)},
        params=[IDEMPOTENCY],
        errors=[409],
    ),
    Op(
        "GET",
        "/v1/sessions",
        "The public listing: sessions with seat counts, never customer data",
        key="pk",
        params=[
            Param("resource"),
            Param("status", {"type": "string", "enum": list(STATUSES)}),
            Param("from"),
            Param("to"),
            LIMIT,
            CURSOR,
            MIN_POSITION,
        ],
        responses={200: SessionPage},
        errors=[422],
    ),
    Op(
        "PUT",
        "/v1/sessions/{id}",
        "Schedule a session by client id (a weekly series with repeat); re-PUT updates details",
        body=SessionBody,
        responses={200: (SessionView, SeriesView), 201: (SessionView, SeriesView)},
        errors=[409],
    ),
    Op(
        "GET",
        "/v1/sessions/{id}",
        "One session; with include=bookings, its seat bookings and their customers",
        params=[Param("include", {"type": "string", "enum": ["bookings"]}), MIN_POSITION],
        responses={200: SessionView},
        errors=[404, 422],
    ),
    Op(
        "POST",
        "/v1/sessions/{id}/cancel",
        "Owner cancel: the session and every active seat booking, in one atomic step",
        body=CancelSessionBody,
        responses={200: CancelledSessionView},
        params=[IDEMPOTENCY],
        errors=[404, 409],
    ),
]
