"""Two service processes on one database: exactly one of them runs each background worker
(projector, hold expirer, webhook sender), and when that process is SIGKILLed the other takes
every worker over within 10 seconds."""

from __future__ import annotations

import asyncio
import time
from contextlib import ExitStack
from typing import Any

import asyncpg
import httpx
import pytest

from projections.runner import LOCK_PROJECTOR
from service.webhooks import LOCK_WEBHOOKS
from service.workers import LOCK_EXPIRER
from tests.processes import kill_group, serve

WORKERS = ("hold-expirer", "projector", "webhook-sender")
KEYS = [LOCK_EXPIRER, LOCK_PROJECTOR, LOCK_WEBHOOKS]
SECRET = "sk_failover_secret_key"
AUTH = {"Authorization": f"Bearer {SECRET}"}


def advisory_holders(database_url: str) -> dict[int, int]:
    """How many sessions hold each worker's advisory lock."""

    async def query() -> dict[int, int]:
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch(
                "SELECT objid::bigint AS key, count(*) AS n FROM pg_locks "
                "WHERE locktype = 'advisory' AND granted AND objid = ANY($1::oid[]) "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "GROUP BY 1",
                KEYS,
            )
        finally:
            await conn.close()
        return {r["key"]: r["n"] for r in rows}

    return asyncio.run(query())


def ready(base: str) -> dict[str, Any]:
    r = httpx.get(f"{base}/readyz", timeout=5)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def wait_for(check: Any, within: float, what: str) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > within:
            raise AssertionError(f"{what}: not within {within} s")
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.mark.slow
def test_exactly_one_leader_per_worker_and_takeover_after_sigkill(database_url: str) -> None:
    env = {"DATABASE_URL": database_url, "SLOTLOG_BOOTSTRAP_SECRET_KEY": SECRET}
    with ExitStack() as stack:
        a = stack.enter_context(serve(env))
        b = stack.enter_context(serve(env))
        bases = {a[0]: a[1], b[0]: b[1]}

        def one_leader_each() -> bool:
            states = [ready(base)["workers"] for base in bases]
            return all(sum(s[w] for s in states) == 1 for w in WORKERS)

        wait_for(one_leader_each, 10, "one leader per worker")
        pids = {ready(base)["pid"] for base in bases}
        assert pids == {a[1].pid, b[1].pid}
        assert advisory_holders(database_url) == {key: 1 for key in KEYS}
        leading = [
            line
            for base in bases
            for line in httpx.get(f"{base}/metrics").text.splitlines()
            if line.startswith("slotlog_worker_leading{")
        ]
        assert sorted(float(line.rsplit(" ", 1)[1]) for line in leading) == [0.0] * 3 + [1.0] * 3

        leader = next(base for base in bases if ready(base)["workers"]["projector"])
        survivor = next(base for base in bases if base != leader)
        kill_group(bases[leader])
        took = wait_for(lambda: all(ready(survivor)["workers"][w] for w in WORKERS), 10, "takeover")
        print(f"takeover after SIGKILL in {took:.2f} s")
        assert advisory_holders(database_url) == {key: 1 for key in KEYS}

        # The survivor's projector really works: a new event is projected.
        with httpx.Client(base_url=survivor, headers=AUTH) as client:
            r = client.put("/v1/resources/after-failover", json={"name": "x"})
            assert r.status_code == 200, r.text
        wait_for(
            lambda: ready(survivor)["projections"]["stats"]["events_behind"] == 0,
            30,
            "projection after takeover",
        )
