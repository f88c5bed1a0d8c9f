"""Response shapes, as msgspec Structs: endpoints build these, and /openapi.json is generated
from them (and from the request Structs), so the document cannot drift from the answers."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

from service.catalogue import Hours
from service.events import Customer


class View(msgspec.Struct, kw_only=True):
    pass


class ErrorDetail(View, kw_only=True):
    code: str
    message: str
    details: dict[str, Any]


class ErrorBody(View, kw_only=True):
    error: ErrorDetail


class ResourceView(View, kw_only=True):
    id: str
    name: str
    timezone: str
    weekly: Hours
    overrides: Hours
    metadata: dict[str, Any]
    version: int
    position: int


class ServiceView(View, kw_only=True):
    id: str
    name: str
    duration_minutes: int
    durations: list[int]
    slot_interval_minutes: int
    buffer_before_minutes: int
    buffer_after_minutes: int
    min_notice_minutes: int
    max_advance_days: int | None
    hold_seconds: int
    requires_confirmation: bool
    min_cancel_notice_minutes: int
    resources: list[str]
    assignment: Literal["any", "all"]
    metadata: dict[str, Any]
    version: int
    position: int


class BookingView(View, kw_only=True):
    id: str
    kind: Literal["slot", "seat"]
    status: Literal["held", "pending", "confirmed", "cancelled", "rejected", "expired"]
    service: str | None
    session: str | None
    resources: list[str]
    start: datetime
    end: datetime
    seats: int | None
    customer: Customer | None
    notes: str | None
    metadata: dict[str, Any]
    expires_at: datetime | None
    version: int
    position: int
    created_at: datetime | None
    updated_at: datetime | None
    cancelled_by: Literal["customer", "owner"] | None
    reason: str | None


class SlotView(View, kw_only=True):
    start: datetime
    end: datetime
    resources: list[str]


class AvailabilityView(View, kw_only=True):
    service: str
    timezone: str
    data: list[SlotView]
    next_cursor: None = None


class DaySlots(View, kw_only=True):
    date: str
    slots: list[SlotView]


class AvailabilityByDay(View, kw_only=True):
    service: str
    timezone: str
    days: list[DaySlots]


class HistoryEntry(View, kw_only=True):
    position: int
    version: int
    type: str
    data: dict[str, Any]
    recorded_at: datetime
    actor: str | None
    reason: str | None
    request_id: str | None


class HistoryView(View, kw_only=True):
    booking_id: str
    events: list[HistoryEntry]


class BookingPage(View, kw_only=True):
    data: list[BookingView]
    next_cursor: str | None


class ResourcePage(View, kw_only=True):
    data: list[ResourceView]
    next_cursor: str | None


class ServicePage(View, kw_only=True):
    data: list[ServiceView]
    next_cursor: str | None


class Health(View, kw_only=True):
    status: str
