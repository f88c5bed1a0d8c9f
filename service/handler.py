"""The shell around the decider: read → fold → decide → append, with the read models and the
idempotency record written in the append's own transaction.

Concurrency: the first attempt is optimistic (read without locks, append with the expected
versions read). A loser (ConcurrencyError) first re-decides on fresh state without locks: a
refusal (the slot is taken now) is answered at once. Only when the fresh decision would write
does it retry inside a transaction that first takes transaction-level advisory locks on the
streams it decides on, in sorted order: contenders for one hot stream (the seats of a popular
class) then queue instead of retrying in a storm. Advisory locks are only a queue; correctness
still rests on the expected versions checked by the append.

Recall (holds and booking commands): the first attempt may decide on the streams this process
remembers (service/cache.py); the append then also checks, without writing them, the streams it
used but does not write. A stale memory fails that statement and the command runs as above on
fresh state; a refusal or a no-op decided on memory is decided again on fresh state.

Idempotency: the answer to a command sent with an Idempotency-Key is stored in the same
transaction as its events. A retry finds it and gets it back; a concurrent duplicate collides on
the key's primary key, rolls back its own events, and returns the stored answer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import asyncpg
import msgspec

from projections.engine import rows_payload
from service import store
from service.cache import StreamCache
from service.decider import Appends
from service.errors import ApiError, Conflict, IdempotencyKeyReused
from service.events import EventMeta
from service.store import AppendStream, ConcurrencyError, RecordedEvent

MAX_ATTEMPTS: Final = 12
Loaded = dict[str, list[RecordedEvent]]


class Reader:
    """What a decision may read: streams to fold (and lock, on a retry) and catalogue entries.

    With a `cache` (service/cache.py), what was read and written is remembered after the commit
    (`remember`); with `recall` too, streams the cache knows are served from it and noted in
    `checks` with the version remembered, for the append to verify."""

    def __init__(
        self,
        conn: asyncpg.Connection,
        *,
        lock: bool,
        cache: StreamCache | None = None,
        recall: bool = False,
    ) -> None:
        self.conn = conn
        self.lock = lock
        self.cache = cache
        self.recall = recall and cache is not None and not lock
        self.loaded: Loaded = {}
        self.versions: dict[str, int] = {}
        #: Streams whose every event is in `loaded` (read whole, or created by the decision).
        self.whole: set[str] = set()
        #: Newest events of catalogue streams read (`latest`), from the database or the cache.
        self.newest: dict[str, RecordedEvent] = {}
        #: Streams served from the cache, with the version the decision relies on.
        self.checks: dict[str, int] = {}
        #: Events decided by the earlier requests of a batch (service/batching.py), not yet
        #: appended: `read` returns them after the stream's stored events, so that each
        #: decision sees the ones before it. With the metadata of each one's own request.
        self.staged: Loaded = {}
        self.staged_metas: dict[str, list[EventMeta]] = {}

    async def read(
        self, full: Sequence[str], latest: Sequence[str] = ()
    ) -> tuple[Loaded, dict[str, RecordedEvent]]:
        wanted = [s for s in dict.fromkeys(full) if s not in self.loaded]
        newest = [s for s in dict.fromkeys(latest) if s not in self.newest]
        if self.recall and self.cache is not None:
            wanted, newest = self._remembered(self.cache, wanted, newest)
        if self.lock and wanted:
            await self.conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(s, 0)) "
                "FROM unnest($1::text[]) AS s ORDER BY s",
                sorted(wanted),
            )
        if wanted or newest:
            got, found = await store.read_for_decision(self.conn, wanted, newest)
            self.loaded.update(got)
            self.versions.update({s: len(events) for s, events in got.items()})
            self.whole.update(got)
            self.newest.update(found)
        return (
            {
                s: self.loaded[s] + self.staged[s] if s in self.staged else self.loaded[s]
                for s in full
            },
            {s: self.newest[s] for s in latest if s in self.newest},
        )

    def _remembered(
        self, cache: StreamCache, wanted: list[str], newest: list[str]
    ) -> tuple[list[str], list[str]]:
        """Serve what the cache knows; return the streams still to read."""
        missing: list[str] = []
        for s in wanted:
            events = cache.full(s)
            if events is None:
                missing.append(s)
                continue
            self.loaded[s] = events
            self.versions[s] = self.checks[s] = len(events)
            self.whole.add(s)
        missing_newest: list[str] = []
        for s in newest:
            rec = cache.latest(s)
            if rec is None:
                missing_newest.append(s)
                continue
            self.newest[s] = rec
            self.checks[s] = rec.version
        return missing, missing_newest

    async def read_latest(self, stream_id: str) -> RecordedEvent | None:
        """The newest event of a stream whose last event is its whole state (a catalogue entry);
        the decision may append to it with that version expected. Always read fresh."""
        _, newest = await store.read_for_decision(self.conn, (), [stream_id])
        rec = newest.get(stream_id)
        self.loaded[stream_id] = [rec] if rec else []
        self.versions[stream_id] = rec.version if rec else 0
        if rec is None:
            self.whole.add(stream_id)
        return rec

    def new_stream(self, stream_id: str) -> None:
        """Declare a stream the decision creates (appended with NO_STREAM)."""
        if stream_id not in self.loaded:
            self.loaded[stream_id] = []
            self.versions[stream_id] = 0
            self.whole.add(stream_id)

    def drop_new(self, stream_id: str) -> None:
        """Forget a stream declared with `new_stream` by a decision that was refused in a batch:
        nothing creates it, so nothing is to be remembered of it."""
        if (
            stream_id in self.whole
            and not self.loaded.get(stream_id)
            and stream_id not in self.staged
        ):
            self.loaded.pop(stream_id, None)
            self.versions.pop(stream_id, None)
            self.whole.discard(stream_id)

    def stage(self, appends: Appends, meta: EventMeta) -> None:
        """Keep one request's decision in a batch, recorded with its own `meta`; the batch's
        decision is `staged_appends()`, every staged event in order."""
        for stream_id, events in appends.items():
            if not events:
                continue
            staged = self.staged.setdefault(stream_id, [])
            base = self.versions[stream_id] + len(staged)
            staged.extend(
                RecordedEvent(
                    position=0,
                    transaction_id=0,
                    stream_id=stream_id,
                    version=base + i,
                    tenant_id=meta.tenant,
                    event=event,  # type: ignore[arg-type]
                    metadata=meta,
                    recorded_at=store.PENDING,
                )
                for i, event in enumerate(events, 1)
            )
            self.staged_metas.setdefault(stream_id, []).extend([meta] * len(events))

    def staged_appends(self) -> Appends:
        return {s: [e.event for e in events] for s, events in self.staged.items()}

    def remember(self, done: Done) -> None:
        """After the commit: keep what this command read and wrote for the next one."""
        cache = self.cache
        if cache is None:
            return
        # Streams served from the cache and not written are there already, unchanged.
        for s in self.whole:
            if s in done.new or s not in self.checks:
                cache.put_full(s, done.stream(s))
        for s, rec in self.newest.items():
            if s not in done.new and s not in self.checks:
                cache.put_latest(s, rec)
        for s, events in done.new.items():
            if s not in self.whole and events:
                cache.put_latest(s, events[-1])


@dataclass(slots=True)
class Done:
    """A committed command: the streams as read, the new events, the last position."""

    loaded: Loaded
    new: Loaded = field(default_factory=dict)
    position: int = 0

    def stream(self, stream_id: str) -> list[RecordedEvent]:
        return self.loaded.get(stream_id, []) + self.new.get(stream_id, [])


@dataclass(frozen=True, slots=True)
class Idempotency:
    key: str
    request_hash: bytes

    @classmethod
    def of(cls, key: str, method: str, path: str, body: bytes) -> Idempotency:
        digest = hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + body).digest()
        return cls(key, digest)


@dataclass(frozen=True, slots=True)
class Stored:
    status: int
    body: bytes


Decide = Callable[[Reader], Awaitable[Appends]]
Render = Callable[[Done], tuple[int, bytes]]


async def find_idempotent(db: Any, tenant: str, idem: Idempotency | None) -> Stored | None:
    """The stored first answer for this key, or None; 422 when the key was used for another
    request."""
    if idem is None:
        return None
    row = await db.fetchrow(
        "SELECT request_hash, status, body FROM idempotency_keys WHERE tenant_id = $1 AND key = $2",
        tenant,
        idem.key,
    )
    if row is None:
        return None
    if bytes(row["request_hash"]) != idem.request_hash:
        raise IdempotencyKeyReused(
            f"Idempotency-Key {idem.key!r} was already used with a different request",
            key=idem.key,
        )
    return Stored(row["status"], bytes(row["body"]))


class Commands:
    """Runs decisions against the store with retries, projections and idempotency."""

    def __init__(self, pool: asyncpg.Pool, cache: StreamCache | None = None) -> None:
        self.pool = pool
        self.cache = cache if cache is not None else StreamCache()
        self.conflicts = 0  # version conflicts seen (for metrics)
        self.retries = 0  # attempts made after a conflict

    async def run(
        self,
        meta: EventMeta,
        decide: Decide,
        *,
        idem: Idempotency | None = None,
        render: Render | None = None,
        recall: bool = False,
        quick_refusal: bool = True,
    ) -> Done | Stored:
        """Decide and commit. Returns the Done command, or the Stored first answer of an
        idempotent retry. Raises the decider's ApiErrors (nothing is written then).

        `recall`: the first attempt may decide on what the cache remembers (service/cache.py).
        Only a decision that writes is committed that way (its append verifies every stream it
        used); a refusal or a no-op is decided again on fresh state, as is a stale attempt.
        `quick_refusal`: after a conflict, decide once without locks first, so that a refusal is
        answered at once (off for a batch, which answers its refusals itself)."""
        stored = await find_idempotent(self.pool, meta.tenant, idem)
        if stored is not None:
            return stored
        attempt = 0
        while attempt < MAX_ATTEMPTS:
            reader: Reader | None = None
            try:
                async with self.pool.acquire() as conn:
                    if attempt > 0:
                        self.retries += 1
                    if attempt > 0 and quick_refusal:
                        # A refusal needs no lock: decide once on fresh state without writing,
                        # so the losers of a taken slot answer 409 at once, in parallel, and
                        # only a retry that will write queues on the streams' locks.
                        await decide(Reader(conn, lock=False))
                    reader = Reader(conn, lock=attempt > 0, cache=self.cache, recall=recall)
                    done = await self._attempt(conn, reader, meta, decide, idem, render)
                if reader.checks and not done.new:
                    raise _Unverified
                reader.remember(done)
                return done
            except (_Unverified, ApiError):
                if reader is not None and reader.checks:
                    # Decided on remembered state without writing: decide again on fresh state.
                    self.cache.forget(reader.checks)
                    recall = False
                    continue
                # A concurrent duplicate may have committed first: answer as it.
                stored = await find_idempotent(self.pool, meta.tenant, idem)
                if stored is not None:
                    return stored
                raise
            except (ConcurrencyError, asyncpg.DeadlockDetectedError):
                self.conflicts += 1
                if reader is not None and reader.checks:
                    self.cache.forget(reader.checks)  # stale, or lost a race: read afresh
                    recall = False
                else:
                    attempt += 1
            except asyncpg.UniqueViolationError as exc:
                if idem is not None and exc.table_name == "idempotency_keys":
                    stored = await find_idempotent(self.pool, meta.tenant, idem)
                    if stored is not None:
                        return stored
                raise
            except Exception:
                # A concurrent duplicate may have committed while this one failed: answer as it.
                stored = await find_idempotent(self.pool, meta.tenant, idem)
                if stored is not None:
                    return stored
                raise
        raise Conflict(
            "too much contention on the same streams; retry shortly", attempts=MAX_ATTEMPTS
        )

    async def _attempt(
        self,
        conn: asyncpg.Connection,
        reader: Reader,
        meta: EventMeta,
        decide: Decide,
        idem: Idempotency | None,
        render: Render | None,
    ) -> Done:
        # The common case needs no explicit transaction: the reads are plain statements, and the
        # append with its read-model rows is one statement (store.command), atomic by itself;
        # the expected versions make the reads' snapshot irrelevant. A locked retry needs its
        # advisory locks held from the reads to the commit, and an idempotent command writes its
        # stored answer beside its events: those run inside a transaction.
        if not (reader.lock or idem):
            return await self._decide_and_write(conn, reader, meta, decide, None, None)
        async with conn.transaction():
            return await self._decide_and_write(conn, reader, meta, decide, idem, render)

    async def _decide_and_write(
        self,
        conn: asyncpg.Connection,
        reader: Reader,
        meta: EventMeta,
        decide: Decide,
        idem: Idempotency | None,
        render: Render | None,
    ) -> Done:
        appends = await decide(reader)
        done = Done(reader.loaded)
        if not any(appends.values()):
            return done
        missing = [s for s in appends if s not in reader.versions]
        assert not missing, f"decision appends to streams it did not read: {missing}"
        batch = [
            AppendStream(
                s,
                reader.versions[s] or store.NO_STREAM,
                events,
                metas=reader.staged_metas.get(s, ()),
            )
            for s, events in appends.items()
            if events
        ]
        # What the decision used from the cache and does not write: checked, not written.
        batch += [
            AppendStream(s, version or store.NO_STREAM, ())
            for s, version in reader.checks.items()
            if not appends.get(s)
        ]
        # Fold the read models before appending (positions and times still unknown: the
        # database fills them in), so events and rows go in one round trip.
        pending = {
            b.stream_id: _recorded(b, reader.versions[b.stream_id], meta) for b in batch if b.events
        }
        rows_sql, rows = rows_payload(reader.loaded, pending)
        appended = await store.command(conn, batch, meta, rows_sql, rows)
        by_version = {(a.stream_id, a.version): a for a in appended}
        for stream_id, events in pending.items():
            done.new[stream_id] = [
                msgspec.structs.replace(
                    e,
                    position=by_version[(stream_id, e.version)].position,
                    recorded_at=by_version[(stream_id, e.version)].recorded_at,
                )
                for e in events
            ]
        done.position = max(a.position for a in appended)
        if idem is not None and render is not None:
            status, body = render(done)
            await conn.execute(
                "INSERT INTO idempotency_keys (tenant_id, key, request_hash, status, body) "
                "VALUES ($1, $2, $3, $4, $5)",
                meta.tenant,
                idem.key,
                idem.request_hash,
                status,
                body,
            )
        return done


class _Unverified(Exception):
    """A decision on remembered state that wrote nothing: nothing verified it."""


def _recorded(batch: AppendStream, base: int, meta: EventMeta) -> list[RecordedEvent]:
    """The batch's events as they will be recorded, but for position and time."""
    return [
        RecordedEvent(
            position=0,
            transaction_id=0,
            stream_id=batch.stream_id,
            version=base + i,
            tenant_id=meta.tenant,
            event=event,  # type: ignore[arg-type]
            metadata=batch.meta_of(i - 1, meta),
            recorded_at=store.PENDING,
        )
        for i, event in enumerate(batch.events, 1)
    ]
