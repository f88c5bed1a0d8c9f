"""/openapi.json: a valid OpenAPI 3.1 document covering every route, whose schemas (generated
from the msgspec types) match real answers."""

from __future__ import annotations

from typing import Any

import jsonschema
from openapi_spec_validator import validate
from starlette.routing import Route

from tests.conftest import Api
from tests.helpers import at, hold, resource, service, weekday_ahead


async def document(api: Api) -> dict[str, Any]:
    r = await api.client.get("/openapi.json")
    assert r.status_code == 200
    doc: dict[str, Any] = r.json()
    return doc


def conforms(doc: dict[str, Any], schema_name: str, instance: Any) -> None:
    root = {"$ref": f"#/components/schemas/{schema_name}", "components": doc["components"]}
    jsonschema.validate(instance, root, cls=jsonschema.Draft202012Validator)


async def test_the_document_is_valid_openapi_3_1(api: Api) -> None:
    doc = await document(api)
    assert doc["openapi"] == "3.1.0"
    validate(doc)


async def test_every_route_is_documented(api: Api) -> None:
    doc = await document(api)
    app = api.client._transport.app  # type: ignore[attr-defined]
    missing = [
        f"{method} {route.path}"
        for route in app.routes
        if isinstance(route, Route)
        for method in (route.methods or set()) - {"HEAD"}
        if method.lower() not in doc["paths"].get(route.path, {})
    ]
    assert missing == []


async def test_real_answers_match_their_schemas(api: Api) -> None:
    doc = await document(api)
    day = weekday_ahead(0)
    conforms(doc, "ResourceView", await resource(api, "host"))
    conforms(doc, "ServiceView", await service(api, "s", ["host"]))
    booking = await hold(api, "s", at(day, "09:00"), customer={"name": "O"})
    conforms(doc, "BookingView", booking)
    cancelled = await api.post(
        f"/v1/bookings/{booking['id']}/cancel", {"reason": "r", "by": "owner"}
    )
    conforms(doc, "BookingView", cancelled.json())
    listing = await api.get("/v1/bookings")
    conforms(doc, "BookingPage", listing.json())
    history = await api.get(f"/v1/bookings/{booking['id']}/history")
    conforms(doc, "HistoryView", history.json())
    slots = await api.get(
        "/v1/availability",
        params={
            "service": "s",
            "from": day.isoformat(),
            "to": day.isoformat(),
            "timezone": "Asia/Tokyo",
        },
    )
    conforms(doc, "AvailabilityView", slots.json())
    grouped = await api.get(
        "/v1/availability",
        params={"service": "s", "from": day.isoformat(), "to": day.isoformat(), "group_by": "day"},
    )
    conforms(doc, "AvailabilityByDay", grouped.json())
    err = await api.post("/v1/bookings", {"service": "nope"})
    conforms(doc, "ErrorBody", err.json())
