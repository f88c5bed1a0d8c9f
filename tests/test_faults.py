"""Faults with real processes: a server SIGKILLed under load loses no acknowledged booking; a
database outage answers 503 with Retry-After (never 500) and heals without restarting slotlog."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.db import EmbeddedPostgres, ensure_database
from tests.helpers import at, iso, parse, weekday_ahead
from tests.processes import free_port, kill_group, serve

SECRET = "sk_fault_secret_key"
AUTH = {"Authorization": f"Bearer {SECRET}"}
ALL_DAY = {d: [["00:00", "24:00"]] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}
RESOURCES = [f"r{i}" for i in range(6)]


def env_for(url: str) -> dict[str, str]:
    return {"DATABASE_URL": url, "SLOTLOG_BOOTSTRAP_SECRET_KEY": SECRET}


async def setup(client: httpx.AsyncClient) -> None:
    for rid in RESOURCES:
        r = await client.put(
            f"/v1/resources/{rid}", json={"name": rid, "weekly": ALL_DAY}, headers=AUTH
        )
        assert r.status_code == 200, r.text
    body = {
        "name": "Any",
        "duration_minutes": 60,
        "slot_interval_minutes": 30,
        "resources": RESOURCES,
    }
    r = await client.put("/v1/services/any", json=body, headers=AUTH)
    assert r.status_code == 200, r.text


def booking_body(rng: random.Random) -> dict[str, Any]:
    # Few distinct starts so that many requests contend for the same time.
    start = at(weekday_ahead(2), "00:00") + timedelta(minutes=30 * rng.randrange(0, 40))
    return {"service": "any", "start": iso(start), "confirm": True, "customer": {"name": "c"}}


async def all_bookings(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 200, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/bookings", params=params, headers=AUTH)).json()
        out += page["data"]
        if not (cursor := page["next_cursor"]):
            return out


def assert_no_overlaps(bookings: list[dict[str, Any]]) -> None:
    active = [b for b in bookings if b["status"] in ("held", "pending", "confirmed")]
    for i, a in enumerate(active):
        for b in active[i + 1 :]:
            if set(a["resources"]) & set(b["resources"]):
                assert not (
                    parse(a["start"]) < parse(b["end"]) and parse(b["start"]) < parse(a["end"])
                ), (a, b)


@pytest.mark.slow
async def test_a_server_killed_under_load_loses_no_acknowledged_booking(
    database_url: str,
) -> None:
    port = free_port()
    acknowledged: list[str] = []
    statuses: list[int] = []
    with serve(env_for(database_url), workers=2, port=port) as (base, proc):
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            await setup(client)

            async def worker(seed: int) -> None:
                rng = random.Random(seed)
                while True:
                    try:
                        r = await client.post("/v1/bookings", json=booking_body(rng), headers=AUTH)
                    except httpx.HTTPError:
                        return  # the server died mid-request: nothing was acknowledged
                    statuses.append(r.status_code)
                    if r.status_code == 201:
                        acknowledged.append(r.json()["id"])
                    if len(statuses) >= 150:
                        loaded.set()

            loaded = asyncio.Event()
            tasks = [asyncio.create_task(worker(n)) for n in range(32)]
            await asyncio.wait_for(loaded.wait(), 60)
            kill_group(proc)  # SIGKILL the server and its workers in the middle of the load
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert acknowledged, "some bookings must have been acknowledged before the crash"
    assert all(s in (201, 409) for s in statuses), sorted(set(statuses))

    with serve(env_for(database_url), workers=1) as (base, _):
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            for booking_id in acknowledged:
                r = await client.get(f"/v1/bookings/{booking_id}", headers=AUTH)
                assert r.status_code == 200, booking_id
                assert r.json()["status"] == "confirmed"
            bookings = await all_bookings(client)
    assert {b["id"] for b in bookings} >= set(acknowledged)
    assert_no_overlaps(bookings)


class Database:
    """A PostgreSQL of this test's own, which it can stop and start again."""

    def __init__(self, directory: Path) -> None:
        self.embedded = EmbeddedPostgres(directory, delete_on_exit=True)
        self.url = asyncio.run(ensure_database(self.embedded.admin_url, "outage"))

    def stop(self) -> None:
        pid = self.embedded.pid
        assert pid is not None
        os.kill(pid, signal.SIGINT)  # fast shutdown: every connection is dropped
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        raise TimeoutError("postgres did not stop")

    def start(self) -> None:
        server = self.embedded._server
        with server._lock:
            server.ensure_postgres_running()


@pytest.fixture
def database() -> Iterator[Database]:
    with tempfile.TemporaryDirectory(prefix="slotlog-outage-") as tmp:
        db = Database(Path(tmp) / "pg")
        try:
            yield db
        finally:
            db.embedded.stop()


@pytest.mark.slow
async def test_a_database_outage_answers_503_and_heals_without_a_restart(
    database: Database,
) -> None:
    rng = random.Random(7)
    with serve(env_for(database.url), workers=1) as (base, _):
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            await setup(client)
            before = await client.post("/v1/bookings", json=booking_body(rng), headers=AUTH)
            assert before.status_code == 201

            database.stop()
            down: list[httpx.Response] = []
            for _ in range(10):
                down.append(await client.post("/v1/bookings", json=booking_body(rng), headers=AUTH))
                down.append(await client.get(f"/v1/bookings/{before.json()['id']}", headers=AUTH))
                down.append(await client.get("/readyz"))
            assert {r.status_code for r in down} == {503}, [
                r.text for r in down if r.status_code != 503
            ]
            assert all(r.headers.get("retry-after") for r in down)
            assert all(r.json()["error"]["code"] == "unavailable" for r in down)
            assert (await client.get("/healthz")).status_code == 200

            database.start()
            healed: httpx.Response | None = None
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                r = await client.post("/v1/bookings", json=booking_body(rng), headers=AUTH)
                assert r.status_code in (201, 409, 503), r.text
                if r.status_code in (201, 409):
                    healed = r
                    break
                await asyncio.sleep(0.2)
            assert healed is not None, "slotlog did not recover after the database came back"
            assert (await client.get("/readyz")).status_code == 200
            again = await client.get(f"/v1/bookings/{before.json()['id']}", headers=AUTH)
            assert again.status_code == 200 and again.json()["status"] == "confirmed"
