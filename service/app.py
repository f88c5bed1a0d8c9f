"""create_app(): routes, lifespan (pool, logging, background workers), error rendering.

The only wiring place: endpoints live in service/api/*, the domain in service/domain/*, the store in
service/store.py. Errors of the ApiError family become `{"error": {...}}` answers; a lost database
connection becomes 503 `unavailable` with Retry-After; anything else becomes a 500 with no trace.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Final

import asyncpg
import msgspec
import structlog
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import Message, Receive, Scope, Send

from service import openapi
from service.api import availability, bookings, catalogue, ops, sessions
from service.api import events as events_api
from service.api import webhooks as webhooks_api
from service.api.common import client_id
from service.api.schemas import Health
from service.background import Background
from service.batching import HoldBatcher, SeatBatcher
from service.db import close_pool, create_pool
from service.errors import ApiError, Unavailable, ValidationFailed
from service.logs import configure_logging, log
from service.metrics import Metrics
from service.tenants import KeyCache

_JSON = msgspec.json.Encoder()
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_JSON.encode(body), status, headers, media_type="application/json")


def error_response(exc: ApiError, headers: dict[str, str] | None = None) -> Response:
    body = {"error": {"code": exc.code, "message": exc.message, "details": exc.details}}
    return json_response(body, exc.status, headers)


def bind_request_id(scope: Scope) -> tuple[bytes, bytes]:
    """The request's id, the client's `X-Request-Id` if sane, else a new one: kept in the
    request's state, bound to every log line of the request, and returned as the response
    header that carries it."""
    given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
    request_id = client_id(given) or os.urandom(16).hex()
    scope.setdefault("state", {})["request_id"] = request_id
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    return (b"x-request-id", request_id.encode())


class App(Starlette):
    """Starlette, with two things done once around every HTTP request rather than in middlewares:
    the request id (bind_request_id), returned as `X-Request-Id` on every answer, the 500s of
    Starlette's outermost error layer included; and the request's metrics, by route template.

    And a short way in for a request that a route matches in full (path and method): it goes
    straight to the route's endpoint, and its errors through the same two layers of handlers as
    in Starlette's stack (ExceptionMiddleware's, then ServerErrorMiddleware's: the handler for
    `Exception` answers if nothing was sent yet, then re-raises for the server's log). A route
    without path parameters (the hold among them) is found by one look-up, the others by their
    patterns in order, as Starlette's router would. Every other request (404, 405, a redirect, a
    mounted app) takes Starlette's whole stack, and so does every request of an app with
    middleware, a body limit or debug on, and of a route with middleware of its own or an
    endpoint that is not a coroutine function. In process, that stack (its two exception layers,
    the router, the route's wrapper, and the two middlewares of ours before this) cost a hold
    20-25 us, against 13-14 us this way; a hold costs the worker about 300 us in all."""

    def __init__(self, *, routes: Sequence[BaseRoute], lifespan: Any, metrics: Metrics) -> None:
        super().__init__(routes=routes, lifespan=lifespan)
        self.metrics = metrics
        self._exact: dict[tuple[str, str], Route] = {}
        #: The routes that the look-up does not stand for, in order, each with the Route that App
        #: serves itself, or None for one that the stack serves.
        self._scan: list[tuple[BaseRoute, Route | None]] = []
        for n, route in enumerate(routes):
            served = route if isinstance(route, Route) and _served_directly(route) else None
            if served is not None and not served.param_convertors:
                methods = served.methods or set()
                for method in methods:  # unless an earlier route takes it (the router would)
                    if not any(_matches_fully(r, method, served.path) for r in routes[:n]):
                        self._exact.setdefault((method, served.path), served)
                if all(self._exact.get((m, served.path)) is served for m in methods):
                    continue
            self._scan.append((route, served))
        #: (handlers by exception class, handlers by status, the last-resort handler): as
        #: Starlette's stack has them, taken on the first request as it builds its stack.
        self._layers: tuple[dict[Any, Any], dict[int, Any], Any] | None = None

    def _match(self, scope: Scope) -> tuple[Route, dict[str, Any]] | None:
        if scope.get("root_path") or self.user_middleware or self.max_body_size or self.debug:
            return None  # the stack: a prefix to strip, middleware or a body limit to apply
        exact = self._exact.get((scope["method"], scope["path"]))
        if exact is not None:
            return exact, {}
        for route, served in self._scan:
            match, child = route.matches(scope)
            if match is Match.FULL:
                return None if served is None else (served, child["path_params"])
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        started = time.perf_counter()
        header = bind_request_id(scope)
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            matched = self._match(scope)
            if matched is None:
                await super().__call__(scope, receive, send_with_id)
            else:
                await self._serve(*matched, scope, receive, send_with_id, lambda: status != 0)
        finally:
            template = getattr(scope.get("route"), "path", None) or "unmatched"
            seconds = time.perf_counter() - started
            self.metrics.served(scope["method"], template, status or 500, seconds)

    async def _serve(
        self,
        route: Route,
        path_params: dict[str, Any],
        scope: Scope,
        receive: Receive,
        send: Send,
        answered: Callable[[], bool],
    ) -> None:
        """What the router, the route's wrapper and the two exception layers would do."""
        if self._layers is None:
            handlers = {
                k: v for k, v in self.exception_handlers.items() if k not in (500, Exception)
            }
            # Starlette's own answer to an HTTPException, unless the app registers one.
            by_class = {HTTPException: ExceptionMiddleware(self.router).http_exception, **handlers}
            by_status = {k: v for k, v in handlers.items() if isinstance(k, int)}
            last = self.exception_handlers.get(500) or self.exception_handlers.get(Exception)
            self._layers = by_class, by_status, last
        by_class, by_status, last = self._layers
        scope.update(app=self, router=self.router, route=route, endpoint=route.endpoint)
        scope["path_params"] = path_params
        request = Request(scope, receive, send)
        try:
            try:
                response = await route.endpoint(request)
                await response(scope, receive, send)
            except Exception as exc:
                handler = None
                if isinstance(exc, HTTPException):
                    handler = by_status.get(exc.status_code)
                if handler is None:
                    handler = next((by_class[c] for c in type(exc).__mro__ if c in by_class), None)
                if handler is None:
                    raise
                if answered():
                    raise RuntimeError(
                        "Caught handled exception, but response already started."
                    ) from exc
                await (await _call(handler, request, exc))(scope, receive, send)
        except Exception as exc:
            answer = (
                PlainTextResponse("Internal Server Error", status_code=500)
                if last is None
                else await _call(last, Request(scope), exc)
            )
            if not answered():
                await answer(scope, receive, send)
            raise


def _served_directly(route: Route) -> bool:
    """A route whose endpoint App may call itself: a coroutine function wrapped by Starlette's
    request_response and nothing else (no middleware or body limit of the route's own)."""
    return (
        inspect.iscoroutinefunction(route.endpoint)
        and getattr(route.app, "__qualname__", "") == "request_response.<locals>.app"
    )


def _matches_fully(route: BaseRoute, method: str, path: str) -> bool:
    scope = {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}
    return bool(route.matches(scope)[0] is Match.FULL)


async def _call(handler: Any, request: Request, exc: Exception) -> Response:
    if inspect.iscoroutinefunction(handler):
        answer: Response = await handler(request, exc)
    else:
        answer = await run_in_threadpool(handler, request, exc)
    return answer


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    headers = {"Retry-After": "1"} if isinstance(exc, Unavailable) else None
    return error_response(exc, headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "error")
    err = ApiError(str(exc.detail))
    err.status, err.code = exc.status_code, code
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # Starlette's router names the methods of the first route that matched the path;
        # GET and PUT of one path are two routes here, so name every route's.
        allowed = {
            method
            for route in request.app.routes
            if isinstance(route, Route)
            and route.methods
            and route.matches(request.scope)[0] is not Match.NONE
            for method in route.methods
        }
        if allowed:
            headers["Allow"] = ", ".join(sorted(allowed))
    return error_response(err, headers)


def database_unavailable(exc: BaseException) -> bool:
    """Is this the database being unreachable (rather than a bug)? Connection failures, an
    administrator shutdown or recovery (SQLSTATE classes 08 and 57), too many connections (53),
    and timeouts waiting for a connection."""
    if isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError):
        return True
    state = getattr(exc, "sqlstate", None) or ""
    return isinstance(exc, asyncpg.PostgresError) and state[:2] in ("08", "57", "53")


