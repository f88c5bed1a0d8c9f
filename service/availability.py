"""Slot computation for slotlog: which start times a resource, or a group of resources, can
still offer. This module owns the availability rules: weekly working hours and per-date overrides
in each resource's own IANA timezone (converted with zoneinfo, correct across daylight-saving
changes), bookings and holds with their buffers, minimum notice, booking horizon, slot interval,
and the "all" (collective) and "any" (round robin) assignment of resources. It is pure: it does no
I/O, reads no clock (`now` is always an argument) and imports only the standard library. Every
datetime it accepts must be timezone-aware, every datetime it returns is in UTC, and every
interval is half-open, [start, end)."""

from __future__ import annotations

import functools
import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from itertools import accumulate
from operator import itemgetter
from typing import Literal
from zoneinfo import ZoneInfo

import msgspec

__all__ = [
    "WEEKDAYS",
    "Busy",
    "Calendar",
    "Slot",
    "SlotRules",
    "choose_resource",
    "compute_slots",
    "in_booking_window",
    "is_free",
    "validate_hours",
    "within_hours",
    "working_windows",
]

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

_DAY = timedelta(days=1)
_MINUTES_PER_DAY = 24 * 60
# ASCII digits only: `\d` would also accept other scripts' digits.
_TIME_RE = re.compile(r"[0-9]{2}:[0-9]{2}")
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")

Window = tuple[datetime, datetime]


class Busy(msgspec.Struct, frozen=True):
    """A booking or a hold on one resource. (A msgspec Struct rather than a frozen dataclass: an
    availability query makes hundreds, and a Struct is built several times faster.)"""

    start: datetime  # the booking's own time
    end: datetime
    block_start: datetime  # own time extended by its buffer_before (block_start <= start)
    block_end: datetime  # own time extended by its buffer_after (block_end >= end)
    expires_at: datetime | None = None  # a hold: blocks nothing once now >= expires_at

    def __post_init__(self) -> None:
        # compute_slots' index relies on this ordering; a violation is a caller's bug. Compare in
        # UTC: two datetimes sharing one ZoneInfo compare by wall clock, ignoring `fold`.
        block_start, start, end, block_end = self.block_start, self.start, self.end, self.block_end
        if not (block_start.tzinfo is start.tzinfo is end.tzinfo is block_end.tzinfo is UTC):
            block_start, start = _utc(block_start, "block_start"), _utc(start, "start")
            end, block_end = _utc(end, "end"), _utc(block_end, "block_end")
        if self.expires_at is not None:
            _utc(self.expires_at, "expires_at")
        if not block_start <= start <= end <= block_end:
            raise ValueError(
                "busy entry must satisfy block_start <= start <= end <= block_end, got "
                f"[{self.block_start.isoformat()}, {self.start.isoformat()}, "
                f"{self.end.isoformat()}, {self.block_end.isoformat()}]"
            )


@dataclass(frozen=True, slots=True)
class Calendar:
    """One resource's working hours (local wall times in `timezone`) and its busy entries."""

    resource_id: str
    timezone: str  # IANA name, e.g. "Europe/Paris"
    # {"mon": [("09:00", "17:00")], ...}; a missing day is closed.
    weekly: Mapping[str, Sequence[tuple[str, str]]]
    overrides: Mapping[str, Sequence[tuple[str, str]]]  # {"2026-12-24": []}: replaces that day
    busy: Sequence[Busy] = ()


@dataclass(frozen=True, slots=True)
class SlotRules:
    """How slots are cut: their length, the step between starts, buffers and booking window."""

    duration: timedelta
    interval: timedelta  # step between candidate starts
    buffer_before: timedelta = timedelta(0)
    buffer_after: timedelta = timedelta(0)
    min_notice: timedelta = timedelta(0)
    max_advance: timedelta | None = None  # None = no horizon

    def __post_init__(self) -> None:
        if self.duration <= timedelta(0):
            raise ValueError(f"duration must be positive, got {self.duration}")
        if self.interval <= timedelta(0):
            raise ValueError(f"interval must be positive, got {self.interval}")
        if self.buffer_before < timedelta(0) or self.buffer_after < timedelta(0):
            raise ValueError("buffers must not be negative")


class Slot(msgspec.Struct, frozen=True):
    """An offered slot: [start, end) in UTC, and the resource(s) it would be booked on."""

    start: datetime  # UTC
    end: datetime  # UTC
    resources: tuple[str, ...]


