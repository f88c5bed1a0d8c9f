"""The facts: every event slotlog records, as frozen msgspec Structs forming one tagged union.

Events are past tense and never change shape incompatibly: never rename a class or change a field's
type; a new field gets a default so old events stay readable. The union's tag is the class name,
stored in the `type` column and inside `data`. This module owns the encoder and decoder (built once)
and the event metadata; it imports nothing with I/O.

Streams (see service/streams.py for why): a booking's own lifecycle lives in its booking stream;
the occupancy ledgers (`TimeClaimed`/`TimeReleased` per resource and UTC day, `SeatsClaimed`/
`SeatsReleased` per session) are what concurrent commands compare-and-set on.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", gc=False):
    """A fact. Never rename a class or change a field's type; add fields with defaults.

    `gc=False` (here, on Customer and BookingPolicy, which events hold, and on the states folded
    from them): data decoded from JSON never refers back to itself, so the cycle collector has
    nothing to find in it, and untracked objects are smaller and cheaper to make and free. A
    replay makes millions of them (3.5 % of its fold's instructions, callgrind)."""


class EventMeta(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Who and what caused an append; stored in the `metadata` column of every event it wrote."""

    tenant: str
    actor: str | None = None
    request_id: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    idempotency_key: str | None = None
    reason: str | None = None


class Customer(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    omit_defaults=True,
    forbid_unknown_fields=True,
    gc=False,
):
    name: str | None = None
    email: str | None = None
    phone: str | None = None
    timezone: str | None = None
    metadata: dict[str, Any] | None = None


class BookingPolicy(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The terms a booking was made under, copied from its service or session when it was held."""

    hold_seconds: int = 600
    requires_confirmation: bool = False
    min_cancel_notice_minutes: int = 0
    buffer_before_minutes: int = 0
    buffer_after_minutes: int = 0


# ── catalogue ──────────────────────────────────────────────────────────────


class ResourceUpserted(Event, frozen=True, kw_only=True):
    resource_id: str
    name: str
    timezone: str
    weekly: dict[str, list[tuple[str, str]]]
    overrides: dict[str, list[tuple[str, str]]]
    metadata: dict[str, Any]


class ServiceUpserted(Event, frozen=True, kw_only=True):
    service_id: str
    name: str
    durations: list[int]
    slot_interval_minutes: int
    buffer_before_minutes: int = 0
    buffer_after_minutes: int = 0
    min_notice_minutes: int = 0
    max_advance_days: int | None = None
    hold_seconds: int = 600
    requires_confirmation: bool = False
    min_cancel_notice_minutes: int = 0
    resources: list[str]
    assignment: Literal["any", "all"] = "any"
    metadata: dict[str, Any] = {}


# ── a booking's lifecycle (booking stream) ──────────────────────────────────


class SlotHeld(Event, frozen=True, kw_only=True):
    booking_id: str
    service_id: str
    resources: list[str]
    start: datetime
    end: datetime
    expires_at: datetime
    policy: BookingPolicy
    customer: Customer | None = None
    notes: str | None = None
    metadata: dict[str, Any] = {}


class SeatsHeld(Event, frozen=True, kw_only=True):
    booking_id: str
    session_id: str
    resource_id: str
    seats: int
    start: datetime
    end: datetime
    expires_at: datetime
    policy: BookingPolicy
    customer: Customer | None = None
    notes: str | None = None
    metadata: dict[str, Any] = {}


class HoldExtended(Event, frozen=True, kw_only=True):
    booking_id: str
    expires_at: datetime


class BookingConfirmed(Event, frozen=True, kw_only=True):
    booking_id: str
    customer: Customer | None = None


class BookingApprovalRequested(Event, frozen=True, kw_only=True):
    booking_id: str
    customer: Customer | None = None


class BookingApproved(Event, frozen=True, kw_only=True):
    booking_id: str
    reason: str | None = None


class BookingRejected(Event, frozen=True, kw_only=True):
    booking_id: str
    reason: str | None = None


class BookingCancelled(Event, frozen=True, kw_only=True):
    booking_id: str
    by: Literal["customer", "owner"]
    reason: str | None = None


class HoldExpired(Event, frozen=True, kw_only=True):
    booking_id: str
    expired_at: datetime


class BookingRescheduled(Event, frozen=True, kw_only=True):
    booking_id: str
    start: datetime
    end: datetime
    resources: list[str]
    previous_start: datetime
    previous_end: datetime
    previous_resources: list[str]
    by: Literal["customer", "owner"] = "owner"


# ── sessions (session stream) ───────────────────────────────────────────────


class SessionScheduled(Event, frozen=True, kw_only=True):
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


class SessionCancelled(Event, frozen=True, kw_only=True):
    session_id: str
    message: str | None = None


class SessionUpdated(Event, frozen=True, kw_only=True):
    """The owner changed a scheduled session's details (never its resource or time). Carries the
    whole new set of editable fields; seat bookings keep the terms they were made under."""

    session_id: str
    title: str
    description: str | None = None
    location: str | None = None
    max_seats: int
    min_booking_notice_minutes: int = 0
    max_advance_days: int | None = None
    min_cancel_notice_minutes: int = 0
    hold_seconds: int = 600
    metadata: dict[str, Any] = {}


# ── occupancy ledgers ───────────────────────────────────────────────────────


class TimeClaimed(Event, frozen=True, kw_only=True):
    """`claim_id` (a booking or session id) occupies `resource_id` on the stream's UTC day.
    A later claim with the same id replaces the earlier one (confirm, extend, reschedule)."""

    resource_id: str
    day: str
    claim_id: str
    start: datetime
    end: datetime
    block_start: datetime
    block_end: datetime
    expires_at: datetime | None = None


class TimeReleased(Event, frozen=True, kw_only=True):
    resource_id: str
    day: str
    claim_id: str


class SeatsClaimed(Event, frozen=True, kw_only=True):
    session_id: str
    booking_id: str
    seats: int
    expires_at: datetime | None = None


class SeatsReleased(Event, frozen=True, kw_only=True):
    session_id: str
    booking_id: str


AnyEvent = (
    ResourceUpserted
    | ServiceUpserted
    | SlotHeld
    | SeatsHeld
    | HoldExtended
    | BookingConfirmed
    | BookingApprovalRequested
    | BookingApproved
    | BookingRejected
    | BookingCancelled
    | HoldExpired
    | BookingRescheduled
    | SessionScheduled
    | SessionCancelled
    | SessionUpdated
    | TimeClaimed
    | TimeReleased
    | SeatsClaimed
    | SeatsReleased
)

ENCODER = msgspec.json.Encoder()
DECODER: msgspec.json.Decoder[AnyEvent] = msgspec.json.Decoder(AnyEvent)
META_DECODER = msgspec.json.Decoder(EventMeta)


def type_name(event: Event) -> str:
    """The tag stored in the `type` column: the class name."""
    return type(event).__name__


def encode(event: Event) -> str:
    return ENCODER.encode(event).decode()


def decode(data: str | bytes) -> AnyEvent:
    return DECODER.decode(data)
