"""The booking rules: state folded from events (`evolve`), and decisions (`decide_*`) that turn a
command plus current state into new events per stream, or raise an ApiError subclass.

Pure: no I/O, no clock (commands carry `now`), no randomness (commands carry new ids). The shell
(service/handler.py) loads the streams named by service/streams.py, calls these functions, and
appends the result with the expected versions it loaded.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Literal, assert_never

import msgspec

from service import streams
from service.availability import (
    Busy,
    Calendar,
    SlotRules,
    choose_resource,
    in_booking_window,
    is_free,
    within_hours,
)
from service.commands import (
    AddSeats,
    ApproveBooking,
    BookingCommand,
    CancelBooking,
    ConfirmBooking,
    ExpireHold,
    ExtendHold,
    HoldSlot,
    RejectBooking,
    RescheduleBooking,
)
from service.errors import (
    CancelWindowClosed,
    HoldExpiredError,
    InvalidTransition,
    NotEnoughSeats,
    NotFound,
    OutsideBookingWindow,
    SlotUnavailable,
    ValidationFailed,
)
from service.events import (
    AnyEvent,
    BookingApprovalRequested,
    BookingApproved,
    BookingCancelled,
    BookingConfirmed,
    BookingPolicy,
    BookingRejected,
    BookingRescheduled,
    Customer,
    Event,
    HoldExpired,
    HoldExtended,
    ResourceUpserted,
    SeatsClaimed,
    SeatsHeld,
    SeatsReleased,
    ServiceUpserted,
    SessionCancelled,
    SessionScheduled,
    SessionUpdated,
    SlotHeld,
    TimeClaimed,
    TimeReleased,
)

Status = Literal["held", "pending", "confirmed", "cancelled", "rejected", "expired"]
ACTIVE: frozenset[str] = frozenset({"held", "pending", "confirmed"})
Appends = dict[str, list[Event]]


# ── state ───────────────────────────────────────────────────────────────────


class Booking(msgspec.Struct, kw_only=True, gc=False):
    """One booking, folded from its stream. Untracked by the cycle collector, as events are
    (service/events.py Event): nothing in it refers back to it."""

    id: str
    kind: Literal["slot", "seat"]
    status: Status
    service_id: str | None
    session_id: str | None
    resources: list[str]
    start: datetime
    end: datetime
    seats: int | None
    expires_at: datetime | None
    policy: BookingPolicy
    customer: Customer | None
    notes: str | None
    metadata: dict[str, object]
    version: int = 0
    position: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None
    cancelled_by: str | None = None
    reason: str | None = None

    def effective_status(self, now: datetime) -> Status:
        """A hold past its expiry counts as expired at once, before HoldExpired is written."""
        if self.status == "held" and self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return self.status

    def claim_days(self) -> list[str]:
        """The day streams (without tenant) this booking's blocked time touches, per resource."""
        lo, hi = blocked(self.start, self.end, self.policy)
        return [d.isoformat() for d in streams.utc_days(lo, hi)]


def blocked(start: datetime, end: datetime, policy: BookingPolicy) -> tuple[datetime, datetime]:
    return (
        start - timedelta(minutes=policy.buffer_before_minutes),
        end + timedelta(minutes=policy.buffer_after_minutes),
    )


