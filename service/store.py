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
import re
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


class AppendStream(msgspec.Struct, frozen=True):
    """Events for one stream, appended only if the stream is at `expected`. With no events (beside
    other streams that have some), the stream is only checked to be at `expected`. (A Struct:
    a command makes one per stream it writes or checks, and a frozen dataclass is built about
    four times slower.)"""

    stream_id: str
    expected: int
    events: Sequence[Event]
    #: Metadata per event, one for each of `events`, when they come from several requests decided
    #: together (service/batching.py); otherwise the append's own.
    metas: Sequence[EventMeta] = ()

    def __post_init__(self) -> None:
        if self.metas and len(self.metas) != len(self.events):
            raise ValueError("metas, when given, name one EventMeta per event")

    def meta_of(self, index: int, default: EventMeta) -> EventMeta:
        """The metadata the stream's `index`th event is recorded with."""
        return self.metas[index] if self.metas else default


# Appended and RecordedEvent are msgspec Structs rather than frozen dataclasses: every event read
# or written makes one, and a Struct is built about ten times faster.
class Appended(msgspec.Struct, frozen=True):
    stream_id: str
    version: int
    position: int
    recorded_at: datetime


class RecordedEvent(msgspec.Struct, frozen=True):
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


class LogEntry(msgspec.Struct, frozen=True):
    """An event without its data and metadata: what a consumer that counts or routes events by
    type reads of the log (`read_log`), with no JSON to render or decode."""

    position: int
    transaction_id: int
    stream_id: str
    version: int
    tenant_id: str
    type: str
    recorded_at: datetime

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
        if not sep or not (tx + pos).isascii() or not tx.isdigit() or not pos.isdigit():
            raise ValueError(f"invalid cursor {text!r}")
        if int(tx) >= 2**64 or int(pos) >= 2**63:  # past xid8 and bigint
            raise ValueError(f"invalid cursor {text!r}")
        return cls(int(tx), int(pos))


START: Final = Checkpoint(0, 0)

