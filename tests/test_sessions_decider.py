"""The session decisions (service.sessions), pure: given the facts in some streams, when a command
is decided, then exactly these events are appended per stream, or this error is raised.
No database, no clock."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from service import streams
from service.commands import AddSeats, CancelBooking, CancelSession, Command, ScheduleSessions
from service.decider import (
    Appends,
    Booking,
    DayLedger,
    SessionState,
    decide_add_seats,
    decide_booking,
    evolve_booking,
)
from service.errors import (
    ApiError,
    CancelWindowClosed,
    InvalidTransition,
    NotEnoughSeats,
    NotFound,
    OutsideBookingWindow,
    SlotUnavailable,
    ValidationFailed,
)
from service.events import (
    BookingCancelled,
    BookingConfirmed,
    BookingPolicy,
    Event,
    HoldExpired,
    ResourceUpserted,
    SeatsClaimed,
    SeatsHeld,
    SeatsReleased,
    SessionCancelled,
    SessionScheduled,
    SessionUpdated,
    TimeClaimed,
    TimeReleased,
)
from service.sessions import decide_cancel_session, decide_schedule, occurrences

T = "t1"
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
DAY = datetime(2026, 3, 16, tzinfo=UTC)  # two weeks after NOW, a Monday
HOUR = timedelta(hours=1)

Fact = tuple[str, Event]


def at(hour: int, minute: int = 0, *, days: int = 0) -> datetime:
    return DAY + timedelta(days=days, hours=hour, minutes=minute)


# ── facts ────────────────────────────────────────────────────────────────────


def resource(timezone: str = "UTC") -> Fact:
    return streams.resource(T, "studio"), ResourceUpserted(
        resource_id="studio", name="Studio", timezone=timezone, weekly={}, overrides={}, metadata={}
    )


def claimed(
    claim_id: str,
    start: datetime,
    end: datetime,
    *,
    block: tuple[datetime, datetime] | None = None,
    expires_at: datetime | None = None,
) -> list[Fact]:
    lo, hi = block or (start, end)
    return [
        (
            streams.resource_day(T, "studio", d),
            TimeClaimed(
                resource_id="studio",
                day=d.isoformat(),
                claim_id=claim_id,
                start=start,
                end=end,
                block_start=lo,
                block_end=hi,
                expires_at=expires_at,
            ),
        )
        for d in streams.utc_days(lo, hi)
    ]


def session_scheduled(sid: str = "yoga", start: datetime | None = None, **kw: Any) -> list[Fact]:
    start = start or at(10)
    event = SessionScheduled(
        **{
            "session_id": sid,
            "resource_id": "studio",
            "start": start,
            "end": start + HOUR,
            "title": "Yoga",
            "max_seats": 20,
            **kw,
        }
    )
    return [(streams.session(T, sid), event), *claimed(f"session:{sid}", event.start, event.end)]


def seat_booking(
    bid: str,
    seats: int,
    *,
    sid: str = "yoga",
    confirmed: bool = False,
    expires_at: datetime | None = None,
    cancel_notice: int = 0,
) -> list[Fact]:
    expiry = expires_at or NOW + timedelta(minutes=10)
    held = SeatsHeld(
        booking_id=bid,
        session_id=sid,
        resource_id="studio",
        seats=seats,
        start=at(10),
        end=at(11),
        expires_at=expiry,
        policy=BookingPolicy(min_cancel_notice_minutes=cancel_notice),
    )
    facts: list[Fact] = [(streams.booking(T, bid), held)]
    if confirmed:
        facts.append((streams.booking(T, bid), BookingConfirmed(booking_id=bid)))
    claim = SeatsClaimed(
        session_id=sid, booking_id=bid, seats=seats, expires_at=None if confirmed else expiry
    )
    facts.append((streams.session(T, sid), claim))
    return facts


def session_cancelled(sid: str = "yoga") -> list[Fact]:
    return [(streams.session(T, sid), SessionCancelled(session_id=sid))]


def updated(sid: str = "yoga", **kw: Any) -> list[Fact]:
    event = SessionUpdated(**{"session_id": sid, "title": "Yoga", "max_seats": 20, **kw})
    return [(streams.session(T, sid), event)]


# ── commands ─────────────────────────────────────────────────────────────────


def schedule(sid: str = "yoga", start: datetime | None = None, **kw: Any) -> ScheduleSessions:
    start = start or at(10)
    fields: dict[str, Any] = {
        "tenant": T,
        "now": NOW,
        "session_id": sid,
        "resource_id": "studio",
        "start": start,
        "end": start + HOUR,
        "title": "Yoga",
        "max_seats": 20,
        **kw,
    }
    return ScheduleSessions(**fields)


def cancel(sid: str = "yoga", message: str | None = "Storm", **kw: Any) -> CancelSession:
    return CancelSession(**{"tenant": T, "now": NOW, "session_id": sid, "message": message, **kw})


def add_seats(n: int, sid: str = "yoga", **kw: Any) -> AddSeats:
    fields = {"tenant": T, "now": NOW, "booking_id": "bk_new", "session_id": sid, "seats": n}
    return AddSeats(**{**fields, **kw})


# ── given / when / then ──────────────────────────────────────────────────────


class Then:
    def __init__(self, decide: Any) -> None:
        self.decide = decide

    def then(self, expected: Appends) -> None:
        assert self.decide() == expected

    def then_raises(self, error: type[ApiError]) -> ApiError:
        with pytest.raises(error) as caught:
            self.decide()
        return caught.value


class Given:
    def __init__(self, facts: Iterable[Fact]) -> None:
        self.by_stream: dict[str, list[Event]] = {}
        for stream_id, event in facts:
            self.by_stream.setdefault(stream_id, []).append(event)

    def _folded(
        self,
    ) -> tuple[
        dict[str, ResourceUpserted],
        dict[str, SessionState],
        dict[str, DayLedger],
        dict[str, Booking],
    ]:
        catalogue: dict[str, ResourceUpserted] = {}
        sessions: dict[str, SessionState] = {}
        ledgers: dict[str, DayLedger] = {}
        bookings: dict[str, Booking] = {}
        for stream_id, events in self.by_stream.items():
            kind = streams.kind_of(stream_id)
            key = stream_id.split(":", 2)[2]
            for e in events:
                if kind == "res" and isinstance(e, ResourceUpserted):
                    catalogue[e.resource_id] = e
                elif kind == "ss":
                    sessions.setdefault(key, SessionState()).evolve(e)  # type: ignore[arg-type]
                elif kind == "rd":
                    ledgers.setdefault(stream_id, DayLedger()).evolve(e)  # type: ignore[arg-type]
                elif kind == "bk":
                    b = evolve_booking(bookings.get(key), e)  # type: ignore[arg-type]
                    assert b is not None
                    bookings[key] = b
        return catalogue, sessions, ledgers, bookings

    def when(self, cmd: Command) -> Then:
        catalogue, sessions, ledgers, bookings = self._folded()

        def decide() -> Appends:
            match cmd:
                case ScheduleSessions():
                    return decide_schedule(cmd, catalogue.get(cmd.resource_id), sessions, ledgers)
                case CancelSession():
                    state = sessions.get(cmd.session_id, SessionState())
                    return decide_cancel_session(cmd, state, bookings)
                case AddSeats():
                    return decide_add_seats(cmd, sessions.get(cmd.session_id, SessionState()))
                case CancelBooking():
                    return decide_booking(cmd, bookings[cmd.booking_id])
            raise AssertionError(f"no decision for {cmd!r}")

        return Then(decide)


def given(*facts: Fact | list[Fact]) -> Given:
    flat: list[Fact] = []
    for f in facts:
        flat.extend(f if isinstance(f, list) else [f])
    return Given(flat)


def scheduling(sid: str, start: datetime, **kw: Any) -> Appends:
    """What scheduling `sid` at [start, start + 1 h) on a free studio appends."""
    out: Appends = {}
    for stream_id, event in session_scheduled(sid, start, **kw):
        out.setdefault(stream_id, []).append(event)
    return out


# ── scheduling ───────────────────────────────────────────────────────────────


class TestScheduling:
    def test_a_session_is_scheduled_and_claims_its_resource_day(self) -> None:
        given(resource()).when(schedule()).then(scheduling("yoga", at(10)))

    def test_a_session_across_midnight_claims_both_days(self) -> None:
        appends = given(resource()).when(schedule(start=at(23, 30))).decide()
        assert sorted(k for k in appends if ":rd:" in k) == [
            streams.resource_day(T, "studio", DAY.date()),
            streams.resource_day(T, "studio", DAY.date() + timedelta(days=1)),
        ]

    def test_an_unknown_resource_is_refused(self) -> None:
        given().when(schedule()).then_raises(ValidationFailed)

    @pytest.mark.parametrize(
        "change",
        [
            {"end": at(10)},
            {"end": at(9)},
            {"end": at(10) + timedelta(hours=24, minutes=1)},
            {"start": NOW - HOUR, "end": NOW},
            {"repeat_weeks": 53},
        ],
    )
    def test_impossible_times_are_refused(self, change: dict[str, Any]) -> None:
        given(resource()).when(schedule(**change)).then_raises(ValidationFailed)

    def test_outside_working_hours_is_allowed(self) -> None:
        # The studio has no working hours at all: classes are scheduled by the owner.
        given(resource()).when(schedule(start=at(22))).then(scheduling("yoga", at(22)))


class TestWhenTheResourceIsBusy:
    def test_an_overlapping_booking_refuses_the_session_naming_the_date(self) -> None:
        error = (
            given(resource(), claimed("bk_1", at(10, 30), at(11, 30)))
            .when(schedule())
            .then_raises(SlotUnavailable)
        )
        assert error.details["date"] == DAY.date().isoformat()
        assert error.details["conflicting_booking"] == "bk_1"
        assert DAY.date().isoformat() in error.message

    def test_another_session_refuses_it(self) -> None:
        error = (
            given(resource(), session_scheduled("pilates", at(9, 30)))
            .when(schedule())
            .then_raises(SlotUnavailable)
        )
        assert error.details["conflicting_session"] == "pilates"

    def test_a_bookings_buffer_refuses_it_but_back_to_back_is_fine(self) -> None:
        buffered = claimed("bk_1", at(8), at(9), block=(at(8), at(10, 15)))
        given(resource(), buffered).when(schedule()).then_raises(SlotUnavailable)
        given(resource(), claimed("bk_1", at(9), at(10))).when(schedule()).then(
            scheduling("yoga", at(10))
        )

    def test_an_expired_hold_blocks_nothing(self) -> None:
        lapsed = claimed("bk_1", at(10), at(11), expires_at=NOW - timedelta(seconds=1))
        appends = given(resource(), lapsed).when(schedule()).decide()
        assert (
            appends[streams.session(T, "yoga")][0]
            == scheduling("yoga", at(10))[streams.session(T, "yoga")][0]
        )

    def test_a_live_hold_blocks(self) -> None:
        live = claimed("bk_1", at(10), at(11), expires_at=NOW + timedelta(minutes=5))
        given(resource(), live).when(schedule()).then_raises(SlotUnavailable)


class TestReschedulingAnExistingSession:
    def test_identical_content_decides_nothing(self) -> None:
        given(resource(), session_scheduled()).when(schedule()).then({})

    def test_changed_details_are_one_session_update(self) -> None:
        given(resource(), session_scheduled()).when(
            schedule(title="Hot yoga", location="Room B", max_seats=25, hold_seconds=60)
        ).then(
            {
                streams.session(T, "yoga"): [
                    SessionUpdated(
                        session_id="yoga",
                        title="Hot yoga",
                        location="Room B",
                        max_seats=25,
                        hold_seconds=60,
                    )
                ]
            }
        )

    def test_max_seats_below_the_seats_in_use_is_refused(self) -> None:
        error = (
            given(
                resource(),
                session_scheduled(),
                seat_booking("bk_a", 3, confirmed=True),
                seat_booking("bk_b", 2),
            )
            .when(schedule(max_seats=4))
            .then_raises(NotEnoughSeats)
        )
        assert (error.details["seats_taken"], error.details["seats_held"]) == (3, 2)

    def test_lapsed_holds_do_not_hold_max_seats_up(self) -> None:
        given(
            resource(),
            session_scheduled(),
            seat_booking("bk_a", 3, confirmed=True),
            seat_booking("bk_b", 2, expires_at=NOW - timedelta(seconds=1)),
        ).when(schedule(max_seats=3)).then(
            {
                streams.session(T, "yoga"): [
                    SessionUpdated(session_id="yoga", title="Yoga", max_seats=3)
                ]
            }
        )

    def test_moving_a_session_is_refused(self) -> None:
        given(resource(), session_scheduled()).when(schedule(start=at(12))).then_raises(
            InvalidTransition
        )

    def test_a_cancelled_session_cannot_change(self) -> None:
        given(resource(), session_scheduled(), session_cancelled()).when(
            schedule(title="Back on")
        ).then_raises(InvalidTransition)


# ── series ───────────────────────────────────────────────────────────────────


class TestWeeklySeries:
    def test_every_week_is_scheduled_in_one_decision(self) -> None:
        appends = given(resource()).when(schedule("fri", repeat_weeks=3)).decide()
        sessions = [e for events in appends.values() for e in events]
        scheduled = [e for e in sessions if isinstance(e, SessionScheduled)]
        assert [(s.session_id, s.start, s.series_id) for s in scheduled] == [
            ("fri-1", at(10), "fri"),
            ("fri-2", at(10, days=7), "fri"),
            ("fri-3", at(10, days=14), "fri"),
        ]
        assert len([k for k in appends if ":rd:" in k]) == 3

    def test_one_taken_week_refuses_the_whole_series_naming_its_date(self) -> None:
        error = (
            given(resource(), claimed("bk_1", at(10, days=14), at(11, days=14)))
            .when(schedule("fri", repeat_weeks=4))
            .then_raises(SlotUnavailable)
        )
        assert error.details["date"] == (DAY + timedelta(days=14)).date().isoformat()
        assert error.details["session"] == "fri-3"

    def test_occurrences_keep_the_local_wall_time_across_daylight_saving(self) -> None:
        # Paris moves to summer time on 29 March 2026: 09:00 local is 08:00Z, then 07:00Z.
        first = datetime(2026, 3, 20, 8, 0, tzinfo=UTC)
        cmd = schedule("paris", start=first, repeat_weeks=3)
        assert [(o.start, o.end - o.start) for o in occurrences(cmd, "Europe/Paris")] == [
            (first, HOUR),
            (datetime(2026, 3, 27, 8, 0, tzinfo=UTC), HOUR),
            (datetime(2026, 4, 3, 7, 0, tzinfo=UTC), HOUR),
        ]

    def test_a_re_put_series_only_schedules_its_missing_weeks(self) -> None:
        appends = (
            given(resource(), session_scheduled("fri-1", at(10), series_id="fri"))
            .when(schedule("fri", repeat_weeks=2))
            .decide()
        )
        assert streams.session(T, "fri-1") not in appends
        assert streams.session(T, "fri-2") in appends


# ── owner cancel ─────────────────────────────────────────────────────────────


class TestOwnerCancel:
    def test_every_seat_is_released_active_bookings_cancelled_and_the_time_freed(self) -> None:
        given(
            resource(),
            session_scheduled(),
            seat_booking("bk_a", 2, confirmed=True),
            seat_booking("bk_b", 1),
            seat_booking("bk_c", 3, expires_at=NOW - timedelta(seconds=1)),
        ).when(cancel(message="Getting the DeLorean fixed")).then(
            {
                streams.session(T, "yoga"): [
                    SessionCancelled(session_id="yoga", message="Getting the DeLorean fixed"),
                    SeatsReleased(session_id="yoga", booking_id="bk_a"),
                    SeatsReleased(session_id="yoga", booking_id="bk_b"),
                    SeatsReleased(session_id="yoga", booking_id="bk_c"),
                ],
                streams.booking(T, "bk_a"): [
                    BookingCancelled(
                        booking_id="bk_a", by="owner", reason="Getting the DeLorean fixed"
                    )
                ],
                streams.booking(T, "bk_b"): [
                    BookingCancelled(
                        booking_id="bk_b", by="owner", reason="Getting the DeLorean fixed"
                    )
                ],
                streams.booking(T, "bk_c"): [HoldExpired(booking_id="bk_c", expired_at=NOW)],
                streams.resource_day(T, "studio", DAY.date()): [
                    TimeReleased(
                        resource_id="studio", day=DAY.date().isoformat(), claim_id="session:yoga"
                    )
                ],
            }
        )

    def test_the_owner_may_cancel_inside_the_customers_cut_off(self) -> None:
        late = NOW + timedelta(minutes=30)
        appends = (
            given(
                resource(),
                session_scheduled(start=at(10)),
                seat_booking("bk_a", 2, confirmed=True, cancel_notice=60 * 24 * 30),
            )
            .when(cancel(now=late))
            .decide()
        )
        assert appends[streams.booking(T, "bk_a")] == [
            BookingCancelled(booking_id="bk_a", by="owner", reason="Storm")
        ]

    def test_cancelling_twice_is_an_invalid_transition(self) -> None:
        given(resource(), session_scheduled(), session_cancelled()).when(cancel()).then_raises(
            InvalidTransition
        )

    def test_an_unknown_session_is_not_found(self) -> None:
        given(resource()).when(cancel("nope")).then_raises(NotFound)


# ── seats on a session (decider.decide_add_seats, with sessions' own facts) ──


class TestSeats:
    def test_a_raised_max_seats_applies_to_the_next_booking(self) -> None:
        appends = (
            given(
                session_scheduled(max_seats=2),
                seat_booking("bk_a", 2, confirmed=True),
                updated(max_seats=3),
            )
            .when(add_seats(1))
            .decide()
        )
        assert appends[streams.session(T, "yoga")] == [
            SeatsClaimed(
                session_id="yoga",
                booking_id="bk_new",
                seats=1,
                expires_at=NOW + timedelta(seconds=600),
            )
        ]

    def test_a_full_session_refuses_more_seats_naming_what_is_left(self) -> None:
        error = (
            given(session_scheduled(max_seats=20), seat_booking("bk_a", 2, confirmed=True))
            .when(add_seats(19))
            .then_raises(NotEnoughSeats)
        )
        assert error.details["seats_left"] == 18

    def test_a_cancelled_session_takes_no_seats(self) -> None:
        given(session_scheduled(), session_cancelled()).when(add_seats(1)).then_raises(
            InvalidTransition
        )

    @pytest.mark.parametrize(
        "window",
        [
            {"min_booking_notice_minutes": 60 * 24 * 15},
            {"max_advance_days": 7},
        ],
    )
    def test_too_soon_or_too_far_ahead_is_outside_the_booking_window(
        self, window: dict[str, Any]
    ) -> None:
        given(session_scheduled(**window)).when(add_seats(1)).then_raises(OutsideBookingWindow)

    def test_a_customer_may_not_cancel_inside_the_cut_off(self) -> None:
        cmd = CancelBooking(
            tenant=T, now=at(9), booking_id="bk_a", by="customer", reason="Double booked"
        )
        given(session_scheduled(), seat_booking("bk_a", 2, confirmed=True, cancel_notice=120)).when(
            cmd
        ).then_raises(CancelWindowClosed)
