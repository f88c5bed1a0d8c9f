"""A replay's rows in PostgreSQL's binary COPY format, encoded by projections/_binary_copy.c.

asyncpg's copy_records_to_table encodes every value through a generic codec: 3.3-4.2 µs of
Python an rm_bookings row, 1.3-1.6 µs of it for the one-element `resources text[]`, a tenth of a
replay's CPU (bench/FINDINGS.md). The C encoder writes the same bytes for the column types the
read models use, and the replay sends them with copy_to_table.

Where the extension was not built (an install without a C compiler) or a table has a column of
another type, `Encoding.of` gives None and the replay uses copy_records_to_table: the same rows,
only slower (`copy_rows` does either). tests/test_binary_copy.py loads rows both ways and
compares them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Final

import asyncpg

_encode_into: Callable[[bytearray, list[tuple[Any, ...]], bytes], int] | None
try:
    from projections._binary_copy import encode_into as _encode_into
except ImportError:  # built without a C compiler: asyncpg's encoder does the work
    _encode_into = None

#: Bytes per CopyData message (see `pieces`).
PIECE: Final = 65536

#: Whether this install has the C encoder.
AVAILABLE: Final = _encode_into is not None

#: The encoder's kind of each column type (format_type's spelling) it takes; a timestamptz is
#: an aware datetime or an int, PostgreSQL's microseconds since 2000 (as the reader gives the
#: recorded times).
KINDS: Final = {
    "text": "t",
    "json": "t",  # json's binary form is its text
    "jsonb": "j",
    "text[]": "a",
    "smallint": "h",
    "integer": "i",
    "bigint": "l",
    "timestamp with time zone": "m",
    "date": "d",
    "boolean": "b",
}


class Encoding:
    """How `columns` of `table` are encoded: one kind letter per column. It owns the buffer its
    chunks are encoded into (see `encode`): one Encoding per writer of a table."""

    def __init__(self, kinds: bytes) -> None:
        self.kinds = kinds
        self._buffer = bytearray()

    @classmethod
    async def of(
        cls, conn: asyncpg.Connection, table: str, columns: Sequence[str]
    ) -> Encoding | None:
        """The encoding of `table`'s `columns` as they are in the database; None when the C
        encoder is missing or takes a column's type (the caller falls back to asyncpg)."""
        if not AVAILABLE:
            return None
        types = dict(
            await conn.fetch(
                "SELECT attname, format_type(atttypid, NULL) FROM pg_attribute "
                "WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped",
                table,
            )
        )
        kinds = [KINDS.get(types.get(c, "")) for c in columns]
        if None in kinds:
            return None
        return cls("".join(k for k in kinds if k is not None).encode())

    def encode(self, rows: list[tuple[Any, ...]]) -> memoryview:
        """`rows` as a whole binary COPY stream (header, tuples, trailer): a view of this
        Encoding's buffer, valid until its next `encode`, which needs it released (`with`).
        The buffer is reused, never shrunk: new memory for every chunk cost page faults."""
        assert _encode_into is not None  # an Encoding exists only where the encoder does
        n = _encode_into(self._buffer, rows, self.kinds)  # before the view: it may grow
        return memoryview(self._buffer)[:n]


async def pieces(data: memoryview) -> AsyncIterator[memoryview]:
    """`data` in slices of PIECE bytes, for copy_to_table's `source`. Given the whole buffer,
    asyncpg copies it into one new CopyData message and asyncio's transport copies what the
    socket does not take at once into a buffer of its own: fresh memory for every chunk of
    rows, and as many page faults as the encoding costs. Slices of 64 kB are copied into
    memory the allocator reuses, and the socket mostly takes each whole."""
    for start in range(0, len(data), PIECE):
        yield data[start : start + PIECE]


async def copy_rows(
    conn: asyncpg.Connection,
    table: str,
    rows: list[tuple[Any, ...]],
    columns: Sequence[str],
    encoding: Encoding | None,
) -> None:
    """COPY `rows` into `table`: encoded by `encoding` and sent in `pieces`, or, without one, by
    asyncpg's copy_records_to_table (its timestamptz values as `conn`'s codec takes them)."""
    if encoding is None:
        await conn.copy_records_to_table(table, records=rows, columns=columns)
        return
    with encoding.encode(rows) as data:  # a view of the encoding's buffer
        await conn.copy_to_table(table, source=pieces(data), columns=columns, format="binary")
