"""Resources and services: PUT upserts by client-chosen id (Cronofy-style), GET, list."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service import streams
from service.api.common import (
    authenticate,
    decode_cursor,
    encode_cursor,
    encode_json,
    json_body,
    json_response,
    pool,
    query_int,
    query_str,
    run_command,
    wait_for_position,
)
from service.api.schemas import ResourcePage, ResourceView, ServicePage, ServiceView
from service.catalogue import (
    ResourceBody,
    ServiceBody,
    check_id,
    resource_upserted,
    service_upserted,
)
from service.decider import Appends
from service.errors import NotFound, ValidationFailed
from service.events import ResourceUpserted, ServiceUpserted, decode
from service.handler import Done, Reader
from service.openapi import CURSOR, IDEMPOTENCY, LIMIT, MIN_POSITION, Op


def resource_view(r: ResourceUpserted, version: int, position: int) -> ResourceView:
    return ResourceView(
        id=r.resource_id,
        name=r.name,
        timezone=r.timezone,
        weekly={k: [list(i) for i in v] for k, v in r.weekly.items()},
        overrides={k: [list(i) for i in v] for k, v in r.overrides.items()},
        metadata=r.metadata,
        version=version,
        position=position,
    )


def service_view(s: ServiceUpserted, version: int, position: int) -> ServiceView:
    fields = msgspec.structs.asdict(s)
    fields.pop("service_id")
    return ServiceView(
        id=s.service_id,
        duration_minutes=s.durations[0],
        version=version,
        position=position,
        **fields,
    )


def view_of(event: Any, version: int, position: int) -> ResourceView | ServiceView:
    if isinstance(event, ResourceUpserted):
        return resource_view(event, version, position)
    assert isinstance(event, ServiceUpserted)
    return service_view(event, version, position)


def _latest_view(done: Done, stream_id: str) -> ResourceView | ServiceView:
    rec = done.stream(stream_id)[-1]
    return view_of(rec.event, rec.version, rec.position)


async def put_resource(request: Request) -> Response:
    principal = await authenticate(request)
    resource_id = request.path_params["id"]
    check_id("resource", resource_id)
    body = await json_body(request, ResourceBody)
    event = resource_upserted(resource_id, body)
    stream_id = streams.resource(principal.tenant_id, resource_id)

    async def decide(r: Reader) -> Appends:
        current = await r.read_latest(stream_id)
        if current is not None and current.event == event:
            return {}
        return {stream_id: [event]}

    def render(done: Done) -> tuple[int, bytes]:
        return 200, encode_json(_latest_view(done, stream_id))

    return await run_command(request, principal, decide, render)


async def put_service(request: Request) -> Response:
    principal = await authenticate(request)
    service_id = request.path_params["id"]
    check_id("service", service_id)
    body = await json_body(request, ServiceBody)
    event = service_upserted(service_id, body)
    tenant = principal.tenant_id
    stream_id = streams.service(tenant, service_id)

    async def decide(r: Reader) -> Appends:
        _, found = await r.read((), [streams.resource(tenant, x) for x in event.resources])
        unknown = [
            (f"resources[{i}]", f"unknown resource {x!r}; PUT /v1/resources/{x} first")
            for i, x in enumerate(event.resources)
            if streams.resource(tenant, x) not in found
        ]
        if unknown:
            raise ValidationFailed(unknown)
        current = await r.read_latest(stream_id)
        if current is not None and current.event == event:
            return {}
        return {stream_id: [event]}

    def render(done: Done) -> tuple[int, bytes]:
        return 200, encode_json(_latest_view(done, stream_id))

    return await run_command(request, principal, decide, render)


async def _get(request: Request, table: str, key: str) -> Response:
    principal = await authenticate(request)
    await wait_for_position(request)
    row = await pool(request).fetchrow(
        f"SELECT body::text AS body, version, position FROM {table} "
        f"WHERE tenant_id = $1 AND {key} = $2",
        principal.tenant_id,
        request.path_params["id"],
    )
    if row is None:
        kind = key.removesuffix("_id")
        raise NotFound(f"{kind} {request.path_params['id']!r} does not exist")
    return json_response(_row_view(row))


def _row_view(row: Any) -> ResourceView | ServiceView:
    return view_of(decode(row["body"]), row["version"], row["position"])


async def _list(request: Request, table: str, key: str) -> Response:
    principal = await authenticate(request)
    await wait_for_position(request)
    limit = query_int(request, "limit", 50, lo=1, hi=200)
    assert limit is not None
    cursor = query_str(request, "cursor")
    after = decode_cursor(cursor, 1)[0] if cursor else ""
    rows = await pool(request).fetch(
        f"SELECT {key} AS id, body::text AS body, version, position FROM {table} "
        f"WHERE tenant_id = $1 AND {key} > $2 ORDER BY {key} LIMIT $3",
        principal.tenant_id,
        after,
        limit + 1,
    )
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1]["id"]) if len(rows) > limit else None
    views = [_row_view(r) for r in page]
    if table == "rm_resources":
        return json_response(ResourcePage(data=views, next_cursor=next_cursor))  # type: ignore[arg-type]
    return json_response(ServicePage(data=views, next_cursor=next_cursor))  # type: ignore[arg-type]


async def get_resource(request: Request) -> Response:
    return await _get(request, "rm_resources", "resource_id")


async def get_service(request: Request) -> Response:
    return await _get(request, "rm_services", "service_id")


async def list_resources(request: Request) -> Response:
    return await _list(request, "rm_resources", "resource_id")


async def list_services(request: Request) -> Response:
    return await _list(request, "rm_services", "service_id")


async def load_service(
    request: Request, tenant: str, service_id: str
) -> tuple[ServiceUpserted, dict[str, ResourceUpserted]]:
    """A service and its pool's resources, from the read models (for availability)."""
    db = pool(request)
    row = await db.fetchrow(
        "SELECT body::text AS body FROM rm_services WHERE tenant_id = $1 AND service_id = $2",
        tenant,
        service_id,
    )
    if row is None:
        raise NotFound(f"service {service_id!r} does not exist", service=service_id)
    service = msgspec.json.decode(row["body"], type=ServiceUpserted)
    rows = await db.fetch(
        "SELECT body::text AS body FROM rm_resources WHERE tenant_id = $1 "
        "AND resource_id = ANY($2::text[])",
        tenant,
        service.resources,
    )
    resources = {
        r.resource_id: r
        for r in (msgspec.json.decode(x["body"], type=ResourceUpserted) for x in rows)
    }
    return service, resources


