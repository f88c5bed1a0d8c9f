"""The decision cache (service/cache.py) across two service instances on one database: each
remembers what it read and wrote, the other changes it behind its back, and every answer must be
the one a fresh read would give. Each test first proves the cache was used (its hits grew), so it
cannot pass by never remembering anything."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette

from service import store
from service.app import create_app
from service.cache import StreamCache
from service.decider import Appends, DayLedger
from service.events import EventMeta, ResourceUpserted, TimeClaimed, TimeReleased
from service.handler import Commands, Decide, Done, Reader
from service.store import NO_STREAM, AppendStream, ConcurrencyError
from service.usecases import ledger_of
from tests.conftest import Api
from tests.helpers import at, hold, iso, parse, resource, service, weekday_ahead

DAY = weekday_ahead(1)
UPSERT = ResourceUpserted(
    resource_id="r", name="R", timezone="UTC", weekly={}, overrides={}, metadata={}
)


@pytest.fixture
async def other(app: Starlette, api: Api, database_url: str) -> AsyncIterator[Api]:
    """A second service instance (its own pool, commands and cache) as the same tenant."""
    second = create_app(database_url, background=False)
    async with second.router.lifespan_context(second):
        transport = httpx.ASGITransport(app=second, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://other.test") as c:
            yield Api(c, api.tenant, second.state.pool)


def cache_of(app: Starlette) -> StreamCache:
    commands: Commands = app.state.commands
    return commands.cache


async def setup(api: Api) -> None:
    await resource(api, "room")
    await service(api, "talk", ["room"], hold_seconds=600)


class TestRememberedStateIsVerified:
    async def test_a_slot_freed_by_another_instance_is_not_refused_from_memory(
        self, app: Starlette, api: Api, other: Api
    ) -> None:
        await setup(api)
        first = await hold(api, "talk", at(DAY, "10:00"))
        cancelled = await other.post(f"/v1/bookings/{first['id']}/cancel", {"by": "owner"})
        assert cancelled.status_code == 200, cancelled.text
        hits = cache_of(app).hits
        # This instance remembers 10:00 as held; the other cancelled it.
        again = await api.post("/v1/bookings", {"service": "talk", "start": iso(at(DAY, "10:00"))})
        assert again.status_code == 201, again.text
        assert cache_of(app).hits > hits

    async def test_a_slot_taken_by_another_instance_is_refused_and_nothing_double_books(
        self, app: Starlette, api: Api, other: Api
    ) -> None:
        await setup(api)
        await hold(api, "talk", at(DAY, "10:00"))  # remembered: the day with one claim
        await hold(other, "talk", at(DAY, "12:00"))
        hits = cache_of(app).hits
        taken = await api.post("/v1/bookings", {"service": "talk", "start": iso(at(DAY, "12:00"))})
        assert taken.status_code == 409, taken.text
        assert taken.json()["error"]["code"] == "slot_unavailable"
        free = await api.post("/v1/bookings", {"service": "talk", "start": iso(at(DAY, "14:00"))})
        assert free.status_code == 201, free.text
        assert cache_of(app).hits > hits
        r = await api.get("/v1/bookings", params={"resource": "room"})
        starts = sorted(b["start"] for b in r.json()["data"] if b["status"] == "held")
        assert starts == [iso(at(DAY, h)) for h in ("10:00", "12:00", "14:00")]

    async def test_a_service_changed_by_another_instance_is_used_at_once(
        self, app: Starlette, api: Api, other: Api
    ) -> None:
        await setup(api)
        await hold(api, "talk", at(DAY, "09:00"))  # remembers the 60-minute service
        changed = await other.put(
            "/v1/services/talk", {"name": "Talk", "duration_minutes": 30, "resources": ["room"]}
        )
        assert changed.status_code == 200, changed.text
        hits = cache_of(app).hits
        booked = await hold(api, "talk", at(DAY, "11:00"))
        assert cache_of(app).hits > hits
        assert parse(booked["end"]) - parse(booked["start"]) == timedelta(minutes=30)

    async def test_resource_hours_changed_by_another_instance_are_used_at_once(
        self, app: Starlette, api: Api, other: Api
    ) -> None:
        await setup(api)
        await hold(api, "talk", at(DAY, "09:00"))
        mornings = {d: [["09:00", "12:00"]] for d in ("mon", "tue", "wed", "thu", "fri")}
        await resource(other, "room", weekly=mornings)
        hits = cache_of(app).hits
        late = await api.post("/v1/bookings", {"service": "talk", "start": iso(at(DAY, "15:00"))})
        assert late.status_code == 409, late.text
        assert cache_of(app).hits > hits

    async def test_a_booking_cancelled_by_another_instance_cannot_be_confirmed_from_memory(
        self, app: Starlette, api: Api, other: Api
    ) -> None:
        await setup(api)
        held = await hold(api, "talk", at(DAY, "10:00"))  # remembered: held
        r = await other.post(f"/v1/bookings/{held['id']}/cancel", {"by": "owner"})
        assert r.status_code == 200, r.text
        hits = cache_of(app).hits
        confirm = await api.post(f"/v1/bookings/{held['id']}/confirm", {"customer": {"name": "A"}})
        assert confirm.status_code == 409, confirm.text
        assert confirm.json()["error"]["code"] == "invalid_transition"
        assert cache_of(app).hits > hits
        history = await api.get(f"/v1/bookings/{held['id']}/history")
        assert [e["type"] for e in history.json()["events"]][-1] == "BookingCancelled"

    async def test_confirm_and_cancel_of_a_remembered_booking_answer_from_fresh_versions(
        self, app: Starlette, api: Api, other: Api
    ) -> None:
        await setup(api)
        held = await hold(api, "talk", at(DAY, "10:00"))
        extended = await other.post(f"/v1/bookings/{held['id']}/extend", {"seconds": 60})
        assert extended.status_code == 200, extended.text
        hits = cache_of(app).hits
        ok = await api.post(f"/v1/bookings/{held['id']}/confirm", {"customer": {"name": "A"}})
        assert ok.status_code == 200, ok.text
        assert ok.json()["version"] == 3
        assert ok.json()["status"] == "confirmed"
        assert cache_of(app).hits > hits
        # And a cancel, after the other instance changed the booking again.
        changed = await other.post(
            f"/v1/bookings/{held['id']}/reschedule", {"start": iso(at(DAY, "11:00"))}
        )
        assert changed.status_code == 200, changed.text
        hits = cache_of(app).hits
        cancelled = await api.post(
            f"/v1/bookings/{held['id']}/cancel", {"reason": "no", "by": "owner"}
        )
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["version"] == 5
        assert cancelled.json()["status"] == "cancelled"
        assert cache_of(app).hits > hits


class TestNoOpsAreDecidedAfresh:
    async def test_a_decision_that_writes_nothing_on_remembered_state_is_made_again(
        self, pool: asyncpg.Pool
    ) -> None:
        """A no-op is verified by nothing (no append): it must not be answered from memory."""
        mine, theirs = Commands(pool), Commands(pool)
        meta = EventMeta(tenant="tn_c", actor="test")
        stream = f"tn_c:res:{uuid.uuid4().hex}"
        seen: list[int] = []

        def when_at(version: int) -> Decide:
            """Append one event if the stream is at `version`, else nothing."""

            async def decide(r: Reader) -> Appends:
                loaded, _ = await r.read([stream])
                seen.append(len(loaded[stream]))
                return {stream: [UPSERT]} if len(loaded[stream]) == version else {}

            return decide

        await mine.run(meta, when_at(0), recall=True)  # mine remembers version 1
        await theirs.run(meta, when_at(1), recall=True)  # now at version 2
        seen.clear()
        done = await mine.run(meta, when_at(2), recall=True)
        assert seen == [1, 2]  # remembered: nothing to do; fresh: something to do
        assert isinstance(done, Done) and [e.version for e in done.new[stream]] == [3]


class TestCheckedStreams:
    """store: a stream given with no events is checked, neither written nor locked."""

    async def test_a_checked_stream_at_its_version_lets_the_append_through_unchanged(
        self, pool: asyncpg.Pool
    ) -> None:
        meta = EventMeta(tenant="tn_c", actor="test")
        ref, own = f"tn_c:res:{uuid.uuid4().hex}", f"tn_c:res:{uuid.uuid4().hex}"
        await store.append(pool, [AppendStream(ref, NO_STREAM, [UPSERT])], meta)
        got = await store.append(
            pool, [AppendStream(own, NO_STREAM, [UPSERT]), AppendStream(ref, 1, ())], meta
        )
        assert [(a.stream_id, a.version) for a in got] == [(own, 1)]
        versions = dict(
            await pool.fetch("SELECT stream_id, max(version) FROM events GROUP BY stream_id")
        )
        assert versions[ref] == 1 and versions[own] == 1
        assert await pool.fetchval("SELECT count(*) FROM events WHERE stream_id = $1", ref) == 1

    @pytest.mark.parametrize("expected", [2, NO_STREAM])
    async def test_a_checked_stream_elsewhere_aborts_the_append(
        self, pool: asyncpg.Pool, expected: int
    ) -> None:
        meta = EventMeta(tenant="tn_c", actor="test")
        ref, own = f"tn_c:res:{uuid.uuid4().hex}", f"tn_c:res:{uuid.uuid4().hex}"
        await store.append(pool, [AppendStream(ref, NO_STREAM, [UPSERT])], meta)
        with pytest.raises(ConcurrencyError) as caught:
            await store.append(
                pool,
                [AppendStream(own, NO_STREAM, [UPSERT]), AppendStream(ref, expected, ())],
                meta,
            )
        assert (caught.value.stream, caught.value.actual) == (ref, 1)
        assert await pool.fetchval("SELECT count(*) FROM events WHERE stream_id = $1", own) == 0

    async def test_a_stream_checked_absent_must_still_be_absent(self, pool: asyncpg.Pool) -> None:
        meta = EventMeta(tenant="tn_c", actor="test")
        ghost, own = f"tn_c:res:{uuid.uuid4().hex}", f"tn_c:res:{uuid.uuid4().hex}"
        got = await store.append(
            pool, [AppendStream(own, NO_STREAM, [UPSERT]), AppendStream(ghost, NO_STREAM, ())], meta
        )
        assert len(got) == 1
        assert await pool.fetchval("SELECT count(*) FROM events WHERE stream_id = $1", ghost) == 0


class TestStreamCache:
    def test_it_is_bounded_by_events_and_never_goes_back_a_version(self) -> None:
        def rec(stream: str, version: int) -> store.RecordedEvent:
            return store.RecordedEvent(
                position=version,
                transaction_id=1,
                stream_id=stream,
                version=version,
                tenant_id="t",
                event=UPSERT,
                metadata=EventMeta(tenant="t", actor="a"),
                recorded_at=datetime.now(UTC),
            )

        cache = StreamCache(capacity=10)
        cache.put_full("a", [rec("a", 1), rec("a", 2)])
        cache.put_full("a", [rec("a", 1)])  # older: ignored
        assert [e.version for e in cache.full("a") or []] == [1, 2]
        cache.put_latest("a", rec("a", 2))  # same version, less known: ignored
        assert cache.full("a") is not None
        cache.put_latest("a", rec("a", 3))
        assert cache.full("a") is None and (cache.latest("a") or rec("a", 0)).version == 3
        for i in range(20):
            cache.put_full(f"s{i}", [rec(f"s{i}", 1)])
        assert cache.full("s0") is None and cache.full("s19") is not None
        assert len(cache) <= 10
        cache.forget(["s19"])
        assert cache.full("s19") is None


class TestLedgerFolds:
    """usecases.ledger_of continues from its last fold only when that fold is a prefix."""

    def test_continued_folds_equal_whole_folds(self) -> None:
        stream = f"tn_c:rd:room:{uuid.uuid4().hex}"
        t = datetime(2030, 1, 7, 9, tzinfo=UTC)

        def rec(version: int, event: TimeClaimed | TimeReleased) -> store.RecordedEvent:
            return store.RecordedEvent(
                position=version,
                transaction_id=1,
                stream_id=stream,
                version=version,
                tenant_id="tn_c",
                event=event,
                metadata=EventMeta(tenant="tn_c"),
                recorded_at=t,
            )

        def claim(cid: str, hours: int) -> TimeClaimed:
            start = t + timedelta(hours=hours)
            end = start + timedelta(hours=1)
            return TimeClaimed(
                resource_id="room", day="2030-01-07", claim_id=cid, start=start, end=end,
                block_start=start, block_end=end,
            )  # fmt: skip

        def whole(events: list[store.RecordedEvent]) -> dict[str, TimeClaimed]:
            ledger = DayLedger()
            for e in events:
                ledger.evolve(e.event)
            return ledger.claims

        log = [rec(1, claim("a", 0)), rec(2, claim("b", 1))]
        assert ledger_of(stream, log).claims == whole(log)
        longer = [*log, rec(3, TimeReleased(resource_id="room", day="2030-01-07", claim_id="a"))]
        assert ledger_of(stream, longer).claims == whole(longer) == {"b": claim("b", 1)}
        # The earlier fold is untouched by the continuation, and a shorter list is folded whole.
        assert ledger_of(stream, log).claims == whole(log)
        # Another list of that length (other objects, as from a fresh read) is folded whole.
        fresh = [rec(1, claim("a", 0)), rec(2, claim("c", 3))]
        assert ledger_of(stream, fresh).claims == whole(fresh)
