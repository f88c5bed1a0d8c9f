"""Races through a real uvicorn server with 2 worker processes: exactly one winner per slot, no
overlaps, no 5xx; and the background expirer, one per cluster, records expiries within seconds."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from tests.helpers import WEEKDAYS_9_TO_5, at, iso, parse, weekday_ahead
from tests.processes import serve

SECRET = "sk_race_secret_key_for_tests"
PUBLIC = "pk_race_public_key_for_tests"
AUTH = {"Authorization": f"Bearer {SECRET}"}


@pytest.fixture
def server(database_url: str) -> Iterator[str]:
    env = {
        "DATABASE_URL": database_url,
        "SLOTLOG_BOOTSTRAP_SECRET_KEY": SECRET,
        "SLOTLOG_BOOTSTRAP_PUBLIC_KEY": PUBLIC,
    }
    with serve(env, workers=2) as (base, _proc):
        yield base


async def setup(client: httpx.AsyncClient, **service: Any) -> None:
    r = await client.put(
        "/v1/resources/court", json={"name": "Court", "weekly": WEEKDAYS_9_TO_5}, headers=AUTH
    )
    assert r.status_code == 200, r.text
    body = {"name": "Game", "duration_minutes": 60, "resources": ["court"], **service}
    r = await client.put("/v1/services/game", json=body, headers=AUTH)
    assert r.status_code == 200, r.text


def client_for(base: str) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    return httpx.AsyncClient(base_url=base, limits=limits, timeout=60)


@pytest.mark.slow
async def test_100_concurrent_holds_of_one_slot_give_one_201_and_99_conflicts(
    server: str,
) -> None:
    async with client_for(server) as client:
        await setup(client)
        start = iso(at(weekday_ahead(0), "10:00"))
        answers = await asyncio.gather(
            *(
                client.post("/v1/bookings", json={"service": "game", "start": start}, headers=AUTH)
                for _ in range(100)
            )
        )
    statuses = [a.status_code for a in answers]
    assert statuses.count(201) == 1, statuses
    assert statuses.count(409) == 99, statuses
    assert {a.json()["error"]["code"] for a in answers if a.status_code == 409} == {
        "slot_unavailable"
    }


def overlapping(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return parse(a["start"]) < parse(b["end"]) and parse(b["start"]) < parse(a["end"])


@pytest.mark.slow
async def test_200_concurrent_holds_of_overlapping_slots_never_overlap(server: str) -> None:
    rng = random.Random(20261120)
    day = weekday_ahead(1)
    async with client_for(server) as client:
        await setup(client, durations=[30, 60, 90], duration_minutes=30, slot_interval_minutes=15)
        requests = []
        for _ in range(200):
            duration = rng.choice([30, 60, 90])
            start = at(day, "09:00") + timedelta(minutes=15 * rng.randrange(0, 28))
            requests.append({"service": "game", "start": iso(start), "duration_minutes": duration})
        answers = await asyncio.gather(
            *(client.post("/v1/bookings", json=body, headers=AUTH) for body in requests)
        )
        statuses = [a.status_code for a in answers]
        assert all(s in (201, 409, 422) for s in statuses), statuses
        won = [a.json() for a in answers if a.status_code == 201]
        assert won, "at least one hold must win"
        listed: list[dict[str, Any]] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"status": "held", "limit": 200}
            if cursor:
                params["cursor"] = cursor
            page = (await client.get("/v1/bookings", params=params, headers=AUTH)).json()
            listed += page["data"]
            if not (cursor := page["next_cursor"]):
                break
    assert sorted(b["id"] for b in listed) == sorted(b["id"] for b in won)
    for i, a in enumerate(listed):
        for b in listed[i + 1 :]:
            assert not overlapping(a, b), (a, b)


@pytest.mark.slow
async def test_the_background_expirer_records_an_expired_hold_within_seconds(
    server: str,
) -> None:
    async with client_for(server) as client:
        await setup(client, hold_seconds=1)
        r = await client.post(
            "/v1/bookings",
            json={"service": "game", "start": iso(at(weekday_ahead(0), "11:00"))},
            headers=AUTH,
        )
        assert r.status_code == 201
        booking_id = r.json()["id"]

        async def types() -> list[str]:
            history = await client.get(f"/v1/bookings/{booking_id}/history", headers=AUTH)
            return [e["type"] for e in history.json()["events"]]

        seen: list[str] = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            seen = await types()
            if "HoldExpired" in seen:
                break
            await asyncio.sleep(0.2)
        assert seen == ["SlotHeld", "HoldExpired"], seen
        # Exactly one expirer ran across both worker processes (only the holder of its advisory
        # lock expires holds): one HoldExpired, not two, also a few of its 1 s turns later.
        await asyncio.sleep(3)
        assert await types() == ["SlotHeld", "HoldExpired"]