routes = [
    Route("/v1/resources", list_resources, methods=["GET"]),
    Route("/v1/resources/{id}", put_resource, methods=["PUT"]),
    Route("/v1/resources/{id}", get_resource, methods=["GET"]),
    Route("/v1/services", list_services, methods=["GET"]),
    Route("/v1/services/{id}", put_service, methods=["PUT"]),
    Route("/v1/services/{id}", get_service, methods=["GET"]),
]


operations = [
    Op(
        "GET",
        "/v1/resources",
        "List resources",
        params=[LIMIT, CURSOR, MIN_POSITION],
        responses={200: ResourcePage},
        errors=[422],
    ),
    Op(
        "PUT",
        "/v1/resources/{id}",
        "Create or update a resource (a bookable calendar)",
        body=ResourceBody,
        responses={200: ResourceView},
        params=[IDEMPOTENCY],
    ),
    Op(
        "GET",
        "/v1/resources/{id}",
        "Read a resource",
        params=[MIN_POSITION],
        responses={200: ResourceView},
        errors=[404],
    ),
    Op(
        "GET",
        "/v1/services",
        "List services",
        params=[LIMIT, CURSOR, MIN_POSITION],
        responses={200: ServicePage},
        errors=[422],
    ),
    Op(
        "PUT",
        "/v1/services/{id}",
        "Create or update a service (what can be booked)",
        body=ServiceBody,
        responses={200: ServiceView},
        params=[IDEMPOTENCY],
    ),
    Op(
        "GET",
        "/v1/services/{id}",
        "Read a service",
        params=[MIN_POSITION],
        responses={200: ServiceView},
        errors=[404],
    ),
]
