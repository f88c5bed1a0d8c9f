"""Operations endpoints: GET /readyz (database reachable, projection lag, which background
workers this process leads) and GET /metrics (Prometheus text format)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import asyncpg
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from projections.runner import ASYNC_PROJECTIONS, lag
from service.api.common import json_response
from service.errors import Unavailable
from service.logs import log
from service.metrics import Metrics, refresh_from_database
from service.openapi import Op

#: The asynchronous consumers of the log whose lag is reported.
CONSUMERS = (*(p.name for p in ASYNC_PROJECTIONS), "webhooks")
# Whatever stops us from talking to the database (asyncpg also raises InternalClientError on a
# connection the server has just terminated): a probe answers 503 rather than 500 for all of it.
DATABASE_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


def _leading(request: Request) -> dict[str, bool]:
    return {w.name: bool(w.leading) for w in getattr(request.app.state, "workers", [])}


def unavailable(message: str) -> Response:
    err = Unavailable(message)
    body = {"error": {"code": err.code, "message": err.message, "details": err.details}}
    return json_response(body, err.status, {"Retry-After": "1"})


async def readyz(request: Request) -> Response:
    db: asyncpg.Pool = request.app.state.pool
    started = time.perf_counter()
    try:
        async with asyncio.timeout(3):
            await db.fetchval("SELECT 1")
            latency_ms = (time.perf_counter() - started) * 1e3
            behind = await lag(db, CONSUMERS)
    except DATABASE_ERRORS as exc:
        log.warning("readyz.database_unreachable", error=repr(exc))
        return unavailable("the database is unreachable")
    body: dict[str, Any] = {
        "status": "ok",
        "pid": os.getpid(),
        "database": {"ok": True, "latency_ms": round(latency_ms, 2)},
        "workers": _leading(request),
        "projections": {
            name: {
                "events_behind": b.events,
                "seconds_behind": round(b.seconds, 3),
                "checkpoint": b.checkpoint.encode(),
            }
            for name, b in behind.items()
        },
    }
    return json_response(body)


async def metrics(request: Request) -> Response:
    m: Metrics = request.app.state.metrics
    for name, leading in _leading(request).items():
        m.leading.labels(name).set(1 if leading else 0)
    try:
        async with asyncio.timeout(3):
            await refresh_from_database(m, request.app.state.pool, CONSUMERS)
    except DATABASE_ERRORS as exc:  # still answer with what this process knows
        log.warning("metrics.database_unreachable", error=repr(exc))
    return Response(m.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


routes = [
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]

operations = [
    Op(
        "GET",
        "/metrics",
        "Prometheus metrics (text exposition format)",
        key="none",
        raw_response={200: {"description": "metrics", "content": {"text/plain": {}}}},
    ),
]
