"""The bare-INSERT endpoint: the HTTP baseline. A Starlette app whose one route inserts the
posted event-shaped JSON as one row, served by uvicorn exactly as `slotlog serve` serves slotlog
(one worker, uvloop/httptools, log level warning, no access log): `python -m bench.bare_app
--port P` with DATABASE_URL set. The table is `bench_bare_http` (created by the bench).

Its pool is configured as slotlog's (service/db.py): no per-release reset, 2-20 connections.
Imports nothing from slotlog, so it measures only Starlette + uvicorn + asyncpg + PostgreSQL.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

TABLE = "bench_bare_http"
INSERT = (
    f"INSERT INTO {TABLE} (stream_id, version, tenant_id, type, data, metadata) "
    "VALUES ($1, 1, $2, $3, $4, $5)"
)
METADATA = '{"tenant": "tn_bench", "actor": "key_bench"}'
_ids = itertools.count(1)


async def _no_reset(conn: asyncpg.Connection) -> None:
    return None


async def insert(request: Request) -> Response:
    body = (await request.body()).decode()
    pool: Any = request.app.state.pool
    await pool.execute(
        INSERT, f"tn_bench:bk:{os.getpid()}-{next(_ids)}", "tn_bench", "SlotHeld", body, METADATA
    )
    return Response(b'{"ok":true}', 201, media_type="application/json")


async def healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


def create_app() -> Starlette:
    url = os.environ["DATABASE_URL"]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.pool = await asyncpg.create_pool(url, min_size=2, max_size=20, reset=_no_reset)
        try:
            yield
        finally:
            await app.state.pool.close()

    routes = [
        Route("/insert", insert, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m bench.bare_app")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    uvicorn.run(
        "bench.bare_app:create_app",
        factory=True,
        host="127.0.0.1",
        port=args.port,
        workers=args.workers,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
