"""Webhook subscriptions (PUT/GET/DELETE /v1/webhooks/{id}) and their deliveries
(GET /v1/webhooks/{id}/deliveries). Delivery itself is service/webhooks.py's, in the background.

A subscription is configuration, not a booking fact, so it is a plain table rather than a stream.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.api.common import (
    BIGINT_MAX,
    authenticate,
    decode_cursor,
    digits,
    encode_cursor,
    json_body,
    json_response,
    pool,
    query_int,
    query_str,
)
from service.api.schemas import View
from service.catalogue import check_id
from service.errors import NotFound, ValidationFailed
from service.events import AnyEvent
from service.openapi import CURSOR, LIMIT, Op, Param

EVENT_TYPES = frozenset(t.__name__ for t in get_args(AnyEvent))
DeliveryStatus = Literal["pending", "delivered", "failed"]


class WebhookBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    url: Annotated[str, Meta(min_length=1, max_length=2048)]
    events: Annotated[list[str], Meta(min_length=1, max_length=100)]
    secret: Annotated[str, Meta(min_length=8, max_length=255)]


class WebhookView(View, kw_only=True):
    id: str
    url: str
    events: list[str]
    created_at: datetime
    updated_at: datetime


class DeliveryAttempt(View, kw_only=True):
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: float


class DeliveredEvent(View, kw_only=True):
    id: str
    position: int
    type: str


class DeliveryView(View, kw_only=True):
    id: int
    event: DeliveredEvent
    status: DeliveryStatus
    attempt_count: int
    attempts: list[DeliveryAttempt]
    next_attempt_at: datetime | None
    created_at: datetime
    completed_at: datetime | None


class DeliveryPage(View, kw_only=True):
    data: list[DeliveryView]
    next_cursor: str | None


def check_body(body: WebhookBody) -> None:
    errors: list[tuple[str, str]] = []
    parts = urlsplit(body.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        errors.append(("url", f"expected an http:// or https:// URL with a host, got {body.url!r}"))
    for i, t in enumerate(body.events):
        if t != "*" and t not in EVENT_TYPES:
            errors.append((f"events[{i}]", f"unknown event type {t!r}; use '*' for every type"))
    if errors:
        raise ValidationFailed(errors)


def view(row: Any) -> WebhookView:
    return WebhookView(
        id=row["webhook_id"],
        url=row["url"],
        events=list(row["events"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def put_webhook(request: Request) -> Response:
    principal = await authenticate(request)
    webhook_id = request.path_params["id"]
    check_id("webhook", webhook_id)
    body = await json_body(request, WebhookBody)
    check_body(body)
    row = await pool(request).fetchrow(
        "INSERT INTO webhook_subscriptions AS w (tenant_id, webhook_id, url, events, secret) "
        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, webhook_id) DO UPDATE SET "
        "url = excluded.url, events = excluded.events, secret = excluded.secret, "
        "updated_at = now() RETURNING w.*",
        principal.tenant_id,
        webhook_id,
        body.url,
        list(dict.fromkeys(body.events)),
        body.secret,
    )
    return json_response(view(row))


async def _find(request: Request, tenant: str) -> Any:
    webhook_id = request.path_params["id"]
    row = await pool(request).fetchrow(
        "SELECT * FROM webhook_subscriptions WHERE tenant_id = $1 AND webhook_id = $2",
        tenant,
        webhook_id,
    )
    if row is None:
        raise NotFound(f"webhook {webhook_id!r} does not exist")
    return row


async def get_webhook(request: Request) -> Response:
    principal = await authenticate(request)
    return json_response(view(await _find(request, principal.tenant_id)))


async def delete_webhook(request: Request) -> Response:
    principal = await authenticate(request)
    await _find(request, principal.tenant_id)
    await pool(request).execute(
        "DELETE FROM webhook_subscriptions WHERE tenant_id = $1 AND webhook_id = $2",
        principal.tenant_id,
        request.path_params["id"],
    )
    return Response(status_code=204)


_ATTEMPTS = msgspec.json.Decoder(list[DeliveryAttempt])


async def list_deliveries(request: Request) -> Response:
    principal = await authenticate(request)
    await _find(request, principal.tenant_id)
    limit = query_int(request, "limit", 50, lo=1, hi=200)
    assert limit is not None
    status = query_str(request, "status")
    if status is not None and status not in get_args(DeliveryStatus):
        raise ValidationFailed([("status", "must be one of pending, delivered, failed")])
    cursor = query_str(request, "cursor")
    after = 0
    if cursor is not None:
        (raw,) = decode_cursor(cursor, 1)
        position = digits(raw)
        if position is None or position > BIGINT_MAX:
            raise ValidationFailed([("cursor", "invalid cursor; pass back next_cursor unchanged")])
        after = position
    rows = await pool(request).fetch(
        "SELECT delivery_id, event_position, event_type, status, attempt_count, "
        "attempts::text AS attempts, next_attempt_at, created_at, completed_at "
        "FROM webhook_deliveries WHERE tenant_id = $1 AND webhook_id = $2 AND delivery_id > $3 "
        "AND ($4::text IS NULL OR status = $4) ORDER BY delivery_id LIMIT $5",
        principal.tenant_id,
        request.path_params["id"],
        after,
        status,
        limit + 1,
    )
    page = rows[:limit]
    data = [
        DeliveryView(
            id=r["delivery_id"],
            event=DeliveredEvent(
                id=f"evt_{r['event_position']}", position=r["event_position"], type=r["event_type"]
            ),
            status=r["status"],
            attempt_count=r["attempt_count"],
            attempts=_ATTEMPTS.decode(r["attempts"]),
            next_attempt_at=r["next_attempt_at"] if r["status"] == "pending" else None,
            created_at=r["created_at"],
            completed_at=r["completed_at"],
        )
        for r in page
    ]
    next_cursor = encode_cursor(str(page[-1]["delivery_id"])) if len(rows) > limit else None
    return json_response(DeliveryPage(data=data, next_cursor=next_cursor))


routes = [
    Route("/v1/webhooks/{id}", put_webhook, methods=["PUT"]),
    Route("/v1/webhooks/{id}", get_webhook, methods=["GET"]),
    Route("/v1/webhooks/{id}", delete_webhook, methods=["DELETE"]),
    Route("/v1/webhooks/{id}/deliveries", list_deliveries, methods=["GET"]),
]

operations = [
    Op(
        "PUT",
        "/v1/webhooks/{id}",
        "Create or replace a webhook subscription (http/https only)",
        body=WebhookBody,
        responses={200: WebhookView},
    ),
    Op(
        "GET",
        "/v1/webhooks/{id}",
        "A webhook subscription",
        responses={200: WebhookView},
        errors=[404],
    ),
    Op(
        "DELETE",
        "/v1/webhooks/{id}",
        "Delete a subscription and its pending deliveries",
        responses={204: None},
        errors=[404],
    ),
    Op(
        "GET",
        "/v1/webhooks/{id}/deliveries",
        "Deliveries of a subscription, oldest first, with their attempts",
        params=[
            Param("status", {"type": "string", "enum": ["pending", "delivered", "failed"]}),
            LIMIT,
            CURSOR,
        ],
        responses={200: DeliveryPage},
        errors=[404, 422],
    ),
]
