"""The read models, as pure folds: each row of each table is a function of exactly one stream.

A projection names its table, its columns, and which stream kind feeds it; `initial` / `evolve`
fold that stream's events and `rows` renders the fold as table rows. The same functions serve the
inline path (rows written in the command's own transaction), the background runner and replay, so
a replay from position 0 rebuilds tables identical to the live ones. No I/O here; the engine
(projections/engine.py) writes the rows.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Generic, Protocol, TypeVar

import msgspec

from service import streams
from service.decider import Booking, DayLedger, SessionState, evolve_booking
from service.events import (
    AnyEvent,
    BookingPolicy,
    Customer,
    ResourceUpserted,
    ServiceUpserted,
    SessionScheduled,
    TimeClaimed,
    TimeReleased,
)
from service.store import PENDING

S = TypeVar("S")
Row = tuple[Any, ...]
_JSON = msgspec.json.Encoder()


def tenant_of(stream_id: str) -> str:
    return stream_id.split(":", 1)[0]


def known(at: datetime | None) -> datetime | None:
    """A recorded time, or None for an event not yet appended (filled in by the database)."""
    return None if at is None or at == PENDING else at


def json_text(value: Any) -> str:
    return _JSON.encode(value).decode()


#: How a row carries a time that an event holds: as it is (`as_is`, a datetime) for the inline
#: writes and for replay's C encoder of COPY, or as asyncpg's int8 codec sends it where replay
#: falls back to asyncpg's encoder (`pg_micros`). Recorded times are never passed through it:
#: replay's envelopes already hold them in PostgreSQL's form (Recorded.recorded_at).
Time = Callable[[datetime | None], Any]


def as_is(at: datetime | None) -> datetime | None:
    return at


_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def pg_micros(at: datetime | None) -> int | None:
    """`at` as PostgreSQL's binary timestamptz: microseconds since 2000-01-01 UTC, exact for an
    aware datetime (every time an event holds; a naive one raises TypeError). The timedelta's
    fields, not `// timedelta(microseconds=1)`: a third cheaper."""
    if at is None:
        return None
    d = at - _PG_EPOCH
    return (d.days * 86400 + d.seconds) * 1_000_000 + d.microseconds


class Recorded(Protocol):
    """What a fold reads of an event: a store.RecordedEvent, or replay's lighter envelope."""

    @property
    def event(self) -> AnyEvent: ...

    @property
    def version(self) -> int: ...

    @property
    def position(self) -> int: ...

    @property
    def recorded_at(self) -> datetime:
        """A fold carries it into its rows as it is and never computes with it: replay's
        envelope gives PostgreSQL's microseconds since 2000 in its place (replay.Logged)."""
        ...


class Projection(ABC, Generic[S]):
    """One read-model table, fed by one kind of stream."""

    name: str
    table: str
    stream_kind: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    #: SQL types of the columns, for COPY-free bulk writes through unnest.
    types: tuple[str, ...]
    #: Columns of type text that hold JSON rendered here (cheaper to load than jsonb when nothing
    #: queries inside them); `slotlog replay --verify` compares them as JSON.
    json_text: tuple[str, ...] = ()
    #: Keys that rows written by earlier versions also hold in their json_text columns and that
    #: nothing reads there any more (each has a column of its own): verify ignores them.
    json_retired: tuple[str, ...] = ()
    #: The leading key columns that the stream id determines (stream_key): every row a stream
    #: contributes has these values, and no other stream's row does, so the primary key finds a
    #: stream's rows and the tables need no index on stream_id.
    stream_key_columns: tuple[str, ...]

    def stream_key(self, stream_id: str) -> tuple[Any, ...]:
        """The values of `stream_key_columns` for the rows of `stream_id`: by default the tenant
        and the id after the stream kind (`{tenant}:{kind}:{id}`)."""
        tenant, _, own_id = stream_id.split(":", 2)
        return (tenant, own_id)

    @abstractmethod
    def initial(self, stream_id: str) -> S:
        """The state of a stream with no events yet."""

    @abstractmethod
    def evolve(self, state: S, rec: Recorded) -> S:
        """Apply one event of the stream (never raises: the event happened)."""

    @abstractmethod
    def rows(self, stream_id: str, state: S, time: Time = as_is) -> list[Row]:
        """The table rows the folded stream contributes, with `time` applied to each time
        taken from an event (see Time)."""

    def fold(self, stream_id: str, events: Sequence[Recorded], time: Time = as_is) -> list[Row]:
        state = self.initial(stream_id)
        for rec in events:
            state = self.evolve(state, rec)
        return self.rows(stream_id, state, time)

    def key_of(self, row: Row) -> tuple[Any, ...]:
        return tuple(row[i] for i in _positions(self, self.key))

    def stream_key_of(self, row: Row) -> tuple[Any, ...]:
        """A row's `stream_key_columns`: equal to its stream's stream_key()."""
        return tuple(row[i] for i in _positions(self, self.stream_key_columns))

    def changes(
        self, stream_id: str, before: Sequence[Recorded], new: Sequence[Recorded]
    ) -> tuple[list[Row], list[tuple[Any, ...]]]:
        """What appending the events `new` to a stream whose events were `before` changes in the
        table: the rows to upsert (new or different) and the keys of the rows to delete, never
        both for one key. By default both folds, compared row by row."""
        old = {self.key_of(r): r for r in self.fold(stream_id, before)}
        rows = []
        for row in self.fold(stream_id, [*before, *new]):
            if old.pop(self.key_of(row), None) != row:
                rows.append(row)
        return rows, list(old)


