"""The projector SIGKILLed in the middle of a batch (rows written, checkpoint not yet) and
restarted applies every event exactly once: the incremental `stats` read model equals a full
replay, and its counters equal the log's."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import asyncpg
import pytest

from projections.runner import read_checkpoint
from service.handler import Commands
from service.tenants import create_tenant
from tests.cli import slotlog
from tests.workload import Workload


def start_projector(database_url: str, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "service", "project"],
        env={**os.environ, "DATABASE_URL": database_url, "SLOTLOG_LOG_LEVEL": "warning", **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def in_flight_batch(pool: asyncpg.Pool, database_url: str, *, fresh: bool = False) -> bool:
    """Is a projector transaction open with its rows applied, waiting to write its checkpoint?
    (SLOTLOG_PROJECTOR_APPLY_DELAY parks it there, 'idle in transaction', for 1 s.) `fresh`:
    one that began less than 0.2 s ago, so that it cannot commit before we kill it, even with
    the machine busy for most of a second."""
    database = database_url.rsplit("/", 1)[1].split("?", 1)[0]
    return bool(
        await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 "
            "AND state = 'idle in transaction' AND backend_xid IS NOT NULL "
            "AND query LIKE 'INSERT INTO rm_tenant_stats%' "  # its last statement: the rows
            "AND (NOT $2 OR clock_timestamp() - xact_start < interval '200 milliseconds')",
            database,
            fresh,
        )
    )


@pytest.mark.slow
async def test_sigkill_mid_batch_then_restart_applies_every_event_exactly_once(
    pool: asyncpg.Pool, database_url: str
) -> None:
    for seed in (1, 2):  # two tenants, so the batches interleave their counters
        tenant = await create_tenant(pool, f"crash-{seed}")
        w = Workload(Commands(pool), tenant["tenant_id"], seed=seed)
        await w.setup()
        await w.run(600)
    total = await pool.fetchval("SELECT count(*) FROM events")

    kills = 0
    for _ in range(3):  # three crashes, each inside a batch
        proc = start_projector(
            database_url, SLOTLOG_PROJECTOR_BATCH="40", SLOTLOG_PROJECTOR_APPLY_DELAY="1"
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                assert time.monotonic() < deadline, "the projector never got into a batch"
                if await in_flight_batch(pool, database_url, fresh=True):
                    before = await read_checkpoint(pool, "stats")  # committed, before the batch
                    if before.position:
                        break
                await asyncio.sleep(0.02)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        while True:  # the server notices the dead client and rolls its transaction back
            if not await in_flight_batch(pool, database_url):
                break
            await asyncio.sleep(0.02)
        # The killed batch rolled back as a whole: its rows and its checkpoint never happened.
        assert await read_checkpoint(pool, "stats") == before
        applied = await pool.fetchval("SELECT coalesce(sum(events), 0) FROM rm_tenant_stats")
        assert applied == await pool.fetchval(
            "SELECT count(*) FROM events WHERE (transaction_id, position) <= ($1::xid8, $2)",
            before.transaction_id,
            before.position,
        )
        kills += 1
    assert kills == 3

    done = slotlog(database_url, "project", "--until-caught-up")
    assert done.returncode == 0, done.stderr
    counted = await pool.fetch("SELECT tenant_id, count(*) AS n FROM events GROUP BY 1 ORDER BY 1")
    stats = await pool.fetch("SELECT tenant_id, events FROM rm_tenant_stats ORDER BY 1")
    assert [(r[0], r[1]) for r in counted] == [(r[0], r[1]) for r in stats]
    assert sum(r[1] for r in stats) == total
    done = slotlog(database_url, "replay", "--verify", "--projection", "stats")
    assert done.returncode == 0, done.stdout + done.stderr
