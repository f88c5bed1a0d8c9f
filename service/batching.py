"""Group commit: concurrent commands of one kind in one process, decided together and committed
in one append.

Every command pays a round trip and a durable commit of its own (a few milliseconds of WAL flush
on a busy disk), and all seat bookings of a session compare-and-set its one stream, so they
serialise: a popular class could not take more than a few hundred bookings a second however fast
the rest is, and a worker spends a large share of each hold on sending its statement. Here,
requests that arrive while a batch of the same key is in flight queue up, and the next batch
decides them in arrival order against one read (each decision sees what the ones before it
decided: `Reader.stage`), then commits them in one append. Every request still gets its own
answer (its booking, or its own refusal such as slot_unavailable or not_enough_seats), and every
event carries its own request's metadata.

Invariants are untouched: a batch is one decision, appended with the expected version of every
stream it read or relied on, and retried on conflict like any command (service/handler.py). A
refusal decided in a batch that commits was decided on state that the commit proved current; a
batch that only refuses, on remembered state, is decided again on fresh state.

- Seats: keyed by session stream; one fold of the session for the whole batch.
- Holds: keyed by tenant (an append records one tenant), so holds on different resources share
  commits too. One read for the batch: the streams each hold will read (as planned from the
  service this process saw last) are read together, or served from the decision cache.

Commands with an Idempotency-Key are not batched: each stores its own answer beside its events.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Hashable
from typing import Final, Generic, TypeVar

from service import streams
from service.commands import AddSeats, HoldSlot
from service.decider import Appends, decide_add_seats
from service.errors import ApiError
from service.events import EventMeta, SeatsClaimed
from service.handler import Commands, Done, Reader, Stored
from service.usecases import HoldPlan, hold_decision, hold_plan, session_of

#: Requests decided together at most: bounds a batch's statement and its time in the decider.
MAX_BATCH: Final = 100
#: Requests waiting together are split among the free batch slots only into batches of this
#: many at least: a batch's own cost (its statement, its commit) is worth sharing.
MIN_SHARE: Final = 8

C = TypeVar("C", AddSeats, HoldSlot)


class _Request(Generic[C]):
    """One request waiting in a batch: its command, its metadata, and its answer to come."""

    __slots__ = ("answer", "cmd", "meta")

    def __init__(self, cmd: C, meta: EventMeta, loop: asyncio.AbstractEventLoop) -> None:
        self.cmd: C = cmd
        self.meta = meta
        self.answer: asyncio.Future[Done] = loop.create_future()


class _Batcher(ABC, Generic[C]):
    """Per-process queues by key, drained by up to `parallel` tasks: a request that finds a
    batch slot of its key free starts a batch at once (no waiting for company), and requests that
    arrive meanwhile form the next. Requests waiting together are shared among the free slots
    (`_take`), so that one batch is decided while another commits."""

    recall = False
    #: Batches of one key in flight at once. Seats: one (every batch writes the session's one
    #: stream, so a second would only lose its append). Holds: more, so that the next batch is
    #: decided while the last one commits (one in flight left the worker idle meanwhile).
    parallel = 1

    def __init__(self, commands: Commands) -> None:
        self.commands = commands
        self._queues: dict[str, list[_Request[C]]] = {}
        self._running: dict[str, int] = {}  # drain tasks, by key
        self._deciding: dict[str, int] = {}  # of those, the ones with a batch in hand

    @abstractmethod
    def key(self, cmd: C) -> str: ...

    @abstractmethod
    async def decide(self, r: Reader, key: str, batch: list[_Request[C]]) -> dict[int, Exception]:
        """Decide every request of `batch` in order, staging each decision in `r`
        (`Reader.stage`); return the refusals (or a request's own failure) by index in the
        batch. One request's bad input must never fail the others."""

    async def submit(self, cmd: C, meta: EventMeta) -> Done:
        """Run one command; returns the committed Done (which holds the request's own streams
        beside others'), or raises the request's own ApiError."""
        key = self.key(cmd)
        request = _Request(cmd, meta, asyncio.get_running_loop())
        self._queues.setdefault(key, []).append(request)
        self._start_drain(key)
        return await request.answer

    def _start_drain(self, key: str) -> None:
        running = self._running.get(key, 0)
        if running < self.parallel:
            self._running[key] = running + 1
            asyncio.create_task(self._drain(key))  # noqa: RUF006 - it ends when the queue does

    def affinity(self, cmd: C) -> Hashable:
        """Requests of one affinity probably write one stream: they are never split between
        batches in flight, which would race to append it (a lost race costs a batch a retry)."""
        return None

    def _take(self, key: str, queue: list[_Request[C]]) -> list[_Request[C]]:
        """The next batch: the waiting requests' share of the slots with no batch in hand (whole
        affinities, the earliest first), or all of them when a share would be small. Taking them
        all, as before, let one batch's answers bring its clients' next requests back together,
        into one batch again: in the benchmark every 64 requests went into one batch, the other
        slots idle and the worker idle while it committed."""
        free = self.parallel - self._deciding.get(key, 0)  # this one's slot included
        share = -(-len(queue) // free)
        if share < MIN_SHARE:
            batch, rest = queue[:MAX_BATCH], queue[MAX_BATCH:]
        else:
            together: dict[Hashable, list[int]] = {}
            for n, request in enumerate(queue):
                together.setdefault(self.affinity(request.cmd), []).append(n)
            taken: set[int] = set()
            for members in together.values():
                if len(taken) >= share:
                    break
                taken.update(members[: MAX_BATCH - len(taken)])
            batch = [request for n, request in enumerate(queue) if n in taken]  # arrival order
            rest = [request for n, request in enumerate(queue) if n not in taken]
        self._queues[key] = rest
        if rest:
            self._start_drain(key)  # a free slot takes the next share
        return batch

    async def _drain(self, key: str) -> None:
        try:
            while queue := self._queues.get(key):
                # A request whose caller is gone (cancelled) is not decided: nobody would hear
                # of the booking it made.
                batch = [r for r in self._take(key, queue) if not r.answer.done()]
                if not batch:
                    continue
                self._deciding[key] = self._deciding.get(key, 0) + 1
                try:
                    await self._run(key, batch)
                finally:
                    self._deciding[key] -= 1
                    if not self._deciding[key]:
                        del self._deciding[key]
        except BaseException as exc:  # cancelled (shutdown): nobody waits forever
            for request in self._queues.pop(key, []):
                if not request.answer.done():
                    request.answer.set_exception(exc)
            raise
        finally:
            self._running[key] -= 1
            if not self._running[key]:
                del self._running[key]
                if not self._queues.get(key):
                    self._queues.pop(key, None)

    async def _run(self, key: str, batch: list[_Request[C]]) -> None:
        refused: dict[int, Exception] = {}

        async def decide(r: Reader) -> Appends:
            refused.clear()
            refused.update(await self.decide(r, key, batch))
            return r.staged_appends()

        try:
            # One append for the batch; each event carries its own request's metadata. A batch
            # refuses nothing as a whole, so a retry needs no quick refusal pass first.
            done = await self.commands.run(
                batch[0].meta, decide, recall=self.recall, quick_refusal=False
            )
        except BaseException as exc:
            for request in batch:
                if not request.answer.done():
                    request.answer.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        assert not isinstance(done, Stored)
        # Each answer carries the position of its own request's last event (SPEC 3), not the
        # batch's: the events a request added carry that request's metadata.
        last: dict[int, int] = {}
        for events in done.new.values():
            for e in events:
                key_ = id(e.metadata)
                last[key_] = max(last.get(key_, 0), e.position)
        for n, request in enumerate(batch):
            if request.answer.done():
                continue
            if n in refused:
                request.answer.set_exception(refused[n])
            else:
                own = last.get(id(request.meta), 0)
                request.answer.set_result(dataclasses.replace(done, position=own))


class SeatBatcher(_Batcher[AddSeats]):
    """Seat bookings, by session stream."""

    def key(self, cmd: AddSeats) -> str:
        return streams.session(cmd.tenant, cmd.session_id)

    async def decide(
        self, r: Reader, key: str, batch: list[_Request[AddSeats]]
    ) -> dict[int, Exception]:
        refused: dict[int, Exception] = {}
        loaded, _ = await r.read([key])
        state = session_of(loaded[key])
        for n, request in enumerate(batch):
            try:
                appends = decide_add_seats(request.cmd, state)
            except Exception as exc:  # its refusal, or its own failure: not the others'
                refused[n] = exc
                continue
            r.new_stream(streams.booking(request.cmd.tenant, request.cmd.booking_id))
            r.stage(appends, request.meta)
            for event in appends.get(key, []):
                if isinstance(event, SeatsClaimed):
                    state.evolve(event)
        return refused


class HoldBatcher(_Batcher[HoldSlot]):
    """Holds, by tenant; decided on what this process remembers when it can (service/cache.py)."""

    recall = True
    parallel = 3

    def key(self, cmd: HoldSlot) -> str:
        return cmd.tenant

    def affinity(self, cmd: HoldSlot) -> Hashable:
        # Holds of one service on one day most likely claim the same day streams.
        return cmd.service_id, cmd.start.date()

    async def decide(
        self, r: Reader, key: str, batch: list[_Request[HoldSlot]]
    ) -> dict[int, Exception]:
        full: list[str] = []
        latest: list[str] = []
        plans: list[HoldPlan | None] = []
        for request in batch:
            # Only a plan, from the service last seen here: a hold it cannot plan is decided
            # (and refused, if it must be) on its own below.
            plan = None
            with contextlib.suppress(Exception):
                plan = hold_plan(request.cmd)
            plans.append(plan)
            if plan is not None:
                full += plan.ledgers
                latest += [plan.planned.stream_id, *plan.resources]
        await r.read(full, latest)  # one read (or none) for the batch; each decision reads again
        refused: dict[int, Exception] = {}
        for n, request in enumerate(batch):
            try:
                appends = await hold_decision(request.cmd, plans[n])(r)
            except (ApiError, ArithmeticError, ValueError) as exc:  # its own, not the batch's
                refused[n] = exc
                r.drop_new(streams.booking(request.cmd.tenant, request.cmd.booking_id))
                continue
            r.stage(appends, request.meta)
        return refused