@functools.cache
def _positions(p: Projection[Any], names: tuple[str, ...]) -> tuple[int, ...]:
    return tuple(p.columns.index(c) for c in names)


@dataclass(slots=True)
class Latest(Generic[S]):
    event: S | None = None
    version: int = 0
    position: int = 0
    recorded_at: datetime | None = None


class LatestProjection(Projection[Latest[Any]]):
    """A catalogue table: each stream's last upsert event is the whole state of one row."""

    event_type: type[ResourceUpserted] | type[ServiceUpserted]
    id_field: str
    types = ("text", "text", "text", "jsonb", "bigint", "bigint", "timestamptz")

    def initial(self, stream_id: str) -> Latest[Any]:
        return Latest()

    def evolve(self, state: Latest[Any], rec: Recorded) -> Latest[Any]:
        if isinstance(rec.event, self.event_type):
            return Latest(rec.event, rec.version, rec.position, rec.recorded_at)
        return state

    def rows(self, stream_id: str, state: Latest[Any], time: Time = as_is) -> list[Row]:
        e = state.event
        if e is None:
            return []
        return [
            (
                tenant_of(stream_id),
                getattr(e, self.id_field),
                stream_id,
                json_text(e),
                state.version,
                state.position or None,
                known(state.recorded_at),
            )
        ]


class ResourcesProjection(LatestProjection):
    name = "resources"
    table = "rm_resources"
    stream_kind = "res"
    event_type = ResourceUpserted
    id_field = "resource_id"
    columns = ("tenant_id", "resource_id", "stream_id", "body", "version", "position", "updated_at")
    key = ("tenant_id", "resource_id")
    stream_key_columns = key


class ServicesProjection(LatestProjection):
    name = "services"
    table = "rm_services"
    stream_kind = "svc"
    event_type = ServiceUpserted
    id_field = "service_id"
    columns = ("tenant_id", "service_id", "stream_id", "body", "version", "position", "updated_at")
    key = ("tenant_id", "service_id")
    stream_key_columns = key


class BookingDetails(msgspec.Struct, kw_only=True, gc=False):
    """rm_bookings.state: what a booking holds beyond its columns. Rows written by earlier
    versions hold the whole booking there; decoded as this (unknown keys are ignored) they give
    the same details, and the API builds the rest of the booking from the columns either way."""

    policy: BookingPolicy
    customer: Customer | None
    notes: str | None
    metadata: dict[str, object]
    cancelled_by: str | None = None
    reason: str | None = None


DETAILS_DECODER = msgspec.json.Decoder(BookingDetails)