def evolve_booking(
    state: Booking | None,
    event: AnyEvent,
    *,
    version: int = 0,
    position: int = 0,
    recorded_at: datetime | None = None,
) -> Booking | None:
    """Apply one booking-stream event. Never raises: the event happened. (The folds here test
    an event's exact type, not isinstance: a class pattern costs about 1,000 instructions on
    msgspec's Struct classes, 4,500 for a BookingConfirmed behind four others, and a replay
    folds every event of the log.)"""
    if type(event) is SlotHeld:
        state = Booking(
            id=event.booking_id,
            kind="slot",
            status="held",
            service_id=event.service_id,
            session_id=None,
            resources=list(event.resources),
            start=event.start,
            end=event.end,
            seats=None,
            expires_at=event.expires_at,
            policy=event.policy,
            customer=event.customer,
            notes=event.notes,
            metadata=dict(event.metadata),
            created_at=recorded_at,
        )
    elif type(event) is SeatsHeld:
        state = Booking(
            id=event.booking_id,
            kind="seat",
            status="held",
            service_id=None,
            session_id=event.session_id,
            resources=[event.resource_id],
            start=event.start,
            end=event.end,
            seats=event.seats,
            expires_at=event.expires_at,
            policy=event.policy,
            customer=event.customer,
            notes=event.notes,
            metadata=dict(event.metadata),
            created_at=recorded_at,
        )
    elif state is None:
        return None
    elif type(event) is BookingConfirmed:
        state.status = "confirmed"
        state.expires_at = None
        state.customer = event.customer or state.customer
    elif type(event) is HoldExtended:
        state.expires_at = event.expires_at
    elif type(event) is BookingApprovalRequested:
        state.status = "pending"
        state.expires_at = None
        state.customer = event.customer or state.customer
    elif type(event) is BookingApproved:
        state.status = "confirmed"
        state.reason = event.reason
    elif type(event) is BookingRejected:
        state.status = "rejected"
        state.reason = event.reason
    elif type(event) is BookingCancelled:
        state.status = "cancelled"
        state.cancelled_by = event.by
        state.reason = event.reason
    elif type(event) is HoldExpired:
        state.status = "expired"
    elif type(event) is BookingRescheduled:
        state.start, state.end = event.start, event.end
        state.resources = list(event.resources)
    else:
        return state
    state.version = version or state.version + 1
    state.position = position
    state.updated_at = recorded_at
    return state


@dataclass(slots=True)
class DayLedger:
    """One resource's claims on one UTC day, folded from its `rd` stream."""

    claims: dict[str, TimeClaimed] = field(default_factory=dict)
    version: int = 0
    #: Busy entries of the claims, built when first asked for (`busy_map`) and carried over by
    #: `copy`: a decision on a busy day builds only the entries of the claims new since the fold
    #: it continues. Claims changed since they were last built are listed in `_stale`.
    _busy: dict[str, Busy] = field(default_factory=dict)
    _stale: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.claims and not self._busy and not self._stale:
            self._stale = list(self.claims)  # given claims, not folded: build them when asked

    def evolve(self, event: AnyEvent) -> None:
        if type(event) is TimeClaimed:  # exact types: see evolve_booking
            self.claims[event.claim_id] = event
            self._stale.append(event.claim_id)
        elif type(event) is TimeReleased:
            self.claims.pop(event.claim_id, None)
            self._stale.append(event.claim_id)
        self.version += 1

    def copy(self) -> DayLedger:
        """An independent ledger to evolve further (this one stays as it is)."""
        return DayLedger(dict(self.claims), self.version, dict(self._busy), list(self._stale))

    def busy_map(self) -> dict[str, Busy]:
        """Claim id -> its busy entry, for every claim. Do not modify."""
        if self._stale:
            busy, claims = self._busy, self.claims
            for claim_id in self._stale:
                c = claims.get(claim_id)
                if c is None:
                    busy.pop(claim_id, None)
                else:
                    busy[claim_id] = Busy(c.start, c.end, c.block_start, c.block_end, c.expires_at)
            self._stale = []
        return self._busy


