"""Resources and services: the request bodies of their upserts and the rules they must meet,
turned into `ResourceUpserted` / `ServiceUpserted` events. Pure: no I/O.
"""

from __future__ import annotations

import re
import zoneinfo
from functools import cache
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from service.availability import validate_hours
from service.errors import ValidationFailed
from service.events import ResourceUpserted, ServiceUpserted

# `(?!\n)`: Python's `$` also matches before a final newline, so "abc\n" passed (msgspec's
# patterns search as `re.search` does); written so that JSON Schema's (ECMA) regexes agree.
ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}(?!\n)$"
ID_RE = re.compile(ID_PATTERN)
MAX_METADATA_BYTES = 4096
MAX_METADATA_DEPTH = 32

Minutes = Annotated[int, Meta(ge=0, le=525_600)]
Name = Annotated[str, Meta(min_length=1, max_length=200)]
ClientId = Annotated[str, Meta(pattern=ID_PATTERN)]
# An interval is ["HH:MM", "HH:MM"]; a two-item list rather than a tuple keeps the JSON schema
# plain (no prefixItems), which every OpenAPI tool understands.
Interval = Annotated[list[str], Meta(min_length=2, max_length=2)]
Hours = dict[str, list[Interval]]


class Body(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class ResourceBody(Body, kw_only=True):
    name: Name
    timezone: str = "UTC"
    weekly: Hours = {}
    overrides: Hours = {}
    metadata: dict[str, Any] = {}


class ServiceBody(Body, kw_only=True):
    name: Name
    resources: Annotated[list[ClientId], Meta(min_length=1, max_length=100)]
    duration_minutes: Annotated[int, Meta(ge=1, le=1440)] | None = None
    durations: Annotated[list[Annotated[int, Meta(ge=1, le=1440)]], Meta(min_length=1)] | None = (
        None
    )
    slot_interval_minutes: Annotated[int, Meta(ge=1, le=1440)] | None = None
    buffer_before_minutes: Annotated[int, Meta(ge=0, le=1440)] = 0
    buffer_after_minutes: Annotated[int, Meta(ge=0, le=1440)] = 0
    min_notice_minutes: Minutes = 0
    max_advance_days: Annotated[int, Meta(ge=1, le=3650)] | None = None
    hold_seconds: Annotated[int, Meta(ge=1, le=86_400)] = 600
    requires_confirmation: bool = False
    min_cancel_notice_minutes: Minutes = 0
    assignment: Literal["any", "all"] = "any"
    metadata: dict[str, Any] = {}


@cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def valid_timezone(name: str) -> bool:
    return name in _zones()


def check_id(kind: str, value: str) -> None:
    if not ID_RE.match(value):
        raise ValidationFailed(
            [("id", f"invalid {kind} id {value!r}: expected 1-64 of A-Z a-z 0-9 _ . -")]
        )


def check_metadata(metadata: dict[str, Any], path: str = "metadata") -> list[tuple[str, str]]:
    if _deeper_than(metadata, MAX_METADATA_DEPTH):
        return [(path, f"metadata may nest objects and arrays {MAX_METADATA_DEPTH} deep at most")]
    size = len(msgspec.json.encode(metadata))
    if size > MAX_METADATA_BYTES:
        return [(path, f"metadata is {size} bytes; at most {MAX_METADATA_BYTES} are allowed")]
    return []


def _deeper_than(value: Any, limit: int) -> bool:
    """Do objects and arrays nest in `value` more than `limit` deep (itself counting one)? Far
    deeper JSON is stored, but reading its event back (for every later command on the stream,
    and for the hold expirer) runs out of Python's recursion limit."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def resource_upserted(resource_id: str, body: ResourceBody) -> ResourceUpserted:
    check_id("resource", resource_id)
    errors: list[tuple[str, str]] = []
    if not valid_timezone(body.timezone):
        errors.append(("timezone", f"unknown IANA timezone {body.timezone!r}"))
    errors += validate_hours(body.weekly, body.overrides)
    errors += check_metadata(body.metadata)
    if errors:
        raise ValidationFailed(errors)
    return ResourceUpserted(
        resource_id=resource_id,
        name=body.name,
        timezone=body.timezone,
        weekly={k: [tuple(i) for i in v] for k, v in body.weekly.items()},  # type: ignore[misc]
        overrides={k: [tuple(i) for i in v] for k, v in body.overrides.items()},  # type: ignore[misc]
        metadata=body.metadata,
    )


def service_upserted(service_id: str, body: ServiceBody) -> ServiceUpserted:
    check_id("service", service_id)
    errors: list[tuple[str, str]] = []
    if body.durations is not None:
        durations = list(dict.fromkeys(body.durations))
        if body.duration_minutes is not None and body.duration_minutes not in durations:
            errors.append(("duration_minutes", "must be one of durations when both are given"))
        elif body.duration_minutes is not None:
            # The default duration goes first.
            durations.remove(body.duration_minutes)
            durations.insert(0, body.duration_minutes)
    elif body.duration_minutes is not None:
        durations = [body.duration_minutes]
    else:
        durations = []
        errors.append(("duration_minutes", "give duration_minutes or durations"))
    if len(set(body.resources)) != len(body.resources):
        errors.append(("resources", "a resource is listed twice"))
    errors += check_metadata(body.metadata)
    if errors:
        raise ValidationFailed(errors)
    return ServiceUpserted(
        service_id=service_id,
        name=body.name,
        durations=durations,
        slot_interval_minutes=body.slot_interval_minutes or durations[0],
        buffer_before_minutes=body.buffer_before_minutes,
        buffer_after_minutes=body.buffer_after_minutes,
        min_notice_minutes=body.min_notice_minutes,
        max_advance_days=body.max_advance_days,
        hold_seconds=body.hold_seconds,
        requires_confirmation=body.requires_confirmation,
        min_cancel_notice_minutes=body.min_cancel_notice_minutes,
        resources=list(body.resources),
        assignment=body.assignment,
        metadata=body.metadata,
    )
