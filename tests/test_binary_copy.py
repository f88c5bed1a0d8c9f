"""The replay's C encoder of binary COPY (projections/_binary_copy.c): the rows it loads are the
rows asyncpg's copy_records_to_table loads, for every column type it takes; a value of the wrong
type or range is refused with its row and column named; and the replay uses it, or asyncpg where
it cannot."""

from __future__ import annotations

import asyncio
import platform
import shutil
import sysconfig
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projections import binary_copy
from projections import replay as rebuild
from projections.binary_copy import PIECE, Encoding, pieces
from projections.readmodels import pg_micros
from projections.runner import ProjectionRunner
from service.handler import Commands
from service.tenants import create_tenant
from tests.settle import settled
from tests.workload import Workload

COLUMNS = ("n", "t", "js", "j", "a", "h", "i", "m", "d", "b")
TABLE = (
    "n bigint, t text, js json, j jsonb, a text[], h smallint, i integer, "
    "m timestamptz, d date, b boolean"
)

# Text PostgreSQL takes: no NUL, no lone surrogates (UTF-8 cannot hold them).
texts = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
json_texts = json_values.map(lambda v: msgspec.json.encode(v).decode())
zones = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=9))]
)
# PostgreSQL's timestamptz goes from 4713 BC (about -2**57.6 µs from 2000) to 294276 AD.
times = st.datetimes(timezones=st.timezones() | zones) | st.integers(-(2**57), 2**62)


def row_of(n: int) -> Any:
    maybe = st.none().__or__
    return st.tuples(
        st.just(n),
        maybe(texts),
        maybe(json_texts),
        maybe(json_texts),
        maybe(st.lists(st.none() | texts, max_size=4) | st.tuples(texts)),
        maybe(st.integers(-(2**15), 2**15 - 1)),
        maybe(st.integers(-(2**31), 2**31 - 1)),
        maybe(times),
        maybe(st.dates()),
        maybe(st.booleans()),
    )


rows_strategy = st.integers(0, 12).flatmap(lambda k: st.tuples(*(row_of(n) for n in range(k))))


def micros(value: Any) -> Any:
    """What asyncpg's int8 codec for timestamptz (the replay's fallback) is given for `value`."""
    return pg_micros(value) if isinstance(value, datetime) else value


class Db:
    """One connection on a loop of its own, for a synchronous Hypothesis test."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.conn: asyncpg.Connection = self.run(asyncpg.connect(url))
        self.run(
            self.conn.execute(
                f"CREATE TEMP TABLE by_c ({TABLE}); CREATE TEMP TABLE by_asyncpg ({TABLE})"
            )
        )
        self.run(rebuild._times_as_micros(self.conn))
        self.encoding = self.run(Encoding.of(self.conn, "by_c", COLUMNS))

    def run(self, work: Any) -> Any:
        return self.loop.run_until_complete(work)

    async def both_ways(self, rows: list[tuple[Any, ...]]) -> tuple[list[Any], list[Any]]:
        await self.conn.execute("TRUNCATE by_c, by_asyncpg")
        assert self.encoding is not None
        with self.encoding.encode(rows) as data:
            await self.conn.copy_to_table("by_c", source=data, columns=COLUMNS, format="binary")
        await self.conn.copy_records_to_table(
            "by_asyncpg",
            records=[(*r[:7], micros(r[7]), *r[8:]) for r in rows],
            columns=COLUMNS,
        )
        query = "SELECT n, t, js::text, j::text, a, h, i, m, d, b FROM {} ORDER BY n"
        return (
            [tuple(r) for r in await self.conn.fetch(query.format("by_c"))],
            [tuple(r) for r in await self.conn.fetch(query.format("by_asyncpg"))],
        )


@pytest.fixture(scope="module")
def db(module_database_url: str) -> Iterator[Db]:
    d = Db(module_database_url)
    yield d
    d.run(d.conn.close())
    d.loop.close()


def test_the_encoder_is_built_wherever_it_can_be() -> None:
    """`make` builds it (setup.py) where there is a C compiler and Python's headers; elsewhere
    the install goes on without it and a replay copies through asyncpg, slower."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    headers = Path(sysconfig.get_paths()["include"], "Python.h")
    buildable = shutil.which(compiler) is not None and headers.exists()
    assert buildable == binary_copy.AVAILABLE, "projections/_binary_copy.c: pip install -e ."


