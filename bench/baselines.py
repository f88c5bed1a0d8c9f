"""The machine's ceilings, measured in the same run on the same database as slotlog:

(a) a bare asyncpg INSERT of one event-shaped row into a scratch table with the `events` table's
    payload columns, 32 concurrent clients over one pool, in this process: rows/s, with
    asyncpg's default per-release reset and with it disabled (as slotlog's pool does);
(b) the same INSERT behind a bare Starlette endpoint (bench/bare_app.py) served by uvicorn with
    slotlog's settings, driven over HTTP by the load generator with 64 connections.

Also the load generator's own ceiling on the bare app's GET /healthz, with each client, so a
reader can tell whether the generator or the server bounds a figure.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec

from bench import processes
from bench.bare_app import TABLE as HTTP_TABLE
from bench.context import Bench
from bench.load import Client, HttpRequest, LoadResult
from bench.processes import CpuMeter
from bench.report import Row, Section
from bench.stats import Latency, latency
from service.events import BookingPolicy, EventMeta, SlotHeld, encode

CLIENTS = 32
CONNECTIONS = 64

_T = datetime(2031, 3, 3, 9, tzinfo=UTC)
# A realistic event: what a hold writes (about 370 bytes of JSON, the smallest SlotHeld).
EVENT = SlotHeld(
    booking_id="bk_0f3c2a9d8e7b6a5f4c3d",
    service_id="consultation",
    resources=["dr-alice-martin"],
    start=_T,
    end=_T + timedelta(minutes=30),
    expires_at=_T - timedelta(days=3),
    policy=BookingPolicy(hold_seconds=600),
)
EVENT_JSON = encode(EVENT)
META = EventMeta(tenant="tn_bench", actor="key_3f2a1b0c9d8e", request_id="0af7651916cd43dd8448eb")
META_JSON = msgspec.json.encode(META).decode()


def scratch_table(name: str) -> str:
    """The events table's payload columns and types, with a bigserial key as a table needs."""
    return (
        f"DROP TABLE IF EXISTS {name}; CREATE TABLE {name} ("
        "position bigserial PRIMARY KEY, stream_id text NOT NULL, version bigint NOT NULL, "
        "tenant_id text NOT NULL, type text NOT NULL, data jsonb NOT NULL, "
        "metadata jsonb NOT NULL)"
    )


class InsertBaseline(msgspec.Struct, kw_only=True):
    default_reset: float  # rows/s, asyncpg's default pool (reset round trip on every release)
    no_reset: float  # rows/s, reset disabled like slotlog's pool


class EndpointBaseline(msgspec.Struct, kw_only=True):
    throughput: float  # req/s
    latency: Latency
    sequential: Latency  # one request at a time
    failures: int
    cpu: dict[str, float]  # cores used while measured
    cpu_ms: dict[str, float]  # CPU milliseconds per request
    cpu_text: str  # cores used and waited for, per process tree
    wal: str  # WAL written per request (includes the warm-up's share)
    generator_cpu: float
    ceilings: dict[str, float]  # GET /healthz req/s per load-generator client


async def _no_reset(conn: asyncpg.Connection) -> None:
    return None


