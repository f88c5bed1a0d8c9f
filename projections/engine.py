"""Writing read-model rows: for each touched stream, replace the rows it contributes with the
fold of its events. Used inline (inside the command's transaction), by the runner and by replay.

Because a row is a pure function of one stream's events, writing it twice is harmless and the
result never depends on the order in which streams are written.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from projections.readmodels import PROJECTIONS, Projection, Row, projection_for
from service.store import RecordedEvent

_PAYLOAD = msgspec.json.Encoder()


def _patched(column: str) -> str:
    """What only the append knows, taken from its result (`changed`, per stream)."""
    return {
        "position": "coalesce(a.last_pos, r.position)",
        "updated_at": "coalesce(a.last_at, r.updated_at)",
        "created_at": "coalesce(r.created_at, a.first_at)",
    }.get(column, f"r.{column}")


def _rows_ctes(p: Projection[Any]) -> str:
    t = p.table
    keys = ", ".join(p.key)
    cols = ", ".join(p.columns)
    values = ", ".join(_patched(c) for c in p.columns)
    updates = ", ".join(f"{c} = excluded.{c}" for c in p.columns if c not in p.key)
    # Column types spelled out (not NULL::{t}): a cached statement must not depend on the
    # table's row type, which replay's swap replaces.
    types = dict(zip(p.columns, p.types, strict=True))
    shape = ", ".join(f"{c} {ty}" for c, ty in types.items())
    key_shape = ", ".join(f"{c} {types[c]}" for c in p.key)
    same_key = " AND ".join(f"{t}.{c} = g.{c}" for c in p.key)
    return f"""
, rows_{t} AS (
    SELECT * FROM jsonb_to_recordset($9::jsonb -> '{t}' -> 'rows') AS x({shape})
), gone_{t} AS (
    DELETE FROM {t} USING jsonb_to_recordset($9::jsonb -> '{t}' -> 'gone') AS g({key_shape})
     WHERE {same_key}
), upsert_{t} AS (
    INSERT INTO {t} ({cols})
    SELECT {values} FROM rows_{t} AS r LEFT JOIN changed AS a ON a.stream_id = r.stream_id
    ON CONFLICT ({keys}) DO UPDATE SET {updates}
)"""


@functools.cache
def rows_sql(tables: frozenset[str]) -> str:
    """CTEs that follow the append statement (service/store.py) to replace the inline read-model
    rows of the appended streams in the same statement: a whole command in one round trip. Rows
    are folded by the caller before the append; `position`, `updated_at` and a missing
    `created_at` come from the append's own result. Only rows that changed are written: rows
    that are gone are deleted, new and changed ones upserted (never both on one row, which one
    statement may not do). Only the `tables` the command touches get CTEs."""
    changed = """
, changed AS (
    SELECT stream_id, max(position) AS last_pos, min(recorded_at) AS first_at,
           max(recorded_at) AS last_at
      FROM appended GROUP BY stream_id
)"""
    return changed + "".join(_rows_ctes(p) for p in PROJECTIONS if p.table in tables)


def insert_sql(p: Projection[Any], table: str | None = None) -> str:
    cols = ", ".join(p.columns)
    params = ", ".join(f"${i}::{t}" for i, t in enumerate(p.types, 1))
    return f"INSERT INTO {table or p.table} ({cols}) VALUES ({params})"


@functools.cache
def delete_sql(p: Projection[Any], table: str | None = None) -> str:
    """Delete the rows of the streams whose keys (Projection.stream_key) come as one array per
    key column: the primary key finds them."""
    types = dict(zip(p.columns, p.types, strict=True))
    cols = p.stream_key_columns
    arrays = ", ".join(f"${i}::{types[c]}[]" for i, c in enumerate(cols, 1))
    same = " AND ".join(f"t.{c} = g.{c}" for c in cols)
    return (
        f"DELETE FROM {table or p.table} AS t USING unnest({arrays}) AS g({', '.join(cols)}) "
        f"WHERE {same}"
    )


async def replace_rows(
    conn: Any,
    p: Projection[Any],
    stream_ids: Sequence[str],
    rows: Sequence[Row],
    *,
    table: str | None = None,
) -> None:
    """Delete the rows of `stream_ids` from the projection's table and insert `rows` (the fold of
    those streams)."""
    if not stream_ids:
        return
    keys = [p.stream_key(s) for s in stream_ids]
    stray = {p.stream_key_of(row) for row in rows} - set(keys)
    if stray:  # a row that the next replace of its stream would not find
        raise ValueError(f"{p.name}: rows outside their streams' keys: {sorted(stray)[:3]}")
    await conn.execute(delete_sql(p, table), *(list(column) for column in zip(*keys, strict=True)))
    if rows:
        await conn.executemany(insert_sql(p, table), rows)


@functools.cache
def _jsonb_columns(p: Projection[Any]) -> tuple[str, ...]:
    return tuple(c for c, t in zip(p.columns, p.types, strict=True) if t == "jsonb")


def rows_payload(
    loaded: Mapping[str, Sequence[RecordedEvent]], new: Mapping[str, Sequence[RecordedEvent]]
) -> tuple[str, bytes]:
    """What the events `new` change in the inline read models, given each stream's events as
    `loaded` before them (whose fold is what the tables hold now, inline models being written
    with every append): the CTEs to write it (rows_sql) and their `$9` JSON,
    {table: {"rows": [{column: value}], "gone": [{key column: value}]}}. Unchanged rows (the
    other claims of a busy day) are not sent, so a command's cost does not grow with them."""
    tables: dict[str, dict[str, list[Any]]] = {}
    for stream_id, events in new.items():
        p = projection_for(stream_id)
        if p is None:
            continue
        rows, gone = p.changes(stream_id, loaded.get(stream_id, []), events)
        entry = tables.setdefault(p.table, {"rows": [], "gone": []})
        jsonb = _jsonb_columns(p)
        for row in rows:
            values = dict(zip(p.columns, row, strict=True))
            for c in jsonb:  # JSON rendered here goes in as JSON, not as a string of it
                if isinstance(values[c], str):
                    values[c] = msgspec.Raw(values[c])
            entry["rows"].append(values)
        entry["gone"].extend(dict(zip(p.key, key, strict=True)) for key in gone)
    return rows_sql(frozenset(tables)), _PAYLOAD.encode(tables)


async def write_streams(
    conn: Any,
    streams: Mapping[str, Sequence[RecordedEvent]],
    *,
    tables: Mapping[str, str] | None = None,
    only: Iterable[str] | None = None,
) -> None:
    """Re-fold each stream in `streams` (all of its events, oldest first) into its table.

    `tables` maps a projection's table to another name (replay writes into fresh tables);
    `only` restricts the write to the projections with those names.
    """
    wanted = set(only) if only is not None else {p.name for p in PROJECTIONS}
    grouped: dict[str, tuple[Projection[Any], list[str], list[Row]]] = {}
    for stream_id, events in streams.items():
        p = projection_for(stream_id)
        if p is None or p.name not in wanted:
            continue
        entry = grouped.setdefault(p.name, (p, [], []))
        entry[1].append(stream_id)
        entry[2].extend(p.fold(stream_id, events))
    for p, stream_ids, rows in grouped.values():
        table = (tables or {}).get(p.table, p.table)
        await replace_rows(conn, p, stream_ids, rows, table=table)