@dataclass(slots=True)
class SessionState:
    """A group session and its seat ledger, folded from its `ss` stream."""

    scheduled: SessionScheduled | None = None
    status: Literal["scheduled", "cancelled"] = "scheduled"
    message: str | None = None
    claims: dict[str, SeatsClaimed] = field(default_factory=dict)
    version: int = 0
    updated_at: datetime | None = None

    def evolve(self, event: AnyEvent) -> None:
        # Exact types, as in evolve_booking; a session's seats are its most frequent events.
        if type(event) is SeatsClaimed:
            self.claims[event.booking_id] = event
        elif type(event) is SeatsReleased:
            self.claims.pop(event.booking_id, None)
        elif type(event) is SessionScheduled:
            self.scheduled = event
            self.status = "scheduled"
        elif type(event) is SessionCancelled:
            self.status = "cancelled"
            self.message = event.message
        elif type(event) is SessionUpdated and self.scheduled is not None:
            self.scheduled = msgspec.structs.replace(
                self.scheduled,
                title=event.title,
                description=event.description,
                location=event.location,
                max_seats=event.max_seats,
                min_booking_notice_minutes=event.min_booking_notice_minutes,
                max_advance_days=event.max_advance_days,
                min_cancel_notice_minutes=event.min_cancel_notice_minutes,
                hold_seconds=event.hold_seconds,
                metadata=event.metadata,
            )
        self.version += 1

    def seats(self, now: datetime) -> tuple[int, int]:
        """(taken by confirmed or pending bookings, held by unexpired holds)."""
        taken = held = 0
        for c in self.claims.values():
            if c.expires_at is None:
                taken += c.seats
            elif now < c.expires_at:
                held += c.seats
        return taken, held

    def seats_left(self, now: datetime) -> int:
        assert self.scheduled is not None
        taken, held = self.seats(now)
        return max(0, self.scheduled.max_seats - taken - held)


def fold_booking(events: Iterable[tuple[AnyEvent, int, int, datetime]]) -> Booking | None:
    state: Booking | None = None
    for event, version, position, recorded_at in events:
        state = evolve_booking(
            state, event, version=version, position=position, recorded_at=recorded_at
        )
    return state


# ── shared rules ─────────────────────────────────────────────────────────────


def calendar(resource: ResourceUpserted, busy: list[Busy]) -> Calendar:
    return Calendar(
        resource_id=resource.resource_id,
        timezone=resource.timezone,
        weekly=resource.weekly,
        overrides=resource.overrides,
        busy=busy,
    )


def slot_rules(service: ServiceUpserted, duration_minutes: int) -> SlotRules:
    return _slot_rules(
        duration_minutes,
        service.slot_interval_minutes,
        service.buffer_before_minutes,
        service.buffer_after_minutes,
        service.min_notice_minutes,
        service.max_advance_days,
    )


@functools.lru_cache(maxsize=4096)  # every hold makes them, from a few services' numbers
def _slot_rules(
    duration: int, interval: int, before: int, after: int, notice: int, advance_days: int | None
) -> SlotRules:
    return SlotRules(
        duration=timedelta(minutes=duration),
        interval=timedelta(minutes=interval),
        buffer_before=timedelta(minutes=before),
        buffer_after=timedelta(minutes=after),
        min_notice=timedelta(minutes=notice),
        max_advance=timedelta(days=advance_days) if advance_days is not None else None,
    )


def policy_of(service: ServiceUpserted) -> BookingPolicy:
    return BookingPolicy(
        hold_seconds=service.hold_seconds,
        requires_confirmation=service.requires_confirmation,
        min_cancel_notice_minutes=service.min_cancel_notice_minutes,
        buffer_before_minutes=service.buffer_before_minutes,
        buffer_after_minutes=service.buffer_after_minutes,
    )


def duration_for(service: ServiceUpserted, requested: int | None) -> int:
    if requested is None:
        return service.durations[0]
    if requested not in service.durations:
        allowed = ", ".join(str(d) for d in service.durations)
        raise ValidationFailed(
            [
                (
                    "duration_minutes",
                    f"{requested} is not offered by this service (allowed: {allowed})",
                )
            ]
        )
    return requested


def selected_resources(service: ServiceUpserted, requested: list[str] | None) -> list[str]:
    if not requested:
        return sorted(service.resources)
    outside = [r for r in requested if r not in service.resources]
    if outside:
        raise ValidationFailed(
            [("resources", f"not in the service's resource pool: {', '.join(outside)}")]
        )
    return sorted(set(requested))


