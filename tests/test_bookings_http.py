"""Slot bookings over HTTP through the real app: the flows of the seed systems (Vyte, Cronofy,
OnSched, Cal.com) and every lifecycle route."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from projections.engine import write_streams
from service import store, streams
from service.events import BookingConfirmed, EventMeta
from service.store import AppendStream
from tests.conftest import Api
from tests.helpers import (
    at,
    hold,
    iso,
    parse,
    resource,
    service,
    slots,
    starts,
    weekday_ahead,
)
from tests.settle import answered_only_after


async def event_types(api: Api, booking_id: str) -> list[str]:
    r = await api.get(f"/v1/bookings/{booking_id}/history")
    assert r.status_code == 200, r.text
    return [e["type"] for e in r.json()["events"]]


class TestVyteFlow:
    """Slots where ALL listed people are free, grouped by day, in a requested timezone; book;
    confirm or cancel."""

    async def test_collective_slots_grouped_by_day_in_a_timezone_then_book_and_confirm(
        self, api: Api
    ) -> None:
        day = weekday_ahead(0)
        await resource(api, "ann", zone="Europe/London")
        await resource(api, "ben", zone="Europe/London", weekly={"mon": [["13:00", "18:00"]]})
        await service(api, "meet", ["ann", "ben"], assignment="all")
        # Ann is busy 14:00-15:00 through another service on her own.
        await service(api, "solo", ["ann"])
        await hold(
            api, "solo", at(day, "14:00", "Europe/London"), confirm=True, customer={"name": "x"}
        )

        r = await api.get(
            "/v1/availability",
            params={
                "service": "meet",
                "from": day.isoformat(),
                "to": (day + timedelta(days=1)).isoformat(),
                "timezone": "America/New_York",
                "group_by": "day",
            },
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert [d["date"] for d in body["days"]] == [day.isoformat()]
        got = body["days"][0]["slots"]
        london = [at(day, h, "Europe/London") for h in ("13:00", "15:00", "16:00")]
        assert [parse(s["start"]) for s in got] == london
        assert all(s["resources"] == ["ann", "ben"] for s in got)
        # Rendered in the requested zone, with New York's offset on that day.
        assert (
            parse(got[0]["start"]).utcoffset()
            == london[0].astimezone(ZoneInfo("America/New_York")).utcoffset()
        )
        assert got[0]["start"].endswith(("-05:00", "-04:00"))

        booking = await hold(api, "meet", london[1], customer={"name": "Vy", "email": "v@x.io"})
        assert booking["status"] == "held"
        assert booking["resources"] == ["ann", "ben"]
        confirmed = await api.post(f"/v1/bookings/{booking['id']}/confirm", {})
        assert confirmed.status_code == 200, confirmed.text
        assert confirmed.json()["status"] == "confirmed"
        assert confirmed.json()["expires_at"] is None

        other = await hold(api, "meet", london[2], customer={"name": "Vy"})
        cancelled = await api.post(
            f"/v1/bookings/{other['id']}/cancel", {"reason": "changed mind", "by": "owner"}
        )
        assert cancelled.json()["status"] == "cancelled"
        assert cancelled.json()["reason"] == "changed mind"
        assert [parse(s["start"]) for s in await slots(api, "meet", day)] == [london[0], london[2]]


class TestCronofyFlow:
    async def test_upserting_a_resource_twice_by_client_id_gives_one_resource(
        self, api: Api
    ) -> None:
        first = await resource(api, "room-1")
        again = await resource(api, "room-1")
        assert first["version"] == again["version"] == 1  # identical content: no new event
        changed = await resource(api, "room-1", metadata={"floor": 3})
        assert changed["version"] == 2 and changed["metadata"] == {"floor": 3}
        listing = (await api.get("/v1/resources")).json()
        assert [r["id"] for r in listing["data"]] == ["room-1"]
        assert (await api.get("/v1/resources/room-1")).json()["metadata"] == {"floor": 3}

    async def test_availability_across_members_with_narrowing(self, api: Api) -> None:
        day = weekday_ahead(1)
        await resource(api, "a1", weekly={"tue": [["09:00", "12:00"]]})
        await resource(api, "a2", weekly={"tue": [["10:00", "13:00"]]})
        await resource(api, "a3", weekly={"tue": [["11:00", "12:00"]]})
        await service(api, "team", ["a1", "a2", "a3"], assignment="all")
        assert await starts(api, "team", day) == [at(day, "11:00")]
        narrowed = await starts(api, "team", day, resources="a1,a2")
        assert narrowed == [at(day, "10:00"), at(day, "11:00")]


class TestOnSchedFlow:
    async def test_a_hold_hides_the_slot_and_confirm_books_it(self, api: Api) -> None:
        day = weekday_ahead(2)
        await resource(api, "dentist")
        await service(api, "checkup", ["dentist"])
        nine = at(day, "09:00")
        assert nine in await starts(api, "checkup", day)
        held = await hold(api, "checkup", nine)
        assert held["status"] == "held" and parse(held["expires_at"]) > parse(held["created_at"])
        assert nine not in await starts(api, "checkup", day)
        again = await api.post("/v1/bookings", {"service": "checkup", "start": iso(nine)})
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "slot_unavailable"
        no_customer = await api.post(f"/v1/bookings/{held['id']}/confirm", {})
        assert no_customer.status_code == 422
        ok = await api.post(f"/v1/bookings/{held['id']}/confirm", {"customer": {"name": "Ola"}})
        assert ok.json()["status"] == "confirmed"
        assert ok.json()["customer"] == {"name": "Ola"}
        assert await event_types(api, held["id"]) == ["SlotHeld", "BookingConfirmed"]

    async def test_an_expired_hold_frees_the_slot_at_once_and_the_expirer_records_it(
        self, api: Api
    ) -> None:
        day = weekday_ahead(2)
        await resource(api, "dentist")
        await service(api, "quick", ["dentist"], hold_seconds=1)
        nine = at(day, "09:00")
        held = await hold(api, "quick", nine)
        assert nine not in await starts(api, "quick", day)
        await asyncio.sleep(1.2)
        # Before any HoldExpired event exists, the slot is free and the booking reads expired.
        assert nine in await starts(api, "quick", day)
        assert (await api.get(f"/v1/bookings/{held['id']}")).json()["status"] == "expired"
        late = await api.post(f"/v1/bookings/{held['id']}/confirm", {"customer": {"name": "L"}})
        assert late.status_code == 409
        assert late.json()["error"]["code"] == "hold_expired"
        # Someone else can take it right away.
        await hold(api, "quick", nine, customer={"name": "Next"}, confirm=True)

        from service.workers import HoldExpirer

        app = api.client._transport.app  # type: ignore[attr-defined]
        await HoldExpirer(app.state.pool, app.state.commands).step()
        assert await event_types(api, held["id"]) == ["SlotHeld", "HoldExpired"]
        read = (await api.get(f"/v1/bookings/{held['id']}")).json()
        assert read["status"] == "expired" and read["expires_at"] == held["expires_at"]

    async def test_a_hold_the_expirer_cannot_expire_does_not_hold_back_the_others(
        self, api: Api
    ) -> None:
        # The oldest held row is one whose expiry keeps failing (here: its stream has no events).
        # The expirer took the oldest rows first, every step, and so expired nothing else.
        from service.workers import HoldExpirer

        day = weekday_ahead(2)
        await resource(api, "dentist")
        await service(api, "quick", ["dentist"], hold_seconds=1)
        held = await hold(api, "quick", at(day, "09:00"))
        tenant = api.tenant["tenant_id"]
        await api.pool.execute(
            "INSERT INTO rm_bookings (tenant_id, booking_id, stream_id, kind, status, resources, "
            "start_at, end_at, expires_at, state, version, position) VALUES ($1, 'bk_orphan', "
            "$1 || ':bk:bk_orphan', 'slot', 'held', '{dentist}', $2, $3, now() - interval '1 h', "
            "'{}', 1, 1)",
            tenant,
            at(day, "11:00"),
            at(day, "12:00"),
        )
        await asyncio.sleep(1.2)
        app = api.client._transport.app  # type: ignore[attr-defined]
        expirer = HoldExpirer(app.state.pool, app.state.commands, batch=1)
        for _ in range(3):
            await expirer.step()
        assert await event_types(api, held["id"]) == ["SlotHeld", "HoldExpired"]
        assert set(expirer.failing) == {(tenant, "bk_orphan")}  # tried again later

    async def test_one_step_bypass_books_at_once_with_a_known_customer(self, api: Api) -> None:
        day = weekday_ahead(2)
        await resource(api, "dentist")
        await service(api, "checkup", ["dentist"])
        booked = await hold(api, "checkup", at(day, "10:00"), confirm=True, customer={"name": "K"})
        assert booked["status"] == "confirmed"
        assert booked["expires_at"] is None
        assert await event_types(api, booked["id"]) == ["SlotHeld", "BookingConfirmed"]
        missing = await api.post(
            "/v1/bookings", {"service": "checkup", "start": iso(at(day, "11:00")), "confirm": True}
        )
        assert missing.status_code == 422
        assert missing.json()["error"]["details"]["errors"][0]["path"] == "customer"

    async def test_round_robin_picks_the_resource_with_fewest_bookings_that_day(
        self, api: Api
    ) -> None:
        day = weekday_ahead(3)
        for rid in ("bea", "al", "cy"):
            await resource(api, rid)
        await service(api, "cut", ["bea", "al", "cy"])
        await service(api, "al-only", ["al"])
        await hold(api, "al-only", at(day, "15:00"), confirm=True, customer={"name": "x"})
        # al has one booking that day: the tie between bea and cy goes to bea (by id).
        first = await hold(api, "cut", at(day, "09:00"))
        assert first["resources"] == ["bea"]
        second = await hold(api, "cut", at(day, "10:00"))
        assert second["resources"] == ["cy"]
        third = await hold(api, "cut", at(day, "11:00"))
        assert third["resources"] == ["al"]
        # Now bea 1, cy 1, al 2: the listing offers bea (tie with cy broken by id).
        shown = await slots(api, "cut", day)
        assert {parse(s["start"]): s["resources"] for s in shown}[at(day, "12:00")] == ["bea"]


class TestCalComRules:
    async def test_buffers_block_neighbouring_slots_but_may_overlap_each_other(
        self, api: Api
    ) -> None:
        day = weekday_ahead(0)
        await resource(api, "host")
        await service(
            api,
            "call",
            ["host"],
            duration_minutes=30,
            slot_interval_minutes=15,
            buffer_before_minutes=15,
            buffer_after_minutes=15,
        )
        await hold(api, "call", at(day, "10:00"), confirm=True, customer={"name": "a"})
        free = await starts(api, "call", day)
        # 10:00-10:30 booked; its buffers block 09:45-10:45 for another booking's own time,
        # and a candidate's own buffers may not touch 10:00-10:30.
        assert at(day, "09:15") in free
        assert at(day, "09:30") not in free
        assert at(day, "10:30") not in free
        assert at(day, "10:45") in free
        # Buffers of two bookings may overlap each other.
        await hold(api, "call", at(day, "10:45"), confirm=True, customer={"name": "b"})

    async def test_bookings_just_outside_the_queried_range_still_block_it(self, api: Api) -> None:
        # Availability reads only the claims whose blocked time can reach a candidate's: one
        # ending before the range that the first candidates' buffers reach back to, and one
        # starting after it whose buffer the last candidate (which may end after the range)
        # runs into.
        day = weekday_ahead(4)  # a Friday
        await resource(
            api, "edge", weekly={"fri": [["22:00", "24:00"]], "sat": [["00:00", "02:00"]]}
        )
        await service(
            api,
            "gap",
            ["edge"],
            duration_minutes=20,
            slot_interval_minutes=10,
            buffer_before_minutes=30,
        )
        saturday = day + timedelta(days=1)
        await hold(api, "gap", at(day, "23:40"), confirm=True, customer={"name": "a"})
        await hold(api, "gap", at(saturday, "01:30"), confirm=True, customer={"name": "b"})

        async def free(start: str, end: str) -> list[datetime]:
            r = await api.get(
                "/v1/availability",
                params={
                    "service": "gap",
                    "from": iso(at(saturday, start)),
                    "to": iso(at(saturday, end)),
                },
            )
            assert r.status_code == 200, r.text
            return [parse(s["start"]) for s in r.json()["data"]]

        # 00:00-00:20 would have their buffers overlap 23:40-24:00; 00:50-01:10 would overlap
        # the second booking's buffer (01:00-01:30).
        assert await free("00:00", "00:55") == [at(saturday, "00:30"), at(saturday, "00:40")]

    async def test_minimum_notice_and_horizon(self, api: Api) -> None:
        await resource(
            api,
            "host",
            weekly={
                d: [["00:00", "24:00"]] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
            },
        )
        await service(api, "soon", ["host"], min_notice_minutes=24 * 60, max_advance_days=7)
        from datetime import UTC, datetime

        now = datetime.now(UTC)
        r = await api.get(
            "/v1/availability",
            params={"service": "soon", "from": iso(now), "to": iso(now + timedelta(days=10))},
        )
        got = [parse(s["start"]) for s in r.json()["data"]]
        assert got and min(got) >= now + timedelta(hours=24)
        assert max(got) <= now + timedelta(days=7)
        too_soon = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
        refused = await api.post("/v1/bookings", {"service": "soon", "start": iso(too_soon)})
        assert refused.status_code == 409
        assert refused.json()["error"]["code"] == "outside_booking_window"
        too_far = too_soon + timedelta(days=9)
        refused = await api.post("/v1/bookings", {"service": "soon", "start": iso(too_far)})
        assert refused.json()["error"]["code"] == "outside_booking_window"

    async def test_slot_interval_and_variable_duration(self, api: Api) -> None:
        day = weekday_ahead(0)
        await resource(api, "host", weekly={"mon": [["09:00", "10:30"]]})
        await service(
            api, "flex", ["host"], durations=[30, 60], duration_minutes=30, slot_interval_minutes=30
        )
        assert await starts(api, "flex", day) == [at(day, h) for h in ("09:00", "09:30", "10:00")]
        assert await starts(api, "flex", day, duration=60) == [at(day, "09:00"), at(day, "09:30")]
        long = await hold(api, "flex", at(day, "09:00"), duration_minutes=60)
        assert parse(long["end"]) - parse(long["start"]) == timedelta(minutes=60)
        bad = await api.get(
            "/v1/availability",
            params={
                "service": "flex",
                "from": day.isoformat(),
                "to": day.isoformat(),
                "duration": 45,
            },
        )
        assert bad.status_code == 422

    async def test_requires_confirmation_goes_pending_then_approve_or_reject(
        self, api: Api
    ) -> None:
        day = weekday_ahead(1)
        await resource(api, "host")
        await service(api, "vip", ["host"], requires_confirmation=True)
        first = await hold(api, "vip", at(day, "09:00"), customer={"name": "P"})
        pending = await api.post(f"/v1/bookings/{first['id']}/confirm", {})
        assert pending.json()["status"] == "pending"
        # A pending booking still blocks its slot.
        assert at(day, "09:00") not in await starts(api, "vip", day)
        approved = await api.post(f"/v1/bookings/{first['id']}/approve", {"reason": "ok"})
        assert approved.json()["status"] == "confirmed"
        again = await api.post(f"/v1/bookings/{first['id']}/approve", {})
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "invalid_transition"
        assert again.json()["error"]["details"]["status"] == "confirmed"

        second = await hold(api, "vip", at(day, "10:00"), customer={"name": "Q"}, confirm=True)
        assert second["status"] == "pending"
        rejected = await api.post(f"/v1/bookings/{second['id']}/reject", {"reason": "full"})
        assert rejected.json()["status"] == "rejected"
        assert at(day, "10:00") in await starts(api, "vip", day)
        assert await event_types(api, second["id"]) == [
            "SlotHeld",
            "BookingApprovalRequested",
            "BookingRejected",
        ]


class TestServiceChanges:
    async def test_an_edited_service_applies_to_the_very_next_hold(self, api: Api) -> None:
        day = weekday_ahead(2)
        await resource(api, "a")
        await resource(api, "b")
        await service(api, "s", ["a"])
        assert (await hold(api, "s", at(day, "09:00")))["resources"] == ["a"]
        await service(api, "s", ["b"], buffer_after_minutes=60)
        moved = await hold(api, "s", at(day, "09:00"))
        assert moved["resources"] == ["b"]
        # The new buffer applies at once too: 10:00 on b is now within 09:00's buffer.
        r = await api.post("/v1/bookings", {"service": "s", "start": iso(at(day, "10:00"))})
        assert r.status_code == 409
        await api.put("/v1/services/s", {"name": "x", "duration_minutes": 60, "resources": ["a"]})
        assert (await hold(api, "s", at(day, "11:00")))["resources"] == ["a"]


class TestLifecycle:
    async def test_reschedule_moves_the_booking_atomically_keeping_id_and_status(
        self, api: Api
    ) -> None:
        day = weekday_ahead(1)
        await resource(api, "host")
        await service(api, "s", ["host"])
        b = await hold(api, "s", at(day, "09:00"), confirm=True, customer={"name": "R"})
        taken = await hold(api, "s", at(day, "11:00"))
        clash = await api.post(
            f"/v1/bookings/{b['id']}/reschedule", {"start": iso(at(day, "11:00"))}
        )
        assert clash.status_code == 409
        assert clash.json()["error"]["code"] == "slot_unavailable"
        moved = await api.post(
            f"/v1/bookings/{b['id']}/reschedule", {"start": iso(at(day, "14:00"))}
        )
        assert moved.status_code == 200, moved.text
        assert moved.json()["id"] == b["id"] and moved.json()["status"] == "confirmed"
        assert parse(moved.json()["start"]) == at(day, "14:00")
        free = await starts(api, "s", day)
        assert at(day, "09:00") in free and at(day, "14:00") not in free
        # Moving by half an hour onto its own old time is fine (it does not clash with itself).
        self_overlap = await api.post(
            f"/v1/bookings/{b['id']}/reschedule", {"start": iso(at(day, "14:30"))}
        )
        assert self_overlap.status_code == 200, self_overlap.text
        assert taken["status"] == "held"

    async def test_a_customer_may_not_cancel_or_reschedule_inside_the_cutoff(
        self, api: Api
    ) -> None:
        from datetime import UTC, datetime

        await resource(
            api,
            "host",
            weekly={
                d: [["00:00", "24:00"]] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
            },
        )
        await service(api, "s", ["host"], min_cancel_notice_minutes=48 * 60)
        soon = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=5)
        b = await hold(api, "s", soon, confirm=True, customer={"name": "C"})
        r = await api.post(f"/v1/bookings/{b['id']}/cancel", {"by": "customer"})
        assert r.status_code == 409
        assert r.json()["error"]["code"] == "cancel_window_closed"
        r = await api.post(
            f"/v1/bookings/{b['id']}/reschedule",
            {"start": iso(soon + timedelta(days=3)), "by": "customer"},
        )
        assert r.json()["error"]["code"] == "cancel_window_closed"
        r = await api.post(f"/v1/bookings/{b['id']}/cancel", {"by": "owner", "reason": "sick"})
        assert r.json()["status"] == "cancelled" and r.json()["cancelled_by"] == "owner"
        r = await api.post(f"/v1/bookings/{b['id']}/cancel", {"by": "owner"})
        assert r.status_code == 409 and r.json()["error"]["details"]["status"] == "cancelled"

    async def test_extend_pushes_the_expiry_within_the_hold_limit(self, api: Api) -> None:
        day = weekday_ahead(1)
        await resource(api, "host")
        await service(api, "s", ["host"], hold_seconds=300)
        b = await hold(api, "s", at(day, "09:00"))
        r = await api.post(f"/v1/bookings/{b['id']}/extend", {"seconds": 300})
        assert r.status_code == 200
        assert parse(r.json()["expires_at"]) == parse(b["expires_at"]) + timedelta(seconds=300)
        too_long = await api.post(f"/v1/bookings/{b['id']}/extend", {"seconds": 301})
        assert too_long.status_code == 422
        confirmed = await api.post(f"/v1/bookings/{b['id']}/confirm", {"customer": {"name": "E"}})
        assert confirmed.status_code == 200
        r = await api.post(f"/v1/bookings/{b['id']}/extend", {"seconds": 10})
        assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_transition"

    async def test_get_list_and_history(self, api: Api) -> None:
        day = weekday_ahead(1)
        await resource(api, "host")
        await resource(api, "other")
        await service(api, "s", ["host"])
        await service(api, "t", ["other"])
        made = [await hold(api, "s", at(day, f"{h:02d}:00")) for h in range(9, 14)]
        await hold(api, "t", at(day, "09:00"))
        one = await api.get(f"/v1/bookings/{made[0]['id']}")
        assert one.status_code == 200
        assert one.headers["etag"] == '"1"'
        assert one.json()["id"] == made[0]["id"]

        seen: list[str] = []
        cursor = None
        while True:
            params = {"service": "s", "limit": "2", **({"cursor": cursor} if cursor else {})}
            page = (await api.get("/v1/bookings", params=params)).json()
            seen += [b["id"] for b in page["data"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == [b["id"] for b in made]
        by_resource = (await api.get("/v1/bookings", params={"resource": "other"})).json()
        assert len(by_resource["data"]) == 1
        await api.post(f"/v1/bookings/{made[1]['id']}/cancel", {"by": "owner"})
        held = (await api.get("/v1/bookings", params={"status": "held", "service": "s"})).json()
        assert len(held["data"]) == 4
        window = (
            await api.get(
                "/v1/bookings",
                params={"from": iso(at(day, "10:30")), "to": iso(at(day, "12:00")), "service": "s"},
            )
        ).json()
        assert [b["id"] for b in window["data"]] == [made[1]["id"], made[2]["id"]]

        history = (await api.get(f"/v1/bookings/{made[1]['id']}/history")).json()
        assert history["booking_id"] == made[1]["id"]
        types = [(e["type"], e["version"]) for e in history["events"]]
        assert types == [("SlotHeld", 1), ("BookingCancelled", 2)]
        first = history["events"][0]
        assert first["actor"].startswith("key_") and first["position"] > 0
        assert set(first) >= {
            "position",
            "version",
            "type",
            "data",
            "recorded_at",
            "actor",
            "reason",
        }

    async def test_command_answers_carry_the_position_of_their_own_last_event(
        self, api: Api
    ) -> None:
        # SPEC 3. A hold's last event is its claim in the day stream, after the booking's own;
        # holds decided in one batch must each get their own, not the batch's last.
        day = weekday_ahead(1)
        every_day = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
        await resource(api, "host", weekly={d: [["00:00", "24:00"]] for d in every_day})
        await service(api, "s", ["host"], duration_minutes=15)

        async def last_event_of(booking_id: str, since: int) -> int:
            stream = streams.booking(api.tenant["tenant_id"], booking_id)
            return int(
                await api.pool.fetchval(
                    "SELECT max(position) FROM events WHERE position > $3 AND (stream_id = $1 "
                    "OR data->>'claim_id' = $2 OR data->>'booking_id' = $2)",
                    stream,
                    booking_id,
                    since,
                )
            )

        head = int(await api.pool.fetchval("SELECT max(position) FROM events"))
        answers = await asyncio.gather(
            *(
                api.post("/v1/bookings", {"service": "s", "start": iso(at(day, f"{h:02d}:00"))})
                for h in range(8, 20)
            )
        )
        assert all(r.status_code == 201 for r in answers), [r.text for r in answers]
        held = [r.json() for r in answers]
        for b in held:
            assert b["position"] == await last_event_of(b["id"], head), b
        positions = [b["position"] for b in held]
        assert len(set(positions)) == len(positions)
        read = await api.get(f"/v1/bookings/{held[0]['id']}")
        assert read.json()["position"] < held[0]["position"]  # the booking's own last event

        # One with an Idempotency-Key (not batched), and a lifecycle command.
        head = int(await api.pool.fetchval("SELECT max(position) FROM events"))
        keyed = await api.post(
            "/v1/bookings",
            {"service": "s", "start": iso(at(day, "21:00"))},
            headers={"Idempotency-Key": "pos-1"},
        )
        assert keyed.status_code == 201, keyed.text
        assert keyed.json()["position"] == await last_event_of(keyed.json()["id"], head)
        head = int(await api.pool.fetchval("SELECT max(position) FROM events"))
        cancelled = await api.post(f"/v1/bookings/{held[1]['id']}/cancel", {"by": "owner"})
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["position"] == await last_event_of(held[1]["id"], head)
        assert cancelled.json()["position"] == await api.pool.fetchval(
            "SELECT max(position) FROM events"
        )

    async def test_min_position_reads_wait_for_the_write(self, api: Api) -> None:
        day = weekday_ahead(1)
        await resource(api, "host")
        await service(api, "s", ["host"])
        b = await hold(api, "s", at(day, "09:00"))
        # A confirmation whose transaction is still open: its event has a position, and the
        # booking's row says confirmed, but neither is visible outside it yet.
        stream = streams.booking(api.tenant["tenant_id"], b["id"])
        async with api.pool.acquire() as conn:
            writing = conn.transaction()
            await writing.start()
            [appended] = await store.append(
                conn,
                [AppendStream(stream, b["version"], [BookingConfirmed(booking_id=b["id"])])],
                EventMeta(tenant=api.tenant["tenant_id"]),
            )
            await write_streams(conn, {stream: await store.read_stream(conn, stream)})
            r = await answered_only_after(
                api.get(f"/v1/bookings/{b['id']}", params={"min_position": appended.position}),
                writing.commit,
            )
        assert r.status_code == 200
        assert r.json()["status"] == "confirmed" and r.json()["position"] == appended.position
        # Without min_position (or with one already reached) a read answers at once.
        plain = await api.get(f"/v1/bookings/{b['id']}", params={"min_position": b["position"]})
        assert plain.json()["status"] == "confirmed"

    async def test_a_booking_across_midnight_claims_both_days(self, api: Api) -> None:
        day = weekday_ahead(4)  # a Friday
        await resource(
            api, "night", weekly={"fri": [["22:00", "24:00"]], "sat": [["00:00", "02:00"]]}
        )
        await service(api, "late", ["night"], duration_minutes=120, slot_interval_minutes=60)
        assert at(day, "23:00") in await starts(api, "late", day)
        b = await hold(api, "late", at(day, "23:00"))
        assert parse(b["end"]) == at(day + timedelta(days=1), "01:00")
        next_day = await api.get(
            "/v1/availability",
            params={"service": "late", "from": iso(at(day, "22:00")), "to": iso(at(day, "23:59"))},
        )
        assert next_day.json()["data"] == []
        streams = await api.pool.fetch(
            "SELECT DISTINCT stream_id FROM events WHERE type = 'TimeClaimed' ORDER BY 1"
        )
        assert [s["stream_id"].rsplit(":", 1)[1] for s in streams] == [
            day.isoformat(),
            (day + timedelta(days=1)).isoformat(),
        ]
