"""What every endpoint shares: authentication, body decoding with errors that name the field,
query parsing, idempotent command answers, and waiting for `min_position`.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import time
from datetime import UTC, date, datetime
from typing import Any, Final, TypeVar
from zoneinfo import ZoneInfo

import asyncpg
import msgspec
from starlette.requests import Request
from starlette.responses import Response

from service.errors import (
    Forbidden,
    MalformedJson,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
    ValidationFailed,
)
from service.events import EventMeta
from service.handler import Commands, Idempotency, Render, Stored
from service.tenants import KeyCache, Principal

T = TypeVar("T")
MAX_BODY = 64 * 1024
ENCODER = msgspec.json.Encoder()
_DECODERS: dict[type[Any], msgspec.json.Decoder[Any]] = {}
UTC_ZONE = ZoneInfo("UTC")


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(ENCODER.encode(body), status, headers, media_type="application/json")


def pool(request: Request) -> asyncpg.Pool:
    p: asyncpg.Pool = request.app.state.pool
    return p


def commands(request: Request) -> Commands:
    c: Commands = request.app.state.commands
    return c


def now() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """A new random id: 80 bits from the OS, as 20 hex digits (uuid4's hex cut to 20 costs four
    times as much for the same bits)."""
    return f"{prefix}_{os.urandom(10).hex()}"


async def authenticate(request: Request, *, public_ok: bool = False) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("missing or malformed Authorization header; use 'Bearer <key>'")
    keys: KeyCache = request.app.state.keys
    principal = await keys.lookup(pool(request), key.strip())
    if principal is None:
        raise Unauthorized("unknown API key")
    if principal.kind == "public" and not public_ok:
        raise Forbidden("a public key may only read availability and the session listing")
    request.state.principal = principal
    return principal


def meta(request: Request, principal: Principal, idempotency_key: str | None = None) -> EventMeta:
    request_id = getattr(request.state, "request_id", None)
    return EventMeta(
        tenant=principal.tenant_id,
        actor=principal.key_id,
        request_id=request_id,
        correlation_id=correlation_id(request) or request_id,
        causation_id=request_id,
        idempotency_key=idempotency_key,
    )


#: The longest id a client may send in a header (X-Request-Id, X-Correlation-Id).
MAX_CLIENT_ID: Final = 128


def client_id(given: str | None) -> str | None:
    """An id a client sent in a header, if it is sane to keep (in logs, answers and events'
    metadata): 1-128 printable characters; else None."""
    return given if given and len(given) <= MAX_CLIENT_ID and given.isprintable() else None


def correlation_id(request: Request) -> str | None:
    """The client's X-Correlation-Id, kept in every event's metadata when it is an id like a
    request id (client_id); otherwise the request's own id stands in."""
    return client_id(request.headers.get("x-correlation-id"))


#: The largest bigint: positions and cursors past it are refused before they reach the database.
BIGINT_MAX: Final = 2**63 - 1


def digits(text: str) -> int | None:
    """`text` as a number when it is ASCII digits only, else None (str.isdigit() alone also
    takes "²", which int() refuses)."""
    return int(text) if text.isascii() and text.isdigit() else None