async def _postgres_error(request: Request, exc: Exception) -> Response:
    if database_unavailable(exc):
        return await _database_down(request, exc)
    if (getattr(exc, "sqlstate", None) or "").startswith("22"):
        # A data exception: a value the database cannot take (bad input that got past the
        # validation above it). The client's fault, so 422; the database's own words (which
        # name query arguments) go to the log, with the request id the answer carries.
        log.warning("request.data_exception", error=str(exc))
        return error_response(
            ValidationFailed([("", "a value is out of the range or form the database can store")])
        )
    return await _internal(request, exc)


async def _database_down(request: Request, exc: Exception) -> Response:
    log.warning("database.unavailable", error=str(exc))
    return error_response(
        Unavailable("the database is unreachable; retry shortly"), {"Retry-After": "1"}
    )


async def _internal(request: Request, exc: Exception) -> Response:
    log.exception("request.failed")
    err = ApiError("internal error; the request id names it in the server log")
    err.status, err.code = 500, "internal_error"
    return error_response(err)


HEALTH_OPERATIONS = [
    openapi.Op("GET", "/healthz", "Liveness", key="none", responses={200: Health}),
    openapi.Op(
        "GET",
        "/readyz",
        "Readiness: database reachable, projection lag",
        key="none",
        raw_response={200: {"description": "ready", "content": {"application/json": {}}}},
        errors=[503],
    ),
    openapi.Op(
        "GET",
        "/openapi.json",
        "This document",
        key="none",
        raw_response={200: {"description": "OpenAPI 3.1", "content": {"application/json": {}}}},
    ),
]


