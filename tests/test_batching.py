"""Group commit of seat bookings: concurrent requests for one session share appends, and each
still gets exactly its own answer and its own audit metadata."""

from __future__ import annotations

import asyncio
import json

from tests.conftest import Api
from tests.helpers import WEEKDAYS_9_TO_5, at, iso, weekday_ahead


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