# A stream's version is its newest event's: there is no table of streams. The unique index on
# events (stream_id, version) is the compare-and-set: an append writes versions v+1.. after
# checking in its snapshot that the stream is at v, and a concurrent writer of v+1 makes it wait
# on that index entry and then fail with a unique violation (or, if that writer rolled back,
# go on). Two appends can therefore never both extend one version, whatever their snapshots.
#
# The append, as one statement (no procedural loop: this is the hot path). Per stream, its
# version now (`current`, one probe of that index) against its expectation: NO_STREAM/0 wants
# none, an exact version that one, STREAM_EXISTS any but none, ANY anything. Events are inserted
# only when every stream meets it; otherwise slotlog_conflict() raises SL001 naming the stream,
# which aborts the whole statement, so nothing is written. A stream with no events is only
# checked (a decision made on remembered state proves that what it read of streams it does not
# write is still current, service/handler.py). Rows go in sorted by stream, so that concurrent
# multi-stream appends wait on one another's index entries in one order (no deadlock), with
# positions drawn beforehand in the events' own order.
_APPEND_CTE = """
WITH input AS (
    SELECT i.stream_id, i.expected, i.n
      FROM unnest($2::text[], $3::bigint[], $4::bigint[]) AS i(stream_id, expected, n)
), current AS MATERIALIZED (  -- one probe per stream (inlined, `moved` would probe twice)
    SELECT i.stream_id, i.expected, i.n,
           coalesce((SELECT max(e.version) FROM events AS e WHERE e.stream_id = i.stream_id), 0)
               AS version
      FROM input AS i
), moved AS (
    SELECT c.stream_id, c.version FROM current AS c
     WHERE CASE c.expected WHEN -2 THEN true WHEN -3 THEN c.version > 0
                ELSE c.version = greatest(c.expected, 0) END
), numbered AS MATERIALIZED (
    SELECT e.sid, e.typ, e.dat, e.met, e.ord, nextval('events_position_seq') AS pos
      FROM unnest($5::text[], $6::text[], $7::jsonb[], $8::jsonb[])
           WITH ORDINALITY AS e(sid, typ, dat, met, ord)
     WHERE (SELECT count(*) FROM moved) = (SELECT count(*) FROM input)
     ORDER BY e.ord
), appended AS (
    INSERT INTO events AS ev (position, stream_id, version, tenant_id, type, data, metadata)
    SELECT n.pos, n.sid, m.version + row_number() OVER (PARTITION BY n.sid ORDER BY n.ord),
           $1, n.typ, n.dat, n.met
      FROM numbered AS n JOIN moved AS m ON m.stream_id = n.sid
     ORDER BY n.sid, n.ord
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
#: Retries of an append with a floating expectation (ANY, STREAM_EXISTS) that lost a race.
FLOATING_ATTEMPTS: Final = 100


async def append(db: Executor, streams: Sequence[AppendStream], meta: EventMeta) -> list[Appended]:
    """Append atomically to every stream in `streams`, or to none.

    Raises ConcurrencyError (naming the stream, the expected and the actual version) when any
    stream is not at its expected version. Returns one Appended per event, in order. ANY and
    STREAM_EXISTS take the version they find; one that loses a race to a concurrent writer is
    tried again, unless `db` is in a transaction (which the lost race aborted).
    """
    if not any(s.events for s in streams):
        raise ValueError("an append needs at least one event")
    if any(s.expected < STREAM_EXISTS for s in streams):
        raise ValueError("an expected version is a number >= 0, NO_STREAM, ANY or STREAM_EXISTS")
    if (
        len(streams) == 1
        and len(streams[0].events) == 1
        and streams[0].expected not in (ANY, STREAM_EXISTS)
    ):
        return await _append_single(db, streams[0], meta)
    floating = any(s.expected in (ANY, STREAM_EXISTS) for s in streams)
    for attempt in range(1, FLOATING_ATTEMPTS + 1):
        try:
            return await _call(db, _APPEND, streams, meta)
        except _LostRace as lost:
            if not floating or _in_transaction(db) or attempt == FLOATING_ATTEMPTS:
                raise lost.error from None
    raise AssertionError("unreachable")


def _in_transaction(db: Executor) -> bool:
    return bool(getattr(db, "is_in_transaction", lambda: False)())


# The most common append, one event to one stream at NO_STREAM or an exact version, as the
# smallest statement. Outside a transaction a lost race is the unique violation itself; inside
# one, ON CONFLICT DO NOTHING keeps the caller's transaction alive (a mismatch returns no row).
_CREATE_SINGLE = """
INSERT INTO events AS ev (stream_id, version, tenant_id, type, data, metadata)
VALUES ($1, 1, $2, $3, $4, $5)
{on_conflict}
RETURNING ev.stream_id, ev.version, ev.position, ev.recorded_at
"""
_ADVANCE_SINGLE = """
INSERT INTO events AS ev (stream_id, version, tenant_id, type, data, metadata)
SELECT $1, $6 + 1, $2, $3, $4, $5
 WHERE EXISTS (SELECT FROM events AS e WHERE e.stream_id = $1 AND e.version = $6)
{on_conflict}
RETURNING ev.stream_id, ev.version, ev.position, ev.recorded_at
"""
_ON_CONFLICT = "ON CONFLICT ON CONSTRAINT events_stream_version DO NOTHING"
_SINGLE = {
    (advance, in_transaction): sql.format(on_conflict=_ON_CONFLICT if in_transaction else "")
    for advance, sql in ((False, _CREATE_SINGLE), (True, _ADVANCE_SINGLE))
    for in_transaction in (False, True)
}


async def _append_single(db: Executor, s: AppendStream, meta: EventMeta) -> list[Appended]:
    event = s.events[0]
    args: tuple[Any, ...] = (
        s.stream_id,
        meta.tenant,
        type_name(event),
        encode(event),
        _META_ENCODER.encode(s.meta_of(0, meta)).decode(),
    )
    if s.expected > 0:
        args += (s.expected,)
    try:
        rows = await db.fetch(_SINGLE[s.expected > 0, _in_transaction(db)], *args)
    except asyncpg.UniqueViolationError:
        rows = []
    if not rows:
        actual = await db.fetch("SELECT max(version) FROM events WHERE stream_id = $1", s.stream_id)
        raise ConcurrencyError(s.stream_id, s.expected, actual[0][0] or 0)
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
    try:
        return await _call(db, sql, streams, meta, rows.decode())
    except _LostRace as lost:
        raise lost.error from None


_COMMANDS: dict[str, str] = {}


class _LostRace(Exception):
    """A concurrent writer committed the version this append was to write (unique violation)."""

    def __init__(self, error: ConcurrencyError) -> None:
        self.error = error


async def _call(
    db: Executor, sql: str, streams: Sequence[AppendStream], meta: EventMeta, *extra: Any
) -> list[Appended]:
    ordered = sorted(streams, key=lambda s: s.stream_id)
    if len({s.stream_id for s in ordered}) != len(ordered):
        raise ValueError("a stream may appear only once in one append")
    if any(not s.events and s.expected < NO_STREAM for s in ordered):
        raise ValueError("a stream checked without events needs an exact version or NO_STREAM")
    encoded: dict[int, str] = {}  # id(EventMeta) -> JSON: a batch shares a few among many events

    def meta_json(m: EventMeta) -> str:
        text = encoded.get(id(m))
        if text is None:
            text = encoded[id(m)] = _META_ENCODER.encode(m).decode()
        return text

    event_streams: list[str] = []
    types: list[str] = []
    data: list[str] = []
    metas: list[str] = []
    for s in streams:
        for i, e in enumerate(s.events):
            event_streams.append(s.stream_id)
            types.append(type_name(e))
            data.append(encode(e))
            metas.append(meta_json(s.meta_of(i, meta)))
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
        raise _translate(exc, {s.stream_id: s.expected for s in ordered}) from None
    # Inserted in stream order; returned in the events' own order (their positions').
    return sorted((Appended(r[0], r[1], r[2], r[3]) for r in rows), key=lambda a: a.position)


# asyncpg's detail of a unique violation: "Key (stream_id, version)=(<stream>, <n>) already
# exists." (the stream id may hold any character, so the version is matched from the end).
_DUPLICATE_VERSION = re.compile(
    r"\AKey \(stream_id, version\)=\((?P<stream>.*), (?P<version>\d+)\)"
)


def _translate(exc: asyncpg.PostgresError, expected: dict[str, int]) -> Exception:
    if getattr(exc, "sqlstate", None) == "SL001":
        detail = json.loads(exc.detail or "{}")
        return ConcurrencyError(detail["stream"], int(detail["expected"]), int(detail["actual"]))
    if (
        isinstance(exc, asyncpg.UniqueViolationError)
        and exc.constraint_name == "events_stream_version"
    ):
        # A concurrent writer committed a version this append was to write: the stream is at
        # that version at least.
        found = _DUPLICATE_VERSION.match(exc.detail or "")
        stream = found["stream"] if found and found["stream"] in expected else "?"
        actual = int(found["version"]) if found and stream != "?" else -1
        return _LostRace(ConcurrencyError(stream, expected.get(stream, -1), actual))
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
    rows = await _read_log(db, _COLUMNS, after, limit, tenant)
    return [_recorded(r) for r in rows]


_LOG_COLUMNS = "position, transaction_id, stream_id, version, tenant_id, type, recorded_at"


async def read_log(db: Executor, after: Checkpoint = START, limit: int = 1000) -> list[LogEntry]:
    """`read_all`'s events in its order, as LogEntry: without data and metadata."""
    return [LogEntry(*r) for r in await _read_log(db, _LOG_COLUMNS, after, limit, None)]


#: The part of the log a reader may see (read_all): rows of transactions that ended before every
#: transaction still running. Readers of the log elsewhere (projections/runner.py) use it too.
LOG_VISIBLE: Final = "transaction_id < pg_snapshot_xmin(pg_current_snapshot())"
#: The log's order, which the events_transaction_order index serves.
LOG_ORDER: Final = "transaction_id, position"


async def _read_log(
    db: Executor, columns: str, after: Checkpoint, limit: int, tenant: str | None
) -> list[Any]:
    tenant_clause = "AND tenant_id = $4" if tenant is not None else ""
    args: list[Any] = [after.transaction_id, after.position, limit]
    if tenant is not None:
        args.append(tenant)
    return await db.fetch(
        f"SELECT {columns} FROM events "
        f"WHERE ({LOG_ORDER}) > ($1::xid8, $2) AND {LOG_VISIBLE} "
        f"{tenant_clause} ORDER BY {LOG_ORDER} LIMIT $3",
        *args,
    )
