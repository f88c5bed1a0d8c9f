"""What an append changes in a read model (Projection.changes) is what comparing the folds before
and after it changes: checked for the busy table's shortcut, which looks only at the new events,
against the full comparison, over random days of claims and releases."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projections.readmodels import BY_NAME, Projection, Row, pg_micros
from service.events import (
    AnyEvent,
    BookingConfirmed,
    BookingPolicy,
    SlotHeld,
    TimeClaimed,
    TimeReleased,
)

STREAM = "tn_t:rd:room:1:2026-12-01"  # a resource id may hold a colon
DAY = datetime(2026, 12, 1, tzinfo=UTC)
BUSY = BY_NAME["busy"]


def claim(n: int, minutes: int, expires: bool, buffer: int = 0) -> TimeClaimed:
    start = DAY + timedelta(minutes=minutes)
    return TimeClaimed(
        resource_id="room:1",
        day="2026-12-01",
        claim_id=f"bk_{n}",
        start=start,
        end=start + timedelta(minutes=30),
        block_start=start - timedelta(minutes=buffer),
        block_end=start + timedelta(minutes=30 + 2 * buffer),
        expires_at=start if expires else None,
    )


def release(n: int) -> TimeReleased:
    return TimeReleased(resource_id="room:1", day="2026-12-01", claim_id=f"bk_{n}")


events = st.lists(
    st.one_of(
        st.builds(
            claim, st.integers(0, 6), st.integers(0, 1400), st.booleans(), st.sampled_from([0, 5])
        ),
        st.builds(release, st.integers(0, 6)),
        st.builds(BookingConfirmed, booking_id=st.just("bk_0")),  # not a ledger event
    ),
    max_size=12,
)


@dataclass(frozen=True)
class Logged:
    """An event as a fold reads it (projections.readmodels.Recorded)."""

    event: AnyEvent
    version: int
    position: int
    recorded_at: datetime


def logged(evs: list[AnyEvent], first: int = 1) -> list[Logged]:
    return [Logged(e, first + i, first + i, DAY) for i, e in enumerate(evs)]


def applied(
    p: Projection[Any],
    table: dict[tuple[Any, ...], Row],
    before: list[Logged],
    new: list[Logged],
    changes: Any,
) -> dict[tuple[Any, ...], Row]:
    rows, gone = changes(STREAM, before, new)
    assert not {p.key_of(r) for r in rows} & set(gone)  # never both for one key
    out = dict(table)
    for key in gone:
        out.pop(key, None)
    out.update((p.key_of(r), r) for r in rows)
    return out


@settings(max_examples=300, deadline=None)
@given(events, events)
def test_the_busy_shortcut_changes_the_table_as_the_full_comparison_does(
    first: list[AnyEvent], then: list[AnyEvent]
) -> None:
    before, new = logged(first), logged(then, len(first) + 1)
    table = {BUSY.key_of(r): r for r in BUSY.fold(STREAM, before)}
    full = applied(BUSY, table, before, new, lambda *a: Projection.changes(BUSY, *a))
    shortcut = applied(BUSY, table, before, new, BUSY.changes)
    assert shortcut == full == {BUSY.key_of(r): r for r in BUSY.fold(STREAM, before + new)}


def test_the_shortcut_reads_no_earlier_event() -> None:
    # Earlier events are not even looked at: a day's cost is its new events'.
    class Untouchable(list[Logged]):
        def __iter__(self) -> Any:
            raise AssertionError("the earlier events were read")

        def __getitem__(self, index: Any) -> Any:
            raise AssertionError("an earlier event was read")

        def __len__(self) -> int:
            raise AssertionError("the earlier events were counted")

    rows, gone = BUSY.changes(
        STREAM,
        Untouchable(logged([claim(1, 0, True)])),
        logged([claim(2, 60, True), release(1)], 2),
    )
    assert [r[3] for r in rows] == ["bk_2"]
    assert gone == [("tn_t", "room:1", DAY.date(), "bk_1")]


def test_a_claim_off_the_streams_resource_and_day_is_refused() -> None:
    other = TimeClaimed(
        resource_id="room:2",
        day="2026-12-01",
        claim_id="bk_1",
        start=DAY,
        end=DAY,
        block_start=DAY,
        block_end=DAY,
    )
    with pytest.raises(ValueError, match="not on"):
        BUSY.changes(STREAM, [], logged([other]))


@settings(max_examples=300, deadline=None)
@given(
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=5, minutes=45)), timezone(-timedelta(hours=11))]
        ),
    )
)
def test_pg_micros_is_postgresqls_binary_timestamptz(at: datetime) -> None:
    # PostgreSQL keeps a timestamptz as microseconds since 2000-01-01 00:00 UTC.
    assert pg_micros(at) == (at - datetime(2000, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    assert pg_micros(None) is None


@settings(max_examples=100, deadline=None)
@given(events)
def test_a_fold_for_copy_gives_every_event_time_as_postgresqls_microseconds(
    evs: list[AnyEvent],
) -> None:
    """Replay's COPY sends timestamptz columns as int8 (projections/replay.py _writer): every
    time a row takes from an event must go through the fold's `time`; recorded times come in that
    form already. A column left out would reach the COPY as a datetime and fail it."""
    held = SlotHeld(
        booking_id="bk_0",
        service_id="svc",
        resources=["room:1"],
        start=DAY,
        end=DAY + timedelta(minutes=30),
        expires_at=DAY + timedelta(minutes=10),
        policy=BookingPolicy(),
        customer=None,
        notes=None,
    )
    recorded = 86_400_000_000  # as replay's envelope gives a recorded time: PostgreSQL's form
    cases = [(BUSY, STREAM, evs), (BY_NAME["bookings"], "tn_t:bk:bk_0", [held, *evs])]
    for p, stream, these in cases:
        recs = [Logged(e, i + 1, i + 1, recorded) for i, e in enumerate(these)]  # type: ignore[arg-type]
        as_they_are = p.fold(stream, recs)
        for_copy = p.fold(stream, recs, pg_micros)
        assert len(as_they_are) == len(for_copy) and (p is BUSY or for_copy)
        for row, copied in zip(as_they_are, for_copy, strict=True):
            for value, sent, sql_type in zip(row, copied, p.types, strict=True):
                if sql_type == "timestamptz" and isinstance(value, datetime):
                    assert sent == pg_micros(value)  # an event's time, converted
                else:  # anything else, a recorded time too, as it is
                    assert sent == value
