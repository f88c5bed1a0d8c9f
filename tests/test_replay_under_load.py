"""`slotlog replay` while a real server is under a steady load of holds, cancels and availability
reads: no request fails, and availability stays right throughout (a held slot never shows as
free, a cancelled one does), across swaps; a final --verify finds no difference."""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from service.handler import Commands
from service.tenants import create_tenant
from tests.helpers import iso, parse
from tests.processes import serve
from tests.settle import within
from tests.workload import ALL_DAY, Workload

SECRET = "sk_replay_under_load_key"
AUTH = {"Authorization": f"Bearer {SECRET}"}
LOOPS = 4
# The clients book through a real server, on the real clock: a day ahead of it (the workload's
# T0 is a fixed date, which the clock would one day pass).
LIVE = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=30)
DAY = LIVE.date()


async def replay(database_url: str, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        "replay",
        *args,
        env={**os.environ, "DATABASE_URL": database_url, "SLOTLOG_LOG_LEVEL": "warning"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await within(proc.communicate(), 300)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, out.decode()


async def free_starts(client: httpx.AsyncClient, service_id: str) -> set[str]:
    r = await client.get(
        "/v1/availability",
        params={"service": service_id, "from": DAY.isoformat(), "to": DAY.isoformat()},
    )
    assert r.status_code == 200, r.text
    return {iso(parse(s["start"])) for s in r.json()["data"]}


async def client_loop(
    client: httpx.AsyncClient, n: int, stop: asyncio.Event, statuses: Counter[str]
) -> int:
    """Hold a slot, check it is gone from availability, cancel it, check it is back."""
    service_id = f"s{n}"
    rounds = 0
    while not stop.is_set():
        start = iso(LIVE + timedelta(hours=8 + rounds % 10))
        r = await client.post("/v1/bookings", json={"service": service_id, "start": start})
        statuses[f"hold {r.status_code}"] += 1
        assert r.status_code == 201, r.text
        booking: dict[str, Any] = r.json()
        assert start not in await free_starts(client, service_id), "a held slot showed as free"
        r = await client.post(
            f"/v1/bookings/{booking['id']}/cancel", json={"reason": "load", "by": "owner"}
        )
        statuses[f"cancel {r.status_code}"] += 1
        assert r.status_code == 200, r.text
        assert start in await free_starts(client, service_id), "a cancelled slot stayed busy"
        rounds += 1
    return rounds


@pytest.mark.slow
async def test_replay_under_load_fails_no_request_and_keeps_availability_right(
    pool: asyncpg.Pool, database_url: str
) -> None:
    # History to replay: enough that each rebuild overlaps many requests.
    seeded = await create_tenant(pool, "history")
    w = Workload(Commands(pool), seeded["tenant_id"], seed=99)
    await w.setup()
    await w.run(1500)

    env = {"DATABASE_URL": database_url, "SLOTLOG_BOOTSTRAP_SECRET_KEY": SECRET}
    with serve(env) as (base, _):
        async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=30) as client:
            for n in range(LOOPS):
                r = await client.put(
                    f"/v1/resources/r{n}", json={"name": f"r{n}", "weekly": ALL_DAY}
                )
                assert r.status_code == 200, r.text
                body = {"name": f"s{n}", "duration_minutes": 60, "resources": [f"r{n}"]}
                r = await client.put(f"/v1/services/s{n}", json=body)
                assert r.status_code == 200, r.text
            stop = asyncio.Event()
            statuses: Counter[str] = Counter()
            loops = [
                asyncio.create_task(client_loop(client, n, stop, statuses)) for n in range(LOOPS)
            ]
            try:
                outcomes = [await replay(database_url) for _ in range(3)]
            finally:
                stop.set()
                rounds = await asyncio.gather(*loops)
            for code, out in outcomes:
                assert code == 0, out
                assert "replayed and swapped" in out
            print(f"requests during replays: {dict(statuses)}; rounds per loop: {rounds}")
            assert all(r > 0 for r in rounds)
            assert set(statuses) == {"hold 201", "cancel 200"}
    code, out = await replay(database_url, "--verify")
    assert code == 0, out
