"""The application layer between HTTP (or a background worker) and the decider: for each kind of
command, which streams to read, how to fold them, and which decision to call. Returns `Decide`
callables for service/handler.py to run. No HTTP here.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

import msgspec

from service import streams
from service.commands import (
    AddSeats,
    BookingCommand,
    CancelSession,
    HoldSlot,
    RescheduleBooking,
    ScheduleSessions,
)
from service.decider import (
    Appends,
    Booking,
    DayLedger,
    SessionState,
    blocked,
    decide_add_seats,
    decide_booking,
    decide_hold,
    duration_for,
    fold_booking,
    ledger_span,
    ledger_streams,
    policy_of,
    selected_resources,
)
from service.errors import ApiError, NotFound, VersionMismatch
from service.events import ResourceUpserted, ServiceUpserted
from service.handler import Decide, Done, Loaded, Reader
from service.sessions import check, decide_cancel_session, decide_schedule, member_ids, occurrences
from service.store import PENDING, RecordedEvent


def fold(events: list[RecordedEvent]) -> Booking | None:
    return fold_booking((e.event, e.version, e.position, e.recorded_at) for e in events)


def booking_after(done: Done, stream_id: str) -> Booking:
    b = fold(done.stream(stream_id))
    assert b is not None
    return b


def ledgers_of(loaded: Loaded) -> dict[str, DayLedger]:
    return {s: ledger_of(s, events) for s, events in loaded.items() if streams.kind_of(s) == "rd"}


#: The last fold of each day ledger: (its newest event, the ledger). A stream's first n events
#: never change, so the next command on that day continues from it (a copy, then only the new
#: events) instead of folding the whole day again. Decisions only read ledgers.
_FOLDED: dict[str, tuple[RecordedEvent, DayLedger]] = {}


def ledger_of(stream_id: str, events: list[RecordedEvent]) -> DayLedger:
    """The day ledger folded from all of its stream's events so far (`events`, oldest first).
    Events staged by an earlier decision of a batch (service/batching.py; not yet appended, so
    with no time) come last: they are folded on a copy and never remembered."""
    stored = len(events)
    while stored and events[stored - 1].recorded_at is PENDING:
        stored -= 1
    ledger = _stored_fold(stream_id, events, stored)
    if stored == len(events):
        return ledger
    ledger = ledger.copy()
    for e in events[stored:]:
        ledger.evolve(e.event)
    return ledger


def _stored_fold(stream_id: str, events: list[RecordedEvent], n: int) -> DayLedger:
    """The fold of the first `n` events, continued from (and remembered in) _FOLDED."""
    ledger, done = DayLedger(), 0
    known = _FOLDED.get(stream_id)
    if known is not None and known[1].version <= n:
        last, folded = known
        if folded.version == 0 or events[folded.version - 1] is last:
            if folded.version == n:
                return folded
            ledger, done = folded.copy(), folded.version
    for e in events[done:n]:
        ledger.evolve(e.event)
    if n:
        if len(_FOLDED) >= 20_000:
            _FOLDED.clear()
        _FOLDED[stream_id] = (events[n - 1], ledger)
    return ledger


def session_of(events: list[RecordedEvent]) -> SessionState:
    state = SessionState()
    for e in events:
        state.evolve(e.event)
    return state


def catalogue_of(newest: Mapping[str, RecordedEvent]) -> dict[str, ResourceUpserted]:
    return {
        e.event.resource_id: e.event
        for e in newest.values()
        if isinstance(e.event, ResourceUpserted)
    }


async def read_service_record(r: Reader, tenant: str, service_id: str) -> RecordedEvent:
    _, found = await r.read((), [streams.service(tenant, service_id)])
    rec = found.get(streams.service(tenant, service_id))
    if rec is None or not isinstance(rec.event, ServiceUpserted):
        raise NotFound(f"service {service_id!r} does not exist", service=service_id)
    return rec


async def read_service(r: Reader, tenant: str, service_id: str) -> ServiceUpserted:
    event = (await read_service_record(r, tenant, service_id)).event
    assert isinstance(event, ServiceUpserted)
    return event


#: The last ServiceUpserted seen per service stream, used only to plan which ledgers a hold reads
#: so that it can read them and the fresh service in one round trip. Never decided on: the
#: decision uses the service read in the same query, and a plan from a stale entry is redone.
_PLANS: dict[str, RecordedEvent] = {}


def _ledgers_for(cmd: HoldSlot, service: ServiceUpserted) -> tuple[list[str], list[str]]:
    candidates = selected_resources(service, cmd.resources)
    duration = duration_for(service, cmd.duration_minutes)
    lo, hi = blocked(cmd.start, cmd.start + timedelta(minutes=duration), policy_of(service))
    return (
        ledger_streams(cmd.tenant, candidates, *ledger_span(lo, hi, service, candidates)),
        [streams.resource(cmd.tenant, x) for x in candidates],
    )


class HoldPlan(msgspec.Struct, frozen=True):
    """What a hold will read, planned from the service as this process last saw it (`planned`):
    the day ledgers and the resources."""

    planned: RecordedEvent
    ledgers: list[str]
    resources: list[str]


def hold_plan(cmd: HoldSlot) -> HoldPlan | None:
    """The hold's plan; None when this process has not seen the service yet, or when the service
    as last seen here cannot place it (a duration or a resource it did not offer then: that is
    no answer, the service may offer it now, so the hold is decided on the fresh service)."""
    planned = _PLANS.get(streams.service(cmd.tenant, cmd.service_id))
    if planned is None or not isinstance(planned.event, ServiceUpserted):
        return None
    try:
        ledgers, resources = _ledgers_for(cmd, planned.event)
    except ApiError:
        return None
    return HoldPlan(planned, ledgers, resources)


def hold_decision(cmd: HoldSlot, plan: HoldPlan | None = None) -> Decide:
    """`plan`: hold_plan(cmd) if the caller made it already (a batch reads every plan at once)."""
    tenant = cmd.tenant
    own = streams.booking(tenant, cmd.booking_id)
    svc = streams.service(tenant, cmd.service_id)

    async def decide(r: Reader) -> Appends:
        planned = _PLANS.get(svc)
        current = plan if plan is not None and plan.planned is planned else hold_plan(cmd)
        if planned is not None and current is not None:
            ledgers, resources = current.ledgers, current.resources
            loaded, newest = await r.read(ledgers, [svc, *resources])
            fresh = newest.get(svc)
            if fresh is None:
                _PLANS.pop(svc, None)
                raise NotFound(f"service {cmd.service_id!r} does not exist", service=cmd.service_id)
            if fresh.version == planned.version and isinstance(fresh.event, ServiceUpserted):
                r.new_stream(own)
                return decide_hold(cmd, fresh.event, catalogue_of(newest), ledgers_of(loaded))
        service_rec = await read_service_record(r, tenant, cmd.service_id)
        if len(_PLANS) > 10_000:
            _PLANS.clear()
        _PLANS[svc] = service_rec
        assert isinstance(service_rec.event, ServiceUpserted)
        ledgers, resources = _ledgers_for(cmd, service_rec.event)
        loaded, newest = await r.read(ledgers, resources)
        r.new_stream(own)
        return decide_hold(cmd, service_rec.event, catalogue_of(newest), ledgers_of(loaded))

    return decide


def seats_decision(cmd: AddSeats) -> Decide:
    own = streams.booking(cmd.tenant, cmd.booking_id)
    sid = streams.session(cmd.tenant, cmd.session_id)

    async def decide(r: Reader) -> Appends:
        loaded, _ = await r.read([sid])
        r.new_stream(own)
        return decide_add_seats(cmd, session_of(loaded[sid]))

    return decide


def booking_decision(cmd: BookingCommand, expected: int | None = None) -> Decide:
    """Any command on an existing booking; `expected` is the If-Match version, if any."""
    tenant = cmd.tenant
    own = streams.booking(tenant, cmd.booking_id)

    async def decide(r: Reader) -> Appends:
        loaded, _ = await r.read([own])
        booking = fold(loaded[own])
        if booking is None:
            raise NotFound(f"booking {cmd.booking_id!r} does not exist", booking=cmd.booking_id)
        if expected is not None and expected != booking.version:
            raise VersionMismatch(
                f"booking {booking.id!r} is at version {booking.version}, not {expected}",
                current_version=booking.version,
            )
        if booking.kind == "seat":
            assert booking.session_id is not None
            claims = [streams.session(tenant, booking.session_id)]
        else:
            claims = [
                f"{streams.resource_days_prefix(tenant, res)}{day}"
                for res in booking.resources
                for day in booking.claim_days()
            ]
        service: ServiceUpserted | None = None
        catalogue: dict[str, ResourceUpserted] = {}
        if isinstance(cmd, RescheduleBooking) and booking.kind == "slot":
            assert booking.service_id is not None
            service = await read_service(r, tenant, booking.service_id)
            pool_ids = sorted(set(service.resources) | set(booking.resources))
            duration = duration_for(
                service,
                cmd.duration_minutes
                if cmd.duration_minutes is not None
                else int((booking.end - booking.start).total_seconds() // 60),
            )
            lo, hi = blocked(cmd.start, cmd.start + timedelta(minutes=duration), booking.policy)
            claims += ledger_streams(tenant, pool_ids, *ledger_span(lo, hi, service, pool_ids))
            loaded, newest = await r.read(claims, [streams.resource(tenant, x) for x in pool_ids])
            catalogue = catalogue_of(newest)
        else:
            loaded, _ = await r.read(claims)
        return decide_booking(
            cmd, booking, service=service, catalogue=catalogue, ledgers=ledgers_of(loaded)
        )

    return decide


def schedule_decision(cmd: ScheduleSessions) -> Decide:
    """Schedule a session or a weekly series: read each member's session stream and the
    resource, then the resource's day ledgers that the members' times touch."""
    tenant = cmd.tenant

    async def decide(r: Reader) -> Appends:
        check(cmd)
        own = {sid: streams.session(tenant, sid) for sid in member_ids(cmd)}
        res = streams.resource(tenant, cmd.resource_id)
        loaded, newest = await r.read(list(own.values()), [res])
        resource = catalogue_of(newest).get(cmd.resource_id)
        ledgers: dict[str, DayLedger] = {}
        if resource is not None:
            days = [
                stream_id
                for o in occurrences(cmd, resource.timezone)
                for stream_id in ledger_streams(tenant, [cmd.resource_id], o.start, o.end)
            ]
            ledgers = ledgers_of((await r.read(days))[0])
        sessions = {sid: session_of(loaded[stream_id]) for sid, stream_id in own.items()}
        return decide_schedule(cmd, resource, sessions, ledgers)

    return decide


def cancel_session_decision(cmd: CancelSession) -> Decide:
    """Owner cancel: the session stream, then every seat booking it holds a claim for and the
    day ledgers of its time, all appended with the versions read here."""
    tenant = cmd.tenant
    own = streams.session(tenant, cmd.session_id)

    async def decide(r: Reader) -> Appends:
        loaded, _ = await r.read([own])
        session = session_of(loaded[own])
        s = session.scheduled
        if s is None:
            raise NotFound(f"session {cmd.session_id!r} does not exist", session=cmd.session_id)
        booking_streams = {b: streams.booking(tenant, b) for b in sorted(session.claims)}
        days = ledger_streams(tenant, [s.resource_id], s.start, s.end)
        more, _ = await r.read([*booking_streams.values(), *days])
        bookings = {b: fold(more[stream_id]) for b, stream_id in booking_streams.items()}
        return decide_cancel_session(cmd, session, bookings)

    return decide