# --------------------------------------------------------------------------------------------
# Validation of working hours (as received from an API client)
# --------------------------------------------------------------------------------------------


def _parse_minutes(value: object) -> int | None:
    """Minutes after midnight for "HH:MM" from 00:00 to 24:00 inclusive, None when malformed."""
    if not isinstance(value, str) or _TIME_RE.fullmatch(value) is None:
        return None
    hours, minutes = int(value[:2]), int(value[3:])
    if minutes > 59 or hours > 24 or (hours == 24 and minutes != 0):
        return None
    return hours * 60 + minutes


def _is_list(value: object) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes | bytearray)


def _validate_intervals(path: str, intervals: object) -> list[tuple[str, str]]:
    if not _is_list(intervals):
        return [(path, 'must be a list of [start, end] pairs of "HH:MM" times')]
    assert isinstance(intervals, Sequence)
    errors: list[tuple[str, str]] = []
    previous: tuple[int, int, str] | None = None  # start, end, "HH:MM-HH:MM"
    for index, pair in enumerate(intervals):
        where = f"{path}[{index}]"
        if not _is_list(pair) or len(pair) != 2:
            errors.append((where, 'must be a [start, end] pair of "HH:MM" times'))
            continue
        raw_start, raw_end = pair
        start, end = _parse_minutes(raw_start), _parse_minutes(raw_end)
        if start is None:
            errors.append((where, f"invalid time {raw_start!r}, expected HH:MM"))
        elif start == _MINUTES_PER_DAY:
            errors.append((where, "24:00 is only allowed as an interval end, not as a start"))
        if end is None:
            errors.append((where, f"invalid time {raw_end!r}, expected HH:MM"))
        if start is None or end is None or start == _MINUTES_PER_DAY:
            continue
        if end < start:
            errors.append((where, f"interval end {raw_end} is before start {raw_start}"))
            continue
        if end == start:
            errors.append((where, f"interval is empty: start and end are both {raw_start}"))
            continue
        label = f"{raw_start}-{raw_end}"
        if previous is not None:
            if start < previous[0]:
                errors.append(
                    (where, f"intervals are not sorted by start: {label} comes after {previous[2]}")
                )
            elif start < previous[1]:
                errors.append((where, f"intervals overlap: {previous[2]} and {label}"))
        previous = (start, end, label)
    return errors


def _is_real_date(value: object) -> bool:
    if not isinstance(value, str) or _DATE_RE.fullmatch(value) is None:
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


def validate_hours(weekly: object, overrides: object) -> list[tuple[str, str]]:
    """Errors as (path, message), [] when valid.

    weekly must be a mapping with keys only from WEEKDAYS, each a list of [start, end] pairs of
    "HH:MM" strings (00:00..23:59, and "24:00" allowed only as an end), start < end, intervals
    sorted by start and not overlapping (touching is fine). overrides: keys "YYYY-MM-DD" (a real
    date), values lists of the same pairs. Paths look like "weekly.mon[1]" or
    "overrides.2026-12-24[0]".
    """
    errors: list[tuple[str, str]] = []
    if not isinstance(weekly, Mapping):
        errors.append(
            ("weekly", "must be a mapping from weekday (mon..sun) to a list of intervals")
        )
    else:
        for day, intervals in weekly.items():
            if day not in WEEKDAYS:
                expected = ", ".join(WEEKDAYS)
                errors.append(
                    (f"weekly.{day}", f"unknown weekday {day!r}, expected one of {expected}")
                )
                continue
            errors.extend(_validate_intervals(f"weekly.{day}", intervals))
    if not isinstance(overrides, Mapping):
        errors.append(
            ("overrides", "must be a mapping from date (YYYY-MM-DD) to a list of intervals")
        )
    else:
        for key, intervals in overrides.items():
            if not _is_real_date(key):
                errors.append(
                    (
                        f"overrides.{key}",
                        f"invalid date {key!r}, expected a real date as YYYY-MM-DD",
                    )
                )
                continue
            errors.extend(_validate_intervals(f"overrides.{key}", intervals))
    return errors


# --------------------------------------------------------------------------------------------
# Local wall time -> UTC
# --------------------------------------------------------------------------------------------


def _utc(moment: datetime, name: str = "datetime") -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {moment.isoformat()}")
    return moment.astimezone(UTC)


def _offset(moment: datetime, tz: ZoneInfo) -> timedelta | None:
    return moment.astimezone(tz).utcoffset()


