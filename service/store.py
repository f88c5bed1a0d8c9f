"""The PostgreSQL event store: the only code that writes the `events` table.

`append` commits events to one or more streams atomically in one round trip (one statement, see
_APPEND_CTE) with an expected version per stream; `read_stream(s)` loads streams
for deciding; `read_all` tails the log for subscribers without ever skipping an event.

Why the transaction-id guard in `read_all`: `position` comes from a sequence drawn at insert time,
but rows become visible at commit, so a transaction holding position 10 may commit after one holding
position 11. A reader that had advanced its cursor past 11 would never see 10. Locking the table to
serialise writers (pyeventsourcing) caps throughput at one writer; gap timeouts (Marten, Eventuous)
skip events under load. Instead every row records its writer's transaction id (xid8), and readers
only take rows whose transaction id is below the xmin of their snapshot: every transaction below
xmin has ended, so no row can later appear below the cursor. Rows are ordered and cursored by
(transaction_id, position). The price: one long-running writing transaction holds subscribers back
(exposed as the `oldest open transaction` metric).

Imports only asyncpg, msgspec and service.events; nothing here knows about HTTP or the domain rules.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import asyncpg
import msgspec

from service.events import META_DECODER, AnyEvent, Event, EventMeta, decode, encode, type_name

ANY: Final = -2
NO_STREAM: Final = -1
STREAM_EXISTS: Final = -3

_META_ENCODER = msgspec.json.Encoder()


class Executor(Protocol):
    """An asyncpg connection or pool: anything that can run a query."""

    async def fetch(self, query: str, *args: Any) -> list[Any]: ...


class ConcurrencyError(Exception):
    """A stream was not at the expected version; nothing was written."""

    def __init__(self, stream: str, expected: int, actual: int) -> None:
        self.stream = stream
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"stream {stream!r}: expected {describe_expected(expected)}, actual version {actual}"
        )


def describe_expected(expected: int) -> str:
    return {ANY: "any", NO_STREAM: "no stream", STREAM_EXISTS: "stream exists"}.get(
        expected, f"version {expected}"
    )


@dataclass(frozen=True, slots=True)
class AppendStream:
    """Events for one stream, appended only if the stream is at `expected`. With no events (beside
    other streams that have some), the stream is only checked to be at `expected`."""

    stream_id: str
    expected: int
    events: Sequence[Event]
    #: Metadata for this stream's events when it differs from the append's (a batched command).
    meta: EventMeta | None = None


@dataclass(frozen=True, slots=True)
class Appended:
    stream_id: str
    version: int
    position: int
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    position: int
    transaction_id: int
    stream_id: str
    version: int
    tenant_id: str
    event: AnyEvent
    metadata: EventMeta
    recorded_at: datetime

    @property
    def type(self) -> str:
        return type_name(self.event)

    @property
    def checkpoint(self) -> Checkpoint:
        return Checkpoint(self.transaction_id, self.position)


@dataclass(frozen=True, slots=True, order=True)
class Checkpoint:
    """A subscriber's place in the log: the last (transaction_id, position) it has seen."""

    transaction_id: int = 0
    position: int = 0

    def encode(self) -> str:
        return f"{self.transaction_id}-{self.position}"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse `encode()`'s form; raises ValueError on anything else."""
        tx, sep, pos = text.partition("-")
        if not sep or not tx.isdigit() or not pos.isdigit():
            raise ValueError(f"invalid cursor {text!r}")
        return cls(int(tx), int(pos))


START: Final = Checkpoint(0, 0)