async def insert_rate(url: str, rows: int, *, reset: bool, table: str) -> float:
    """Rows/s of `rows` single-row INSERTs from CLIENTS concurrent clients of one pool."""
    admin = await asyncpg.connect(url)
    try:
        await admin.execute(scratch_table(table))
    finally:
        await admin.close()
    sql = (
        f"INSERT INTO {table} (stream_id, version, tenant_id, type, data, metadata) "
        "VALUES ($1, 1, $2, 'SlotHeld', $3, $4)"
    )
    pool = await asyncpg.create_pool(
        url, min_size=CLIENTS, max_size=CLIENTS, reset=None if reset else _no_reset
    )
    try:
        ids = itertools.count()

        async def client(n: int) -> None:
            for _ in range(n):
                await pool.execute(
                    sql, f"tn_bench:bk:{next(ids)}", "tn_bench", EVENT_JSON, META_JSON
                )

        await asyncio.gather(*(client(20) for _ in range(CLIENTS)))  # warm: connections, plans
        per_client = max(1, rows // CLIENTS)
        started = time.perf_counter()
        await asyncio.gather(*(client(per_client) for _ in range(CLIENTS)))
        return per_client * CLIENTS / (time.perf_counter() - started)
    finally:
        await pool.close()


async def insert_baseline(bench: Bench) -> InsertBaseline:
    async def measure() -> InsertBaseline:
        n = bench.scale.insert_rows
        bench.log(f"baseline (a): bare INSERT, {CLIENTS} clients, {n} rows per variant")
        # Alternate the variants so that a noisy neighbour hurts both alike.
        default, no_reset = [], []
        for _ in range(2):
            default.append(await insert_rate(bench.url, n // 2, reset=True, table="bench_bare_a"))
            no_reset.append(
                await insert_rate(bench.url, n // 2, reset=False, table="bench_bare_a_noreset")
            )
        return InsertBaseline(default_reset=max(default), no_reset=max(no_reset))

    result: InsertBaseline = await bench.once("insert", measure)
    return result


def insert_section(b: InsertBaseline) -> Section:
    return Section(
        name="insert",
        title="(a) bare INSERT",
        rows=[
            Row(
                figure=f"rows/s, {CLIENTS} clients, pool reset on", value=b.default_reset, unit="/s"
            ),
            Row(figure=f"rows/s, {CLIENTS} clients, no reset", value=b.no_reset, unit="/s"),
        ],
        notes=[
            "(a) best of two alternating runs per variant; one event-shaped row per INSERT "
            f"({len(EVENT_JSON)}-byte data), in-process, one asyncpg pool"
        ],
    )


def _insert_requests(n: int) -> list[HttpRequest]:
    return [HttpRequest("POST", "/insert", EVENT_JSON) for _ in range(n)]


async def _ceilings(bench: Bench, base_url: str) -> dict[str, float]:
    n = max(500, bench.scale.endpoint_requests // 4)
    out: dict[str, float] = {}
    clients: tuple[Client, ...] = ("raw", "httpx")
    for client in clients:
        r = await bench.drive(
            base_url,
            [HttpRequest("GET", "/healthz")] * n,
            concurrency=CONNECTIONS,
            warmup=min(500, n // 5),
            client=client,
        )
        out[client] = r.throughput
    return out


def wal_per(before: int, after: int, n: int) -> str:
    """'1,234 bytes': WAL written per request."""
    return f"{(after - before) / n:,.0f} bytes" if n else "unknown"


async def endpoint_run(bench: Bench, n: int) -> tuple[LoadResult, CpuMeter, str]:
    """One measured run of n INSERT requests (after n/10 warm-up) on a fresh bare app: the
    answers, the CPU meter, and the WAL written per request."""
    with processes.bare_app(bench.url) as server:
        cpu = bench.cpu_meter(server.pid)
        wal0 = await bench.wal()
        r = await bench.drive(
            server.base_url,
            _insert_requests(n + n // 10),
            concurrency=CONNECTIONS,
            warmup=n // 10,
            cpu=cpu,
        )
        wal = wal_per(wal0, await bench.wal(), n + n // 10)  # warm-up included
    return r, cpu, wal


async def endpoint_baseline(bench: Bench) -> EndpointBaseline:
    async def measure() -> EndpointBaseline:
        n = bench.scale.endpoint_requests
        conn = await bench.connect()
        try:
            await conn.execute(scratch_table(HTTP_TABLE))
        finally:
            await conn.close()
        bench.log(f"baseline (b): bare INSERT endpoint, 1 worker, {CONNECTIONS} connections")
        with processes.bare_app(bench.url) as server:
            ceilings = await _ceilings(bench, server.base_url)
            seq = await bench.drive(
                server.base_url,
                _insert_requests(bench.scale.availability_requests),
                concurrency=1,
            )
        r, cpu, wal = await endpoint_run(bench, n)
        return EndpointBaseline(
            throughput=r.count(201) / r.elapsed,
            latency=latency([o.seconds for o in r.outcomes]),
            sequential=latency([o.seconds for o in seq.outcomes]),
            failures=len(r.outcomes) - r.count(201),
            cpu=cpu.shares(),
            cpu_ms=cpu.per(len(r.outcomes)),
            cpu_text=cpu.describe(),
            wal=wal,
            generator_cpu=round(r.cpu_seconds / r.elapsed, 2),
            ceilings=ceilings,
        )

    result: EndpointBaseline = await bench.once("endpoint", measure)
    return result


def endpoint_section(b: EndpointBaseline) -> Section:
    per = ", ".join(f"{k} {v:.3f} ms" for k, v in b.cpu_ms.items())
    return Section(
        name="endpoint",
        title="(b) bare INSERT endpoint",
        rows=[
            Row(figure=f"req/s, 1 worker, {CONNECTIONS} conns", value=b.throughput, unit="/s"),
            Row(figure="p50", value=b.latency.p50, unit="ms"),
            Row(figure="p99", value=b.latency.p99, unit="ms"),
            Row(figure="sequential p50 (1 conn)", value=b.sequential.p50, unit="ms"),
            Row(figure="non-201 answers", value=b.failures, unit=""),
        ],
        notes=[
            f"(b) CPU while measured, in cores: {b.cpu_text}, load generator "
            f"{b.generator_cpu:.2f}; "
            f"CPU per request: {per}; WAL per request: {b.wal}",
            "load-generator ceiling on the bare app's GET /healthz, 64 conns: "
            + ", ".join(f"{k} {v:,.0f} req/s" for k, v in b.ceilings.items()),
        ],
        details={"baseline": msgspec.to_builtins(b)},
    )


async def ensure(bench: Bench, *which: str) -> list[Section]:
    """Measure (once) the named baselines; return their sections."""
    out = []
    if "insert" in which:
        out.append(insert_section(await insert_baseline(bench)))
    if "endpoint" in which:
        out.append(endpoint_section(await endpoint_baseline(bench)))
    return out