def booking_from_row(row: Any) -> Booking:
    """A booking from its rm_bookings row (a mapping of the columns by name)."""
    d = DETAILS_DECODER.decode(row["state"])
    return Booking(
        id=row["booking_id"],
        kind=row["kind"],
        status=row["status"],
        service_id=row["service_id"],
        session_id=row["session_id"],
        resources=list(row["resources"]),
        start=row["start_at"],
        end=row["end_at"],
        seats=row["seats"],
        expires_at=row["expires_at"],
        policy=d.policy,
        customer=d.customer,
        notes=d.notes,
        metadata=d.metadata,
        version=row["version"],
        position=row["position"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        cancelled_by=d.cancelled_by,
        reason=d.reason,
    )


class BookingsProjection(Projection[Booking | None]):
    """Every booking, slot or seat, as the API shows it: a column for each field that queries
    filter or sort on, the rest as JSON in `state` (BookingDetails)."""

    name = "bookings"
    table = "rm_bookings"
    stream_kind = "bk"
    columns = (
        "tenant_id",
        "booking_id",
        "stream_id",
        "kind",
        "status",
        "service_id",
        "session_id",
        "resources",
        "start_at",
        "end_at",
        "expires_at",
        "seats",
        "state",
        "version",
        "position",
        "created_at",
        "updated_at",
    )
    types = (
        "text",
        "text",
        "text",
        "text",
        "text",
        "text",
        "text",
        "text[]",
        "timestamptz",
        "timestamptz",
        "timestamptz",
        "int",
        "text",
        "bigint",
        "bigint",
        "timestamptz",
        "timestamptz",
    )
    json_text = ("state",)
    #: Earlier versions wrote the whole booking into `state`.
    json_retired = (
        "id",
        "kind",
        "status",
        "service_id",
        "session_id",
        "resources",
        "start",
        "end",
        "seats",
        "expires_at",
        "version",
        "position",
        "created_at",
        "updated_at",
    )
    key = ("tenant_id", "booking_id")
    stream_key_columns = key

    def initial(self, stream_id: str) -> Booking | None:
        return None

    def evolve(self, state: Booking | None, rec: Recorded) -> Booking | None:
        return evolve_booking(
            state,
            rec.event,
            version=rec.version,
            position=rec.position,
            recorded_at=rec.recorded_at,
        )

    def fold(self, stream_id: str, events: Sequence[Recorded], time: Time = as_is) -> list[Row]:
        """Projection.fold with `evolve` written out: replay folds every booking of the log."""
        state = None
        for rec in events:
            state = evolve_booking(
                state,
                rec.event,
                version=rec.version,
                position=rec.position,
                recorded_at=rec.recorded_at,
            )
        return self.rows(stream_id, state, time)

    def rows(self, stream_id: str, state: Booking | None, time: Time = as_is) -> list[Row]:
        b = state
        if b is None:
            return []
        # What only the append knows (position, recorded times) lives in columns, never in
        # `state`, so rows folded before an append (slotlog_command fills the columns) and rows
        # folded by replay are identical.
        details = BookingDetails(
            policy=b.policy,
            customer=b.customer,
            notes=b.notes,
            metadata=b.metadata,
            cancelled_by=b.cancelled_by,
            reason=b.reason,
        )
        return [
            (
                tenant_of(stream_id),
                b.id,
                stream_id,
                b.kind,
                b.status,
                b.service_id,
                b.session_id,
                b.resources,
                time(b.start),
                time(b.end),
                time(b.expires_at),
                b.seats,
                json_text(details),
                b.version,
                b.position or None,
                known(b.created_at),
                known(b.updated_at),
            )
        ]


class BusyProjection(Projection[DayLedger]):
    """Busy time per resource and UTC day: the claims of active bookings and sessions."""

    name = "busy"
    table = "rm_busy"
    stream_kind = "rd"
    columns = (
        "tenant_id",
        "resource_id",
        "day",
        "claim_id",
        "stream_id",
        "start_at",
        "end_at",
        "block_start",
        "block_end",
        "expires_at",
    )
    types = (
        "text",
        "text",
        "date",
        "text",
        "text",
        "timestamptz",
        "timestamptz",
        "timestamptz",
        "timestamptz",
        "timestamptz",
    )
    key = ("tenant_id", "resource_id", "day", "claim_id")
    stream_key_columns = ("tenant_id", "resource_id", "day")

    def stream_key(self, stream_id: str) -> tuple[Any, ...]:
        """`{tenant}:rd:{resource_id}:{YYYY-MM-DD}` (service/streams.py)."""
        tenant, _, rest = stream_id.split(":", 2)
        resource_id, day = rest.rsplit(":", 1)
        return (tenant, resource_id, date.fromisoformat(day))

    def initial(self, stream_id: str) -> DayLedger:
        return DayLedger()

    def evolve(self, state: DayLedger, rec: Recorded) -> DayLedger:
        state.evolve(rec.event)
        return state

    def rows(self, stream_id: str, state: DayLedger, time: Time = as_is) -> list[Row]:
        # The tenant once, each day parsed once (a day stream's claims share theirs), and a
        # blocked time without a buffer converted once: a replay makes a row of every claim of
        # the log, and `time` (pg_micros without the C encoder) was most of a row's cost.
        # Sorted by claim id (the dict's keys) without a key function.
        tenant = tenant_of(stream_id)
        days: dict[str, date] = {}
        out: list[Row] = []
        for _, c in sorted(state.claims.items()):
            start, end = time(c.start), time(c.end)
            out.append(
                (
                    tenant,
                    c.resource_id,
                    days.get(c.day) or days.setdefault(c.day, date.fromisoformat(c.day)),
                    c.claim_id,
                    stream_id,
                    start,
                    end,
                    start if c.block_start == c.start else time(c.block_start),
                    end if c.block_end == c.end else time(c.block_end),
                    time(c.expires_at),
                )
            )
        return out

    def changes(
        self, stream_id: str, before: Sequence[Recorded], new: Sequence[Recorded]
    ) -> tuple[list[Row], list[tuple[Any, ...]]]:
        """Only the claims that `new` claims or releases change: a claim's row is a function of
        its own TimeClaimed, so the day's other claims are neither folded nor compared, and a
        command's cost does not grow with them. (A row upserted unchanged, or a release of a
        claim that has no row, writes nothing different from the full comparison.)"""
        touched: dict[str, TimeClaimed | None] = {}
        for rec in new:
            e = rec.event
            if isinstance(e, TimeClaimed):
                touched[e.claim_id] = e
            elif isinstance(e, TimeReleased):
                touched[e.claim_id] = None
        prefix = self.stream_key(stream_id)
        ledger = DayLedger({c: e for c, e in touched.items() if e is not None})
        rows = self.rows(stream_id, ledger)
        for r in rows:
            if self.stream_key_of(r) != prefix:  # its stream's rows are found by this key
                raise ValueError(f"busy: claim {r[3]} is not on {stream_id}'s resource and day")
        gone = [(*prefix, c) for c, e in touched.items() if e is None]
        return rows, gone


class SessionsProjection(Projection[SessionState]):
    """Group sessions with their seat ledger: the public listing reads this."""

    name = "sessions"
    table = "rm_sessions"
    stream_kind = "ss"
    columns = (
        "tenant_id",
        "session_id",
        "stream_id",
        "resource_id",
        "start_at",
        "end_at",
        "status",
        "max_seats",
        "body",
        "claims",
        "version",
        "updated_at",
    )
    types = (
        "text",
        "text",
        "text",
        "text",
        "timestamptz",
        "timestamptz",
        "text",
        "int",
        "jsonb",
        "jsonb",
        "bigint",
        "timestamptz",
    )
    key = ("tenant_id", "session_id")
    stream_key_columns = key

    def initial(self, stream_id: str) -> SessionState:
        return SessionState()

    def evolve(self, state: SessionState, rec: Recorded) -> SessionState:
        state.evolve(rec.event)
        state.updated_at = rec.recorded_at
        return state

    def rows(self, stream_id: str, state: SessionState, time: Time = as_is) -> list[Row]:
        s: SessionScheduled | None = state.scheduled
        if s is None:
            return []
        claims = {
            c.booking_id: {"seats": c.seats, "expires_at": c.expires_at}
            for c in sorted(state.claims.values(), key=lambda c: c.booking_id)
        }
        return [
            (
                tenant_of(stream_id),
                s.session_id,
                stream_id,
                s.resource_id,
                time(s.start),
                time(s.end),
                state.status,
                s.max_seats,
                json_text({**msgspec.structs.asdict(s), "message": state.message}),
                json_text(claims),
                state.version,
                known(state.updated_at),
            )
        ]


PROJECTIONS: tuple[Projection[Any], ...] = (
    ResourcesProjection(),
    ServicesProjection(),
    BookingsProjection(),
    BusyProjection(),
    SessionsProjection(),
)
BY_KIND: dict[str, Projection[Any]] = {p.stream_kind: p for p in PROJECTIONS}
BY_NAME: dict[str, Projection[Any]] = {p.name: p for p in PROJECTIONS}


def projection_for(stream_id: str) -> Projection[Any] | None:
    return BY_KIND.get(streams.kind_of(stream_id))
