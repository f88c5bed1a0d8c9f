"""Group commit for seat bookings on one session.

All seat bookings of a session compare-and-set its one stream, so they serialise, and each pays a
durable commit of its own (a few milliseconds of WAL flush): a popular class could not take more
than a few hundred bookings a second however fast the rest is. Here, concurrent requests for the
same session in one process are decided together, in arrival order, against one read of the
session (each decision sees the seats the ones before it took), and committed in one append;
every request still gets its own answer (its booking, or its own refusal such as
not_enough_seats). Invariants are untouched: the batch is one decision appended with the expected
version of the session stream, retried on conflict like any command.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Final

from service import streams
from service.commands import AddSeats
from service.decider import Appends, decide_add_seats, merge
from service.errors import ApiError
from service.events import EventMeta, SeatsClaimed
from service.handler import Commands, Done, Reader, Stored
from service.usecases import session_of

MAX_BATCH: Final = 100


@dataclass(slots=True)
class _Request:
    cmd: AddSeats
    meta: EventMeta
    answer: asyncio.Future[Done] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class SeatBatcher:
    """Per-process queues of seat bookings by session stream, each drained by one task."""

    def __init__(self, commands: Commands) -> None:
        self.commands = commands
        self._queues: dict[str, list[_Request]] = {}

    async def submit(self, cmd: AddSeats, meta: EventMeta) -> Done:
        """Book; returns the committed Done (its booking stream is the request's), or raises
        the request's own ApiError."""
        key = streams.session(cmd.tenant, cmd.session_id)
        request = _Request(cmd, meta)
        queue = self._queues.get(key)
        if queue is None:
            self._queues[key] = [request]
            asyncio.create_task(self._drain(key))  # noqa: RUF006 - it ends when the queue does
        else:
            queue.append(request)
        return await request.answer

    async def _drain(self, key: str) -> None:
        while True:
            queue = self._queues.get(key, [])
            if not queue:
                self._queues.pop(key, None)
                return
            batch, self._queues[key] = queue[:MAX_BATCH], queue[MAX_BATCH:]
            await self._run(key, batch)

    async def _run(self, key: str, batch: list[_Request]) -> None:
        refused: dict[int, ApiError] = {}

        async def decide(r: Reader) -> Appends:
            refused.clear()
            loaded, _ = await r.read([key])
            state = session_of(loaded[key])
            parts: list[Appends] = []
            for n, request in enumerate(batch):
                try:
                    appends = decide_add_seats(request.cmd, state)
                except ApiError as exc:
                    refused[n] = exc
                    continue
                own = streams.booking(request.cmd.tenant, request.cmd.booking_id)
                r.new_stream(own)
                r.metas[own] = request.meta
                for event in appends.get(key, []):
                    if isinstance(event, SeatsClaimed):
                        state.evolve(event)
                parts.append(appends)
            return merge(*parts)

        try:
            # One append for the batch. Each booking's events carry its own request's metadata;
            # the session stream's, the first request's.
            done = await self.commands.run(batch[0].meta, decide)
        except Exception as exc:
            for request in batch:
                if not request.answer.done():
                    request.answer.set_exception(exc)
            return
        assert not isinstance(done, Stored)
        for n, request in enumerate(batch):
            if request.answer.done():
                continue
            if n in refused:
                request.answer.set_exception(refused[n])
            else:
                request.answer.set_result(done)
