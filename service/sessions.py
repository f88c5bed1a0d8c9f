"""Group sessions: scheduling one session or a weekly series, changing a session's details, and the
owner's cancel, as pure decisions that return new events per stream (`Appends`) or raise ApiErrors.

A scheduled session occupies its resource exactly like a booking: it claims the resource-day
ledgers its time touches (`TimeClaimed` with claim id `session:{id}`, which can never collide with
a booking id, and no buffers). Holds, reschedules and the availability read model therefore see it
as busy without knowing sessions exist, and a session is refused when any active claim overlaps it.
A series is one decision over N session streams and all their day ledgers, so the shell appends
all of it atomically or nothing. Owner cancel is one decision over the session stream, every seat
booking's stream and the day ledgers.

Pure: no I/O, no clock (`now` comes on the command), no random ids. Imports only the core
(streams, commands, events, errors, availability, decider); the streams to read are planned in
service/usecases.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo

import msgspec

from service import streams
from service.availability import Busy, SlotRules, is_free
from service.commands import CancelSession, ScheduleSessions
from service.decider import ACTIVE, Appends, Booking, DayLedger, SessionState, claim, merge
from service.errors import (
    InvalidTransition,
    NotEnoughSeats,
    NotFound,
    SlotUnavailable,
    ValidationFailed,
)
from service.events import (
    BookingCancelled,
    BookingPolicy,
    Event,
    HoldExpired,
    ResourceUpserted,
    SeatsReleased,
    SessionCancelled,
    SessionScheduled,
    SessionUpdated,
    TimeClaimed,
    TimeReleased,
)

MAX_LENGTH: Final = timedelta(hours=24)
MAX_REPEAT: Final = 52
MAX_ID_LENGTH: Final = 64
NO_BUFFERS: Final = BookingPolicy()


def claim_id(session_id: str) -> str:
    """The id a session's time is claimed under in the day ledgers (bookings use `bk_…`)."""
    return f"session:{session_id}"


def member_ids(cmd: ScheduleSessions) -> list[str]:
    """The session ids a command schedules: its own id, or `{id}-1` … `{id}-N` for a series."""
    if cmd.repeat_weeks is None:
        return [cmd.session_id]
    return [f"{cmd.session_id}-{k}" for k in range(1, cmd.repeat_weeks + 1)]


def check(cmd: ScheduleSessions) -> None:
    """The rules on a schedule command's own fields (those needing no state)."""
    errors: list[tuple[str, str]] = []
    if cmd.end <= cmd.start:
        errors.append(("end", "must be after start"))
    elif cmd.end - cmd.start > MAX_LENGTH:
        errors.append(("end", "a session may last at most 24 hours"))
    if cmd.repeat_weeks is not None:
        if not 1 <= cmd.repeat_weeks <= MAX_REPEAT:
            errors.append(("repeat.count", f"must be between 1 and {MAX_REPEAT}"))
        elif len(member_ids(cmd)[-1]) > MAX_ID_LENGTH:
            errors.append(
                (
                    "id",
                    f"a series id may have at most {MAX_ID_LENGTH - len(f'-{cmd.repeat_weeks}')} "
                    f"characters: its sessions are named '<id>-1' … '<id>-{cmd.repeat_weeks}'",
                )
            )
    if errors:
        raise ValidationFailed(errors)


@dataclass(frozen=True, slots=True)
class Occurrence:
    session_id: str
    start: datetime
    end: datetime


def occurrences(cmd: ScheduleSessions, timezone: str) -> list[Occurrence]:
    """Every session the command schedules. Series members keep the first one's local wall time
    in the resource's timezone, a week apart (a 09:00 class stays at 09:00 across a change of
    daylight-saving time), and its length."""
    zone = ZoneInfo(timezone)
    length = cmd.end - cmd.start
    wall = cmd.start.astimezone(zone).replace(tzinfo=None)
    out: list[Occurrence] = []
    for k, session_id in enumerate(member_ids(cmd)):
        start = (
            cmd.start
            if k == 0
            else (wall + timedelta(weeks=k)).replace(tzinfo=zone).astimezone(UTC)
        )
        out.append(Occurrence(session_id, start, start + length))
    return out


