"""Where the benchmark runs: the PostgreSQL server (embedded pgserver in a temporary directory,
or DATABASE_URL's server), a fresh database created for the run and dropped after it, and the
facts printed in the header (machine, PostgreSQL version, durability settings).
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from bench.processes import parent_of
from service.db import EmbeddedPostgres, migrate, with_database


class Machine(msgspec.Struct, kw_only=True):
    cpus: int
    memory_gib: float
    load_average: tuple[float, float, float]
    python: str
    platform: str


class Postgres(msgspec.Struct, kw_only=True):
    source: str  # "embedded (pgserver)" or "DATABASE_URL"
    version: str
    database: str
    settings: dict[str, str]
    postmaster_pid: int | None = None


DURABILITY = (
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "wal_sync_method",
    "shared_buffers",
    "max_connections",
)


def machine() -> Machine:
    mem = 0.0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) / 1024 / 1024
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return Machine(
        cpus=os.cpu_count() or 0,
        memory_gib=round(mem, 1),
        load_average=(round(load[0], 2), round(load[1], 2), round(load[2], 2)),
        python=sys.version.split()[0],
        platform=platform.platform(),
    )


async def describe(url: str, source: str, database: str) -> Postgres:
    conn = await asyncpg.connect(url)
    try:
        version = await conn.fetchval("SHOW server_version")
        settings = {name: str(await conn.fetchval(f"SHOW {name}")) for name in DURABILITY}
        # The postmaster is the parent of this connection's backend (while it lives).
        postmaster = parent_of(int(await conn.fetchval("SELECT pg_backend_pid()")))
    finally:
        await conn.close()
    return Postgres(
        source=source,
        version=str(version),
        database=database,
        settings=settings,
        postmaster_pid=postmaster,
    )


@contextlib.asynccontextmanager
async def server() -> AsyncIterator[tuple[str, str]]:
    """(admin URL, source): DATABASE_URL's server, or an embedded one deleted afterwards."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url, "DATABASE_URL"
        return
    directory = Path(tempfile.mkdtemp(prefix="slotlog-bench-"))
    embedded = EmbeddedPostgres(directory / "pg", delete_on_exit=True)
    try:
        yield with_database(embedded.admin_url, "postgres"), "embedded (pgserver)"
    finally:
        embedded.stop()
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.asynccontextmanager
async def fresh_database(admin_url: str) -> AsyncIterator[tuple[str, str]]:
    """(URL, name) of a new database with schema.sql applied; dropped on exit."""
    name = f"slotlog_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = with_database(admin_url, name)
    try:
        await migrate(url)
        yield url, name
    finally:
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def as_dict(value: Any) -> Any:
    return msgspec.to_builtins(value)
