"""A seeded random workload of booking commands, driven straight through the command shell
(service.handler.Commands with the service.usecases decisions), so that thousands of commands run
in seconds while writing exactly what the HTTP API would: events plus inline read models.

Sessions are scheduled and cancelled by small decisions written here (the sessions API is another
module's work): they append the same kinds of events the log holds for sessions.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from service import streams
from service.commands import (
    AddSeats,
    ApproveBooking,
    BookingCommand,
    By,
    CancelBooking,
    ConfirmBooking,
    ExpireHold,
    ExtendHold,
    HoldSlot,
    RejectBooking,
    RescheduleBooking,
)
from service.decider import Appends, Booking, claim
from service.errors import ApiError
from service.events import (
    BookingCancelled,
    BookingPolicy,
    Customer,
    Event,
    EventMeta,
    ResourceUpserted,
    SeatsReleased,
    ServiceUpserted,
    SessionCancelled,
    SessionScheduled,
    TimeReleased,
)
from service.handler import Commands, Done, Reader
from service.usecases import booking_after, booking_decision, fold, hold_decision, seats_decision

# Far in the future so that notice windows never interfere, whatever the real clock says.
T0 = datetime(2031, 3, 3, tzinfo=UTC)
ALL_DAY = {d: [("00:00", "24:00")] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}
CUSTOMER = Customer(name="Ada", email="ada@example.com")


@dataclass
class Workload:
    """Commands against one tenant; `counts` says what ran and how it ended."""

    commands: Commands
    tenant: str
    seed: int = 7
    resources: int = 10
    days: int = 60
    sessions: int = 12
    rng: random.Random = field(init=False)
    counts: Counter[str] = field(default_factory=Counter)
    bookings: dict[str, Booking] = field(default_factory=dict)
    session_ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def meta(self, actor: str = "key_workload") -> EventMeta:
        return EventMeta(tenant=self.tenant, actor=actor, request_id=f"rq{self.rng.random()}")

    async def _append(self, appends: Appends, new_streams: list[str]) -> Done:
        async def decide(r: Reader) -> Appends:
            await r.read([s for s in appends if s not in new_streams])
            for s in new_streams:
                r.new_stream(s)
            return appends

        result = await self.commands.run(self.meta("key_setup"), decide)
        assert isinstance(result, Done)
        return result

    async def setup(self) -> None:
        """Resources r0..rN, two services, and sessions on their own rooms."""
        for i in range(self.resources):
            rid = f"r{i}"
            event = ResourceUpserted(
                resource_id=rid, name=rid, timezone="UTC", weekly=ALL_DAY, overrides={}, metadata={}
            )
            await self._append({streams.resource(self.tenant, rid): [event]}, [])
        half = self.resources // 2
        pools = {
            "s60": [f"r{i}" for i in range(half)],
            "s30": [f"r{i}" for i in range(half, 2 * half)],
        }
        for sid, duration, confirm, after in (("s60", 60, False, 0), ("s30", 30, True, 15)):
            pool_ids = pools[sid]
            event2 = ServiceUpserted(
                service_id=sid,
                name=sid,
                durations=[duration, duration * 2],
                slot_interval_minutes=30,
                buffer_after_minutes=after,
                requires_confirmation=confirm,
                resources=pool_ids,
                hold_seconds=600,
            )
            await self._append({streams.service(self.tenant, sid): [event2]}, [])
        for n in range(self.sessions):
            await self.schedule_session(f"ss{n}", f"room{n}", n)

    async def schedule_session(self, session_id: str, room: str, n: int) -> None:
        start = T0 + timedelta(days=n % self.days, hours=8 + n % 7)
        end = start + timedelta(hours=1)
        scheduled = SessionScheduled(
            session_id=session_id,
            resource_id=room,
            start=start,
            end=end,
            title=f"Class {n}",
            max_seats=8,
        )
        appends: Appends = {streams.session(self.tenant, session_id): [scheduled]}
        appends.update(claim(self.tenant, session_id, [room], start, end, BookingPolicy(), None))
        await self._append(appends, list(appends))
        self.session_ids.append(session_id)

    async def cancel_session(self, session_id: str) -> None:
        """The session and every active seat booking of it, in one atomic append."""
        tenant = self.tenant
        sid = streams.session(tenant, session_id)

        async def decide(r: Reader) -> Appends:
            loaded, _ = await r.read([sid])
            events = loaded[sid]
            scheduled = next(e.event for e in events if isinstance(e.event, SessionScheduled))
            if any(isinstance(e.event, SessionCancelled) for e in events):
                raise ApiError("already cancelled")
            active = [b for b in self.bookings.values() if b.session_id == session_id]
            own = [streams.booking(tenant, b.id) for b in active]
            day_streams = [
                streams.resource_day(tenant, scheduled.resource_id, d)
                for d in streams.utc_days(scheduled.start, scheduled.end)
            ]
            got, _ = await r.read(own + day_streams)
            out: Appends = {
                sid: [SessionCancelled(session_id=session_id, message="cancelled by workload")]
            }
            for b in active:
                stream = streams.booking(tenant, b.id)
                folded = fold(got[stream])
                if folded is None or folded.status not in ("held", "pending", "confirmed"):
                    continue
                out[stream] = [BookingCancelled(booking_id=b.id, by="owner", reason="session")]
                out[sid].append(SeatsReleased(session_id=session_id, booking_id=b.id))
            released: list[Event] = [
                TimeReleased(
                    resource_id=scheduled.resource_id, day=s.rsplit(":", 1)[1], claim_id=session_id
                )
                for s in day_streams
            ]
            for s, ev in zip(day_streams, released, strict=True):
                out[s] = [ev]
            return out

        await self.commands.run(self.meta(), decide)
        self.session_ids.remove(session_id)
        for b in list(self.bookings.values()):
            if b.session_id == session_id:
                del self.bookings[b.id]

    def _pick(self, statuses: tuple[str, ...], kind: str | None = None) -> Booking | None:
        ids = [
            b
            for b in self.bookings.values()
            if b.status in statuses and (kind is None or b.kind == kind)
        ]
        return self.rng.choice(ids) if ids else None

    def _start(self) -> datetime:
        return T0 + timedelta(
            days=self.rng.randrange(self.days), minutes=30 * self.rng.randrange(6, 40)
        )

    def _lifecycle(self, roll: float, now: datetime) -> tuple[str, Booking, BookingCommand] | None:
        """A command on an existing booking in a state where it usually applies."""
        tenant, rng = self.tenant, self.rng
        active = ("held", "pending", "confirmed")
        op, wanted, kind = next(
            (op, wanted, kind)
            for bound, op, wanted, kind in (
                (0.60, "confirm", ("held",), None),
                (0.70, "cancel", active, None),
                (0.78, "expire", ("held",), None),
                (0.88, "reschedule", active, "slot"),
                (0.93, "extend", ("held",), None),
                (0.97, "approve", ("pending",), None),
                (1.00, "reject", ("pending",), None),
            )
            if roll < bound
        )
        b = self._pick(wanted, kind)
        if b is None:
            return None
        cmd: BookingCommand
        if op == "confirm":
            cmd = ConfirmBooking(tenant=tenant, now=now, booking_id=b.id, customer=CUSTOMER)
        elif op == "cancel":
            by: By = rng.choice(("owner", "customer"))
            cmd = CancelBooking(tenant=tenant, now=now, booking_id=b.id, by=by)
        elif op == "expire":
            later = (b.expires_at or now) + timedelta(seconds=1)
            cmd = ExpireHold(tenant=tenant, now=later, booking_id=b.id)
        elif op == "reschedule":
            cmd = RescheduleBooking(tenant=tenant, now=now, booking_id=b.id, start=self._start())
        elif op == "extend":
            cmd = ExtendHold(tenant=tenant, now=now, booking_id=b.id, seconds=60)
        elif op == "approve":
            cmd = ApproveBooking(tenant=tenant, now=now, booking_id=b.id)
        else:
            cmd = RejectBooking(tenant=tenant, now=now, booking_id=b.id, reason="no")
        return op, b, cmd

    async def one(self, n: int) -> None:
        """Run one randomly chosen command."""
        rng = self.rng
        roll = rng.random()
        tenant = self.tenant
        now = T0 - timedelta(days=1)
        target = f"bk{self.seed}_{n}"
        if roll < 0.36:
            op = "hold"
            confirm = rng.random() < 0.2
            decide = hold_decision(
                HoldSlot(
                    tenant=tenant,
                    now=now,
                    booking_id=target,
                    service_id=rng.choice(("s60", "s30")),
                    start=self._start(),
                    customer=CUSTOMER if confirm or rng.random() < 0.5 else None,
                    confirm=confirm,
                )
            )
        elif roll < 0.48:
            op = "seats"
            decide = seats_decision(
                AddSeats(
                    tenant=tenant,
                    now=now,
                    booking_id=target,
                    session_id=rng.choice(self.session_ids),
                    seats=rng.randint(1, 3),
                    customer=CUSTOMER,
                    confirm=rng.random() < 0.5,
                )
            )
        elif roll < 0.995:
            picked = self._lifecycle(roll, now)
            if picked is None:
                return
            op, booking, cmd = picked
            target = booking.id
            decide = booking_decision(cmd)
        else:
            op = "session_cancel"
            try:
                await self.cancel_session(rng.choice(self.session_ids))
                self.counts[f"{op}:ok"] += 1
                await self.schedule_session(f"ss{n}", f"room{n}", n)
            except ApiError as exc:
                self.counts[f"{op}:{exc.code}"] += 1
            return
        try:
            result = await self.commands.run(self.meta(), decide)
        except ApiError as exc:
            self.counts[f"{op}:{exc.code}"] += 1
            return
        self.counts[f"{op}:ok"] += 1
        stream = streams.booking(tenant, target)
        if isinstance(result, Done) and stream in result.new:
            b = booking_after(result, stream)
            if b.status in ("held", "pending", "confirmed"):
                self.bookings[b.id] = b
            else:
                self.bookings.pop(b.id, None)

    async def run(self, commands: int, concurrency: int = 8) -> int:
        """Run commands from `concurrency` tasks until `commands` have run (a draw that finds no
        booking to act on does not count); returns how many ran."""
        numbers = itertools.count()

        async def worker() -> None:
            while sum(self.counts.values()) < commands:
                await self.one(next(numbers))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return sum(self.counts.values())
