"""Slot computation (service.availability): pure tests, no database, no clock."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from typing import Literal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.availability import (
    WEEKDAYS,
    Busy,
    Calendar,
    Slot,
    SlotRules,
    choose_resource,
    compute_slots,
    in_booking_window,
    is_free,
    validate_hours,
    within_hours,
    working_windows,
)

Hours = dict[str, list[tuple[str, str]]]

QUARTER = timedelta(minutes=15)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
NINE_TO_FIVE_WEEKDAYS: Hours = {day: [("09:00", "17:00")] for day in WEEKDAYS[:5]}
EVERY_DAY_NINE_TO_FIVE: Hours = {day: [("09:00", "17:00")] for day in WEEKDAYS}
# Long before every date used below, so that notice and horizon never get in the way.
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def minutes(count: int) -> timedelta:
    return timedelta(minutes=count)


def calendar(
    resource_id: str = "r1",
    timezone: str = "UTC",
    weekly: Hours | None = None,
    overrides: Hours | None = None,
    busy: Sequence[Busy] = (),
) -> Calendar:
    return Calendar(
        resource_id=resource_id,
        timezone=timezone,
        weekly=EVERY_DAY_NINE_TO_FIVE if weekly is None else weekly,
        overrides={} if overrides is None else overrides,
        busy=busy,
    )


def slot_rules(
    duration: int = 60,
    interval: int | None = None,
    *,
    before: int = 0,
    after: int = 0,
    notice: int = 0,
    advance: timedelta | None = None,
) -> SlotRules:
    return SlotRules(
        duration=minutes(duration),
        interval=minutes(duration if interval is None else interval),
        buffer_before=minutes(before),
        buffer_after=minutes(after),
        min_notice=minutes(notice),
        max_advance=advance,
    )


def booking(
    start: datetime,
    end: datetime,
    *,
    before: int = 0,
    after: int = 0,
    expires_at: datetime | None = None,
) -> Busy:
    return Busy(start, end, start - minutes(before), end + minutes(after), expires_at)


def starts(slots: Sequence[Slot]) -> list[datetime]:
    return [slot.start for slot in slots]


def day_slots(
    calendars: Sequence[Calendar] | Calendar,
    day: date,
    rules: SlotRules | None = None,
    *,
    now: datetime = NOW,
    assignment: Literal["any", "all"] = "all",
) -> list[Slot]:
    """The slots starting on one UTC day."""
    cals = [calendars] if isinstance(calendars, Calendar) else list(calendars)
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return compute_slots(
        cals, slot_rules() if rules is None else rules, start, start + DAY, now, assignment
    )


# --------------------------------------------------------------------------------------------
# Time zones and daylight saving
# --------------------------------------------------------------------------------------------


class TestDaylightSaving:
    paris = calendar(timezone="Europe/Paris", weekly=NINE_TO_FIVE_WEEKDAYS)
    new_york = calendar(timezone="America/New_York", weekly=NINE_TO_FIVE_WEEKDAYS)

    def test_paris_nine_am_is_0800z_before_the_march_change(self) -> None:
        slots = day_slots(self.paris, date(2026, 3, 27))  # Friday
        assert slots[0].start == at(2026, 3, 27, 8)
        assert slots[-1].end == at(2026, 3, 27, 16)
        assert len(slots) == 8

    def test_paris_nine_am_is_0700z_after_the_march_change(self) -> None:
        slots = day_slots(self.paris, date(2026, 3, 30))  # Monday after Sunday 29 March
        assert slots[0].start == at(2026, 3, 30, 7)
        assert slots[-1].end == at(2026, 3, 30, 15)
        assert len(slots) == 8

    def test_paris_nine_am_is_0700z_before_the_october_change(self) -> None:
        assert day_slots(self.paris, date(2026, 10, 23))[0].start == at(2026, 10, 23, 7)

    def test_paris_nine_am_is_0800z_after_the_october_change(self) -> None:
        # The clocks go back on Sunday 25 October.
        assert day_slots(self.paris, date(2026, 10, 26))[0].start == at(2026, 10, 26, 8)

    def test_new_york_nine_am_moves_from_1400z_to_1300z_on_8_march(self) -> None:
        assert day_slots(self.new_york, date(2026, 3, 6))[0].start == at(2026, 3, 6, 14)
        assert day_slots(self.new_york, date(2026, 3, 9))[0].start == at(2026, 3, 9, 13)

    def test_new_york_nine_am_moves_back_to_1400z_after_1_november(self) -> None:
        assert day_slots(self.new_york, date(2026, 10, 30))[0].start == at(2026, 10, 30, 13)
        assert day_slots(self.new_york, date(2026, 11, 2))[0].start == at(2026, 11, 2, 14)

    def test_a_week_across_the_change_offers_eight_slots_each_weekday(self) -> None:
        slots = compute_slots(
            [self.paris], slot_rules(), at(2026, 3, 23), at(2026, 4, 4), NOW, "all"
        )
        per_day: dict[date, int] = {}
        for slot in slots:
            per_day[slot.start.date()] = per_day.get(slot.start.date(), 0) + 1
        assert set(per_day.values()) == {8}
        assert len(per_day) == 10

    def test_a_half_hour_offset_zone_opens_at_0330z(self) -> None:
        kolkata = calendar(timezone="Asia/Kolkata")
        assert day_slots(kolkata, date(2026, 6, 1))[0].start == at(2026, 6, 1, 3, 30)

    def test_a_wall_time_in_the_spring_gap_maps_forward_to_the_end_of_the_gap(self) -> None:
        # 02:30 does not exist in Paris on 29 March 2026: it is treated as 03:00 CEST (01:00Z).
        cal = calendar(
            timezone="Europe/Paris", weekly={}, overrides={"2026-03-29": [("02:30", "05:00")]}
        )
        windows = working_windows(cal, at(2026, 3, 29), at(2026, 3, 30))
        assert windows == [(at(2026, 3, 29, 1), at(2026, 3, 29, 3))]

    def test_a_wall_time_in_the_repeated_hour_takes_its_first_occurrence(self) -> None:
        # 02:30 happens twice in Paris on 25 October 2026; the first one is 02:30 CEST (00:30Z).
        cal = calendar(
            timezone="Europe/Paris", weekly={}, overrides={"2026-10-25": [("02:30", "04:00")]}
        )
        windows = working_windows(cal, at(2026, 10, 25), at(2026, 10, 26))
        assert windows == [(at(2026, 10, 25, 0, 30), at(2026, 10, 25, 3))]

    def test_the_autumn_change_day_lasts_twenty_five_hours(self) -> None:
        cal = calendar(
            timezone="Europe/Paris", weekly={}, overrides={"2026-10-25": [("00:00", "24:00")]}
        )
        windows = working_windows(cal, at(2026, 10, 24), at(2026, 10, 27))
        assert windows == [(at(2026, 10, 24, 22), at(2026, 10, 25, 23))]

    def test_the_spring_change_day_lasts_twenty_three_hours(self) -> None:
        cal = calendar(
            timezone="Europe/Paris", weekly={}, overrides={"2026-03-29": [("00:00", "24:00")]}
        )
        windows = working_windows(cal, at(2026, 3, 28), at(2026, 3, 31))
        assert windows == [(at(2026, 3, 28, 23), at(2026, 3, 29, 22))]

    def test_a_skipped_midnight_starts_the_day_at_the_end_of_the_gap(self) -> None:
        # Santiago skips 00:00-01:00 on 6 September 2026; the day begins at 01:00 -03 (04:00Z).
        cal = calendar(
            timezone="America/Santiago", weekly={}, overrides={"2026-09-06": [("00:00", "24:00")]}
        )
        windows = working_windows(cal, at(2026, 9, 5), at(2026, 9, 8))
        assert windows == [(at(2026, 9, 6, 4), at(2026, 9, 7, 3))]

    def test_slots_across_the_autumn_change_are_not_doubled(self) -> None:
        cal = calendar(
            timezone="Europe/Paris", weekly={}, overrides={"2026-10-25": [("01:00", "04:00")]}
        )
        slots = day_slots(cal, date(2026, 10, 24)) + day_slots(cal, date(2026, 10, 25))
        # 01:00 CEST (23:00Z) to 04:00 CET (03:00Z) is four real hours.
        assert starts(slots) == [at(2026, 10, 24, 23)] + [at(2026, 10, 25, h) for h in (0, 1, 2)]

    def test_busy_entries_in_local_time_are_ordered_by_real_time_across_the_fall_back(
        self,
    ) -> None:
        # 02:45 CEST (00:45Z) comes before the second 02:10, in CET (01:10Z), although its wall
        # time is later: two datetimes in one ZoneInfo compare by wall clock, so the module must
        # not compare them as given.
        paris = ZoneInfo("Europe/Paris")
        block_start = datetime(2026, 10, 25, 2, 45, tzinfo=paris)
        start = datetime(2026, 10, 25, 2, 10, fold=1, tzinfo=paris)
        end = datetime(2026, 10, 25, 3, 10, tzinfo=paris)  # 02:10Z
        entry = Busy(start, end, block_start, end)
        cal = calendar(busy=[entry], weekly={"sun": [("00:00", "04:00")]})
        offered = starts(day_slots(cal, date(2026, 10, 25), slot_rules(30)))
        # Own time 01:10-02:10Z, blocked from 00:45Z: 00:00-00:30Z and from 02:30Z on.
        assert offered == [
            at(2026, 10, 25, 0),
            at(2026, 10, 25, 2, 30),
            at(2026, 10, 25, 3),
            at(2026, 10, 25, 3, 30),
        ]
        assert not is_free([entry], at(2026, 10, 25, 0, 30), at(2026, 10, 25, 1), slot_rules(), NOW)

    def test_busy_entries_in_local_time_are_indexed_by_real_time_across_the_fall_back(
        self,
    ) -> None:
        paris = ZoneInfo("Europe/Paris")
        # 02:45-02:55 CEST is 00:45-00:55Z; the second 02:10-02:20 (CET) is 01:10-01:20Z.
        first = Busy(*[datetime(2026, 10, 25, 2, m, tzinfo=paris) for m in (45, 55, 45, 55)])
        second = Busy(
            *[datetime(2026, 10, 25, 2, m, fold=1, tzinfo=paris) for m in (10, 20, 10, 20)]
        )
        cal = calendar(busy=[second, first], weekly={"sun": [("00:00", "02:00")]})
        offered = starts(day_slots(cal, date(2026, 10, 25), slot_rules(15)))
        assert offered == [at(2026, 10, 25, 0, m) for m in (0, 15, 30)] + [
            at(2026, 10, 25, 1, m) for m in (30, 45)
        ]

    def test_outputs_are_in_utc(self) -> None:
        slot = day_slots(self.paris, date(2026, 3, 27))[0]
        assert slot.start.tzinfo is UTC
        assert slot.end.tzinfo is UTC


# --------------------------------------------------------------------------------------------
# Overrides and midnight
# --------------------------------------------------------------------------------------------


class TestOverrides:
    def test_an_override_replaces_the_weekly_hours_for_that_date(self) -> None:
        cal = calendar(overrides={"2026-12-23": [("10:00", "12:00")]})
        assert starts(day_slots(cal, date(2026, 12, 23))) == [
            at(2026, 12, 23, 10),
            at(2026, 12, 23, 11),
        ]

    def test_an_empty_override_closes_the_day(self) -> None:
        cal = calendar(overrides={"2026-12-24": []})
        assert day_slots(cal, date(2026, 12, 24)) == []

    def test_an_override_leaves_the_other_days_alone(self) -> None:
        cal = calendar(overrides={"2026-12-24": []})
        assert len(day_slots(cal, date(2026, 12, 23))) == 8
        assert len(day_slots(cal, date(2026, 12, 25))) == 8

    def test_an_override_can_open_a_day_that_is_closed_every_week(self) -> None:
        cal = calendar(weekly=NINE_TO_FIVE_WEEKDAYS, overrides={"2026-12-26": [("10:00", "11:00")]})
        assert date(2026, 12, 26).weekday() == 5  # a Saturday
        assert starts(day_slots(cal, date(2026, 12, 26))) == [at(2026, 12, 26, 10)]

    def test_a_day_missing_from_the_weekly_hours_is_closed(self) -> None:
        cal = calendar(weekly=NINE_TO_FIVE_WEEKDAYS)
        assert day_slots(cal, date(2026, 12, 27)) == []  # a Sunday

    def test_overrides_are_keyed_by_the_local_date(self) -> None:
        # 00:00-02:00 on 24 December in Tokyo is 15:00-17:00Z on the 23rd.
        cal = calendar(
            timezone="Asia/Tokyo", weekly={}, overrides={"2026-12-24": [("00:00", "02:00")]}
        )
        assert starts(day_slots(cal, date(2026, 12, 23))) == [
            at(2026, 12, 23, 15),
            at(2026, 12, 23, 16),
        ]


class TestMidnight:
    def test_24_00_ends_at_the_next_local_midnight(self) -> None:
        cal = calendar(weekly={"mon": [("18:00", "24:00")]})
        assert working_windows(cal, at(2026, 3, 2), at(2026, 3, 4)) == [
            (at(2026, 3, 2, 18), at(2026, 3, 3))
        ]

    def test_a_window_crossing_midnight_merges_with_the_next_day(self) -> None:
        cal = calendar(weekly={"mon": [("22:00", "24:00")], "tue": [("00:00", "02:00")]})
        assert working_windows(cal, at(2026, 3, 2), at(2026, 3, 4)) == [
            (at(2026, 3, 2, 22), at(2026, 3, 3, 2))
        ]

    def test_a_slot_may_straddle_midnight_inside_a_merged_window(self) -> None:
        cal = calendar(weekly={"mon": [("22:00", "24:00")], "tue": [("00:00", "02:00")]})
        slots = compute_slots([cal], slot_rules(90, 30), at(2026, 3, 2), at(2026, 3, 4), NOW, "all")
        assert starts(slots) == [
            at(2026, 3, 2, 22),
            at(2026, 3, 2, 22, 30),
            at(2026, 3, 2, 23),
            at(2026, 3, 2, 23, 30),
            at(2026, 3, 3, 0),
            at(2026, 3, 3, 0, 30),
        ]

    def test_a_whole_day_and_the_next_morning_make_one_window(self) -> None:
        cal = calendar(weekly={"mon": [("00:00", "24:00")], "tue": [("00:00", "08:00")]})
        assert working_windows(cal, at(2026, 3, 1), at(2026, 3, 5)) == [
            (at(2026, 3, 2), at(2026, 3, 3, 8))
        ]

    def test_windows_are_clipped_to_the_requested_range(self) -> None:
        cal = calendar()
        assert working_windows(cal, at(2026, 3, 2, 10), at(2026, 3, 2, 12)) == [
            (at(2026, 3, 2, 10), at(2026, 3, 2, 12))
        ]
        assert working_windows(cal, at(2026, 3, 2, 17), at(2026, 3, 3, 9)) == []

    def test_windows_in_a_zone_ahead_of_utc_start_on_the_previous_utc_day(self) -> None:
        cal = calendar(timezone="Pacific/Auckland", weekly={"tue": [("08:00", "10:00")]})
        # Tuesday 3 March 08:00 NZDT (+13) is Monday 2 March 19:00Z.
        assert working_windows(cal, at(2026, 3, 2), at(2026, 3, 3)) == [
            (at(2026, 3, 2, 19), at(2026, 3, 2, 21))
        ]


# --------------------------------------------------------------------------------------------
# Buffers and holds
# --------------------------------------------------------------------------------------------


class TestBuffers:
    # A booking from 10:00 to 11:00Z on Monday 2 March 2026; the calendar works 09:00-17:00Z.
    ten = at(2026, 3, 2, 10)
    eleven = at(2026, 3, 2, 11)

    def offered(self, busy: Busy, rules: SlotRules) -> list[datetime]:
        return starts(day_slots(calendar(busy=[busy]), date(2026, 3, 2), rules))

    def test_back_to_back_slots_are_fine_without_buffers(self) -> None:
        offered = self.offered(booking(self.ten, self.eleven), slot_rules())
        assert at(2026, 3, 2, 9) in offered
        assert self.ten not in offered
        assert self.eleven in offered

    def test_a_slot_whose_buffer_after_reaches_the_booking_is_refused(self) -> None:
        offered = self.offered(booking(self.ten, self.eleven), slot_rules(after=15))
        assert at(2026, 3, 2, 9) not in offered
        assert self.eleven in offered

    def test_a_slot_whose_buffer_before_reaches_the_booking_is_refused(self) -> None:
        offered = self.offered(booking(self.ten, self.eleven), slot_rules(before=15))
        assert at(2026, 3, 2, 9) in offered
        assert self.eleven not in offered
        assert at(2026, 3, 2, 12) in offered

    def test_a_slot_inside_the_bookings_own_buffer_is_refused(self) -> None:
        offered = self.offered(booking(self.ten, self.eleven, before=15, after=15), slot_rules())
        assert at(2026, 3, 2, 9) not in offered
        assert self.eleven not in offered
        assert at(2026, 3, 2, 12) in offered

    def test_two_buffers_may_overlap_each_other(self) -> None:
        # Booking block 10:00-11:15; candidate 11:30-12:30 with a 30-minute buffer before it
        # (block 11:00-12:30): only the buffers overlap.
        busy = [booking(self.ten, self.eleven, after=15)]
        rules = slot_rules(before=30)
        assert is_free(busy, at(2026, 3, 2, 11, 30), at(2026, 3, 2, 12, 30), rules, NOW)
        assert not is_free(busy, at(2026, 3, 2, 11, 10), at(2026, 3, 2, 12, 10), rules, NOW)
        offered = self.offered(busy[0], slot_rules(60, 30, before=30))
        assert at(2026, 3, 2, 11, 30) in offered
        assert self.eleven not in offered

    def test_buffers_need_not_lie_within_working_hours(self) -> None:
        offered = self.offered(booking(self.ten, self.eleven), slot_rules(before=60, after=60))
        assert offered[0] == at(2026, 3, 2, 12)
        assert offered[-1] == at(2026, 3, 2, 16)  # its buffer after runs to 18:00

    def test_is_free_reads_unsorted_entries(self) -> None:
        busy = [
            booking(at(2026, 3, 2, 15), at(2026, 3, 2, 16)),
            booking(self.ten, self.eleven),
            booking(at(2026, 3, 2, 12), at(2026, 3, 2, 13)),
        ]
        assert not is_free(busy, self.ten, self.eleven, slot_rules(), NOW)
        assert is_free(busy, self.eleven, at(2026, 3, 2, 12), slot_rules(), NOW)
        assert starts(day_slots(calendar(busy=busy), date(2026, 3, 2))) == [
            at(2026, 3, 2, h) for h in (9, 11, 13, 14, 16)
        ]


class TestHolds:
    ten = at(2026, 3, 2, 10)
    eleven = at(2026, 3, 2, 11)
    now = at(2026, 3, 1, 12)

    def test_an_unexpired_hold_blocks_its_time(self) -> None:
        hold = booking(self.ten, self.eleven, expires_at=self.now + minutes(1))
        assert not is_free([hold], self.ten, self.eleven, slot_rules(), self.now)

    def test_a_hold_expiring_exactly_now_blocks_nothing(self) -> None:
        hold = booking(self.ten, self.eleven, expires_at=self.now)
        assert is_free([hold], self.ten, self.eleven, slot_rules(), self.now)

    def test_a_hold_that_expired_earlier_blocks_nothing(self) -> None:
        hold = booking(self.ten, self.eleven, after=30, expires_at=self.now - HOUR)
        cal = calendar(busy=[hold])
        assert self.ten in starts(day_slots(cal, date(2026, 3, 2), now=self.now))

    def test_an_unexpired_hold_removes_its_slot(self) -> None:
        hold = booking(self.ten, self.eleven, expires_at=self.now + HOUR)
        cal = calendar(busy=[hold])
        assert self.ten not in starts(day_slots(cal, date(2026, 3, 2), now=self.now))


# --------------------------------------------------------------------------------------------
# Booking window and slot interval
# --------------------------------------------------------------------------------------------


class TestBookingWindow:
    def test_min_notice_hides_slots_that_start_too_soon(self) -> None:
        now = at(2026, 3, 2, 9, 10)
        offered = starts(day_slots(calendar(), date(2026, 3, 2), slot_rules(notice=120), now=now))
        # 11:10 is the earliest start; the grid stays on the hour.
        assert offered[0] == at(2026, 3, 2, 12)

    def test_min_notice_is_inclusive(self) -> None:
        now = at(2026, 3, 2, 8)
        offered = starts(day_slots(calendar(), date(2026, 3, 2), slot_rules(notice=60), now=now))
        assert offered[0] == at(2026, 3, 2, 9)

    def test_slots_in_the_past_are_never_offered(self) -> None:
        now = at(2026, 3, 2, 13, 30)
        offered = starts(day_slots(calendar(), date(2026, 3, 2), now=now))
        assert offered == [at(2026, 3, 2, h) for h in (14, 15, 16)]

    def test_max_advance_hides_slots_beyond_the_horizon(self) -> None:
        now = at(2026, 3, 2, 8)
        rules = slot_rules(advance=DAY + HOUR)  # horizon: Tuesday 09:00Z, inclusive
        offered = starts(compute_slots([calendar()], rules, now, now + 5 * DAY, now, "all"))
        assert offered[-1] == at(2026, 3, 3, 9)
        assert len(offered) == 9

    def test_no_max_advance_means_no_horizon(self) -> None:
        slots = compute_slots(
            [calendar()], slot_rules(), at(2030, 1, 1), at(2030, 1, 2), NOW, "all"
        )
        assert len(slots) == 8

    def test_in_booking_window_bounds_are_inclusive(self) -> None:
        now = at(2026, 3, 2, 8)
        rules = slot_rules(notice=60, advance=DAY)
        assert not in_booking_window(now + minutes(59), rules, now)
        assert in_booking_window(now + HOUR, rules, now)
        assert in_booking_window(now + DAY, rules, now)
        assert not in_booking_window(now + DAY + minutes(1), rules, now)


class TestInterval:
    def test_thirty_minute_slots_every_fifteen_minutes(self) -> None:
        cal = calendar(weekly={"mon": [("09:00", "10:00")]})
        offered = starts(day_slots(cal, date(2026, 3, 2), slot_rules(30, 15)))
        assert offered == [at(2026, 3, 2, 9), at(2026, 3, 2, 9, 15), at(2026, 3, 2, 9, 30)]

    def test_an_interval_longer_than_the_duration_leaves_gaps(self) -> None:
        cal = calendar(weekly={"mon": [("09:00", "11:00")]})
        offered = starts(day_slots(cal, date(2026, 3, 2), slot_rules(30, 45)))
        assert offered == [at(2026, 3, 2, 9), at(2026, 3, 2, 9, 45), at(2026, 3, 2, 10, 30)]

    def test_each_window_starts_its_own_grid(self) -> None:
        cal = calendar(weekly={"mon": [("09:00", "10:00"), ("13:20", "14:20")]})
        offered = starts(day_slots(cal, date(2026, 3, 2), slot_rules(30, 30)))
        assert offered == [
            at(2026, 3, 2, 9),
            at(2026, 3, 2, 9, 30),
            at(2026, 3, 2, 13, 20),
            at(2026, 3, 2, 13, 50),
        ]

    def test_a_range_starting_mid_window_keeps_the_grid_of_the_window(self) -> None:
        cal = calendar()
        slots = compute_slots(
            [cal], slot_rules(30, 15), at(2026, 3, 2, 9, 10), at(2026, 3, 2, 10), NOW, "all"
        )
        assert starts(slots) == [
            at(2026, 3, 2, 9, 15),
            at(2026, 3, 2, 9, 30),
            at(2026, 3, 2, 9, 45),
        ]

    def test_a_slot_starting_in_the_range_may_end_after_it(self) -> None:
        slots = compute_slots(
            [calendar()], slot_rules(), at(2026, 3, 2, 9), at(2026, 3, 2, 9, 30), NOW, "all"
        )
        assert slots == [Slot(at(2026, 3, 2, 9), at(2026, 3, 2, 10), ("r1",))]

    def test_a_window_shorter_than_the_duration_offers_nothing(self) -> None:
        cal = calendar(weekly={"mon": [("09:00", "09:45")]})
        assert day_slots(cal, date(2026, 3, 2)) == []


# --------------------------------------------------------------------------------------------
# Several resources
# --------------------------------------------------------------------------------------------


class TestCollective:
    def test_only_times_when_every_calendar_works_and_is_free(self) -> None:
        alice = calendar("alice", weekly={"mon": [("09:00", "17:00")]})
        bob = calendar(
            "bob",
            weekly={"mon": [("13:00", "20:00")]},
            busy=[booking(at(2026, 3, 2, 14), at(2026, 3, 2, 15))],
        )
        slots = day_slots([bob, alice], date(2026, 3, 2))
        assert starts(slots) == [at(2026, 3, 2, 13), at(2026, 3, 2, 15), at(2026, 3, 2, 16)]
        assert {slot.resources for slot in slots} == {("alice", "bob")}

    def test_a_busy_entry_on_any_one_calendar_removes_the_slot(self) -> None:
        alice = calendar("alice", busy=[booking(at(2026, 3, 2, 9), at(2026, 3, 2, 10))])
        bob = calendar("bob", busy=[booking(at(2026, 3, 2, 16), at(2026, 3, 2, 17))])
        offered = starts(day_slots([alice, bob], date(2026, 3, 2)))
        assert offered == [at(2026, 3, 2, h) for h in range(10, 16)]

    def test_calendars_in_different_zones_meet_in_their_common_hours(self) -> None:
        paris = calendar("paris", timezone="Europe/Paris", weekly=NINE_TO_FIVE_WEEKDAYS)
        new_york = calendar("new-york", timezone="America/New_York", weekly=NINE_TO_FIVE_WEEKDAYS)
        # In January: Paris works 08:00-16:00Z, New York 14:00-22:00Z.
        offered = starts(day_slots([paris, new_york], date(2026, 1, 12)))
        assert offered == [at(2026, 1, 12, 14), at(2026, 1, 12, 15)]

    def test_no_calendars_means_no_slots(self) -> None:
        assert compute_slots([], slot_rules(), at(2026, 3, 2), at(2026, 3, 3), NOW, "all") == []
        assert compute_slots([], slot_rules(), at(2026, 3, 2), at(2026, 3, 3), NOW, "any") == []


class TestRoundRobin:
    monday = date(2026, 3, 2)

    def test_the_resource_with_fewer_bookings_that_day_gets_the_slot(self) -> None:
        alice = calendar(
            "alice",
            busy=[
                booking(at(2026, 3, 2, 9), at(2026, 3, 2, 10)),
                booking(at(2026, 3, 2, 10), at(2026, 3, 2, 11)),
            ],
        )
        bob = calendar("bob", busy=[booking(at(2026, 3, 2, 16), at(2026, 3, 2, 17))])
        slots = day_slots([alice, bob], self.monday, assignment="any")
        assert [(s.start.hour, s.resources) for s in slots] == [
            (9, ("bob",)),
            (10, ("bob",)),
            (11, ("bob",)),
            (12, ("bob",)),
            (13, ("bob",)),
            (14, ("bob",)),
            (15, ("bob",)),
            (16, ("alice",)),  # bob is busy then
        ]

    def test_ties_go_to_the_smallest_resource_id(self) -> None:
        slots = day_slots([calendar("bob"), calendar("alice")], self.monday, assignment="any")
        assert len(slots) == 8
        assert {slot.resources for slot in slots} == {("alice",)}

    def test_each_start_is_offered_once_from_whichever_resource_works(self) -> None:
        morning = calendar("morning", weekly={"mon": [("09:00", "12:00")]})
        afternoon = calendar("afternoon", weekly={"mon": [("11:00", "14:00")]})
        slots = day_slots([morning, afternoon], self.monday, assignment="any")
        assert [(s.start.hour, s.resources) for s in slots] == [
            (9, ("morning",)),
            (10, ("morning",)),
            (11, ("afternoon",)),
            (12, ("afternoon",)),
            (13, ("afternoon",)),
        ]

    def test_bookings_are_counted_on_the_resources_local_date(self) -> None:
        # Both have one booking on UTC Tuesday 3 March. Bob's is at 18:00 on Monday in Los
        # Angeles, so on local Tuesday bob has none and alice one: bob wins despite the id order.
        alice = calendar(
            "alice",
            timezone="America/Los_Angeles",
            busy=[booking(at(2026, 3, 3, 22), at(2026, 3, 3, 23))],
        )
        bob = calendar(
            "bob",
            timezone="America/Los_Angeles",
            busy=[booking(at(2026, 3, 3, 2), at(2026, 3, 3, 3))],
        )
        start, end = at(2026, 3, 3, 17), at(2026, 3, 3, 18)  # 09:00 PST on Tuesday
        assert choose_resource([alice, bob], start, end, slot_rules(), NOW) == "bob"
        slots = compute_slots([alice, bob], slot_rules(), start, end, NOW, "any")
        assert slots == [Slot(start, end, ("bob",))]

    def test_expired_holds_do_not_count(self) -> None:
        now = at(2026, 3, 1)
        alice = calendar(
            "alice", busy=[booking(at(2026, 3, 2, 16), at(2026, 3, 2, 17), expires_at=now)]
        )
        bob = calendar("bob", busy=[booking(at(2026, 3, 2, 16), at(2026, 3, 2, 17))])
        slots = day_slots([alice, bob], self.monday, now=now, assignment="any")
        assert {slot.resources for slot in slots} == {("alice",)}
        assert len(slots) == 8

    def test_choose_resource_returns_none_when_nobody_can_take_it(self) -> None:
        busy = [booking(at(2026, 3, 2, 9), at(2026, 3, 2, 10))]
        cals = [calendar("alice", busy=busy), calendar("bob", busy=busy)]
        assert (
            choose_resource(cals, at(2026, 3, 2, 9), at(2026, 3, 2, 10), slot_rules(), NOW) is None
        )
        evening = (at(2026, 3, 2, 18), at(2026, 3, 2, 19))
        assert choose_resource(cals, *evening, slot_rules(), NOW) is None


class TestChecks:
    def test_within_hours_accepts_a_span_inside_one_window(self) -> None:
        assert within_hours(calendar(), at(2026, 3, 2, 9), at(2026, 3, 2, 17))

    def test_within_hours_refuses_a_span_past_the_end_of_the_window(self) -> None:
        assert not within_hours(calendar(), at(2026, 3, 2, 16, 30), at(2026, 3, 2, 17, 30))

    def test_within_hours_refuses_a_span_across_a_break(self) -> None:
        cal = calendar(weekly={"mon": [("09:00", "12:00"), ("13:00", "17:00")]})
        assert not within_hours(cal, at(2026, 3, 2, 11), at(2026, 3, 2, 14))

    def test_within_hours_accepts_touching_windows_as_one(self) -> None:
        cal = calendar(weekly={"mon": [("09:00", "12:00"), ("12:00", "17:00")]})
        assert within_hours(cal, at(2026, 3, 2, 11), at(2026, 3, 2, 14))

    def test_naive_datetimes_are_refused(self) -> None:
        with pytest.raises(ValueError, match="timezone-aware"):
            working_windows(calendar(), datetime(2026, 3, 2), at(2026, 3, 3))

    def test_an_unknown_assignment_is_refused(self) -> None:
        with pytest.raises(ValueError, match="assignment"):
            compute_slots([calendar()], slot_rules(), at(2026, 3, 2), at(2026, 3, 3), NOW, "some")  # type: ignore[arg-type]

    def test_rules_need_a_positive_duration_and_interval(self) -> None:
        with pytest.raises(ValueError, match="duration"):
            SlotRules(duration=timedelta(0), interval=HOUR)
        with pytest.raises(ValueError, match="interval"):
            SlotRules(duration=HOUR, interval=timedelta(0))

    def test_a_busy_entry_needs_aware_datetimes(self) -> None:
        with pytest.raises(ValueError, match="timezone-aware"):
            Busy(
                datetime(2026, 3, 2, 10), at(2026, 3, 2, 11), at(2026, 3, 2, 10), at(2026, 3, 2, 11)
            )

    def test_a_busy_entry_needs_its_block_around_its_own_time(self) -> None:
        with pytest.raises(ValueError, match="block_start <= start"):
            Busy(at(2026, 3, 2, 10), at(2026, 3, 2, 11), at(2026, 3, 2, 10, 30), at(2026, 3, 2, 11))


# --------------------------------------------------------------------------------------------
# Validation of working hours
# --------------------------------------------------------------------------------------------


class TestValidateHours:
    def test_valid_hours_give_no_errors(self) -> None:
        weekly = {
            "mon": [["09:00", "12:00"], ["12:00", "17:00"]],
            "tue": [["00:00", "24:00"]],
            "sat": [],
        }
        overrides = {"2026-12-24": [], "2026-12-31": [["10:00", "14:00"]]}
        assert validate_hours(weekly, overrides) == []

    def test_tuples_are_accepted_like_lists(self) -> None:
        assert validate_hours({"mon": [("09:00", "17:00")]}, {}) == []

    @pytest.mark.parametrize(
        ("weekly", "error"),
        [
            ({"mo": []}, ("weekly.mo", "unknown weekday 'mo'")),
            (
                {"mon": [["08:00", "25:00"]]},
                ("weekly.mon[0]", "invalid time '25:00', expected HH:MM"),
            ),
            (
                {"mon": [["9:00", "17:00"]]},
                ("weekly.mon[0]", "invalid time '9:00', expected HH:MM"),
            ),
            (
                {"mon": [["09:60", "17:00"]]},
                ("weekly.mon[0]", "invalid time '09:60', expected HH:MM"),
            ),
            (
                {"mon": [["09:00", "24:30"]]},
                ("weekly.mon[0]", "invalid time '24:30', expected HH:MM"),
            ),
            ({"mon": [[900, "17:00"]]}, ("weekly.mon[0]", "invalid time 900, expected HH:MM")),
            (
                {"mon": [["24:00", "24:00"]]},
                ("weekly.mon[0]", "24:00 is only allowed as an interval end"),
            ),
            (
                {"mon": [["09:00", "08:00"]]},
                ("weekly.mon[0]", "interval end 08:00 is before start 09:00"),
            ),
            ({"mon": [["09:00", "09:00"]]}, ("weekly.mon[0]", "interval is empty")),
            (
                {"tue": [["08:00", "09:00"], ["09:00", "12:00"], ["11:00", "13:00"]]},
                ("weekly.tue[2]", "intervals overlap: 09:00-12:00 and 11:00-13:00"),
            ),
            (
                {"wed": [["13:00", "17:00"], ["09:00", "12:00"]]},
                ("weekly.wed[1]", "intervals are not sorted by start"),
            ),
            ({"mon": [["09:00"]]}, ("weekly.mon[0]", "must be a [start, end] pair")),
            ({"mon": ["09:00-17:00"]}, ("weekly.mon[0]", "must be a [start, end] pair")),
            ({"mon": "09:00-17:00"}, ("weekly.mon", "must be a list")),
            ([["09:00", "17:00"]], ("weekly", "must be a mapping")),
        ],
    )
    def test_a_bad_weekly_entry_is_reported_at_its_path(
        self, weekly: object, error: tuple[str, str]
    ) -> None:
        errors = validate_hours(weekly, {})
        assert len(errors) == 1, errors
        path, message = errors[0]
        assert path == error[0]
        assert message.startswith(error[1])

    @pytest.mark.parametrize(
        ("overrides", "error"),
        [
            ({"2026-02-30": []}, ("overrides.2026-02-30", "invalid date '2026-02-30'")),
            ({"2026-2-3": []}, ("overrides.2026-2-3", "invalid date '2026-2-3'")),
            ({"christmas": []}, ("overrides.christmas", "invalid date 'christmas'")),
            (
                {"2026-12-24": [["10:00", "09:00"]]},
                ("overrides.2026-12-24[0]", "interval end 09:00 is before start 10:00"),
            ),
            (
                {"2026-12-24": [["08:00", "12:00"], ["10:00", "14:00"]]},
                ("overrides.2026-12-24[1]", "intervals overlap"),
            ),
            (None, ("overrides", "must be a mapping")),
        ],
    )
    def test_a_bad_override_is_reported_at_its_path(
        self, overrides: object, error: tuple[str, str]
    ) -> None:
        errors = validate_hours({}, overrides)
        assert len(errors) == 1, errors
        path, message = errors[0]
        assert path == error[0]
        assert message.startswith(error[1])

    def test_every_error_is_reported_in_order(self) -> None:
        errors = validate_hours(
            {"mon": [["09:00", "08:00"], ["25:00", "26:00"]], "fri": [["10:00", "12:00"]]},
            {"2026-12-24": [["10:00", "11:00"], ["10:30", "12:00"]]},
        )
        assert [path for path, _ in errors] == [
            "weekly.mon[0]",
            "weekly.mon[1]",
            "weekly.mon[1]",
            "overrides.2026-12-24[1]",
        ]


# --------------------------------------------------------------------------------------------
# Performance
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Properties, checked against an independent brute-force reading of the rules
# --------------------------------------------------------------------------------------------

ZONES = [
    "UTC",
    "Europe/Paris",
    "America/New_York",
    "America/Santiago",  # changes at midnight
    "Asia/Kolkata",  # +05:30
    "Asia/Kathmandu",  # +05:45
    "Australia/Adelaide",  # +09:30 / +10:30
    "Australia/Lord_Howe",  # a 30-minute change
]
# The days each zone changes its clocks in 2026 (local dates), and a quiet day for every zone.
CHANGES = {
    "Europe/Paris": [date(2026, 3, 29), date(2026, 10, 25)],
    "America/New_York": [date(2026, 3, 8), date(2026, 11, 1)],
    "America/Santiago": [date(2026, 4, 4), date(2026, 9, 6)],
    "Australia/Adelaide": [date(2026, 4, 5), date(2026, 10, 4)],
    "Australia/Lord_Howe": [date(2026, 4, 5), date(2026, 10, 4)],
}
QUARTERS_PER_DAY = 96


def hhmm(quarters: int) -> str:
    return f"{quarters // 4:02d}:{quarters % 4 * 15:02d}"


# Strategies are built once: hypothesis spends most of its time validating fresh ones.
SMALL_HOURS = st.one_of(st.integers(0, 16), st.integers(88, QUARTERS_PER_DAY))
ANY_TIME = st.one_of(st.integers(0, QUARTERS_PER_DAY), SMALL_HOURS)
HOURS_POINTS = st.one_of(st.just([0, QUARTERS_PER_DAY]), st.sets(ANY_TIME, max_size=6))
CHANGE_DAY_POINTS = st.one_of(st.just([0, QUARTERS_PER_DAY]), st.sets(SMALL_HOURS, max_size=6))


def to_hours(points: set[int] | list[int]) -> list[tuple[str, str]]:
    """Valid hours from quarter-hour points: sorted, not overlapping, 24:00 only as an end."""
    ordered = sorted(points)
    if len(ordered) % 2:
        ordered.pop()
    return [(hhmm(ordered[i]), hhmm(ordered[i + 1])) for i in range(0, len(ordered), 2)]


# Times often near midnight or in the small hours, where the clocks change (00:00 in Santiago,
# 01:30-03:00 elsewhere); on clock-change days, only there.
DAY_HOURS = HOURS_POINTS.map(to_hours)
CHANGE_DAY_HOURS = CHANGE_DAY_POINTS.map(to_hours)
WEEKLY_HOURS = st.dictionaries(st.sampled_from(WEEKDAYS), DAY_HOURS, max_size=7)
OVERRIDE_HOURS = st.dictionaries(st.integers(-4, 5), DAY_HOURS, max_size=4)  # days from anchor
BUSY_SHAPES = st.lists(
    st.tuples(
        st.integers(-2 * QUARTERS_PER_DAY, 4 * QUARTERS_PER_DAY),  # own start, from range start
        st.integers(0, 12),  # own length
        st.integers(0, 4),  # buffer before
        st.integers(0, 4),  # buffer after
        st.one_of(st.none(), st.integers(-8, 8)),  # hold expiry, from now
        st.booleans(),  # given in the calendar's zone rather than UTC
    ),
    max_size=10,
)
ZONE = st.sampled_from(ZONES)
SCENARIO_NUMBERS = st.tuples(
    st.integers(-2 * QUARTERS_PER_DAY, QUARTERS_PER_DAY),  # range start, from anchor
    st.integers(1, 3 * QUARTERS_PER_DAY),  # range length
    st.integers(-2 * QUARTERS_PER_DAY, QUARTERS_PER_DAY),  # now, from range start
    st.integers(1, 12),  # duration
    st.integers(1, 8),  # interval
    st.integers(0, 4),  # buffer before
    st.integers(0, 4),  # buffer after
    st.integers(0, 16),  # minimum notice
    st.one_of(st.none(), st.integers(0, 5 * QUARTERS_PER_DAY)),  # maximum advance
    st.integers(1, 5),  # calendars
    st.sampled_from(["any", "all"]),
)


@dataclass(frozen=True)
class Scenario:
    calendars: list[Calendar]
    rules: SlotRules
    start: datetime
    end: datetime
    now: datetime
    assignment: Literal["any", "all"]


def busy_entry(
    shape: tuple[int, int, int, int, int | None, bool], start: datetime, now: datetime, zone: str
) -> Busy:
    at_start, length, before, after, expiry, local = shape
    own_start = start + QUARTER * at_start
    own_end = own_start + QUARTER * length
    expires = None if expiry is None else now + QUARTER * expiry
    # Entries may come in any zone; comparisons must not care.
    tz = ZoneInfo(zone) if local else UTC
    return Busy(
        own_start.astimezone(tz),
        own_end.astimezone(tz),
        (own_start - QUARTER * before).astimezone(tz),
        (own_end + QUARTER * after).astimezone(tz),
        None if expires is None else expires.astimezone(tz),
    )


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    first_zone = draw(ZONE)
    anchor = draw(st.sampled_from([*CHANGES.get(first_zone, []), date(2026, 6, 15)]))
    (at_start, length, at_now, duration, interval, before, after, notice, advance, count, kind) = (
        draw(SCENARIO_NUMBERS)
    )
    start = datetime(anchor.year, anchor.month, anchor.day, tzinfo=UTC) + QUARTER * at_start
    end = start + QUARTER * length
    now = start + QUARTER * at_now
    rules = SlotRules(
        duration=QUARTER * duration,
        interval=QUARTER * interval,
        buffer_before=QUARTER * before,
        buffer_after=QUARTER * after,
        min_notice=QUARTER * notice,
        max_advance=None if advance is None else QUARTER * advance,
    )
    calendars = []
    for index in range(count):
        zone = first_zone if index == 0 else draw(ZONE)
        overrides = {
            (anchor + timedelta(days=k)).isoformat(): hours
            for k, hours in draw(OVERRIDE_HOURS).items()
        }
        busy = [busy_entry(shape, start, now, zone) for shape in draw(BUSY_SHAPES)]
        calendars.append(Calendar(f"r{index}", zone, draw(WEEKLY_HOURS), overrides, busy))
    assignment: Literal["any", "all"] = "any" if kind == "any" else "all"
    return Scenario(calendars, rules, start, end, now, assignment)


def is_open(cal: Calendar, moment: datetime) -> bool:
    """Whether the resource works at this instant, read off the local rules of its local date."""
    tz = ZoneInfo(cal.timezone)
    local = moment.astimezone(tz)
    key = local.date().isoformat()
    hours = (
        cal.overrides[key]
        if key in cal.overrides
        else cal.weekly.get(WEEKDAYS[local.weekday()], ())
    )
    spans = [(to_minutes(a), to_minutes(b)) for a, b in hours]
    wall = local.hour * 60 + local.minute
    if local.fold == 0:
        return any(a <= wall < b for a, b in spans)
    # The second pass through a repeated hour: wall times are read as their first occurrence,
    # so this instant lies after every wall time before the end of the repeated hour.
    later = moment
    while later.astimezone(tz).fold == 1:
        later += QUARTER
    after = later.astimezone(tz)
    repeat_end = 24 * 60 if after.date() > local.date() else after.hour * 60 + after.minute
    return any(a < repeat_end <= b for a, b in spans)


def to_minutes(hours: str) -> int:
    return int(hours[:2]) * 60 + int(hours[3:])


def active(entry: Busy, now: datetime) -> bool:
    return entry.expires_at is None or now < entry.expires_at


def conflicts(entry: Busy, start: datetime, end: datetime, rules: SlotRules) -> bool:
    block_start, block_end = start - rules.buffer_before, end + rules.buffer_after
    own_hits_block = start < entry.block_end and entry.block_start < end
    block_hits_own = block_start < entry.end and entry.start < block_end
    return own_hits_block or block_hits_own


def quarters(start: datetime, end: datetime) -> list[datetime]:
    return [start + QUARTER * i for i in range((end - start) // QUARTER)]


def works_throughout(cal: Calendar, start: datetime, end: datetime) -> bool:
    # Every boundary (rules, offsets, transitions, slots) is on a UTC quarter hour here.
    return all(is_open(cal, moment) for moment in quarters(start, end))


def free_on(cal: Calendar, start: datetime, end: datetime, sc: Scenario) -> bool:
    return not any(
        active(entry, sc.now) and conflicts(entry, start, end, sc.rules) for entry in cal.busy
    )


def bookable(moment: datetime, sc: Scenario) -> bool:
    if not sc.start <= moment < sc.end or moment < sc.now + sc.rules.min_notice:
        return False
    return sc.rules.max_advance is None or moment <= sc.now + sc.rules.max_advance


def expected_slots(sc: Scenario) -> list[tuple[datetime, tuple[str, ...]]]:
    """compute_slots re-derived from is_open on a quarter-hour grid.

    A window is a maximal run of open quarters; its grid starts where the run starts, or at the
    first instant of the local date before the range start if it runs back further than that
    (the first date the computation looks at).
    """
    # From before the first instant of the local date before sc.start, in any zone (UTC-14 at
    # worst), to the end of the last possible slot.
    grid = quarters(sc.start - 2 * DAY - 15 * HOUR, sc.end + sc.rules.duration)
    opened = [[is_open(cal, moment) for moment in grid] for cal in sc.calendars]
    position = {moment: index for index, moment in enumerate(grid)}

    def works(k: int, start: datetime, end: datetime) -> bool:
        return all(opened[k][position[moment]] for moment in quarters(start, end))

    horizons = []
    for cal in sc.calendars:
        tz = ZoneInfo(cal.timezone)
        first_day = sc.start.astimezone(tz).date() - DAY
        horizons.append(next(m for m in grid if m.astimezone(tz).date() >= first_day))

    def runs(flags: list[bool]) -> list[tuple[datetime, datetime]]:
        found, begin = [], None
        for moment, flag in zip([*grid, grid[-1] + QUARTER], [*flags, False], strict=True):
            if flag and begin is None:
                begin = moment
            elif not flag and begin is not None:
                found.append((begin, moment))
                begin = None
        return found

    def grid_starts(windows: list[tuple[datetime, datetime]], horizon: datetime) -> set[datetime]:
        found = set()
        for run_start, run_end in windows:
            moment = max(run_start, horizon)
            while moment + sc.rules.duration <= run_end:
                if bookable(moment, sc):
                    found.add(moment)
                moment += sc.rules.interval
        return found

    duration = sc.rules.duration
    if sc.assignment == "all":
        together = [all(column) for column in zip(*opened, strict=True)]
        everyone = tuple(sorted(cal.resource_id for cal in sc.calendars))
        return [
            (moment, everyone)
            for moment in sorted(grid_starts(runs(together), max(horizons)))
            if all(free_on(cal, moment, moment + duration, sc) for cal in sc.calendars)
        ]
    candidates: set[datetime] = set()
    for flags, horizon in zip(opened, horizons, strict=True):
        candidates |= grid_starts(runs(flags), horizon)
    expected: list[tuple[datetime, tuple[str, ...]]] = []
    for moment in sorted(candidates):
        able = [
            cal
            for k, cal in enumerate(sc.calendars)
            if works(k, moment, moment + duration) and free_on(cal, moment, moment + duration, sc)
        ]
        if able:

            def load(cal: Calendar, moment: datetime = moment) -> tuple[int, str]:
                tz = ZoneInfo(cal.timezone)
                day = moment.astimezone(tz).date()
                same_day = [
                    b
                    for b in cal.busy
                    if active(b, sc.now) and b.start.astimezone(tz).date() == day
                ]
                return len(same_day), cal.resource_id

            expected.append((moment, (min(able, key=load).resource_id,)))
    return expected


class TestProperties:
    @settings(max_examples=200, deadline=None, database=None)
    @given(scenarios())
    def test_offered_slots_obey_every_rule(self, sc: Scenario) -> None:
        slots = compute_slots(sc.calendars, sc.rules, sc.start, sc.end, sc.now, sc.assignment)
        by_id = {cal.resource_id: cal for cal in sc.calendars}

        assert starts(slots) == sorted(set(starts(slots))), "sorted, each start once"
        for slot in slots:
            assert slot.start.tzinfo is UTC and slot.end.tzinfo is UTC
            assert sc.start <= slot.start < sc.end
            assert slot.end - slot.start == sc.rules.duration
            assert bookable(slot.start, sc)
            if sc.assignment == "all":
                assert slot.resources == tuple(sorted(by_id))
            else:
                assert len(slot.resources) == 1
            for resource in slot.resources:
                cal = by_id[resource]
                assert works_throughout(cal, slot.start, slot.end), (resource, slot)
                for entry in cal.busy:
                    if active(entry, sc.now):
                        assert not conflicts(entry, slot.start, slot.end, sc.rules), (entry, slot)

    @settings(max_examples=200, deadline=None, database=None)
    @given(scenarios())
    def test_every_bookable_slot_is_offered_on_the_right_resource(self, sc: Scenario) -> None:
        slots = compute_slots(sc.calendars, sc.rules, sc.start, sc.end, sc.now, sc.assignment)
        assert [(slot.start, slot.resources) for slot in slots] == expected_slots(sc)
        if sc.assignment == "any":
            for slot in slots:
                chosen = choose_resource(sc.calendars, slot.start, slot.end, sc.rules, sc.now)
                assert slot.resources == (chosen,)

    @settings(max_examples=200, deadline=None, database=None)
    @given(st.sampled_from(sorted(CHANGES)), st.data())
    def test_windows_on_clock_change_days_match_the_local_rules(
        self, zone: str, data: st.DataObject
    ) -> None:
        change = data.draw(st.sampled_from(CHANGES[zone]))
        weekly = data.draw(WEEKLY_HOURS)
        overrides = {change.isoformat(): data.draw(CHANGE_DAY_HOURS)}
        assert validate_hours(weekly, overrides) == []
        cal = Calendar("r", zone, weekly, overrides)
        start = datetime(change.year, change.month, change.day, tzinfo=UTC) - DAY
        windows = working_windows(cal, start, start + 3 * DAY)
        inside = {moment for s, e in windows for moment in quarters(s, e)}
        for moment in quarters(start, start + 3 * DAY):
            assert (moment in inside) == is_open(cal, moment), moment
        for (_, end), (next_start, _) in pairwise(windows):
            assert end < next_start, "merged when touching"
