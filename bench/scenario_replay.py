"""Scenario 7: replay of the whole log (1,000,000 events) into every read model, against a bare
ordered read-and-decode of the same rows measured in the same run. Bar: ≥ 50 % of the bare rate.

The log is topped up to the target with confirmed bookings (SlotHeld + BookingConfirmed in
booking streams, TimeClaimed in day streams of 100 claims), written by COPY (bench/seed.py;
inserts only, the immutability triggers stay on). The events earlier scenarios wrote count too,
so the log holds a realistic mix.

- bare: `SELECT data::text FROM events ORDER BY position` through a server-side cursor in
  batches of 10,000 rows, each row decoded by msgspec into `service.events.AnyEvent`.
- replay: `projections.replay.replay(url)` — what `slotlog replay` runs — timed from call to
  return, rebuilding every projection (inline and asynchronous) and swapping them in. Its rate is
  the log's event count over that time.
- PAIRS replays, each between two bare reads (bare, replay, bare, replay, …, bare), each replay
  against the faster of the two bare reads around it (the stricter bar), and the median of those
  ratios reported, as scenarios 1 and 2 report their median pair: one replay on a shared machine
  moved by ±1 s between runs minutes apart. Before each bare read the log and the swapped-in
  tables are put at rest (VACUUM, CHECKPOINT), so that no run pays for an autovacuum or a
  checkpoint of the one before it; each replay follows a bare read, which writes nothing.
- what no fold avoids, for the profile of a miss: the CPU seconds (this process and PostgreSQL)
  of the median pair's bare read, and of loading the rows the replay wrote by COPY alone
  (copy_alone). On two cores, a replay takes at least the sum of those and its index builds,
  halved.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from dataclasses import dataclass
from datetime import date

import asyncpg
import msgspec

from bench.catalogue import day
from bench.context import Bench
from bench.processes import CpuMeter
from bench.report import Row, Section
from bench.seed import Plan, seed
from bench.stats import ratio
from projections import replay as rebuild
from projections.binary_copy import Encoding, copy_rows
from service.events import DECODER

BAR = 0.50
PAIRS = 3
BATCH = 10_000
PER_DAY = 100
DAYS_PER_RESOURCE = 1000


async def bare_read(bench: Bench) -> tuple[int, float]:
    """(events, seconds) of reading and decoding the whole log in order."""
    conn = await bench.connect()
    try:
        started = time.perf_counter()
        n = 0
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            cursor = await conn.cursor("SELECT data::text FROM events ORDER BY position")
            while rows := await cursor.fetch(BATCH):
                for row in rows:
                    DECODER.decode(row[0])
                n += len(rows)
        return n, time.perf_counter() - started
    finally:
        await conn.close()


COPY_ALONE_SUFFIX = "_copy_alone"


async def copy_alone(bench: Bench) -> tuple[int, float, CpuMeter]:
    """(rows, seconds, CPU) of loading the rows the replay wrote into empty copies of their
    tables by COPY alone, as the replay's writers send them (encoded by projections/binary_copy.py
    where the replay's are, timestamps as PostgreSQL's microseconds, chunks of its size, one
    connection per table, side by side, commits not waiting for the disk), without reading or
    folding the log. Rows are read beforehand."""
    columns = {t.table: t.inline.columns for t in rebuild.targets() if t.inline is not None}
    tables = list(columns)
    conns = [await bench.connect() for _ in tables]
    try:
        rows: dict[str, list[tuple[object, ...]]] = {}
        for conn, table in zip(conns, tables, strict=True):
            await conn.execute("SET synchronous_commit = off")
            await conn.set_builtin_type_codec("timestamptz", schema="pg_catalog", codec_name="int8")
            listed = ", ".join(columns[table])
            rows[table] = [tuple(r) for r in await conn.fetch(f"SELECT {listed} FROM {table}")]
            await conn.execute(
                f"CREATE TABLE {table}{COPY_ALONE_SUFFIX} (LIKE {table} INCLUDING ALL "
                "EXCLUDING INDEXES) WITH (autovacuum_enabled = off, toast.autovacuum_enabled = off)"
            )

        encodings = {
            t: await Encoding.of(c, t + COPY_ALONE_SUFFIX, columns[t])
            for c, t in zip(conns, tables, strict=True)
        }

        async def load(conn: asyncpg.Connection, table: str) -> None:
            for i in range(0, len(rows[table]), rebuild.COPY_CHUNK):
                await copy_rows(
                    conn,
                    table + COPY_ALONE_SUFFIX,
                    rows[table][i : i + rebuild.COPY_CHUNK],
                    columns[table],
                    encodings[table],
                )

        cpu = CpuMeter({"here": os.getpid(), "postgres": bench.postgres.postmaster_pid})
        cpu.start()
        started = time.perf_counter()
        await asyncio.gather(*(load(c, t) for c, t in zip(conns, tables, strict=True)))
        seconds = time.perf_counter() - started
        cpu.stop()
        for table in tables:
            await conns[0].execute(f"DROP TABLE {table}{COPY_ALONE_SUFFIX}")
        return sum(map(len, rows.values())), seconds, cpu
    finally:
        for conn in conns:
            await conn.close()


def _cpu_seconds(cpu: CpuMeter) -> str:
    """'5.97 + 6.17 = 12.14': this process's tree (with any helper) + PostgreSQL's ('?' when
    PostgreSQL's processes are not on this machine)."""
    here = sum(v for k, v in cpu.used.items() if k != "postgres")
    if "postgres" not in cpu.used:
        return f"{here:.2f} + ?"
    postgres = cpu.used["postgres"]
    return f"{here:.2f} + {postgres:.2f} = {here + postgres:.2f}"


async def top_up(bench: Bench, target: int) -> tuple[int, float]:
    """Append confirmed bookings by COPY until the log holds about `target` events."""
    conn = await bench.connect()
    try:
        have = int(await conn.fetchval("SELECT count(*) FROM events"))
    finally:
        await conn.close()
    bookings = max(0, math.ceil((target - have) / 3))
    if bookings == 0:
        return 0, 0.0
    tenant = bench.tenant_id or "tn_bench_replay"
    plans: list[Plan] = []
    left = bookings
    while left > 0:
        days: dict[date, int] = {}
        for i in range(DAYS_PER_RESOURCE):
            if left <= 0:
                break
            days[day(400 + i)] = n = min(PER_DAY, left)
            left -= n
        plans.append(Plan(tenant, f"rp{len(plans)}", "rp", days, read_models=False))
    bench.log(f"7. seeding {bookings * 3:,} events by COPY (the log had {have:,})")
    return await seed(bench.url, plans, batch_bookings=400, copy=True)


async def _at_rest(bench: Bench) -> None:
    """Vacuum (with statistics) and checkpoint, so that the next run starts as the first did: no
    autovacuum of the tables a replay swapped in, no checkpoint of its writes, in its way."""
    conn = await bench.connect()
    try:
        await conn.execute("VACUUM ANALYZE")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


@dataclass(frozen=True, slots=True)
class _Timed:
    seconds: float
    cpu: CpuMeter


async def _timed_bare(bench: Bench) -> tuple[int, _Timed]:
    await _at_rest(bench)
    cpu = CpuMeter({"here": os.getpid(), "postgres": bench.postgres.postmaster_pid})
    cpu.start()
    n, seconds = await bare_read(bench)
    cpu.stop()
    return n, _Timed(seconds, cpu)


@dataclass(frozen=True, slots=True)
class _Pair:
    """One replay and the faster of the two bare reads around it."""

    replay: _Timed
    result: rebuild.Result
    bare: _Timed

    @property
    def ratio(self) -> float:
        return self.bare.seconds / self.replay.seconds


async def run(bench: Bench) -> Section:
    target = bench.scale.replay_events
    seeded, seed_seconds = await top_up(bench, target)
    if seeded:
        bench.log(f"   {seeded:,} events in {seed_seconds:.1f} s")
    bench.log("7. bare ordered read-and-decode of the log")
    n, before = await _timed_bare(bench)
    pairs: list[_Pair] = []
    for i in range(PAIRS):
        # No _at_rest here: the bare read just before this replay began at rest and writes nothing.
        bench.log(f"7. replay {i + 1} of {PAIRS} of {n:,} events into every read model")
        # The replay runs in this process (the embedded postmaster is not our child).
        cpu = CpuMeter({"replay": os.getpid(), "postgres": bench.postgres.postmaster_pid})
        cpu.start()
        started = time.perf_counter()
        result = await rebuild.replay(bench.url)
        replayed = _Timed(time.perf_counter() - started, cpu)
        cpu.stop()
        bench.log("7. bare ordered read-and-decode of the log")
        _, after = await _timed_bare(bench)
        pairs.append(_Pair(replayed, result, min(before, after, key=lambda t: t.seconds)))
        before = after
    shown = sorted(pairs, key=lambda p: p.ratio)[len(pairs) // 2]
    bench.log("7. COPY of the rows the replay wrote, alone")
    copied, copy_seconds, copy_cpu = await copy_alone(bench)
    result, cpu, seconds = shown.result, shown.replay.cpu, shown.replay.seconds
    bare_rate = n / shown.bare.seconds
    replay_rate = n / seconds
    r = ratio(replay_rate, bare_rate)
    return Section(
        name="replay",
        title=f"7. replay, {n:,} events",
        rows=[
            Row(
                figure="events/s into all read models",
                value=replay_rate,
                unit="/s",
                baseline=bare_rate,
                baseline_label="bare read+decode, paired",
                ratio=r,
                bar="≥ 0.50x bare",
                passed=r is not None and r >= BAR,
            ),
            Row(figure="replay wall time", value=seconds, unit="s"),
            Row(figure="bare read+decode wall time", value=shown.bare.seconds, unit="s"),
            Row(figure=f"COPY of its {copied:,} rows alone", value=copy_seconds, unit="s"),
        ],
        notes=[
            f"7: {PAIRS} replays, each against the faster of the bare reads before and after it, "
            "the median pair shown; pairs (replay s, bare s, ratio): "
            + ", ".join(
                f"({p.replay.seconds:.2f}, {p.bare.seconds:.2f}, {p.ratio:.2f})" for p in pairs
            ),
            f"7: replay {', '.join(result.projections)}; it read {result.events:,} events "
            f"(stats counts the log again, in PostgreSQL), {result.catch_up_rounds} catch-up "
            f"round(s), swapped={result.swapped} after {result.swap_attempts} attempt(s); "
            f"phases {', '.join(f'{k} {v:.2f} s' for k, v in result.phases.items())}; "
            f"CPU in cores: {cpu.describe()}"
            + (f"; seeded {seeded:,} events by COPY in {seed_seconds:.1f} s" if seeded else ""),
            "7: CPU-s (this process, with the replay's helper, + PostgreSQL), median pair: "
            f"the replay {_cpu_seconds(cpu)}; "
            f"its faster bare read {_cpu_seconds(shown.bare.cpu)}; "
            f"COPY of the replay's rows alone {_cpu_seconds(copy_cpu)} ({copy_seconds:.2f} s); "
            f"the replay's index phase {result.phases.get('indexes', 0.0):.2f} s",
        ],
        details={
            "events": n,
            "replay_seconds": seconds,
            "bare_seconds": shown.bare.seconds,
            "pairs": [
                {
                    "replay_seconds": p.replay.seconds,
                    "bare_seconds": p.bare.seconds,
                    "ratio": p.ratio,
                    "phases": p.result.phases,
                    "cpu_seconds": {"replay": p.replay.cpu.used, "bare_read": p.bare.cpu.used},
                }
                for p in pairs
            ],
            "cpu_seconds": {
                "replay": cpu.used,
                "bare_read": shown.bare.cpu.used,
                "copy_alone": copy_cpu.used,
            },
            "copy_alone": {"rows": copied, "seconds": copy_seconds},
            "replay_result": msgspec.to_builtins(
                {
                    "events": result.events,
                    "seconds": result.seconds,
                    "swapped": result.swapped,
                    "phases": result.phases,
                }
            ),
        },
    )
