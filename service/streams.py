"""Stream boundaries: which stream every fact belongs to, and why.

A command must decide on state that no concurrent command can change unseen, so the streams it
reads are appended with expected versions. The boundaries are chosen so that (1) a command's cost
does not grow with history and (2) contention stays local:

- `{tenant}:bk:{booking_id}` — one booking's lifecycle (held, confirmed, cancelled, …): its
  audit trail. Short by nature.
- `{tenant}:rd:{resource_id}:{YYYY-MM-DD}` — the occupancy ledger of one resource on one UTC day:
  `TimeClaimed` / `TimeReleased`. A booking (or session) claims every day stream its blocked time
  (own time plus its buffers) touches. To decide whether [start, end) with buffers is free, a
  command reads and compare-and-sets exactly the day streams the candidate's blocked time touches:
  any conflicting claim must overlap that range, so it is recorded in one of those streams. A
  resource with 100,000 past bookings therefore books as fast as a new one (a day stream holds one
  day), and two bookings on different resources or days never touch the same stream. A booking
  across midnight, or on several resources, is one atomic multi-stream append.
- `{tenant}:ss:{session_id}` — a group session: `SessionScheduled`, `SessionCancelled`, and its
  seat ledger (`SeatsClaimed` / `SeatsReleased`), so seat counts are checked against one version.
- `{tenant}:res:{id}`, `{tenant}:svc:{id}` — catalogue upserts; the last event is the state.

Every read-model row is a fold of exactly one stream, so the inline projection, the background
runner and replay all use the same pure functions (projections/).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta


def booking(tenant: str, booking_id: str) -> str:
    return f"{tenant}:bk:{booking_id}"


def session(tenant: str, session_id: str) -> str:
    return f"{tenant}:ss:{session_id}"


def resource(tenant: str, resource_id: str) -> str:
    return f"{tenant}:res:{resource_id}"


def service(tenant: str, service_id: str) -> str:
    return f"{tenant}:svc:{service_id}"


def resource_day(tenant: str, resource_id: str, day: date) -> str:
    return f"{tenant}:rd:{resource_id}:{day.isoformat()}"


def resource_days_prefix(tenant: str, resource_id: str) -> str:
    return f"{tenant}:rd:{resource_id}:"


def kind_of(stream_id: str) -> str:
    """'bk', 'rd', 'ss', 'res' or 'svc'."""
    return stream_id.split(":", 2)[1]


_TICK = timedelta(microseconds=1)


def utc_days(start: datetime, end: datetime) -> list[date]:
    """The UTC dates that the half-open range [start, end) touches (at least start's)."""
    first = (start if start.tzinfo is UTC else start.astimezone(UTC)).date()
    last = ((end if end.tzinfo is UTC else end.astimezone(UTC)) - _TICK).date()
    if last <= first:  # most ranges: one day
        return [first]
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def day_start(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)