@functools.lru_cache(maxsize=65_536)  # a pure function of hashable arguments, on every hold
def _wall_to_utc(day: date, minutes: int, tz: ZoneInfo) -> datetime:
    """The UTC instant of local wall time `minutes` after midnight on `day` in `tz`.

    1440 (24:00) is midnight at the start of the next day. An ambiguous wall time (the repeated
    hour when clocks fall back) takes its first occurrence; a nonexistent one (the hour skipped
    when clocks spring forward) maps forward to the first instant after the gap.
    """
    day += timedelta(days=minutes // _MINUTES_PER_DAY)
    minutes %= _MINUTES_PER_DAY
    wall = datetime.combine(day, time(minutes // 60, minutes % 60))
    first = wall.replace(tzinfo=tz).astimezone(UTC)  # fold=0: first occurrence
    if first.astimezone(tz).replace(tzinfo=None) == wall:
        return first
    # A gap. fold=0 resolves it with the offset from before the transition, which lands after
    # the transition; fold=1 with the offset from after it, which lands before. Bisect (to the
    # second) for the transition itself: the first instant with the new offset.
    before = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    if before >= first:  # not a gap after all (should not happen); keep the plain answer
        return first
    new_offset = _offset(first, tz)
    low, high = 0, int((first - before).total_seconds())
    while high - low > 1:
        middle = (low + high) // 2
        if _offset(before + timedelta(seconds=middle), tz) == new_offset:
            high = middle
        else:
            low = middle
    return before + timedelta(seconds=high)


#: _parse_minutes for the stored "HH:MM" strings of calendars, parsed on every hold.
_parse_time = functools.lru_cache(maxsize=4096)(_parse_minutes)


def _calendar_minutes(cal: Calendar, value: str) -> int:
    minutes = _parse_time(value)
    if minutes is None:
        raise ValueError(f"calendar {cal.resource_id!r}: invalid time {value!r}, expected HH:MM")
    return minutes


def _hours_on(cal: Calendar, day: date) -> Sequence[tuple[str, str]]:
    key = day.isoformat()
    if key in cal.overrides:
        return cal.overrides[key]
    return cal.weekly.get(WEEKDAYS[day.weekday()], ())


def _merge(intervals: list[Window]) -> list[Window]:
    """Sort and merge intervals that overlap or touch; empty ones are dropped."""
    merged: list[Window] = []
    for start, end in sorted(intervals):
        if start >= end:
            continue
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def _raw_windows(cal: Calendar, start: datetime, end: datetime) -> list[Window]:
    """Merged UTC working windows of the local dates from the day before `start` (in the
    calendar's zone) to the day after `end`, not clipped."""
    tz = ZoneInfo(cal.timezone)
    return _windows_between(
        cal, tz, start.astimezone(tz).date() - _DAY, end.astimezone(tz).date() + _DAY
    )


def _windows_between(cal: Calendar, tz: ZoneInfo, day: date, last: date) -> list[Window]:
    """Merged UTC working windows of the local dates `day` to `last`."""
    intervals: list[Window] = []
    while day <= last:
        for raw_start, raw_end in _hours_on(cal, day):
            local_start = _calendar_minutes(cal, raw_start)
            local_end = _calendar_minutes(cal, raw_end)
            if local_start < local_end:
                intervals.append(
                    (_wall_to_utc(day, local_start, tz), _wall_to_utc(day, local_end, tz))
                )
        day += _DAY
    return _merge(intervals)


def _clip(windows: list[Window], start: datetime, end: datetime) -> list[Window]:
    return [(max(s, start), min(e, end)) for s, e in windows if s < end and e > start]


def _intersect(left: list[Window], right: list[Window]) -> list[Window]:
    """Intersection of two sorted lists of disjoint windows."""
    out: list[Window] = []
    i = j = 0
    while i < len(left) and j < len(right):
        start = max(left[i][0], right[j][0])
        end = min(left[i][1], right[j][1])
        if start < end:
            out.append((start, end))
        if left[i][1] < right[j][1]:
            i += 1
        else:
            j += 1
    return out


def _contains(windows: list[Window], start: datetime, end: datetime) -> bool:
    """Whether [start, end) lies inside one of the sorted, merged windows."""
    index = bisect_right(windows, start, key=itemgetter(0)) - 1
    return index >= 0 and windows[index][1] >= end and start < end


def working_windows(cal: Calendar, start: datetime, end: datetime) -> list[Window]:
    """The resource's working hours that intersect [start, end), as UTC intervals, sorted and
    merged when they touch (e.g. 'mon' 00:00-24:00 and 'tue' 00:00-08:00 make one window).

    Each local date's hours come from overrides[date] if present, else weekly[weekday]. "24:00"
    means midnight at the start of the next local date. A wall time in a daylight-saving gap maps
    forward to the end of the gap (02:30 on the spring-forward night is treated as 03:00); an
    ambiguous one takes its first occurrence (fold=0). Local dates from one day before `start`
    to one day after `end` are considered, then the result is clipped to [start, end).
    """
    start, end = _utc(start, "start"), _utc(end, "end")
    if start >= end:
        return []
    return _clip(_raw_windows(cal, start, end), start, end)


# --------------------------------------------------------------------------------------------
# Busy entries and the buffer rule
# --------------------------------------------------------------------------------------------


def _active(entry: Busy, now: datetime) -> bool:
    return entry.expires_at is None or now < entry.expires_at


def _conflicts(
    entry: Busy, start: datetime, end: datetime, block_start: datetime, block_end: datetime
) -> bool:
    """The buffer rule: the candidate's block against the entry's own time, or the candidate's
    own time against the entry's block. Buffer against buffer is no conflict."""
    return (block_start < entry.end and entry.start < block_end) or (
        start < entry.block_end and entry.block_start < end
    )


def is_free(
    busy: Sequence[Busy], start: datetime, end: datetime, rules: SlotRules, now: datetime
) -> bool:
    """True when the candidate [start, end) conflicts with no active busy entry.

    The candidate's block is [start - buffer_before, end + buffer_after). It conflicts with an
    active entry b (b.expires_at is None or now < b.expires_at) when that block overlaps
    [b.start, b.end) or the candidate's own [start, end) overlaps [b.block_start, b.block_end).
    Two buffers may overlap each other.
    """
    start, end, now = _utc(start, "start"), _utc(end, "end"), _utc(now, "now")
    block_start, block_end = start - rules.buffer_before, end + rules.buffer_after
    # _conflicts and _active, inlined and in that order (most entries are nowhere near): this
    # runs over every claim of the day on every hold.
    return not any(
        (
            (block_start < e.end and e.start < block_end)
            or (start < e.block_end and e.block_start < end)
        )
        and (e.expires_at is None or now < e.expires_at)
        for e in busy
    )


def _block_start(entry: Busy) -> datetime:
    return entry.block_start


def _in_utc(entry: Busy) -> Busy:
    """The entry with every datetime in UTC, so that entries can be ordered among themselves
    (datetimes sharing one ZoneInfo compare by wall clock, wrongly around a fall-back)."""
    start, end, block_start, block_end = entry.start, entry.end, entry.block_start, entry.block_end
    if start.tzinfo is end.tzinfo is block_start.tzinfo is block_end.tzinfo is UTC:
        return entry
    start, end, block_start, block_end = (
        moment.astimezone(UTC) for moment in (start, end, block_start, block_end)
    )
    return Busy(start, end, block_start, block_end, entry.expires_at)


class _BusyIndex:
    """One calendar's active busy entries near the queried range, sorted once for bisection.

    Entries are ordered by block_start with a running maximum of block_end, so a check only
    visits the entries whose block can reach the candidate's block (block_start <= start and
    end <= block_end hold for every entry); each of those is then tested with the exact rule.
    """

    __slots__ = ("_entries", "_lows", "_reach", "_starts")

    def __init__(self, busy: Sequence[Busy], now: datetime, start: datetime, end: datetime):
        # The one pass over every entry: keep it to two comparisons (this is the hot loop when a
        # resource has a long history), and look at expiry only for the few that survive.
        near = [entry for entry in busy if entry.block_end > start and entry.block_start < end]
        relevant = [
            _in_utc(entry) for entry in near if entry.expires_at is None or now < entry.expires_at
        ]
        relevant.sort(key=_block_start)
        self._entries = relevant
        self._lows = [entry.block_start for entry in relevant]
        self._reach = list(accumulate((entry.block_end for entry in relevant), max))
        self._starts = sorted(entry.start for entry in relevant)

    def is_free(self, start: datetime, end: datetime, rules: SlotRules) -> bool:
        block_start, block_end = start - rules.buffer_before, end + rules.buffer_after
        # Entries from `first` on reach past block_start; entries before `stop` begin before
        # block_end. Anything outside [first, stop) cannot touch the block at all.
        first = bisect_right(self._reach, block_start)
        stop = bisect_left(self._lows, block_end)
        entries = self._entries
        for index in range(first, stop):
            if _conflicts(entries[index], start, end, block_start, block_end):
                return False
        return True

    def count_starting(self, start: datetime, end: datetime) -> int:
        return bisect_left(self._starts, end) - bisect_left(self._starts, start)


def _local_day(moment: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """The UTC span of the local date of `moment`: from that date's first midnight (or the first
    instant after it, if midnight is skipped) to the next date's."""
    day = moment.astimezone(tz).date()
    return _wall_to_utc(day, 0, tz), _wall_to_utc(day, _MINUTES_PER_DAY, tz)


# --------------------------------------------------------------------------------------------
# Public checks
# --------------------------------------------------------------------------------------------


def within_hours(cal: Calendar, start: datetime, end: datetime) -> bool:
    """True when [start, end) lies entirely inside one working window (buffers need not be
    inside working hours)."""
    start, end = _utc(start, "start"), _utc(end, "end")
    if start >= end:
        return False
    # Most often the local day of `start` holds it alone: its windows are a part of the merged
    # ones, so inside one of them is inside the merged too. Otherwise (across midnight, outside
    # the hours) the neighbouring days decide.
    tz = ZoneInfo(cal.timezone)
    day = start.astimezone(tz).date()
    if _contains(_windows_between(cal, tz, day, day), start, end):
        return True
    return _contains(_raw_windows(cal, start, end), start, end)


def in_booking_window(start: datetime, rules: SlotRules, now: datetime) -> bool:
    """start >= now + min_notice, and (max_advance is None or start <= now + max_advance)."""
    start, now = _utc(start, "start"), _utc(now, "now")
    if start < now + rules.min_notice:
        return False
    return rules.max_advance is None or start <= now + rules.max_advance


def choose_resource(
    calendars: Sequence[Calendar],
    start: datetime,
    end: datetime,
    rules: SlotRules,
    now: datetime,
) -> str | None:
    """The round-robin choice for one given [start, end): among the calendars where within_hours
    and is_free hold, the one with the fewest active busy entries starting on the same local date
    (in that calendar's zone) as `start`, ties broken by resource id; None if none can take it."""
    if len(calendars) == 1:  # nothing to count
        cal = calendars[0]
        free = within_hours(cal, start, end) and is_free(cal.busy, start, end, rules, now)
        return cal.resource_id if free else None
    moment = _utc(start)
    days: dict[str, tuple[datetime, datetime]] = {}

    def load(cal: Calendar) -> tuple[int, str]:
        day = days.get(cal.timezone)
        if day is None:
            day = days[cal.timezone] = _local_day(moment, ZoneInfo(cal.timezone))
        count = sum(1 for b in cal.busy if _active(b, now) and day[0] <= b.start < day[1])
        return count, cal.resource_id

    # In the order of the choice, the first that can take it: counting is one pass over a day's
    # entries, where checking the hours and the entries of every calendar cost more.
    for cal in sorted(calendars, key=load):
        if within_hours(cal, start, end) and is_free(cal.busy, start, end, rules, now):
            return cal.resource_id
    return None


# --------------------------------------------------------------------------------------------
# Slot computation
# --------------------------------------------------------------------------------------------


class _LocalDays:
    """The local date of a rising instant in each calendar's zone, as its UTC span
    (`_local_day`), computed again only when the instant leaves a zone's current span."""

    def __init__(self, zones: Sequence[str]) -> None:
        self._members: dict[str, list[int]] = {}
        for k, zone in enumerate(zones):
            self._members.setdefault(zone, []).append(k)
        self._tz = {zone: ZoneInfo(zone) for zone in self._members}
        self._spans: dict[str, tuple[datetime, datetime]] = {}

    def move_to(self, moment: datetime) -> list[tuple[int, tuple[datetime, datetime]]]:
        """The calendars whose local date changed at `moment` (all of them at first), each with
        its new date's UTC span."""
        changed: list[tuple[int, tuple[datetime, datetime]]] = []
        for zone, members in self._members.items():
            span = self._spans.get(zone)
            if span is not None and span[0] <= moment < span[1]:
                continue
            span = self._spans[zone] = _local_day(moment, self._tz[zone])
            changed += [(k, span) for k in members]
        return changed


def _candidates(
    windows: list[Window], rules: SlotRules, start: datetime, end: datetime, now: datetime
) -> Iterator[datetime]:
    """Starts window.start + k * interval that fit in their window, lie in [start, end) and in
    the booking window."""
    earliest = max(start, now + rules.min_notice)
    horizon = None if rules.max_advance is None else now + rules.max_advance
    for window_start, window_end in windows:
        if window_start >= end:
            break
        candidate = window_start
        if candidate < earliest:  # jump straight to the first step at or after `earliest`
            candidate += -((window_start - earliest) // rules.interval) * rules.interval
        last = window_end - rules.duration
        while candidate <= last and candidate < end:
            if horizon is not None and candidate > horizon:
                return
            yield candidate
            candidate += rules.interval


def compute_slots(
    calendars: Sequence[Calendar],
    rules: SlotRules,
    start: datetime,
    end: datetime,
    now: datetime,
    assignment: Literal["any", "all"],
) -> list[Slot]:
    """Free slots whose start lies in [start, end), sorted by start (then resources).

    Candidate starts are window.start, window.start + interval, ... while candidate + duration
    <= window.end, for each working window (aligned on the window's real start, not on `start`;
    a slot may end after `end`). A candidate must be in the booking window and free on the
    resources concerned.

    "all" (collective): windows are the intersection of every calendar's working windows, a
    candidate must be free on every calendar, and Slot.resources is every resource id, sorted.
    "any" (round robin): candidates come from each calendar's own windows, each distinct start is
    offered once, on the calendar choose_resource would pick; Slot.resources is that one id.
    """
    if assignment not in ("any", "all"):
        raise ValueError(f"assignment must be 'any' or 'all', got {assignment!r}")
    start, end, now = _utc(start, "start"), _utc(end, "end"), _utc(now, "now")
    if not calendars or start >= end:
        return []
    duration = rules.duration
    windows = [_raw_windows(cal, start, end + duration) for cal in calendars]
    # Busy entries that can matter: those reaching any candidate's block, or starting on a local
    # date of some candidate (for the round-robin count). Two days of margin cover both.
    margin = 2 * _DAY
    lo, hi = start - rules.buffer_before - margin, end + duration + rules.buffer_after + margin

    slots: list[Slot] = []
    # One calendar: round robin has no one to choose between, so it is the collective case.
    if assignment == "all" or len(calendars) == 1:
        shared = windows[0]
        for other in windows[1:]:
            shared = _intersect(shared, other)
        everyone = tuple(sorted(cal.resource_id for cal in calendars))
        # Free on every calendar is free of every calendar's entries: one index of them all
        # (the buffer rule looks at one entry at a time), one look-up a candidate.
        index = _BusyIndex([entry for cal in calendars for entry in cal.busy], now, lo, hi)
        for candidate in _candidates(shared, rules, start, end, now):
            candidate_end = candidate + duration
            if index.is_free(candidate, candidate_end, rules):
                slots.append(Slot(candidate, candidate_end, everyone))
        return slots

    indexes = [_BusyIndex(cal.busy, now, lo, hi) for cal in calendars]
    # Round robin. Each distinct set of windows gives its candidates once (a team often shares
    # its hours). A candidate goes to the able calendar with the fewest active entries starting
    # on the candidate's local date, ties to the smaller id: that order changes only at a local
    # midnight, so calendars are tried in it and the first able one takes the candidate. Most
    # candidates need one check, not one per calendar (100 resources, a 1-minute grid and 62
    # days took 16.6 s checking every calendar for every start).
    distinct = list({tuple(w): w for w in windows}.values())
    if len(distinct) == 1:  # one merged, sorted list of windows: its starts rise, each once
        starts = list(_candidates(distinct[0], rules, start, end, now))
    else:
        starts = sorted({c for w in distinct for c in _candidates(w, rules, start, end, now)})
    days = _LocalDays([cal.timezone for cal in calendars])
    ids = [cal.resource_id for cal in calendars]
    loads: list[tuple[int, str]] = [(0, i) for i in ids]
    order: list[int] = []
    for candidate in starts:
        changed = days.move_to(candidate)
        if changed:
            for k, (day_start, day_end) in changed:
                loads[k] = (indexes[k].count_starting(day_start, day_end), ids[k])
            order = sorted(range(len(calendars)), key=loads.__getitem__)
        candidate_end = candidate + duration
        for k in order:
            if _contains(windows[k], candidate, candidate_end) and indexes[k].is_free(
                candidate, candidate_end, rules
            ):
                slots.append(Slot(candidate, candidate_end, (ids[k],)))
                break
    return slots
