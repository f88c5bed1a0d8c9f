"""Contract tests for the event store, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg
import pytest

from service import store
from service.events import (
    BookingCancelled,
    BookingPolicy,
    Customer,
    EventMeta,
    HoldExpired,
    SlotHeld,
)
from service.store import ANY, NO_STREAM, STREAM_EXISTS, AppendStream, ConcurrencyError
from tests.settle import settled

META = EventMeta(tenant="t1", actor="test", request_id="r1")


def cancelled(n: int = 0) -> BookingCancelled:
    return BookingCancelled(booking_id=f"b{n}", by="owner", reason=f"reason {n}")


async def append_one(db: store.Executor, stream: str, expected: int, n: int = 0) -> int:
    appended = await store.append(db, [AppendStream(stream, expected, [cancelled(n)])], META)
    return appended[-1].version


async def versions(db: store.Executor, stream: str) -> list[int]:
    return [e.version for e in await store.read_stream(db, stream)]


class TestExpectedVersionModes:
    async def test_no_stream_creates_and_then_refuses(self, pool: asyncpg.Pool) -> None:
        assert await append_one(pool, "s", NO_STREAM) == 1
        with pytest.raises(ConcurrencyError) as err:
            await append_one(pool, "s", NO_STREAM)
        assert (err.value.stream, err.value.expected, err.value.actual) == ("s", NO_STREAM, 1)
        assert await versions(pool, "s") == [1]

    async def test_exact_version_must_match(self, pool: asyncpg.Pool) -> None:
        await append_one(pool, "s", NO_STREAM)
        assert await append_one(pool, "s", 1) == 2
        with pytest.raises(ConcurrencyError) as err:
            await append_one(pool, "s", 1)
        assert (err.value.expected, err.value.actual) == (1, 2)
        assert await versions(pool, "s") == [1, 2]

    async def test_exact_version_zero_means_the_stream_must_not_exist(
        self, pool: asyncpg.Pool
    ) -> None:
        assert await append_one(pool, "s", 0) == 1
        with pytest.raises(ConcurrencyError):
            await append_one(pool, "s", 0)

    async def test_exact_version_on_a_missing_stream_is_refused(self, pool: asyncpg.Pool) -> None:
        with pytest.raises(ConcurrencyError) as err:
            await append_one(pool, "missing", 3)
        assert err.value.actual == 0
        assert await versions(pool, "missing") == []

    async def test_stream_exists_needs_an_existing_stream(self, pool: asyncpg.Pool) -> None:
        with pytest.raises(ConcurrencyError) as err:
            await append_one(pool, "s", STREAM_EXISTS)
        assert err.value.actual == 0
        await append_one(pool, "s", NO_STREAM)
        assert await append_one(pool, "s", STREAM_EXISTS) == 2

    async def test_any_appends_whatever_the_version(self, pool: asyncpg.Pool) -> None:
        assert await append_one(pool, "s", ANY) == 1
        assert await append_one(pool, "s", ANY) == 2

    async def test_concurrent_any_appends_all_succeed_without_gaps(
        self, pool: asyncpg.Pool
    ) -> None:
        await asyncio.gather(*(append_one(pool, "s", ANY, n) for n in range(20)))
        assert await versions(pool, "s") == list(range(1, 21))


class TestSeveralEventsToOneStream:
    @pytest.mark.parametrize("expected", [NO_STREAM, 0, ANY])
    async def test_a_new_stream_gets_consecutive_versions(
        self, pool: asyncpg.Pool, expected: int
    ) -> None:
        out = await store.append(
            pool, [AppendStream("s", expected, [cancelled(n) for n in range(3)])], META
        )
        assert [a.version for a in out] == [1, 2, 3]
        assert [e.event for e in await store.read_stream(pool, "s")] == [
            cancelled(n) for n in range(3)
        ]

    @pytest.mark.parametrize("expected", [1, STREAM_EXISTS, ANY])
    async def test_an_existing_stream_continues_its_versions(
        self, pool: asyncpg.Pool, expected: int
    ) -> None:
        await append_one(pool, "s", NO_STREAM)
        out = await store.append(
            pool, [AppendStream("s", expected, [cancelled(n) for n in range(3)])], META
        )
        assert [a.version for a in out] == [2, 3, 4]
        with pytest.raises(ConcurrencyError) as err:
            await store.append(pool, [AppendStream("s", 3, [cancelled(9), cancelled(8)])], META)
        assert (err.value.expected, err.value.actual) == (3, 4)
        assert await versions(pool, "s") == [1, 2, 3, 4]


class TestMultiStreamAppend:
    async def test_appends_to_every_stream_in_one_transaction(self, pool: asyncpg.Pool) -> None:
        out = await store.append(
            pool,
            [
                AppendStream("b", NO_STREAM, [cancelled(1), cancelled(2)]),
                AppendStream("a", NO_STREAM, [cancelled(3)]),
            ],
            META,
        )
        assert [(a.stream_id, a.version) for a in out] == [("b", 1), ("b", 2), ("a", 1)]
        # The log holds them in the order given (rows go in sorted by stream; positions do not).
        logged = await pool.fetch("SELECT stream_id, version FROM events ORDER BY position")
        assert [tuple(r) for r in logged] == [("b", 1), ("b", 2), ("a", 1)]

    async def test_a_wrong_second_stream_writes_nothing_to_either(self, pool: asyncpg.Pool) -> None:
        await append_one(pool, "first", NO_STREAM)
        await append_one(pool, "second", NO_STREAM)
        with pytest.raises(ConcurrencyError) as err:
            await store.append(
                pool,
                [
                    AppendStream("first", 1, [cancelled(1)]),
                    AppendStream("second", 7, [cancelled(2)]),
                ],
                META,
            )
        assert err.value.stream == "second"
        assert (err.value.expected, err.value.actual) == (7, 1)
        assert await versions(pool, "first") == [1]
        assert await versions(pool, "second") == [1]
        assert await pool.fetchval("SELECT count(*) FROM events") == 2

    async def test_versions_are_gapless_even_after_refusals(self, pool: asyncpg.Pool) -> None:
        v = 0
        for n in range(10):
            v = await append_one(pool, "s", NO_STREAM if v == 0 else v, n)
            with pytest.raises(ConcurrencyError):
                await append_one(pool, "s", v - 1 if v > 1 else NO_STREAM)
        assert await versions(pool, "s") == list(range(1, 11))


class TestRoundTrip:
    async def test_events_and_metadata_round_trip_exactly(self, pool: asyncpg.Pool) -> None:
        held = SlotHeld(
            booking_id="bk_1",
            service_id="consult",
            resources=["alice", "room-1"],
            start=datetime(2026, 3, 27, 8, 0, tzinfo=UTC),
            end=datetime(2026, 3, 27, 9, 0, tzinfo=UTC),
            expires_at=datetime(2026, 3, 20, 8, 10, 30, 123456, tzinfo=UTC),
            policy=BookingPolicy(hold_seconds=90, requires_confirmation=True),
            customer=Customer(name="Zoë Ünïcode ✓", email="z@example.com", metadata={"k": [1]}),
            notes='line\nbreak "quoted"',
            metadata={"nested": {"a": 1.5, "b": None, "c": [True, "x"]}},
        )
        expired = HoldExpired(booking_id="bk_1", expired_at=datetime(2026, 3, 20, tzinfo=UTC))
        meta = EventMeta(
            tenant="t1", actor="key_1", request_id="r", causation_id="c", idempotency_key="k"
        )
        await store.append(pool, [AppendStream("bk", NO_STREAM, [held, expired])], meta)
        got = await store.read_stream(pool, "bk")
        assert [e.event for e in got] == [held, expired]
        assert [e.type for e in got] == ["SlotHeld", "HoldExpired"]
        assert all(e.metadata == meta and e.tenant_id == "t1" for e in got)
        assert await pool.fetchval("SELECT type FROM events WHERE version = 1") == "SlotHeld"

    async def test_read_streams_loads_several_in_one_call(self, pool: asyncpg.Pool) -> None:
        await append_one(pool, "a", NO_STREAM, 1)
        await append_one(pool, "b", NO_STREAM, 2)
        got = await store.read_streams(pool, ["a", "b", "none"])
        assert {k: [e.version for e in v] for k, v in got.items()} == {
            "a": [1],
            "b": [1],
            "none": [],
        }


class TestRace:
    async def test_fifty_appends_with_one_expected_version_let_exactly_one_win(
        self, pool: asyncpg.Pool
    ) -> None:
        await append_one(pool, "hot", NO_STREAM)

        async def contender(n: int) -> bool:
            try:
                await append_one(pool, "hot", 1, n)
            except ConcurrencyError:
                return False
            return True

        results = await asyncio.gather(*(contender(n) for n in range(50)))
        assert results.count(True) == 1
        assert results.count(False) == 49
        assert await versions(pool, "hot") == [1, 2]

    async def test_fifty_no_stream_appends_let_exactly_one_win(self, pool: asyncpg.Pool) -> None:
        async def contender(n: int) -> bool:
            try:
                await append_one(pool, "new", NO_STREAM, n)
            except ConcurrencyError:
                return False
            return True

        results = await asyncio.gather(*(contender(n) for n in range(50)))
        assert results.count(True) == 1
        assert await versions(pool, "new") == [1]

    async def test_a_multi_stream_append_takes_its_streams_in_sorted_order(
        self, pool: asyncpg.Pool
    ) -> None:
        # Appends naming the same streams in different orders must wait on one another in one
        # order, or each could hold one stream's index entry and wait on the other's (a deadlock,
        # broken only after deadlock_timeout). Here `b` is being created by an open transaction;
        # an append naming b, a must already hold `a` while it waits on `b`.
        async with pool.acquire() as holder, pool.acquire() as probe:
            tx = holder.transaction()
            await tx.start()
            await append_one(holder, "b", NO_STREAM)
            waiting = asyncio.create_task(
                store.append(
                    pool,
                    [
                        AppendStream("b", NO_STREAM, [cancelled(1)]),
                        AppendStream("a", NO_STREAM, [cancelled(2)]),
                    ],
                    META,
                )
            )
            while not await probe.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query LIKE '%INSERT INTO events%'"
            ):
                assert not waiting.done(), waiting
                await asyncio.sleep(0.01)
            with pytest.raises(asyncpg.LockNotAvailableError):
                async with probe.transaction():
                    await probe.execute("SET LOCAL lock_timeout = '100ms'")
                    await append_one(probe, "a", NO_STREAM)
            await tx.rollback()
            got = await waiting
        assert [(x.stream_id, x.version) for x in got] == [("b", 1), ("a", 1)]

    async def test_opposite_orders_leave_one_winner_and_name_the_stream_lost(
        self, pool: asyncpg.Pool
    ) -> None:
        async def contender(k: int, names: list[str]) -> ConcurrencyError | None:
            try:
                await store.append(
                    pool, [AppendStream(f"{n}{k}", NO_STREAM, [cancelled(k)]) for n in names], META
                )
            except ConcurrencyError as lost:
                return lost
            return None

        rounds = await asyncio.gather(
            *(asyncio.gather(contender(k, ["a", "b"]), contender(k, ["b", "a"])) for k in range(40))
        )
        for k, outcome in enumerate(rounds):
            lost = [e for e in outcome if e is not None]
            assert len(lost) == 1, outcome
            assert (lost[0].stream, lost[0].expected, lost[0].actual) in {
                (f"a{k}", NO_STREAM, 1),
                (f"b{k}", NO_STREAM, 1),
            }
            assert await versions(pool, f"a{k}") == [1]
            assert await versions(pool, f"b{k}") == [1]

    async def test_a_lost_single_append_in_a_transaction_leaves_it_usable(
        self, pool: asyncpg.Pool
    ) -> None:
        await append_one(pool, "s", NO_STREAM)
        async with pool.acquire() as conn, conn.transaction():
            with pytest.raises(ConcurrencyError) as err:
                await append_one(conn, "s", NO_STREAM)
            assert err.value.actual == 1
            assert await append_one(conn, "s", 1) == 2
        assert await versions(pool, "s") == [1, 2]

    @pytest.mark.parametrize(
        "streams",
        [
            [AppendStream("s", NO_STREAM, [])],
            [AppendStream("s", NO_STREAM, []), AppendStream("t", 1, [])],
            [AppendStream("s", -4, [cancelled()])],
        ],
    )
    async def test_an_append_without_events_or_with_an_unknown_expectation_is_refused(
        self, pool: asyncpg.Pool, streams: list[AppendStream]
    ) -> None:
        with pytest.raises(ValueError):
            await store.append(pool, streams, META)
        assert await pool.fetchval("SELECT count(*) FROM events") == 0


class TestReadAllNeverSkips:
    async def test_a_later_commit_waits_behind_an_open_earlier_transaction(
        self, pool: asyncpg.Pool
    ) -> None:
        t1 = await pool.acquire()
        tx1 = t1.transaction()
        await tx1.start()
        try:
            first = await store.append(t1, [AppendStream("one", NO_STREAM, [cancelled(1)])], META)
            second = await store.append(
                pool, [AppendStream("two", NO_STREAM, [cancelled(2)])], META
            )
            assert first[0].position < second[0].position
            # T2 has committed, but T1 (lower position) is still open: the reader must not move
            # past T1, or it would never see T1's event.
            assert await store.read_all(pool) == []
            assert await store.read_log(pool) == []  # the consumers' envelopes wait alike
            await tx1.commit()
        finally:
            await pool.release(t1)
        await settled(pool)  # no other transaction of the server's hides them either
        got = await store.read_all(pool)
        assert [e.stream_id for e in got] == ["one", "two"]
        assert [e.position for e in got] == [first[0].position, second[0].position]
        # read_log: the same events in the same order, without data and metadata.
        log = await store.read_log(pool)
        assert [(e.checkpoint, e.stream_id, e.version, e.tenant_id, e.type) for e in log] == [
            (e.checkpoint, e.stream_id, e.version, e.tenant_id, e.type) for e in got
        ]
        assert [e.recorded_at for e in log] == [e.recorded_at for e in got]
        assert await store.read_log(pool, log[0].checkpoint) == log[1:]

    async def test_reading_after_a_checkpoint_resumes_without_loss(
        self, pool: asyncpg.Pool
    ) -> None:
        for n in range(5):
            await append_one(pool, f"s{n}", NO_STREAM, n)
        await settled(pool)
        head = await store.read_all(pool, limit=2)
        rest = await store.read_all(pool, head[-1].checkpoint)
        assert [e.stream_id for e in head + rest] == [f"s{n}" for n in range(5)]

    async def test_a_rolled_back_transaction_leaves_nothing_and_does_not_stall(
        self, pool: asyncpg.Pool
    ) -> None:
        async with pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            await store.append(conn, [AppendStream("ghost", NO_STREAM, [cancelled(9)])], META)
            await tx.rollback()
        await append_one(pool, "after", NO_STREAM)
        await settled(pool)
        got = await store.read_all(pool)
        assert [e.stream_id for e in got] == ["after"]
        assert await store.read_stream(pool, "ghost") == []

    async def test_tenant_filter_shows_only_that_tenants_events(self, pool: asyncpg.Pool) -> None:
        await append_one(pool, "a", NO_STREAM)
        other = EventMeta(tenant="t2")
        await store.append(pool, [AppendStream("b", NO_STREAM, [cancelled()])], other)
        await settled(pool)
        assert [e.stream_id for e in await store.read_all(pool, tenant="t2")] == ["b"]


class TestImmutability:
    @pytest.mark.parametrize(
        "statement",
        [
            "UPDATE events SET type = 'Tampered'",
            "DELETE FROM events",
            "TRUNCATE events",
            "TRUNCATE events CASCADE",
        ],
    )
    async def test_events_cannot_be_changed_or_removed(
        self, pool: asyncpg.Pool, statement: str
    ) -> None:
        await append_one(pool, "s", NO_STREAM)
        with pytest.raises(asyncpg.PostgresError, match="events are immutable"):
            await pool.execute(statement)
        assert await pool.fetchval("SELECT type FROM events") == "BookingCancelled"

    async def test_migrate_drops_the_old_table_of_stream_versions(
        self, pool: asyncpg.Pool, database_url: str
    ) -> None:
        from service.db import migrate

        # Earlier schema versions kept each stream's version in `streams`; a version is now the
        # newest event's, and the table, derived data, goes on the next migrate.
        await pool.execute("CREATE TABLE streams (stream_id text PRIMARY KEY, version bigint)")
        await migrate(database_url)
        assert await pool.fetchval("SELECT to_regclass('streams')") is None
        await append_one(pool, "s", NO_STREAM)
        assert await append_one(pool, "s", 1) == 2

    async def test_schema_can_be_applied_again(self, database_url: str) -> None:
        from service.db import migrate

        await migrate(database_url)
        await migrate(database_url)


def test_per_event_metadata_names_one_meta_for_each_event() -> None:
    other = EventMeta(tenant="t1", actor="test", request_id="r2")
    s = AppendStream("s", NO_STREAM, [cancelled(0), cancelled(1)], metas=[META, other])
    assert [s.meta_of(i, META) for i in range(2)] == [META, other]
    with pytest.raises(ValueError, match="one EventMeta per event"):
        AppendStream("s", NO_STREAM, [cancelled(0), cancelled(1)], metas=[META])