#: The cycle collector's thresholds while serving (Python's are 700, 10, 10). A request makes
#: thousands of short-lived containers (rows, events, decisions), nearly all freed by reference
#: counting, yet every 700 of them started a collection: with Python's thresholds the collector
#: took 13-20 % of a worker's CPU time in the holds benchmark (py-spy). Cycles are still
#: collected, 70 times less often.
SERVING_COLLECTOR: Final = (50_000, 20, 20)


@contextlib.contextmanager
def collector_for_serving() -> Iterator[None]:
    """While serving: the objects that exist once the app has started (modules, routes, the
    pool) moved out of the collector's sight (gc.freeze), and SERVING_COLLECTOR's thresholds;
    both undone at shutdown. Process-wide: one serving app per process (as `slotlog serve`
    runs it); apps nested in one process must stop in the reverse order of their start."""
    before = gc.get_threshold()
    gc.collect()  # no start-up garbage frozen for the process's lifetime
    gc.freeze()
    gc.set_threshold(*SERVING_COLLECTOR)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def create_app(database_url: str | None = None, *, background: bool = True) -> Starlette:
    """The ASGI app. `background=False` runs no background workers (tests that drive them)."""
    configure_logging()
    url = database_url or os.environ.get("DATABASE_URL")
    if not url:
        raise RuntimeError(
            "DATABASE_URL is not set (slotlog serve sets it for the embedded server)"
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.pool = pool = await create_pool(url)
        jobs = Background(url, pool, metrics)  # commands, workers, wake-ups
        app.state.commands = jobs.commands
        app.state.seat_batcher = SeatBatcher(jobs.commands)
        app.state.hold_batcher = HoldBatcher(jobs.commands)
        app.state.keys = KeyCache()
        app.state.workers = jobs.workers
        if background:
            jobs.start()
        log.info("app.started")
        try:
            with collector_for_serving():
                yield
        finally:
            await jobs.stop()
            await close_pool(pool)

    metrics = Metrics()
    api_modules = [catalogue, availability, bookings, sessions, events_api, webhooks_api, ops]
    document = openapi.build(
        [*HEALTH_OPERATIONS, *(op for m in api_modules for op in getattr(m, "operations", []))]
    )
    document_body = msgspec.json.encode(document)

    async def openapi_json(request: Request) -> Response:
        return Response(document_body, media_type="application/json")

    # The router tries routes in order (a regular expression each, about 0.7 us): the hot ones
    # first. No two routes match one path and method, so the order changes nothing else.
    routes = [
        *bookings.routes,
        *availability.routes,
        *sessions.routes,
        *catalogue.routes,
        *events_api.routes,
        *webhooks_api.routes,
        Route("/healthz", healthz, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        *ops.routes,
    ]
    app = App(routes=routes, lifespan=lifespan, metrics=metrics)
    app.state.metrics = metrics
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    for exc_type in (OSError, TimeoutError, asyncpg.InterfaceError):
        app.add_exception_handler(exc_type, _database_down)
    app.add_exception_handler(asyncpg.PostgresError, _postgres_error)
    app.add_exception_handler(Exception, _internal)
    return app
