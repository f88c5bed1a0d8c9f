"""The audit trail: GET /v1/events (the tenant's events in global order, cursor, isolation) and
`slotlog history BOOKING_ID`."""

from __future__ import annotations

from typing import Any

from service import store, streams
from service.events import BookingConfirmed, EventMeta
from service.store import AppendStream
from tests.cli import slotlog
from tests.conftest import Api
from tests.helpers import at, hold, resource, service, weekday_ahead
from tests.settle import answered_only_after, settled


async def feed(api: Api, **params: Any) -> dict[str, Any]:
    await settled(api.pool)
    r = await api.get("/v1/events", params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def everything(api: Api, limit: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    page = await feed(api, limit=limit)
    while page["events"]:
        events += page["events"]
        page = await feed(api, limit=limit, after=page["next"])
    return events


async def book_a_little(api: Api) -> dict[str, Any]:
    await resource(api, "host")
    await service(api, "consult", ["host"])
    booking = await hold(api, "consult", at(weekday_ahead(0), "09:00"))
    r = await api.post(
        f"/v1/bookings/{booking['id']}/cancel", {"reason": "changed my mind", "by": "owner"}
    )
    assert r.status_code == 200, r.text
    return booking


class TestTheFeed:
    async def test_lists_the_tenants_events_in_order_with_their_metadata(self, api: Api) -> None:
        booking = await book_a_little(api)
        events = (await feed(api))["events"]
        types = [e["type"] for e in events]
        assert types[:2] == ["ResourceUpserted", "ServiceUpserted"]
        assert "SlotHeld" in types and "BookingCancelled" in types
        assert [e["position"] for e in events] == sorted(e["position"] for e in events)
        held = next(e for e in events if e["type"] == "SlotHeld")
        assert held["stream"] == f"bk:{booking['id']}"
        assert held["version"] == 1
        assert held["data"]["booking_id"] == booking["id"]
        assert held["metadata"]["actor"].startswith("key_")
        assert held["metadata"]["request_id"]
        assert "tenant" not in held["metadata"]
        assert held["recorded_at"]

    async def test_paging_with_next_sees_every_event_exactly_once(self, api: Api) -> None:
        await book_a_little(api)
        await book_a_little(api)  # same ids: upserts are no-ops, the second hold gets a new id
        whole = (await feed(api, limit=1000))["events"]
        paged = await everything(api, limit=2)
        assert [e["position"] for e in paged] == [e["position"] for e in whole]
        assert len(whole) >= 8

    async def test_an_empty_page_keeps_the_cursor_for_polling(self, api: Api) -> None:
        await book_a_little(api)
        last = await feed(api, limit=1000)
        tail = await feed(api, after=last["next"])
        assert tail == {"events": [], "next": last["next"]}
        booking = await hold(api, "consult", at(weekday_ahead(1), "10:00"))
        newer = await feed(api, after=last["next"])
        ids = {e["data"].get("booking_id") or e["data"].get("claim_id") for e in newer["events"]}
        assert ids == {booking["id"]}

    async def test_another_tenants_events_never_appear(self, api: Api) -> None:
        await book_a_little(api)
        other = await api.new_tenant()
        assert await feed(other) == {"events": [], "next": None}
        await resource(other, "theirs")
        mine = await everything(api, limit=3)
        theirs = await everything(other, limit=3)
        assert [e["type"] for e in theirs] == ["ResourceUpserted"]
        assert not {e["position"] for e in mine} & {e["position"] for e in theirs}

    async def test_a_bad_cursor_is_a_validation_error_naming_after(self, api: Api) -> None:
        for bad in ("nonsense", "12", "1-x", "-1-2"):
            r = await api.get("/v1/events", params={"after": bad})
            assert r.status_code == 422, bad
            error = r.json()["error"]
            assert error["code"] == "validation_error"
            assert error["details"]["errors"][0]["path"] == "after"

    async def test_after_may_be_an_events_position_and_0_is_the_start(self, api: Api) -> None:
        await book_a_little(api)
        whole = (await feed(api, limit=1000))["events"]
        assert (await feed(api, after=0, limit=1000))["events"] == whole
        third = whole[2]["position"]
        assert (await feed(api, after=third, limit=1000))["events"] == whole[3:]
        other = await api.new_tenant()
        await resource(other, "theirs")
        theirs = (await feed(other))["events"][0]["position"]
        for bad in (theirs, 10**30, 2**63):  # another tenant's event answers as no event
            r = await api.get("/v1/events", params={"after": bad})
            assert r.status_code == 422, r.text
            e = r.json()["error"]
            assert e["details"]["errors"][0]["path"] == "after"
            assert e["message"].endswith(f"after: no event of this tenant at position {bad}")

    async def test_min_position_waits_until_the_feed_shows_the_event(self, api: Api) -> None:
        booking = await book_a_little(api)
        stream = streams.booking(api.tenant["tenant_id"], booking["id"])
        async with api.pool.acquire() as conn:
            writing = conn.transaction()
            await writing.start()
            version = len(await store.read_stream(conn, stream))
            [appended] = await store.append(
                conn,
                [AppendStream(stream, version, [BookingConfirmed(booking_id=booking["id"])])],
                EventMeta(tenant=api.tenant["tenant_id"]),
            )
            r = await answered_only_after(
                api.get("/v1/events", params={"min_position": appended.position, "limit": 1000}),
                writing.commit,
            )
        assert r.status_code == 200
        assert appended.position in [e["position"] for e in (await feed(api, limit=1000))["events"]]
        r = await api.get("/v1/events", params={"min_position": "soon"})
        assert r.status_code == 422 and "min_position" in r.text

    async def test_needs_a_secret_key(self, api: Api) -> None:
        assert (await api.get("/v1/events", headers=api.public)).status_code == 403
        assert (await api.client.get("/v1/events")).status_code == 401


class TestHistoryCommand:
    async def test_prints_the_bookings_events_as_a_table(self, api: Api, database_url: str) -> None:
        booking = await book_a_little(api)
        done = slotlog(database_url, "history", booking["id"])
        assert done.returncode == 0, done.stderr
        out = done.stdout
        for word in ("position", "time", "type", "actor", "reason", "SlotHeld", "BookingCancelled"):
            assert word in out, out
        assert "changed my mind" in out
        assert booking["id"] in out

    async def test_an_unknown_booking_is_an_error(self, api: Api, database_url: str) -> None:
        done = slotlog(database_url, "history", "bk_nope")
        assert done.returncode == 1
        assert "no booking 'bk_nope'" in done.stderr
