"""The booking rules as pure functions: given events, when a command, then events or a refusal.
No database, no clock."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import msgspec
import pytest

from service import streams
from service.commands import (
    CancelBooking,
    ConfirmBooking,
    ExpireHold,
    ExtendHold,
    HoldSlot,
    RescheduleBooking,
)
from service.decider import (
    Appends,
    Booking,
    DayLedger,
    decide_booking,
    decide_hold,
    evolve_booking,
)
from service.errors import (
    ApiError,
    CancelWindowClosed,
    HoldExpiredError,
    InvalidTransition,
    OutsideBookingWindow,
    SlotUnavailable,
    ValidationFailed,
)
from service.events import (
    AnyEvent,
    BookingCancelled,
    BookingConfirmed,
    Customer,
    HoldExpired,
    HoldExtended,
    ResourceUpserted,
    ServiceUpserted,
    SlotHeld,
    TimeClaimed,
    TimeReleased,
)

T = "t1"
NOW = datetime(2030, 1, 7, 8, 0, tzinfo=UTC)  # a Monday
NINE = datetime(2030, 1, 7, 9, 0, tzinfo=UTC)
HOST = ResourceUpserted(
    resource_id="host",
    name="Host",
    timezone="UTC",
    weekly={"mon": [("09:00", "17:00")]},
    overrides={},
    metadata={},
)


def svc(**kw: Any) -> ServiceUpserted:
    base: dict[str, Any] = {
        "service_id": "s",
        "name": "S",
        "durations": [60],
        "slot_interval_minutes": 60,
        "resources": ["host"],
    }
    return ServiceUpserted(**{**base, **kw})


def ledger_stream(day: datetime = NINE) -> str:
    return streams.resource_day(T, "host", day.date())


@dataclass
class Scenario:
    service: ServiceUpserted = field(default_factory=svc)
    ledger: DayLedger = field(default_factory=DayLedger)
    booking: Booking | None = None
    result: Appends | None = None
    error: ApiError | None = None
    host: ResourceUpserted = HOST

    def when_hold(self, start: datetime = NINE, now: datetime = NOW, **kw: Any) -> Scenario:
        cmd = HoldSlot(tenant=T, now=now, booking_id="b1", service_id="s", start=start, **kw)
        try:
            self.result = decide_hold(
                cmd, self.service, {"host": self.host}, {ledger_stream(): self.ledger}
            )
            self._apply()
        except ApiError as exc:
            self.error = exc
        return self

    def when(self, cmd: Any) -> Scenario:
        assert self.booking is not None
        self.result, self.error = None, None
        try:
            self.result = decide_booking(
                cmd,
                self.booking,
                service=self.service,
                catalogue={"host": self.host},
                ledgers={ledger_stream(): self.ledger},
            )
            self._apply()
        except ApiError as exc:
            self.error = exc
        return self

    def _apply(self) -> None:
        assert self.result is not None
        for stream_id, events in self.result.items():
            for e in events:
                if streams.kind_of(stream_id) == "bk":
                    self.booking = evolve_booking(self.booking, cast(AnyEvent, e))
                elif stream_id == ledger_stream():
                    self.ledger.evolve(cast(AnyEvent, e))

    def events(self, kind: str) -> list[AnyEvent]:
        assert self.error is None, self.error
        assert self.result is not None
        return [e for s, es in self.result.items() if streams.kind_of(s) == kind for e in es]  # type: ignore[misc]

    def claimed(self) -> list[TimeClaimed]:
        return [e for e in self.events("rd") if isinstance(e, TimeClaimed)]

    def then(self, *types: type) -> Scenario:
        assert [type(e) for e in self.events("bk")] == list(types)
        return self

    def then_raises(self, kind: type[ApiError]) -> ApiError:
        assert isinstance(self.error, kind), self.error
        return self.error


def given(
    *, service: ServiceUpserted | None = None, claims: Sequence[TimeClaimed] = ()
) -> Scenario:
    s = Scenario(service=service or svc())
    for c in claims:
        s.ledger.evolve(c)
    return s


def claim(start: datetime, minutes: int = 60, *, expires_at: datetime | None = None) -> TimeClaimed:
    return TimeClaimed(
        resource_id="host",
        day=start.date().isoformat(),
        claim_id=f"other-{start.isoformat()}",
        start=start,
        end=start + timedelta(minutes=minutes),
        block_start=start,
        block_end=start + timedelta(minutes=minutes),
        expires_at=expires_at,
    )


class TestDayLedger:
    def test_busy_entries_follow_every_claim_and_release_whatever_the_ledger_came_from(
        self,
    ) -> None:
        nine, ten = claim(NINE), claim(NINE + timedelta(hours=1))
        given_claims = DayLedger({nine.claim_id: nine})  # built, not folded
        assert [(b.start, b.end) for b in given_claims.busy_map().values()] == [
            (nine.start, nine.end)
        ]
        folded = DayLedger()
        folded.evolve(nine)
        assert list(folded.busy_map()) == [nine.claim_id]
        later = folded.copy()
        later.evolve(ten)
        later.evolve(TimeReleased(resource_id="host", day=nine.day, claim_id=nine.claim_id))
        assert list(later.busy_map()) == [ten.claim_id]
        assert list(folded.busy_map()) == [nine.claim_id]  # the copy left it alone
        moved = msgspec.structs.replace(ten, start=ten.start + timedelta(minutes=30))
        later.evolve(moved)  # a claim replaced (reschedule) is rebuilt
        assert [b.start for b in later.busy_map().values()] == [moved.start]


class TestHolding:
    def test_a_free_slot_is_held_and_claimed_until_expiry(self) -> None:
        s = given().when_hold().then(SlotHeld)
        (claimed,) = s.claimed()
        assert claimed.expires_at == NOW + timedelta(seconds=600)
        assert s.booking is not None and s.booking.status == "held"
        assert s.booking.resources == ["host"]

    def test_a_taken_slot_is_refused(self) -> None:
        given(claims=[claim(NINE)]).when_hold().then_raises(SlotUnavailable)

    def test_an_expired_claim_blocks_nothing(self) -> None:
        s = given(claims=[claim(NINE, expires_at=NOW)]).when_hold()
        assert s.error is None

    def test_outside_working_hours_is_refused(self) -> None:
        given().when_hold(start=NINE + timedelta(hours=8)).then_raises(SlotUnavailable)

    def test_too_soon_is_outside_the_booking_window(self) -> None:
        given(service=svc(min_notice_minutes=120)).when_hold().then_raises(OutsideBookingWindow)

    def test_a_duration_the_service_does_not_offer_is_invalid(self) -> None:
        given().when_hold(duration_minutes=45).then_raises(ValidationFailed)

    def test_one_step_booking_needs_a_customer(self) -> None:
        given().when_hold(confirm=True).then_raises(ValidationFailed)
        s = given().when_hold(confirm=True, customer=Customer(name="C"))
        assert [type(e).__name__ for e in s.events("bk")] == ["SlotHeld", "BookingConfirmed"]
        assert s.claimed()[0].expires_at is None

    def test_buffers_claim_the_neighbouring_day_when_they_cross_midnight(self) -> None:
        s = given(service=svc(buffer_after_minutes=120))
        s.host = ResourceUpserted(
            resource_id="host",
            name="Late",
            timezone="UTC",
            weekly={"mon": [("20:00", "24:00")]},
            overrides={},
            metadata={},
        )
        s.when_hold(start=NINE.replace(hour=22))
        assert {c.day for c in s.claimed()} == {"2030-01-07", "2030-01-08"}
        assert all(c.block_end == NINE.replace(day=8, hour=1) for c in s.claimed())


class TestLifecycle:
    def held(self, **service: Any) -> Scenario:
        s = given(service=svc(**service)).when_hold(customer=Customer(name="C"))
        assert s.error is None
        return s

    def test_confirm_turns_the_claim_permanent(self) -> None:
        s = self.held().when(ConfirmBooking(tenant=T, now=NOW, booking_id="b1"))
        s.then(BookingConfirmed)
        assert s.claimed()[0].expires_at is None

    def test_confirming_after_expiry_is_refused(self) -> None:
        late = NOW + timedelta(seconds=601)
        s = self.held().when(ConfirmBooking(tenant=T, now=late, booking_id="b1"))
        s.then_raises(HoldExpiredError)

    def test_confirming_twice_is_an_invalid_transition(self) -> None:
        s = self.held().when(ConfirmBooking(tenant=T, now=NOW, booking_id="b1"))
        err = s.when(ConfirmBooking(tenant=T, now=NOW, booking_id="b1")).then_raises(
            InvalidTransition
        )
        assert err.details["status"] == "confirmed"

    def test_cancel_releases_the_time(self) -> None:
        s = self.held().when(CancelBooking(tenant=T, now=NOW, booking_id="b1"))
        s.then(BookingCancelled)
        assert [type(e) for e in s.events("rd")] == [TimeReleased]
        assert s.ledger.claims == {}

    def test_customer_cancel_inside_the_cutoff_is_refused_but_owner_may(self) -> None:
        s = self.held(min_cancel_notice_minutes=120)
        s.when(CancelBooking(tenant=T, now=NOW, booking_id="b1", by="customer")).then_raises(
            CancelWindowClosed
        )
        s.when(CancelBooking(tenant=T, now=NOW, booking_id="b1", by="owner")).then(BookingCancelled)

    def test_expire_only_acts_on_an_expired_hold(self) -> None:
        s = self.held()
        assert s.when(ExpireHold(tenant=T, now=NOW, booking_id="b1")).result == {}
        late = NOW + timedelta(seconds=600)
        s.when(ExpireHold(tenant=T, now=late, booking_id="b1")).then(HoldExpired)

    def test_extend_is_bounded_by_the_hold_length(self) -> None:
        s = self.held(hold_seconds=300)
        s.when(ExtendHold(tenant=T, now=NOW, booking_id="b1", seconds=301)).then_raises(
            ValidationFailed
        )
        s.when(ExtendHold(tenant=T, now=NOW, booking_id="b1", seconds=300)).then(HoldExtended)
        assert s.booking is not None
        assert s.booking.expires_at == NOW + timedelta(seconds=600)

    def test_extending_a_booking_that_is_not_held_is_refused_by_its_state_first(self) -> None:
        s = self.held(hold_seconds=300)
        s.when(ConfirmBooking(tenant=T, now=NOW, booking_id="b1")).then(BookingConfirmed)
        s.when(ExtendHold(tenant=T, now=NOW, booking_id="b1", seconds=10_000)).then_raises(
            InvalidTransition
        )

    def test_reschedule_releases_nothing_it_reclaims_on_the_same_day(self) -> None:
        s = self.held()
        s.when(
            RescheduleBooking(tenant=T, now=NOW, booking_id="b1", start=NINE + timedelta(hours=2))
        )
        assert s.error is None
        assert [type(e) for e in s.events("rd")] == [TimeClaimed]
        assert s.booking is not None and s.booking.start == NINE + timedelta(hours=2)
        assert s.booking.status == "held"

    @pytest.mark.parametrize("hour", [7, 17])
    def test_reschedule_outside_hours_is_refused(self, hour: int) -> None:
        # The next day: 07:00 today would be refused as already past (NOW is 08:00).
        start = (NINE + timedelta(days=1)).replace(hour=hour)
        s = self.held().when(RescheduleBooking(tenant=T, now=NOW, booking_id="b1", start=start))
        assert isinstance(s.error, SlotUnavailable)
