"""Shared test helpers: dates relative to today, and calendar set-up through the real API."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from tests.conftest import Api

WEEKDAYS_9_TO_5 = {d: [["09:00", "17:00"]] for d in ("mon", "tue", "wed", "thu", "fri")}


def weekday_ahead(weekday: int = 0, weeks: int = 2) -> date:
    """A date `weeks` weeks ahead falling on `weekday` (0 = Monday)."""
    today = datetime.now(UTC).date()
    return today + timedelta(days=(weekday - today.weekday()) % 7 + 7 * weeks)


def at(day: date, hhmm: str, zone: str = "UTC") -> datetime:
    h, m = (int(x) for x in hhmm.split(":"))
    return datetime.combine(day, time(h, m), tzinfo=ZoneInfo(zone)).astimezone(UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def resource(api: Api, rid: str, *, zone: str = "UTC", **extra: Any) -> dict[str, Any]:
    body = {"name": rid.title(), "timezone": zone, "weekly": WEEKDAYS_9_TO_5, **extra}
    r = await api.put(f"/v1/resources/{rid}", body)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def service(api: Api, sid: str, resources: list[str], **extra: Any) -> dict[str, Any]:
    body = {"name": sid.title(), "duration_minutes": 60, "resources": resources, **extra}
    r = await api.put(f"/v1/services/{sid}", body)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def slots(api: Api, service_id: str, day: date, **params: Any) -> list[dict[str, Any]]:
    query = {"service": service_id, "from": day.isoformat(), "to": day.isoformat(), **params}
    r = await api.get("/v1/availability", params=query)
    assert r.status_code == 200, r.text
    return list(r.json()["data"])


async def starts(api: Api, service_id: str, day: date, **params: Any) -> list[datetime]:
    return [parse(s["start"]) for s in await slots(api, service_id, day, **params)]


async def hold(api: Api, service_id: str, start: datetime, **extra: Any) -> dict[str, Any]:
    r = await api.post("/v1/bookings", {"service": service_id, "start": iso(start), **extra})
    assert r.status_code == 201, r.text
    return dict(r.json())
