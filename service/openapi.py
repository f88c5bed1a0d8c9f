"""GET /openapi.json: the OpenAPI 3.1 document, generated from the msgspec request and response
Structs (`msgspec.json.schema_components`) and the operations each API module declares next to
its routes. Nothing here is a hand-written schema; a test checks every route is documented."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from service.api.schemas import ErrorBody

Key = Literal["sk", "pk", "none"]


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False
    where: Literal["query", "header"] = "query"
    description: str = ""


@dataclass(frozen=True, slots=True)
class Op:
    method: str
    path: str
    summary: str
    key: Key = "sk"
    body: type[Any] | None = None
    #: status -> response type; a tuple means one of several shapes (oneOf).
    responses: dict[int, type[Any] | tuple[type[Any], ...] | None] = field(default_factory=dict)
    params: Sequence[Param] = ()
    errors: Sequence[int] = ()
    raw_response: dict[int, dict[str, Any]] = field(default_factory=dict)


INT = {"type": "integer"}
MIN_POSITION = Param(
    "min_position",
    {"type": "integer", "minimum": 0},
    description="wait (at most 2 s) for this position",
)
IDEMPOTENCY = Param(
    "Idempotency-Key",
    {"type": "string", "maxLength": 255},
    where="header",
    description="retrying with the same key and body returns the first answer",
)
IF_MATCH = Param("If-Match", where="header", description='the booking version, e.g. "3"')
CURSOR = Param("cursor", description="next_cursor of the previous page")
LIMIT = Param("limit", {"type": "integer", "minimum": 1, "maximum": 200})

_ERROR_TEXT = {
    400: "malformed JSON",
    401: "missing or unknown key",
    403: "a public key on a secret route",
    404: "not found (also another tenant's id)",
    409: "conflict: slot_unavailable, not_enough_seats, hold_expired, invalid_transition, "
    "cancel_window_closed, outside_booking_window",
    412: "version_mismatch (If-Match)",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error or idempotency_key_reused",
    503: "unavailable: the database is unreachable (Retry-After)",
}


def _ref(t: type[Any]) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{t.__name__}"}


def build(
    operations: Iterable[Op], *, title: str = "slotlog", version: str = "1"
) -> dict[str, Any]:
    ops = list(operations)
    types: set[type[Any]] = {ErrorBody}
    for op in ops:
        if op.body is not None:
            types.add(op.body)
        for t in op.responses.values():
            types.update(t if isinstance(t, tuple) else (t,) if t is not None else ())
    ordered = sorted(types, key=lambda t: t.__name__)
    _, components = msgspec.json.schema_components(
        ordered, ref_template="#/components/schemas/{name}"
    )
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        slug = op.path.strip("/").replace("/", "_").replace("{", "").replace("}", "")
        operation: dict[str, Any] = {
            "summary": op.summary,
            "operationId": f"{op.method.lower()}_{slug}",
            "responses": {},
        }
        params = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
            }
            for name in _path_params(op.path)
        ]
        params += [
            {
                "name": p.name,
                "in": p.where,
                "required": p.required,
                "schema": p.schema,
                **({"description": p.description} if p.description else {}),
            }
            for p in op.params
        ]
        if params:
            operation["parameters"] = params
        if op.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _ref(op.body)}},
            }
        for status, t in op.responses.items():
            schema = (
                {"oneOf": [_ref(x) for x in t]} if isinstance(t, tuple) else _ref(t) if t else None
            )
            operation["responses"][str(status)] = {
                "description": "OK" if status < 300 else "",
                **({"content": {"application/json": {"schema": schema}}} if schema else {}),
            }
        for status, raw in op.raw_response.items():
            operation["responses"][str(status)] = raw
        errors = set(op.errors) | ({401, 503} if op.key != "none" else set())
        if op.key == "sk":
            errors.add(403)
        if op.body is not None:
            errors |= {400, 413, 415, 422}
        if params:
            errors.add(422)  # parameters are validated
        for status in sorted(errors):
            operation["responses"][str(status)] = {
                "description": _ERROR_TEXT.get(status, "error"),
                "content": {"application/json": {"schema": _ref(ErrorBody)}},
            }
        if op.key != "none":
            operation["security"] = [{"secretKey": []}] + (
                [{"publicKey": []}] if op.key == "pk" else []
            )
        paths.setdefault(op.path, {})[op.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "Event-sourced booking backend. Errors are "
            '{"error": {"code", "message", "details"}}.',
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "secretKey": {"type": "http", "scheme": "bearer", "description": "sk_… key"},
                "publicKey": {"type": "http", "scheme": "bearer", "description": "pk_… key"},
            },
        },
    }


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]