# The append, as one statement (no procedural loop: this is the hot path). Per stream, a
# compare-and-set on its `streams` row: created for NO_STREAM/ANY (ANY adds to an existing one),
# advanced for an exact version or STREAM_EXISTS. Events are inserted only when every stream
# moved; otherwise slotlog_conflict() raises SL001 naming the stream, which aborts the whole
# statement, so nothing is written. Row locks on `streams` serialise writers of one stream;
# the caller sorts streams so that multi-stream appends lock in one order. A stream with no
# events is only checked (`checked`: at the expected version, or absent for NO_STREAM), neither
# written nor locked: a decision made on remembered state proves that what it read of streams it
# does not write is still current (service/handler.py).
_APPEND_CTE = """
WITH input AS (
    SELECT i.stream_id, i.expected, i.n
      FROM unnest($2::text[], $3::bigint[], $4::bigint[]) AS i(stream_id, expected, n)
), created AS (
    INSERT INTO streams AS st (stream_id, version)
    SELECT i.stream_id, i.n FROM input AS i WHERE i.n > 0 AND i.expected IN (-2, -1, 0)
    ORDER BY i.stream_id
    ON CONFLICT ON CONSTRAINT streams_pkey DO UPDATE SET version = st.version + excluded.version
        WHERE (SELECT i.expected FROM input AS i WHERE i.stream_id = excluded.stream_id) = -2
    RETURNING st.stream_id, st.version
), advanced AS (
    UPDATE streams AS st SET version = st.version + i.n
      FROM input AS i
     WHERE st.stream_id = i.stream_id AND i.n > 0
       AND (i.expected = -3 OR (i.expected > 0 AND st.version = i.expected))
    RETURNING st.stream_id, st.version
), checked AS (
    SELECT i.stream_id, coalesce(st.version, 0) AS version
      FROM input AS i LEFT JOIN streams AS st ON st.stream_id = i.stream_id
     WHERE i.n = 0 AND coalesce(st.version, 0) = greatest(i.expected, 0)
), moved AS (
    SELECT stream_id, version FROM created UNION ALL SELECT stream_id, version FROM advanced
    UNION ALL SELECT stream_id, version FROM checked
), appended AS (
    INSERT INTO events AS ev (stream_id, version, tenant_id, type, data, metadata)
    SELECT e.sid, m.version - i.n + row_number() OVER (PARTITION BY e.sid ORDER BY e.ord),
           $1, e.typ, e.dat, e.met
      FROM unnest($5::text[], $6::text[], $7::jsonb[], $8::jsonb[])
           WITH ORDINALITY AS e(sid, typ, dat, met, ord)
      JOIN moved AS m ON m.stream_id = e.sid
      JOIN input AS i ON i.stream_id = e.sid
     WHERE (SELECT count(*) FROM moved) = (SELECT count(*) FROM input)
     ORDER BY e.ord
    RETURNING ev.stream_id, ev.version, ev.position, ev.recorded_at
)
"""
_APPEND_RESULT = """
SELECT a.stream_id, a.version, a.position, a.recorded_at FROM appended AS a
UNION ALL
SELECT NULL, NULL, NULL, slotlog_conflict($2, $3, ARRAY(SELECT stream_id FROM moved))
 WHERE (SELECT count(*) FROM moved) <> (SELECT count(*) FROM input)
"""
_APPEND = _APPEND_CTE + _APPEND_RESULT
#: recorded_at of an event not yet appended (a fold made before the append knows no time).
PENDING: Final = datetime(1, 1, 1, tzinfo=UTC)
_COLUMNS = (
    "position, transaction_id, stream_id, version, tenant_id, data::text AS data, "
    "metadata::text AS metadata, recorded_at"
)


async def append(db: Executor, streams: Sequence[AppendStream], meta: EventMeta) -> list[Appended]:
    """Append atomically to every stream in `streams`, or to none.

    Raises ConcurrencyError (naming the stream, the expected and the actual version) when any
    stream is not at its expected version. Returns one Appended per event, in order.
    """
    if len(streams) == 1 and streams[0].expected not in (ANY, STREAM_EXISTS):
        return await _append_one(db, streams[0], meta)
    return await _call(db, _APPEND, streams, meta)


# The most common append, one stream at NO_STREAM or an exact version, as the smallest statement:
# the compare-and-set on `streams` feeds the event insert, so a mismatch inserts nothing (and
# changes nothing) and only then costs a second query, to name the actual version.
_CREATE_ONE = """
WITH moved AS (
    INSERT INTO streams (stream_id, version) VALUES ($1, $2)
    ON CONFLICT ON CONSTRAINT streams_pkey DO NOTHING RETURNING version
)
INSERT INTO events AS ev (stream_id, version, tenant_id, type, data, metadata)
SELECT $1, e.ord, $3, e.typ, e.dat, e.met
  FROM moved, unnest($4::text[], $5::jsonb[], $6::jsonb[]) WITH ORDINALITY AS e(typ, dat, met, ord)
 ORDER BY e.ord
RETURNING ev.stream_id, ev.version, ev.position, ev.recorded_at
"""
_ADVANCE_ONE = """
WITH moved AS (
    UPDATE streams SET version = version + $2 WHERE stream_id = $1 AND version = $3
    RETURNING version
)
INSERT INTO events AS ev (stream_id, version, tenant_id, type, data, metadata)
SELECT $1, $3 + e.ord, $4, e.typ, e.dat, e.met
  FROM moved, unnest($5::text[], $6::jsonb[], $7::jsonb[]) WITH ORDINALITY AS e(typ, dat, met, ord)
 ORDER BY e.ord
RETURNING ev.stream_id, ev.version, ev.position, ev.recorded_at
"""


