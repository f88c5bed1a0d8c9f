"""Group commit of seat bookings: concurrent requests for one session share appends, and each
still gets exactly its own answer and its own audit metadata."""

from __future__ import annotations

import asyncio
import json
from datetime import date, datetime
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
    batch, the worker idle while it committed). Here all 42 (of 14 services on 3 days: 42
    affinities) reach the batcher before any batch starts (nothing they need is left to read),
    so the first batch took all 42 before."""
    rooms, days = 14, [weekday_ahead(n) for n in range(3)]
    await _rooms_with_services(api, rooms, days[0])
    holds = [(f"svc{n % rooms}", at(days[n // rooms], "10:00")) for n in range(rooms * 3)]
    answers = await asyncio.gather(*(_send(api, s, start) for s, start in holds))
    assert [status for status, _ in answers] == [201] * len(holds)
    sizes = await _batch_sizes(api, "10:00")
    assert sum(sizes) == len(holds)
    assert max(sizes) <= -(-len(holds) // 3), sizes


async def test_holds_that_may_compete_arriving_together_stay_in_one_batch(api: Api) -> None:
    """Sharing never splits the holds of one service on one day (one affinity) between batches in
    flight: they most likely claim the same day stream, and batches deciding it side by side
    would race to append it (the losers' batches retried). Twelve holds of one slot, sent among
    36 others, are decided in one batch: one wins, eleven get their 409 from its decision, and
    no append loses a race."""
    rooms, days = 12, [weekday_ahead(n) for n in range(3)]
    await _rooms_with_services(api, rooms, days[0])
    contested = at(days[0], "12:00")
    holds = [(f"svc{n % rooms}", at(days[n // rooms], "10:00")) for n in range(rooms * 3)]
    for n in range(12):  # every fourth request, from the first
        holds.insert(4 * n, ("svc0", contested))
    answers = await asyncio.gather(*(_send(api, s, start) for s, start in holds))
    statuses = [status for status, _ in answers]
    mine = [
        status for (s, start), status in zip(holds, statuses, strict=True) if start == contested
    ]
    assert sorted(mine) == [201] + [409] * 11, mine
    assert statuses.count(201) == 1 + rooms * 3
    assert len(await _batch_sizes(api, "10:00")) >= 3  # the others were shared out
    metrics = (await api.client.get("/metrics")).text
    assert "\nslotlog_version_conflicts_total 0.0\n" in metrics, metrics


async def _rooms_with_services(api: Api, rooms: int, day: date) -> None:
    for n in range(rooms):
        await resource(api, f"room{n}")
        await service(api, f"svc{n}", [f"room{n}"])
        await hold(api, f"svc{n}", at(day, "16:00"))  # planned from memory from now on


async def _send(api: Api, service_id: str, start: datetime) -> tuple[int, dict[str, Any]]:
    r = await api.post("/v1/bookings", {"service": service_id, "start": iso(start)})
    return r.status_code, r.json()


async def _batch_sizes(api: Api, hhmm: str) -> list[int]:
    """SlotHeld events at `hhmm` per transaction (one batch each), in commit order."""
    rows = await api.pool.fetch(
        "SELECT count(*) FROM events "
        "WHERE type = 'SlotHeld' AND substr(data->>'start', 12, 5) = $1 "
        "GROUP BY transaction_id ORDER BY min(position)",
        hhmm,
    )
    return [r[0] for r in rows]
