"""service/app.py's App serves a request that a route matches in full by a short way of its own
(no middleware stack, no router): it must pick the route that Starlette's router would, answer
as Starlette's stack would (errors, handlers, metrics, the request id), and leave everything else
(404, 405, middleware it would skip) to the stack."""

from __future__ import annotations

import re
from typing import Any

import pytest
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

from service.app import App, _api_error, _http_error, _internal, create_app
from service.errors import ApiError, NotFound
from service.metrics import Metrics
from tests.conftest import Api


def router_choice(app: App, scope: dict[str, Any]) -> tuple[Route, dict[str, Any]] | None:
    """What Starlette's router does: the first route in order that matches in full."""
    for route in app.router.routes:
        match, child = route.matches(scope)
        if match is Match.FULL:
            assert isinstance(route, Route)
            return route, child["path_params"]
    return None


def scope_for(method: str, path: str) -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}


def test_the_short_way_picks_the_route_the_router_would_for_every_route_and_method() -> None:
    app = create_app("postgresql://nobody@127.0.0.1/none", background=False)
    assert isinstance(app, App)
    checked = 0
    for route in app.router.routes:
        assert isinstance(route, Route)
        path = re.sub(r"\{(\w+)\}", r"x_\1", route.path)
        for method in sorted(route.methods or ()):
            scope = scope_for(method, path)
            chosen = app._match(scope)
            assert chosen is not None, (method, path)
            assert chosen == router_choice(app, scope), (method, path)
            checked += 1
    assert checked > 40
    # Not matched in full: left to Starlette's stack (its 404 and 405 answers).
    assert app._match(scope_for("GET", "/v1/nothing")) is None
    assert app._match(scope_for("DELETE", "/v1/bookings")) is None
    assert app._match(scope_for("PATCH", "/v1/bookings/x1")) is None
    # Mounted under a prefix: the router strips it, so the stack serves it.
    assert app._match({**scope_for("POST", "/api/v1/bookings"), "root_path": "/api"}) is None


async def test_a_route_with_path_parameters_answers_404_and_405_with_the_request_id(
    api: Api,
) -> None:
    r = await api.client.get(
        "/v1/bookings/bk_missing", headers={**api.secret, "x-request-id": "rq-1"}
    )
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"
    assert r.headers["x-request-id"] == "rq-1"
    r = await api.client.patch("/v1/bookings/bk_missing", headers=api.secret)
    assert r.status_code == 405
    assert len(r.headers["x-request-id"]) == 32


# ── the short way answers as the stack does ──────────────────────────────────


class Boom(Exception):
    pass


async def ok(request: Request) -> Response:
    return Response(b"ok")


async def second(request: Request) -> Response:
    return Response(b"second")


async def param(request: Request) -> Response:
    return Response(request.path_params["id"].encode())


async def search(request: Request) -> Response:
    return Response(b"search")


async def boom(request: Request) -> Response:
    raise Boom("a bug")


async def not_found(request: Request) -> Response:
    raise NotFound("no such thing")


async def http_404(request: Request) -> Response:
    raise HTTPException(404)


async def http_418(request: Request) -> Response:
    raise HTTPException(418)


def failing_task() -> None:
    raise RuntimeError("after the answer")


async def background(request: Request) -> Response:
    return Response(b"sent", background=BackgroundTask(failing_task))


class Unsendable(Response):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("failed before the start of the answer")


async def unsendable(request: Request) -> Response:
    return Unsendable(b"")


def sync_endpoint(request: Request) -> Response:
    raise Boom("in a thread")


async def raising_handler(request: Request, exc: Exception) -> Response:
    raise ValueError("a bug in a handler")


def status_handler(request: Request, exc: Exception) -> Response:
    return Response(b"by status", 404)


def small_app(*, http_handler: bool = True) -> App:
    app = App(
        routes=[
            Route("/ok", ok),
            Route("/ok", second),  # the router takes the first of two
            Route("/x/{id}", param),
            Route("/x/search", search),  # found by the pattern before it
            Route("/boom", boom),
            Route("/missing", not_found),
            Route("/h404", http_404),
            Route("/h418", http_418),
            Route("/background", background),
            Route("/unsendable", unsendable),
            Route("/sync", sync_endpoint),
            Route("/zipped", ok, middleware=[Middleware(GZipMiddleware)]),
        ],
        lifespan=None,
        metrics=Metrics(),
    )
    app.add_exception_handler(ApiError, _api_error)
    if http_handler:
        app.add_exception_handler(HTTPException, _http_error)
        app.add_exception_handler(404, status_handler)
    app.add_exception_handler(Boom, raising_handler)
    app.add_exception_handler(Exception, _internal)
    return app


async def call(app: App, path: str) -> tuple[int | None, bytes, bool, str | None, list[Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "root_path": "",
        "headers": [],
        "query_string": b"",
        "server": ("test", 80),
        "scheme": "http",
    }
    raised = None
    try:
        await app(scope, receive, send)
    except Exception as exc:
        raised = repr(exc)
    start = next((m for m in sent if m["type"] == "http.response.start"), None)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    has_id = start is not None and any(k == b"x-request-id" for k, _ in start["headers"])
    served = sorted(app.metrics._served)
    return (start["status"] if start else None), body[:40], has_id, raised, served


PATHS = [
    "/ok",
    "/x/search",
    "/x/other",
    "/boom",
    "/missing",
    "/h404",
    "/h418",
    "/background",
    "/unsendable",
    "/sync",
    "/zipped",
    "/nowhere",
]


@pytest.mark.parametrize("http_handler", [True, False])
@pytest.mark.parametrize("path", PATHS)
async def test_the_short_way_answers_as_the_stack_would(path: str, http_handler: bool) -> None:
    short = small_app(http_handler=http_handler)
    stack = small_app(http_handler=http_handler)
    stack._match = lambda scope: None  # type: ignore[method-assign]
    assert await call(short, path) == await call(stack, path)


async def test_what_the_short_way_serves_and_what_it_leaves_to_the_stack() -> None:
    app = small_app()
    taken = {p: app._match(scope_for("GET", p)) for p in PATHS}
    assert {p for p, m in taken.items() if m is None} == {"/sync", "/zipped", "/nowhere"}
    assert await call(app, "/ok") == (200, b"ok", True, None, [("GET", "/ok", 200)])
    assert (await call(app, "/x/search"))[:2] == (200, b"search")
    status, body, has_id, raised, served = await call(app, "/boom")
    assert (status, has_id) == (500, True) and ("GET", "/boom", 500) in served
    assert b"internal_error" in body and raised == "ValueError('a bug in a handler')"
    assert (await call(app, "/h404"))[:2] == (404, b"by status")
    # Middleware of the app's own would be skipped: with any, everything takes the stack.
    app.add_middleware(GZipMiddleware)
    assert app._match(scope_for("GET", "/ok")) is None
