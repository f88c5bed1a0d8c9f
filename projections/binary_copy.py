"""A replay's rows in PostgreSQL's binary COPY format, encoded by projections/_binary_copy.c.

asyncpg's copy_records_to_table encodes every value through a generic codec: 3.3-4.2 µs of
Python an rm_bookings row, 1.3-1.6 µs of it for the one-element `resources text[]`, a tenth of a
replay's CPU (bench/FINDINGS.md). The C encoder writes the same bytes for the column types the
read models use, and the replay sends them with copy_to_table.

Where the extension was not built (an install without a C compiler) or a table has a column of
another type, `Encoding.of` gives None and the replay uses copy_records_to_table: the same rows,
only slower. tests/test_copy_encoder.py loads rows both ways and compares them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

import asyncpg

_encode: Callable[[list[tuple[Any, ...]], bytes], bytes] | None
try:
    from projections._binary_copy import encode as _encode
except ImportError:  # built without a C compiler: asyncpg's encoder does the work
    _encode = None

#: Whether this install has the C encoder.
AVAILABLE: Final = _encode is not None

#: The encoder's kind of each column type (format_type's spelling) it takes; a timestamptz is
#: an int, PostgreSQL's microseconds since 2000 (as the replay's writers send them).
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
    """How `columns` of `table` are encoded: one kind letter per column."""

    def __init__(self, kinds: bytes) -> None:
        self.kinds = kinds

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

    def encode(self, rows: list[tuple[Any, ...]]) -> bytes:
        """`rows` as a whole binary COPY stream (header, tuples, trailer)."""
        assert _encode is not None  # an Encoding exists only where the encoder does
        return _encode(rows, self.kinds)
