"""Calendars for the scenarios, set up through slotlog's HTTP API (not measured): resources open
all day every day (so any 15-minute slot of any day is bookable), services on them, sessions,
and the dates and request bodies the scenarios use.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import msgspec

from bench.context import AUTH

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ALL_DAY = {d: [["00:00", "24:00"]] for d in WEEKDAYS}
SLOTS_PER_DAY = 96  # 15-minute slots
CUSTOMER = {"name": "Ada Lovelace", "email": "ada.lovelace@example.com"}
_JSON = msgspec.json.Encoder()


def today() -> date:
    return datetime.now(UTC).date()


def day(offset: int) -> date:
    """A UTC date `offset` days from today."""
    return today() + timedelta(days=offset)


def at(d: date, minutes: int) -> datetime:
    return datetime.combine(d, datetime.min.time(), tzinfo=UTC) + timedelta(minutes=minutes)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def body(value: Any) -> str:
    return _JSON.encode(value).decode()


def resource(name: str) -> dict[str, Any]:
    return {"name": name, "timezone": "UTC", "weekly": ALL_DAY}


def service(resources: Sequence[str], minutes: int = 15) -> dict[str, Any]:
    return {
        "name": "Bench service",
        "duration_minutes": minutes,
        "slot_interval_minutes": 15,
        "resources": list(resources),
        # Holds outlive the run, so the background expirer has nothing to do meanwhile.
        "hold_seconds": 86_400,
    }


async def put_all(base_url: str, *groups: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """PUT every (path, body), group after group (resources before the services naming them),
    16 at a time within a group; each must answer 200 or 201."""
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:
        for items in groups:
            for i in range(0, len(items), 16):
                chunk = items[i : i + 16]
                answers = await asyncio.gather(
                    *(client.put(path, json=b, headers=AUTH) for path, b in chunk)
                )
                for (path, _), a in zip(chunk, answers, strict=True):
                    if a.status_code not in (200, 201):
                        raise RuntimeError(f"PUT {path}: {a.status_code} {a.text[:300]}")


async def get_json(base_url: str, path: str, params: dict[str, str]) -> Any:
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        r = await client.get(path, params=params, headers=AUTH)
        r.raise_for_status()
        return r.json()


async def settle(base_url: str, limit: float = 300) -> float:
    """Wait until the server's asynchronous consumers (projection runner, webhook dispatcher) have
    caught up with the log, as GET /readyz reports, so that a measurement does not share the
    machine with a backlog left by set-up or seeding. Returns the seconds waited."""
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        while True:
            r = await client.get("/readyz")
            projections = r.json().get("projections", {}) if r.status_code == 200 else None
            if projections is not None and all(
                p.get("events_behind", 0) == 0 for p in projections.values()
            ):
                return time.perf_counter() - started
            if time.perf_counter() - started > limit:
                raise TimeoutError(f"the consumers did not catch up in {limit:.0f} s: {r.text}")
            await asyncio.sleep(0.2)
