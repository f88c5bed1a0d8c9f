"""Seats under contention through a real uvicorn server with 2 worker processes: a session never
sells more seats than it has, losers get 409 `not_enough_seats` (never a 5xx), and holds count
against the seats until they expire, then free them at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta
from typing import Any

import httpx
import pytest

from tests.processes import serve

SECRET = "sk_test_sessions_race_secret"
PUBLIC = "pk_test_sessions_race_public"
AUTH = {"Authorization": f"Bearer {SECRET}"}
PUBLIC_AUTH = {"Authorization": f"Bearer {PUBLIC}"}


@pytest.fixture
def server(database_url: str) -> Iterator[str]:
    env = {
        "DATABASE_URL": database_url,
        "SLOTLOG_BOOTSTRAP_SECRET_KEY": SECRET,
        "SLOTLOG_BOOTSTRAP_PUBLIC_KEY": PUBLIC,
    }
    with serve(env, workers=2) as (base, _proc):
        yield base


def client_for(base: str) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    return httpx.AsyncClient(base_url=base, limits=limits, timeout=60)


def two_weeks_ahead(hour: int) -> str:
    day = datetime.now(UTC).date() + timedelta(days=14)
    return datetime.combine(day, time(hour), tzinfo=UTC).isoformat()


async def schedule(client: httpx.AsyncClient, sid: str, hour: int, **extra: Any) -> None:
    r = await client.put(
        "/v1/resources/studio", json={"name": "Studio", "timezone": "UTC"}, headers=AUTH
    )
    assert r.status_code == 200, r.text
    start = datetime.fromisoformat(two_weeks_ahead(hour))
    body = {
        "resource": "studio",
        "start": start.isoformat(),
        "end": (start + timedelta(hours=1)).isoformat(),
        "title": "Spin class",
        **extra,
    }
    r = await client.put(f"/v1/sessions/{sid}", json=body, headers=AUTH)
    assert r.status_code == 201, r.text


async def seats_of(client: httpx.AsyncClient, sid: str) -> dict[str, int]:
    r = await client.get("/v1/sessions", headers=PUBLIC_AUTH)
    assert r.status_code == 200, r.text
    [found] = [s for s in r.json()["data"] if s["id"] == sid]
    return dict(found["seats"])


@pytest.mark.slow
async def test_40_concurrent_one_seat_bookings_on_10_seats_give_10_wins(server: str) -> None:
    async with client_for(server) as client:
        await schedule(client, "spin", 10, max_seats=10)
        answers = await asyncio.gather(
            *(
                client.post(
                    "/v1/sessions/spin/bookings",
                    json={
                        "seats": 1,
                        "confirm": True,
                        "customer": {"name": f"Rider {n}", "email": f"rider{n}@example.com"},
                    },
                    headers=AUTH,
                )
                for n in range(40)
            )
        )
        statuses = [a.status_code for a in answers]
        assert statuses.count(201) == 10, statuses
        assert statuses.count(409) == 30, statuses
        assert {a.json()["error"]["code"] for a in answers if a.status_code == 409} == {
            "not_enough_seats"
        }
        assert {
            a.json()["error"]["details"]["seats_left"] for a in answers if a.status_code == 409
        } == {0}
        assert await seats_of(client, "spin") == {"max": 10, "taken": 10, "held": 0, "left": 0}
        r = await client.get("/v1/sessions/spin", params={"include": "bookings"}, headers=AUTH)
        winners = {a.json()["id"] for a in answers if a.status_code == 201}
        assert {b["id"] for b in r.json()["bookings"]} == winners
        assert all(b["status"] == "confirmed" for b in r.json()["bookings"])


@pytest.mark.slow
async def test_holds_count_until_they_expire_then_free_their_seats_at_once(server: str) -> None:
    async with client_for(server) as client:
        await schedule(client, "long", 12, max_seats=6, hold_seconds=600)
        answers = await asyncio.gather(
            *(
                client.post(
                    "/v1/sessions/long/bookings",
                    json={"seats": 2, "customer": {"name": "Pair"}},
                    headers=AUTH,
                )
                for _ in range(6)
            )
        )
        statuses = [a.status_code for a in answers]
        assert (statuses.count(201), statuses.count(409)) == (3, 3), statuses
        assert await seats_of(client, "long") == {"max": 6, "taken": 0, "held": 6, "left": 0}

        await schedule(client, "short", 14, max_seats=6, hold_seconds=1)
        r = await client.post(
            "/v1/sessions/short/bookings",
            json={"seats": 6, "customer": {"name": "Team"}},
            headers=AUTH,
        )
        assert r.status_code == 201, r.text
        expires_at = datetime.fromisoformat(r.json()["expires_at"])
        await asyncio.sleep((expires_at - datetime.now(UTC)).total_seconds() + 0.2)
        assert await seats_of(client, "short") == {"max": 6, "taken": 0, "held": 0, "left": 6}
        r = await client.post(
            "/v1/sessions/short/bookings",
            json={"seats": 6, "confirm": True, "customer": {"name": "Whole team"}},
            headers=AUTH,
        )
        assert r.status_code == 201, r.text
        assert await seats_of(client, "short") == {"max": 6, "taken": 6, "held": 0, "left": 0}


@pytest.mark.slow
async def test_a_session_and_bookings_racing_for_one_hour_never_both_win(server: str) -> None:
    async with client_for(server) as client:
        weekly = {
            d: [["08:00", "20:00"]] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
        }
        r = await client.put(
            "/v1/resources/studio",
            json={"name": "Studio", "timezone": "UTC", "weekly": weekly},
            headers=AUTH,
        )
        assert r.status_code == 200, r.text
        r = await client.put(
            "/v1/services/private",
            json={"name": "Private", "duration_minutes": 60, "resources": ["studio"]},
            headers=AUTH,
        )
        assert r.status_code == 200, r.text
        start = datetime.fromisoformat(two_weeks_ahead(10))
        session = {
            "resource": "studio",
            "start": start.isoformat(),
            "end": (start + timedelta(hours=1)).isoformat(),
            "title": "Class",
            "max_seats": 5,
        }
        booking = {"service": "private", "start": start.isoformat()}
        answers = await asyncio.gather(
            *(client.post("/v1/bookings", json=booking, headers=AUTH) for _ in range(10)),
            client.put("/v1/sessions/class", json=session, headers=AUTH),
            *(client.post("/v1/bookings", json=booking, headers=AUTH) for _ in range(10)),
        )
        statuses = [a.status_code for a in answers]
        assert statuses.count(201) == 1, statuses
        assert statuses.count(409) == 20, statuses
        assert {a.json()["error"]["code"] for a in answers if a.status_code == 409} == {
            "slot_unavailable"
        }