def test_the_kinds_are_read_from_the_table(db: Db) -> None:
    assert db.encoding is not None and db.encoding.kinds == b"lttjahimdb"
    db.run(db.conn.execute("CREATE TEMP TABLE other (t text, x numeric)"))
    assert db.run(Encoding.of(db.conn, "other", ("t",))) is not None
    assert db.run(Encoding.of(db.conn, "other", ("t", "x"))) is None  # asyncpg does numeric


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=rows_strategy)
def test_rows_load_as_asyncpg_loads_them(db: Db, rows: tuple[tuple[Any, ...], ...]) -> None:
    by_c, by_asyncpg = db.run(db.both_ways(list(rows)))
    assert by_c == by_asyncpg
    assert len(by_c) == len(rows)


def test_edges_load_as_asyncpg_loads_them(db: Db) -> None:
    eastern = datetime(2026, 11, 1, 1, 30, fold=1, tzinfo=ZoneInfo("America/New_York"))
    rows = [
        (
            1,
            "",
            "{}",
            "[]",
            [],
            -(2**15),
            -(2**31),
            datetime.min.replace(tzinfo=UTC),
            date.min,
            False,
        ),
        (
            2,
            "é€😀",
            "null",
            '"x"',
            ["a", None, ""],
            2**15 - 1,
            2**31 - 1,
            datetime.max.replace(tzinfo=UTC),
            date.max,
            True,
        ),
        (3, "x" * 100_000, None, None, ("only",), 0, 0, eastern, date(2000, 1, 1), None),
        (4, None, None, None, None, None, None, -(2**63), date(1999, 12, 31), None),
        (5, None, None, None, None, None, None, 2**63 - 1, date(2000, 3, 1), None),
    ]
    by_c, by_asyncpg = db.run(db.both_ways(rows))
    assert by_c == by_asyncpg
    assert by_c[2][7] == pg_micros(datetime(2026, 11, 1, 6, 30, tzinfo=UTC))  # the second 1:30
    assert by_c[3][7] == -(2**63) and by_c[4][7] == 2**63 - 1  # -infinity, infinity


@pytest.mark.parametrize(
    ("kinds", "rows", "error", "names"),
    [
        (b"t", [(1,)], TypeError, "row 0, column 0: expected str, got int"),
        (b"tl", [("x", 1), ("x", "1")], TypeError, "row 1, column 1: expected int, got str"),
        (b"i", [(True,)], TypeError, "expected int, got bool"),
        (b"h", [(2**15,)], OverflowError, "32768 is out of range for int2"),
        (b"i", [(-(2**31) - 1,)], OverflowError, "out of range for int4"),
        (b"l", [(2**63,)], OverflowError, "out of range for int8"),
        (b"m", [(datetime(2026, 1, 1),)], TypeError, "naive datetime"),
        (b"m", [("2026-01-01",)], TypeError, "expected an aware datetime or int, got str"),
        (b"d", [(datetime(2026, 1, 1, tzinfo=UTC),)], TypeError, "expected datetime.date"),
        (b"a", [("abc",)], TypeError, "expected list or tuple of str, got str"),
        (b"a", [([1],)], TypeError, "expected str, got int"),
        (b"b", [(1,)], TypeError, "expected bool, got int"),
        (b"t", [("\ud800",)], UnicodeEncodeError, "surrogates not allowed"),
        (b"tt", [("x",)], ValueError, "row 0 has 1 values, not 2"),
        (b"t", [["x"]], TypeError, "expected a tuple, got list"),
        (b"z", [("x",)], ValueError, "unknown column kind z"),
    ],
)
def test_a_value_of_the_wrong_type_or_range_is_refused_with_its_row_and_column(
    kinds: bytes, rows: list[Any], error: type[Exception], names: str
) -> None:
    with pytest.raises(error, match=names):
        Encoding(kinds).encode(rows)