# One event: the same statements with scalar parameters (no arrays to encode and unnest).
_CREATE_SINGLE = """
WITH moved AS (
    INSERT INTO streams (stream_id, version) VALUES ($1, 1)
    ON CONFLICT ON CONSTRAINT streams_pkey DO NOTHING RETURNING version
)
INSERT INTO events AS ev (stream_id, version, tenant_id, type, data, metadata)
SELECT $1, moved.version, $2, $3, $4, $5 FROM moved
RETURNING ev.stream_id, ev.version, ev.position, ev.recorded_at
"""
# Creating a stream outside a transaction: a plain INSERT (cheaper than ON CONFLICT's
# speculative insertion); the rare duplicate fails with a unique violation, which aborts nothing
# but this statement, and is reported as the ConcurrencyError it is.
_CREATE_SINGLE_PLAIN = """
WITH moved AS (
    INSERT INTO streams (stream_id, version) VALUES ($1, 1) RETURNING version
)
INSERT INTO events AS ev (stream_id, version, tenant_id, type, data, metadata)
SELECT $1, moved.version, $2, $3, $4, $5 FROM moved
RETURNING ev.stream_id, ev.version, ev.position, ev.recorded_at
"""
_ADVANCE_SINGLE = """
WITH moved AS (
    UPDATE streams SET version = version + 1 WHERE stream_id = $1 AND version = $6
    RETURNING version
)
INSERT INTO events AS ev (stream_id, version, tenant_id, type, data, metadata)
SELECT $1, moved.version, $2, $3, $4, $5 FROM moved
RETURNING ev.stream_id, ev.version, ev.position, ev.recorded_at
"""


async def _append_one(db: Executor, s: AppendStream, meta: EventMeta) -> list[Appended]:
    if not s.events:
        raise ValueError("an append needs at least one event")
    n = len(s.events)
    meta_json = _META_ENCODER.encode(s.meta or meta).decode()
    if n == 1:
        event = s.events[0]
        single = (s.stream_id, meta.tenant, type_name(event), encode(event), meta_json)
        in_transaction = getattr(db, "is_in_transaction", lambda: False)()
        if s.expected > 0:
            rows = await db.fetch(_ADVANCE_SINGLE, *single, s.expected)
        elif in_transaction:
            rows = await db.fetch(_CREATE_SINGLE, *single)
        else:
            try:
                rows = await db.fetch(_CREATE_SINGLE_PLAIN, *single)
            except asyncpg.UniqueViolationError:
                rows = []
    else:
        args = (
            meta.tenant,
            [type_name(e) for e in s.events],
            [encode(e) for e in s.events],
            [meta_json] * n,
        )
        if s.expected > 0:
            rows = await db.fetch(_ADVANCE_ONE, s.stream_id, n, s.expected, *args)
        else:
            rows = await db.fetch(_CREATE_ONE, s.stream_id, n, *args)
    if not rows:
        found = await db.fetch("SELECT version FROM streams WHERE stream_id = $1", s.stream_id)
        raise ConcurrencyError(s.stream_id, s.expected, found[0]["version"] if found else 0)
    return [Appended(r[0], r[1], r[2], r[3]) for r in rows]


async def command(
    db: Executor, streams: Sequence[AppendStream], meta: EventMeta, rows_sql: str, rows: bytes
) -> list[Appended]:
    """`append`, with more data-modifying CTEs (`rows_sql`, which may refer to the CTE
    `appended` and to `$9`, given `rows`) in the same statement: the caller's read models are
    written in the append's own transaction, in one round trip (projections/engine.py)."""
    sql = _COMMANDS.get(rows_sql)
    if sql is None:
        sql = _COMMANDS[rows_sql] = _APPEND_CTE + rows_sql + _APPEND_RESULT
    return await _call(db, sql, streams, meta, rows.decode())


_COMMANDS: dict[str, str] = {}


