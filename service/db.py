"""Where the database comes from: the embedded PostgreSQL (pgserver) or `DATABASE_URL`; the pool;
applying schema.sql.

The embedded server is the zero-set-up default: its data lives under `SLOTLOG_DATA_DIR`
(default `./.slotlog/`), it listens on a Unix socket only, and it is stopped when the process that
started it exits. Nothing here knows about events or HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import asyncpg

SCHEMA = Path(__file__).resolve().parent.parent / "schema.sql"
DATABASE = "slotlog"


def data_dir() -> Path:
    return Path(os.environ.get("SLOTLOG_DATA_DIR", ".slotlog")).resolve()


def with_database(url: str, database: str) -> str:
    """The same server and credentials as `url`, another database."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    query.pop("dbname", None)
    return urlunsplit(
        (parts.scheme, parts.netloc, "/" + database, urlencode(query, doseq=True), "")
    )


class EmbeddedPostgres:
    """A pgserver-managed PostgreSQL whose data lives in `directory`; stop() or exit stops it."""

    def __init__(self, directory: Path, *, delete_on_exit: bool = False) -> None:
        try:
            with warnings.catch_warnings():
                # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI): harmless.
                warnings.simplefilter("ignore")
                import pgserver
        except ImportError:  # pragma: no cover - depends on the interpreter
            sys.exit(
                "slotlog: the embedded PostgreSQL (pgserver) is not installed for Python "
                f"{sys.version_info.major}.{sys.version_info.minor}; it has wheels for Python "
                "3.10-3.12 only. Use Python 3.11 or 3.12, or set DATABASE_URL to a PostgreSQL "
                "server (14 or newer)."
            )
        directory.mkdir(parents=True, exist_ok=True)
        self._server: Any = pgserver.get_server(  # type: ignore[attr-defined]
            directory, cleanup_mode="delete" if delete_on_exit else "stop"
        )
        self.admin_url: str = self._server.get_uri()

    @property
    def pid(self) -> int | None:
        pid: int | None = self._server.get_pid()
        return pid

    def stop(self) -> None:
        self._server.cleanup()


async def ensure_database(admin_url: str, database: str = DATABASE) -> str:
    """Create `database` on the server if it is missing; return its URL."""
    conn = await asyncpg.connect(admin_url)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()
    return with_database(admin_url, database)


async def migrate(url: str) -> None:
    """Apply schema.sql (idempotent)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(SCHEMA.read_text())
    finally:
        await conn.close()


async def _no_reset(conn: asyncpg.Connection) -> None:
    # The default pool reset costs a round trip on every release; slotlog never leaves session
    # state behind (no SET, no LISTEN on pooled connections, transactions always closed).
    return None


async def create_pool(url: str, *, min_size: int = 2, max_size: int = 20) -> asyncpg.Pool:
    pool: asyncpg.Pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        reset=_no_reset,
        server_settings={
            "application_name": "slotlog",
            # An idle open transaction would hold back the xmin horizon, and with it every
            # subscriber of the log (see service/store.py): never let one linger.
            "idle_in_transaction_session_timeout": "15000",
            # Every statement here is a short keyed read or write. Parallel workers (which the
            # planner starts when `events` has no statistics yet: halved holds/s in bench), JIT
            # compilation and re-planning the (large, prepared) command statement on each call
            # only cost CPU.
            "max_parallel_workers_per_gather": "0",
            "jit": "off",
            "plan_cache_mode": "force_generic_plan",
        },
    )
    return pool


POOL_CLOSE_SECONDS: Final = 5.0


async def close_pool(pool: asyncpg.Pool, within: float = POOL_CLOSE_SECONDS) -> None:
    """Close `pool` gracefully, or, after `within` seconds, without goodbyes. A graceful close
    waits, without a limit, for every connection to come back (a request that shutdown cut off
    may never give its back) and to close; a database that has stopped answering held a
    server's shutdown for as long as the kernel kept its sockets open. asyncpg terminates the
    pool when its close is cancelled."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            await pool.close()