def scheduled(cmd: ScheduleSessions, occurrence: Occurrence) -> SessionScheduled:
    return SessionScheduled(
        session_id=occurrence.session_id,
        resource_id=cmd.resource_id,
        start=occurrence.start,
        end=occurrence.end,
        title=cmd.title,
        description=cmd.description,
        location=cmd.location,
        max_seats=cmd.max_seats,
        min_booking_notice_minutes=cmd.min_booking_notice_minutes,
        max_advance_days=cmd.max_advance_days,
        min_cancel_notice_minutes=cmd.min_cancel_notice_minutes,
        hold_seconds=cmd.hold_seconds,
        series_id=cmd.session_id if cmd.repeat_weeks is not None else None,
        metadata=cmd.metadata,
    )


def first_conflict(
    tenant: str,
    resource_id: str,
    occurrence: Occurrence,
    ledgers: Mapping[str, DayLedger],
    now: datetime,
) -> TimeClaimed | None:
    """The earliest active claim (a booking with its buffers, or another session) that the
    occurrence's time would overlap, among the loaded day ledgers of the resource."""
    own = claim_id(occurrence.session_id)
    prefix = streams.resource_days_prefix(tenant, resource_id)
    seen: dict[str, TimeClaimed] = {}
    for stream_id, ledger in ledgers.items():
        if stream_id.startswith(prefix):
            for cid, c in ledger.claims.items():
                if cid != own:
                    seen.setdefault(cid, c)
    length = occurrence.end - occurrence.start
    rules = SlotRules(duration=length, interval=length)
    for c in sorted(seen.values(), key=lambda c: (c.start, c.claim_id)):
        busy = Busy(c.start, c.end, c.block_start, c.block_end, c.expires_at)
        if not is_free([busy], occurrence.start, occurrence.end, rules, now):
            return c
    return None


def _refuse_conflict(
    resource: ResourceUpserted, occurrence: Occurrence, c: TimeClaimed
) -> SlotUnavailable:
    day = occurrence.start.astimezone(ZoneInfo(resource.timezone)).date().isoformat()
    if c.claim_id.startswith("session:"):
        what = f"session {c.claim_id.removeprefix('session:')!r}"
        other = {"conflicting_session": c.claim_id.removeprefix("session:")}
    else:
        what = f"booking {c.claim_id!r}"
        other = {"conflicting_booking": c.claim_id}
    return SlotUnavailable(
        f"resource {resource.resource_id!r} is not free on {day}: the session "
        f"{occurrence.session_id!r} ({occurrence.start.isoformat()} to "
        f"{occurrence.end.isoformat()}) overlaps {what} ({c.start.isoformat()} to "
        f"{c.end.isoformat()})",
        date=day,
        resource=resource.resource_id,
        session=occurrence.session_id,
        start=occurrence.start.isoformat(),
        end=occurrence.end.isoformat(),
        conflict={"start": c.start.isoformat(), "end": c.end.isoformat()},
        **other,
    )


def _change(tenant: str, now: datetime, wanted: SessionScheduled, state: SessionState) -> Appends:
    """A re-PUT of an existing session: identical → nothing; other details → SessionUpdated;
    its resource or time → refused (seat bookings were made for that time)."""
    current = state.scheduled
    assert current is not None
    if (current.resource_id, current.start, current.end) != (
        wanted.resource_id,
        wanted.start,
        wanted.end,
    ):
        raise InvalidTransition(
            f"session {current.session_id!r} is already scheduled on {current.resource_id!r} "
            f"from {current.start.isoformat()} to {current.end.isoformat()}; its resource and "
            "time cannot change (cancel it and schedule another)",
            status=state.status,
            session=current.session_id,
        )
    wanted = msgspec.structs.replace(wanted, series_id=current.series_id)
    if wanted == current:
        return {}
    if state.status != "scheduled":
        raise InvalidTransition(
            f"session {current.session_id!r} is {state.status}; it cannot be changed",
            status=state.status,
            session=current.session_id,
        )
    taken, held = state.seats(now)
    if wanted.max_seats < taken + held:
        raise NotEnoughSeats(
            f"max_seats {wanted.max_seats} is below the {taken + held} seats already taken "
            f"({taken}) or held ({held}) on session {current.session_id!r}",
            seats_taken=taken,
            seats_held=held,
            max_seats=wanted.max_seats,
        )
    update = SessionUpdated(
        session_id=wanted.session_id,
        title=wanted.title,
        description=wanted.description,
        location=wanted.location,
        max_seats=wanted.max_seats,
        min_booking_notice_minutes=wanted.min_booking_notice_minutes,
        max_advance_days=wanted.max_advance_days,
        min_cancel_notice_minutes=wanted.min_cancel_notice_minutes,
        hold_seconds=wanted.hold_seconds,
        metadata=wanted.metadata,
    )
    return {streams.session(tenant, wanted.session_id): [update]}


