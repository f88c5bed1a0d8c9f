"""The operator's commands behind `slotlog replay`, `slotlog history` and `slotlog project`:
argument handling lives in service/cli.py, the work in projections/ and the store; this module
only runs it and renders it for a terminal (rich progress bars and tables)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from typing import Any

import asyncpg
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from projections import replay as rebuild
from projections.runner import (
    ASYNC_PROJECTIONS,
    LOCK_PROJECTOR,
    Listener,
    ProjectionRunner,
    lag,
)
from service import store
from service.db import close_pool, create_pool
from service.workers import LeaderWorker


def _console() -> Console:
    return Console(stderr=True, width=None if sys.stderr.isatty() else 120)


# ── replay ───────────────────────────────────────────────────────────────────


def replay_main(url: str, names: Sequence[str] | None, *, verify: bool) -> int:
    console = _console()
    out = Console(width=None if sys.stdout.isatty() else 160)
    bars: dict[str, TaskID] = {}
    with Progress(
        TextColumn("{task.description:>10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("events"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:

        def report(stage: str, advance: int, total: int | None) -> None:
            if stage not in bars:
                bars[stage] = progress.add_task(stage, total=total)
            elif total is not None:
                progress.update(bars[stage], total=total)
            if advance:
                progress.advance(bars[stage], advance)

        try:
            result = asyncio.run(rebuild.replay(url, names, verify=verify, progress=report))
        except rebuild.ReplayError as exc:
            console.print(f"slotlog replay: {exc}", style="red", highlight=False)
            return 2
        for task in bars.values():  # catch-up rounds have no known total
            if progress.tasks[task].total is None:
                done = progress.tasks[task].completed
                progress.update(task, total=done or 1, completed=done or 1)
    rate = result.events_per_second
    phases = ", ".join(f"{phase} {seconds:.2f} s" for phase, seconds in result.phases.items())
    summary = (
        f"{', '.join(result.projections)}: {result.events:,} events in {result.seconds:.2f} s "
        f"= {rate:,.0f} events/s ({result.catch_up_rounds} catch-up rounds; {phases})"
    )
    if not verify:
        out.print(f"replayed and swapped in {summary}", highlight=False, soft_wrap=True)
        return 0
    if not result.differences:
        out.print(f"verified, no differences: {summary}", highlight=False, soft_wrap=True)
        return 0
    total = sum(result.differing_rows.values())
    out.print(f"DIFFERENCES: {total} rows differ ({summary})", highlight=False, soft_wrap=True)
    for table, n in result.differing_rows.items():
        out.print(f"  {table}: {n} rows", highlight=False)
    for d in result.differences:
        out.print(f"  {d}", highlight=False, soft_wrap=True)
    return 1


# ── history ──────────────────────────────────────────────────────────────────


def _details(data: dict[str, Any]) -> str:
    keep = ("start", "end", "resources", "seats", "expires_at", "by", "session_id", "service_id")
    return ", ".join(f"{k}={data[k]}" for k in keep if data.get(k) not in (None, [], ""))


async def _history(url: str, booking_id: str, tenant: str | None) -> tuple[str, list[Any]]:
    conn = await asyncpg.connect(url)
    try:
        suffix = f":bk:{booking_id}"
        # One probe of the log's (stream_id, version) index per tenant.
        rows = await conn.fetch(
            "SELECT t.tenant_id || $1 FROM tenants AS t "
            "WHERE ($2::text IS NULL OR t.tenant_id = $2) AND EXISTS "
            "(SELECT FROM events AS e WHERE e.stream_id = t.tenant_id || $1 AND e.version = 1) "
            "ORDER BY t.tenant_id",
            suffix,
            tenant,
        )
        if not rows:
            raise LookupError(
                f"no booking {booking_id!r}" + (f" in tenant {tenant}" if tenant else "")
            )
        if len(rows) > 1:
            tenants = ", ".join(r[0].split(":", 1)[0] for r in rows)
            raise LookupError(
                f"booking {booking_id!r} exists in several tenants ({tenants}); pass --tenant"
            )
        stream_id = rows[0][0]
        return stream_id, await store.read_stream(conn, stream_id)
    finally:
        await conn.close()


def history_main(url: str, booking_id: str, tenant: str | None) -> int:
    import msgspec

    try:
        stream_id, events = asyncio.run(_history(url, booking_id, tenant))
    except LookupError as exc:
        _console().print(f"slotlog history: {exc}", style="red", highlight=False)
        return 1
    table = Table(title=f"booking {booking_id} (tenant {stream_id.split(':', 1)[0]})")
    for column in ("position", "time", "type", "actor", "reason", "details"):
        table.add_column(column, overflow="fold")
    for e in events:
        data = msgspec.to_builtins(e.event)
        reason = data.get("reason") or e.metadata.reason or ""
        table.add_row(
            str(e.position),
            e.recorded_at.isoformat(timespec="seconds"),
            e.type,
            e.metadata.actor or "",
            reason,
            _details(data),
        )
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    return 0


# ── project ──────────────────────────────────────────────────────────────────


async def _project(url: str, until_caught_up: bool) -> None:
    pool = await create_pool(url, min_size=1, max_size=4)
    runner = ProjectionRunner(pool)
    worker = LeaderWorker("projector", url, LOCK_PROJECTOR, runner.step, interval=1.0)
    listener = Listener(url, [worker.wake])
    worker.start()
    listener.start()
    console = _console()
    try:
        if not until_caught_up:
            console.print("slotlog project: running the projector (Ctrl-C to stop)")
            await asyncio.Event().wait()
        names = [p.name for p in ASYNC_PROJECTIONS]
        while True:
            behind = await lag(pool, names)
            if all(b.events == 0 for b in behind.values()):
                break
            await asyncio.sleep(0.1)
        console.print(f"slotlog project: caught up ({runner.applied} events applied here)")
    finally:
        await listener.stop()
        await worker.stop()
        await close_pool(pool)


def project_main(url: str, *, until_caught_up: bool) -> int:
    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        await _project(url, until_caught_up)

    with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
        asyncio.run(main())
    return 0