def ledger_span(
    start: datetime, end: datetime, service: ServiceUpserted, candidates: list[str]
) -> tuple[datetime, datetime]:
    """The time whose ledgers a decision on [start, end) (blocked time) must read: exactly that,
    and a day either side when round robin has a choice to make (it counts bookings on the
    resource's local date, which may reach into the neighbouring UTC days)."""
    if service.assignment == "any" and len(candidates) > 1:
        return start - timedelta(days=1), end + timedelta(days=1)
    return start, end


def ledger_streams(
    tenant: str, resource_ids: Iterable[str], start: datetime, end: datetime
) -> list[str]:
    days = streams.utc_days(start, end)
    return [streams.resource_day(tenant, r, d) for r in resource_ids for d in days]


def busy_of(
    tenant: str,
    resource_id: str,
    ledgers: Mapping[str, DayLedger],
    *,
    excluding: str | None = None,
) -> list[Busy]:
    """Every claim on the resource in the loaded day streams (a claim across days counted once)."""
    prefix = streams.resource_days_prefix(tenant, resource_id)
    days = [
        ledger.busy_map() for stream_id, ledger in ledgers.items() if stream_id.startswith(prefix)
    ]
    if len(days) == 1 and excluding not in days[0]:
        return list(days[0].values())
    seen: dict[str, Busy] = {}
    for day in days:
        seen.update(day)
    if excluding is not None:
        seen.pop(excluding, None)
    return list(seen.values())


def claim(
    tenant: str,
    claim_id: str,
    resource_ids: Iterable[str],
    start: datetime,
    end: datetime,
    policy: BookingPolicy,
    expires_at: datetime | None,
) -> Appends:
    """TimeClaimed in every day stream the blocked time touches, on every resource."""
    lo, hi = blocked(start, end, policy)
    out: Appends = {}
    for r in resource_ids:
        for d in streams.utc_days(lo, hi):
            out[streams.resource_day(tenant, r, d)] = [
                TimeClaimed(
                    resource_id=r,
                    day=d.isoformat(),
                    claim_id=claim_id,
                    start=start,
                    end=end,
                    block_start=lo,
                    block_end=hi,
                    expires_at=expires_at,
                )
            ]
    return out


def release(tenant: str, booking: Booking) -> Appends:
    if booking.kind == "seat":
        assert booking.session_id is not None
        return {
            streams.session(tenant, booking.session_id): [
                SeatsReleased(session_id=booking.session_id, booking_id=booking.id)
            ]
        }
    out: Appends = {}
    for r in booking.resources:
        for d in booking.claim_days():
            out[streams.resource_day(tenant, r, date.fromisoformat(d))] = [
                TimeReleased(resource_id=r, day=d, claim_id=booking.id)
            ]
    return out


def reclaim(tenant: str, booking: Booking, expires_at: datetime | None) -> Appends:
    """Re-issue the booking's claims with a new expiry (confirm, extend)."""
    if booking.kind == "seat":
        assert booking.session_id is not None and booking.seats is not None
        return {
            streams.session(tenant, booking.session_id): [
                SeatsClaimed(
                    session_id=booking.session_id,
                    booking_id=booking.id,
                    seats=booking.seats,
                    expires_at=expires_at,
                )
            ]
        }
    return claim(
        tenant,
        booking.id,
        booking.resources,
        booking.start,
        booking.end,
        booking.policy,
        expires_at,
    )


def merge(*parts: Appends) -> Appends:
    out: Appends = {}
    for part in parts:
        for stream_id, events in part.items():
            out.setdefault(stream_id, []).extend(events)
    return out


