"""What this process last knew of the streams it decided on: the decision cache.

A command reads the streams it decides on (a day ledger, a booking), then appends with the
versions it read. Most of the time this process wrote those streams itself a moment ago, so the
read returns what it already knew. The cache keeps, per stream, either every event (a stream
folded for a decision) or only the newest one (a catalogue entry: a service or a resource, whose
last event is its whole state), with the version it had.

It is never trusted, only checked: a decision made on remembered state is appended with the
remembered version of every stream it used, written or not (store: a stream with no events is
checked and left alone), so it commits only if all of them are still current: exactly as if it had
read them in that statement. A stale entry costs one failed statement, after which the command is
decided again on fresh state. Refusals and no-op answers are never given from remembered state
(service/handler.py): they are decided again on fresh state, so a hold freed by another process
is never refused because this one had not seen the cancellation yet.

Events are immutable and stream versions gapless, so "the first v events of stream s" never
changes once true; only an entry written after its commit is kept, and an older version never
replaces a newer one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Final

from service.store import RecordedEvent

#: Events kept in all (each entry counts its events, at least 1): bounds memory to tens of MB.
CAPACITY: Final = 100_000


class StreamCache:
    """A bounded least-recently-used map: stream id -> (version, events or only the newest)."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, tuple[int, list[RecordedEvent] | None, RecordedEvent]] = (
            OrderedDict()
        )
        self._empty: OrderedDict[str, None] = OrderedDict()  # streams known to have no events
        self._size = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries) + len(self._empty)

    def full(self, stream_id: str) -> list[RecordedEvent] | None:
        """Every event of the stream as last known (its version is the length), or None."""
        entry = self._entries.get(stream_id)
        if entry is not None and entry[1] is not None:
            self._entries.move_to_end(stream_id)
            self.hits += 1
            return entry[1]
        if stream_id in self._empty:
            self._empty.move_to_end(stream_id)
            self.hits += 1
            return []
        self.misses += 1
        return None

    def latest(self, stream_id: str) -> RecordedEvent | None:
        """The newest event of the stream as last known, or None (unknown or empty)."""
        entry = self._entries.get(stream_id)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(stream_id)
        self.hits += 1
        return entry[2]

    def put_full(self, stream_id: str, events: Sequence[RecordedEvent]) -> None:
        if not events:
            if stream_id not in self._entries:
                self._empty[stream_id] = None
                self._trim()
            return
        self._put(stream_id, events[-1], list(events))

    def put_latest(self, stream_id: str, newest: RecordedEvent) -> None:
        self._put(stream_id, newest, None)

    def forget(self, stream_ids: Iterable[str]) -> None:
        for s in stream_ids:
            self._empty.pop(s, None)
            entry = self._entries.pop(s, None)
            if entry is not None:
                self._size -= _weight(entry[1])

    def _put(
        self, stream_id: str, newest: RecordedEvent, events: list[RecordedEvent] | None
    ) -> None:
        old = self._entries.get(stream_id)
        if old is not None:
            if old[0] > newest.version or (old[0] == newest.version and events is None):
                return  # never replace a newer entry, nor a full one with its own newest event
            self._size -= _weight(old[1])
        self._empty.pop(stream_id, None)
        self._entries[stream_id] = (newest.version, events, newest)
        self._entries.move_to_end(stream_id)
        self._size += _weight(events)
        self._trim()

    def _trim(self) -> None:
        while self._size > self.capacity and self._entries:
            _, (_, events, _) = self._entries.popitem(last=False)
            self._size -= _weight(events)
        while len(self._empty) > self.capacity:
            self._empty.popitem(last=False)


def _weight(events: list[RecordedEvent] | None) -> int:
    return max(1, len(events)) if events is not None else 1