async def _call(
    db: Executor, sql: str, streams: Sequence[AppendStream], meta: EventMeta, *extra: Any
) -> list[Appended]:
    ordered = sorted(streams, key=lambda s: s.stream_id)
    if len({s.stream_id for s in ordered}) != len(ordered):
        raise ValueError("a stream may appear only once in one append")
    if any(not s.events and s.expected < NO_STREAM for s in ordered):
        raise ValueError("a stream checked without events needs an exact version or NO_STREAM")
    meta_json = _META_ENCODER.encode(meta).decode()
    event_streams: list[str] = []
    types: list[str] = []
    data: list[str] = []
    metas: list[str] = []
    for s in streams:
        own = _META_ENCODER.encode(s.meta).decode() if s.meta is not None else meta_json
        for e in s.events:
            event_streams.append(s.stream_id)
            types.append(type_name(e))
            data.append(encode(e))
            metas.append(own)
    counts = {s.stream_id: len(s.events) for s in ordered}
    try:
        rows = await db.fetch(
            sql,
            meta.tenant,
            [s.stream_id for s in ordered],
            [s.expected for s in ordered],
            [counts[s.stream_id] for s in ordered],
            event_streams,
            types,
            data,
            metas,
            *extra,
        )
    except asyncpg.PostgresError as exc:
        raise _translate(exc) from None
    return [Appended(r[0], r[1], r[2], r[3]) for r in rows]


def _translate(exc: asyncpg.PostgresError) -> Exception:
    if getattr(exc, "sqlstate", None) == "SL001":
        detail = json.loads(exc.detail or "{}")
        return ConcurrencyError(detail["stream"], int(detail["expected"]), int(detail["actual"]))
    if isinstance(exc, asyncpg.UniqueViolationError):
        # The (stream_id, version) backstop: a concurrent writer won the same version.
        return ConcurrencyError("?", -1, -1)
    return exc  # type: ignore[no-any-return]


def _recorded(row: Any) -> RecordedEvent:
    return RecordedEvent(
        position=row["position"],
        transaction_id=row["transaction_id"],
        stream_id=row["stream_id"],
        version=row["version"],
        tenant_id=row["tenant_id"],
        event=decode(row["data"]),
        metadata=META_DECODER.decode(row["metadata"]),
        recorded_at=row["recorded_at"],
    )


async def read_stream(db: Executor, stream_id: str) -> list[RecordedEvent]:
    """Every event of one stream, oldest first."""
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM events WHERE stream_id = $1 ORDER BY version", stream_id
    )
    return [_recorded(r) for r in rows]


async def read_streams(db: Executor, stream_ids: Sequence[str]) -> dict[str, list[RecordedEvent]]:
    """Every event of several streams in one round trip; a missing stream maps to []."""
    result: dict[str, list[RecordedEvent]] = {s: [] for s in stream_ids}
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM events WHERE stream_id = ANY($1::text[]) "
        "ORDER BY stream_id, version",
        list(stream_ids),
    )
    for r in rows:
        result[r["stream_id"]].append(_recorded(r))
    return result


async def read_for_decision(
    db: Executor, full: Sequence[str], latest: Sequence[str] = ()
) -> tuple[dict[str, list[RecordedEvent]], dict[str, RecordedEvent]]:
    """In one round trip: every event of the `full` streams (to fold and append to with an
    expected version) and only the newest event of the `latest` streams (catalogue upserts,
    whose last event is the whole state)."""
    result: dict[str, list[RecordedEvent]] = {s: [] for s in full}
    newest: dict[str, RecordedEvent] = {}
    rows = await db.fetch(
        f"SELECT 0 AS part, {_COLUMNS} FROM events WHERE stream_id = ANY($1::text[]) "
        f"UNION ALL (SELECT DISTINCT ON (stream_id) 1 AS part, {_COLUMNS} FROM events "
        "WHERE stream_id = ANY($2::text[]) ORDER BY stream_id, version DESC) "
        "ORDER BY part, stream_id, version",
        list(full),
        list(latest),
    )
    for r in rows:
        if r["part"] == 0:
            result[r["stream_id"]].append(_recorded(r))
        else:
            newest[r["stream_id"]] = _recorded(r)
    return result, newest


async def read_all(
    db: Executor, after: Checkpoint = START, limit: int = 1000, *, tenant: str | None = None
) -> list[RecordedEvent]:
    """Events after `after` in (transaction_id, position) order, never skipping one.

    Only rows written by transactions that have ended before every transaction still running
    (transaction_id < xmin of the current snapshot) are returned, so an event can never appear
    later behind the returned cursor. With `tenant`, only that tenant's events.
    """
    tenant_clause = "AND tenant_id = $4" if tenant is not None else ""
    args: list[Any] = [after.transaction_id, after.position, limit]
    if tenant is not None:
        args.append(tenant)
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM events "
        "WHERE (transaction_id, position) > ($1::xid8, $2) "
        "AND transaction_id < pg_snapshot_xmin(pg_current_snapshot()) "
        f"{tenant_clause} ORDER BY transaction_id, position LIMIT $3",
        *args,
    )
    return [_recorded(r) for r in rows]
