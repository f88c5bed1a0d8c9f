"""A Hypothesis state machine drives random command sequences through HTTP against a real server
and checks the invariants of SPEC §2 after every step:

1. active bookings never overlap on a resource (buffers included, as the spec defines them);
2. the active seats of a session never exceed its max_seats;
4. every acknowledged booking is there, with the status the model expects;
7. a retried command with the same Idempotency-Key has its effect once.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
    run_state_machine_as_test,
)

from tests.helpers import at, iso, parse, weekday_ahead
from tests.processes import serve

SECRET = "sk_stateful_secret_key"
AUTH = {"Authorization": f"Bearer {SECRET}"}
DAY = weekday_ahead(0, weeks=3)
BUFFER = timedelta(minutes=15)
ACTIVE = {"held", "pending", "confirmed"}


@pytest.fixture(scope="module")
def base_url(module_database_url: str) -> Iterator[str]:
    env = {"DATABASE_URL": module_database_url, "SLOTLOG_BOOTSTRAP_SECRET_KEY": SECRET}
    with serve(env, workers=2) as (base, _):
        yield base


class Bookings(RuleBasedStateMachine):
    """One run: a fresh resource pair, two services (one with buffers), one session."""

    client: httpx.Client
    run_ids = itertools.count()
    booking = Bundle("booking")

    def __init__(self) -> None:
        super().__init__()
        self.prefix = f"m{next(self.run_ids)}-{uuid.uuid4().hex[:6]}"
        self.r1 = f"{self.prefix}-r1"
        self.r2 = f"{self.prefix}-r2"
        hours = {"weekly": {d: [["08:00", "18:00"]] for d in ("mon", "tue", "wed", "thu", "fri")}}
        for rid in (self.r1, self.r2):
            self.ok(self.client.put(f"/v1/resources/{rid}", json={"name": rid, **hours}))
        self.plain = f"{self.prefix}-plain"
        self.buffered = f"{self.prefix}-buf"
        self.ok(
            self.client.put(
                f"/v1/services/{self.plain}",
                json={
                    "name": "plain",
                    "durations": [30, 60, 90],
                    "duration_minutes": 30,
                    "slot_interval_minutes": 15,
                    "resources": [self.r1, self.r2],
                },
            )
        )
        self.ok(
            self.client.put(
                f"/v1/services/{self.buffered}",
                json={
                    "name": "buffered",
                    "duration_minutes": 45,
                    "buffer_before_minutes": 15,
                    "buffer_after_minutes": 15,
                    "resources": [self.r1],
                    "requires_confirmation": True,
                },
            )
        )
        self.session = f"{self.prefix}-class"
        self.ok(
            self.client.put(
                f"/v1/sessions/{self.session}",
                json={
                    "resource": self.r2,
                    "start": iso(at(DAY, "17:00")),
                    "end": iso(at(DAY, "18:00")),
                    "title": "Class",
                    "max_seats": 3,
                },
            )
        )
        self.model: dict[str, str] = {}  # acknowledged booking id -> expected status

    @staticmethod
    def ok(r: httpx.Response) -> dict[str, Any]:
        assert r.status_code < 300, r.text
        return dict(r.json())

    def answer(self, r: httpx.Response, allowed: set[int]) -> dict[str, Any] | None:
        assert r.status_code < 500, r.text
        assert r.status_code in allowed, r.text
        return dict(r.json()) if r.status_code < 300 else None

    # ── rules ──────────────────────────────────────────────────────────────

    @rule(
        target=booking,
        service=st.sampled_from(["plain", "buffered"]),
        quarter=st.integers(0, 40),
        duration=st.sampled_from([30, 60, 90]),
        confirm=st.booleans(),
        retry=st.booleans(),
    )
    def hold(self, service: str, quarter: int, duration: int, confirm: bool, retry: bool) -> str:
        sid = self.plain if service == "plain" else self.buffered
        start = at(DAY, "08:00") + timedelta(minutes=15 * quarter)
        body: dict[str, Any] = {"service": sid, "start": iso(start), "customer": {"name": "c"}}
        if service == "plain":
            body["duration_minutes"] = duration
        if confirm:
            body["confirm"] = True
        headers = {"Idempotency-Key": uuid.uuid4().hex} if retry else {}
        r = self.client.post("/v1/bookings", json=body, headers=headers)
        got = self.answer(r, {201, 409})
        if got is None:
            return ""
        if retry:
            again = self.client.post("/v1/bookings", json=body, headers=headers)
            assert again.status_code == 201 and again.json()["id"] == got["id"]
            assert again.headers["idempotent-replayed"] == "true"
        self.model[got["id"]] = got["status"]
        return str(got["id"])

    @rule(target=booking, seats=st.integers(1, 3), confirm=st.booleans())
    def take_seats(self, seats: int, confirm: bool) -> str:
        r = self.client.post(
            f"/v1/sessions/{self.session}/bookings",
            json={"seats": seats, "customer": {"name": "s"}, "confirm": confirm},
        )
        got = self.answer(r, {201, 409})
        if got is None:
            assert r.json()["error"]["code"] == "not_enough_seats"
            return ""
        self.model[got["id"]] = got["status"]
        return str(got["id"])

    def act(self, booking_id: str, action: str, body: dict[str, Any]) -> None:
        if not booking_id:
            return
        r = self.client.post(f"/v1/bookings/{booking_id}/{action}", json=body)
        got = self.answer(r, {200, 409, 422})
        if got is not None:
            self.model[booking_id] = got["status"]

    @rule(booking_id=booking)
    def confirm(self, booking_id: str) -> None:
        self.act(booking_id, "confirm", {})

    @rule(booking_id=booking, approve=st.booleans())
    def decide(self, booking_id: str, approve: bool) -> None:
        self.act(booking_id, "approve" if approve else "reject", {})

    @rule(booking_id=consumes(booking))
    def cancel(self, booking_id: str) -> None:
        self.act(booking_id, "cancel", {"reason": "r"})

    @rule(booking_id=booking, quarter=st.integers(0, 40))
    def reschedule(self, booking_id: str, quarter: int) -> None:
        start = at(DAY, "08:00") + timedelta(minutes=15 * quarter)
        self.act(booking_id, "reschedule", {"start": iso(start)})

    @rule(booking_id=booking)
    def extend(self, booking_id: str) -> None:
        self.act(booking_id, "extend", {"seconds": 60})

    # ── invariants ─────────────────────────────────────────────────────────

    def listed(self, **params: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cursor = None
        while True:
            query = {**params, "limit": "200", **({"cursor": cursor} if cursor else {})}
            page = self.ok(self.client.get("/v1/bookings", params=query))
            out += page["data"]
            if not (cursor := page["next_cursor"]):
                return out

    def blocked(self, b: dict[str, Any]) -> tuple[datetime, datetime]:
        pad = BUFFER if b["service"] == self.buffered else timedelta(0)
        return parse(b["start"]) - pad, parse(b["end"]) + pad

    @invariant()
    def no_two_active_bookings_overlap(self) -> None:
        for resource in (self.r1, self.r2):
            active = [b for b in self.listed(resource=resource) if b["status"] in ACTIVE]
            for a, b in itertools.combinations(active, 2):
                if a["kind"] == b["kind"] == "seat":
                    continue  # seats share their session's time by design
                a_lo, a_hi = self.blocked(a)
                b_lo, b_hi = self.blocked(b)
                own_a = (parse(a["start"]), parse(a["end"]))
                own_b = (parse(b["start"]), parse(b["end"]))
                assert not (a_lo < own_b[1] and own_b[0] < a_hi), (a, b)
                assert not (b_lo < own_a[1] and own_a[0] < b_hi), (a, b)

    @invariant()
    def seats_never_exceed_the_maximum(self) -> None:
        seats = [b for b in self.listed(session=self.session) if b["status"] in ACTIVE]
        assert sum(b["seats"] for b in seats) <= 3
        listing = self.ok(self.client.get(f"/v1/sessions/{self.session}"))
        assert listing["seats"]["taken"] + listing["seats"]["held"] <= 3

    @invariant()
    def every_acknowledged_booking_is_there_as_expected(self) -> None:
        for booking_id, status in self.model.items():
            got = self.ok(self.client.get(f"/v1/bookings/{booking_id}"))
            assert got["status"] == status, (booking_id, got)


@pytest.mark.slow
def test_random_command_sequences_keep_the_invariants(base_url: str) -> None:
    with httpx.Client(base_url=base_url, headers=AUTH, timeout=30) as client:
        Bookings.client = client
        run_state_machine_as_test(
            Bookings,
            settings=settings(
                max_examples=12,
                stateful_step_count=15,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
            ),
        )