def test_one_buffer_serves_every_chunk_and_a_held_view_is_never_written_over() -> None:
    encoding = Encoding(b"tl")
    small = [("a", 1)]
    large = [("x" * 1000, n) for n in range(100)]
    with encoding.encode(large) as first:
        expected = bytes(first)
    with encoding.encode(small) as view:
        again = bytes(view)
        # Still viewed: an encoding that needs the buffer to grow is refused, not written over.
        with pytest.raises(BufferError):
            encoding.encode([("x" * 1_000_000, 0)])
        assert bytes(view) == again
    assert len(again) < len(expected) and again.startswith(b"PGCOPY\n\xff\r\n\x00")
    with encoding.encode(large) as view:  # the buffer kept its size: the same bytes again
        assert bytes(view) == expected
    assert len(encoding.encode([("x" * 1_000_000, 0)])) > 1_000_000


async def test_pieces_cover_the_data_in_order_without_copying_it() -> None:
    data = memoryview(bytes(range(256)) * 1000)
    got = [piece async for piece in pieces(data)]
    assert [len(p) for p in got] == [PIECE] * 3 + [256_000 - 3 * PIECE]
    assert b"".join(got) == data
    assert all(p.obj is data.obj for p in got)


def test_the_fold_processes_have_glibc_keep_their_buffers_in_its_heap() -> None:
    """Else every 256 kB a socket gives asyncio comes in fresh pages (see the function)."""
    assert rebuild._buffers_from_the_heap() is (platform.libc_ver()[0] == "glibc")


def test_a_nul_in_text_is_refused_by_postgresql_as_by_asyncpgs_path(db: Db) -> None:
    rows = [(1, "a\x00b", None, None, None, None, None, None, None, None)]
    with pytest.raises(asyncpg.CharacterNotInRepertoireError):
        db.run(db.both_ways(rows))


async def workload(pool: asyncpg.Pool, seed: int) -> None:
    tenant = await create_tenant(pool, f"copy-{seed}")
    w = Workload(Commands(pool), tenant["tenant_id"], seed=seed)
    await w.setup()
    await w.run(400)
    await settled(pool)
    await ProjectionRunner(pool).catch_up()


async def test_the_replay_copies_every_read_model_through_the_encoder(
    pool: asyncpg.Pool, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await workload(pool, seed=3)
    encoded: dict[bytes, int] = {}
    encode = Encoding.encode

    def counted(self: Encoding, rows: list[tuple[Any, ...]]) -> memoryview:
        encoded[self.kinds] = encoded.get(self.kinds, 0) + len(rows)
        return encode(self, rows)

    monkeypatch.setattr(Encoding, "encode", counted)
    result = await rebuild.replay(database_url)
    assert result.swapped
    tables = ("rm_resources", "rm_services", "rm_bookings", "rm_busy", "rm_sessions")
    counts = [await pool.fetchval(f"SELECT count(*) FROM {t}") for t in tables]
    assert sum(encoded.values()) == sum(counts) and all(counts), (encoded, counts)
    assert b"tttttttammmitllmm" in encoded  # rm_bookings: times as datetimes and ints
    check = await rebuild.replay(database_url, verify=True)
    assert check.differences == [], [str(d) for d in check.differences]


async def test_without_the_encoder_the_replay_copies_through_asyncpg_the_same_rows(
    pool: asyncpg.Pool, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await workload(pool, seed=4)

    async def none(*args: Any) -> None:
        return None

    def refuse(self: Encoding, rows: list[tuple[Any, ...]]) -> memoryview:
        raise AssertionError("the encoder was used")

    monkeypatch.setattr(Encoding, "of", none)
    monkeypatch.setattr(Encoding, "encode", refuse)
    assert (await rebuild.replay(database_url)).swapped
    monkeypatch.undo()
    check = await rebuild.replay(database_url, verify=True)
    assert check.differences == [], [str(d) for d in check.differences]
