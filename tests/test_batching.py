"""Group commit of seat bookings: concurrent requests for one session share appends, and each
still gets exactly its own answer and its own audit metadata."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.conftest import Api
from tests.helpers import WEEKDAYS_9_TO_5, at, hold, iso, resource, service, weekday_ahead


async def test_concurrent_seat_requests_share_commits_and_get_their_own_answers(
    api: Api,
) -> None:
    r = await api.put("/v1/resources/studio", {"name": "Studio", "weekly": WEEKDAYS_9_TO_5})
    assert r.status_code == 200
    day = weekday_ahead(1)
    r = await api.put(
        "/v1/sessions/yoga",
        {
            "resource": "studio",
            "start": iso(at(day, "10:00")),
            "end": iso(at(day, "11:00")),
            "title": "Yoga",
            "max_seats": 10,
        },
    )
    assert r.status_code in (200, 201), r.text

    async def book(n: int) -> tuple[int, str, str]:
        body: dict[str, object] = {"seats": 1, "customer": {"name": f"c{n}"}, "confirm": True}
        if n == 7:
            body = {"seats": 1, "confirm": True}  # no customer: refused on its own
        answer = await api.post(
            "/v1/sessions/yoga/bookings", body, headers={"X-Request-Id": f"req-{n}"}
        )
        return answer.status_code, answer.text, f"req-{n}"

    answers = await asyncio.gather(*(book(n) for n in range(30)))
    statuses = [s for s, _, _ in answers]
    assert statuses.count(201) == 10, statuses
    assert statuses.count(422) == 1
    assert statuses.count(409) == 19
    assert all('"not_enough_seats"' in text for s, text, _ in answers if s == 409)

    # Commits were shared: fewer transactions wrote the seat claims than there are bookings.
    transactions = await api.pool.fetchval(
        "SELECT count(DISTINCT transaction_id) FROM events WHERE type = 'SeatsClaimed'"
    )
    assert 1 <= transactions < 10

    # Each booking's own events carry its own request id.
    for status, text, request_id in answers:
        if status != 201:
            continue
        booking_id = json.loads(text)["id"]
        history = (await api.get(f"/v1/bookings/{booking_id}/history")).json()["events"]
        assert {e["request_id"] for e in history} == {request_id}
    listing = (await api.get("/v1/sessions/yoga")).json()
    assert listing["seats"]["taken"] == 10 and listing["seats"]["left"] == 0


async def test_concurrent_holds_share_commits_each_with_its_own_answer_and_metadata(
    api: Api,
) -> None:
    """Holds of one tenant sent together are decided together and committed together: holds on
    one resource's day see one another (eight distinct hours all succeed, ten on one hour give
    one 201), each answer is its own, and every event, the day ledgers' included, records the
    request that caused it."""
    day = weekday_ahead(2)
    for n in range(3):
        await resource(api, f"room{n}")
        await service(api, f"svc{n}", [f"room{n}"])
    wanted: list[tuple[str, str]] = [
        (f"svc{n}", f"{h:02d}:00") for n in (0, 1) for h in range(9, 17)
    ]  # 16 distinct hours: two rooms' whole days
    wanted += [("svc2", "10:00")] * 10  # one contested hour
    wanted += [("nope", "10:00")]  # a refusal of another kind in the same batches

    async def send(n: int, service_id: str, hhmm: str) -> tuple[int, dict[str, Any], str]:
        body = {"service": service_id, "start": iso(at(day, hhmm)), "customer": {"name": f"c{n}"}}
        r = await api.post("/v1/bookings", body, headers={"X-Request-Id": f"hold-{n}"})
        return r.status_code, r.json(), f"hold-{n}"

    answers = await asyncio.gather(*(send(n, s, h) for n, (s, h) in enumerate(wanted)))
    distinct, contested, unknown = answers[:16], answers[16:26], answers[26]
    assert [s for s, _, _ in distinct] == [201] * 16, distinct
    assert sorted(s for s, _, _ in contested) == [201] + [409] * 9
    assert all(b["error"]["code"] == "slot_unavailable" for s, b, _ in contested if s == 409)
    assert unknown[0] == 404 and unknown[1]["error"]["code"] == "not_found"
    won = [(b, rid) for s, b, rid in answers if s == 201]
    assert [b["start"] for b, _ in won[:16]] == [iso(at(day, h)) for _, h in wanted[:16]]
    assert len({b["id"] for b, _ in won}) == 17

    # Commits were shared: fewer transactions wrote the holds than there are holds.
    transactions = await api.pool.fetchval(
        "SELECT count(DISTINCT transaction_id) FROM events WHERE type = 'SlotHeld'"
    )
    assert 1 <= transactions < 17

    # Each booking's event and its claim on the day ledger carry its own request id, although
    # one append wrote the claims of several requests to one ledger stream.
    request_of = {b["id"]: rid for b, rid in won}
    rows = await api.pool.fetch(
        "SELECT type, coalesce(data->>'booking_id', data->>'claim_id') AS booking, "
        "metadata->>'request_id' AS request_id FROM events "
        "WHERE type IN ('SlotHeld', 'TimeClaimed')"
    )
    assert sorted(r["type"] for r in rows) == ["SlotHeld"] * 17 + ["TimeClaimed"] * 17
    assert all(r["request_id"] == request_of[r["booking"]] for r in rows), rows
    per_ledger = await api.pool.fetch(
        "SELECT stream_id, count(DISTINCT transaction_id) AS tx, count(*) AS n FROM events "
        "WHERE type = 'TimeClaimed' GROUP BY stream_id"
    )
    assert any(r["n"] > r["tx"] for r in per_ledger)  # a ledger took several claims at once


async def test_one_bad_hold_in_a_batch_fails_only_itself(api: Api) -> None:
    """Holds decided together are answered each on its own: a duration the service does not
    offer (422) and a start at the end of time (422, not a 500 from date arithmetic) refuse
    only their own request, never the batch."""
    day = weekday_ahead(3)
    await resource(api, "room")
    await service(api, "svc", ["room"])
    await hold(api, "svc", at(day, "09:00"))  # the service is now planned from memory

    async def send(start: str, **extra: Any) -> tuple[int, dict[str, Any]]:
        r = await api.post("/v1/bookings", {"service": "svc", "start": start, **extra})
        return r.status_code, r.json()

    good = [send(iso(at(day, f"{h:02d}:00"))) for h in range(10, 17)]
    bad = [
        send(iso(at(day, "09:00")), duration_minutes=45),
        send("9999-12-31T23:59:00Z"),
        send("0001-01-01T00:00:00Z"),
    ]
    answers = await asyncio.gather(*good, *bad)
    assert [s for s, _ in answers[: len(good)]] == [201] * len(good), answers
    for status, body in answers[len(good) :]:
        assert status == 422, body
        assert body["error"]["code"] == "validation_error"
    assert "45" in str(answers[len(good)][1]["error"])
    assert all("start" in str(body["error"]) for _, body in answers[len(good) + 1 :])


async def test_a_hold_is_decided_on_the_service_as_it_is_now(api: Api) -> None:
    """The process plans holds from the service it saw last; a duration the service offers only
    since an update is booked, not refused on the old plan."""
    day = weekday_ahead(3)
    await resource(api, "room")
    await service(api, "svc", ["room"])  # 60 minutes only
    await hold(api, "svc", at(day, "09:00"))  # remembered: durations [60]
    await service(api, "svc", ["room"], durations=[60, 90])
    booked = await hold(api, "svc", at(day, "11:00"), duration_minutes=90)
    assert booked["end"] == iso(at(day, "12:30"))


async def test_holds_arriving_together_are_shared_among_the_batches_in_flight(api: Api) -> None:
    """Holds that arrive together are split among the batches a process may have in flight
    (three), so that one is decided while another commits, rather than all going into the first
    batch while the others stay idle (the convoy the benchmark showed: every 64 requests in one
    batch, the worker idle while it committed). Here all 42 reach the batcher before any batch
    starts (nothing they need is left to read), so the first batch took all 42 before."""
    day = weekday_ahead(4)
    rooms = 6
    for n in range(rooms):
        await resource(api, f"room{n}")
        await service(api, f"svc{n}", [f"room{n}"])
        await hold(api, f"svc{n}", at(day, "16:00"))  # planned from memory from now on

    async def send(n: int) -> int:
        start = at(day, f"{9 + n // rooms:02d}:00")
        r = await api.post("/v1/bookings", {"service": f"svc{n % rooms}", "start": iso(start)})
        return r.status_code

    holds = rooms * 7  # every free hour of every room
    assert await asyncio.gather(*(send(n) for n in range(holds))) == [201] * holds
    sizes = [
        r[0]
        for r in await api.pool.fetch(
            "SELECT count(*) FROM events WHERE type = 'SlotHeld' AND data->>'start' < $1 "
            "GROUP BY transaction_id ORDER BY min(position)",
            iso(at(day, "16:00")),
        )
    ]
    assert sum(sizes) == holds
    assert max(sizes) <= -(-holds // 3), sizes