async def read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    size_declared = None if declared is None else digits(declared)
    if size_declared is not None and size_declared > MAX_BODY:
        raise PayloadTooLarge(f"the body is {declared} bytes; at most {MAX_BODY} are accepted")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise PayloadTooLarge(f"the body is over {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _path_of(message: str) -> tuple[str, str]:
    """Split msgspec's 'Expected `int`, got `str` - at `$.seats[0]`' into (path, message)."""
    text, sep, where = message.rpartition(" - at `")
    if not sep:
        text, where = message, "$`"
    path = where.rstrip("`").removeprefix("$").removeprefix(".")
    if text.startswith("Object contains unknown field"):
        field = text.split("`")[1]
        return (f"{path}.{field}" if path else field), f"unknown field {field!r}"
    if text.startswith("Object missing required field"):
        field = text.split("`")[1]
        return (f"{path}.{field}" if path else field), "this field is required"
    return path, text


# PostgreSQL's jsonb and text cannot hold NUL, and UTF-8 cannot hold an unpaired surrogate:
# refuse them at the door with a clear error instead of failing deep inside the database.
_UNSTORABLE = re.compile(
    rb"\\u0000|\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)


def decode(body: bytes, kind: type[T], *, allow_empty: bool = False) -> T:
    if not body.strip():
        if allow_empty:
            body = b"{}"
        else:
            raise MalformedJson("the request body is empty; a JSON object is expected")
    if b"\\u" in body and _UNSTORABLE.search(body):
        raise ValidationFailed(
            [("", "strings may not contain NUL (\\u0000) or unpaired UTF-16 surrogates")]
        )
    decoder = _DECODERS.get(kind)
    if decoder is None:
        decoder = _DECODERS[kind] = msgspec.json.Decoder(kind)
    try:
        return decoder.decode(body)  # type: ignore[no-any-return]
    except msgspec.ValidationError as exc:
        raise ValidationFailed([_path_of(str(exc))]) from None
    except msgspec.DecodeError as exc:
        raise MalformedJson(f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ValidationFailed([("", "objects and arrays nest too deep")]) from None


async def json_body(request: Request, kind: type[T], *, allow_empty: bool = False) -> T:
    body = await read_body(request)
    if body.strip() or not allow_empty:
        ctype = request.headers.get("content-type", "")
        if ctype.split(";")[0].strip().lower() != "application/json":
            raise UnsupportedMediaType(
                f"Content-Type must be application/json, not {ctype or 'missing'!r}"
            )
    request.state.raw_body = body
    return decode(body, kind, allow_empty=allow_empty)


def idempotency(request: Request) -> Idempotency | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not 1 <= len(key) <= 255:
        raise ValidationFailed([("Idempotency-Key", "must be 1 to 255 characters")])
    body: bytes = getattr(request.state, "raw_body", b"")
    return Idempotency.of(key, request.method, request.url.path, body)


def if_match(request: Request) -> int | None:
    value = request.headers.get("if-match")
    if value is None:
        return None
    version = digits(value.strip().removeprefix("W/").strip('"'))
    if version is None:
        raise ValidationFailed([("If-Match", f"expected a version like '\"3\"', got {value!r}")])
    return version


async def run_command(
    request: Request,
    principal: Principal,
    decide: Any,
    render: Render,
    *,
    recall: bool = False,
) -> Response:
    """Run a decision; answer with `render`'s status and body, or the stored first answer.
    `recall`: the decision may start from the streams this process remembers (handler.py)."""
    idem = idempotency(request)
    result = await commands(request).run(
        meta(request, principal, idem.key if idem else None),
        decide,
        idem=idem,
        render=render,
        recall=recall,
    )
    if isinstance(result, Stored):
        return Response(
            result.body,
            result.status,
            {"Idempotent-Replayed": "true"},
            media_type="application/json",
        )
    status, body = render(result)
    return Response(body, status, media_type="application/json")


# ── query parameters ────────────────────────────────────────────────────────


def query_str(request: Request, name: str, *, required: bool = False) -> str | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        if required:
            raise ValidationFailed([(name, "this query parameter is required")])
        return None
    if "\x00" in value or not value.isprintable():
        raise ValidationFailed([(name, "contains a NUL or control character")])
    return value


def query_int(
    request: Request, name: str, default: int | None, *, lo: int = 0, hi: int = 10**12
) -> int | None:
    value = query_str(request, name)
    if value is None:
        return default
    try:
        n = int(value)
    except ValueError:
        raise ValidationFailed([(name, f"expected an integer, got {value!r}")]) from None
    if not lo <= n <= hi:
        raise ValidationFailed([(name, f"must be between {lo} and {hi}")])
    return n


def parse_zone(name: str | None, path: str = "timezone") -> ZoneInfo:
    from service.catalogue import valid_timezone

    zone = name or "UTC"
    if not valid_timezone(zone):
        raise ValidationFailed([(path, f"unknown IANA timezone {zone!r}")])
    return ZoneInfo(zone)


#: The instants a client may name: far from datetime's own limits (years 1 and 9999), so that
#: the time arithmetic of a decision or a search (durations, buffers, a day either side) cannot
#: overflow.
EARLIEST: Final = datetime(1900, 1, 1, tzinfo=UTC)
LATEST: Final = datetime(9000, 1, 1, tzinfo=UTC)


def in_utc_and_bounds(value: datetime, path: str) -> datetime:
    """An aware datetime in UTC, or ValidationFailed when it lies outside [EARLIEST, LATEST)."""
    try:
        utc: datetime | None = value.astimezone(UTC)
    except OverflowError:  # an offset that takes it past year 1 or 9999
        utc = None
    if utc is None or not EARLIEST <= utc < LATEST:
        raise ValidationFailed([(path, "must lie between the years 1900 and 9000")])
    return utc


def parse_instant(value: str, path: str, zone: ZoneInfo, *, end_of_day: bool = False) -> datetime:
    """RFC 3339 with an offset, or a bare YYYY-MM-DD meaning that local day's start (or, for an
    upper bound, the next day's start) in `zone`; between the years 1900 and 9000."""
    try:
        if len(value) == 10:
            d = date.fromisoformat(value)
            if not EARLIEST.year <= d.year < LATEST.year:
                raise ValidationFailed([(path, "must lie between the years 1900 and 9000")])
            if end_of_day:
                d = date.fromordinal(d.toordinal() + 1)
            dt = datetime(d.year, d.month, d.day, tzinfo=zone)
        else:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise ValidationFailed(
            [(path, f"expected an RFC 3339 timestamp with offset or a date, got {value!r}")]
        ) from None
    if dt.tzinfo is None:
        raise ValidationFailed([(path, f"{value!r} has no UTC offset")])
    return in_utc_and_bounds(dt, path)


# ── cursors and read-your-writes ────────────────────────────────────────────


def encode_cursor(*parts: str) -> str:
    return base64.urlsafe_b64encode("\x1f".join(parts).encode()).decode().rstrip("=")


def decode_cursor(text: str, n: int) -> list[str]:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        parts = raw.split("\x1f")
    except (ValueError, UnicodeDecodeError):
        parts = []
    if len(parts) != n:
        raise ValidationFailed([("cursor", "invalid cursor; pass back next_cursor unchanged")])
    return parts


class TimeOrderedQuery:
    """A tenant's rows of a read model listed by (start_at, id): the WHERE clause built from
    query parameters (`from`, `to`, `cursor`, and what the caller adds), with numbered arguments,
    and the page with its next cursor."""

    def __init__(self, request: Request, tenant: str, id_column: str) -> None:
        self.request = request
        self.id_column = id_column
        self.clauses = ["tenant_id = $1"]
        self.args: list[Any] = [tenant]
        self.limit = query_int(request, "limit", 50, lo=1, hi=200) or 50
        if (raw := query_str(request, "from")) is not None:
            self.add(f"end_at > {self.arg(parse_instant(raw, 'from', UTC_ZONE))}")
        if (raw := query_str(request, "to")) is not None:
            to = parse_instant(raw, "to", UTC_ZONE, end_of_day=True)
            self.add(f"start_at < {self.arg(to)}")
        if (cursor := query_str(request, "cursor")) is not None:
            start_s, last_id = decode_cursor(cursor, 2)
            try:
                after = datetime.fromisoformat(start_s)
            except ValueError:
                raise ValidationFailed([("cursor", "invalid cursor")]) from None
            self.add(f"(start_at, {id_column}) > ({self.arg(after)}, {self.arg(last_id)})")

    def arg(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    def add(self, clause: str) -> None:
        self.clauses.append(clause)

    async def page(self, table: str, columns: str) -> tuple[list[Any], str | None]:
        """The rows of this page (each with `start_at` and the id column) and the next cursor."""
        rows = await pool(self.request).fetch(
            f"SELECT start_at, {self.id_column}, {columns} FROM {table} "
            f"WHERE {' AND '.join(self.clauses)} "
            f"ORDER BY start_at, {self.id_column} LIMIT {self.arg(self.limit + 1)}",
            *self.args,
        )
        page = rows[: self.limit]
        last = page[-1] if len(rows) > len(page) else None
        cursor = encode_cursor(last["start_at"].isoformat(), last[self.id_column]) if last else None
        return page, cursor


# Reached, or never drawn: a position past the sequence's last was in no answer, so a read
# that names it does not wait its 2 s (a cheap way to hold many requests open, otherwise).
_COMMITTED = (
    "SELECT EXISTS (SELECT 1 FROM events WHERE position = $1) "
    "OR (SELECT last_value FROM events_position_seq) < $1"
)
# The log's readers (the events feed) see an event once every older transaction has ended too.
_IN_THE_FEED = (
    "SELECT EXISTS (SELECT 1 FROM events WHERE position = $1 "
    "AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())) "
    "OR (SELECT last_value FROM events_position_seq) < $1"
)


async def wait_for_position(request: Request, *, feed: bool = False) -> None:
    """Honour `?min_position=N`: wait (at most 2 s) until the event at N is committed, and with
    it every read model written in its transaction; with `feed`, until the log's readers see it
    (store.read_all). A position not drawn yet answers at once."""
    wanted = query_int(request, "min_position", None, lo=0, hi=BIGINT_MAX)
    if not wanted:
        return
    deadline = time.monotonic() + 2.0
    db = pool(request)
    while True:
        head = await db.fetchval(_IN_THE_FEED if feed else _COMMITTED, wanted)
        if head or time.monotonic() >= deadline:
            return
        await asyncio.sleep(0.01)


def encode_json(value: Any) -> bytes:
    return ENCODER.encode(value)