def pick_resources(
    tenant: str,
    service: ServiceUpserted,
    candidates: list[str],
    catalogue: Mapping[str, ResourceUpserted],
    ledgers: Mapping[str, DayLedger],
    start: datetime,
    end: datetime,
    rules: SlotRules,
    now: datetime,
    *,
    excluding: str | None = None,
    prefer: list[str] | None = None,
) -> list[str]:
    """The resources to book for [start, end), or SlotUnavailable naming why not."""
    missing = [r for r in candidates if r not in catalogue]
    if service.assignment == "all" and missing:
        raise SlotUnavailable(
            f"resource {missing[0]!r} does not exist", resource=missing[0], start=start.isoformat()
        )
    calendars = [
        calendar(catalogue[r], busy_of(tenant, r, ledgers, excluding=excluding))
        for r in candidates
        if r in catalogue
    ]
    if service.assignment == "all":
        for cal in calendars:
            if not within_hours(cal, start, end):
                raise SlotUnavailable(
                    f"{start.isoformat()} is outside the working hours of {cal.resource_id!r}",
                    resource=cal.resource_id,
                    start=start.isoformat(),
                )
            if not is_free(cal.busy, start, end, rules, now):
                raise SlotUnavailable(
                    f"{cal.resource_id!r} is already booked at {start.isoformat()}",
                    resource=cal.resource_id,
                    start=start.isoformat(),
                )
        return sorted(cal.resource_id for cal in calendars)
    if prefer:
        kept = [c for c in calendars if c.resource_id in prefer]
        if kept and all(
            within_hours(c, start, end) and is_free(c.busy, start, end, rules, now) for c in kept
        ):
            return sorted(c.resource_id for c in kept)
    chosen = choose_resource(calendars, start, end, rules, now)
    if chosen is None:
        raise SlotUnavailable(
            f"no resource is free at {start.isoformat()}", start=start.isoformat()
        )
    return [chosen]


# ── decisions ────────────────────────────────────────────────────────────────


def decide_hold(
    cmd: HoldSlot,
    service: ServiceUpserted,
    catalogue: Mapping[str, ResourceUpserted],
    ledgers: Mapping[str, DayLedger],
) -> Appends:
    if cmd.confirm and cmd.customer is None:
        raise ValidationFailed([("customer", "a customer is required with confirm: true")])
    duration = duration_for(service, cmd.duration_minutes)
    rules = slot_rules(service, duration)
    start = cmd.start
    end = start + timedelta(minutes=duration)
    if not in_booking_window(start, rules, cmd.now):
        raise OutsideBookingWindow(
            f"{start.isoformat()} is outside the booking window "
            f"(at least {service.min_notice_minutes} min ahead"
            + (
                f", at most {service.max_advance_days} days ahead)"
                if service.max_advance_days is not None
                else ")"
            ),
            start=start.isoformat(),
        )
    candidates = selected_resources(service, cmd.resources)
    chosen = pick_resources(
        cmd.tenant, service, candidates, catalogue, ledgers, start, end, rules, cmd.now
    )
    policy = policy_of(service)
    expires_at = cmd.now + timedelta(seconds=service.hold_seconds)
    booking_events: list[Event] = [
        SlotHeld(
            booking_id=cmd.booking_id,
            service_id=service.service_id,
            resources=chosen,
            start=start,
            end=end,
            expires_at=expires_at,
            policy=policy,
            customer=cmd.customer,
            notes=cmd.notes,
            metadata=cmd.metadata,
        )
    ]
    if cmd.confirm:
        booking_events.append(confirmation(policy, cmd.booking_id, None))
    return merge(
        {streams.booking(cmd.tenant, cmd.booking_id): booking_events},
        claim(
            cmd.tenant,
            cmd.booking_id,
            chosen,
            start,
            end,
            policy,
            None if cmd.confirm else expires_at,
        ),
    )


def confirmation(policy: BookingPolicy, booking_id: str, customer: Customer | None) -> Event:
    if policy.requires_confirmation:
        return BookingApprovalRequested(booking_id=booking_id, customer=customer)
    return BookingConfirmed(booking_id=booking_id, customer=customer)


