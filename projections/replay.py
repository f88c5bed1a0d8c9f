"""Rebuild read models from the log into fresh tables, then verify them against the live tables
or swap them in while the API keeps serving.

Inline read models (projections/readmodels.py; each row the fold of one stream):
1. In one REPEATABLE READ snapshot S0, read every event of the wanted stream kinds ordered by
   (stream_id, version), fold each stream and COPY the rows into `<table>_rebuild` (created LIKE
   the live table, indexes added after the load). Per-stream version order matters: log order
   (transaction_id, position) does not preserve it, because a transaction that started earlier
   can append a stream's next version after waiting on its (stream_id, version) index entry.
   Each event comes as one row with only what a fold reads (data as text, as a bare read
   renders it, version, position, recorded_at), grouped into streams here; reading, folding and
   COPY (on two connections) overlap. The indexes are built side by side, one build per CPU.
   A large log is cut into ranges of stream ids, one per CPU (up to 4): helper processes
   (`python -m projections.replay`) fold all but the first in S0, exported to them.
2. Catch up: the streams with events visible now but not in the previous snapshot
   (`transaction_id >= xmin(S) AND NOT pg_visible_in_snapshot(transaction_id, S)`) are re-folded
   whole into the fresh table (idempotent), until the remaining delta is small.
3. Swap, in one short transaction: LOCK the live tables IN EXCLUSIVE MODE (inline writers wait,
   readers go on), re-fold the last delta, drop the live table and rename the rebuilt one and its
   indexes to the live names. Every command that committed rows to a live table before the lock
   is in the delta; a command still waiting on the lock writes its (whole-stream) fold into the
   new table once we commit, so nothing written meanwhile is lost. Lock waits are bounded by
   lock_timeout (500 ms); on timeout we catch up once more and retry, so commands are never stuck
   behind us for long. An autovacuum of a live table holds a lock that only a wait longer than
   deadlock_timeout makes PostgreSQL cancel, so while one is in the way the next try waits that
   long.
`--verify` instead compares rebuilt and live tables row by row inside one REPEATABLE READ
snapshot, after re-folding the delta up to that snapshot (inline rows commit with their events,
so a snapshot sees both consistently). Nothing is swapped.

Asynchronous projections (projections/runner.py) are rebuilt from position 0 by their own
`rebuild` (stats: counters summed by PostgreSQL in one snapshot), on the admin connection while
the inline fold runs. The swap takes the projection's checkpoint row FOR UPDATE (the runner's
batches take it first too), brings the rebuilt table up to the live checkpoint if the runner was
ahead, and sets the checkpoint to the rebuilt table's in the same transaction. Verify rebuilds up
to the live checkpoint read at the start and, in the comparing snapshot, applies what the runner
did since.

Imports the projections and the store; nothing here knows about HTTP.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import gc
import itertools
import operator
import os
import platform
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, cast

import asyncpg
import msgspec

from projections.binary_copy import Encoding, copy_rows
from projections.engine import write_streams
from projections.readmodels import PROJECTIONS, Projection, Recorded, Row, as_is, pg_micros
from projections.runner import (
    ASYNC_PROJECTIONS,
    AsyncProjection,
    lock_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from service import store, streams
from service.events import DECODER, AnyEvent
from service.store import Checkpoint
from service.tasks import cancel_and_wait

REPLAY_LOCK: Final = 7320190
READ_CHUNK: Final = 5000
FETCH_EVENTS: Final = 4000  # events (rows) the fold asks for at a time
COPY_CHUNK: Final = 5000  # rows per COPY
WRITERS: Final = 2  # connections that COPY, so that encoding a chunk overlaps loading one
YIELD_EVENTS: Final = 500  # events folded between turns of the event loop
FOLD_PROCESSES: Final = 4  # at most; never more than the CPUs
CPUS: Final = os.cpu_count() or 1
PARALLEL_FOLD_EVENTS: Final = 200_000  # smaller logs fold in one process (a helper takes ~0.3 s)
HELPER_PROGRESS: Final = 20_000  # events between a helper's progress reports
SMALL_DELTA: Final = 200
MAX_CATCH_UP_ROUNDS: Final = 8
MAX_SWAP_ATTEMPTS: Final = 30
SWAP_LOCK_TIMEOUT: Final = 500  # ms
SWAP_DEADLOCK_TIMEOUT: Final = 50  # ms
SHOWN_DIFFERENCES: Final = 20

# progress(stage, advance, total): total is set once per stage, then advance is reported.
Progress = Callable[[str, int, int | None], None]


def _no_progress(stage: str, advance: int, total: int | None) -> None:
    return None


class ReplayError(Exception):
    """Replay could not run (unknown projection, another replay running, …)."""


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    table: str
    key: tuple[str, ...]
    inline: Projection[Any] | None = None
    async_projection: AsyncProjection | None = None

    @property
    def rebuild(self) -> str:
        return f"{self.table}_rebuild"


@dataclass(frozen=True, slots=True)
class Difference:
    table: str
    key: dict[str, Any]
    column: str | None  # None: the row exists on one side only
    live: Any
    rebuilt: Any

    def __str__(self) -> str:
        key = ", ".join(f"{k}={v}" for k, v in self.key.items())
        if self.column is None:
            side = "live only" if self.rebuilt is None else "rebuilt only (missing in live)"
            return f"{self.table} ({key}): row {side}"
        return (
            f"{self.table} ({key}): column {self.column}: "
            f"live {self.live!r}, rebuilt {self.rebuilt!r}"
        )


@dataclass(slots=True)
class Result:
    projections: list[str]
    events: int = 0
    seconds: float = 0.0
    catch_up_rounds: int = 0
    swap_attempts: int = 0
    differences: list[Difference] = field(default_factory=list)
    differing_rows: dict[str, int] = field(default_factory=dict)
    swapped: bool = False
    fold_processes: int = 0
    #: Wall seconds of each phase: fold (with the asynchronous projections' rebuild beside it),
    #: indexes, catch up, then verify or swap (a swap's retries and their catch-ups included).
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def targets(names: Sequence[str] | None = None) -> list[Target]:
    """The projections to rebuild: all of them, or those named."""
    every = [Target(p.name, p.table, p.key, inline=p) for p in PROJECTIONS] + [
        Target(a.name, a.table, a.key, async_projection=a) for a in ASYNC_PROJECTIONS
    ]
    if not names:
        return every
    by_name = {t.name: t for t in every}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ReplayError(
            f"unknown projection {', '.join(unknown)}; known: {', '.join(sorted(by_name))}"
        )
    return [by_name[n] for n in dict.fromkeys(names)]


# ── reading ──────────────────────────────────────────────────────────────────


async def _times_as_micros(conn: asyncpg.Connection) -> None:
    """From now on `conn` sends and receives timestamptz as what it is on the wire: PostgreSQL's
    microseconds since 2000, an int8 (asyncpg's own codec: no Python call per value)."""
    await conn.set_builtin_type_codec("timestamptz", schema="pg_catalog", codec_name="int8")


@contextlib.asynccontextmanager
async def _times_as_micros_inside(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """_times_as_micros while inside; datetimes again afterwards."""
    await _times_as_micros(conn)
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):  # the replay is failing anyway
            await conn.reset_type_codec("timestamptz", schema="pg_catalog")
        raise
    await conn.reset_type_codec("timestamptz", schema="pg_catalog")


class Logged(msgspec.Struct, frozen=True, gc=False):
    """One event as a fold reads it (projections.readmodels.Recorded), made from one row of
    the streams query: no metadata. Its recorded_at is PostgreSQL's microseconds since 2000, not
    a datetime: a fold carries an event's time into its rows as it is, never computes with it,
    and the rebuild's COPY sends the number as it is (see _writer). A datetime for every
    event, and its microseconds again for the COPY, cost a tenth of the fold."""

    event: AnyEvent
    version: int
    position: int
    recorded_at: int


_EVENT: Final = DECODER.decode
_STREAM_ID: Final = operator.itemgetter(0)
_COUNT_SQL: Final = (
    "SELECT count(*) FROM events WHERE split_part(stream_id, ':', 2) = ANY($1::text[])"
)


def _kinds(inline: Sequence[Target]) -> list[str]:
    return [t.inline.stream_kind for t in inline if t.inline is not None]


async def _snapshot(conn: asyncpg.Connection) -> str:
    snap: str = await conn.fetchval("SELECT pg_current_snapshot()::text")
    return snap


async def _changed_streams(conn: asyncpg.Connection, since: str, kinds: list[str]) -> list[str]:
    """Streams of `kinds` with events visible to this statement but not in snapshot `since`."""
    rows = await conn.fetch(
        "SELECT DISTINCT stream_id FROM events "
        "WHERE transaction_id >= pg_snapshot_xmin($1::text::pg_snapshot) "
        "AND NOT pg_visible_in_snapshot(transaction_id, $1::text::pg_snapshot) "
        "AND split_part(stream_id, ':', 2) = ANY($2::text[])",
        since,
        kinds,
    )
    return [r[0] for r in rows]


async def _refold(
    read: asyncpg.Connection,
    write: asyncpg.Connection,
    stream_ids: Sequence[str],
    inline: Sequence[Target],
) -> int:
    """Re-fold whole streams into the rebuild tables; returns the events read."""
    tables = {t.table: t.rebuild for t in inline}
    only = [t.name for t in inline]
    events = 0
    for i in range(0, len(stream_ids), 1000):
        chunk = await store.read_streams(read, stream_ids[i : i + 1000])
        events += sum(len(v) for v in chunk.values())
        await write_streams(write, chunk, tables=tables, only=only)
    return events


# ── the phases ───────────────────────────────────────────────────────────────


_NO_AUTOVACUUM: Final = ("autovacuum_enabled", "toast.autovacuum_enabled")


async def _refuse_what_the_swap_would_lose(
    conn: asyncpg.Connection, chosen: Sequence[Target]
) -> None:
    """Refuse at once, before any work, when the swap, which drops each live table and renames
    its rebuilt one, would fail or silently lose something of an operator's: an object that
    depends on a live table (a view, another table's foreign key: PostgreSQL would refuse the
    drop only at the end of the fold), or one that belongs to it and is not rebuilt with it (a
    trigger, a row-level security policy, a rule, a publication's membership). What the swap does
    carry over is in _create_tables (tablespaces), _take_over_column_settings, _indexes (index
    and key comments, tablespaces), _take_over_options, _take_over_access and _replica_identity."""
    rows = await conn.fetch(
        """
        WITH t AS (SELECT name, name::regclass AS oid FROM unnest($1::text[]) AS name)
        -- A view depends through its rewrite rule: named by the view. The table's own rules
        -- (named below) depend on it too.
        SELECT t.name, CASE WHEN r.oid IS NULL THEN pg_describe_object(d.classid, d.objid, 0)
               ELSE pg_describe_object('pg_class'::regclass, r.ev_class, 0) END
          FROM t JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass
           AND d.refobjid = t.oid AND d.deptype = 'n'
          LEFT JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND r.oid = d.objid
         WHERE r.ev_class IS DISTINCT FROM t.oid
        UNION
        SELECT t.name, 'trigger ' || quote_ident(g.tgname)
          FROM t JOIN pg_trigger g ON g.tgrelid = t.oid AND NOT g.tgisinternal
        UNION
        SELECT t.name, 'policy ' || quote_ident(p.polname)
          FROM t JOIN pg_policy p ON p.polrelid = t.oid
        UNION
        SELECT t.name, 'row level security' FROM t JOIN pg_class c ON c.oid = t.oid
         WHERE c.relrowsecurity OR c.relforcerowsecurity
        UNION
        SELECT t.name, 'rule ' || quote_ident(r.rulename)
          FROM t JOIN pg_rewrite r ON r.ev_class = t.oid
        UNION
        SELECT t.name, 'publication ' || quote_ident(b.pubname)
          FROM t JOIN pg_publication_rel pr ON pr.prrelid = t.oid
          JOIN pg_publication b ON b.oid = pr.prpubid
        ORDER BY 1, 2
        """,
        [t.table for t in chosen],
    )
    if rows:
        raise ReplayError(_dependents_message("; ".join(f"{w} on {t}" for t, w in rows)))


def _dependents_message(listed: str) -> str:
    return (
        f"the swap replaces the live tables, which these depend on or belong to ({listed}): "
        "drop them, replay, and create them again (`--verify` compares without swapping)"
    )


async def _create_tables(conn: asyncpg.Connection, chosen: Sequence[Target]) -> None:
    """The empty rebuild tables, in the live tables' tablespaces (CREATE TABLE … LIKE keeps the
    database's default), without autovacuum until the swap: a vacuum of a table that has just
    been loaded holds a lock that an index build or the swap can only take by waiting a whole
    deadlock_timeout (1 s) for PostgreSQL to cancel it."""
    off = ", ".join(f"{option} = off" for option in _NO_AUTOVACUUM)
    try:
        for t in chosen:
            await _into_tablespace_of(conn, t.table)
            await conn.execute(f"DROP TABLE IF EXISTS {t.rebuild}")
            await conn.execute(
                f"CREATE TABLE {t.rebuild} (LIKE {t.table} INCLUDING ALL EXCLUDING INDEXES) "
                f"WITH ({off})"
            )
            await _take_over_column_settings(conn, t)
    finally:
        await conn.execute("RESET default_tablespace")


async def _into_tablespace_of(conn: asyncpg.Connection, relation: str) -> None:
    """What `conn` creates next goes where the relation named `relation` is: in its own
    tablespace, or in the database's default one (not in a default_tablespace set for the role
    or the server)."""
    await conn.execute(
        "SELECT set_config('default_tablespace', coalesce((SELECT s.spcname FROM pg_class c "
        "JOIN pg_tablespace s ON s.oid = c.reltablespace WHERE c.oid = $1::regclass), ''), "
        "false)",
        relation,
    )


#: PostgreSQL's own attribute options. Others may be there too (a server seen here marks every
#: column of a new table with one of its own) and are the server's business, not ours.
_COLUMN_OPTIONS: Final = frozenset({"n_distinct", "n_distinct_inherited"})


async def _take_over_column_settings(conn: asyncpg.Connection, t: Target) -> None:
    """The live table's per-column planner settings, which CREATE TABLE … LIKE does not copy:
    statistics targets (`ALTER COLUMN … SET STATISTICS`) and attribute options (`n_distinct`,
    `n_distinct_inherited`). Set before the load, so that the rebuild's own ANALYZE honours
    them, and kept by the swap. (PostgreSQL 17 leaves attstattarget NULL for the default;
    earlier versions say -1.)"""
    rows = await conn.fetch(
        "SELECT quote_ident(attname), attstattarget, attoptions FROM pg_attribute "
        "WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped "
        "AND (coalesce(attstattarget, -1) >= 0 OR attoptions IS NOT NULL) ORDER BY attnum",
        t.table,
    )
    for column, target, options in rows:
        if target is not None and target >= 0:
            await conn.execute(
                f"ALTER TABLE {t.rebuild} ALTER COLUMN {column} SET STATISTICS {int(target)}"
            )
        planner = [o for o in options or () if o.partition("=")[0] in _COLUMN_OPTIONS]
        if planner:
            await conn.execute(
                f"ALTER TABLE {t.rebuild} ALTER COLUMN {column} SET ({_options(planner)})"
            )


async def _take_over_options(conn: asyncpg.Connection, t: Target) -> None:
    """At the swap: the rebuild table gets autovacuum back and the live table's own storage
    options (fillfactor, autovacuum settings, …), its TOAST table's (`toast.…`), its comment,
    owner and privileges, which CREATE TABLE … LIKE does not copy."""
    await conn.execute(f"ALTER TABLE {t.rebuild} RESET ({', '.join(_NO_AUTOVACUUM)})")
    row = await conn.fetchrow(
        "SELECT c.reloptions, toast.reloptions FROM pg_class c "
        "LEFT JOIN pg_class toast ON toast.oid = c.reltoastrelid WHERE c.oid = $1::regclass",
        t.table,
    )
    assert row is not None
    own: list[str] = row[0] or []
    of_toast: list[str] = row[1] or []
    options = [*own, *(f"toast.{o}" for o in of_toast)]
    if options:
        await conn.execute(f"ALTER TABLE {t.rebuild} SET ({_options(options)})")
    comment = await conn.fetchval("SELECT obj_description($1::regclass, 'pg_class')", t.table)
    if comment is not None:
        await conn.execute(f"COMMENT ON TABLE {t.rebuild} IS {_literal(comment)}")
    await _take_over_access(conn, t)


async def _take_over_access(conn: asyncpg.Connection, t: Target) -> None:
    """The live table's owner and the privileges granted on it, on the whole table and on
    columns (a reporting role's SELECT, say), which CREATE TABLE … LIKE does not copy: without
    them the swapped-in table would belong to whoever ran the replay and grant nothing. A role
    that may drop the live table (which the swap does) may also give its owner the new one."""
    owner = await conn.fetchval(
        "SELECT relowner::regrole::text FROM pg_class WHERE oid = $1::regclass", t.table
    )
    if owner != await conn.fetchval("SELECT current_user::regrole::text"):
        await conn.execute(f"ALTER TABLE {t.rebuild} OWNER TO {owner}")
    # regrole's text is a quoted identifier where one is needed; grantee 0 is PUBLIC.
    grants = await conn.fetch(
        "SELECT NULL::text AS column_name, g.* FROM ("
        "  SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END,"
        "         a.privilege_type, a.is_grantable"
        "  FROM pg_class c, aclexplode(c.relacl) a"
        "  WHERE c.oid = $1::regclass AND a.grantee <> c.relowner) AS g "
        "UNION ALL "
        "SELECT quote_ident(t.attname),"
        "       CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END,"
        "       a.privilege_type, a.is_grantable "
        "FROM pg_attribute t, aclexplode(t.attacl) a "
        "WHERE t.attrelid = $1::regclass AND t.attnum > 0 AND NOT t.attisdropped",
        t.table,
    )
    for column, grantee, privilege, grantable in grants:
        on = f"({column}) " if column is not None else ""
        option = " WITH GRANT OPTION" if grantable else ""
        await conn.execute(f"GRANT {privilege} {on}ON {t.rebuild} TO {grantee}{option}")


async def _replica_identity(conn: asyncpg.Connection, t: Target) -> str | None:
    """The live table's replica identity, as ALTER TABLE … REPLICA IDENTITY takes it, where it
    is not the default (the primary key): FULL, NOTHING or USING INDEX name. CREATE TABLE … LIKE
    does not copy it; logical decoding of a publication FOR ALL TABLES depends on it."""
    row = await conn.fetchrow(
        "SELECT c.relreplident::text, (SELECT quote_ident(i.relname) FROM pg_index x "
        "JOIN pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = c.oid AND x.indisreplident) "
        "FROM pg_class c WHERE c.oid = $1::regclass",
        t.table,
    )
    assert row is not None
    kind, index = row
    if kind == "f":
        return "FULL"
    if kind == "n":
        return "NOTHING"
    if kind == "i" and index is not None:
        return f"USING INDEX {index}"
    return None


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _options(options: Sequence[str]) -> str:
    """Options as PostgreSQL's catalogues list them (`name=value`, as in reloptions and
    attoptions) written out for `SET (…)`."""
    return ", ".join(
        f"{name} = {_literal(value)}" for name, _, value in (o.partition("=") for o in options)
    )


async def _drop_tables(conn: asyncpg.Connection, chosen: Sequence[Target]) -> None:
    for t in chosen:
        await conn.execute(f"DROP TABLE IF EXISTS {t.rebuild}")


def _rebuild_index_name(name: str) -> str:
    return f"{name[:56]}_rebuild"


@dataclass(frozen=True, slots=True)
class _Index:
    """One of a live table's indexes, to build on its rebuild table under a neutral name."""

    target: Target
    name: str  # on the rebuild table
    live: str  # the live index it becomes at the swap, whose tablespace it is built in
    create: str
    constraint: str | None  # ALTER TABLE … USING INDEX, for a key constraint's index
    cost: float  # a guess in microseconds, to start the longest builds first
    comments: tuple[str, ...] = ()  # COMMENT ON the index and its constraint, as the live ones


#: A build's cost: every page of the table read, and every row it indexes sorted and written
#: (fitted to the builds of the benchmark's log: the key's columns hardly matter).
BUILD_US_PER_PAGE: Final = 4.0
BUILD_US_PER_ROW: Final = 1.4


async def _indexes(conn: asyncpg.Connection, t: Target) -> list[_Index]:
    """The live table's indexes and key constraints, as builds for the rebuild table. A build's
    cost is guessed from the table's pages and rows (counted in 1 % of the pages, sampled); a
    partial index, reading the whole table, sorts too few rows to count."""
    rows = await conn.fetch(
        "SELECT ic.relname AS name, i.indisunique AS is_unique, "
        "pg_get_indexdef(i.indexrelid) "
        "AS def, c.contype::text AS contype, i.indpred IS NOT NULL AS partial, "
        "obj_description(i.indexrelid, 'pg_class') AS index_comment, "
        "obj_description(c.oid, 'pg_constraint') AS constraint_comment "
        "FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid "
        "LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid "
        "WHERE i.indrelid = $1::regclass ORDER BY ic.relname",
        t.table,
    )
    size = await conn.fetchrow(
        "SELECT pg_relation_size($1::regclass) / current_setting('block_size')::int, "
        f"(SELECT count(*) FROM {t.rebuild} TABLESAMPLE SYSTEM (1)) * 100",
        t.rebuild,
    )
    assert size is not None
    pages, table_rows = size
    out: list[_Index] = []
    for r in rows:
        new = _rebuild_index_name(r["name"])
        _, sep, rest = r["def"].partition(" USING ")
        if not sep:
            raise ReplayError(f"cannot copy index {r['name']}: {r['def']}")
        unique = "UNIQUE " if r["is_unique"] else ""
        constraint: str | None = None
        if r["contype"] == "p":
            constraint = (
                f"ALTER TABLE {t.rebuild} ADD CONSTRAINT {new} PRIMARY KEY USING INDEX {new}"
            )
        elif r["contype"] == "u":
            constraint = f"ALTER TABLE {t.rebuild} ADD CONSTRAINT {new} UNIQUE USING INDEX {new}"
        elif r["contype"] is not None:
            raise ReplayError(f"cannot copy constraint index {r['name']} ({r['contype']})")
        create = f"CREATE {unique}INDEX {new} ON {t.rebuild} USING {rest}"
        cost = BUILD_US_PER_PAGE * pages + (0 if r["partial"] else BUILD_US_PER_ROW * table_rows)
        comments = []
        if r["index_comment"] is not None:
            comments.append(f"COMMENT ON INDEX {new} IS {_literal(r['index_comment'])}")
        if r["constraint_comment"] is not None:
            comments.append(
                f"COMMENT ON CONSTRAINT {new} ON {t.rebuild} IS {_literal(r['constraint_comment'])}"
            )
        out.append(_Index(t, new, r["name"], create, constraint, cost, tuple(comments)))
    return out


async def _finish_indexes(conn: asyncpg.Connection, t: Target, built: Sequence[_Index]) -> None:
    """After the builds: the key constraints, and statistics for the columns the indexes serve
    (the planner's choices); ANALYZE of the large JSON columns would cost more than the rest of
    the swap and serves no query."""
    for index in built:
        if index.constraint is not None:
            await conn.execute(index.constraint)
        for comment in index.comments:
            await conn.execute(comment)
    columns = await conn.fetch(
        "SELECT DISTINCT a.attname FROM pg_index i JOIN pg_attribute a "
        "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey::int2[]) "
        "WHERE i.indrelid = $1::regclass ORDER BY 1",
        t.rebuild,
    )
    listed = ", ".join(r[0] for r in columns)
    await conn.execute(f"ANALYZE {t.rebuild}" + (f" ({listed})" if listed else ""))


async def _create_indexes(
    conns: Sequence[asyncpg.Connection], chosen: Sequence[Target]
) -> dict[str, dict[str, str]]:
    """Give each rebuild table the live table's indexes and key constraints under neutral names;
    returns {projection: {rebuild index name: live index name}} for the swap. The builds run
    side by side on `conns` (CREATE INDEX on one table does not block another on it), the
    longest first, each on one process (no parallel workers of its own: the connections already
    keep the CPUs busy). A table gets its constraints and statistics as soon as its last build
    is done, from the connection that built it, while the others go on building (its ANALYZE
    waited for every table's builds, and then for the largest table's alone)."""
    if not chosen:
        return {}
    plans = {t.name: await _indexes(conns[0], t) for t in chosen}
    builds = collections.deque(
        sorted(
            (index for plan in plans.values() for index in plan),
            key=lambda index: (-index.cost, index.name),
        )
    )
    unbuilt = {t.name: len(plans[t.name]) for t in chosen}
    finishes = collections.deque(t for t in chosen if not plans[t.name])

    async def lane(conn: asyncpg.Connection) -> None:
        if len(conns) > 1:
            await conn.execute("SET max_parallel_maintenance_workers = 0")
        try:
            while finishes or builds:
                if finishes:
                    t = finishes.popleft()
                    await _finish_indexes(conn, t, plans[t.name])
                    continue
                index = builds.popleft()
                await conn.execute(f"DROP INDEX IF EXISTS {index.name}")
                await _into_tablespace_of(conn, index.live)
                await conn.execute(index.create)
                unbuilt[index.target.name] -= 1
                if not unbuilt[index.target.name]:
                    finishes.append(index.target)
        finally:
            await conn.execute("RESET default_tablespace")
            if len(conns) > 1:
                await conn.execute("RESET max_parallel_maintenance_workers")

    await _all(lane(c) for c in conns)
    return {t.name: {index.name: index.live for index in plans[t.name]} for t in chosen}


async def _all(work: Iterable[Awaitable[None]]) -> None:
    """Run `work` side by side, each to its end (its connection idle afterwards); raise the first
    error."""
    for outcome in await asyncio.gather(*work, return_exceptions=True):
        if isinstance(outcome, BaseException):
            raise outcome


async def _fold_all(
    url: str,
    read: asyncpg.Connection,
    writers: Sequence[asyncpg.Connection],
    inline: Sequence[Target],
    progress: Progress,
) -> tuple[str, int, int]:
    """Phase 1: fold every stream of the inline projections in snapshot S0, COPY the rows.
    Returns (S0, events read, processes that folded). A large log is split into ranges of stream
    ids of about equal size, one per CPU (at most FOLD_PROCESSES): this process folds the first,
    helper processes (`python -m projections.replay`) fold the others in the same snapshot,
    exported to them."""
    async with read.transaction(isolation="repeatable_read", readonly=True):
        snapshot = await _snapshot(read)
        ranges = await _ranges(read)
        helpers: list[asyncio.Task[int]] = []
        if len(ranges) > 1:
            exported = await read.fetchval("SELECT pg_export_snapshot()")
            helpers = [
                asyncio.create_task(_fold_elsewhere(url, exported, inline, lo, hi, progress))
                for lo, hi in ranges[1:]
            ]

        def a_helper_failed() -> bool:
            return any(h.done() and (h.cancelled() or h.exception()) for h in helpers)

        _buffers_from_the_heap()
        try:
            with _cycle_collector_off():
                events = await _fold_range(
                    read, writers, inline, progress, *ranges[0], stop=a_helper_failed
                )
            # Our transaction stays open until every helper is done: it keeps the exported
            # snapshot valid for them. The first to fail raises here, at once (our own range was
            # cut short; the others are stopped below).
            events += sum(await asyncio.gather(*helpers))
        finally:
            await cancel_and_wait(*helpers)
    return snapshot, events, len(ranges)


async def _ranges(read: asyncpg.Connection) -> list[tuple[str | None, str | None]]:
    """[lo, hi) ranges of stream ids holding about equal numbers of events, one per fold
    process, cut at the planner's histogram of events.stream_id (free to read); one range, the
    whole log, when the log is small, there is one CPU, or the histogram is missing."""
    processes = min(FOLD_PROCESSES, CPUS)
    if processes < 2:
        return [(None, None)]
    row = await read.fetchrow(
        "SELECT c.reltuples, s.histogram_bounds::text::text[] FROM pg_class c "
        "LEFT JOIN pg_stats s ON s.schemaname = c.relnamespace::regnamespace::text "
        "AND s.tablename = c.relname AND s.attname = 'stream_id' "
        "WHERE c.oid = 'events'::regclass"
    )
    if row is None or row[0] < PARALLEL_FOLD_EVENTS or not row[1]:
        return [(None, None)]
    bounds: list[str] = row[1]
    cuts = sorted({bounds[len(bounds) * i // processes] for i in range(1, processes)})
    edges: list[str | None] = [None, *cuts, None]
    return list(itertools.pairwise(edges))


_EVERY_KIND: Final = frozenset(p.stream_kind for p in PROJECTIONS)


def _streams_query(kinds: list[str], lo: str | None, hi: str | None) -> tuple[str, list[Any]]:
    """The events of the streams of `kinds` in [lo, hi), one row each, in (stream_id, version)
    order, with only what a fold reads: PostgreSQL renders each event's data as text, as for the
    bare read, and nothing more (building JSON arrays per stream cost it twice that). With every
    projection's kind wanted (a whole replay) there is no filter on the kind, whose test of every
    row cost PostgreSQL a fifteenth of the read: the fold skips a stream of any other kind."""
    args: list[Any] = []
    tests: list[str] = []
    if not set(kinds) >= _EVERY_KIND:
        args.append(kinds)
        tests.append(f"split_part(stream_id, ':', 2) = ANY(${len(args)}::text[])")
    if lo is not None:
        args.append(lo)
        tests.append(f"stream_id >= ${len(args)}")
    if hi is not None:
        args.append(hi)
        tests.append(f"stream_id < ${len(args)}")
    where = f"WHERE {' AND '.join(tests)} " if tests else ""
    sql = (
        "SELECT stream_id, data::text, version, position, recorded_at "
        f"FROM events {where}ORDER BY stream_id, version"
    )
    return sql, args


_M_TRIM_THRESHOLD: Final = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD: Final = -3
_HEAP_BUFFERS: Final = 4 << 20  # bytes


def _buffers_from_the_heap() -> bool:
    """Have glibc's malloc serve buffers up to _HEAP_BUFFERS from its heap and keep that much
    free memory there, for the rest of this process. Its defaults map every block over 128 kB
    afresh and unmap it when freed (raising that limit only after a larger block is freed), and
    give the heap's free top back to the system: every 256 kB that asyncio receives from a
    socket then came in new pages, a page fault each 4 kB, 50,000 of them in a replay's helper
    (`perf -e page-faults`). Nothing on other C libraries. Returns whether glibc took both."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(
        mallopt(_M_MMAP_THRESHOLD, _HEAP_BUFFERS) == 1
        and mallopt(_M_TRIM_THRESHOLD, 2 * _HEAP_BUFFERS) == 1
    )


@contextlib.contextmanager
def _cycle_collector_off() -> Iterator[None]:
    """Python's cycle collector paused: a fold makes millions of short-lived containers (rows,
    events, folds), freed by reference counting, and the collector, triggered by their number,
    kept walking every live object (a fifth of the fold's CPU time under py-spy)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


async def _fold_range(
    read: asyncpg.Connection,
    writers: Sequence[asyncpg.Connection],
    inline: Sequence[Target],
    progress: Progress,
    lo: str | None,
    hi: str | None,
    *,
    stop: Callable[[], bool] = lambda: False,
) -> int:
    """Fold the streams in [lo, hi) in the snapshot of `read`'s open transaction and COPY the
    rows; returns the events read (fewer when `stop()` said so: it is asked after every chunk).
    PostgreSQL, this process and the COPY overlap: the next chunk of events is requested before
    the current one is folded, the fold yields to the event loop every few hundred events (so
    that every connection's socket is served), and the rows go to the writers through small
    queues, one per writer."""
    by_kind = {t.inline.stream_kind: t for t in inline if t.inline is not None}
    # Each table's rows go through one writer, so its heap keeps the fold's order: streams in
    # id order, which is (nearly) the primary key's, and a sort of presorted input is cheap
    # (building rm_busy's key took a quarter of the time it took on the chunks of two writers).
    queues: list[asyncio.Queue[tuple[Target, list[Row]] | None]] = [
        asyncio.Queue(maxsize=2) for _ in writers
    ]
    queue_of = {t.name: queues[i % len(queues)] for i, t in enumerate(inline)}
    failed: list[Exception] = []
    # The C encoder's bytes where it is built and takes every column's type, else asyncpg's.
    encodings = {
        t.name: await Encoding.of(writers[0], t.rebuild, t.inline.columns)
        for t in inline
        if t.inline is not None
    }
    # The C encoder takes an event's datetimes as they are; asyncpg's int8 codec (_writer) needs
    # them as microseconds already.
    time_of = {name: pg_micros if e is None else as_is for name, e in encodings.items()}

    async def writer(write: asyncpg.Connection, queue: asyncio.Queue[Any]) -> None:
        # After a failure a writer keeps taking (and dropping) its queue's rows: the fold, which
        # stops at its next look at `failed`, must never wait on a queue nobody empties.
        while (item := await queue.get()) is not None:
            if failed:
                continue
            try:
                t, rows = item
                assert t.inline is not None
                await copy_rows(write, t.rebuild, rows, t.inline.columns, encodings[t.name])
            except Exception as e:
                failed.append(e)

    writing = asyncio.gather(*(writer(w, q) for w, q in zip(writers, queues, strict=True)))
    events = shown = 0
    try:
        # Rows in index order as they come, not after a sort of the whole log (which the
        # planner may pick, misjudging the kind filter): first rows at once, little memory.
        await read.execute("SET LOCAL enable_sort = off")
        buffers: dict[str, list[Row]] = {t.name: [] for t in inline}
        sql, args = _streams_query(_kinds(inline), lo, hi)
        async with _times_as_micros_inside(read):  # Logged keeps microseconds
            cursor = await read.cursor(sql, *args)
            fetching = asyncio.ensure_future(cursor.fetch(FETCH_EVENTS))
            carried: list[asyncpg.Record] = []  # the last stream of a fetch: it may go on
            try:
                while True:
                    rows = await fetching
                    if rows:
                        fetching = asyncio.ensure_future(cursor.fetch(FETCH_EVENTS))
                        if carried:
                            rows = carried + rows
                        last, cut = rows[-1][0], len(rows) - 1
                        while cut > 0 and rows[cut - 1][0] == last:
                            cut -= 1
                        rows, carried = rows[:cut], rows[cut:]
                    else:
                        rows, carried = carried, []
                        if not rows:
                            break
                    for stream_id, group in itertools.groupby(rows, _STREAM_ID):
                        t = by_kind.get(streams.kind_of(stream_id))
                        if t is None or t.inline is None:
                            continue  # not a kind of the projections replayed
                        stream = [Logged(_EVENT(d), v, p, at) for _, d, v, p, at in group]
                        buffer = buffers[t.name]
                        buffer.extend(
                            t.inline.fold(stream_id, cast(list[Recorded], stream), time_of[t.name])
                        )
                        events += len(stream)
                        if len(buffer) >= COPY_CHUNK:
                            await queue_of[t.name].put((t, buffer))
                            buffers[t.name] = []
                        if events - shown >= YIELD_EVENTS:
                            progress("fold", events - shown, None)
                            shown = events
                            await asyncio.sleep(0)  # let every socket be served
                    if failed or stop():
                        break  # a writer failed (raised below) or a helper did (our caller)
            finally:
                # The connection must be idle before the transaction ends.
                with contextlib.suppress(Exception):
                    await fetching
        progress("fold", events - shown, None)
        for t in inline:
            if buffers[t.name]:
                await queue_of[t.name].put((t, buffers[t.name]))
        for queue in queues:
            await queue.put(None)
        await writing
        if failed:
            raise failed[0]
    finally:
        await cancel_and_wait(writing)
    return events


# ── helper processes ─────────────────────────────────────────────────────────


async def _fold_elsewhere(
    url: str,
    snapshot: str,
    inline: Sequence[Target],
    lo: str | None,
    hi: str | None,
    progress: Progress,
) -> int:
    """Fold the streams in [lo, hi) in a helper process (a fresh interpreter: nothing of this one
    is shared or re-run), in the exported `snapshot`; its progress is reported here. Returns the
    events it read."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "projections.replay",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        # The URL may hold a password: on stdin, not in the process list.
        request = _Part(url, snapshot, [t.name for t in inline], lo, hi)
        proc.stdin.write(msgspec.json.encode(request) + b"\n")
        await proc.stdin.drain()
        proc.stdin.close()
        done: int | None = None
        async for line in proc.stdout:
            kind, n = msgspec.json.decode(line, type=tuple[str, int])
            if kind == "progress":
                progress("fold", n, None)
            else:
                done = n
        code = await proc.wait()
        if code != 0 or done is None:
            raise ReplayError(
                f"the helper process folding streams from {lo or 'the first'} to "
                f"{hi or 'the last'} failed (exit status {code})"
            )
        return done
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


class _Part(msgspec.Struct, array_like=True, frozen=True):
    """What a helper process folds (sent on its stdin)."""

    url: str
    snapshot: str
    names: list[str]
    lo: str | None
    hi: str | None


async def _fold_part(part: _Part, progress: Progress) -> int:
    """A helper process's work: its range, in the snapshot the replay exported."""
    if not re.fullmatch(r"[0-9A-Fa-f-]+", part.snapshot):
        raise ReplayError(f"not a snapshot id: {part.snapshot!r}")
    inline = [t for t in targets(part.names) if t.inline is not None]
    async with contextlib.AsyncExitStack() as stack:
        read, writers = await _open(stack, part.url)
        async with read.transaction(isolation="repeatable_read", readonly=True):
            await read.execute(f"SET TRANSACTION SNAPSHOT '{part.snapshot}'")
            with _cycle_collector_off():
                return await _fold_range(read, writers, inline, progress, part.lo, part.hi)


def _helper_main() -> None:
    """`python -m projections.replay`: fold the part described on stdin; report on stdout
    ["progress", events] now and then and ["done", events] at the end."""
    _buffers_from_the_heap()
    part = msgspec.json.decode(sys.stdin.buffer.readline(), type=_Part)
    out = sys.stdout.buffer
    pending = 0

    def report(stage: str, advance: int, total: int | None) -> None:
        nonlocal pending
        pending += advance
        if pending >= HELPER_PROGRESS:
            out.write(msgspec.json.encode(("progress", pending)) + b"\n")
            out.flush()
            pending = 0

    events = asyncio.run(_fold_part(part, report))
    out.write(msgspec.json.encode(("progress", pending)) + b"\n")
    out.write(msgspec.json.encode(("done", events)) + b"\n")
    out.flush()
    # Everything is committed and every connection closed: the interpreter's tear-down (40-80
    # ms of freeing what the fold left, measured) would only keep the replay waiting for us.
    os._exit(0)


async def _catch_up(
    read: asyncpg.Connection,
    write: asyncpg.Connection,
    inline: Sequence[Target],
    since: str,
    progress: Progress,
    result: Result,
) -> str:
    """Phase 2: re-fold the streams that changed since snapshot `since`, until few are left.
    Returns the snapshot the rebuild tables now reflect."""
    kinds = _kinds(inline)
    for _ in range(MAX_CATCH_UP_ROUNDS):
        async with read.transaction(isolation="repeatable_read", readonly=True):
            now = await _snapshot(read)
            changed = await _changed_streams(read, since, kinds)
            async with write.transaction():
                n = await _refold(read, write, changed, inline)
        result.catch_up_rounds += 1
        result.events += n
        progress("catch up", n, None)
        since = now
        if len(changed) < SMALL_DELTA:
            break
    return since


async def _apply_range(
    read: Any,
    write: Any,
    t: Target,
    after: Checkpoint,
    upto: Checkpoint | None,
    progress: Progress,
) -> tuple[Checkpoint, int]:
    """Apply the log after `after` (up to and including `upto`, or to the head) to the async
    projection's rebuild table. Returns (the new checkpoint, events applied)."""
    assert t.async_projection is not None
    tables = {t.table: t.rebuild}
    applied = 0
    while True:
        batch = await store.read_log(read, after, READ_CHUNK)
        if upto is not None:
            batch = [e for e in batch if e.checkpoint <= upto]
        if not batch:
            return after, applied
        await t.async_projection.apply(write, batch, tables=tables)
        after = batch[-1].checkpoint
        applied += len(batch)
        progress(t.name, len(batch), None)
        if upto is not None and after >= upto:
            return after, applied


# ── verify ───────────────────────────────────────────────────────────────────


def _key_of(
    t: Target, live: dict[str, Any] | None, rebuilt: dict[str, Any] | None
) -> dict[str, Any]:
    row = live if live is not None else rebuilt
    assert row is not None
    return {k: row[k] for k in t.key}


async def _differ(conn: asyncpg.Connection, t: Target, *, as_json: bool = True) -> str:
    """The condition on live row `l` and rebuilt row `r` that they differ in some column. Text
    columns that hold JSON (Projection.json_text) are compared `as_json`, so that the same value
    rendered by jsonb (earlier schema versions stored them as jsonb) and by the fold compare
    equal, without the keys earlier versions also wrote there (Projection.json_retired)."""
    json_text = t.inline.json_text if t.inline is not None and as_json else ()
    if not json_text:
        return "ROW(l.*) IS DISTINCT FROM ROW(r.*)"
    assert t.inline is not None
    assert all(re.fullmatch(r"[a-z_]+", k) for k in t.inline.json_retired)
    retired = ", ".join(f"'{k}'" for k in t.inline.json_retired)

    def compared(side: str, c: str) -> str:
        # `jsonb - keys` fails on a JSON scalar (text written by hand): see _count_differing.
        return f"{side}.{c}::jsonb" + (f" - ARRAY[{retired}]::text[]" if retired else "")

    columns: list[str] = [
        r[0]
        for r in await conn.fetch(
            "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 "
            "AND NOT attisdropped ORDER BY attnum",
            t.table,
        )
    ]
    plain = [c for c in columns if c not in json_text]
    left = ", ".join(f"l.{c}" for c in plain)
    right = ", ".join(f"r.{c}" for c in plain)
    differ = [f"ROW({left}) IS DISTINCT FROM ROW({right})"] + [
        # Parsed only where the texts differ (CASE evaluates in order).
        f"CASE WHEN l.{c} IS NOT DISTINCT FROM r.{c} THEN false "
        f"ELSE ({compared('l', c)}) IS DISTINCT FROM ({compared('r', c)}) END"
        for c in json_text
    ]
    return f"({' OR '.join(differ)})"


def _same(t: Target, column: str, live: Any, rebuilt: Any) -> bool:
    """Whether a column of a live and a rebuilt row (decoded from to_jsonb) holds the same."""
    if live == rebuilt:
        return True
    if t.inline is None or column not in t.inline.json_text:
        return False
    if not isinstance(live, str) or not isinstance(rebuilt, str):
        return False
    try:
        values = [msgspec.json.decode(v) for v in (live, rebuilt)]
    except msgspec.DecodeError:
        return False
    for v in values:
        if isinstance(v, dict):
            for k in t.inline.json_retired:
                v.pop(k, None)
    return bool(values[0] == values[1])


async def _count_differing(conn: asyncpg.Connection, t: Target, on: str) -> tuple[int, str]:
    """(rows that differ, the condition that found them). A JSON column whose text is not JSON,
    or is a JSON scalar where an object belongs (written by hand), cannot be compared as JSON:
    then every column is compared as text."""
    sql = f"SELECT count(*) FROM {t.table} l FULL JOIN {t.rebuild} r ON {on} WHERE "
    where = await _differ(conn, t)
    try:
        async with conn.transaction():  # a savepoint: the snapshot's transaction goes on
            count = await conn.fetchval(sql + where)
    except (asyncpg.InvalidTextRepresentationError, asyncpg.InvalidParameterValueError):
        where = await _differ(conn, t, as_json=False)
        count = await conn.fetchval(sql + where)
    return int(count), where


async def _compare(conn: asyncpg.Connection, t: Target, result: Result) -> None:
    on = " AND ".join(f"l.{k} = r.{k}" for k in t.key)
    order = ", ".join(f"coalesce(l.{k}, r.{k})" for k in t.key)
    count, where = await _count_differing(conn, t, on)
    if not count:
        return
    result.differing_rows[t.table] = count
    rows = await conn.fetch(
        f"SELECT to_jsonb(l.*)::text AS live, to_jsonb(r.*)::text AS rebuilt "
        f"FROM {t.table} l FULL JOIN {t.rebuild} r ON {on} WHERE {where} "
        f"ORDER BY {order} LIMIT $1",
        SHOWN_DIFFERENCES,
    )
    for r in rows:
        live = msgspec.json.decode(r["live"]) if r["live"] else None
        rebuilt = msgspec.json.decode(r["rebuilt"]) if r["rebuilt"] else None
        key = _key_of(t, live, rebuilt)
        if live is None or rebuilt is None:
            result.differences.append(Difference(t.table, key, None, live, rebuilt))
            continue
        columns = [c for c in live if not _same(t, c, live[c], rebuilt.get(c))]
        for c in columns or ["?"]:
            result.differences.append(Difference(t.table, key, c, live.get(c), rebuilt.get(c)))


async def _verify(
    conn: asyncpg.Connection,
    chosen: Sequence[Target],
    since: str | None,
    async_at: dict[str, Checkpoint],
    result: Result,
) -> None:
    inline = [t for t in chosen if t.inline is not None]
    async with conn.transaction(isolation="repeatable_read"):
        if inline and since is not None:
            changed = await _changed_streams(conn, since, _kinds(inline))
            result.events += await _refold(conn, conn, changed, inline)
        for t in chosen:
            if t.async_projection is None:
                continue
            live_at = await read_checkpoint(conn, t.name)
            if live_at < async_at[t.name]:
                raise ReplayError(f"{t.name}: the live checkpoint moved backwards during verify")
            _, n = await _apply_range(conn, conn, t, async_at[t.name], live_at, _no_progress)
            result.events += n
        for t in chosen:
            await _compare(conn, t, result)


# ── swap ─────────────────────────────────────────────────────────────────────


async def _autovacuum_in_the_way(conn: asyncpg.Connection, chosen: Sequence[Target]) -> int | None:
    """When an autovacuum worker holds a lock on one of the live tables (a table a replay swapped
    in gets vacuumed soon after: every row is new), the lock wait that makes PostgreSQL cancel
    it, in ms: its deadlock_timeout and a little more. A wait shorter than that never cancels it,
    so the swap would keep timing out until the vacuum is done. None when no worker is there."""
    waited = await conn.fetchval(
        "SELECT current_setting('deadlock_timeout')::interval FROM pg_locks l "
        "JOIN pg_stat_activity a ON a.pid = l.pid WHERE a.backend_type = 'autovacuum worker' "
        "AND l.relation = ANY($1::regclass[]) LIMIT 1",
        [t.table for t in chosen],
    )
    return None if waited is None else int(waited.total_seconds() * 1000) + SWAP_LOCK_TIMEOUT


async def _cancel_autovacuum_sooner(conn: asyncpg.Connection) -> None:
    """Where the role may (a superuser, or one granted SET on it): the swap's lock waits make
    PostgreSQL cancel an autovacuum in their way after SWAP_DEADLOCK_TIMEOUT rather than the
    server's deadlock_timeout (1 s by default, paid once per table: the tables a replay swapped in
    before, every row new, get vacuumed soon after). Elsewhere the swap waits the server's."""
    with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
        await conn.execute(f"SET deadlock_timeout = {SWAP_DEADLOCK_TIMEOUT}")


async def _swap_once(
    conn: asyncpg.Connection,
    chosen: Sequence[Target],
    since: str | None,
    async_at: dict[str, Checkpoint],
    index_names: dict[str, dict[str, str]],
    lock_timeout: int = SWAP_LOCK_TIMEOUT,
) -> None:
    inline = [t for t in chosen if t.inline is not None]
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = {int(lock_timeout)}")
        # Checkpoint rows before tables: the runner's batches lock in that order too.
        final: dict[str, Checkpoint] = {}
        for t in chosen:
            if t.async_projection is not None:
                final[t.name] = await lock_checkpoint(conn, t.name)
        await conn.execute(f"LOCK TABLE {', '.join(t.table for t in chosen)} IN EXCLUSIVE MODE")
        # Again, under the lock, for what was made while the fold ran: no trigger, policy, rule
        # or publication can be added from here on (a view still can; the DROP refuses then).
        await _refuse_what_the_swap_would_lose(conn, chosen)
        if inline and since is not None:
            changed = await _changed_streams(conn, since, _kinds(inline))
            await _refold(conn, conn, changed, inline)
        for t in chosen:
            if t.async_projection is None:
                continue
            if final[t.name] > async_at[t.name]:
                await _apply_range(conn, conn, t, async_at[t.name], final[t.name], _no_progress)
            else:
                final[t.name] = async_at[t.name]
        for t in chosen:
            await _take_over_options(conn, t)
            identity = await _replica_identity(conn, t)
            await conn.execute(f"DROP TABLE {t.table}")
            await conn.execute(f"ALTER TABLE {t.rebuild} RENAME TO {t.table}")
            for rebuilt, live in index_names[t.name].items():
                await conn.execute(f"ALTER INDEX {rebuilt} RENAME TO {live}")
            if identity is not None:  # its index, if it names one, has the live name again
                await conn.execute(f"ALTER TABLE {t.table} REPLICA IDENTITY {identity}")
            if t.async_projection is not None:
                await save_checkpoint(conn, t.name, final[t.name])


# ── the whole replay ─────────────────────────────────────────────────────────


async def _connect(url: str, **settings: str) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(
        url, server_settings={"application_name": "slotlog:replay", **settings}
    )
    return conn


async def _writer(url: str) -> asyncpg.Connection:
    """A connection for the fold's COPY into `<table>_rebuild` (and index builds). Its commits
    do not wait for their WAL to reach disk: nothing of a rebuild counts until the swap, whose
    own commit does wait, and so makes every earlier write of the rebuild durable with it. Its
    timestamptz values go as PostgreSQL's own microseconds since 2000: recorded times as the
    reader gives them (Logged), event times as the C encoder computes them from a row's
    datetimes (projections/binary_copy.py) or, where asyncpg encodes the rows, as a fold's rows
    give them (`pg_micros`). asyncpg's encoder of a datetime (infinity checks, astimezone, a
    timedelta's fields) cost twice that arithmetic, and a bulk load sends four or more of them
    a row."""
    conn = await _connect(url, synchronous_commit="off")
    await _times_as_micros(conn)
    return conn


async def _open(
    stack: contextlib.AsyncExitStack, url: str
) -> tuple[asyncpg.Connection, list[asyncpg.Connection]]:
    """A reading connection and WRITERS writing ones, closed with `stack`."""
    conns: list[asyncpg.Connection] = []
    for connect in [_connect] + [_writer] * WRITERS:
        conns.append(await connect(url))
        stack.push_async_callback(conns[-1].close)
    return conns[0], conns[1:]


async def replay(
    url: str,
    names: Sequence[str] | None = None,
    *,
    verify: bool = False,
    progress: Progress = _no_progress,
) -> Result:
    """Rebuild the named projections (all by default); verify against, or swap into, the live
    tables. Raises ReplayError when it cannot run."""
    chosen = targets(names)
    result = Result([t.name for t in chosen])
    started = time.perf_counter()
    admin = await _connect(url)
    try:
        if not await admin.fetchval("SELECT pg_try_advisory_lock($1)", REPLAY_LOCK):
            raise ReplayError("another `slotlog replay` is running against this database")
        async with contextlib.AsyncExitStack() as stack:
            read, writers = await _open(stack, url)
            try:
                await _run(url, admin, read, writers, chosen, verify, progress, result)
            finally:
                with contextlib.suppress(Exception):
                    if verify or not result.swapped:
                        await _drop_tables(admin, chosen)
    finally:
        await admin.close()
    result.seconds = time.perf_counter() - started
    return result


async def _run(
    url: str,
    admin: asyncpg.Connection,
    read: asyncpg.Connection,
    writers: Sequence[asyncpg.Connection],
    chosen: Sequence[Target],
    verify: bool,
    progress: Progress,
    result: Result,
) -> None:
    write = admin  # catch-up and swap: rows of datetimes (the writers send microseconds)
    inline = [t for t in chosen if t.inline is not None]
    if not verify:
        await _refuse_what_the_swap_would_lose(admin, chosen)
    await _create_tables(admin, chosen)

    async def beside_the_fold() -> tuple[dict[str, dict[str, str]], dict[str, Checkpoint], int]:
        """On the admin connection while the fold runs: the fold's total for its progress bar,
        then each asynchronous projection, rebuilt in one snapshot of its own. Without parallel
        workers: the fold keeps every CPU busy, so they would only add their coordination (the
        `stats` count of the benchmark's log: 0.27 s on three processes, 0.48-0.63 s on one)."""
        if inline:
            await admin.execute("SET max_parallel_workers_per_gather = 0")
        if inline and progress is not _no_progress:
            progress("fold", 0, int(await admin.fetchval(_COUNT_SQL, _kinds(inline))))
        names: dict[str, dict[str, str]] = {}
        at: dict[str, Checkpoint] = {}
        events = 0
        for t in chosen:
            if t.async_projection is None:
                continue
            # Indexes before the load: the projection's upserts need its key.
            names |= await _create_indexes([admin], [t])
            upto = await read_checkpoint(admin, t.name) if verify else None
            at[t.name], n = await t.async_projection.rebuild(admin, table=t.rebuild, upto=upto)
            progress(t.name, n, n)
            events += n
        if inline:
            await admin.execute("RESET max_parallel_workers_per_gather")
        return names, at, events

    clock = time.perf_counter()

    def lap(phase: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        result.phases[phase] = result.phases.get(phase, 0.0) + now - clock
        clock = now

    beside = asyncio.create_task(beside_the_fold())
    since: str | None = None
    try:
        if inline:
            since, n, result.fold_processes = await _fold_all(url, read, writers, inline, progress)
            result.events += n
    except Exception:
        with contextlib.suppress(Exception):
            await beside  # the admin connection must be idle for the clean-up
        raise
    except BaseException:  # cancelled (Ctrl-C): the admin connection must be idle for the clean-up
        await cancel_and_wait(beside)
        raise
    index_names, async_at, n = await beside
    result.events += n
    lap("fold")
    # Inline tables get their indexes after the bulk load (faster), one build per CPU at a time.
    index_names |= await _create_indexes([admin, read, *writers][: max(1, CPUS)], inline)
    lap("indexes")
    if inline and since is not None:
        since = await _catch_up(read, write, inline, since, progress, result)
    lap("catch up")
    if verify:
        await _verify(admin, chosen, since, async_at, result)
        lap("verify")
        return
    await _cancel_autovacuum_sooner(admin)
    lock_timeout = SWAP_LOCK_TIMEOUT
    for attempt in range(1, MAX_SWAP_ATTEMPTS + 1):
        result.swap_attempts = attempt
        try:
            await _swap_once(admin, chosen, since, async_at, index_names, lock_timeout)
        except asyncpg.DependentObjectsStillExistError as exc:  # made while the fold ran
            raise ReplayError(_dependents_message(exc.detail or str(exc))) from exc
        except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError):
            lock_timeout = await _autovacuum_in_the_way(admin, chosen) or SWAP_LOCK_TIMEOUT
            if inline and since is not None:
                since = await _catch_up(read, write, inline, since, progress, result)
            for t in chosen:
                if t.async_projection is not None:
                    async_at[t.name], n = await _apply_range(
                        read, write, t, async_at[t.name], None, progress
                    )
                    result.events += n
            continue
        result.swapped = True
        lap("swap")
        return
    raise ReplayError(f"could not take the table locks for the swap in {MAX_SWAP_ATTEMPTS} tries")


if __name__ == "__main__":
    _helper_main()
