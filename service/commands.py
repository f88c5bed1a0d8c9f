"""Intents: the commands slotlog decides on, imperative and stamped with `now` and new ids by the
HTTP layer, so the decider never reads a clock or draws a random number. Pure data; no I/O.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

from service.events import Customer

By = Literal["customer", "owner"]


class Command(msgspec.Struct, frozen=True, kw_only=True):
    tenant: str
    now: datetime


class HoldSlot(Command, frozen=True, kw_only=True):
    booking_id: str
    service_id: str
    start: datetime
    duration_minutes: int | None = None
    resources: list[str] | None = None
    customer: Customer | None = None
    notes: str | None = None
    metadata: dict[str, Any] = {}
    confirm: bool = False


class AddSeats(Command, frozen=True, kw_only=True):
    booking_id: str
    session_id: str
    seats: int
    customer: Customer | None = None
    notes: str | None = None
    metadata: dict[str, Any] = {}
    confirm: bool = False


class ConfirmBooking(Command, frozen=True, kw_only=True):
    booking_id: str
    customer: Customer | None = None


class ApproveBooking(Command, frozen=True, kw_only=True):
    booking_id: str
    reason: str | None = None


class RejectBooking(Command, frozen=True, kw_only=True):
    booking_id: str
    reason: str | None = None


class CancelBooking(Command, frozen=True, kw_only=True):
    booking_id: str
    by: By = "owner"
    reason: str | None = None


class RescheduleBooking(Command, frozen=True, kw_only=True):
    booking_id: str
    start: datetime
    duration_minutes: int | None = None
    by: By = "owner"


class ExtendHold(Command, frozen=True, kw_only=True):
    booking_id: str
    seconds: int


class ExpireHold(Command, frozen=True, kw_only=True):
    booking_id: str


class ScheduleSessions(Command, frozen=True, kw_only=True):
    """Schedule (or re-PUT) one session with id `session_id`, or, with `repeat_weeks` = N, a
    weekly series of N sessions `{session_id}-1` … `{session_id}-N` sharing series id
    `session_id`, all or none."""

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
    metadata: dict[str, Any] = {}
    repeat_weeks: int | None = None


class CancelSession(Command, frozen=True, kw_only=True):
    """The owner cancels a session and every active seat booking on it."""

    session_id: str
    message: str | None = None


BookingCommand = (
    ConfirmBooking
    | ApproveBooking
    | RejectBooking
    | CancelBooking
    | RescheduleBooking
    | ExtendHold
    | ExpireHold
)