def decide_add_seats(cmd: AddSeats, session: SessionState) -> Appends:
    s = session.scheduled
    if s is None:
        raise NotFound(f"session {cmd.session_id!r} does not exist", session=cmd.session_id)
    if session.status != "scheduled":
        raise InvalidTransition(
            f"session {cmd.session_id!r} is {session.status}", status=session.status
        )
    if cmd.confirm and cmd.customer is None:
        raise ValidationFailed([("customer", "a customer is required with confirm: true")])
    notice = timedelta(minutes=s.min_booking_notice_minutes)
    if s.start < cmd.now + notice or (
        s.max_advance_days is not None and s.start > cmd.now + timedelta(days=s.max_advance_days)
    ):
        raise OutsideBookingWindow(
            f"session {s.session_id!r} at {s.start.isoformat()} is outside its booking window",
            start=s.start.isoformat(),
        )
    left = session.seats_left(cmd.now)
    if cmd.seats > left:
        raise NotEnoughSeats(
            f"{cmd.seats} seats requested, {left} left", seats_left=left, requested=cmd.seats
        )
    policy = BookingPolicy(
        hold_seconds=s.hold_seconds, min_cancel_notice_minutes=s.min_cancel_notice_minutes
    )
    expires_at = cmd.now + timedelta(seconds=s.hold_seconds)
    booking_events: list[Event] = [
        SeatsHeld(
            booking_id=cmd.booking_id,
            session_id=s.session_id,
            resource_id=s.resource_id,
            seats=cmd.seats,
            start=s.start,
            end=s.end,
            expires_at=expires_at,
            policy=policy,
            customer=cmd.customer,
            notes=cmd.notes,
            metadata=cmd.metadata,
        )
    ]
    if cmd.confirm:
        booking_events.append(confirmation(policy, cmd.booking_id, None))
    return {
        streams.booking(cmd.tenant, cmd.booking_id): booking_events,
        streams.session(cmd.tenant, s.session_id): [
            SeatsClaimed(
                session_id=s.session_id,
                booking_id=cmd.booking_id,
                seats=cmd.seats,
                expires_at=None if cmd.confirm else expires_at,
            )
        ],
    }


def _live(booking: Booking, now: datetime, action: str) -> None:
    """Refuse to act on an expired hold or a booking that has ended its life."""
    status = booking.effective_status(now)
    if status == "expired":
        raise HoldExpiredError(
            f"the hold on booking {booking.id!r} expired at "
            f"{booking.expires_at.isoformat() if booking.expires_at else '?'}",
            expires_at=booking.expires_at.isoformat() if booking.expires_at else None,
        )
    if status not in ACTIVE:
        raise InvalidTransition(
            f"cannot {action} a booking that is {status}", status=status, action=action
        )


def _cancel_window(booking: Booking, now: datetime, action: str) -> None:
    cutoff = booking.start - timedelta(minutes=booking.policy.min_cancel_notice_minutes)
    if now > cutoff:
        raise CancelWindowClosed(
            f"a customer may {action} only until {cutoff.isoformat()} "
            f"({booking.policy.min_cancel_notice_minutes} min before the start)",
            cutoff=cutoff.isoformat(),
        )