def decide_schedule(
    cmd: ScheduleSessions,
    resource: ResourceUpserted | None,
    sessions: Mapping[str, SessionState],
    ledgers: Mapping[str, DayLedger],
) -> Appends:
    """Schedule every occurrence, or raise for the first that cannot be: all or none.

    `sessions` holds the current state of each member's stream (missing or empty = new);
    `ledgers` the resource's day ledgers that the new occurrences touch. Working hours are not
    required: a class may be scheduled outside the resource's bookable hours.
    """
    check(cmd)
    if resource is None:
        raise ValidationFailed([("resource", f"resource {cmd.resource_id!r} does not exist")])
    out: Appends = {}
    for occurrence in occurrences(cmd, resource.timezone):
        wanted = scheduled(cmd, occurrence)
        state = sessions.get(occurrence.session_id)
        if state is not None and state.scheduled is not None:
            out = merge(out, _change(cmd.tenant, cmd.now, wanted, state))
            continue
        if occurrence.start <= cmd.now:
            raise ValidationFailed(
                [("start", f"{occurrence.start.isoformat()} is not in the future")]
            )
        conflict = first_conflict(cmd.tenant, cmd.resource_id, occurrence, ledgers, cmd.now)
        if conflict is not None:
            raise _refuse_conflict(resource, occurrence, conflict)
        out = merge(
            out,
            {streams.session(cmd.tenant, occurrence.session_id): [wanted]},
            claim(
                cmd.tenant,
                claim_id(occurrence.session_id),
                [cmd.resource_id],
                occurrence.start,
                occurrence.end,
                NO_BUFFERS,
                None,
            ),
        )
    return out


def decide_cancel_session(
    cmd: CancelSession, session: SessionState, bookings: Mapping[str, Booking | None]
) -> Appends:
    """The owner cancels the session: one atomic step over the session stream (SessionCancelled,
    every seat claim released), every seat booking's stream, and the day ledgers (the time is
    free again).

    `bookings` are the bookings named by the session's seat claims. An active one (held and not
    expired, pending, confirmed) gets BookingCancelled by the owner with the message as reason.
    A hold already past its expiry gets the HoldExpired the expirer would have written: it was
    never cancelled, and the expirer then has nothing left to do for it.
    """
    s = session.scheduled
    if s is None:
        raise NotFound(f"session {cmd.session_id!r} does not exist", session=cmd.session_id)
    if session.status != "scheduled":
        raise InvalidTransition(
            f"session {cmd.session_id!r} is already {session.status}",
            status=session.status,
            session=cmd.session_id,
        )
    tenant, now = cmd.tenant, cmd.now
    own: list[Event] = [SessionCancelled(session_id=s.session_id, message=cmd.message)]
    out: Appends = {}
    for booking_id in sorted(session.claims):
        own.append(SeatsReleased(session_id=s.session_id, booking_id=booking_id))
        booking = bookings.get(booking_id)
        if booking is None:
            continue
        status = booking.effective_status(now)
        if status in ACTIVE:
            out[streams.booking(tenant, booking_id)] = [
                BookingCancelled(booking_id=booking_id, by="owner", reason=cmd.message)
            ]
        elif status == "expired" and booking.status == "held":
            out[streams.booking(tenant, booking_id)] = [
                HoldExpired(booking_id=booking_id, expired_at=now)
            ]
    out[streams.session(tenant, s.session_id)] = own
    for day in streams.utc_days(s.start, s.end):
        out[streams.resource_day(tenant, s.resource_id, day)] = [
            TimeReleased(
                resource_id=s.resource_id, day=day.isoformat(), claim_id=claim_id(s.session_id)
            )
        ]
    return out
