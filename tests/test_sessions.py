"""Group sessions over HTTP through the real app: scheduling, series, seats, the public listing,
owner cancel, and how sessions and bookings exclude each other on a resource.

Dates are relative to today: the HTTP layer decides with the real clock.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pytest

from tests.conftest import Api

EVERY_DAY_8_TO_20 = {
    d: [["08:00", "20:00"]] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
}
MARTY = {"name": "Marty McFly", "email": "marty@mcfly.example"}
JENNIFER = {"name": "Jennifer Parker", "email": "jennifer@parker.example"}
BIFF = {"name": "Biff Tannen", "email": "biff@tannen.example"}
DOC_MESSAGE = "Getting the DeLorean fixed that day. Doc."


def days_ahead(n: int) -> date:
    return datetime.now(UTC).date() + timedelta(days=n)


def at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def put_resource(api: Api, rid: str = "studio") -> None:
    body = {"name": rid.title(), "timezone": "UTC", "weekly": EVERY_DAY_8_TO_20}
    r = await api.put(f"/v1/resources/{rid}", body)
    assert r.status_code == 200, r.text


async def put_service(api: Api, sid: str = "private", rid: str = "studio", **extra: Any) -> None:
    body = {"name": sid.title(), "duration_minutes": 60, "resources": [rid], **extra}
    r = await api.put(f"/v1/services/{sid}", body)
    assert r.status_code == 200, r.text


def session_body(start: datetime, minutes: int = 60, **extra: Any) -> dict[str, Any]:
    return {
        "resource": "studio",
        "start": iso(start),
        "end": iso(start + timedelta(minutes=minutes)),
        "title": "Yoga",
        "max_seats": 10,
        **extra,
    }


async def schedule(api: Api, sid: str, start: datetime, **extra: Any) -> dict[str, Any]:
    r = await api.put(f"/v1/sessions/{sid}", session_body(start, **extra))
    assert r.status_code == 201, r.text
    return dict(r.json())


async def seats(
    api: Api, sid: str, n: int, customer: dict[str, str] | None = None, *, confirm: bool = False
) -> dict[str, Any]:
    body: dict[str, Any] = {"seats": n, "customer": customer or MARTY, "confirm": confirm}
    r = await api.post(f"/v1/sessions/{sid}/bookings", body)
    assert r.status_code == 201, r.text
    return dict(r.json())


async def listing(api: Api, **params: Any) -> list[dict[str, Any]]:
    r = await api.get("/v1/sessions", params=params, headers=api.public)
    assert r.status_code == 200, r.text
    return list(r.json()["data"])


async def seat_counts(api: Api, sid: str) -> dict[str, int]:
    [found] = [s for s in await listing(api) if s["id"] == sid]
    return dict(found["seats"])


async def tenant_events(api: Api, like: str = "%") -> int:
    count: int = await api.pool.fetchval(
        "SELECT count(*) FROM events WHERE tenant_id = $1 AND stream_id LIKE $2",
        api.tenant["tenant_id"],
        like,
    )
    return count


async def history(api: Api, booking_id: str) -> list[dict[str, Any]]:
    r = await api.get(f"/v1/bookings/{booking_id}/history")
    assert r.status_code == 200, r.text
    return list(r.json()["events"])


def error(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"]["code"] == code, body
    return dict(body["error"])


class TestTimekitYogaClass:
    async def test_from_scheduling_to_the_owner_cancelling_every_seat(self, api: Api) -> None:
        await put_resource(api, "doc-studio")
        start = at(days_ahead(10), 8)
        r = await api.put(
            "/v1/sessions/friday-yoga",
            {
                "resource": "doc-studio",
                "start": iso(start),
                "end": iso(start + timedelta(hours=1)),
                "title": "Doc Brown's Friday Yoga Class",
                "location": "Sesame St, Middleburg, FL 32068, USA",
                "description": "Please arrive 10 minutes before classes begin",
                "max_seats": 20,
                "min_cancel_notice_minutes": 24 * 60,
                "min_booking_notice_minutes": 120,
                "max_advance_days": 14,
            },
        )
        assert r.status_code == 201, r.text
        assert r.json()["seats"] == {"max": 20, "taken": 0, "held": 0, "left": 20}

        marty = await seats(api, "friday-yoga", 2, MARTY, confirm=True)
        assert (marty["kind"], marty["status"], marty["seats"]) == ("seat", "confirmed", 2)
        assert marty["session"] == "friday-yoga"

        # The public listing: 2 taken, 18 left, and nothing about who took them.
        public = await api.get(
            "/v1/sessions", params={"resource": "doc-studio"}, headers=api.public
        )
        assert public.status_code == 200, public.text
        [session] = public.json()["data"]
        assert session["seats"] == {"max": 20, "taken": 2, "held": 0, "left": 18}
        assert session["title"] == "Doc Brown's Friday Yoga Class"
        assert session["location"] == "Sesame St, Middleburg, FL 32068, USA"
        assert (session["status"], parse(session["start"])) == ("scheduled", start)
        for secret in (MARTY["name"], MARTY["email"], "McFly", '"customer"', marty["id"]):
            assert secret not in public.text
        forbidden = await api.get("/v1/sessions/friday-yoga", headers=api.public)
        error(forbidden, 403, "forbidden")

        too_many = await api.post(
            "/v1/sessions/friday-yoga/bookings", {"seats": 19, "customer": JENNIFER}
        )
        assert error(too_many, 409, "not_enough_seats")["details"]["seats_left"] == 18

        jennifer = await seats(api, "friday-yoga", 1, JENNIFER)
        assert jennifer["status"] == "held"
        r = await api.post(f"/v1/bookings/{jennifer['id']}/confirm", {})
        assert (r.status_code, r.json()["status"]) == (200, "confirmed"), r.text
        biff = await seats(api, "friday-yoga", 3, BIFF)
        assert await seat_counts(api, "friday-yoga") == {
            "max": 20,
            "taken": 3,
            "held": 3,
            "left": 14,
        }

        # Doc sees who is coming (secret key).
        r = await api.get("/v1/sessions/friday-yoga", params={"include": "bookings"})
        assert r.status_code == 200, r.text
        owner_view = r.json()
        assert {b["id"]: b["customer"]["name"] for b in owner_view["bookings"]} == {
            marty["id"]: "Marty McFly",
            jennifer["id"]: "Jennifer Parker",
            biff["id"]: "Biff Tannen",
        }
        assert owner_view["seats"]["taken"] == 3

        # Marty double-booked himself; his seats return.
        r = await api.post(
            f"/v1/bookings/{marty['id']}/cancel",
            {"by": "customer", "reason": "Double booked. Sorry, Doc!"},
        )
        assert r.status_code == 200, r.text
        assert (r.json()["status"], r.json()["reason"]) == (
            "cancelled",
            "Double booked. Sorry, Doc!",
        )
        assert await seat_counts(api, "friday-yoga") == {
            "max": 20,
            "taken": 1,
            "held": 3,
            "left": 16,
        }

        # Doc cancels the class: every active seat booking is cancelled with his message.
        r = await api.post("/v1/sessions/friday-yoga/cancel", {"message": DOC_MESSAGE})
        assert r.status_code == 200, r.text
        cancelled = r.json()
        assert (cancelled["status"], cancelled["message"]) == ("cancelled", DOC_MESSAGE)
        assert cancelled["cancelled_bookings"] == sorted([jennifer["id"], biff["id"]])
        for booking in (jennifer, biff):
            r = await api.get(f"/v1/bookings/{booking['id']}")
            state = r.json()
            assert (state["status"], state["cancelled_by"], state["reason"]) == (
                "cancelled",
                "owner",
                DOC_MESSAGE,
            )
            last = (await history(api, booking["id"]))[-1]
            assert (last["type"], last["reason"], last["data"]["by"]) == (
                "BookingCancelled",
                DOC_MESSAGE,
                "owner",
            )
        marty_history = await history(api, marty["id"])
        assert [e["data"]["by"] for e in marty_history if e["type"] == "BookingCancelled"] == [
            "customer"
        ]
        [session] = await listing(api, resource="doc-studio")
        assert session["status"] == "cancelled"
        assert session["seats"] == {"max": 20, "taken": 0, "held": 0, "left": 0}

        late = await api.post("/v1/sessions/friday-yoga/bookings", {"seats": 1, "customer": BIFF})
        assert error(late, 409, "invalid_transition")["details"]["status"] == "cancelled"
        again = await api.post("/v1/sessions/friday-yoga/cancel", {"message": "twice"})
        error(again, 409, "invalid_transition")


class TestSeats:
    async def test_holds_count_against_the_seats_until_confirmed_or_cancelled(
        self, api: Api
    ) -> None:
        await put_resource(api)
        await schedule(api, "class", at(days_ahead(14), 10))
        first = await seats(api, "class", 5)
        await seats(api, "class", 3, JENNIFER)
        assert await seat_counts(api, "class") == {"max": 10, "taken": 0, "held": 8, "left": 2}
        r = await api.post("/v1/sessions/class/bookings", {"seats": 3, "customer": BIFF})
        assert error(r, 409, "not_enough_seats")["details"]["seats_left"] == 2
        r = await api.post(f"/v1/bookings/{first['id']}/confirm", {})
        assert r.status_code == 200, r.text
        assert await seat_counts(api, "class") == {"max": 10, "taken": 5, "held": 3, "left": 2}

    async def test_an_expired_hold_frees_its_seats_at_once_without_the_expirer(
        self, api: Api
    ) -> None:
        # The `api` app runs no background workers: nothing writes HoldExpired here.
        await put_resource(api)
        await schedule(api, "quick", at(days_ahead(14), 10), max_seats=4, hold_seconds=1)
        held = await seats(api, "quick", 4)
        expires_at = parse(held["expires_at"])
        await asyncio.sleep((expires_at - datetime.now(UTC)).total_seconds() + 0.2)
        assert await seat_counts(api, "quick") == {"max": 4, "taken": 0, "held": 0, "left": 4}
        r = await api.get(f"/v1/bookings/{held['id']}")
        assert r.json()["status"] == "expired"
        again = await seats(api, "quick", 4, JENNIFER, confirm=True)
        assert again["status"] == "confirmed"
        r = await api.get("/v1/sessions/quick")
        assert r.json()["seats"] == {"max": 4, "taken": 4, "held": 0, "left": 0}

    async def test_owner_cancel_marks_a_lapsed_hold_expired_rather_than_cancelled(
        self, api: Api
    ) -> None:
        await put_resource(api)
        await schedule(api, "quick", at(days_ahead(14), 10), max_seats=4, hold_seconds=1)
        held = await seats(api, "quick", 2)
        await asyncio.sleep((parse(held["expires_at"]) - datetime.now(UTC)).total_seconds() + 0.2)
        r = await api.post("/v1/sessions/quick/cancel", {"message": "closed"})
        assert r.status_code == 200, r.text
        assert r.json()["cancelled_bookings"] == []
        assert [e["type"] for e in await history(api, held["id"])] == ["SeatsHeld", "HoldExpired"]


class TestScheduling:
    async def test_re_put_of_identical_content_is_a_no_op(self, api: Api) -> None:
        await put_resource(api)
        start = at(days_ahead(14), 10)
        first = await schedule(api, "class", start, description="Bring a mat")
        before = await tenant_events(api)
        r = await api.put("/v1/sessions/class", session_body(start, description="Bring a mat"))
        assert r.status_code == 200, r.text
        assert r.json()["version"] == first["version"]
        assert await tenant_events(api) == before

    async def test_details_may_change_but_not_below_the_seats_taken_nor_the_time(
        self, api: Api
    ) -> None:
        await put_resource(api)
        start = at(days_ahead(14), 10)
        await schedule(api, "class", start)
        await seats(api, "class", 5, confirm=True)
        await seats(api, "class", 1, JENNIFER)

        r = await api.put(
            "/v1/sessions/class", session_body(start, title="Hot yoga", max_seats=8, location="B")
        )
        assert r.status_code == 200, r.text
        changed = r.json()
        assert (changed["title"], changed["location"]) == ("Hot yoga", "B")
        assert changed["seats"] == {"max": 8, "taken": 5, "held": 1, "left": 2}
        types = await api.pool.fetch(
            "SELECT type FROM events WHERE stream_id LIKE $1 ORDER BY version",
            f"{api.tenant['tenant_id']}:ss:class",
        )
        assert types[-1]["type"] == "SessionUpdated"
        [listed] = await listing(api)
        assert (listed["title"], listed["seats"]["max"]) == ("Hot yoga", 8)

        r = await api.put("/v1/sessions/class", session_body(start, max_seats=5))
        details = error(r, 409, "not_enough_seats")["details"]
        assert (details["seats_taken"], details["seats_held"]) == (5, 1)
        moved = await api.put("/v1/sessions/class", session_body(start + timedelta(hours=1)))
        error(moved, 409, "invalid_transition")

    async def test_post_gives_a_server_id_and_honours_idempotency_keys(self, api: Api) -> None:
        await put_resource(api)
        body = session_body(at(days_ahead(14), 10))
        key = {"Idempotency-Key": "schedule-once"}
        first = await api.post("/v1/sessions", body, headers=key)
        assert first.status_code == 201, first.text
        assert first.json()["id"].startswith("ss_")
        again = await api.post("/v1/sessions", body, headers=key)
        assert (again.status_code, again.json()) == (201, first.json())
        assert again.headers["idempotent-replayed"] == "true"
        assert len(await listing(api)) == 1

    @pytest.mark.parametrize(
        ("change", "path"),
        [
            ({"colour": "blue"}, "colour"),
            ({"end": "START"}, "end"),
            ({"end": "+25h"}, "end"),
            ({"start": "2030-01-01T10:00:00"}, "start"),
            ({"title": ""}, "title"),
            ({"max_seats": 0}, "max_seats"),
            ({"max_seats": 10_001}, "max_seats"),
            ({"hold_seconds": 0}, "hold_seconds"),
            ({"repeat": {"every": "day", "count": 2}}, "repeat.every"),
            ({"repeat": {"every": "week", "count": 53}}, "repeat.count"),
            ({"resource": "nowhere"}, "resource"),
            ({"start": "PAST"}, "start"),
            ({"metadata": {"blob": "x" * 5000}}, "metadata"),
        ],
    )
    async def test_invalid_sessions_are_refused_naming_the_field(
        self, api: Api, change: dict[str, Any], path: str
    ) -> None:
        await put_resource(api)
        start = at(days_ahead(14), 10)
        body = {**session_body(start), **change}
        if body["end"] == "START":
            body["end"] = iso(start)
        elif body["end"] == "+25h":
            body["end"] = iso(start + timedelta(hours=25))
        if body["start"] == "PAST":
            body["start"] = iso(datetime.now(UTC) - timedelta(hours=2))
            body["end"] = iso(datetime.now(UTC) - timedelta(hours=1))
        r = await api.put("/v1/sessions/class", body)
        details = error(r, 422, "validation_error")["details"]
        assert path in [e["path"] for e in details["errors"]], r.text
        assert await tenant_events(api, "%:ss:%") == 0

    async def test_bad_ids_keys_and_unknown_sessions(self, api: Api) -> None:
        await put_resource(api)
        body = session_body(at(days_ahead(14), 10))
        error(await api.put("/v1/sessions/bad%20id", body), 422, "validation_error")
        public = await api.client.put("/v1/sessions/class", json=body, headers=api.public)
        error(public, 403, "forbidden")
        error(await api.get("/v1/sessions/nope"), 404, "not_found")
        error(await api.post("/v1/sessions/nope/cancel", {}), 404, "not_found")
        error(await api.get("/v1/sessions", params={"status": "odd"}), 422, "validation_error")
        r = await api.get("/v1/sessions/nope", params={"include": "everything"})
        error(r, 422, "validation_error")
        await schedule(api, "class", at(days_ahead(14), 10))
        other = await api.new_tenant()
        error(await other.get("/v1/sessions/class"), 404, "not_found")
        assert await listing(other) == []


class TestSessionsOccupyTheirResource:
    async def test_a_session_hides_slots_refuses_bookings_and_is_refused_by_them(
        self, api: Api
    ) -> None:
        await put_resource(api)
        await put_service(api)
        day = days_ahead(14)

        async def starts() -> list[datetime]:
            r = await api.get(
                "/v1/availability",
                params={"service": "private", "from": day.isoformat(), "to": day.isoformat()},
                headers=api.public,
            )
            assert r.status_code == 200, r.text
            return [parse(s["start"]) for s in r.json()["data"]]

        assert at(day, 10) in await starts()
        await schedule(api, "class", at(day, 10))
        free = await starts()
        assert at(day, 10) not in free
        assert {at(day, 9), at(day, 11)} <= set(free)

        for start in (at(day, 10), at(day, 9, 30)):
            r = await api.post(
                "/v1/bookings",
                {"service": "private", "start": iso(start), "customer": MARTY, "confirm": True},
            )
            error(r, 409, "slot_unavailable")

        r = await api.post(
            "/v1/bookings",
            {"service": "private", "start": iso(at(day, 13)), "customer": MARTY, "confirm": True},
        )
        assert r.status_code == 201, r.text
        booking_id = r.json()["id"]

        clash = await api.put("/v1/sessions/clash", session_body(at(day, 12, 30)))
        refused = error(clash, 409, "slot_unavailable")
        assert refused["details"]["date"] == day.isoformat()
        assert refused["details"]["conflicting_booking"] == booking_id
        assert day.isoformat() in refused["message"] and booking_id in refused["message"]

        other = await api.put("/v1/sessions/other", session_body(at(day, 10, 30)))
        assert error(other, 409, "slot_unavailable")["details"]["conflicting_session"] == "class"

        # Back to back is fine, and so is outside the resource's bookable hours.
        await schedule(api, "after", at(day, 14))
        await schedule(api, "evening", at(day, 21))
        assert await tenant_events(api, "%:ss:clash") == 0

        # Cancelled, the session frees its time at once.
        r = await api.post("/v1/sessions/class/cancel", {})
        assert r.status_code == 200, r.text
        assert at(day, 10) in await starts()
        r = await api.post(
            "/v1/bookings",
            {"service": "private", "start": iso(at(day, 10)), "customer": MARTY, "confirm": True},
        )
        assert r.status_code == 201, r.text

    async def test_a_session_refuses_time_blocked_by_a_bookings_buffer(self, api: Api) -> None:
        await put_resource(api)
        await put_service(api, buffer_after_minutes=30)
        day = days_ahead(14)
        r = await api.post(
            "/v1/bookings",
            {"service": "private", "start": iso(at(day, 10)), "customer": MARTY, "confirm": True},
        )
        assert r.status_code == 201, r.text
        r = await api.put("/v1/sessions/class", session_body(at(day, 11)))
        error(r, 409, "slot_unavailable")
        await schedule(api, "later", at(day, 11, 30))


class TestWeeklySeries:
    async def test_ten_weeks_are_scheduled_in_one_request(self, api: Api) -> None:
        await put_resource(api)
        first = at(days_ahead(14), 18)
        r = await api.post(
            "/v1/sessions", {**session_body(first), "repeat": {"every": "week", "count": 10}}
        )
        assert r.status_code == 201, r.text
        series = r.json()
        assert len(series["data"]) == 10
        assert [s["id"] for s in series["data"]] == [
            f"{series['series_id']}-{k}" for k in range(1, 11)
        ]
        assert [parse(s["start"]) for s in series["data"]] == [
            first + timedelta(weeks=k) for k in range(10)
        ]
        listed = await listing(api, resource="studio")
        assert [s["id"] for s in listed] == [s["id"] for s in series["data"]]
        assert {s["series_id"] for s in listed} == {series["series_id"]}

        # Paging through the listing, and narrowing it by date.
        seen: list[str] = []
        params: dict[str, Any] = {"limit": 3}
        while True:
            r = await api.get("/v1/sessions", params=params, headers=api.public)
            page = r.json()
            seen += [s["id"] for s in page["data"]]
            if page["next_cursor"] is None:
                break
            params = {"limit": 3, "cursor": page["next_cursor"]}
        assert seen == [s["id"] for s in series["data"]]
        week3 = (first + timedelta(weeks=2)).date().isoformat()
        [only] = await listing(api, **{"from": week3, "to": week3})
        assert only["id"] == f"{series['series_id']}-3"

        # A series by client id: members '<id>-1' …
        r = await api.put(
            "/v1/sessions/mornings",
            {**session_body(at(days_ahead(14), 8)), "repeat": {"every": "week", "count": 2}},
        )
        assert r.status_code == 201, r.text
        r = await api.get("/v1/sessions/mornings-2")
        assert (r.status_code, r.json()["series_id"]) == (200, "mornings")

    async def test_one_week_taken_means_nothing_is_created_and_the_date_is_named(
        self, api: Api
    ) -> None:
        await put_resource(api)
        await put_service(api)
        first = at(days_ahead(14), 12)
        taken = first + timedelta(weeks=5)
        r = await api.post(
            "/v1/bookings",
            {"service": "private", "start": iso(taken), "customer": MARTY, "confirm": True},
        )
        assert r.status_code == 201, r.text
        before = await tenant_events(api)

        r = await api.post(
            "/v1/sessions", {**session_body(first), "repeat": {"every": "week", "count": 10}}
        )
        refused = error(r, 409, "slot_unavailable")
        assert refused["details"]["date"] == taken.date().isoformat()
        assert taken.date().isoformat() in refused["message"]
        assert await tenant_events(api) == before
        assert await tenant_events(api, "%:ss:%") == 0
        assert await listing(api) == []
        claims = await api.pool.fetchval(
            "SELECT count(*) FROM rm_busy WHERE tenant_id = $1 AND claim_id LIKE 'session:%'",
            api.tenant["tenant_id"],
        )
        assert claims == 0


class TestWindows:
    async def test_too_soon_or_too_far_ahead_is_outside_the_booking_window(self, api: Api) -> None:
        await put_resource(api)
        soon = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
        await schedule(api, "soon", soon, min_booking_notice_minutes=120)
        far = at(days_ahead(20), 10)
        await schedule(api, "far", far, max_advance_days=14)
        for sid in ("soon", "far"):
            r = await api.post(f"/v1/sessions/{sid}/bookings", {"seats": 1, "customer": MARTY})
            error(r, 409, "outside_booking_window")
        assert await seat_counts(api, "soon") == {"max": 10, "taken": 0, "held": 0, "left": 10}

    async def test_a_customer_may_not_cancel_inside_the_cutoff_but_the_owner_may(
        self, api: Api
    ) -> None:
        await put_resource(api)
        start = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=3)
        await schedule(
            api, "tonight", start, min_booking_notice_minutes=120, min_cancel_notice_minutes=1440
        )
        marty = await seats(api, "tonight", 2, MARTY, confirm=True)
        jennifer = await seats(api, "tonight", 1, JENNIFER, confirm=True)

        r = await api.post(f"/v1/bookings/{marty['id']}/cancel", {"by": "customer"})
        assert "cutoff" in error(r, 409, "cancel_window_closed")["details"]
        r = await api.post(
            f"/v1/bookings/{marty['id']}/cancel", {"by": "owner", "reason": "Doc said yes"}
        )
        assert (r.status_code, r.json()["status"]) == (200, "cancelled"), r.text

        r = await api.post("/v1/sessions/tonight/cancel", {"message": "Storm"})
        assert r.status_code == 200, r.text
        assert r.json()["cancelled_bookings"] == [jennifer["id"]]
        r = await api.get(f"/v1/bookings/{jennifer['id']}")
        assert (r.json()["status"], r.json()["reason"]) == ("cancelled", "Storm")