def decide_booking(
    cmd: BookingCommand,
    booking: Booking,
    *,
    service: ServiceUpserted | None = None,
    catalogue: Mapping[str, ResourceUpserted] | None = None,
    ledgers: Mapping[str, DayLedger] | None = None,
) -> Appends:
    """Decide a command on an existing booking. Reschedule also needs the service, the
    catalogue and the day ledgers of the new time; the others need only the booking."""
    tenant, now = cmd.tenant, cmd.now
    own = streams.booking(tenant, booking.id)
    match cmd:
        case ConfirmBooking():
            if booking.effective_status(now) != "held":
                _live(booking, now, "confirm")
                raise InvalidTransition(
                    f"booking {booking.id!r} is already {booking.status}", status=booking.status
                )
            if cmd.customer is None and booking.customer is None:
                raise ValidationFailed([("customer", "a customer is required to confirm")])
            return merge(
                {own: [confirmation(booking.policy, booking.id, cmd.customer)]},
                reclaim(tenant, booking, None),
            )
        case ApproveBooking() | RejectBooking():
            done = "approved" if isinstance(cmd, ApproveBooking) else "rejected"
            if booking.effective_status(now) != "pending":
                raise InvalidTransition(
                    f"only a pending booking can be {done}; this one is "
                    f"{booking.effective_status(now)}",
                    status=booking.effective_status(now),
                )
            if isinstance(cmd, ApproveBooking):
                return {own: [BookingApproved(booking_id=booking.id, reason=cmd.reason)]}
            return merge(
                {own: [BookingRejected(booking_id=booking.id, reason=cmd.reason)]},
                release(tenant, booking),
            )
        case CancelBooking():
            _live(booking, now, "cancel")
            if cmd.by == "customer":
                _cancel_window(booking, now, "cancel")
            return merge(
                {own: [BookingCancelled(booking_id=booking.id, by=cmd.by, reason=cmd.reason)]},
                release(tenant, booking),
            )
        case ExpireHold():
            if booking.status != "held" or booking.effective_status(now) != "expired":
                return {}
            return merge(
                {own: [HoldExpired(booking_id=booking.id, expired_at=now)]},
                release(tenant, booking),
            )
        case ExtendHold():
            # The state first: a booking that cannot be extended at all says so (409), whatever
            # the length asked for.
            if booking.effective_status(now) != "held":
                _live(booking, now, "extend")
                raise InvalidTransition(
                    f"only a held booking can be extended; this one is {booking.status}",
                    status=booking.status,
                )
            if not 1 <= cmd.seconds <= booking.policy.hold_seconds:
                raise ValidationFailed(
                    [("seconds", f"must be between 1 and {booking.policy.hold_seconds}")]
                )
            assert booking.expires_at is not None
            new_expiry = max(booking.expires_at, now) + timedelta(seconds=cmd.seconds)
            return merge(
                {own: [HoldExtended(booking_id=booking.id, expires_at=new_expiry)]},
                reclaim(tenant, booking, new_expiry),
            )
        case RescheduleBooking():
            return _reschedule(cmd, booking, service, catalogue or {}, ledgers or {})
        case _:
            assert_never(cmd)


def _reschedule(
    cmd: RescheduleBooking,
    booking: Booking,
    service: ServiceUpserted | None,
    catalogue: Mapping[str, ResourceUpserted],
    ledgers: Mapping[str, DayLedger],
) -> Appends:
    tenant, now = cmd.tenant, cmd.now
    _live(booking, now, "reschedule")
    if booking.kind == "seat" or service is None:
        raise InvalidTransition(
            "a seat booking moves with its session; book another session instead",
            status=booking.status,
        )
    if cmd.by == "customer":
        _cancel_window(booking, now, "reschedule")
    duration = duration_for(
        service,
        cmd.duration_minutes
        if cmd.duration_minutes is not None
        else int((booking.end - booking.start).total_seconds() // 60),
    )
    rules = slot_rules(service, duration)
    start, end = cmd.start, cmd.start + timedelta(minutes=duration)
    if not in_booking_window(start, rules, now):
        raise OutsideBookingWindow(
            f"{start.isoformat()} is outside the booking window", start=start.isoformat()
        )
    candidates = booking.resources if service.assignment == "all" else sorted(service.resources)
    chosen = pick_resources(
        tenant,
        service,
        candidates,
        catalogue,
        ledgers,
        start,
        end,
        rules,
        now,
        excluding=booking.id,
        prefer=booking.resources,
    )
    expires_at = booking.expires_at if booking.status == "held" else None
    moved = Booking(**{f: getattr(booking, f) for f in booking.__struct_fields__})
    moved.start, moved.end, moved.resources = start, end, chosen
    new_claims = reclaim(tenant, moved, expires_at)
    old_release = {k: v for k, v in release(tenant, booking).items() if k not in new_claims}
    event = BookingRescheduled(
        booking_id=booking.id,
        start=start,
        end=end,
        resources=chosen,
        previous_start=booking.start,
        previous_end=booking.end,
        previous_resources=booking.resources,
        by=cmd.by,
    )
    return merge({streams.booking(tenant, booking.id): [event]}, old_release, new_claims)
