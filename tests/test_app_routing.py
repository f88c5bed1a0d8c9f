"""service/app.py's App serves a request that a route matches in full by a short way of its own
(no middleware stack, no router): it must pick the route that Starlette's router would, for every
route and method, and leave everything else (404, 405) to the stack."""

from __future__ import annotations

import re
from typing import Any

from starlette.routing import Match, Route

from service.app import App, create_app
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


async def test_a_route_with_path_parameters_answers_with_its_id_and_template(api: Api) -> None:
    r = await api.client.get(
        "/v1/bookings/bk_missing", headers={**api.secret, "x-request-id": "rq-1"}
    )
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"
    assert r.headers["x-request-id"] == "rq-1"
    r = await api.client.patch("/v1/bookings/bk_missing", headers=api.secret)
    assert r.status_code == 405
    assert len(r.headers["x-request-id"]) == 32
