"""What every scenario shares: the database of the run, the counts (full or --quick), the
baselines (measured once, on first use), the keys of the bootstrap tenant, and driving the
separate load-generator process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from rich.console import Console

from bench.environment import Postgres
from bench.load import Client, HttpRequest, LoadResult, Plan, drive
from bench.processes import CpuMeter

SECRET = "sk_bench_secret_key_for_the_benchmarks"
PUBLIC = "pk_bench_public_key_for_the_benchmarks"
AUTH = {"Authorization": f"Bearer {SECRET}"}


@dataclass(frozen=True, slots=True)
class Scale:
    insert_rows: int  # per baseline (a) variant
    appends: int  # scenario 1
    endpoint_requests: int  # baseline (b)
    holds: int  # scenario 2
    one_slot_rounds: int  # scenario 3 (200 holds each)
    seat_rounds: int  # scenario 4 (500 bookings each)
    history_bookings: int  # scenario 5
    history_sequential: int
    history_concurrent: int
    availability_bookings: int  # scenario 6
    availability_requests: int
    replay_events: int  # scenario 7


FULL = Scale(
    insert_rows=20_000,
    appends=20_000,
    endpoint_requests=20_000,
    holds=30_000,
    one_slot_rounds=3,
    seat_rounds=3,
    history_bookings=100_000,
    history_sequential=200,
    history_concurrent=2_000,
    availability_bookings=50_000,
    availability_requests=200,
    replay_events=1_000_000,
)
QUICK = Scale(
    insert_rows=1_000,
    appends=1_000,
    endpoint_requests=1_000,
    holds=1_000,
    one_slot_rounds=1,
    seat_rounds=1,
    history_bookings=2_000,
    history_sequential=30,
    history_concurrent=200,
    availability_bookings=2_000,
    availability_requests=30,
    replay_events=30_000,
)


@dataclass(slots=True)
class Bench:
    url: str
    postgres: Postgres
    scale: Scale
    client: Client
    console: Console
    quick: bool = False
    tenant_id: str | None = None
    _cache: dict[str, Any] = field(default_factory=dict)

    def log(self, message: str) -> None:
        self.console.log(message)

    async def once(self, key: str, make: Callable[[], Awaitable[Any]]) -> Any:
        """A value measured once per run (a baseline), shared by the scenarios that need it."""
        if key not in self._cache:
            self._cache[key] = await make()
        return self._cache[key]

    async def drive(
        self,
        base_url: str,
        requests: list[HttpRequest],
        *,
        concurrency: int,
        warmup: int = 0,
        cpu: CpuMeter | None = None,
        client: Client | None = None,
    ) -> LoadResult:
        """Send `requests` from a separate load-generator process. The first `warmup` of them go
        first from a generator of their own, unmeasured. `cpu` measures process trees over the
        measured requests (shares of a core over the generator's measured time: the servers are
        idle while the generator starts)."""

        def plan(part: list[HttpRequest]) -> Plan:
            return Plan(
                base_url=base_url,
                requests=part,
                concurrency=concurrency,
                headers=AUTH,
                client=client or self.client,
            )

        if warmup:
            await asyncio.to_thread(drive, plan(requests[:warmup]))
        if cpu is not None:
            cpu.start()
        result = await asyncio.to_thread(drive, plan(requests[warmup:]))
        if cpu is not None:
            cpu.stop(wall=result.elapsed)
        return result

    def cpu_meter(self, server_pid: int) -> CpuMeter:
        return CpuMeter({"server": server_pid, "postgres": self.postgres.postmaster_pid})

    async def connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.url)

    async def wal(self) -> int:
        """The server's current WAL position in bytes: the difference of two readings is the WAL
        written in between by everything on the server (exact, unlike pg_stat_wal, which
        backends flush lazily)."""
        conn = await self.connect()
        try:
            lsn = await conn.fetchval("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
        finally:
            await conn.close()
        return int(lsn)

    async def analyze(self) -> None:
        """Refresh the planner's statistics (as an operator would after a bulk load), so that a
        scenario's plans do not depend on when autovacuum last analysed the tables."""
        conn = await self.connect()
        try:
            await conn.execute("ANALYZE")
        finally:
            await conn.close()

    async def tenant(self) -> str:
        """The bootstrap tenant's id (it exists once a slotlog server has started)."""
        if self.tenant_id is None:
            conn = await self.connect()
            try:
                self.tenant_id = str(
                    await conn.fetchval("SELECT tenant_id FROM tenants WHERE name = 'default'")
                )
            finally:
                await conn.close()
        return self.tenant_id
